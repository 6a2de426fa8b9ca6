"""Driving meshd's Kubernetes source in a test: run it on an API server (the real one's
`kube` or the stand-in) until a block ends, wait for what it stores, count the store's
change notifications."""
from __future__ import annotations

import asyncio
import contextlib
import threading
import time

from controlplane.config.objects import ConfigObject
from controlplane.config.store import ConfigStore
from controlplane.kube.source import KubernetesSource, ReflectorOptions

# Quick retries and rediscovery, pages of two (so paging is exercised), long watches.
FAST = ReflectorOptions(backoff_initial=0.02, backoff_max=0.2, watch_timeout=(30, 30), request_timeout=5,
                        page_size=2, rediscover_interval=0.2)


def k8s_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("k8s-")]


# A bound, not an expected duration: the interrupt cuts an open watch at once, but a thread
# still waiting for a response's headers ends only when that request does (its read
# timeout: the longest watch plus the request timeout).
THREADS_END_WITHIN = FAST.watch_timeout[1] + FAST.request_timeout + 5


async def watch_threads_gone() -> None:
    """The source has returned; its watch threads (one per watched kind) end as their
    connections close: wait for that, do not assume it."""
    deadline = time.monotonic() + THREADS_END_WITHIN
    while k8s_threads() and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    assert k8s_threads() == [], f"watch threads left running: {k8s_threads()}"


@contextlib.asynccontextmanager
async def running(api, store: ConfigStore | None = None, sync: bool = True, **kwargs):
    """The source on `api` (the real server's `kube` or the stand-in) until the block ends."""
    store = store or ConfigStore()
    api_client = api.api_client()
    src = KubernetesSource(api_client, store, **{"options": FAST, **kwargs})
    stop = asyncio.Event()
    task = asyncio.create_task(src.run(stop))
    try:
        if sync:
            assert await src.wait_synced(5), "initial lists not synced within 5s"
        yield src, store
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)
        api_client.close()
        await watch_threads_gone()


async def until(pred, what: str, timeout: float = 3.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"{what}: not within {timeout}s")


class Changes:
    """Counts the store's change notifications, per object key."""

    def __init__(self, store: ConfigStore):
        self.keys: list = []
        store.subscribe(lambda _snap, changed: self.keys.extend(changed))

    def clear(self):
        self.keys.clear()


def get(store, kind, ns, name) -> ConfigObject | None:
    return store.snapshot().get(kind, ns, name)
