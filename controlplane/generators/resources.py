"""Generated resources, serialized once.

A generator returns protobuf messages; this module packs each into an `Any` exactly
once, hashes the bytes, and keeps the result so every proxy that receives the same
resource shares one copy. Versions are derived from content: the same config always
gives the same version strings, also across meshd restarts.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Iterable, Mapping

from google.protobuf import any_pb2
from google.protobuf.message import Message


@dataclass(frozen=True)
class Resource:
    name: str
    type_url: str
    any: any_pb2.Any  # packed once; reused for every response that carries it
    version: str  # content hash (hex) of the serialized resource

    @property
    def size(self) -> int:
        return len(self.any.value)


def pack(name: str, type_url: str, msg: Message) -> Resource:
    # deterministic=True: map fields serialize in a stable order, so equal messages
    # give equal bytes and equal versions.
    data = msg.SerializeToString(deterministic=True)
    a = any_pb2.Any(type_url=type_url, value=data)
    return Resource(name=name, type_url=type_url, any=a, version=hashlib.sha256(data).hexdigest()[:16])


class ResourceSet(Mapping[str, Resource]):
    """All resources of one type for one proxy, by name, with a content version."""

    __slots__ = ("type_url", "_items", "_version")

    def __init__(self, type_url: str, items: Iterable[Resource]):
        self.type_url = type_url
        self._items: dict[str, Resource] = {}
        for r in items:
            self._items[r.name] = r
        self._version: str | None = None

    def __getitem__(self, name: str) -> Resource:
        return self._items[name]

    def __iter__(self):
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    @property
    def version(self) -> str:
        if self._version is None:
            self._version = version_of(self._items.values())
        return self._version

    def subset(self, names: Iterable[str]) -> list[Resource]:
        """The named resources that exist, in request order, without duplicates."""
        seen, out = set(), []
        for n in names:
            if n in self._items and n not in seen:
                seen.add(n)
                out.append(self._items[n])
        return out


def version_of(resources: Iterable[Resource]) -> str:
    """Version of a response: a hash over the names and versions it carries."""
    h = hashlib.sha256()
    for r in sorted(resources, key=lambda r: r.name):
        h.update(r.name.encode())
        h.update(b"\0")
        h.update(r.version.encode())
        h.update(b"\n")
    return h.hexdigest()[:16]
