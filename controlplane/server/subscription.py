"""What one ADS stream has asked for and been sent, per resource type: the state both
the state-of-the-world (sotw.py) and the incremental (delta.py) state machines keep,
including the nonce and NACK bookkeeping they share.

The protocol (https://www.envoyproxy.io/docs/envoy/latest/api-docs/xds_protocol) in
brief:

- SotW: the client names what it wants in every request, the full list each time.
  Delta: it adds and removes names (`resource_names_subscribe`/`_unsubscribe`).
- Wildcard (CDS, LDS): a client that has never named anything for the type (legacy
  wildcard: Envoy's first request has no names) or that names "*" gets every resource
  the server decides it should have. Once it names something, an empty list no longer
  means wildcard: it means nothing (SotW), and only an explicit "*" is wildcard again.
  (go-control-plane: pkg/server/stream/v3/subscription.go, same rules.)
- Each response carries a nonce; the next request for that type echoes it. A SotW
  request echoing an older nonce is stale. A request with `error_detail` is a NACK:
  the client keeps its previous config. Anything else with the current nonce is an ACK.
- Delta: every resource has its own version (a content hash here); the server sends
  only resources whose version the client does not have and names in
  `removed_resources` what the client should drop. A reconnecting client tells the
  server what it holds (`initial_resource_versions`); nothing it holds at the current
  version is sent again. A name the client subscribes to is always sent (even at the
  version it holds: it may have forgotten it).

Nonces are derived from the type, the version and a per-stream count of responses
(`next_nonce`), so they are unique per response on a stream and a restarted meshd sends
the same ones again.

`known` is what the client holds as far as the server knows (name -> version): what was
sent, plus what a delta client declared on reconnect. `sent_set`/`sent_key` remember the
ResourceSet and generator key of the last response, so a push can skip a proxy whose
output did not change and compute what did change from the set's lineage.
"""
from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from .. import names

WILDCARD = "*"
NONCE_LEN = 16  # characters of make_nonce's nonces (acks.py recognises ACKs by them)

# Gives the shared copy of an equal name set (ServerCaches.name_set); by default none.
Canonical = Callable[[frozenset[str]], frozenset[str]]


def _own(names_: frozenset[str]) -> frozenset[str]:
    return names_


def make_nonce(type_url: str, version: str, counter: int) -> str:
    """Unique per response on a stream (the counter), reproducible across restarts."""
    return hashlib.sha256(f"{type_url}\n{version}\n{counter}".encode()).hexdigest()[:NONCE_LEN]


@dataclass(frozen=True)
class Nack:
    """The client rejected a response."""

    version: str  # the version rejected ("" if the nonce was not our latest)
    nonce: str
    message: str  # Envoy's error_detail.message, kept verbatim, never parsed
    code: int  # error_detail.code (a google.rpc code; Envoy uses 13, INTERNAL)
    at: float = field(default_factory=time.time)


@dataclass
class Subscription:
    type_url: str
    # What the client asks for.
    names: frozenset[str] = frozenset()
    wildcard: bool = False
    legacy_wildcard: bool = True  # never named anything yet: an empty request is "*"
    # What the client holds, as far as the server knows (name -> version).
    known: dict[str, str] = field(default_factory=dict)
    # The last response sent on this stream for this type.
    sent_version: str = ""
    sent_nonce: str = ""
    sent_at: float = 0.0
    sent_set: Any = None  # the ResourceSet the last response was made from
    sent_key: Any = None  # the generator key of that set (None: always re-check)
    responses: int = 0  # responses sent so far; feeds the nonce
    # What the client confirmed.
    acked_version: str = ""
    acked_nonce: str = ""
    nack: Nack | None = None  # the most recent NACK, kept for debugging
    # Answer the next request even if it looks like a plain ACK. Envoy re-requests EDS
    # (RDS, SDS) with an unchanged-looking request after a CDS (LDS) push and keeps the
    # new clusters (listeners) warming until it gets an answer.
    must_answer: bool = False
    # Delta: names that must be sent on the next response even at a version the client
    # holds (newly subscribed, or forgotten by a wildcard unsubscribe).
    resend: set[str] = field(default_factory=set)
    # SotW EDS: clusters that CDS responses updated since the last EDS response. Envoy
    # keeps an updated cluster warming until it gets its assignment, so the next EDS
    # response carries these, changed or not; the others it keeps (shared, read-only).
    warming: frozenset[str] = frozenset()
    # SotW: the last request without its version, nonce and node, re-encoded (shared
    # between subscriptions, ServerCaches.request_body), to recognise an ACK that repeats
    # the name list.
    last_request: bytes | None = field(default=None, repr=False)
    # SotW: the version and nonce fields an ACK of the last response carries (acks.py).
    ack_fields: tuple[bytes, bytes] | None = field(default=None, repr=False)
    # Memos of view.py (per snapshot, per pair of name sets): cheap pushes to thousands.
    key_memo: Any = field(default=None, repr=False)
    covers_memo: Any = field(default=None, repr=False)

    @property
    def short(self) -> str:
        return names.SHORT.get(self.type_url, self.type_url.rsplit(".", 1)[-1])

    @property
    def wildcard_type(self) -> bool:
        return self.type_url in names.WILDCARD_TYPES

    def wants(self, name: str) -> bool:
        return self.wildcard or name in self.names

    # --- state of the world ---------------------------------------------------------
    def set_names(self, requested: Iterable[str], canonical: Canonical = _own) -> bool:
        """Record the names of a SotW request; True if the subscription changed."""
        new = frozenset(requested)
        if self.legacy_wildcard and not new and self.wildcard_type:
            wildcard = True
        else:
            self.legacy_wildcard = self.legacy_wildcard and not new
            wildcard = WILDCARD in new
        new = new - {WILDCARD}
        changed = new != self.names or wildcard != self.wildcard
        self.names, self.wildcard = canonical(new), wildcard
        return changed

    # --- incremental --------------------------------------------------------------------
    def update_delta(self, subscribe: Iterable[str], unsubscribe: Iterable[str], first: bool,
                     canonical: Canonical = _own) -> set[str]:
        """Apply a delta request's subscription changes; returns the names newly (re)subscribed,
        which must be answered even if the client holds them ("*" among them when the
        wildcard was subscribed: everything the client lacks must be sent)."""
        subscribe, unsubscribe = list(subscribe), list(unsubscribe)
        if not subscribe and not unsubscribe:  # an ACK: nothing changes (the common case)
            if first and self.wildcard_type:
                self.wildcard = True
            return set()
        if subscribe:
            self.legacy_wildcard = False
        added: set[str] = set()
        current = set(self.names)
        for n in subscribe:
            if n == WILDCARD:
                if not self.wildcard and self.sent_set is not None:
                    # From now on everything is wanted, but the client holds only what
                    # it named: pin that down before `sent_set` would claim the rest.
                    self.known = {**{m: self.sent_set[m].version for m in self.names if m in self.sent_set},
                                  **self.known}
                    self.sent_set = None
                self.wildcard = True
                added.add(WILDCARD)
                continue
            current.add(n)
            added.add(n)
        for n in unsubscribe:
            if n == WILDCARD:
                self.wildcard = False
                continue
            if n in current and self.wildcard:
                # Still wanted through the wildcard or gone: the client cannot tell, so
                # the next response must say (resend it, or list it as removed).
                self.known.pop(n, None)
                self.resend.add(n)
            elif not self.wildcard:
                self.known.pop(n, None)
            current.discard(n)
        self.names = canonical(frozenset(current))
        self.resend |= added - {WILDCARD}
        return added

    def set_initial_versions(self, versions: dict[str, str]) -> None:
        """A reconnecting delta client's resources: sent again only when they differ."""
        self.known = dict(versions)

    # --- bookkeeping --------------------------------------------------------------------
    def next_nonce(self, version: str) -> str:
        """The nonce of the response about to be sent (counts it)."""
        self.responses += 1
        return make_nonce(self.type_url, version, self.responses)

    def record_sent(self, version: str, nonce: str, sent_names: tuple[str, ...] = (), sent_resources: tuple[Any, ...] = (), *,
                    resource_set: Any = None, key: Any = None) -> None:
        """A response went out. With `resource_set`, the client now holds that set's
        resources that it wants (a push may send only the changed ones: the rest it
        had); without, exactly `sent_resources`."""
        self.sent_version, self.sent_nonce = version, nonce
        self.sent_at = time.time()
        if resource_set is None and sent_resources:
            from ..generators.resources import ResourceSet

            resource_set = ResourceSet(self.type_url, sent_resources)
        self.sent_set, self.sent_key = resource_set, key
        self.must_answer = False
        self.warming = frozenset()  # every EDS response carries them (sotw.partial_push)

    @property
    def sent_resources(self) -> tuple[Any, ...]:
        """The resources the client holds from this stream (as of the last response)."""
        rs = self.sent_set
        if rs is None:
            return ()
        if self.wildcard:
            return tuple(rs.values())
        return tuple(rs.subset(sorted(self.names)))

    @property
    def sent_names(self) -> tuple[str, ...]:
        return tuple(r.name for r in self.sent_resources)

    def record_ack(self, version: str, nonce: str) -> None:
        self.acked_version, self.acked_nonce = version, nonce

    def record_nack(self, nonce: str, message: str, code: int) -> Nack:
        """The client rejected the response with `nonce` (a request with error_detail):
        kept, for debugging, whether or not it was our latest (as istiod: a rejection is
        worth recording even when a newer response is already on its way)."""
        self.nack = Nack(version=self.sent_version if nonce == self.sent_nonce else "", nonce=nonce,
                         message=message, code=code)
        return self.nack

    @property
    def status(self) -> str:
        """Sync state in istioctl proxy-status words (plus NACKED)."""
        if not self.sent_nonce:
            return "NOT SENT"
        if self.acked_nonce == self.sent_nonce:
            return "SYNCED"
        if self.nack is not None and self.nack.nonce == self.sent_nonce:
            return "NACKED"
        return "STALE"
