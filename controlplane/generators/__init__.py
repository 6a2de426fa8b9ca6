"""xDS generators: pure functions of (mesh snapshot, proxy) -> Envoy resources.

One module per resource type (clusters, endpoints, listeners, routes). Each exposes
`build(mesh, proxy) -> list[(name, message)]`. `Generator` below adds what is not pure:
packing each resource once and sharing the result between proxies and across snapshots.

A proxy's resources of one type are composed of parts (parts.py); each part is cached by
what it reads of the proxy and of the mesh (dependencies.py), so
- proxies whose output would be identical share one generation and one serialized copy;
- a new snapshot regenerates only the parts whose inputs changed: an endpoint change
  leaves clusters, listeners and routes cached and rebuilds the assignments of the
  changed hosts only, a DestinationRule change the clusters and assignments of its
  hosts only; a Gateway change leaves every sidecar's output untouched.
`key()` gives the cache key of a proxy's output without generating it: the server
compares it with what it last sent to decide whether a proxy needs a push at all.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .generator import Builder, Generator, builders
    from .resources import Resource, ResourceSet, pack

# Imported on first use: `meshd serve` reaches ready (the first snapshot) without the
# generators and Envoy's protobuf modules, and imports them right after (app.py).
_LAZY = {"Generator": "generator", "builders": "generator", "Builder": "generator",
         "Resource": "resources", "ResourceSet": "resources", "pack": "resources"}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from importlib import import_module

    return getattr(import_module(f"{__name__}.{module}"), name)


__all__ = ["Builder", "Generator", "builders", "Resource", "ResourceSet", "pack"]
