"""xDS framing: responses as bytes, assembled from resources serialized once.

Protobuf's wire format is a sequence of fields in any order, and a repeated message
field is its entries written one after the other. So a DiscoveryResponse for one more
proxy is the version and nonce fields plus the `resources` entries already encoded
(`sotw_chunk`, kept on the resource, and `sotw_blob`, kept on shared ResourceSets, in
their `forms`): nothing is serialized again per proxy, and for the 1,000 clusters every
sidecar gets the work is one join of bytes. The gRPC handlers are registered with
`serialize` below, which passes bytes through (and still serializes a message, for
callers that write one).

Field numbers (envoy/service/discovery/v3/discovery.proto):
  DiscoveryRequest        version_info 1, response_nonce 5 (acks.py reads ACKs by them)
  DiscoveryResponse       version_info 1, resources 2, type_url 4, nonce 5
  DeltaDiscoveryResponse  system_version_info 1, resources 2, type_url 4, nonce 5,
                          removed_resources 6
  Resource                version 1, resource 2, name 3
"""
from __future__ import annotations

from collections.abc import Iterable

from google.protobuf.message import Message

from ..generators.resources import Resource, ResourceSet

# DiscoveryRequest / DiscoveryResponse / DeltaDiscoveryResponse fields.
VERSION, RESOURCES, TYPE_URL, NONCE, REMOVED = 1, 2, 4, 5, 6
# envoy.service.discovery.v3.Resource fields.
RESOURCE_VERSION, RESOURCE_BODY, RESOURCE_NAME = 1, 2, 3

# Keys of the encodings kept in Resource.forms / ResourceSet.forms.
_SOTW, _DELTA = "sotw", "delta"


def varint(n: int) -> bytes:
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def field_bytes(number: int, data: bytes) -> bytes:
    """A length-delimited protobuf field (wire type 2)."""
    return varint(number << 3 | 2) + varint(len(data)) + data


def sotw_chunk(r: Resource) -> bytes:
    """`r` as one `resources` entry of a DiscoveryResponse (made once, kept on `r`)."""
    forms = r.forms
    got = forms.get(_SOTW)
    if got is None:
        got = forms[_SOTW] = field_bytes(RESOURCES, r.any.SerializeToString())
    return got


def delta_chunk(r: Resource) -> bytes:
    """`r` as one `resources` entry of a DeltaDiscoveryResponse: an
    envoy.service.discovery.v3.Resource with name, version and resource (made once, kept)."""
    forms = r.forms
    got = forms.get(_DELTA)
    if got is None:
        body = (field_bytes(RESOURCE_NAME, r.name.encode()) + field_bytes(RESOURCE_VERSION, r.version.encode())
                + field_bytes(RESOURCE_BODY, r.any.SerializeToString()))
        got = forms[_DELTA] = field_bytes(RESOURCES, body)
    return got


def sotw_blobs(rs: ResourceSet) -> list[bytes]:
    """Every resource of `rs` as DiscoveryResponse `resources` entries: one joined blob
    per part, kept on the part (parts are shared between proxies; a composed set's own
    join is not kept, since a per-proxy copy of a megabyte would multiply memory by the
    fleet size)."""
    out = []
    for part in rs.parts:
        forms = part.forms
        blob = forms.get(_SOTW)
        if blob is None:
            blob = forms[_SOTW] = b"".join(sotw_chunk(r) for r in part.values())
        out.append(blob)
    return out


def sotw_response(version: str, resources: Iterable[bytes], type_url: str, nonce: str) -> bytes:
    """A DiscoveryResponse; `resources` are `sotw_chunk`s or joined blobs of them."""
    return b"".join((
        field_bytes(VERSION, version.encode()), *resources, field_bytes(TYPE_URL, type_url.encode()),
        field_bytes(NONCE, nonce.encode()),
    ))


def delta_response(system_version: str, resources: Iterable[bytes], type_url: str, nonce: str,
                   removed: Iterable[str] = ()) -> bytes:
    """A DeltaDiscoveryResponse; `resources` are `delta_chunk`s."""
    return b"".join((
        field_bytes(VERSION, system_version.encode()), *resources, field_bytes(TYPE_URL, type_url.encode()),
        field_bytes(NONCE, nonce.encode()), *(field_bytes(REMOVED, n.encode()) for n in removed),
    ))


def serialize(response: bytes | Message) -> bytes:
    """gRPC response serializer: bytes as they are, messages serialized."""
    if isinstance(response, (bytes, bytearray, memoryview)):
        return bytes(response)
    data: bytes = response.SerializeToString()
    return data
