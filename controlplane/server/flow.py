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

The timeout is a timer on the event loop, not a task per write: pushes to thousands of
proxies pay for a timer handle each, nothing more.
"""
from __future__ import annotations

import asyncio
import time
from typing import Any, Callable


class StreamStuck(Exception):
    """A write to a proxy took longer than the timeout (raised once it completed)."""


class PushLimiter:
    def __init__(self, max_in_flight: int = 100, write_timeout: float = 30.0):
        if max_in_flight < 1:
            raise ValueError("max_in_flight must be at least 1")
        self.max_in_flight = max_in_flight
        self.write_timeout = write_timeout
        self._slots = asyncio.Semaphore(max_in_flight)
        self.in_flight = 0
        self.waiting = 0

    async def write(self, context: Any, data: Any, on_stuck: Callable[[], None] | None = None) -> float:
        """Write one response when a slot is free; returns the seconds spent waiting for
        the slot. `data` is bytes or a callable making them (called once the slot is
        held). `on_stuck` is called when the write outlasts the timeout; the write then
        raises StreamStuck when it finally completes."""
        queued = time.perf_counter()
        self.waiting += 1
        try:
            await self._slots.acquire()
        finally:
            self.waiting -= 1
        waited = time.perf_counter() - queued
        self.in_flight += 1
        held = True
        stuck = False

        def release() -> None:
            nonlocal held
            if held:
                held = False
                self.in_flight -= 1
                self._slots.release()

        def timed_out() -> None:
            nonlocal stuck
            stuck = True
            release()  # the others need not wait for this proxy
            if on_stuck is not None:
                on_stuck()

        timer = None
        try:
            if callable(data):
                data = data()
            if self.write_timeout > 0:
                timer = asyncio.get_running_loop().call_later(self.write_timeout, timed_out)
            await context.write(data)
        finally:
            if timer is not None:
                timer.cancel()
            release()
        if stuck:
            raise StreamStuck(f"a write did not complete within {self.write_timeout:g}s")
        return waited
