"""Responses as bytes, assembled from resources serialized once.

Protobuf's wire format is a sequence of fields in any order, and a repeated message
field is its entries written one after the other. So a DiscoveryResponse for one more
proxy is the version and nonce fields plus the `resources` entries already encoded
(Resource.sotw_chunk, cached on the resource and on shared ResourceSets): nothing is
serialized again per proxy, and for the 1,000 clusters every sidecar gets the work is
one join of bytes. The gRPC handlers are registered with `serialize` below, which
passes bytes through (and still serializes a message, for callers that write one).

Field numbers (envoy/service/discovery/v3/discovery.proto):
  DiscoveryResponse       version_info 1, resources 2, type_url 4, nonce 5
  DeltaDiscoveryResponse  system_version_info 1, resources 2, type_url 4, nonce 5,
                          removed_resources 6
  Resource                version 1, resource 2, name 3
"""
from __future__ import annotations

from typing import Iterable

from google.protobuf.message import Message

from ..generators.resources import field_bytes


def sotw_response(version: str, resources: Iterable[bytes], type_url: str, nonce: str) -> bytes:
    """A DiscoveryResponse; `resources` are `sotw_chunk`s or joined blobs of them."""
    return b"".join(
        (field_bytes(1, version.encode()), *resources, field_bytes(4, type_url.encode()), field_bytes(5, nonce.encode()))
    )


def delta_response(system_version: str, resources: Iterable[bytes], type_url: str, nonce: str,
                   removed: Iterable[str] = ()) -> bytes:
    """A DeltaDiscoveryResponse; `resources` are `delta_chunk`s."""
    return b"".join((
        field_bytes(1, system_version.encode()), *resources, field_bytes(4, type_url.encode()),
        field_bytes(5, nonce.encode()), *(field_bytes(6, n.encode()) for n in removed),
    ))


def serialize(response: bytes | Message) -> bytes:
    """gRPC response serializer: bytes as they are, messages serialized."""
    if isinstance(response, (bytes, bytearray, memoryview)):
        return bytes(response)
    return response.SerializeToString()
