"""Full garbage collections happen between pushes (controlplane/gcpolicy.py)."""
from __future__ import annotations

import asyncio
import gc

from controlplane import gcpolicy


def test_full_collections_wait_for_a_quiet_moment_but_not_for_ever(monkeypatch):
    collected: list[bool] = []
    busy = {"now": True}
    monkeypatch.setattr(gcpolicy.gc, "collect", lambda *a: collected.append(busy["now"]) or 0)
    frozen: list[str] = []
    monkeypatch.setattr(gcpolicy.gc, "freeze", lambda: frozen.append("freeze"))
    monkeypatch.setattr(gcpolicy.gc, "unfreeze", lambda: frozen.append("unfreeze"))

    async def main():
        stop = asyncio.Event()
        task = asyncio.create_task(gcpolicy.collect_when_idle(lambda: busy["now"], stop, interval=0.1,
                                                              max_wait=0.6, poll=0.02, deep_interval=0.5))
        await asyncio.sleep(0.35)
        assert collected == []  # due, but a push is under way
        busy["now"] = False
        await asyncio.sleep(0.1)
        assert collected == [False]  # the first quiet moment
        busy["now"] = True
        await asyncio.sleep(0.8)
        assert collected == [False, True]  # busy for longer than max_wait: collected anyway
        # Survivors frozen after each; the second, past deep_interval, unfroze first.
        assert frozen == ["freeze", "unfreeze", "freeze"]
        stop.set()
        await asyncio.wait_for(task, 1)
        assert frozen[-1] == "unfreeze"  # left as it was

    asyncio.run(main())


def test_thresholds_leave_full_collections_to_the_policy_while_it_runs():
    before = gc.get_threshold()

    async def main():
        stop = asyncio.Event()
        task = asyncio.create_task(gcpolicy.collect_when_idle(lambda: True, stop, poll=0.02))
        await asyncio.sleep(0.05)
        young, middle, full = gc.get_threshold()
        assert young > 700 and full >= 1_000_000
        task.cancel()  # as serving ends
        await asyncio.gather(task, return_exceptions=True)
        assert gc.get_threshold() == before

    try:
        asyncio.run(main())
    finally:
        gc.set_threshold(*before)


def test_start_up_holds_the_collector_and_the_switch_interval_until_it_ends():
    """meshd serve's start (startup.py): no cyclic collection and a short switch interval
    until end(), then the start's objects frozen and both as they were; end() twice is
    harmless, and begin() leaves a collector someone else disabled alone."""
    import gc
    import sys

    from controlplane import startup

    switch = sys.getswitchinterval()
    frozen = gc.get_freeze_count()
    assert gc.isenabled()
    try:
        startup.begin()
        assert not gc.isenabled() and sys.getswitchinterval() == startup.SWITCH_INTERVAL
        startup.end()
        assert gc.isenabled() and sys.getswitchinterval() == switch
        assert gc.get_freeze_count() > frozen  # the start's objects frozen
        startup.end()
        assert gc.isenabled() and sys.getswitchinterval() == switch
        gc.disable()
        startup.begin()
        startup.end()
        assert not gc.isenabled()  # not ours to turn on
    finally:
        gc.unfreeze()
        gc.enable()
        sys.setswitchinterval(switch)
