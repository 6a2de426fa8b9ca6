"""Incremental ADS (DeltaAggregatedResources): the delta state machine.

It shares everything but the protocol with the state-of-the-world server (ads.py): the
connection and its event queue, the per-type Subscription, the ResourceView that
resolves what a proxy should have, the PushLimiter, identity rules and SDS handling.
See subscription.py for the protocol's vocabulary; in brief:

- Requests add and remove names (`resource_names_subscribe`/`_unsubscribe`). The first
  request for LDS/CDS without names is a (legacy) wildcard; "*" is an explicit one.
- Every resource carries its own version, its content hash (Resource.version). The
  server sends the resources whose version the client does not hold and lists in
  `removed_resources` what it should drop (also a subscribed name that does not exist,
  so the client need not wait for a timeout).
- On reconnect, `initial_resource_versions` says what the client holds: a resource it
  holds at the current version is not sent again; one deleted meanwhile is listed as
  removed. A name (re)subscribed is always sent, even at the version the client holds.
- A request with `error_detail` is a NACK of the response with that nonce: recorded,
  not answered (a later change sends a new version). A stale nonce never blocks
  subscription changes (unlike SotW): the spec says to honour them.
- When a cluster the client already had changes, its ClusterLoadAssignment is sent
  again with it, changed or not: Envoy keeps an updated cluster warming until it gets
  an assignment (its EDS cache may or may not cover it).

Pushes: the same targeted, coalesced Push events as SotW; a type is looked at only
when its generator key changed, and only the resources that changed are sent.
"""
from __future__ import annotations

import functools
import time
from typing import TYPE_CHECKING, Any

import grpc
from envoy.service.discovery.v3 import discovery_pb2

from .. import names
from ..generators.resources import ResourceSet, changes
from . import wire
from .connection import Connection, Push
from .limits import names_problem
from .subscription import Nack, Subscription
from .view import PerGroup

if TYPE_CHECKING:
    from .host import AdsServer


class DeltaProtocol:
    def __init__(self, server: "AdsServer"):
        self._s = server
        self._diffs = PerGroup(self._diff)  # for subscriptions with nothing declared or owed

    # --- events -----------------------------------------------------------------------
    async def _on_request(self, conn: Connection, context: grpc.aio.ServicerContext,
                          req: discovery_pb2.DeltaDiscoveryRequest) -> None:
        s = self._s
        type_url = req.type_url
        if not type_url:
            s._log.warning("ads delta request without type_url ignored", proxy=conn.proxy.id, conn=conn.id)
            return
        if (problem := names_problem(req.resource_names_subscribe, req.resource_names_unsubscribe)) is not None:
            s._log.warning("ads request refused", proxy=conn.proxy.id, conn=conn.id, type_url=type_url[:200],
                           reason=problem, delta=True)
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, f"meshd: {problem}")
        first = type_url not in conn.subscriptions
        sub = conn.subscription(type_url)
        if first and req.initial_resource_versions:
            sub.set_initial_versions(dict(req.initial_resource_versions))
        if req.response_nonce:
            if req.HasField("error_detail"):
                self._record_nack(conn, sub, req)
            elif req.response_nonce == sub.sent_nonce:
                sub.record_ack(sub.sent_version, req.response_nonce)
            else:
                s._metrics.stale_nonce(type_url)
        added = sub.update_delta(req.resource_names_subscribe, req.resource_names_unsubscribe, first)
        if first:
            sub.resend -= set(sub.known)  # declared on reconnect: sent only if it changed
        if type_url not in s._types():
            if first:
                s._log.warning("ads type not served", proxy=conn.proxy.id, conn=conn.id, type=type_url)
            return
        if first or added or sub.resend:
            await self.respond(conn, context, sub, request=True, reason="request", first=first)

    def settle_ack(self, conn: Connection, req: discovery_pb2.DeltaDiscoveryRequest) -> bool:
        """Record `req` at once if it is a plain ACK of the last response that needs no
        answer (the reader calls this while the handler waits: no queueing, no wake-up)."""
        sub = conn.subscriptions.get(req.type_url)
        if (sub is None or not req.response_nonce or req.response_nonce != sub.sent_nonce or sub.resend
                or req.resource_names_subscribe or req.resource_names_unsubscribe
                or req.HasField("error_detail") or req.initial_resource_versions):
            return False
        sub.record_ack(sub.sent_version, req.response_nonce)
        return True

    async def _on_push(self, conn: Connection, context: grpc.aio.ServicerContext, push: Push) -> None:
        s = self._s
        conn.mesh = s._mesh
        served = s._types()
        reason = ",".join(sorted(push.reasons))
        for type_url in names.PUSH_ORDER:
            sub = conn.subscriptions.get(type_url)
            if sub is None or type_url not in served:
                continue
            # `resend` may have been filled by this very push (assignments of updated clusters).
            if push.types is None or type_url in push.types or sub.resend:
                await self.respond(conn, context, sub, request=False, reason=reason)
        s._metrics.push_done(time.monotonic() - push.queued_at)
        if s.observer is not None:
            s.observer.proxy_pushed(conn)

    # --- responses --------------------------------------------------------------------
    async def respond(self, conn: Connection, context: grpc.aio.ServicerContext, sub: Subscription, *,
                      request: bool, reason: str, first: bool = False) -> None:
        s = self._s
        if conn.mesh is None:
            conn.mesh = s._mesh
        started = time.perf_counter()
        try:
            key = s._view.key(conn, sub, conn.mesh)
            if not request and not sub.resend and key is not None and key == sub.sent_key:
                return
            rs = await s._view.resolve(conn, sub, conn.mesh)
        except Exception:
            s._metrics.internal_error()
            s._log.exception("ads generate failed", proxy=conn.proxy.id, type=sub.short)
            return
        send, removed = self._diff_shared(sub, rs)
        if not send and not removed and not (first and not sub.known):
            # Nothing the client lacks. (The first request of a fresh client is always
            # answered, even with nothing: Envoy's initialisation waits for it.)
            sub.sent_set, sub.sent_key = rs, key
            sub.known.clear()
            sub.resend.clear()
            return
        resources = [rs[n] for n in sorted(send)]
        sub.responses += 1
        version = rs.version
        nonce = make_nonce(sub.type_url, version, sub.responses)
        chunks = [r.delta_chunk for r in resources]
        data = functools.partial(wire.delta_response, version, chunks, sub.type_url, nonce, sorted(removed))
        had = self._holds(sub)
        # Recorded before the write: the answer to it may be read before the write returns.
        sub.record_sent(version, nonce, resource_set=rs, key=key)
        sub.known.clear()
        sub.resend.clear()
        if sub.type_url == names.CLUSTER:
            eds = conn.subscriptions.get(names.ENDPOINT)
            if eds is not None:
                eds.resend |= {n for n in send if had(n) and eds.wants(n)}
        s._sent(conn, sub, len(resources), sum(r.size for r in resources), version, nonce, request, reason, started,
                removed=len(removed), incremental=not request and sub.type_url == names.ENDPOINT)
        await s._send(conn, context, data)

    # --- what the client holds and lacks ----------------------------------------------
    @staticmethod
    def _holds(sub: Subscription):
        """name -> whether the client held the resource before this response."""
        known, sent = dict(sub.known), sub.sent_set
        return lambda n: n in known or (sent is not None and n in sent)

    def _diff_shared(self, sub: Subscription, rs: ResourceSet) -> tuple[set[str], set[str]]:
        """_diff, worked out once per group of subscriptions in the same state (read-only)."""
        if sub.known or sub.resend or sub.sent_set is None:
            return self._diff(sub, rs)
        return self._diffs.get(sub, rs)

    @staticmethod
    def _diff(sub: Subscription, rs: ResourceSet) -> tuple[set[str], set[str]]:
        """(names to send, names to list as removed) to bring the client to `rs`."""
        send: set[str] = set()
        removed: set[str] = set()
        d = changes(sub.sent_set, rs) if not sub.known else None
        if d is not None:
            send = {n for n in d[0] if sub.wants(n)}
            removed = {n for n in d[1] if sub.wants(n)}
        else:
            old = sub.sent_set
            names_ = rs if sub.wildcard else [n for n in sub.names if n in rs]
            for n in names_:
                have = sub.known.get(n) if n in sub.known else (
                    old[n].version if old is not None and n in old else None)
                if have != rs[n].version:
                    send.add(n)
            held = set(sub.known)
            if old is not None:
                held |= {n for n in old if sub.wants(n)}
            removed = {n for n in held if n not in rs and (sub.wildcard or n in sub.names or n in sub.known)}
        for n in sub.resend:
            if n in rs and sub.wants(n):
                send.add(n)
            elif n not in rs:
                removed.add(n)  # gone, or never existed: say so rather than leave the client waiting
        return send, removed - send

    def _record_nack(self, conn: Connection, sub: Subscription, req: discovery_pb2.DeltaDiscoveryRequest) -> None:
        s = self._s
        current = req.response_nonce == sub.sent_nonce
        sub.nack = Nack(
            version=sub.sent_version if current else "", nonce=req.response_nonce,
            message=req.error_detail.message, code=req.error_detail.code,
        )
        s._metrics.nacked(sub.type_url, conn.proxy.id, req.error_detail.code)
        s._log.warning(
            "ads NACK", proxy=conn.proxy.id, conn=conn.id, type=sub.short, version=sub.nack.version,
            nonce=req.response_nonce, stale=not current, error=req.error_detail.message, delta=True,
        )


def make_nonce(type_url: str, version: str, counter: int) -> str:
    from .host import make_nonce as nonce  # ads imports this module

    return nonce(type_url, version, counter)
