"""API discovery at start (kube/resources.py Discovery): the source's reflectors share the
discovery documents, so `/apis` and each group version's resource list are fetched once
for the twenty-odd kinds that need discovery, not once per kind; and what is shared is
still right (each kind watched at its own served version, a kind not served reported so)."""
from __future__ import annotations

import asyncio
import threading

from controlplane.kube.resources import RESOURCES, Discovery, served_version
from tests.support.kube_source import running


def discovery_requests(kubeapi) -> dict[str, int]:
    out: dict[str, int] = {}
    for r in list(kubeapi.requests):
        if r.path == "/apis" or (r.path.startswith("/apis/") and r.path.count("/") == 3):
            out[r.path] = out.get(r.path, 0) + 1
    return out


def test_a_source_start_fetches_each_discovery_document_once(kubeapi):
    needing = [r for r in RESOURCES if r.needs_discovery]
    assert len(needing) > 5  # the point of sharing

    async def scenario():
        async with running(kubeapi):
            fetched = discovery_requests(kubeapi)
            assert fetched["/apis"] == 1
            assert all(n == 1 for n in fetched.values()), fetched
            # Every kind that needs discovery was listed at a version its group serves.
            listed = {r.path.rsplit("/", 1)[-1] for r in kubeapi.requests if r.path.count("/") == 4}
            served = {r.plural for r in needing if r.group in {p.split("/")[2] for p in fetched if p != "/apis"}}
            assert served and served <= listed

    asyncio.run(scenario())


def test_threads_asking_at_once_share_one_fetch_and_a_later_ask_refetches(kubeapi):
    api = kubeapi.api_client()
    try:
        discovery = Discovery(api, max_age=60)
        vs = next(r for r in RESOURCES if r.kind.kind == "VirtualService")
        results: list[str | None] = []
        threads = [threading.Thread(target=lambda: results.append(served_version(api, vs, 5, discovery)))
                   for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(10)
        assert len(results) == 8 and len(set(results)) == 1 and results[0] is not None
        assert discovery_requests(kubeapi)["/apis"] == 1
        discovery.max_age = 0  # expired: asked again, fetched again (a CRD installed later is seen)
        served_version(api, vs, 5, discovery)
        assert discovery_requests(kubeapi)["/apis"] == 2
    finally:
        api.close()
