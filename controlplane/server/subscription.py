"""What one ADS stream has asked for and been sent, per resource type.

The state-of-the-world protocol (envoy/api/envoy/service/discovery/v3 and
https://www.envoyproxy.io/docs/envoy/latest/api-docs/xds_protocol) in brief:

- The client names what it wants in every request; the full list each time. For the
  wildcard types (CDS, LDS) an EMPTY `resource_names` means "everything" (Envoy never
  sends "*" in SotW, but accept it too). EDS, RDS and SDS are always named.
- Each response carries a nonce; the next request for that type echoes it in
  `response_nonce`. A request echoing an older nonce answers a response that has
  since been superseded: it is stale and carries no new information.
- A request with `error_detail` is a NACK: the client rejected the response with that
  nonce and keeps its previous config (its `version_info` stays at the last accepted
  version). Anything else with the current nonce is an ACK.

The server keeps one `Subscription` per (stream, type): the protocol state machine in
ads.py reads and updates it, and debug views show it (compare go-control-plane's
pkg/server/stream/v3/subscription.go and istiod's WatchedResource).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Iterable

from .. import names


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
    # The last response sent on this stream for this type.
    sent_version: str = ""
    sent_nonce: str = ""
    sent_names: tuple[str, ...] = ()
    sent_at: float = 0.0
    responses: int = 0  # responses sent so far; feeds the nonce
    # What the client confirmed.
    acked_version: str = ""
    acked_nonce: str = ""
    nack: Nack | None = None  # the most recent NACK, kept for debugging
    # Answer the next request even if it looks like a plain ACK. Envoy re-requests EDS
    # (RDS, SDS) with an unchanged-looking request after a CDS (LDS) push and keeps the
    # new clusters (listeners) warming until it gets an answer.
    must_answer: bool = False

    @property
    def short(self) -> str:
        return names.SHORT.get(self.type_url, self.type_url.rsplit(".", 1)[-1])

    def set_names(self, requested: Iterable[str]) -> bool:
        """Record the names of a request; True if the subscription changed."""
        new = frozenset(requested)
        wildcard = "*" in new or (not new and self.type_url in names.WILDCARD_TYPES)
        changed = new != self.names or wildcard != self.wildcard
        self.names, self.wildcard = new, wildcard
        return changed

    def record_sent(self, version: str, nonce: str, sent_names: tuple[str, ...]) -> None:
        self.sent_version, self.sent_nonce, self.sent_names = version, nonce, sent_names
        self.sent_at = time.time()
        self.must_answer = False

    def record_ack(self, version: str, nonce: str) -> None:
        self.acked_version, self.acked_nonce = version, nonce

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
