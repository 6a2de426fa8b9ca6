"""Fairness and back-pressure for writes to proxies.

- At most `max_in_flight` responses are being written at any time (istiod's push
  throttle, PILOT_PUSH_THROTTLE). The slots are handed out first come, first served, so
  during a push to thousands of proxies each waits its turn and memory holds at most
  that many responses on their way out (a sidecar's CDS is about a megabyte).
- A write that does not complete within `write_timeout` means the proxy stopped reading
  (gRPC flow control holds the write until the peer's window opens). The stream is then
  given up: `StreamStuck` is raised, the server forgets the connection and frees its
  slot at once, and ends the stream (UNAVAILABLE) as soon as the pending bytes are
  read; the proxy reconnects and is served from scratch. Only that proxy's slot was
  held, and only until the timeout, so a stalled proxy never stops the others.
- Each connection is handled by its own task, and a push only queues one coalescing
  event per connection (connection.py): a slow proxy delays nobody's queue but its own.
"""
from __future__ import annotations

import asyncio
import time
from typing import Any


class StreamStuck(Exception):
    """A write to a proxy did not complete in time. `pending` is that write, still
    running: gRPC cannot take a message back, and the stream's end (its status) can only
    follow it, so the server ends the stream once the proxy has read it (or the
    connection dies: a proxy that is wholly stuck stops answering HTTP/2 keepalive pings)."""

    def __init__(self, message: str, pending: "asyncio.Future | None" = None):
        super().__init__(message)
        self.pending = pending


class PushLimiter:
    def __init__(self, max_in_flight: int = 100, write_timeout: float = 30.0):
        if max_in_flight < 1:
            raise ValueError("max_in_flight must be at least 1")
        self.max_in_flight = max_in_flight
        self.write_timeout = write_timeout
        self._slots = asyncio.Semaphore(max_in_flight)
        self.in_flight = 0
        self.waiting = 0

    async def write(self, context: Any, data: Any) -> float:
        """Write one response when a slot is free; returns the seconds spent waiting for
        the slot. Raises StreamStuck when the write itself takes longer than the timeout."""
        queued = time.perf_counter()
        self.waiting += 1
        try:
            await self._slots.acquire()
        finally:
            self.waiting -= 1
        waited = time.perf_counter() - queued
        self.in_flight += 1
        try:
            if self.write_timeout > 0:
                # Not cancelled on timeout (shield): a cancelled gRPC write leaves the
                # stream unable to ever send its status.
                write = asyncio.ensure_future(context.write(data))
                try:
                    await asyncio.wait_for(asyncio.shield(write), self.write_timeout)
                except asyncio.TimeoutError:
                    raise StreamStuck(f"a write did not complete within {self.write_timeout:g}s", write) from None
            else:
                await context.write(data)
        finally:
            self.in_flight -= 1
            self._slots.release()
        return waited
