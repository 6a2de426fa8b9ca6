"""xDS generators: pure functions of (mesh snapshot, proxy) -> Envoy resources.

One module per resource type (clusters, endpoints, listeners, routes). Each exposes
`build(mesh, proxy) -> list[(name, message)]`. `Generator` below adds what is not pure:
packing each resource once and sharing the result between proxies whose output would be
identical (same `Proxy.group_key()`), for as long as the mesh snapshot stays the same.
"""
from __future__ import annotations

from typing import Callable, Iterable

from google.protobuf.message import Message

from .. import names
from ..model.mesh import MeshSnapshot
from ..model.proxy import Proxy
from .resources import Resource, ResourceSet, pack

Builder = Callable[[MeshSnapshot, Proxy], Iterable[tuple[str, Message]]]


def builders() -> dict[str, Builder]:
    from . import clusters, endpoints, listeners, routes

    return {
        names.CLUSTER: clusters.build,
        names.ENDPOINT: endpoints.build,
        names.LISTENER: listeners.build,
        names.ROUTE: routes.build,
    }


class Generator:
    """Caches generated ResourceSets per (mesh version, proxy group, type)."""

    def __init__(self, table: dict[str, Builder] | None = None):
        self._builders = table or builders()
        self._mesh_version: str | None = None
        self._cache: dict[tuple, ResourceSet] = {}

    def types(self) -> tuple[str, ...]:
        return tuple(t for t in names.PUSH_ORDER if t in self._builders)

    def generate(self, mesh: MeshSnapshot, proxy: Proxy, type_url: str) -> ResourceSet:
        if mesh.version != self._mesh_version:
            # A new snapshot: nothing older can be served again.
            self._cache.clear()
            self._mesh_version = mesh.version
        key = (proxy.group_key(), type_url)
        hit = self._cache.get(key)
        if hit is not None:
            return hit
        build = self._builders.get(type_url)
        items: list[Resource] = []
        if build is not None:
            items = [pack(name, type_url, msg) for name, msg in build(mesh, proxy)]
        rs = ResourceSet(type_url, items)
        self._cache[key] = rs
        return rs
