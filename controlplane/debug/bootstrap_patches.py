"""Running proxies whose bootstrap lacks their current EnvoyFilter BOOTSTRAP patches.

Envoy reads its bootstrap once, at start: a BOOTSTRAP EnvoyFilter created, changed or
deleted while a proxy runs applies at its next start (as in Istio). `meshd bootstrap` /
`meshd pod-init --fetch-envoy-filters` record the version of the patch they merged in
node metadata `MESHD_BOOTSTRAP_PATCHES` (bootstrap_patches.py); this compares it, for
every connected proxy, with the version meshd serves that proxy now:

- /debug/configz `bootstrapPatches`: one row per such proxy (computed when read);
- the log event `bootstrap patches not applied` (warning), once per proxy and version,
  when a new mesh snapshot makes a running proxy's bootstrap out of date.

A proxy whose bootstrap was written without the fetch (no marker) is listed only when
some BOOTSTRAP patch selects it: it runs without the operator's patches.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import structlog

from .. import names
from ..bootstrap_patches import FETCHING, MARKER
from ..config import kinds
from ..generators.resources import content_version
from ..model.proxy import Proxy

log = structlog.get_logger("meshd.envoyfilter")

NO_PATCH = content_version(b"")  # the version of an empty Bootstrap: nothing selects the proxy
CHANGED = "the BOOTSTRAP patches changed since the proxy's bootstrap was written: they apply at its next start"
NOT_FETCHED = ("the proxy's bootstrap was written without the BOOTSTRAP patches (proxyMetadata BOOTSTRAP_XDS_AGENT, "
               "or meshd bootstrap / pod-init --fetch-envoy-filters): they apply once it is written with them and "
               "the proxy restarts")


def _stage() -> Any:
    """generators.envoyfilter.stage, imported when a proxy is first looked at (after ready:
    the generators are not imported before the first snapshot)."""
    from ..generators.envoyfilter import stage

    return stage


class BootstrapPatchReport:
    def __init__(self, generator: Any, proxies: Callable[[], Iterable[Proxy]]):
        self._generator = generator
        self._proxies = proxies
        self._logged: set[tuple[str, str]] = set()  # (proxy, current version) already logged
        self._patches: Any = None  # the BOOTSTRAP EnvoyFilters last observed

    def rows(self, mesh: Any) -> list[dict[str, Any]]:
        if mesh is None:
            return []
        out: dict[str, dict[str, Any]] = {}
        for proxy in self._proxies():
            written = proxy.metadata.get(MARKER)
            if proxy.id in out or written == FETCHING:
                continue
            rs = self._generator.generate(mesh, proxy, names.BOOTSTRAP)
            current = rs[names.BOOTSTRAP_RESOURCE].version if names.BOOTSTRAP_RESOURCE in rs else NO_PATCH
            if written == current or (written is None and current == NO_PATCH):
                continue
            out[proxy.id] = {
                "proxy": proxy.id,
                "envoyFilters": [s.key for s in _stage().selected(mesh, proxy)
                                 if any(cp.apply_to == "BOOTSTRAP" for cp in s.filter.patches)],
                "written": written or "", "current": current,
                "reason": NOT_FETCHED if written is None else CHANGED,
            }
        return [out[k] for k in sorted(out)]

    def observe(self, mesh: Any) -> None:
        """A new snapshot (MeshBuilder observer, on the event loop): log what it made stale.
        Most snapshots change no BOOTSTRAP EnvoyFilter (endpoints, other config): those cost
        one pass over the EnvoyFilters, not one over the proxies."""
        patches = (mesh.root_namespace, tuple(sorted(
            (o.namespace, o.name, o.generation) for o in mesh.config.of_kind(kinds.ENVOY_FILTER.kind)
            if o.typed is not None and any(cp.apply_to == "BOOTSTRAP" for cp in o.typed.patches))))
        if patches == self._patches:
            return
        self._patches = patches
        rows = self.rows(mesh)
        seen = set()
        for row in rows:
            key = (row["proxy"], row["current"])
            seen.add(key)
            if key not in self._logged:
                log.warning("bootstrap patches not applied", proxy=row["proxy"], envoy_filters=row["envoyFilters"],
                            written=row["written"], current=row["current"], reason=row["reason"])
        self._logged = seen
