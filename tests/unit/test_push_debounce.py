"""Debouncing in the MeshBuilder: a burst of changes is one snapshot and one push; under
constant churn a push still goes out every `debounce_max`; changes are classified
(endpoint-only or config) for logs and metrics."""
from __future__ import annotations

import asyncio
import contextlib

from controlplane.app import MeshBuilder
from controlplane.config.objects import ConfigKey
from controlplane.config.store import ConfigStore
from tests.support.ads import run
from tests.support.configs import objects_from_yaml


class RecordingAds:
    def __init__(self):
        self.updates: list[tuple[str, str]] = []

    def update(self, mesh, reason="config") -> int:
        self.updates.append((mesh.version, reason))
        return 0


def vs(i: int, route: str = "a") -> str:
    return f"""
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: vs-{i}, namespace: default}}
spec:
  hosts: [host-{i}.example.com]
  http: [{{route: [{{destination: {{host: {route}}}}}]}}]
"""


def slice_(ip: str) -> str:
    return f"""
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: a-1, namespace: default, labels: {{kubernetes.io/service-name: a}}}}
addressType: IPv4
ports: [{{name: http, port: 8080}}]
endpoints: [{{addresses: ["{ip}"]}}]
"""


async def started(builder: MeshBuilder):
    stop = asyncio.Event()
    task = asyncio.create_task(builder.run(stop))
    return stop, task


async def settle(builder: MeshBuilder, pushes: int, timeout: float = 5.0):
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while builder.pushes < pushes:
        assert loop.time() < end, f"{builder.pushes} pushes, wanted {pushes}"
        await asyncio.sleep(0.01)
    await asyncio.sleep(builder.debounce_after * 3)  # and no further push follows


def test_a_burst_of_100_changes_within_50ms_is_one_push():
    async def main():
        store = ConfigStore()
        ads = RecordingAds()
        builder = MeshBuilder(store, ads, debounce_after=0.1, debounce_max=10)
        builder.rebuild("initial load")
        stop, task = await started(builder)
        try:
            for i in range(100):  # 100 files changing within 50 ms
                store.replace_location(f"vs-{i}.yaml", objects_from_yaml(vs(i)))
                if i % 10 == 9:
                    await asyncio.sleep(0.005)
            await settle(builder, 2)
            assert builder.pushes == 2  # the initial load and one for the whole burst
            assert len(ads.updates) == 2
            assert ads.updates[1][1] == "config change: VirtualService"
            assert len(builder.mesh.virtual_services) == 100
        finally:
            stop.set()
            task.cancel()

    run(main())


def test_constant_churn_still_pushes_every_debounce_max():
    async def main():
        store = ConfigStore()
        ads = RecordingAds()
        builder = MeshBuilder(store, ads, debounce_after=0.1, debounce_max=0.3)
        stop, task = await started(builder)
        try:
            loop = asyncio.get_running_loop()
            end = loop.time() + 1.5
            i = 0
            while loop.time() < end:  # never 100 ms of quiet
                store.replace_location("churn.yaml", objects_from_yaml(vs(0, route=f"r{i}")))
                i += 1
                await asyncio.sleep(0.02)
            # without debounce_max nothing would have been pushed during the churn
            assert builder.pushes >= 2
        finally:
            stop.set()
            task.cancel()

    run(main())


@contextlib.asynccontextmanager
async def running(**options):
    """A builder with `options` after its initial push, running; yields it with its store."""
    store = ConfigStore()
    builder = MeshBuilder(store, RecordingAds(), **options)
    builder.rebuild("initial load")
    stop, task = await started(builder)
    try:
        yield store, builder
    finally:
        stop.set()
        task.cancel()


async def pushed_after(builder: MeshBuilder, pushes: int, timeout: float = 5.0) -> float:
    """Seconds until the builder has made `pushes` pushes."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    while builder.pushes < pushes:
        assert loop.time() - start < timeout, f"{builder.pushes} pushes, wanted {pushes}"
        await asyncio.sleep(0.002)
    return loop.time() - start


def test_a_burst_is_one_push_with_the_isolated_change_rule_too():
    """The burst's changes arrive together: no leading push for its first one."""
    async def main():
        async with running(debounce_after=0.1, debounce_max=10, debounce_isolated=0.01) as (store, builder):
            await asyncio.sleep(0.15)  # a quiet period before the burst
            for i in range(100):
                store.replace_location(f"vs-{i}.yaml", objects_from_yaml(vs(i)))
                if i % 10 == 9:
                    await asyncio.sleep(0.005)
            await settle(builder, 2)
            assert builder.pushes == 2
            assert len(builder.mesh.virtual_services) == 100

    run(main())


def test_an_isolated_change_is_pushed_without_the_full_quiet_time():
    """debounce_after is long here (1 s) so that the difference cannot be the machine's:
    one change after a quiet period is pushed after debounce_isolated, well within it."""
    async def main():
        async with running(debounce_after=1.0, debounce_max=10, debounce_isolated=0.01) as (store, builder):
            store.replace_location("vs-0.yaml", objects_from_yaml(vs(0)))
            assert await pushed_after(builder, 2) < 0.5
            assert builder.ads.updates[1][1] == "config change: VirtualService"

    run(main())


def test_a_second_change_makes_the_window_an_ordinary_one():
    """A change arriving within debounce_isolated of the first: both wait for the full
    quiet time and go out as one push; a change soon after a push is not isolated."""
    async def main():
        async with running(debounce_after=0.6, debounce_max=10, debounce_isolated=0.2) as (store, builder):
            store.replace_location("vs-0.yaml", objects_from_yaml(vs(0)))
            await asyncio.sleep(0.05)
            store.replace_location("vs-1.yaml", objects_from_yaml(vs(1)))
            assert await pushed_after(builder, 2) >= 0.55  # 0.6 s of quiet after the second
            assert len(builder.mesh.virtual_services) == 2
            await asyncio.sleep(0.7)
            store.replace_location("vs-2.yaml", objects_from_yaml(vs(2)))
            assert await pushed_after(builder, 3) < 0.5  # isolated: 1.3 s of quiet before it
            # 0.2-0.5 s after vs-2: not isolated, though vs-2's window is closed
            store.replace_location("vs-3.yaml", objects_from_yaml(vs(3)))
            assert await pushed_after(builder, 4) >= 0.55
            assert builder.pushes == 4

    run(main())


def test_endpoint_only_changes_are_classified_as_such():
    async def main():
        store = ConfigStore()
        ads = RecordingAds()
        builder = MeshBuilder(store, ads, debounce_after=0.05)
        stop, task = await started(builder)
        try:
            store.replace_location("slice.yaml", objects_from_yaml(slice_("10.0.0.1")))
            await settle(builder, 1)
            store.replace_location("slice.yaml", objects_from_yaml(slice_("10.0.0.2")))
            await settle(builder, 2)
            store.replace_location("vs.yaml", objects_from_yaml(vs(1)))
            await settle(builder, 3)
            assert [r for _, r in ads.updates] == [
                "endpoint change: EndpointSlice", "endpoint change: EndpointSlice", "config change: VirtualService"]
        finally:
            stop.set()
            task.cancel()

    run(main())


def test_classify():
    ep = ConfigKey("EndpointSlice", "default", "a")
    pod = ConfigKey("Pod", "default", "p")
    gw = ConfigKey("Gateway", "default", "g")
    assert MeshBuilder.classify({ep, pod}) == "endpoint"
    assert MeshBuilder.classify({ep, gw}) == "config"
