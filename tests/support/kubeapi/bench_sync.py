"""How long the Kubernetes source takes to sync N Pods from the stand-in API server, and
the longest the event loop was held up meanwhile. Prints figures; asserts nothing.

    python -m tests.support.kubeapi.bench_sync [N ...]     (default: 500 2000)
"""
from __future__ import annotations

import asyncio
import logging
import sys
import time

import structlog
from kubernetes import client

from controlplane.config.store import ConfigStore
from controlplane.kube.source import KubernetesSource, ReflectorOptions

from .server import FakeApiServer


def pod(i: int) -> dict:
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": f"p{i}", "namespace": "bench", "labels": {"app": f"a{i % 50}"}},
            "spec": {"containers": [{"name": "app", "image": "app:1"}]},
            "status": {"phase": "Running", "podIP": f"10.{i // 65536}.{i // 256 % 256}.{i % 256}"}}


async def _sync(api: FakeApiServer) -> tuple[float, float]:
    api_client = client.ApiClient(api.configuration())
    src = KubernetesSource(api_client, ConfigStore(), options=ReflectorOptions())
    stop = asyncio.Event()
    stalls: list[float] = []

    async def probe():  # how late a 10 ms sleep wakes up = how long the loop was busy
        while not stop.is_set():
            t = time.perf_counter()
            await asyncio.sleep(0.01)
            stalls.append(time.perf_counter() - t - 0.01)

    started = time.perf_counter()
    task, prober = asyncio.create_task(src.run(stop)), asyncio.create_task(probe())
    await src.wait_synced()
    elapsed = time.perf_counter() - started
    stop.set()
    await task
    await prober
    api_client.close()
    return elapsed, max(stalls, default=0.0)


def main(argv: list[str]) -> None:
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    with FakeApiServer() as api:  # warm-up: the client's first calls build its models (~1 s)
        asyncio.run(_sync(api))
    for n in [int(a) for a in argv] or [500, 2000]:
        with FakeApiServer(history=n + 10) as api:
            for i in range(n):
                api.apply(pod(i))
            elapsed, stall = asyncio.run(_sync(api))
        print(f"{n:6d} pods: synced in {elapsed:6.2f} s, longest loop stall {stall * 1000:5.0f} ms")


if __name__ == "__main__":
    main(sys.argv[1:])
