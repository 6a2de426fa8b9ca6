"""A signal stops `meshd serve` at once in the start-up phases that wait on the outside
world (issue 16 item 3). The namespace that does not exist yet is shown against the
real API server (tests/e2e/test_newcomer_kube.py); here, the initial lists of a cluster
whose API server answers nothing but 503s."""
from __future__ import annotations

import asyncio
import time

import yaml

from controlplane import app
from controlplane.kube.options import ClusterOptions
from tests.support.harness import free_port, http_get, wait_for

KUBEAPI_BOOKMARKS = None  # the stand-in API server's default interval (the kubeapi fixture)


def test_stop_while_waiting_for_the_initial_lists_ends_serve_at_once(kubeapi, tmp_path):
    """The stand-in, in an outage (every request a 503) for as long as meshd waits."""
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "c",
        "clusters": [{"name": "c", "cluster": {"server": kubeapi.url}}],
        "users": [{"name": "u", "user": {"token": "t"}}],
        "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u"}}]}))
    mon = free_port("127.0.0.1")
    opts = app.ServeOptions(config_dir=None, xds_port=free_port("127.0.0.1"), monitoring_port=mon,
                            listen_address="127.0.0.1", secure_xds_port=0, kubeconfig=str(kubeconfig),
                            cluster=ClusterOptions(namespace="istio-system", leader_elect=False))

    def not_ready() -> bool:  # serving, and /ready says the lists are not in
        try:
            return http_get("127.0.0.1", mon, "/ready", timeout=1)[0] == 503
        except OSError:
            return False

    async def scenario() -> float:
        stop = asyncio.Event()
        serving = asyncio.create_task(app.serve(opts, stop))
        await asyncio.to_thread(wait_for, lambda: not_ready() or serving.done(), 20, 0.05, "meshd waiting for its lists")
        assert not serving.done(), serving.exception()
        stopped = time.monotonic()
        stop.set()
        await asyncio.wait_for(serving, 15)  # bounded: a meshd that kept waiting fails here or below
        return time.monotonic() - stopped

    with kubeapi.outage():
        took = asyncio.run(scenario())
    assert took < 1, f"serve took {took:.1f}s to stop while waiting for the initial lists"
