"""Status and events for rejected Istio objects, against the real API server (the `kube`
fixture, a namespace per test): the real Kubernetes source feeds the status writer (as
in `meshd serve --kubeconfig`), the writer runs as leader work, and the test reads back
what a `kubectl get`/`describe` would show. The status written at a version the cluster
prefers over v1 needs the stand-in, and says so."""
from __future__ import annotations

import asyncio
import contextlib
import functools
import time

from controlplane.config.store import ConfigStore
from controlplane.kube.api import ApiError, KubeApi
from controlplane.kube.source import KubernetesSource, ReflectorOptions
from controlplane.kube.status import (
    ANALYSIS_CODE,
    CONDITION_TYPE,
    REASON_REJECTED,
    StatusWriter,
    desired_status,
)

FAST = ReflectorOptions(backoff_initial=0.02, backoff_max=0.2, watch_timeout=(30, 30), request_timeout=5,
                        rediscover_interval=0.2)
NS = "istioinaction"  # the stand-in's; on the real server each test has its own


def vs_path(ns: str = NS) -> str:
    return f"/apis/networking.istio.io/v1/namespaces/{ns}/virtualservices/webapp"


def aio(fn):
    @functools.wraps(fn)
    def run(*args, **kwargs):
        return asyncio.run(fn(*args, **kwargs))
    return run


def vs(port=80, version="v1", name="webapp", ns=NS):
    return {"apiVersion": f"networking.istio.io/{version}", "kind": "VirtualService",
            "metadata": {"name": name, "namespace": ns},
            "spec": {"hosts": ["webapp.istioinaction.io"], "gateways": ["gw"],
                     "http": [{"route": [{"destination": {"host": "webapp", "port": {"number": port}}}]}]}}


# A port the CRD's schema accepts (a uint32) and meshd (as Istio) refuses.
BAD_PORT = 70000


class Cluster:
    """One meshd's view: source -> store, and the status writer observing it."""

    def __init__(self, api):
        self.rejections: list = []
        self.store = ConfigStore(on_reject=self.rejections.append)
        self.api_client = api.api_client()
        self.kube = KubeApi(self.api_client)
        self.writer = StatusWriter(self.kube, instance="meshd-0", retry_after=0.1)
        self.source = KubernetesSource(self.api_client, self.store, options=FAST, observer=self.writer)
        self.stop = asyncio.Event()
        self.tasks: list[asyncio.Task] = []
        self.leading: asyncio.Task | None = None

    async def __aenter__(self) -> Cluster:
        self.tasks.append(asyncio.create_task(self.source.run(self.stop)))
        assert await self.source.wait_synced(5)
        return self

    def lead(self) -> None:
        self.leading = asyncio.create_task(self.writer.run())

    async def step_down(self) -> None:
        if self.leading is not None:
            self.leading.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.leading
            self.leading = None

    async def __aexit__(self, *exc) -> None:
        await self.step_down()
        self.stop.set()
        await asyncio.wait_for(asyncio.gather(*self.tasks), 10)
        self.kube.close()
        self.api_client.close()


async def until(pred, what: str, timeout: float = 5.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = pred()
        if result:
            return result
        await asyncio.sleep(0.02)
    raise AssertionError(f"{what}: not within {timeout}s")


def stored(api, name="webapp", ns=NS) -> dict:
    return api.get("networking.istio.io/v1", "VirtualService", name, ns)


def our_condition(obj: dict) -> dict | None:
    return next((c for c in (obj.get("status") or {}).get("conditions") or [] if c.get("type") == CONDITION_TYPE), None)


def events(api, ns=NS) -> list[dict]:
    return [e for e in api.objects("Event") if e["metadata"]["namespace"] == ns]


@aio
async def test_a_rejected_object_gets_a_condition_a_validation_message_and_an_event(kube):
    ns = kube.ns("istioinaction")
    kube.apply(vs(BAD_PORT, ns=ns))
    async with Cluster(kube) as c:
        c.lead()
        cond = await until(lambda: our_condition(stored(kube, ns=ns)), "status condition written")
        obj = stored(kube, ns=ns)
        assert cond["status"] == "False" and cond["reason"] == REASON_REJECTED
        assert "spec.http[0].route[0].destination.port.number" in cond["message"]
        assert cond["observedGeneration"] == obj["metadata"]["generation"]
        assert obj["status"]["validationMessages"] == [{
            "type": {"code": ANALYSIS_CODE, "name": "SchemaValidationError"}, "level": "ERROR",
            "documentationUrl": "https://istio.io/latest/docs/reference/config/analysis/ist0106/"}]
        ev = await until(lambda: events(kube, ns), "event written")
        assert len(ev) == 1
        e = ev[0]
        assert (e["type"], e["reason"], e["message"]) == ("Warning", "Rejected", cond["message"])
        assert {k: e["involvedObject"][k] for k in ("apiVersion", "kind", "name", "namespace", "uid")} == {
            "apiVersion": "networking.istio.io/v1", "kind": "VirtualService", "name": "webapp", "namespace": ns,
            "uid": obj["metadata"]["uid"]}
        assert e["source"] == {"component": "meshd"} and e["count"] == 1
        # meshd's own status write comes back through the watch: nothing more to do, and
        # the rejection is neither logged nor counted a second time
        await asyncio.sleep(0.5)
        assert len(kube.writes("virtualservices", "PATCH")) == 1
        assert len(events(kube, ns)) == 1
        assert len(c.rejections) == 1
        # the printer columns meshd's CRDs add read these paths (see test_crds.py)
        assert [x["reason"] for x in obj["status"]["conditions"] if x["type"] == "Reconciled"] == ["Rejected"]


@aio
async def test_fixing_the_object_clears_meshds_status_and_keeps_other_writers(kube):
    ns = kube.ns("istioinaction")
    kube.apply(vs(BAD_PORT, ns=ns))
    async with Cluster(kube) as c:
        c.lead()
        await until(lambda: our_condition(stored(kube, ns=ns)), "rejected")
        # someone else's condition (e.g. a distribution tracker) must survive meshd's writes
        c.kube.request("PATCH", vs_path(ns) + "/status", {"status": {"conditions": [
            *stored(kube, ns=ns)["status"]["conditions"],
            {"type": "Ready", "status": "True", "reason": "Other", "message": "not meshd's"}]}},
            content_type="application/merge-patch+json")
        kube.apply(vs(80, ns=ns))  # kubectl apply of a fixed version
        await until(lambda: our_condition(stored(kube, ns=ns)) is None, "meshd's condition removed")
        st = stored(kube, ns=ns)["status"]
        assert st["conditions"] == [{"type": "Ready", "status": "True", "reason": "Other", "message": "not meshd's"}]
        assert "validationMessages" not in st
        assert c.store.snapshot().get("VirtualService", ns, "webapp") is not None
        # broken again with a different reason: a second event
        kube.apply(vs(99999, ns=ns))
        await until(lambda: len(events(kube, ns)) == 2, "a new rejection, a new event")
        assert "70000" in our_condition(stored(kube, ns=ns))["message"] or "65535" in our_condition(stored(kube, ns=ns))["message"]


@aio
async def test_only_the_leader_writes_and_a_new_leader_neither_loses_nor_repeats(kube):
    ns = kube.ns("istioinaction")
    kube.apply(vs(BAD_PORT, ns=ns))
    async with Cluster(kube) as follower, Cluster(kube) as leader:
        leader.lead()
        await until(lambda: our_condition(stored(kube, ns=ns)), "the leader wrote the status")
        await until(lambda: len(events(kube, ns)) == 1, "one event")
        await asyncio.sleep(0.3)
        # the follower knows the verdict but writes nothing
        assert follower.writer.writes == 0 and list(follower.writer.rejected()) == [
            "k8s:" + vs_path(ns)]
        # the leader goes; while nobody leads, another object is rejected
        await leader.step_down()
        kube.apply(vs(BAD_PORT, name="catalog", ns=ns))
        await asyncio.sleep(0.3)
        assert our_condition(stored(kube, "catalog", ns)) is None
        writes_before = len(kube.writes("virtualservices", "PATCH"))
        follower.lead()  # the follower is elected
        await until(lambda: our_condition(stored(kube, "catalog", ns)), "the new leader reports what it missed")
        await asyncio.sleep(0.3)
        # webapp was already reported (its status says so): no second write, no second event
        assert len(kube.writes("virtualservices", "PATCH")) == writes_before + 1
        assert sorted(e["involvedObject"]["name"] for e in events(kube, ns)) == ["catalog", "webapp"]


@aio
async def test_status_is_written_at_the_version_the_cluster_serves(kubeapi):
    """The stand-in: the cluster serves the group at v1beta1 and v1alpha3 only (a real
    server with Istio's CRDs always serves v1)."""
    kubeapi.serve_group("networking.istio.io", versions=["v1beta1", "v1alpha3"], preferred="v1beta1")
    kubeapi.apply(vs(BAD_PORT, version="v1beta1"))
    async with Cluster(kubeapi) as c:
        c.lead()
        await until(lambda: c.writer.writes == 1, "status written")
        patch = kubeapi.writes("virtualservices", "PATCH")[0]
        assert patch.path == "/apis/networking.istio.io/v1beta1/namespaces/istioinaction/virtualservices/webapp/status"
        assert (await until(lambda: events(kubeapi), "event"))[0]["involvedObject"]["apiVersion"] == \
            "networking.istio.io/v1beta1"


@aio
async def test_a_failed_write_is_retried(kube):
    ns = kube.ns("istioinaction")
    kube.apply(vs(BAD_PORT, ns=ns))
    async with Cluster(kube) as c:
        real_call, failures = c.kube.call, []

        async def flaky(method, target, *args, **kwargs):
            if method == "PATCH" and not failures:
                failures.append(target)
                raise ApiError(503, "ServiceUnavailable", "injected")
            return await real_call(method, target, *args, **kwargs)

        c.kube.call = flaky
        c.lead()
        await until(lambda: our_condition(stored(kube, ns=ns)), "written after a retry")
        assert failures == [vs_path(ns) + "/status"]
        assert [r.status for r in kube.writes("virtualservices", "PATCH")] == [200]


def test_desired_status_rules():
    now = lambda: "2024-01-01T00:00:00Z"
    assert desired_status({}, None, 1) is None  # accepted, nothing of ours: nothing to do
    patch = desired_status({}, "spec.hosts: Required value", 3, now)
    assert patch["conditions"] == [{"type": "Reconciled", "status": "False", "reason": "Rejected",
                                    "message": "spec.hosts: Required value", "lastTransitionTime": now(),
                                    "observedGeneration": 3}]
    assert patch["observedGeneration"] == 3
    written = {k: v for k, v in patch.items() if v is not None}
    assert desired_status(written, "spec.hosts: Required value", 3, lambda: "later") is None  # idempotent
    # a new generation with the same reason: observedGeneration moves, the transition time does not
    again = desired_status(written, "spec.hosts: Required value", 4, lambda: "later")
    assert again["conditions"][0]["observedGeneration"] == 4 and again["conditions"][0]["lastTransitionTime"] == now()
    # accepted again: our entries go (null in the merge patch removes the keys)
    cleared = desired_status(written, None, 5)
    assert cleared["conditions"] is None and cleared["validationMessages"] is None
