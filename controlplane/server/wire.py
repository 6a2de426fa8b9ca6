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

from collections import OrderedDict
from typing import Any, Callable, Iterable

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


class BoundedBytes:
    """Values by key, at most `max_bytes` of them in all (each counted by the size given
    when put), the oldest dropped first; a value over `max_item` bytes is not kept."""

    def __init__(self, max_bytes: int, max_item: int):
        self.max_bytes, self.max_item = max_bytes, max_item
        self._items: OrderedDict[Any, tuple[Any, int]] = OrderedDict()
        self._bytes = 0

    @property
    def size(self) -> int:
        """Bytes held."""
        return self._bytes

    def get(self, key: Any) -> Any:
        got = self._items.get(key)
        return got[0] if got is not None else None

    def put(self, key: Any, value: Any, size: int) -> None:
        replaced = self._items.pop(key, None)
        if replaced is not None:
            self._bytes -= replaced[1]
        if size > self.max_item:
            return
        self._items[key] = (value, size)
        self._bytes += size
        while self._bytes > self.max_bytes:
            _, (_, old) = self._items.popitem(last=False)
            self._bytes -= old


class SharedResponses:
    """Whole responses made once and sent to many: proxies that share a generated set
    and have had as many responses of the type (equal nonce, made from the count) get
    byte-identical responses, so a sidecar's megabyte of CDS is joined once per group
    rather than once per proxy. Keyed by the set's identity (the set is kept with the
    bytes, so the identity cannot be reused while cached); bounded in bytes."""

    def __init__(self, max_bytes: int = 64 << 20):
        self._cache = BoundedBytes(max_bytes, max_bytes // 4)
        self.hits = self.misses = 0

    @property
    def size(self) -> int:
        """Bytes of responses held."""
        return self._cache.size

    def get(self, owner: Any, version: str, nonce: str, make: Callable[[], bytes]) -> bytes:
        key = (id(owner), version, nonce)
        got = self._cache.get(key)
        if got is not None and got[0] is owner:
            self.hits += 1
            return got[1]
        self.misses += 1
        data = make()
        self._cache.put(key, (owner, data), len(data))
        return data


def serialize(response: bytes | Message) -> bytes:
    """gRPC response serializer: bytes as they are, messages serialized."""
    if isinstance(response, (bytes, bytearray, memoryview)):
        return bytes(response)
    return response.SerializeToString()
