"""The interpreter's settings while `meshd serve` starts (docs/startup.md): `begin()` is
the first thing the command does, `end()` comes once the server is ready and warm
(app.py's warm-up). In-process servers (tests) never call them.

- No cyclic garbage collection in between: what a start allocates (the modules, the
  config types, the initial lists, the first snapshot) lives as long as the server, and
  the collector's hundreds of passes over that growing heap were about a seventh of the
  CPU of reaching ready. At the end the start's objects are frozen (the young
  collections never scan them again; gcpolicy's deep collections unfreeze them) and the
  collector is on again, with gcpolicy's thresholds once it runs.
- A switch interval of half a millisecond, not five: the start hands the interpreter
  lock back and forth between the main thread, the thread receiving the initial lists
  and the threads it starts (each `Thread.start()` waits until the new thread runs),
  and every such wait was up to a full interval.
"""
from __future__ import annotations

import gc
import sys

SWITCH_INTERVAL = 0.0005
# A start that takes longer than this (an API server away, retried) must not go on
# without a collector: the failed requests' tracebacks are cycles. app.py ends it then.
HOLD_MAX = 30.0

_held_gc = False
_switch: float | None = None


def begin() -> None:
    global _held_gc, _switch
    if gc.isenabled():
        gc.disable()
        _held_gc = True
    if _switch is None:
        _switch = sys.getswitchinterval()
        sys.setswitchinterval(SWITCH_INTERVAL)


def end() -> None:
    global _held_gc, _switch
    if _held_gc:
        gc.freeze()
        gc.enable()
        _held_gc = False
    if _switch is not None:
        sys.setswitchinterval(_switch)
        _switch = None
