"""The state-of-the-world ADS server: one gRPC stream per Envoy, all xDS types on it.

Per stream, a reader task moves the client's requests into the connection's
EventQueue and the stream's handler task consumes that queue, answering requests and
pushes one at a time: responses on a stream never interleave. `AdsServer.update` only
queues a (coalescing) push per connection, so a slow proxy never delays the others.

Protocol rules (see subscription.py for the vocabulary), following istiod's
shouldRespond and what Envoy 1.40 does (DESIGN.md):
- the first request carries the node; a node we cannot parse ends the stream with
  INVALID_ARGUMENT;
- a request with `error_detail` is a NACK: recorded, never answered (only a new
  version is sent later, by a push);
- a request echoing an older nonce is stale and ignored;
- a request with an empty nonce (first on this stream, or after a reconnect) is
  always answered;
- otherwise it is an ACK, answered only if the subscribed names changed, the content
  for them changed, or the type is flagged must-answer (EDS/SDS after CDS, RDS/SDS
  after LDS: Envoy re-requests them with an ACK-looking request and keeps clusters or
  listeners warming until it gets an answer).

Versions are derived from the content sent (resources.version_of), nonces from the
version and a per-stream counter, so a restarted meshd sends the same versions.

Pushes (`update`) go only to the connections whose output the new snapshot changes: for
each subscribed type the generator's cache key (what the output depends on) is compared
with the key of the last response; equal keys mean nothing to send, so a Gateway change
never reaches a sidecar's queue. An EDS response other than the answer to a first
request or new names carries only what the client lacks (SotW allows partial EDS: Envoy
keeps the ones not named): the assignments that changed, and those of the clusters a CDS
response updated, changed or not (Envoy keeps an updated cluster warming until it gets
its assignment; istiod resends every assignment instead). Responses are assembled from
bytes serialized once (wire.py) and written through the PushLimiter (flow.py): a
bounded number in flight, a stuck stream dropped.

Delta xDS (DeltaAggregatedResources) shares all of this: connection, subscription state,
view and limiter; its state machine is delta.py.

Identity: a stream carries the identity it authenticated as (`serve_stream(...,
identity=...)`; the secure port's servicer in secure.py authenticates before any
request is read). With an identity, the node must claim exactly that namespace and
service account, checked on the first request, before anything is served; otherwise
the stream ends with PERMISSION_DENIED (as istiod's authorize). SDS names the
SecretProvider owns (`default`, `ROOTCA`) are answered by it, with the identity, never
by the shared generator cache; other SDS names (gateway credentials) still come from
the generator if it serves SDS.
"""
from __future__ import annotations

import asyncio
import dataclasses
import functools
import hashlib
import itertools
import time
from typing import Any, AsyncIterator, Protocol, Sequence

import grpc
import structlog
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2

from ca import Identity

from .. import names
from ..generators.resources import ResourceSet, changes
from ..model.proxy import NodeError, Proxy, parse_node
from ..security.authz import claimed_identity, identity_mismatch
from ..security.sds import SecretProvider
from . import acks, wire
from .connection import Connection, EventQueue, Push
from .delta import DeltaProtocol
from .flow import PushLimiter, StreamStuck
from .limits import names_problem
from .metrics import Metrics
from .subscription import Nack, Subscription
from .view import PerGroup, ResourceView, wanted_resources

# After sending the key type, answer the next request for these even if it looks like
# an ACK (see module docstring).
_FOLLOW_UPS = {
    names.CLUSTER: (names.ENDPOINT, names.SECRET),
    names.LISTENER: (names.ROUTE, names.SECRET),
}


# Types whose SotW pushes carry only what changed (never LDS/CDS: those must be whole).
_PARTIAL_PUSH = frozenset({names.ENDPOINT})

_QUIET = 1.0  # seconds without a write before the server counts as not busy (gcpolicy)
_NONCE_FIELD_LEN = 18  # how an ACK ends: field 5's tag, its length, make_nonce's 16 chars


class Generator(Protocol):
    def types(self) -> Sequence[str]: ...

    # `key`: what the generator's optional key(mesh, proxy, type_url) gave, when the
    # server has it (None otherwise): the generator need not work it out again.
    def generate(self, mesh: Any, proxy: Proxy, type_url: str, key: Any = None) -> ResourceSet: ...


def byte_count(n: int) -> str:
    """Human-readable size exactly as istiod's util.ByteCount prints it: 34B, 1.2kB, 3.4MB."""
    if n < 1000:
        return f"{n}B"
    div, exp, m = 1000, 0, n // 1000
    while m >= 1000:
        div, exp, m = div * 1000, exp + 1, m // 1000
    return f"{n / div:.1f}{'kMGTPE'[exp]}B"


def _debug_node(first: discovery_pb2.DiscoveryRequest) -> Any:
    """The stream's node for debug views (config_dump's bootstrap), without the ~60 KB
    extension list Envoy sends."""
    node = type(first.node)()
    node.CopyFrom(first.node)
    node.ClearField("extensions")
    return node


def make_nonce(type_url: str, version: str, counter: int) -> str:
    """Unique per response on a stream (the counter), reproducible across restarts."""
    return hashlib.sha256(f"{type_url}\n{version}\n{counter}".encode()).hexdigest()[:16]


class AdsServer(ads_pb2_grpc.AggregatedDiscoveryServiceServicer):
    def __init__(
        self,
        generator: Generator,
        metrics: Metrics,
        logger: Any = None,
        *,
        secrets: SecretProvider | None = None,
        trust_domain: str = names.TRUST_DOMAIN,
        max_queued_requests: int = 64,
        max_pushes_in_flight: int = 100,
        write_timeout: float = 30.0,
    ):
        self._generator = generator
        self._secrets = secrets
        self._view = ResourceView(generator, secrets, on_withheld=self._withheld)
        self.limiter = PushLimiter(max_pushes_in_flight, write_timeout)
        self._shared = wire.SharedResponses()  # whole SotW responses joined once per group
        self._partial = PerGroup(partial_push)  # what changed, worked out once per group
        self._updated = PerGroup(lambda sub, rs: frozenset(changed_names(sub, rs)))  # clusters a CDS response updates
        self._delta = DeltaProtocol(self)
        self._trust_domain = trust_domain
        self._metrics = metrics
        self._log = logger if logger is not None else structlog.get_logger("meshd.ads")
        self._max_queued = max_queued_requests
        self._mesh: Any = None
        self._ready = asyncio.Event()
        self._connections: dict[str, Connection] = {}
        self._per_proxy: dict[str, int] = {}  # node id -> open connections (metrics series)
        self._ids = itertools.count(1)
        self._closing: str | None = None  # set by close_all(): the server is shutting down
        # Debug hook (controlplane/debug/push_status.py): push_started(reason, n_conns),
        # sent(conn, sub, n_resources, size, request), proxy_pushed(conn). None: off.
        self.observer: Any = None

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
        written, or one was written less than _QUIET seconds ago (the requests that
        follow a push, such as Envoy's EDS re-requests, are answered between writes).
        gcpolicy waits for a quiet moment."""
        limiter = self.limiter
        return (limiter.in_flight > 0 or time.monotonic() - limiter.last_write < _QUIET
                or any(c.events.pending_push is not None for c in self._connections.values()))

    def connections(self) -> list[Connection]:
        return list(self._connections.values())

    def update(self, mesh: Any, reason: str = "config") -> int:
        """Serve `mesh` from now on and push it to every connected proxy whose output it
        changes (all of them when `mesh` is the snapshot already served: an explicit
        re-push). Call from the event loop; never blocks (pushes are queued per
        connection). Returns the connections queued."""
        previous, self._mesh = self._mesh, mesh
        self._metrics.push_triggered(reason)
        if self.observer is not None:
            self.observer.push_started(reason, len(self._connections))
        queued = 0
        for conn in self._connections.values():
            types = None if previous is None or mesh is previous else self._changed_types(conn, mesh)
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
        self._metrics.push_queued(reason, queued)
        self._ready.set()
        return queued

    def _changed_types(self, conn: Connection, mesh: Any) -> set[str]:
        """The subscribed types whose output under `mesh` may differ from what was sent."""
        out = set()
        for type_url, sub in conn.subscriptions.items():
            if self._view.secrets is not None and type_url == names.SECRET and not self._view.generated_secrets(sub):
                continue  # not config: rotations push SDS themselves (push_secrets)
            key = self._view.key(conn, sub, mesh)
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
        self, request_iterator: AsyncIterator[discovery_pb2.DiscoveryRequest], context: grpc.aio.ServicerContext
    ) -> None:
        """The plaintext port: no authentication, so no identity (and no workload key).
        A bearer token sent here is ignored: it would have crossed the wire in clear."""
        await self.serve_stream(request_iterator, context, identity=None)

    async def serve_stream(
        self,
        request_iterator: AsyncIterator[discovery_pb2.DiscoveryRequest],
        context: grpc.aio.ServicerContext,
        *,
        identity: Identity | None = None,
    ) -> None:
        """One ADS stream; `identity` is what the caller authenticated as (None: nothing)."""
        await self._run_stream(request_iterator, context, identity, delta=False)

    async def serve_delta_stream(
        self, request_iterator: AsyncIterator[discovery_pb2.DeltaDiscoveryRequest], context: grpc.aio.ServicerContext,
        *, identity: Identity | None = None,
    ) -> None:
        """One incremental ADS stream; identity rules as for serve_stream."""
        await self._run_stream(request_iterator, context, identity, delta=True)

    async def _run_stream(self, request_iterator: AsyncIterator, context: grpc.aio.ServicerContext,
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
        conn = Connection(
            id=f"{proxy.id}-{next(self._ids)}", proxy=proxy, peer=peer, events=EventQueue(self._max_queued),
            identity=identity, node=_debug_node(first), delta=delta,
        )
        self._connections[conn.id] = conn
        self._per_proxy[proxy.id] = self._per_proxy.get(proxy.id, 0) + 1
        self._metrics.set_connections(len(self._connections))
        self._log.info(
            "ads connect", proxy=proxy.id, conn=conn.id, peer=peer, proxy_type=proxy.type, namespace=proxy.namespace,
            identity=identity.spiffe_uri if identity is not None else None, delta=delta,
        )
        protocol = self._delta if delta else self
        stuck: StreamStuck | None = None
        reader: asyncio.Task | None = None
        try:  # from registration on: whatever ends the stream, the connection is forgotten
            await conn.events.put_request(first)
            reader = asyncio.create_task(self._read(requests, conn), name=f"ads-read-{conn.id}")
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
            self._log.info(
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
        self._metrics.set_connections(len(self._connections))
        if not left:
            self._metrics.forget_node(conn.proxy.id)

    def _stuck(self, conn: Connection) -> None:
        """A write to `conn` outlasted the timeout: the proxy stopped reading. Give the
        stream up now (its slot is already free); it ends once the write completes."""
        self._metrics.stream_dropped("write_timeout")
        self._log.warning("ads stream stuck, closing", proxy=conn.proxy.id, conn=conn.id, peer=conn.peer,
                          timeout=self.limiter.write_timeout)
        conn.events.close()
        self._forget(conn)

    async def DeltaAggregatedResources(self, request_iterator: Any, context: grpc.aio.ServicerContext) -> None:
        """The plaintext port's incremental ADS: no identity, as for SotW."""
        await self.serve_delta_stream(request_iterator, context, identity=None)

    # --- stream plumbing ---------------------------------------------------------
    async def _accept(
        self, first: discovery_pb2.DiscoveryRequest, peer: str, context: grpc.aio.ServicerContext
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
        self._log.warning("ads connection rejected", peer=peer, node=node_id, error=msg)
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, msg)
        raise AssertionError("unreachable: context.abort raises")

    async def _authorize(self, proxy: Proxy, identity: Identity, peer: str, context: grpc.aio.ServicerContext) -> None:
        """Refuse the stream unless the node claims the identity the caller proved."""
        reason = identity_mismatch(proxy, identity)
        if reason is None:
            return
        self._metrics.auth_failed("permission_denied")
        self._log.warning(
            "ads auth denied", proxy=proxy.id, peer=peer, claimed_identity=claimed_identity(proxy, self._trust_domain),
            authenticated_identity=identity.spiffe_uri, reason=reason,
        )
        await context.abort(grpc.StatusCode.PERMISSION_DENIED, f"authorization failed: {reason}")
        raise AssertionError("unreachable: context.abort raises")

    def _types(self) -> tuple[str, ...]:
        return self._view.types()

    async def _read(self, requests: AsyncIterator[discovery_pb2.DiscoveryRequest], conn: Connection) -> None:
        try:
            async for req in requests:
                # A plain ACK needing no answer, while the handler waits for work, is
                # settled here: no queueing and no wake-up of the handler, per proxy
                # per push.
                if conn.events.idle and (self._settle_ack(conn, req) if type(req) is bytes
                                         else conn.delta and self._delta.settle_ack(conn, req)):
                    continue
                await conn.events.put_request(req)
        except asyncio.CancelledError:
            raise
        except Exception as e:  # the stream broke; the handler notices via close()
            self._log.debug("ads stream read ended", conn=conn.id, error=repr(e))
        finally:
            conn.events.close()

    async def _serve(self, conn: Connection, context: grpc.aio.ServicerContext, protocol: Any) -> None:
        if not await self._wait_ready(conn):
            return
        while (event := await conn.events.get()) is not None:
            if isinstance(event, Push):
                await protocol._on_push(conn, context, event)
            else:
                await protocol._on_request(conn, context, event)

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

    # --- protocol ----------------------------------------------------------------
    def _plain_ack(self, conn: Connection, raw: bytes) -> Subscription | None:
        """The subscription `raw` ACKs with the same names as before, recorded; or None
        (then the request must be decoded and handled in full)."""
        sub = acks.match(raw, conn.acks, _NONCE_FIELD_LEN)
        if sub is not None:
            sub.record_ack(sub.sent_version, sub.sent_nonce)
        return sub

    def _settle_ack(self, conn: Connection, raw: bytes) -> bool:
        """Handle `raw` at once if it is a plain ACK whose answer would be nothing."""
        sub = acks.match(raw, conn.acks, _NONCE_FIELD_LEN)
        if sub is None or sub.must_answer or conn.mesh is None:
            return False
        key = self._view.key(conn, sub, conn.mesh)
        if key is None or key != sub.sent_key:
            return False
        sub.record_ack(sub.sent_version, sub.sent_nonce)
        return True

    async def _on_request(
        self, conn: Connection, context: grpc.aio.ServicerContext, req: discovery_pb2.DiscoveryRequest | bytes
    ) -> None:
        if type(req) is bytes:
            sub = self._plain_ack(conn, req)
            if sub is not None:
                await self._respond(conn, context, sub, request=True, force=sub.must_answer, reason="request")
                return
            req = discovery_pb2.DiscoveryRequest.FromString(req)
        type_url = req.type_url
        if not type_url:
            self._log.warning("ads request without type_url ignored", proxy=conn.proxy.id, conn=conn.id)
            return
        version, nonce = req.version_info, req.response_nonce
        sub = conn.subscriptions.get(type_url)
        new = sub is None
        # Envoy's ACKs repeat the whole name list (a sidecar's EDS request names every
        # cluster): compare the rest of the request, re-encoded, with the previous one
        # (in C) rather than build a set of a thousand strings per ACK; the bytes are
        # kept interned (shared by every proxy asking the same).
        # Most ACKs never get here: acks.py matches them on their bytes.
        req.ClearField("version_info")
        req.ClearField("response_nonce")
        req.ClearField("node")
        body = req.SerializeToString()
        same_names = sub is not None and sub.last_request == body
        if not same_names and (problem := names_problem(req.resource_names)) is not None:
            self._log.warning("ads request refused", proxy=conn.proxy.id, conn=conn.id, type_url=type_url[:200],
                              reason=problem)
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, f"meshd: {problem}")
        if sub is None:
            sub = conn.subscription(type_url)

        # NACKs first and regardless of nonce (as istiod): a rejection is worth
        # recording even when a newer response is already on its way.
        if req.HasField("error_detail"):
            self._record_nack(conn, sub, req, nonce, version)
            return

        # Nothing sent yet for this type: whatever the nonce says, this is an initial
        # request (Envoy clears nonces on reconnect; other clients may not).
        initial = not nonce or not sub.sent_nonce
        if not initial and nonce != sub.sent_nonce:
            self._metrics.stale_nonce(type_url)
            self._log.debug(
                "ads stale nonce ignored", proxy=conn.proxy.id, type=sub.short,
                nonce=nonce, sent_nonce=sub.sent_nonce,
            )
            return

        changed = False if same_names else sub.set_names(req.resource_names)
        if not req.HasField("error_detail"):
            sub.last_request = acks.intern(body)
        if not initial:
            sub.record_ack(version, nonce)
        if type_url not in self._types():
            if new:
                self._log.warning("ads type not served", proxy=conn.proxy.id, conn=conn.id, type=type_url)
            return
        force = initial or changed or sub.must_answer
        await self._respond(conn, context, sub, request=True, force=force, complete=initial or changed,
                            reason="request")

    async def _on_push(self, conn: Connection, context: grpc.aio.ServicerContext, push: Push) -> None:
        conn.mesh = self._mesh
        served = self._types()
        reason = ",".join(sorted(push.reasons))
        for type_url in names.PUSH_ORDER:
            sub = conn.subscriptions.get(type_url)
            if sub is not None and type_url in served and (push.types is None or type_url in push.types):
                await self._respond(conn, context, sub, request=False, force=False, reason=reason)
        self._metrics.push_done(time.monotonic() - push.queued_at)
        if self.observer is not None:
            self.observer.proxy_pushed(conn)

    def _withheld(self, conn: Connection, name: str, reason: str) -> None:
        """The SecretProvider refused an SDS name to this stream: say so once per stream."""
        if name not in conn.withheld_logged:
            conn.withheld_logged.add(name)
            self._log.warning(
                "sds secret withheld", proxy=conn.proxy.id, conn=conn.id, secret=name, reason=reason,
                identity=conn.identity.spiffe_uri if conn.identity is not None else None,
            )

    def _record_nack(self, conn: Connection, sub: Subscription, req: discovery_pb2.DiscoveryRequest,
                     nonce: str, accepted_version: str) -> None:
        current = nonce == sub.sent_nonce
        sub.nack = Nack(
            version=sub.sent_version if current else "",
            nonce=nonce,
            message=req.error_detail.message,
            code=req.error_detail.code,
        )
        self._metrics.nacked(sub.type_url, conn.proxy.id, req.error_detail.code)
        self._log.warning(
            "ads NACK", proxy=conn.proxy.id, conn=conn.id, type=sub.short, version=sub.nack.version,
            nonce=nonce, stale=not current, accepted_version=accepted_version,
            error=req.error_detail.message,
        )

    async def _respond(
        self, conn: Connection, context: grpc.aio.ServicerContext, sub: Subscription, *,
        request: bool, force: bool, reason: str, complete: bool = False,
    ) -> None:
        """Answer a request or push the type. `force`: answer even if the client holds the
        current version; `complete`: the answer must hold everything the client asks for
        (a first request, new names), else EDS carries only what the client lacks."""
        if conn.mesh is None:
            conn.mesh = self._mesh
        started = time.perf_counter()
        try:
            key = self._view.key(conn, sub, conn.mesh)
            if not force and key is not None and key == sub.sent_key:
                return  # the output this proxy holds is current
            rs = await self._view.resolve(conn, sub, conn.mesh)
        except Exception:
            # A generator (or CA) failure must not end the stream: keep serving the last good state.
            self._metrics.internal_error()
            self._log.exception("ads generate failed", proxy=conn.proxy.id, type=sub.short)
            return
        wanted, version, whole = wanted_resources(sub, rs)
        if not force and version == sub.sent_version:
            sub.sent_set, sub.sent_key = rs, key  # same content under a newer snapshot
            return

        partial = not complete and sub.type_url in _PARTIAL_PUSH and sub.sent_set is not None
        if partial:
            # Only what changed since the last response, and the assignments of clusters
            # a CDS response updated (Envoy's re-request after it): the client keeps the
            # rest. Where that is nothing, the answer is whole.
            chunks, count, size = self._partial.get(sub, rs)
            partial = count > 0
        if not partial:
            if whole:  # the parts' shared blobs, joined once into the response below
                chunks, count, size = [part.sotw_blob() for part in rs.parts], len(rs), rs.size
            else:
                chunks, count, size = [r.sotw_chunk for r in wanted], len(wanted), sum(r.size for r in wanted)
        sub.responses += 1
        nonce = make_nonce(sub.type_url, version, sub.responses)
        data = functools.partial(wire.sotw_response, version, chunks, sub.type_url, nonce)  # made in the slot
        if whole and not partial:  # the same bytes for every proxy holding this set at this count
            data = functools.partial(self._shared.get, rs, version, nonce, data)
        if sub.type_url == names.CLUSTER:
            self._mark_warming(conn, sub, rs)
        # Recorded before the write: the answer to it may be read before the write returns.
        sub.record_sent(version, nonce, resource_set=rs, key=key)
        if sub.ack_fields is not None:
            conn.acks.pop(sub.ack_fields[1], None)
        acks.expect(sub)
        conn.acks[sub.ack_fields[1]] = sub
        for follow in _FOLLOW_UPS.get(sub.type_url, ()):
            if (other := conn.subscriptions.get(follow)) is not None:
                other.must_answer = True
        self._sent(conn, sub, count, size, version, nonce, request, reason, started,
                   incremental=partial and not request)
        await self._send(conn, context, data)

    def _mark_warming(self, conn: Connection, cds: Subscription, rs: ResourceSet) -> None:
        """Before a CDS response goes out: the clusters it updates warm in Envoy until
        their assignments arrive, so the next EDS response must carry them."""
        eds = conn.subscriptions.get(names.ENDPOINT)
        if cds.sent_set is None or eds is None or eds.sent_set is None:
            return  # a first CDS or EDS response: EDS will be answered whole
        updated = self._updated.get(cds, rs)
        if updated:
            eds.warming = updated if not eds.warming else eds.warming | updated

    async def _send(self, conn: Connection, context: grpc.aio.ServicerContext, data: Any) -> None:
        """Write one response (bytes, or a callable making them) through the limiter
        (raises StreamStuck)."""
        waited = await self.limiter.write(context, data, on_stuck=lambda: self._stuck(conn))
        self._metrics.push_waited(waited)

    def _sent(self, conn: Connection, sub: Subscription, count: int, size: int, version: str, nonce: str,
              request: bool, reason: str, started: float, removed: int = 0, incremental: bool = False) -> None:
        """Metrics, debug hook and the istiod-style push log line for one response.
        Incremental EDS pushes (endpoint churn, thousands of proxies a second) are logged
        at debug level, as istiod does; everything else at info."""
        self._metrics.pushed(sub.type_url, time.perf_counter() - started)
        if self.observer is not None:
            self.observer.sent(conn, sub, count, size, request)
        kind = "PUSH request" if request else "PUSH"
        delta = " delta" if conn.delta else ""
        (self._log.debug if incremental else self._log.info)(
            f"ads {sub.short}:{delta} {kind} for node:{conn.proxy.short} resources:{count} "
            f"{'removed:' + str(removed) + ' ' if removed else ''}size:{byte_count(size)}",
            type=sub.short, version=version, nonce=nonce, proxy=conn.proxy.id, conn=conn.id,
            resources=count, size=size, reason=reason, delta=conn.delta,
        )


def partial_push(sub: Subscription, rs: ResourceSet) -> tuple[list[bytes], int, int]:
    """(chunks, count, size) of the resources of `rs` that `sub` wants and lacks, and of
    the clusters warming in it (SotW EDS)."""
    wanted = changed_names(sub, rs)
    if sub.warming:
        wanted |= {n for n in sub.warming if n in rs and sub.wants(n)}
    resources = [rs[n] for n in sorted(wanted)]
    return [r.sotw_chunk for r in resources], len(resources), sum(r.size for r in resources)


def changed_names(sub: Subscription, rs: ResourceSet) -> set[str]:
    """Names of `rs` the client wants whose resource differs from what it was sent: from
    the sets' lineage when it connects them (no per-name work), else by comparing."""
    d = changes(sub.sent_set, rs)
    if d is not None:
        return {n for n in d[0] if sub.wants(n)}
    old = sub.sent_set
    out = set()
    for n in (rs if sub.wildcard else (n for n in sub.names if n in rs)):
        r = rs[n]
        o = old.get(n) if old is not None else None
        if o is None or o.version != r.version:
            out.add(n)
    return out
