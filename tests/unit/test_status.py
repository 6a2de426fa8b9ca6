"""Status and events for rejected Istio objects, against the stand-in API server: the
real Kubernetes source feeds the status writer (as in `meshd serve --kubeconfig`), the
writer runs as leader work, and the test reads back what a `kubectl get`/`describe`
would show."""
from __future__ import annotations

import asyncio
import contextlib
import functools
import time

from kubernetes import client

from controlplane.kube.api import ApiError, KubeApi
from controlplane.kube.status import (
    ANALYSIS_CODE,
    CONDITION_TYPE,
    REASON_REJECTED,
    StatusWriter,
    desired_status,
)
from controlplane.config.store import ConfigStore
from controlplane.kube.source import KubernetesSource, ReflectorOptions
from tests.support.kubeapi import FakeApiServer

FAST = ReflectorOptions(backoff_initial=0.02, backoff_max=0.2, watch_timeout=(30, 30), request_timeout=5,
                        rediscover_interval=0.2)
NS = "istioinaction"
VS_PATH = "/apis/networking.istio.io/v1/namespaces/istioinaction/virtualservices/webapp"


def aio(fn):
    @functools.wraps(fn)
    def run(*args, **kwargs):
        return asyncio.run(fn(*args, **kwargs))
    return run


def vs(port=80, version="v1", name="webapp"):
    return {"apiVersion": f"networking.istio.io/{version}", "kind": "VirtualService",
            "metadata": {"name": name, "namespace": NS},
            "spec": {"hosts": ["webapp.istioinaction.io"], "gateways": ["gw"],
                     "http": [{"route": [{"destination": {"host": "webapp", "port": {"number": port}}}]}]}}


BAD_PORT = "eighty"


class Cluster:
    """One meshd's view: source -> store, and the status writer observing it."""

    def __init__(self, api: FakeApiServer):
        self.rejections: list = []
        self.store = ConfigStore(on_reject=self.rejections.append)
        self.api_client = client.ApiClient(api.configuration())
        self.kube = KubeApi(self.api_client)
        self.writer = StatusWriter(self.kube, instance="meshd-0", retry_after=0.1)
        self.source = KubernetesSource(self.api_client, self.store, options=FAST, observer=self.writer)
        self.stop = asyncio.Event()
        self.tasks: list[asyncio.Task] = []
        self.leading: asyncio.Task | None = None

    async def __aenter__(self) -> "Cluster":
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


def stored(api: FakeApiServer, name="webapp") -> dict:
    return api.get("networking.istio.io/v1", "VirtualService", name, NS)


def our_condition(obj: dict) -> dict | None:
    return next((c for c in (obj.get("status") or {}).get("conditions") or [] if c.get("type") == CONDITION_TYPE), None)


def events(api: FakeApiServer) -> list[dict]:
    return [e for e in api.objects("Event") if e["metadata"]["namespace"] == NS]


@aio
async def test_a_rejected_object_gets_a_condition_a_validation_message_and_an_event(kubeapi):
    kubeapi.apply(vs(BAD_PORT))
    async with Cluster(kubeapi) as c:
        c.lead()
        cond = await until(lambda: our_condition(stored(kubeapi)), "status condition written")
        obj = stored(kubeapi)
        assert cond["status"] == "False" and cond["reason"] == REASON_REJECTED
        assert "spec.http[0].route[0].destination.port.number" in cond["message"]
        assert cond["observedGeneration"] == obj["metadata"]["generation"]
        assert obj["status"]["validationMessages"] == [{
            "type": {"code": ANALYSIS_CODE, "name": "SchemaValidationError"}, "level": "ERROR",
            "documentationUrl": "https://istio.io/latest/docs/reference/config/analysis/ist0106/"}]
        ev = await until(lambda: events(kubeapi), "event written")
        assert len(ev) == 1
        e = ev[0]
        assert (e["type"], e["reason"], e["message"]) == ("Warning", "Rejected", cond["message"])
        assert {k: e["involvedObject"][k] for k in ("apiVersion", "kind", "name", "namespace", "uid")} == {
            "apiVersion": "networking.istio.io/v1", "kind": "VirtualService", "name": "webapp", "namespace": NS,
            "uid": obj["metadata"]["uid"]}
        assert e["source"] == {"component": "meshd"} and e["count"] == 1
        # meshd's own status write comes back through the watch: nothing more to do, and
        # the rejection is neither logged nor counted a second time
        await asyncio.sleep(0.5)
        assert len(kubeapi.writes("virtualservices", "PATCH")) == 1
        assert len(events(kubeapi)) == 1
        assert len(c.rejections) == 1
        # the printer columns meshd's CRDs add read these paths (see test_crds.py)
        assert [x["reason"] for x in obj["status"]["conditions"] if x["type"] == "Reconciled"] == ["Rejected"]


@aio
async def test_fixing_the_object_clears_meshds_status_and_keeps_other_writers(kubeapi):
    kubeapi.apply(vs(BAD_PORT))
    async with Cluster(kubeapi) as c:
        c.lead()
        await until(lambda: our_condition(stored(kubeapi)), "rejected")
        # someone else's condition (e.g. a distribution tracker) must survive meshd's writes
        c.kube.request("PATCH", VS_PATH + "/status", {"status": {"conditions": [
            *stored(kubeapi)["status"]["conditions"],
            {"type": "Ready", "status": "True", "reason": "Other", "message": "not meshd's"}]}},
            content_type="application/merge-patch+json")
        kubeapi.apply(vs(80))  # kubectl apply of a fixed version
        await until(lambda: our_condition(stored(kubeapi)) is None, "meshd's condition removed")
        st = stored(kubeapi)["status"]
        assert st["conditions"] == [{"type": "Ready", "status": "True", "reason": "Other", "message": "not meshd's"}]
        assert "validationMessages" not in st
        assert c.store.snapshot().get("VirtualService", NS, "webapp") is not None
        # broken again with a different reason: a second event
        kubeapi.apply(vs(70000))
        await until(lambda: len(events(kubeapi)) == 2, "a new rejection, a new event")
        assert "70000" in our_condition(stored(kubeapi))["message"] or "65535" in our_condition(stored(kubeapi))["message"]


@aio
async def test_only_the_leader_writes_and_a_new_leader_neither_loses_nor_repeats(kubeapi):
    kubeapi.apply(vs(BAD_PORT))
    async with Cluster(kubeapi) as follower, Cluster(kubeapi) as leader:
        leader.lead()
        await until(lambda: our_condition(stored(kubeapi)), "the leader wrote the status")
        await until(lambda: len(events(kubeapi)) == 1, "one event")
        await asyncio.sleep(0.3)
        # the follower knows the verdict but writes nothing
        assert follower.writer.writes == 0 and list(follower.writer.rejected()) == [
            "k8s:" + VS_PATH]
        # the leader goes; while nobody leads, another object is rejected
        await leader.step_down()
        kubeapi.apply(vs(BAD_PORT, name="catalog"))
        await asyncio.sleep(0.3)
        assert our_condition(stored(kubeapi, "catalog")) is None
        writes_before = len(kubeapi.writes("virtualservices", "PATCH"))
        follower.lead()  # the follower is elected
        await until(lambda: our_condition(stored(kubeapi, "catalog")), "the new leader reports what it missed")
        await asyncio.sleep(0.3)
        # webapp was already reported (its status says so): no second write, no second event
        assert len(kubeapi.writes("virtualservices", "PATCH")) == writes_before + 1
        assert sorted(e["involvedObject"]["name"] for e in events(kubeapi)) == ["catalog", "webapp"]


@aio
async def test_status_is_written_at_the_version_the_cluster_serves(kubeapi):
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
async def test_a_failed_write_is_retried(kubeapi):
    kubeapi.apply(vs(BAD_PORT))
    async with Cluster(kubeapi) as c:
        real_call, failures = c.kube.call, []

        async def flaky(method, target, *args, **kwargs):
            if method == "PATCH" and not failures:
                failures.append(target)
                raise ApiError(503, "ServiceUnavailable", "injected")
            return await real_call(method, target, *args, **kwargs)

        c.kube.call = flaky
        c.lead()
        await until(lambda: our_condition(stored(kubeapi)), "written after a retry")
        assert failures == [VS_PATH + "/status"]
        assert [r.status for r in kubeapi.writes("virtualservices", "PATCH")] == [200]


def test_desired_status_rules():
    now = lambda: "2024-01-01T00:00:00Z"  # noqa: E731
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
