"""Fairness and back-pressure for writes to proxies.

- At most `max_in_flight` responses are being written at any time (istiod's push
  throttle, PILOT_PUSH_THROTTLE). The slots are handed out first come, first served, so
  during a push to thousands of proxies each waits its turn; a response's bytes are made
  only once its slot is held, so memory holds at most that many responses on their way
  out (a sidecar's CDS is about a megabyte).
- A write that does not complete within `write_timeout` means the proxy stopped reading
  (gRPC flow control holds the write until the peer's window opens). When the timer
  fires, the slot is freed at once and `on_stuck` lets the server forget the connection;
  the write itself is left to finish (gRPC cannot take a message back, and a cancelled
  write leaves a stream that can never send its status). Once it completes, if ever,
  `StreamStuck` is raised and the server ends the stream (UNAVAILABLE): the proxy
  reconnects and is served from scratch. A proxy that is wholly stuck stops answering
  HTTP/2 keepalive pings and gRPC closes its connection. Only that proxy's slot was held,
  and only until the timeout, so a stalled proxy never stops the others.
- Each connection is handled by its own task, and a push only queues one coalescing
  event per connection (connection.py): a slow proxy delays nobody's queue but its own.

The timeout is watched by one sweep over the writes in flight (oldest first), not a timer
per write, and a free slot is taken without awaiting anything: a push to thousands of
proxies pays a dict entry per write. A write is given up between `write_timeout` and
1.25 times it.
"""
from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable
from typing import Any


class StreamStuck(Exception):
    """A write to a proxy took longer than the timeout (raised once it completed)."""


class _Write:
    __slots__ = ("started", "stuck", "on_stuck")

    def __init__(self, started: float, on_stuck: Callable[[], None] | None):
        self.started = started
        self.stuck = False
        self.on_stuck = on_stuck


class PushLimiter:
    def __init__(self, max_in_flight: int = 100, write_timeout: float = 30.0):
        if max_in_flight < 1:
            raise ValueError("max_in_flight must be at least 1")
        self.max_in_flight = max_in_flight
        self.write_timeout = write_timeout
        self.in_flight = 0
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._writes: dict[_Write, None] = {}  # holding a slot, oldest first
        self._sweep: asyncio.TimerHandle | None = None
        self.last_write = 0.0  # time.monotonic() when the last write ended (gcpolicy's "quiet")

    @property
    def waiting(self) -> int:
        return sum(1 for w in self._waiters if not w.done())

    async def _acquire(self) -> None:
        if self.in_flight < self.max_in_flight and not self._waiters:
            self.in_flight += 1
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(fut)
        try:
            await fut  # the slot is handed over by _release (in_flight already counts it)
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():
                self._release()  # granted as we were cancelled: pass it on
            else:
                try:
                    self._waiters.remove(fut)
                except ValueError:
                    pass
            raise

    def _release(self) -> None:
        while self._waiters:
            fut = self._waiters.popleft()
            if not fut.done():
                fut.set_result(None)  # hand the slot over: in_flight unchanged
                return
        self.in_flight -= 1

    def _free(self, w: _Write) -> None:
        if w in self._writes:  # once: at the timeout or when the write ends
            del self._writes[w]
            self._release()

    def _swept(self) -> None:
        self._sweep = None
        now = time.monotonic()
        for w in list(self._writes):
            if now - w.started < self.write_timeout:
                break  # the rest started later
            w.stuck = True
            self._free(w)  # the others need not wait for this proxy
            if w.on_stuck is not None:
                w.on_stuck()
        self._watch()

    def _watch(self) -> None:
        if self._sweep is None and self._writes and self.write_timeout > 0:
            oldest = next(iter(self._writes)).started
            delay = max(oldest + self.write_timeout - time.monotonic(), 0) + self.write_timeout / 4
            self._sweep = asyncio.get_running_loop().call_later(delay, self._swept)

    async def write(self, context: Any, data: Any, on_stuck: Callable[[], None] | None = None) -> float:
        """Write one response when a slot is free; returns the seconds spent waiting for
        the slot. `data` is bytes or a callable making them (called once the slot is
        held). `on_stuck` is called when the write outlasts the timeout; the write then
        raises StreamStuck when it finally completes."""
        queued = time.perf_counter()
        await self._acquire()
        waited = time.perf_counter() - queued
        w = _Write(time.monotonic(), on_stuck)
        self._writes[w] = None
        self._watch()
        try:
            if callable(data):
                data = data()
            await context.write(data)
        finally:
            self._free(w)
            self.last_write = time.monotonic()
        if w.stuck:
            raise StreamStuck(f"a write did not complete within {self.write_timeout:g}s")
        return waited
