"""Incremental ADS (DeltaAggregatedResources): the delta state machine.

It shares everything but the protocol with the state-of-the-world one (sotw.py), through
the stream host (host.py, protocol.py): the connection and its event queue, the
per-type Subscription, the ResourceView that resolves what a proxy should have, the
PushLimiter, identity rules and SDS handling. See subscription.py for the protocol's
vocabulary; in brief:

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
from collections.abc import Callable

from envoy.service.discovery.v3 import discovery_pb2

from .. import names
from ..generators.resources import ResourceSet, changes
from . import wire
from .caches import PerGroup
from .connection import Connection, Push
from .protocol import Context, Host, Sent
from .subscription import Subscription


class DeltaProtocol:
    def __init__(self, host: Host):
        self._host = host
        self._diffs = PerGroup(self._diff)  # for subscriptions with nothing declared or owed

    # --- events -----------------------------------------------------------------------
    async def on_request(self, conn: Connection, context: Context,
                         req: discovery_pb2.DeltaDiscoveryRequest) -> None:
        host = self._host
        type_url = req.type_url
        if not type_url:
            host.log.warning("ads delta request without type_url ignored", proxy=conn.proxy.id, conn=conn.id)
            return
        problem = host.limits.names_problem(req.resource_names_subscribe, req.resource_names_unsubscribe)
        if problem is not None:
            await host.refuse(conn, context, problem, type_url, delta=True)
        first = type_url not in conn.subscriptions
        sub = conn.subscription(type_url)
        if first and req.initial_resource_versions:
            sub.set_initial_versions(dict(req.initial_resource_versions))
        if nonce := req.response_nonce:
            if req.HasField("error_detail"):
                # A stale nonce never blocks a NACK (nor subscription changes, below).
                nack = sub.record_nack(nonce, req.error_detail.message, req.error_detail.code)
                host.nacked(conn, sub, nack, stale=nonce != sub.sent_nonce, delta=True)
            elif nonce == sub.sent_nonce:
                sub.record_ack(sub.sent_version, nonce)
            else:
                host.metrics.stale_nonce(type_url)
        added = sub.update_delta(req.resource_names_subscribe, req.resource_names_unsubscribe, first,
                                 host.caches.name_set)
        if first:
            sub.resend -= set(sub.known)  # declared on reconnect: sent only if it changed
        if type_url not in host.view.types():
            if first:
                host.log.warning("ads type not served", proxy=conn.proxy.id, conn=conn.id, type=type_url)
            return
        if first or added or sub.resend:
            await self._respond(conn, context, sub, request=True, reason="request", first=first)

    def settle_ack(self, conn: Connection, req: discovery_pb2.DeltaDiscoveryRequest) -> bool:
        """A plain ACK of the last response that needs no answer, recorded at once."""
        sub = conn.subscriptions.get(req.type_url)
        if (sub is None or not req.response_nonce or req.response_nonce != sub.sent_nonce or sub.resend
                or req.resource_names_subscribe or req.resource_names_unsubscribe
                or req.HasField("error_detail") or req.initial_resource_versions):
            return False
        sub.record_ack(sub.sent_version, req.response_nonce)
        return True

    async def on_push(self, conn: Connection, context: Context, push: Push) -> None:
        served = self._host.view.types()
        reason = ",".join(sorted(push.reasons))
        for type_url in names.PUSH_ORDER:
            sub = conn.subscriptions.get(type_url)
            if sub is None or type_url not in served:
                continue
            # `resend` may have been filled by this very push (assignments of updated clusters).
            if push.types is None or type_url in push.types or sub.resend:
                await self._respond(conn, context, sub, request=False, reason=reason)

    # --- responses --------------------------------------------------------------------
    async def _respond(self, conn: Connection, context: Context, sub: Subscription, *,
                       request: bool, reason: str, first: bool = False) -> None:
        host = self._host
        started = time.perf_counter()
        resolved = await host.resolve(conn, sub, unless_current=not request and not sub.resend)
        if resolved is None:
            return
        key, rs = resolved
        send, removed = self._diff_shared(sub, rs)
        if not send and not removed and not (first and not sub.known):
            # Nothing the client lacks. (The first request of a fresh client is always
            # answered, even with nothing: Envoy's initialisation waits for it.)
            sub.sent_set, sub.sent_key = rs, key
            sub.known.clear()
            sub.resend.clear()
            return
        resources = [rs[n] for n in sorted(send)]
        version = rs.version
        nonce = sub.next_nonce(version)
        chunks = [wire.delta_chunk(r) for r in resources]
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
        host.sent(conn, sub, Sent(len(resources), sum(r.size for r in resources), version, nonce, request, reason,
                                  started, removed=len(removed),
                                  incremental=not request and sub.type_url == names.ENDPOINT))
        await host.write(conn, context, data)

    # --- what the client holds and lacks ----------------------------------------------
    @staticmethod
    def _holds(sub: Subscription) -> Callable[[str], bool]:
        """name -> whether the client held the resource before this response."""
        known, sent = dict(sub.known), sub.sent_set
        return lambda n: n in known or (sent is not None and n in sent)

    def _diff_shared(self, sub: Subscription, rs: ResourceSet) -> tuple[set[str], set[str]]:
        """_diff, worked out once per group of subscriptions in the same state (read-only)."""
        if sub.known or sub.resend or sub.sent_set is None:
            return self._diff(sub, rs)
        shared: tuple[set[str], set[str]] = self._diffs.get(sub, rs)
        return shared

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
