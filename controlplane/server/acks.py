"""Recognising a state-of-the-world ACK from its bytes, without decoding it.

After every response Envoy sends a request that echoes the version and nonce and repeats
the whole name list: a sidecar's EDS ACK names every cluster of the mesh (1,200 names,
56 KB). Decoding that and re-encoding it to compare it with the previous request cost
about 85 us per ACK, for every proxy on every push. But the server knows what an ACK of
its last response must look like: the version it sent as field 1, the nonce it sent as
field 5, and in between (or before the version) exactly the bytes of the previous
request's other fields. Envoy writes fields in number order ([version][names][type]
[nonce]); other clients may put the version after the rest. If the request has either
layout, its other fields are compared in place (one memcmp) with the previous request's,
which every subscription keeps: the sotw.py slow path keeps them re-encoded in number
order, and shared (ServerCaches.request_body), so the 2,000 sidecars of a mesh that ask for
the same names hold one copy. Anything else (a NACK carries error_detail after the nonce, a changed name list,
another layout) is decoded and handled in full.
"""
from __future__ import annotations

from .subscription import NONCE_LEN, Subscription
from .wire import NONCE, VERSION, field_bytes

# How an ACK ends: the nonce field's tag, its length, and the nonce.
NONCE_FIELD_LEN = 2 + NONCE_LEN


def expect(sub: Subscription) -> tuple[bytes, bytes]:
    """Remember how the ACK of `sub`'s last response starts and ends (after record_sent);
    returns it (sub.ack_fields)."""
    fields = (field_bytes(VERSION, sub.sent_version.encode()), field_bytes(NONCE, sub.sent_nonce.encode()))
    sub.ack_fields = fields
    return fields


def rest_of_ack(raw: bytes, version_field: bytes, nonce_field: bytes) -> memoryview | None:
    """`raw` without its version and nonce fields if it is laid out [version][rest][nonce]
    or [rest][version][nonce]; None otherwise."""
    if not raw.endswith(nonce_field):
        return None
    end = len(raw) - len(nonce_field)
    view = memoryview(raw)
    if raw.startswith(version_field):
        return view[len(version_field):end]
    if raw.endswith(version_field, 0, end):
        return view[:end - len(version_field)]
    return None


def match(raw: bytes, by_nonce: dict[bytes, Subscription], nonce_len: int = NONCE_FIELD_LEN) -> Subscription | None:
    """The subscription `raw` is a plain ACK for (current nonce, same names), or None."""
    sub = by_nonce.get(raw[-nonce_len:])
    if sub is None or sub.ack_fields is None:
        return None
    rest = rest_of_ack(raw, *sub.ack_fields)
    previous = sub.last_request
    # bytes.startswith compares buffers with memcmp (a memoryview == bytes does not).
    if rest is None or previous is None or len(previous) != len(rest) or not previous.startswith(rest):
        return None
    return sub
