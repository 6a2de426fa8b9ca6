"""Leader election on a coordination.k8s.io/v1 Lease, against the real API server (the
`kube` fixture, each test in a namespace of its own): one leader among replicas,
optimistic concurrency on takeover (the server's 409 Conflict), renewal, step-down before
the Lease can expire, hand-over after a crash (lease expiry) and after a graceful release
(at once), and leader-only work started and stopped with leadership. Two tests need an
API server outage at a chosen moment: they use the stand-in, and say so."""
from __future__ import annotations

import asyncio
import functools
import re
import threading
import time

import pytest
from kubernetes import client, watch

from controlplane.kube.api import ApiError, KubeApi
from controlplane.kube.leader import LeaderElectionConfig, LeaderElector

NS = "istio-system"  # the stand-in's tests; the real server's get a namespace each
FAST = dict(lease_duration=2.0, renew_deadline=1.2, retry_period=0.25)
MICRO = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$")


def aio(fn):
    """Run an async test on a fresh event loop (the suite has no asyncio plugin)."""
    @functools.wraps(fn)
    def run(*args, **kwargs):
        return asyncio.run(fn(*args, **kwargs))
    return run


KUBEAPI_BOOKMARKS = None  # the stand-in API server's default interval (the kubeapi fixture)


class Replica:
    def __init__(self, api, identity: str, ns: str = NS, **timing):
        self.kube = KubeApi(api.api_client())
        self.elector = LeaderElector(self.kube, LeaderElectionConfig(namespace=ns, identity=identity, **{**FAST, **timing}))
        self.stop = asyncio.Event()
        self.task: asyncio.Task | None = None

    def start(self) -> Replica:
        self.task = asyncio.create_task(self.elector.run(self.stop))
        return self

    async def shutdown(self) -> None:
        self.stop.set()
        if self.task is not None:
            await asyncio.wait_for(self.task, 5)
        self.kube.close()
        self.kube.api_client.close()

    async def crash(self) -> None:
        """Die without a word: no more API calls, no release."""
        async def dead(*_a, **_k):
            raise ApiError(0, "ConnectionRefusedError", "process is gone")
        self.elector.api.call = dead  # type: ignore[method-assign]
        await self.shutdown()


def lease(api, ns: str = NS) -> dict | None:
    return api.get("coordination.k8s.io/v1", "Lease", "meshd-leader", ns)


class LeaseHolders:
    """Watches the Lease (from its current version) in a thread: `seen` is the holder
    identity after each change, in the order the API server made them."""

    def __init__(self, api, ns: str = NS):
        self.seen: list[str] = []
        self._closed = False
        self._client = api.api_client()
        self._watch = watch.Watch()
        coordination = client.CoordinationV1Api(self._client)
        since = coordination.read_namespaced_lease("meshd-leader", ns).metadata.resource_version
        self._thread = threading.Thread(target=self._run, args=(coordination, ns, since), daemon=True)
        self._thread.start()

    def _run(self, coordination, ns: str, since: str) -> None:
        try:
            for event in self._watch.stream(coordination.list_namespaced_lease, ns, resource_version=since,
                                            field_selector="metadata.name=meshd-leader", timeout_seconds=30):
                if event["type"] in ("ADDED", "MODIFIED"):
                    self.seen.append(event["object"].spec.holder_identity or "")
        except Exception:
            if not self._closed:
                raise

    def close(self) -> None:
        self._closed = True
        self._watch.stop()
        self._client.close()


async def until(pred, what: str, timeout: float = 5.0, interval: float = 0.02) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if pred():
            return time.monotonic() - started
        await asyncio.sleep(interval)
    raise AssertionError(f"{what}: not within {timeout}s")


@aio
async def test_one_leader_among_three_and_the_lease_says_who(kube):
    ns = kube.ns("istio-system")
    replicas = [Replica(kube, f"meshd-{i}", ns).start() for i in range(3)]
    try:
        await until(lambda: sum(r.elector.is_leader for r in replicas) == 1, "a leader")
        await asyncio.sleep(FAST["lease_duration"] * 1.5)  # renewals keep it, nobody else takes it
        leaders = [r for r in replicas if r.elector.is_leader]
        assert len(leaders) == 1
        spec = lease(kube, ns)["spec"]
        assert spec["holderIdentity"] == leaders[0].elector.identity
        assert spec["leaseDurationSeconds"] == 2  # whole seconds, rounded up
        assert MICRO.match(spec["renewTime"]) and MICRO.match(spec["acquireTime"])
        assert spec["leaseTransitions"] == 0
        assert all(r.elector.holder == leaders[0].elector.identity for r in replicas)
        # exactly one create succeeded; renewals are updates by the leader only
        assert len(kube.writes("leases", "POST", status=201)) == 1
        assert len(kube.writes("leases", "PUT", status=200)) >= 3
    finally:
        for r in replicas:
            await r.shutdown()


@aio
async def test_graceful_shutdown_releases_and_hands_over_at_once(kube):
    ns = kube.ns("istio-system")
    a = Replica(kube, "a", ns).start()
    await until(lambda: a.elector.is_leader, "a leads")
    b = Replica(kube, "b", ns).start()
    holders = LeaseHolders(kube, ns)  # every holder the Lease has from now on, as the API saw it
    try:
        await until(lambda: b.elector.holder == "a", "b sees a's lease")
        assert not b.elector.is_leader
        await a.shutdown()
        # b may take the lease as soon as a released it: read the release from the Lease's
        # history (a watch), not from one GET that can come after b's takeover.
        took = await until(lambda: b.elector.is_leader, "b takes over after the release")
        assert took < FAST["lease_duration"], f"hand-over after a release took {took:.2f}s: it waited out the lease"
        await until(lambda: "b" in holders.seen, "the Lease names b")
        assert holders.seen[holders.seen.index("b") - 1] == "", f"a did not release before b took over: {holders.seen}"
        assert lease(kube, ns)["spec"]["leaseTransitions"] == 1
    finally:
        holders.close()
        await b.shutdown()


@aio
async def test_a_crashed_leader_is_replaced_once_its_lease_expires(kube):
    ns = kube.ns("istio-system")
    a = Replica(kube, "a", ns).start()
    await until(lambda: a.elector.is_leader, "a leads")
    b = Replica(kube, "b", ns).start()
    try:
        await asyncio.sleep(0.5)
        last_renew = time.monotonic()
        await a.crash()
        took = await until(lambda: b.elector.is_leader, "b takes over", timeout=10)
        waited = time.monotonic() - last_renew
        # not before the lease could have expired, and within lease + jittered retries
        assert waited >= FAST["lease_duration"] - FAST["retry_period"], f"took over after {waited:.2f}s"
        # seen within one jittered retry (<= 2.2 x) of the last renewal, taken at the next attempt
        assert took <= FAST["lease_duration"] + 2 * 2.2 * FAST["retry_period"] + 0.5, f"hand-over took {took:.2f}s"
        spec = lease(kube, ns)["spec"]
        assert spec["holderIdentity"] == "b" and spec["leaseTransitions"] == 1
    finally:
        await b.shutdown()


@aio
async def test_leader_that_cannot_renew_steps_down_before_its_lease_expires(kubeapi):
    """The stand-in: the API server goes away at a chosen moment (an outage) and comes back."""
    a = Replica(kubeapi, "a").start()
    steps: list[tuple[bool, float]] = []
    a.elector.on_change(lambda leader: steps.append((leader, time.monotonic())))
    try:
        await until(lambda: a.elector.is_leader, "a leads")
        with kubeapi.outage():
            cut = time.monotonic()
            await until(lambda: not a.elector.is_leader, "a steps down", timeout=5)
            # the last successful renewal was before the outage: stepping down must come
            # before that renewal's lease runs out, or two replicas could lead at once
            assert steps[-1][1] - cut < FAST["lease_duration"]
        # the API is back: a takes the (expired) lease again
        await until(lambda: a.elector.is_leader, "a leads again", timeout=5)
    finally:
        await a.shutdown()


@aio
async def test_displaced_leader_stops_at_once(kube):
    ns = kube.ns("istio-system")
    a = Replica(kube, "a", ns).start()
    try:
        await until(lambda: a.elector.is_leader, "a leads")
        # an operator (or a split brain) hands the lease to someone else
        current = lease(kube, ns)
        current["spec"]["holderIdentity"] = "intruder"
        kube.apply(current)
        took = await until(lambda: not a.elector.is_leader, "a notices", timeout=3)
        assert took < FAST["renew_deadline"]
    finally:
        await a.shutdown()
    # a was not the holder any more: shutting down must not release the intruder's lease
    assert lease(kube, ns)["spec"]["holderIdentity"] == "intruder"


@aio
async def test_racing_takeovers_have_one_winner(kube):
    """Two replicas that both see an expired lease both PUT it: the resourceVersion makes
    the API server accept one and refuse the other with 409 Conflict."""
    ns = kube.ns("istio-system")
    kube.apply({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                "metadata": {"name": "meshd-leader", "namespace": ns},
                "spec": {"holderIdentity": "dead", "leaseDurationSeconds": 1,
                         "renewTime": "2020-01-01T00:00:00.000000Z", "acquireTime": "2020-01-01T00:00:00.000000Z",
                         "leaseTransitions": 4}})
    electors = []
    for i in range(2):
        api = KubeApi(kube.api_client())
        e = LeaderElector(api, LeaderElectionConfig(namespace=ns, identity=f"r{i}", **FAST))
        await e._attempt()  # observe the record (both see holder "dead")
        e._observed_at -= 10  # ...and both have watched it long enough to call it expired
        electors.append(e)
    outcomes = await asyncio.gather(*(e._attempt() for e in electors))
    try:
        assert sorted(outcomes) == ["held", "other"], outcomes
        assert lease(kube, ns)["spec"]["leaseTransitions"] == 5
        assert len(kube.writes("leases", "PUT", status=409)) == 1
    finally:
        for e in electors:
            e.api.close()
            e.api.api_client.close()


@aio
async def test_leader_tasks_run_only_while_leading(kubeapi):
    """The stand-in: the API server goes away at a chosen moment (an outage) and comes back."""
    a = Replica(kubeapi, "a")
    runs: list[str] = []
    cancelled = asyncio.Event()

    async def work():
        runs.append("started")
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise

    a.elector.add_task("work", work)
    a.start()
    try:
        await until(lambda: runs == ["started"], "leader work started")
        with kubeapi.outage():
            await until(lambda: not a.elector.is_leader, "a steps down", timeout=5)
            assert cancelled.is_set(), "leader work must stop before the lease can expire"
        await until(lambda: runs == ["started", "started"], "leader work restarted on re-election", timeout=5)
    finally:
        await a.shutdown()


def test_config_wants_retry_below_deadline_below_duration():
    with pytest.raises(ValueError):
        LeaderElectionConfig(namespace=NS, identity="x", lease_duration=10, renew_deadline=10, retry_period=2)
    with pytest.raises(ValueError):
        LeaderElectionConfig(namespace=NS, identity="")


@aio
async def test_a_hung_api_server_cannot_keep_a_leader_past_its_renew_deadline(kube):
    ns = kube.ns("istio-system")
    a = Replica(kube, "a", ns).start()
    try:
        await until(lambda: a.elector.is_leader, "a leads")
        renewed = time.monotonic()
        real = a.elector.api.call

        async def hang(*args, **kwargs):
            await asyncio.sleep(3600)  # a request that never returns (no timeout would save us)
            return await real(*args, **kwargs)

        a.elector.api.call = hang
        await until(lambda: not a.elector.is_leader, "a steps down", timeout=5)
        # within the renew deadline (plus the retry sleep it was in), well before the lease runs out
        assert time.monotonic() - renewed < FAST["renew_deadline"] + FAST["retry_period"] + 0.3
        assert time.monotonic() - renewed < FAST["lease_duration"]
        a.elector.api.call = real
    finally:
        await a.shutdown()
