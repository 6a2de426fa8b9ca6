"""The seam between the stream host (host.py) and the xDS protocols (sotw.py, delta.py).

The host owns what every stream has whatever its protocol: the gRPC call, the node and
the identity checks, the connection and its event queue, the reader task, the fan-out of
pushes, the write limiter and the push log. A protocol owns one state machine: how a
request changes a subscription, when it is answered, what a push sends, how responses
are framed. The host calls a protocol through `Protocol`; a protocol reaches the host,
and through it the served data, only through `Host` (compare go-control-plane, whose
pkg/server/sotw/v3 and pkg/server/delta/v3 sit side by side over pkg/server/stream/v3
and reach the data through the narrow cache interface; and istiod, whose xds.Connection
is the context one stream's per-type state hangs from).

ACKs and NACKs are the protocols' to recognise (their shapes differ: a SotW ACK repeats
the names, a delta ACK carries none), but what they record is the same, in the shared
`Subscription` (subscription.py): `record_ack`, `record_nack`, the nonces of
`next_nonce`; the host reports a NACK (`Host.nacked`: metric and log line).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NoReturn, TypeAlias
from typing import Protocol as _Protocol

import grpc

from ..generators.resources import ResourceSet
from .caches import ServerCaches
from .connection import Connection, Push
from .limits import Limits
from .subscription import Nack, Subscription
from .view import ResourceView

# A response: bytes already in wire form (wire.py), or a callable making them once the
# write limiter grants the stream a slot (so memory holds only the responses in flight).
ResponseData: TypeAlias = bytes | Callable[[], bytes]

# One stream's gRPC context. grpc's stubs make it generic in the request and response
# types; ours are Envoy's generated messages, which have no stubs (a string: the runtime
# class is not subscriptable).
Context: TypeAlias = "grpc.aio.ServicerContext[Any, Any]"


class Protocol(_Protocol):
    """One xDS protocol's state machine, called by the host for each stream's events, in
    order, from the stream's one handler task (`settle_ack` from its reader)."""

    def settle_ack(self, conn: Connection, request: Any) -> bool:
        """Record `request` at once if it is a plain ACK of the last response that needs
        no answer, and say so (True); False: it goes through `on_request`. Called by the
        reader while the handler waits for work: no queueing, no wake-up of the handler,
        per proxy per push. Must not await or write."""
        ...

    async def on_request(self, conn: Connection, context: Context, request: Any) -> None:
        """A request from the client (the first carries the node; the host has read it)."""
        ...

    async def on_push(self, conn: Connection, context: Context, push: Push) -> None:
        """Bring the client up to `conn.mesh` (the host has just moved it to the newest
        snapshot) for the types in `push.types` (None: all)."""
        ...


class Host(_Protocol):
    """What a protocol may use of the stream host."""

    view: ResourceView  # what a connection is served (types, keys, resolved sets)
    caches: ServerCaches  # memos shared between the server's streams
    limits: Limits  # what one request may ask for
    log: Any  # structlog logger
    metrics: Any  # server.metrics.Metrics

    async def resolve(self, conn: Connection, sub: Subscription, *,
                      unless_current: bool) -> tuple[Any, ResourceSet] | None:
        """(generator key, resources) for `sub` under `conn.mesh`. None when
        `unless_current` and the key equals the one of the last response (the client
        holds the current output), or when generation failed (counted and logged: the
        stream goes on serving the last good state)."""
        ...

    def sent(self, conn: Connection, sub: Subscription, response: Sent) -> None:
        """A response is about to be written: metrics, the debug observer, the push log."""
        ...

    async def write(self, conn: Connection, context: Context, data: ResponseData) -> None:
        """Write a response through the limiter (raises flow.StreamStuck)."""
        ...

    def nacked(self, conn: Connection, sub: Subscription, nack: Nack, **fields: Any) -> None:
        """The client rejected a response: metric and log line (`fields` join the log)."""
        ...

    async def refuse(self, conn: Connection, context: Context, problem: str,
                     type_url: str, **fields: Any) -> NoReturn:
        """End the stream with RESOURCE_EXHAUSTED: a request over the limits."""
        ...


@dataclass(slots=True)  # not frozen: one per response, and a frozen init costs three times as much
class Sent:
    """One response, as the push log, metrics and debug views see it (never changed)."""

    count: int  # resources in it
    size: int  # their bytes
    version: str
    nonce: str
    request: bool  # the answer to a request (else a push)
    reason: str
    started: float  # time.perf_counter() when the work for it began
    removed: int = 0  # delta: names listed as removed
    # Logged at debug level: incremental EDS pushes (endpoint churn reaches thousands of
    # proxies a second), as istiod does.
    incremental: bool = False
