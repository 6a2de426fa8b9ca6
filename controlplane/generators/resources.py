"""Generated resources, serialized once.

A generator returns protobuf messages; this module packs each into an `Any` exactly
once, hashes the bytes, and keeps the result so every proxy that receives the same
resource shares one copy. Versions are derived from content: the same config always
gives the same version strings, also across meshd restarts.

How a resource is framed inside a response is the server's business (server/wire.py);
a resource and a set offer it `forms`, where those encodings are kept once made, so a
response to one more proxy is a join of bytes already made, not a new serialization.

A proxy's resources of one type are a `ResourceSet`; a set made of shareable parts is a
`ComposedSet` (see parts.py). A set rebuilt from an earlier one remembers it (`base`)
and what changed, so the server can tell each connection what is new without comparing
thousands of versions per proxy (`changes`).
"""
from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from operator import attrgetter

from google.protobuf import any_pb2
from google.protobuf.message import Message


@dataclass(frozen=True)
class Resource:
    name: str
    type_url: str
    any: any_pb2.Any  # packed once; reused for every response that carries it
    version: str  # content hash (hex) of the serialized resource
    # Encodings of this resource made by whoever sends it (server/wire.py keeps its
    # response framings here), made once and shared by every proxy that receives it.
    forms: dict[str, bytes] = field(default_factory=dict, init=False, repr=False, compare=False)

    @cached_property
    def size(self) -> int:
        return len(self.any.value)  # (upb copies the bytes on every access: once)

    @cached_property
    def version_line(self) -> bytes:
        """What this resource adds to the version of a set or response (version_of)."""
        return f"{self.name}\0{self.version}\n".encode()


def content_version(data: bytes) -> str:
    """The version of a resource serialized as `data`: a digest of its bytes."""
    return hashlib.sha256(data).hexdigest()[:16]


def pack(name: str, type_url: str, msg: Message) -> Resource:
    # deterministic=True: map fields serialize in a stable order, so equal messages
    # give equal bytes and equal versions.
    data = msg.SerializeToString(deterministic=True)
    a = any_pb2.Any(type_url=type_url, value=data)
    return Resource(name=name, type_url=type_url, any=a, version=content_version(data))


class ResourceSet(Mapping[str, Resource]):
    """All resources of one type for one proxy, by name, with a content version."""

    __slots__ = ("type_url", "_items", "_version", "_names", "_size", "forms", "base", "changed", "removed",
                 "__weakref__")

    def __init__(self, type_url: str, items: Iterable[Resource]):
        self.type_url = type_url
        self._items: dict[str, Resource] = {}
        for r in items:
            self._items[r.name] = r
        self._version: str | None = None
        self._names: frozenset[str] | None = None
        self._size: int | None = None
        # As Resource.forms: the set's resources framed for a response, kept by the
        # server (server/wire.py) on sets it shares between proxies.
        self.forms: dict[str, bytes] = {}
        # Lineage (set by the generator): the set this one was rebuilt from, and the
        # names whose resource differs from it / that it no longer has.
        self.base: ResourceSet | None = None
        self.changed: frozenset[str] = frozenset()
        self.removed: frozenset[str] = frozenset()

    def __getitem__(self, name: str) -> Resource:
        return self._items[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    @property
    def version(self) -> str:
        if self._version is None:
            self._version = version_of(self._items.values())
        return self._version

    @property
    def names(self) -> frozenset[str]:
        if self._names is None:
            self._names = frozenset(self._items)
        return self._names

    @property
    def parts(self) -> tuple[ResourceSet, ...]:
        return (self,)

    @property
    def size(self) -> int:
        """Bytes of all resources (as istiod's push log counts them)."""
        if self._size is None:
            self._size = sum(r.size for r in self._items.values())
        return self._size

    def subset(self, names: Iterable[str]) -> list[Resource]:
        """The named resources that exist, in request order, without duplicates."""
        seen, out = set(), []
        for n in names:
            if n in self._items and n not in seen:
                seen.add(n)
                out.append(self._items[n])
        return out

    def derive_from(self, base: ResourceSet) -> None:
        """Record `base` as this set's predecessor and what differs from it."""
        old = base._items
        self.base = base
        self.changed = frozenset(n for n, r in self._items.items() if (o := old.get(n)) is not r and (o is None or o.version != r.version))
        self.removed = frozenset(n for n in old if n not in self._items)
        if not self.removed and len(old) == len(self._items):
            self._names = base.names  # same names: share the set (memos compare it by identity)


class ComposedSet(ResourceSet):
    """A proxy's resources of one type made of parts (each a shareable ResourceSet,
    names disjoint). Lookups go through the parts: no merged copy per proxy."""

    __slots__ = ("_parts",)

    def __init__(self, type_url: str, parts: Iterable[ResourceSet]):
        super().__init__(type_url, ())
        self._parts = tuple(parts)

    @property
    def parts(self) -> tuple[ResourceSet, ...]:
        return self._parts

    def __getitem__(self, name: str) -> Resource:
        for p in self._parts:
            r = p._items.get(name)
            if r is not None:
                return r
        raise KeyError(name)

    def __contains__(self, name: object) -> bool:
        return any(name in p._items for p in self._parts)

    def __iter__(self) -> Iterator[str]:
        for p in self._parts:
            yield from p._items

    def __len__(self) -> int:
        return sum(len(p._items) for p in self._parts)

    # Mapping.get takes a default of any type; this one, a Resource or None.
    def get(self, name: str, default: Resource | None = None) -> Resource | None:  # type: ignore[override]
        for p in self._parts:
            r = p._items.get(name)
            if r is not None:
                return r
        return default

    @property
    def version(self) -> str:
        if self._version is None:
            h = hashlib.sha256()
            for p in self._parts:
                h.update(p.version.encode())
                h.update(b"\n")
            self._version = h.hexdigest()[:16]
        return self._version

    @property
    def names(self) -> frozenset[str]:
        if self._names is None:
            self._names = frozenset().union(*(p.names for p in self._parts))
        return self._names

    @property
    def size(self) -> int:
        return sum(p.size for p in self._parts)

    def subset(self, names: Iterable[str]) -> list[Resource]:
        seen, out = set(), []
        for n in names:
            if n not in seen and (r := self.get(n)) is not None:
                seen.add(n)
                out.append(r)
        return out


def changes(old: ResourceSet | None, new: ResourceSet, max_steps: int = 16) -> tuple[set[str], set[str]] | None:
    """(names changed or added, names removed) from `old` to `new`, from the sets'
    lineage alone; None when the lineage does not connect them (compare versions then)."""
    if old is None:
        return None
    if old is new:
        return set(), set()
    if len(old.parts) != len(new.parts) or (len(new.parts) > 1 and not isinstance(old, ComposedSet)):
        return None
    if len(new.parts) > 1:
        changed: set[str] = set()
        removed: set[str] = set()
        for o, n in zip(old.parts, new.parts, strict=True):
            d = changes(o, n, max_steps)
            if d is None:
                return None
            changed |= d[0]
            removed |= d[1]
        return changed, removed - changed
    changed, removed = set(), set()
    cur: ResourceSet | None = new
    for _ in range(max_steps):
        if cur is None:
            return None
        if cur is old:
            present = new.names
            return {n for n in changed if n in present}, {n for n in removed if n not in present}
        changed |= cur.changed
        removed |= cur.removed
        cur = cur.base
    return None


def version_of(resources: Iterable[Resource]) -> str:
    """Version of a response: a hash over the names and versions it carries."""
    return hashlib.sha256(b"".join(r.version_line for r in sorted(resources, key=_name))).hexdigest()[:16]


_name = attrgetter("name")
