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
import hashlib
import itertools
import time
from typing import Any, AsyncIterator, Protocol, Sequence

import grpc
import structlog
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2

from ca import Identity

from .. import names
from ..generators.resources import Resource, ResourceSet, version_of
from ..model.proxy import NodeError, Proxy, parse_node
from ..security.authz import claimed_identity, identity_mismatch
from ..security.sds import SecretProvider
from .connection import Connection, EventQueue, Push
from .metrics import Metrics
from .subscription import Nack, Subscription

# After sending the key type, answer the next request for these even if it looks like
# an ACK (see module docstring).
_FOLLOW_UPS = {
    names.CLUSTER: (names.ENDPOINT, names.SECRET),
    names.LISTENER: (names.ROUTE, names.SECRET),
}


class Generator(Protocol):
    def types(self) -> Sequence[str]: ...

    def generate(self, mesh: Any, proxy: Proxy, type_url: str) -> ResourceSet: ...


def byte_count(n: int) -> str:
    """Human-readable size exactly as istiod's util.ByteCount prints it: 34B, 1.2kB, 3.4MB."""
    if n < 1000:
        return f"{n}B"
    div, exp, m = 1000, 0, n // 1000
    while m >= 1000:
        div, exp, m = div * 1000, exp + 1, m // 1000
    return f"{n / div:.1f}{'kMGTPE'[exp]}B"


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
    ):
        self._generator = generator
        self._secrets = secrets
        self._trust_domain = trust_domain
        self._metrics = metrics
        self._log = logger if logger is not None else structlog.get_logger("meshd.ads")
        self._max_queued = max_queued_requests
        self._mesh: Any = None
        self._ready = asyncio.Event()
        self._connections: dict[str, Connection] = {}
        self._ids = itertools.count(1)

    # --- public API --------------------------------------------------------------
    @property
    def ready(self) -> bool:
        """True once a mesh snapshot exists (requests before that wait, unanswered)."""
        return self._mesh is not None

    @property
    def mesh(self) -> Any:
        return self._mesh

    def connections(self) -> list[Connection]:
        return list(self._connections.values())

    def update(self, mesh: Any, reason: str = "config") -> None:
        """Serve `mesh` from now on and push it to every connected proxy. Call from the
        event loop; never blocks (pushes are queued per connection)."""
        self._mesh = mesh
        self._metrics.push_triggered(reason)
        for conn in self._connections.values():
            conn.events.push(reason)
        self._ready.set()

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
        peer = context.peer()
        requests = request_iterator.__aiter__()
        try:
            first = await requests.__anext__()
        except StopAsyncIteration:
            return
        proxy = await self._accept(first, peer, context)
        if identity is not None:
            await self._authorize(proxy, identity, peer, context)
        # Only a stream that proved its identity can be given `default`; generated config
        # for the others must not wait for it (see Proxy.workload_cert).
        proxy = dataclasses.replace(proxy, workload_cert=identity is not None and self._secrets is not None)
        conn = Connection(
            id=f"{proxy.id}-{next(self._ids)}", proxy=proxy, peer=peer, events=EventQueue(self._max_queued),
            identity=identity,
        )
        self._connections[conn.id] = conn
        self._metrics.set_connections(len(self._connections))
        self._log.info(
            "ads connect", proxy=proxy.id, conn=conn.id, peer=peer, proxy_type=proxy.type, namespace=proxy.namespace,
            identity=identity.spiffe_uri if identity is not None else None,
        )
        await conn.events.put_request(first)
        reader = asyncio.create_task(self._read(requests, conn), name=f"ads-read-{conn.id}")
        try:
            await self._serve(conn, context)
        finally:
            reader.cancel()
            conn.events.close()
            await asyncio.gather(reader, return_exceptions=True)
            self._connections.pop(conn.id, None)
            self._metrics.set_connections(len(self._connections))
            if not any(c.proxy.id == proxy.id for c in self._connections.values()):
                self._metrics.forget_node(proxy.id)
            self._log.info(
                "ads disconnect", proxy=proxy.id, conn=conn.id, peer=peer,
                duration=round(time.time() - conn.connected_at, 3),
            )

    async def DeltaAggregatedResources(self, request_iterator: Any, context: grpc.aio.ServicerContext) -> None:
        await context.abort(
            grpc.StatusCode.UNIMPLEMENTED,
            "meshd does not serve delta xDS yet; configure Envoy with api_type: GRPC (state of the world)",
        )

    # --- stream plumbing ---------------------------------------------------------
    async def _accept(
        self, first: discovery_pb2.DiscoveryRequest, peer: str, context: grpc.aio.ServicerContext
    ) -> Proxy:
        node_id = first.node.id if first.HasField("node") else ""
        if not node_id:
            msg = "the first request on an ADS stream must carry the node (id and metadata)"
        else:
            try:
                return parse_node(node_id, first.node.metadata)
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
        served = tuple(self._generator.types())
        if self._secrets is not None and names.SECRET not in served:
            served += (names.SECRET,)
        return served

    async def _read(self, requests: AsyncIterator[discovery_pb2.DiscoveryRequest], conn: Connection) -> None:
        try:
            async for req in requests:
                await conn.events.put_request(req)
        except asyncio.CancelledError:
            raise
        except Exception as e:  # the stream broke; the handler notices via close()
            self._log.debug("ads stream read ended", conn=conn.id, error=repr(e))
        finally:
            conn.events.close()

    async def _serve(self, conn: Connection, context: grpc.aio.ServicerContext) -> None:
        if not await self._wait_ready(conn):
            return
        while (event := await conn.events.get()) is not None:
            if isinstance(event, Push):
                await self._on_push(conn, context, event)
            else:
                await self._on_request(conn, context, event)

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
    async def _on_request(
        self, conn: Connection, context: grpc.aio.ServicerContext, req: discovery_pb2.DiscoveryRequest
    ) -> None:
        type_url = req.type_url
        if not type_url:
            self._log.warning("ads request without type_url ignored", proxy=conn.proxy.id, conn=conn.id)
            return
        new = type_url not in conn.subscriptions
        sub = conn.subscription(type_url)

        # NACKs first and regardless of nonce (as istiod): a rejection is worth
        # recording even when a newer response is already on its way.
        if req.HasField("error_detail"):
            self._record_nack(conn, sub, req)
            return

        # Nothing sent yet for this type: whatever the nonce says, this is an initial
        # request (Envoy clears nonces on reconnect; other clients may not).
        initial = not req.response_nonce or not sub.sent_nonce
        if not initial and req.response_nonce != sub.sent_nonce:
            self._metrics.stale_nonce(type_url)
            self._log.debug(
                "ads stale nonce ignored", proxy=conn.proxy.id, type=sub.short,
                nonce=req.response_nonce, sent_nonce=sub.sent_nonce,
            )
            return

        changed = sub.set_names(req.resource_names)
        if not initial:
            sub.record_ack(req.version_info, req.response_nonce)
        if type_url not in self._types():
            if new:
                self._log.warning("ads type not served", proxy=conn.proxy.id, conn=conn.id, type=type_url)
            return
        force = initial or changed or sub.must_answer
        await self._respond(conn, context, sub, request=True, force=force, reason="request")

    async def _on_push(self, conn: Connection, context: grpc.aio.ServicerContext, push: Push) -> None:
        conn.mesh = self._mesh
        served = self._types()
        reason = ",".join(sorted(push.reasons))
        for type_url in names.PUSH_ORDER:
            sub = conn.subscriptions.get(type_url)
            if sub is not None and type_url in served:
                await self._respond(conn, context, sub, request=False, force=False, reason=reason)

    async def _secret_resources(self, conn: Connection, sub: Subscription) -> list[Resource]:
        """SDS: the provider's names with the stream's identity, the rest from the generator."""
        assert self._secrets is not None
        wanted = sorted(sub.names)  # SDS is always named: never enumerate secrets
        own = [n for n in wanted if n in self._secrets.names]
        others = [n for n in wanted if n not in self._secrets.names]
        out: list[Resource] = []
        if others and names.SECRET in self._generator.types():
            out += self._generator.generate(conn.mesh, conn.proxy, names.SECRET).subset(others)
        answer = await self._secrets.secrets(conn.proxy, conn.identity, own)
        for name, reason in answer.withheld.items():
            if name not in conn.withheld_logged:
                conn.withheld_logged.add(name)
                self._log.warning(
                    "sds secret withheld", proxy=conn.proxy.id, conn=conn.id, secret=name, reason=reason,
                    identity=conn.identity.spiffe_uri if conn.identity is not None else None,
                )
        out += answer.resources
        return sorted(out, key=lambda r: r.name)

    def _record_nack(self, conn: Connection, sub: Subscription, req: discovery_pb2.DiscoveryRequest) -> None:
        current = req.response_nonce == sub.sent_nonce
        sub.nack = Nack(
            version=sub.sent_version if current else "",
            nonce=req.response_nonce,
            message=req.error_detail.message,
            code=req.error_detail.code,
        )
        self._metrics.nacked(sub.type_url, conn.proxy.id, req.error_detail.code)
        self._log.warning(
            "ads NACK", proxy=conn.proxy.id, conn=conn.id, type=sub.short, version=sub.nack.version,
            nonce=req.response_nonce, stale=not current, accepted_version=req.version_info,
            error=req.error_detail.message,
        )

    async def _respond(
        self, conn: Connection, context: grpc.aio.ServicerContext, sub: Subscription, *,
        request: bool, force: bool, reason: str,
    ) -> None:
        if conn.mesh is None:
            conn.mesh = self._mesh
        started = time.perf_counter()
        try:
            if sub.type_url == names.SECRET and self._secrets is not None:
                resources: list[Resource] = await self._secret_resources(conn, sub)
                version = version_of(resources)
            else:
                rs = self._generator.generate(conn.mesh, conn.proxy, sub.type_url)
                if sub.wildcard:
                    resources = list(rs.values())
                    version = rs.version
                else:
                    resources = rs.subset(sorted(sub.names))
                    version = version_of(resources)
        except Exception:
            # A generator (or CA) failure must not end the stream: keep serving the last good state.
            self._metrics.internal_error()
            self._log.exception("ads generate failed", proxy=conn.proxy.id, type=sub.short)
            return
        if not force and version == sub.sent_version:
            return

        sub.responses += 1
        nonce = make_nonce(sub.type_url, version, sub.responses)
        await context.write(
            discovery_pb2.DiscoveryResponse(
                version_info=version, resources=[r.any for r in resources], type_url=sub.type_url, nonce=nonce
            )
        )
        sub.record_sent(version, nonce, tuple(r.name for r in resources))
        for follow in _FOLLOW_UPS.get(sub.type_url, ()):
            if (other := conn.subscriptions.get(follow)) is not None:
                other.must_answer = True

        self._metrics.pushed(sub.type_url, time.perf_counter() - started)
        size = sum(r.size for r in resources)
        kind = "PUSH request" if request else "PUSH"
        self._log.info(
            f"ads {sub.short}: {kind} for node:{conn.proxy.short} resources:{len(resources)} size:{byte_count(size)}",
            type=sub.short, version=version, nonce=nonce, proxy=conn.proxy.id, conn=conn.id,
            resources=len(resources), size=size, reason=reason,
        )
