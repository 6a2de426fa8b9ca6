"""The ADS stream host: one gRPC stream per Envoy, all xDS types on it, either protocol.

The host owns what every stream has, whatever its protocol (protocol.py draws the
line): the gRPC call, the node and identity checks, the connection, its event queue and
its reader task, the fan-out of pushes to connections, the write limiter and the push
log. The protocols' state machines are beside it: state of the world in sotw.py
(StreamAggregatedResources), incremental in delta.py (DeltaAggregatedResources).

Per stream, a reader task moves the client's requests into the connection's
EventQueue and the stream's handler task consumes that queue, handing requests and
pushes to the protocol one at a time: responses on a stream never interleave. A plain
ACK needing no answer, arriving while the handler waits for work, is settled by the
reader itself (Protocol.settle_ack). `AdsServer.update` only queues a (coalescing) push
per connection, so a slow proxy never delays the others.

Pushes (`update`) go only to the connections whose output the new snapshot changes: for
each subscribed type the generator's cache key (what the output depends on) is compared
with the key of the last response; equal keys mean nothing to send, so a Gateway change
never reaches a sidecar's queue. Responses are written through the PushLimiter
(flow.py): a bounded number in flight, a stuck stream dropped.

Stream rules: the first request carries the node; a node we cannot parse ends the stream
with INVALID_ARGUMENT. Identity: a stream carries the identity it authenticated as
(`serve_stream(..., identity=...)`; the secure port's servicer in secure.py
authenticates before any request is read). With an identity, the node must claim
exactly that namespace and service account, checked on the first request, before
anything is served; otherwise the stream ends with PERMISSION_DENIED (as istiod's
authorize). SDS names the SecretProvider owns (`default`, `ROOTCA`) are answered by it,
with the identity, never by the shared generator cache; other SDS names (gateway
credentials) still come from the generator if it serves SDS.
"""
from __future__ import annotations

import asyncio
import dataclasses
import itertools
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any, NoReturn, Protocol

import grpc
import structlog
from envoy.service.discovery.v3 import discovery_pb2

from ca import Identity

from .. import names
from ..generators.resources import ResourceSet
from ..model.proxy import NodeError, Proxy, ProxyRefused, parse_node
from ..security.authz import claimed_identity, identity_mismatch
from ..security.sds import SecretProvider
from .caches import ServerCaches
from .connection import Connection, EventQueue, Push
from .delta import DeltaProtocol
from .flow import PushLimiter, StreamStuck
from .limits import Limits
from .metrics import Metrics
from .protocol import Context, ResponseData, Sent
from .protocol import Protocol as StreamProtocol
from .sotw import SotwProtocol
from .subscription import Nack, Subscription
from .view import ResourceView


class Generator(Protocol):
    def types(self) -> Sequence[str]: ...

    # `key`: what the generator's optional key(mesh, proxy, type_url) gave, when the
    # server has it (None otherwise): the generator need not work it out again.
    def generate(self, mesh: Any, proxy: Proxy, type_url: str, key: Any = None) -> ResourceSet: ...


@dataclasses.dataclass(frozen=True)
class AdsOptions:
    trust_domain: str = names.TRUST_DOMAIN
    max_queued_requests: int = 64  # per stream; beyond, the stream is not read (flow control)
    max_pushes_in_flight: int = 100  # responses being written at once (istiod's PILOT_PUSH_THROTTLE)
    write_timeout: float = 30.0  # a proxy that stops reading longer than this is disconnected
    # Seconds without a write before the server counts as not busy (gcpolicy).
    quiet_after: float = 1.0
    limits: Limits = Limits()


def byte_count(n: int) -> str:
    """Human-readable size exactly as istiod's util.ByteCount prints it: 34B, 1.2kB, 3.4MB."""
    if n < 1000:
        return f"{n}B"
    div, exp, m = 1000, 0, n // 1000
    while m >= 1000:
        div, exp, m = div * 1000, exp + 1, m // 1000
    return f"{n / div:.1f}{'kMGTPE'[exp]}B"


def _debug_node(first: Any) -> Any:
    """The stream's node for debug views (config_dump's bootstrap), without the ~60 KB
    extension list Envoy sends."""
    node = type(first.node)()
    node.CopyFrom(first.node)
    node.ClearField("extensions")
    return node


class AdsServer:
    """The stream host; implements protocol.Host for SotwProtocol and DeltaProtocol."""

    def __init__(
        self,
        generator: Generator,
        metrics: Metrics,
        logger: Any = None,
        *,
        secrets: SecretProvider | None = None,
        options: AdsOptions = AdsOptions(),
        caches: ServerCaches | None = None,
    ):
        self.options = options
        self.limits = options.limits
        self.metrics = metrics
        self.log = logger if logger is not None else structlog.get_logger("meshd.ads")
        self.view = ResourceView(generator, secrets, on_withheld=self._withheld)
        self.caches = caches if caches is not None else ServerCaches()
        self.limiter = PushLimiter(options.max_pushes_in_flight, options.write_timeout)
        self._secrets = secrets
        self.sotw = SotwProtocol(self)
        self.delta = DeltaProtocol(self)
        self._mesh: Any = None
        self._ready = asyncio.Event()
        self._connections: dict[str, Connection] = {}
        self._per_proxy: dict[str, int] = {}  # node id -> open connections (metrics series)
        self._ids = itertools.count(1)
        self._closing: str | None = None  # set by close_all(): the server is shutting down
        # perf_counter() of the last update() until its first response is written (logged)
        self._first_write: float | None = None
        self.express = False  # the last update() took the express path of an endpoint change
        # Debug hook (controlplane/debug/push_status.py): push_started(reason, n_conns),
        # sent(conn, sub, n_resources, size, request), proxy_pushed(conn). None: off.
        self.observer: Any = None
        # Told of each proxy that connects (`await connected(proxy, identity)`, which may
        # refuse it with model.proxy.ProxyRefused) and of each stream that ends
        # (`disconnected(proxy)`, synchronous): WorkloadGroup auto-registration
        # (sources/autoregistration.py), wired by app.py. None: nobody listens.
        self.registrations: Any = None

    # --- public API --------------------------------------------------------------
    @property
    def ready(self) -> bool:
        """True once a mesh snapshot exists (requests before that wait, unanswered)."""
        return self._mesh is not None

    @property
    def mesh(self) -> Any:
        return self._mesh

    @property
    def busy(self) -> bool:
        """A push is under way: some connection has one queued, a response is being
        written, or one was written less than `quiet_after` seconds ago (the requests that
        follow a push, such as Envoy's EDS re-requests, are answered between writes).
        gcpolicy waits for a quiet moment."""
        limiter = self.limiter
        return (limiter.in_flight > 0 or time.monotonic() - limiter.last_write < self.options.quiet_after
                or any(c.events.pending_push is not None for c in self._connections.values()))

    def connections(self) -> list[Connection]:
        return list(self._connections.values())

    def update(self, mesh: Any, reason: str = "config") -> int:
        """Serve `mesh` from now on and push it to every connected proxy whose output it
        changes (all of them when `mesh` is the snapshot already served: an explicit
        re-push). Call from the event loop; never blocks (pushes are queued per
        connection). Returns the connections queued."""
        previous, self._mesh = self._mesh, mesh
        self.metrics.push_triggered(reason)
        if self.observer is not None:
            self.observer.push_started(reason, len(self._connections))
        self._first_write = time.perf_counter()
        change = self.view.endpoint_change(previous, mesh)
        self.express = change is not None
        rules = self.view.rule_change(previous, mesh) if change is None else None
        queued = 0
        for conn in self._connections.values():
            if previous is None or mesh is previous:
                types = None
            elif change is not None and conn.proxy.ip not in change.addresses:
                # The express path (generators/express.py): an endpoint change only EDS
                # reads reaches the subscribers of the changed hosts' assignments, EDS only.
                eds = conn.subscriptions.get(names.ENDPOINT)
                types = {names.ENDPOINT} if eds is not None and (eds.wildcard or change.touches(eds.names)) else set()
            elif rules is not None and not rules.reaches(conn.proxy):
                # A DestinationRule change reaches only the sidecars that see its hosts
                # (generators/express.py RuleChange): the others' output is unchanged.
                types = set()
            else:
                types = self._changed_types(conn, mesh)
            if types is None or types:
                conn.events.push(reason, types)
                queued += 1
                continue
            if conn.events.pending_push is None:
                # Unaffected: its output is the same under the new snapshot, so serve it
                # from that one (and let the old snapshot go).
                conn.mesh = mesh
            if self.observer is not None:
                self.observer.proxy_pushed(conn)  # done with this push already
        self.metrics.push_queued(reason, queued)
        self._ready.set()
        return queued

    def _changed_types(self, conn: Connection, mesh: Any) -> set[str]:
        """The subscribed types whose output under `mesh` may differ from what was sent."""
        out = set()
        for type_url, sub in conn.subscriptions.items():
            if self.view.secrets is not None and type_url == names.SECRET and not self.view.generated_secrets(sub):
                continue  # not config: rotations push SDS themselves (push_secrets)
            key = self.view.key(conn, sub, mesh)
            if key is None or key != sub.sent_key:
                out.add(type_url)
        return out

    def close_all(self, reason: str = "meshd shutting down") -> int:
        """Shutdown (SIGTERM): end every ADS stream now with UNAVAILABLE and `reason`, so
        that proxies start reconnecting at once (to the restarted meshd, or another
        replica) instead of holding a stream to a server that will push nothing more until
        gRPC's grace period cancels it. Streams opened afterwards are refused the same
        way. Returns the streams closed."""
        self._closing = reason
        conns = list(self._connections.values())
        for conn in conns:
            conn.events.close()
        return len(conns)

    # --- hooks for the CA (controlplane/security/rotation.py) ----------------------
    def push_secrets(self, identity: Identity | None = None, reason: str = "secret rotation") -> int:
        """Queue a push to the connections authenticated as `identity` (every connection
        when None, e.g. for a new trust bundle) so they re-fetch their SDS secrets with no
        request from the proxy. Coalesces like any push; returns the connections queued."""
        queued = 0
        for conn in self._connections.values():
            if identity is None or conn.identity == identity:
                conn.events.push(reason)
                queued += 1
        return queued

    def secret_unsynced(self, name: str, since: float) -> list[str]:
        """Connections subscribed to SDS `name` that have not yet ACKed an SDS response
        sent at or after `since` (time.time()): they may still hold an older version."""
        out = []
        for conn in self._connections.values():
            sub = conn.subscriptions.get(names.SECRET)
            if sub is None or name not in sub.names:
                continue
            if not (sub.sent_at >= since and sub.acked_nonce == sub.sent_nonce):
                out.append(conn.id)
        return out

    # --- gRPC methods ------------------------------------------------------------
    async def StreamAggregatedResources(
        self, request_iterator: AsyncIterator[discovery_pb2.DiscoveryRequest], context: Context
    ) -> None:
        """The plaintext port: no authentication, so no identity (and no workload key).
        A bearer token sent here is ignored: it would have crossed the wire in clear."""
        await self.serve_stream(request_iterator, context, identity=None)

    async def serve_stream(
        self,
        request_iterator: AsyncIterator[discovery_pb2.DiscoveryRequest],
        context: Context,
        *,
        identity: Identity | None = None,
    ) -> None:
        """One ADS stream; `identity` is what the caller authenticated as (None: nothing)."""
        await self._run_stream(request_iterator, context, identity, delta=False)

    async def serve_delta_stream(
        self, request_iterator: AsyncIterator[discovery_pb2.DeltaDiscoveryRequest], context: Context,
        *, identity: Identity | None = None,
    ) -> None:
        """One incremental ADS stream; identity rules as for serve_stream."""
        await self._run_stream(request_iterator, context, identity, delta=True)

    async def _run_stream(self, request_iterator: AsyncIterator[Any], context: Context,
                          identity: Identity | None, *, delta: bool) -> None:
        peer = context.peer()
        if self._closing is not None:
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"{self._closing}; reconnect")
        requests = request_iterator.__aiter__()
        try:
            first = await requests.__anext__()
        except StopAsyncIteration:
            return
        if isinstance(first, bytes):  # SotW requests arrive as bytes (acks.py)
            first = discovery_pb2.DiscoveryRequest.FromString(first)
        proxy = await self._accept(first, peer, context)
        if identity is not None:
            await self._authorize(proxy, identity, peer, context)
        # Only a stream that proved its identity can be given `default`; generated config
        # for the others must not wait for it (see Proxy.workload_cert).
        proxy = dataclasses.replace(proxy, workload_cert=identity is not None and self._secrets is not None)
        registrations = self.registrations
        if registrations is not None:
            await self._register(registrations, proxy, identity, peer, context)
        conn = Connection(
            id=f"{proxy.id}-{next(self._ids)}", proxy=proxy, peer=peer,
            events=EventQueue(self.options.max_queued_requests),
            identity=identity, node=_debug_node(first), delta=delta,
        )
        self._connections[conn.id] = conn
        self._per_proxy[proxy.id] = self._per_proxy.get(proxy.id, 0) + 1
        self.metrics.set_connections(len(self._connections))
        self.log.info(
            "ads connect", proxy=proxy.id, conn=conn.id, peer=peer, proxy_type=proxy.type, namespace=proxy.namespace,
            identity=identity.spiffe_uri if identity is not None else None, delta=delta,
        )
        protocol: StreamProtocol = self.delta if delta else self.sotw
        stuck: StreamStuck | None = None
        reader: asyncio.Task[None] | None = None
        try:  # from registration on: whatever ends the stream, the connection is forgotten
            await conn.events.put_request(first)
            reader = asyncio.create_task(self._read(requests, conn, protocol), name=f"ads-read-{conn.id}")
            await self._serve(conn, context, protocol)
        except StreamStuck as e:
            # The stuck write finally went through (the proxy read again): end the
            # stream so that it reconnects and is served from scratch.
            stuck = e
        finally:
            # No await before the bookkeeping: gRPC cancels this task when the client
            # goes away, and a second cancellation arriving at an await here would skip
            # the rest, leaving the connection registered (and counted) for ever.
            if reader is not None:
                reader.cancel()
            conn.events.close()
            self._forget(conn)
            if registrations is not None:
                registrations.disconnected(proxy)
            self.log.info(
                "ads disconnect", proxy=proxy.id, conn=conn.id, peer=peer,
                duration=round(time.time() - conn.connected_at, 3),
            )
        if stuck is not None:
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"meshd: {stuck}; reconnect")
        if self._closing is not None:
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"{self._closing}; reconnect")

    def _forget(self, conn: Connection) -> None:
        """The connection is gone (or given up): no more pushes, no more metrics series."""
        if self._connections.pop(conn.id, None) is None:
            return
        left = self._per_proxy.pop(conn.proxy.id, 1) - 1
        if left:
            self._per_proxy[conn.proxy.id] = left
        self.metrics.set_connections(len(self._connections))
        if not left:
            self.metrics.forget_node(conn.proxy.id)

    def _stuck(self, conn: Connection) -> None:
        """A write to `conn` outlasted the timeout: the proxy stopped reading. Give the
        stream up now (its slot is already free); it ends once the write completes."""
        self.metrics.stream_dropped("write_timeout")
        self.log.warning("ads stream stuck, closing", proxy=conn.proxy.id, conn=conn.id, peer=conn.peer,
                         timeout=self.limiter.write_timeout)
        conn.events.close()
        self._forget(conn)

    async def DeltaAggregatedResources(self, request_iterator: Any, context: Context) -> None:
        """The plaintext port's incremental ADS: no identity, as for SotW."""
        await self.serve_delta_stream(request_iterator, context, identity=None)

    # --- stream plumbing ---------------------------------------------------------
    async def _accept(
        self, first: discovery_pb2.DiscoveryRequest, peer: str, context: Context
    ) -> Proxy:
        node_id = first.node.id if first.HasField("node") else ""
        if not node_id:
            msg = "the first request on an ADS stream must carry the node (id and metadata)"
        else:
            try:
                return parse_node(node_id, first.node.metadata,
                                  first.node.locality if first.node.HasField("locality") else None)
            except (NodeError, ValueError) as e:
                msg = str(e)
        self.log.warning("ads connection rejected", peer=peer, node=node_id, error=msg)
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, msg)
        raise AssertionError("unreachable: context.abort raises")

    async def _authorize(self, proxy: Proxy, identity: Identity, peer: str, context: Context) -> None:
        """Refuse the stream unless the node claims the identity the caller proved."""
        reason = identity_mismatch(proxy, identity)
        if reason is None:
            return
        self.metrics.auth_failed("permission_denied")
        self.log.warning(
            "ads auth denied", proxy=proxy.id, peer=peer,
            claimed_identity=claimed_identity(proxy, self.options.trust_domain),
            authenticated_identity=identity.spiffe_uri, reason=reason,
        )
        await context.abort(grpc.StatusCode.PERMISSION_DENIED, f"authorization failed: {reason}")
        raise AssertionError("unreachable: context.abort raises")

    async def _register(self, registrations: Any, proxy: Proxy, identity: Identity | None, peer: str,
                        context: Context) -> None:
        """Report the connect; end the stream if the observer refuses the proxy."""
        try:
            await registrations.connected(proxy, identity)
            return
        except ProxyRefused as e:
            refused = e
        self.log.warning("ads connection refused", proxy=proxy.id, peer=peer, reason=str(refused))
        code = grpc.StatusCode.PERMISSION_DENIED if refused.permission else grpc.StatusCode.FAILED_PRECONDITION
        await context.abort(code, str(refused))
        raise AssertionError("unreachable: context.abort raises")

    async def _read(self, requests: AsyncIterator[Any], conn: Connection, protocol: StreamProtocol) -> None:
        try:
            async for req in requests:
                # A plain ACK needing no answer, while the handler waits for work, is
                # settled here: no queueing and no wake-up of the handler, per proxy
                # per push.
                if conn.events.idle and protocol.settle_ack(conn, req):
                    continue
                await conn.events.put_request(req)
        except asyncio.CancelledError:
            raise
        except Exception as e:  # the stream broke; the handler notices via close()
            self.log.debug("ads stream read ended", conn=conn.id, error=repr(e))
        finally:
            conn.events.close()

    async def _serve(self, conn: Connection, context: Context, protocol: StreamProtocol) -> None:
        if not await self._wait_ready(conn):
            return
        if conn.mesh is None:
            conn.mesh = self._mesh
        while (event := await conn.events.get()) is not None:
            if isinstance(event, Push):
                # Only a push moves the stream to a newer snapshot (Connection.mesh).
                conn.mesh = self._mesh
                await protocol.on_push(conn, context, event)
                self.metrics.push_done(time.monotonic() - event.queued_at)
                if self.observer is not None:
                    self.observer.proxy_pushed(conn)
            else:
                await protocol.on_request(conn, context, event)

    async def _wait_ready(self, conn: Connection) -> bool:
        """Hold the stream until the first mesh exists; False if the client left first."""
        if self._ready.is_set():
            return True
        ready = asyncio.ensure_future(self._ready.wait())
        closed = asyncio.ensure_future(conn.events.wait_closed())
        try:
            await asyncio.wait((ready, closed), return_when=asyncio.FIRST_COMPLETED)
        finally:
            ready.cancel()
            closed.cancel()
        return self._ready.is_set() and not conn.events.closed

    # --- protocol.Host: what the protocols use -----------------------------------------
    async def resolve(self, conn: Connection, sub: Subscription, *,
                      unless_current: bool) -> tuple[Any, ResourceSet] | None:
        try:
            key = self.view.key(conn, sub, conn.mesh)
            if unless_current and key is not None and key == sub.sent_key:
                return None  # the output this proxy holds is current
            return key, await self.view.resolve(conn, sub, conn.mesh)
        except Exception:
            # A generator (or CA) failure must not end the stream: keep serving the last good state.
            self.metrics.internal_error()
            self.log.exception("ads generate failed", proxy=conn.proxy.id, type=sub.short)
            return None

    async def write(self, conn: Connection, context: Context, data: ResponseData) -> None:
        if self._first_write is not None:  # the first response of a push: its latency, logged
            self.log.info("push first write", ms=round((time.perf_counter() - self._first_write) * 1000, 2),
                          at=time.time(), proxy=conn.proxy.id)
            self._first_write = None
        waited = await self.limiter.write(context, data, on_stuck=lambda: self._stuck(conn))
        self.metrics.push_waited(waited)

    def sent(self, conn: Connection, sub: Subscription, response: Sent) -> None:
        """Metrics, debug hook and the istiod-style push log line for one response.
        Incremental EDS pushes are logged at debug level, as istiod does; everything
        else at info."""
        r = response
        self.metrics.pushed(sub.type_url, time.perf_counter() - r.started)
        if self.observer is not None:
            self.observer.sent(conn, sub, r.count, r.size, r.request)
        kind = "PUSH request" if r.request else "PUSH"
        delta = " delta" if conn.delta else ""
        (self.log.debug if r.incremental else self.log.info)(
            f"ads {sub.short}:{delta} {kind} for node:{conn.proxy.short} resources:{r.count} "
            f"{'removed:' + str(r.removed) + ' ' if r.removed else ''}size:{byte_count(r.size)}",
            type=sub.short, version=r.version, nonce=r.nonce, proxy=conn.proxy.id, conn=conn.id,
            resources=r.count, size=r.size, reason=r.reason, delta=conn.delta,
        )

    def nacked(self, conn: Connection, sub: Subscription, nack: Nack, **fields: Any) -> None:
        self.metrics.nacked(sub.type_url, conn.proxy.id, nack.code)
        self.log.warning(
            "ads NACK", proxy=conn.proxy.id, conn=conn.id, type=sub.short, version=nack.version,
            nonce=nack.nonce, error=nack.message, **fields,
        )

    async def refuse(self, conn: Connection, context: Context, problem: str,
                     type_url: str, **fields: Any) -> NoReturn:
        self.log.warning("ads request refused", proxy=conn.proxy.id, conn=conn.id, type_url=type_url[:200],
                         reason=problem, **fields)
        await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, f"meshd: {problem}")
        raise AssertionError("unreachable: context.abort raises")

    def _withheld(self, conn: Connection, name: str, reason: str) -> None:
        """The SecretProvider refused an SDS name to this stream: say so once per stream."""
        if name not in conn.withheld_logged:
            conn.withheld_logged.add(name)
            self.log.warning(
                "sds secret withheld", proxy=conn.proxy.id, conn=conn.id, secret=name, reason=reason,
                identity=conn.identity.spiffe_uri if conn.identity is not None else None,
            )
