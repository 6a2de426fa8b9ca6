"""One connected proxy: who it is, what it subscribed to, and its event queue.

Everything that can make the server write to a stream (the client's requests and
pushes for new mesh snapshots) goes through the connection's `EventQueue` and is
handled by one task, so responses on a stream are produced strictly in order.
"""
from __future__ import annotations

import asyncio
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, TypeAlias

from envoy.service.discovery.v3 import discovery_pb2

from ..model.proxy import Proxy
from .subscription import Subscription


@dataclass
class Push:
    """'Re-check against the newest mesh'. Carries no snapshot: the handler reads the
    server's current one, so a queued push never goes stale. `types` are the types to
    re-check (None: every type, e.g. a secret rotation or an operator's request)."""

    reasons: set[str] = field(default_factory=set)
    types: set[str] | None = field(default_factory=set)
    queued_at: float = field(default_factory=time.monotonic)


Event: TypeAlias = discovery_pb2.DiscoveryRequest | discovery_pb2.DeltaDiscoveryRequest | Push


class EventQueue:
    """Requests in arrival order, plus at most one pending Push.

    Requests are bounded: when the handler falls behind, `put_request` waits, which
    stops reading the stream and lets gRPC flow control push back on the client.
    Pushes never wait: a push arriving while one is already queued merges into it
    (only the latest snapshot matters), so `AdsServer.update` cannot block on a slow
    proxy and a slow proxy holds at most one pending push.
    """

    def __init__(self, max_requests: int = 64):
        self._items: deque[Event] = deque()
        self._max_requests = max_requests
        self._requests = 0
        self._push: Push | None = None
        self._closed = False
        self._readable = asyncio.Event()
        self._writable = asyncio.Event()
        self._writable.set()
        self._closed_event = asyncio.Event()
        self._consumer_waiting = False

    def __len__(self) -> int:
        return len(self._items)

    @property
    def closed(self) -> bool:
        return self._closed

    async def put_request(self, request: discovery_pb2.DiscoveryRequest) -> None:
        while self._requests >= self._max_requests and not self._closed:
            self._writable.clear()
            await self._writable.wait()
        if self._closed:
            return
        self._items.append(request)
        self._requests += 1
        self._readable.set()

    def push(self, reason: str, types: set[str] | None = None) -> bool:
        """Queue a push of `types` (None: all); False if it merged into one already
        waiting (the merged push re-checks the union of both)."""
        if self._closed:
            return False
        if self._push is not None:
            self._push.reasons.add(reason)
            if self._push.types is not None:
                if types is None:
                    self._push.types = None
                else:
                    self._push.types |= types
            return False
        self._push = Push({reason}, None if types is None else set(types))
        self._items.append(self._push)
        self._readable.set()
        return True

    @property
    def idle(self) -> bool:
        """The consumer is waiting for the next event and none is queued: handling a
        request right now, without awaiting anything, is what the consumer would do."""
        return self._consumer_waiting and not self._items and not self._closed

    @property
    def pending_push(self) -> Push | None:
        return self._push

    def close(self) -> None:
        """The stream is gone: wake everyone; `get` returns None from now on."""
        self._closed = True
        self._items.clear()
        self._readable.set()
        self._writable.set()
        self._closed_event.set()

    async def wait_closed(self) -> None:
        await self._closed_event.wait()

    async def get(self) -> Event | None:
        while not self._items:
            if self._closed:
                return None
            self._readable.clear()
            self._consumer_waiting = True
            try:
                await self._readable.wait()
            finally:
                self._consumer_waiting = False
        if self._closed:
            return None
        item = self._items.popleft()
        if item is self._push:
            self._push = None
        else:
            self._requests -= 1
            self._writable.set()
        return item


@dataclass
class Connection:
    id: str  # `<node id>-<n>`, as istiod names connections
    proxy: Proxy
    peer: str
    connected_at: float = field(default_factory=time.time)
    subscriptions: dict[str, Subscription] = field(default_factory=dict)
    events: EventQueue = field(default_factory=EventQueue)
    # The snapshot this stream has been served from. Requests are answered from it,
    # and only a Push moves it forward, so answers never overtake a push in
    # PUSH_ORDER (clusters before endpoints, listeners before routes).
    mesh: Any = None
    # Who the stream proved to be (secure port, bearer token): a ca.Identity, or None
    # on the plaintext port. Decides whether SDS `default` (the key) may be sent.
    identity: Any = None
    # SDS names already reported as withheld on this stream (log once, not per request).
    withheld_logged: set[str] = field(default_factory=set)
    delta: bool = False  # incremental xDS (DeltaAggregatedResources) rather than SotW
    # Called with the connection when the server gives up on it (a write stuck past the
    # timeout): ends the stream so the proxy reconnects.
    abort: Any = None
    # The xDS node of the first request, extensions dropped (debug views; may be None).
    node: Any = None
    # SotW: the nonce field of each type's last response -> its subscription (acks.py).
    acks: dict[bytes, Subscription] = field(default_factory=dict)

    def subscription(self, type_url: str) -> Subscription:
        sub = self.subscriptions.get(type_url)
        if sub is None:
            sub = self.subscriptions[type_url] = Subscription(type_url)
        return sub
