"""State-of-the-world ADS (StreamAggregatedResources): the SotW state machine.

The stream host (host.py) hands it each stream's requests and pushes, in order; see
subscription.py for the protocol's vocabulary. Protocol rules, following istiod's
shouldRespond and what Envoy 1.40 does (DESIGN.md):
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
version and a per-stream counter (Subscription.next_nonce), so a restarted meshd sends
the same versions.

Requests arrive as bytes: most are plain ACKs, recognised on their bytes without
decoding (acks.py); the others are decoded and handled in full.

A push sends a type only when its generator key changed since the last response. An
EDS response other than the answer to a first request or new names carries only what
the client lacks (SotW allows partial EDS: Envoy keeps the ones not named): the
assignments that changed, and those of the clusters a CDS response updated, changed or
not (Envoy keeps an updated cluster warming until it gets its assignment; istiod resends
every assignment instead). Responses are assembled from bytes serialized once (wire.py);
a whole response is joined once per group of proxies that get the same bytes
(ServerCaches.responses).
"""
from __future__ import annotations

import functools
import time
from typing import Any

from envoy.service.discovery.v3 import discovery_pb2

from .. import names
from ..generators.resources import ResourceSet, changes
from . import acks, wire
from .caches import PerGroup
from .connection import Connection, Push
from .protocol import Context, Host, Sent
from .subscription import Subscription
from .view import wanted_resources

# After sending the key type, answer the next request for these even if it looks like
# an ACK (see module docstring).
_FOLLOW_UPS = {
    names.CLUSTER: (names.ENDPOINT, names.SECRET),
    names.LISTENER: (names.ROUTE, names.SECRET),
}

# Types whose SotW pushes carry only what changed (never LDS/CDS: those must be whole).
_PARTIAL_PUSH = frozenset({names.ENDPOINT})


class SotwProtocol:
    def __init__(self, host: Host):
        self._host = host
        self._partial = PerGroup(partial_push)  # what changed, worked out once per group
        self._updated = PerGroup(lambda sub, rs: frozenset(changed_names(sub, rs)))  # clusters a CDS response updates
        self.decoded = 0  # requests decoded in full (the others were settled on their bytes)

    # --- ACKs on their bytes ----------------------------------------------------------
    def _plain_ack(self, conn: Connection, raw: bytes) -> Subscription | None:
        """The subscription `raw` ACKs with the same names as before, recorded; or None
        (then the request must be decoded and handled in full)."""
        sub = acks.match(raw, conn.acks)
        if sub is not None:
            sub.record_ack(sub.sent_version, sub.sent_nonce)
        return sub

    def settle_ack(self, conn: Connection, request: Any) -> bool:
        """A plain ACK whose answer would be nothing, recorded at once."""
        if type(request) is not bytes:
            return False
        sub = acks.match(request, conn.acks)
        if sub is None or sub.must_answer or conn.mesh is None:
            return False
        key = self._host.view.key(conn, sub, conn.mesh)
        if key is None or key != sub.sent_key:
            return False
        sub.record_ack(sub.sent_version, sub.sent_nonce)
        return True

    # --- events -----------------------------------------------------------------------
    async def on_request(self, conn: Connection, context: Context,
                         request: discovery_pb2.DiscoveryRequest | bytes) -> None:
        host = self._host
        if isinstance(request, bytes):
            sub = self._plain_ack(conn, request)
            if sub is not None:
                await self._respond(conn, context, sub, request=True, force=sub.must_answer, reason="request")
                return
            req = discovery_pb2.DiscoveryRequest.FromString(request)
            self.decoded += 1
        else:
            req = request  # the first request (decoded by the host for its node)
        type_url = req.type_url
        if not type_url:
            host.log.warning("ads request without type_url ignored", proxy=conn.proxy.id, conn=conn.id)
            return
        version, nonce = req.version_info, req.response_nonce
        sub = conn.subscriptions.get(type_url)
        new = sub is None
        # Envoy's ACKs repeat the whole name list (a sidecar's EDS request names every
        # cluster): compare the rest of the request, re-encoded, with the previous one
        # (in C) rather than build a set of a thousand strings per ACK; the bytes are
        # kept shared (by every proxy asking the same).
        # Most ACKs never get here: acks.py matches them on their bytes.
        req.ClearField("version_info")
        req.ClearField("response_nonce")
        req.ClearField("node")
        body = req.SerializeToString()
        same_names = sub is not None and sub.last_request == body
        if not same_names and (problem := host.limits.names_problem(req.resource_names)) is not None:
            await host.refuse(conn, context, problem, type_url)
        if sub is None:
            sub = conn.subscription(type_url)

        # NACKs first and regardless of nonce (as istiod): a rejection is worth
        # recording even when a newer response is already on its way.
        if req.HasField("error_detail"):
            nack = sub.record_nack(nonce, req.error_detail.message, req.error_detail.code)
            host.nacked(conn, sub, nack, stale=nonce != sub.sent_nonce, accepted_version=version)
            return

        # Nothing sent yet for this type: whatever the nonce says, this is an initial
        # request (Envoy clears nonces on reconnect; other clients may not).
        initial = not nonce or not sub.sent_nonce
        if not initial and nonce != sub.sent_nonce:
            host.metrics.stale_nonce(type_url)
            host.log.debug("ads stale nonce ignored", proxy=conn.proxy.id, type=sub.short, nonce=nonce,
                           sent_nonce=sub.sent_nonce)
            return

        changed = False if same_names else sub.set_names(req.resource_names, host.caches.name_set)
        sub.last_request = host.caches.request_body(body)
        if not initial:
            sub.record_ack(version, nonce)
        if type_url not in host.view.types():
            if new:
                host.log.warning("ads type not served", proxy=conn.proxy.id, conn=conn.id, type=type_url)
            return
        force = initial or changed or sub.must_answer
        await self._respond(conn, context, sub, request=True, force=force, complete=initial or changed,
                            reason="request")

    async def on_push(self, conn: Connection, context: Context, push: Push) -> None:
        served = self._host.view.types()
        reason = ",".join(sorted(push.reasons))
        for type_url in names.PUSH_ORDER:
            sub = conn.subscriptions.get(type_url)
            if sub is not None and type_url in served and (push.types is None or type_url in push.types):
                await self._respond(conn, context, sub, request=False, force=False, reason=reason)

    # --- responses --------------------------------------------------------------------
    async def _respond(
        self, conn: Connection, context: Context, sub: Subscription, *,
        request: bool, force: bool, reason: str, complete: bool = False,
    ) -> None:
        """Answer a request or push the type. `force`: answer even if the client holds the
        current version; `complete`: the answer must hold everything the client asks for
        (a first request, new names), else EDS carries only what the client lacks."""
        host = self._host
        started = time.perf_counter()
        resolved = await host.resolve(conn, sub, unless_current=not force)
        if resolved is None:
            return
        key, rs = resolved
        version, wanted = wanted_resources(sub, rs)
        whole = wanted is None
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
            if wanted is None:  # the parts' shared blobs, joined once into the response below
                chunks, count, size = wire.sotw_blobs(rs), len(rs), rs.size
            else:
                chunks, count, size = [wire.sotw_chunk(r) for r in wanted], len(wanted), sum(r.size for r in wanted)
        nonce = sub.next_nonce(version)
        data: Any = functools.partial(wire.sotw_response, version, chunks, sub.type_url, nonce)  # made in the slot
        if whole and not partial:  # the same bytes for every proxy holding this set at this count
            data = functools.partial(host.caches.responses.get, rs, version, nonce, data)
        if sub.type_url == names.CLUSTER:
            self._mark_warming(conn, sub, rs)
        # Recorded before the write: the answer to it may be read before the write returns.
        sub.record_sent(version, nonce, resource_set=rs, key=key)
        if sub.ack_fields is not None:
            conn.acks.pop(sub.ack_fields[1], None)
        conn.acks[acks.expect(sub)[1]] = sub
        for follow in _FOLLOW_UPS.get(sub.type_url, ()):
            if (other := conn.subscriptions.get(follow)) is not None:
                other.must_answer = True
        host.sent(conn, sub, Sent(count, size, version, nonce, request, reason, started,
                                  incremental=partial and not request))
        await host.write(conn, context, data)

    def _mark_warming(self, conn: Connection, cds: Subscription, rs: ResourceSet) -> None:
        """Before a CDS response goes out: the clusters it updates warm in Envoy until
        their assignments arrive, so the next EDS response must carry them."""
        eds = conn.subscriptions.get(names.ENDPOINT)
        if cds.sent_set is None or eds is None or eds.sent_set is None:
            return  # a first CDS or EDS response: EDS will be answered whole
        updated = self._updated.get(cds, rs)
        if updated:
            eds.warming = updated if not eds.warming else eds.warming | updated


def partial_push(sub: Subscription, rs: ResourceSet) -> tuple[list[bytes], int, int]:
    """(chunks, count, size) of the resources of `rs` that `sub` wants and lacks, and of
    the clusters warming in it (SotW EDS)."""
    wanted = changed_names(sub, rs)
    if sub.warming:
        wanted |= {n for n in sub.warming if n in rs and sub.wants(n)}
    resources = [rs[n] for n in sorted(wanted)]
    return [wire.sotw_chunk(r) for r in resources], len(resources), sum(r.size for r in resources)


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
