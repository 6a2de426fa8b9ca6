"""When Python's cyclic garbage collector runs in meshd.

meshd holds a large heap that lives long (the generated resources, every stream's
state: a few million tracked objects for 2,000 proxies) and, during a push, allocates
many objects that live just long enough (the 2,000 streams' coroutines, futures and
gRPC operations of one push) to be promoted. With CPython's default thresholds
(700, 10, 10) that made a full collection, 0.3 s of one core, run inside nearly every
push, and young collections another 0.2 s per push: about a third of meshd's CPU for an
endpoint change, measured with gc.callbacks on the benchmark's reference mesh.

So: young collections run less often (a push's short-lived objects mostly die before
the next one), and full collections are not left to the allocation counters but made
here, when no push is in progress (at most every `interval`, and after `max_wait`
even under constant churn). After each, the survivors are frozen (gc.freeze): the next
collection scans only what was allocated since, tens of milliseconds instead of a
0.3-0.5 s pause that could land just as a change arrives. Cyclic garbage among frozen
objects (a stream's state after its proxy left, an old snapshot) is reclaimed by a deep
collection that unfreezes everything, every `deep_interval`, also at a quiet moment.
Reference counting, which frees nearly everything, is untouched.
"""
from __future__ import annotations

import asyncio
import gc
import time
from collections.abc import Callable

import structlog

log = structlog.get_logger("meshd.gc")

# gen0: collect after this many net allocations (CPython: 700); gen1 every 20 of those
# (10); full collections only from collect_when_idle (a threshold never reached).
THRESHOLDS = (50_000, 20, 1_000_000_000)


async def collect_when_idle(busy: Callable[[], bool], stop: asyncio.Event, interval: float = 30.0,
                            max_wait: float = 300.0, poll: float = 1.0, deep_interval: float = 600.0) -> None:
    """Full collections between pushes: once `interval` has passed since the last one,
    at the first moment `busy()` is false, or regardless once `max_wait` has passed;
    survivors frozen, and everything unfrozen and collected every `deep_interval`.
    THRESHOLDS apply while this runs; the process is left as it was when it ends."""
    before = gc.get_threshold()
    gc.set_threshold(*THRESHOLDS)
    last = last_deep = time.monotonic()
    try:
        while not stop.is_set():
            try:
                await asyncio.wait_for(stop.wait(), poll)
                return
            except TimeoutError:
                pass
            now = time.monotonic()
            since = now - last
            if since < interval or (busy() and since < max_wait):
                continue
            deep = now - last_deep >= deep_interval
            started = time.perf_counter()
            if deep:
                gc.unfreeze()
                last_deep = now
            found = gc.collect()
            gc.freeze()
            last = time.monotonic()
            took = time.perf_counter() - started
            # A long one is a pause of the whole server: worth an info line.
            (log.info if took >= 0.05 else log.debug)(
                "gc full collection", seconds=round(took, 3), unreachable=found, deep=deep,
                frozen=gc.get_freeze_count(), waited=round(since, 1))
    finally:
        gc.unfreeze()  # serving ends: leave the process as it was (tests serve in-process)
        gc.set_threshold(*before)
