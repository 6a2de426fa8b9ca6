"""The EnvoyFilter stage of generation: after a proxy's listeners, route configurations
or clusters are composed from their parts, the EnvoyFilters selecting it patch them.

The parts stay cached as they are (they read no EnvoyFilter); what a proxy's patched
output depends on is its `key` (the selected EnvoyFilters' content, in order, the proxy's
type and the node metadata the patches match on), appended to the parts' keys by the
Generator. So an EnvoyFilter change changes the keys, and pushes to, only the proxies it
selects (before or after the change), and two proxies with equal keys share one patched
copy.
"""
from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import structlog
from google.protobuf import any_pb2

from ... import names
from ...config import kinds
from ...model.indexes import Index, Lifetime, Value
from ...model.mesh import MeshSnapshot
from ...model.proxy import Proxy
from ..resources import ResourceSet, pack
from . import extension_config
from .apply import Problem, apply
from .select import Selected, ordered

log = structlog.get_logger("meshd.envoyfilter")

KIND_OF = {names.LISTENER: "LISTENER", names.ROUTE: "ROUTE_CONFIGURATION", names.CLUSTER: "CLUSTER",
           names.BOOTSTRAP: "BOOTSTRAP"}
_MESSAGES: dict[str, Any] = {}

_ALL = Value[tuple[Selected, ...]]("EnvoyFilters", Lifetime.CONFIG)
_BY_WORKLOAD = Index[tuple[Any, ...], tuple[Selected, ...]]("EnvoyFilters by workload", Lifetime.CONFIG)


def _all(mesh: MeshSnapshot) -> tuple[Selected, ...]:
    out = []
    for obj in mesh.config.of_kind(kinds.ENVOY_FILTER.kind):
        if obj.typed is not None:
            out.append(Selected(obj.namespace, obj.name, str(obj.extra.get("creationTimestamp") or ""), obj.typed,
                                obj.generation))
    return tuple(out)


def selected(mesh: MeshSnapshot, proxy: Proxy) -> tuple[Selected, ...]:
    """The EnvoyFilters selecting `proxy`, in the order their patches run."""
    table = mesh.indexes[_BY_WORKLOAD]
    k = (proxy.namespace, proxy.label_key)
    got = table.get(k)
    if got is None:
        every = mesh.indexes.get(_ALL)
        if every is None:
            every = mesh.indexes.value(_ALL, _all, mesh)
        got = table[k] = ordered(every, proxy, mesh.root_namespace)
    return got


def key(mesh: MeshSnapshot, proxy: Proxy, type_url: str) -> tuple[Any, ...]:
    """What the patched output reads besides its parts; () when no EnvoyFilter selects it."""
    if type_url not in KIND_OF:
        return ()
    # EXTENSION_CONFIG patches change no listener, route or cluster: ECDS only
    chosen = tuple(s for s in _bearing(selected(mesh, proxy), type_url) if not extension_config.serves_only(s))
    if not chosen:
        return ()
    meta = sorted({k for s in chosen for cp in s.filter.patches if cp.match and cp.match.proxy
                   for k in (*cp.match.proxy.metadata, "ISTIO_VERSION")})
    return (("envoyfilter", tuple((s.key, s.generation) for s in chosen), proxy.type,
             tuple(str(proxy.metadata.get(k, "")) for k in meta)),)


def _bearing(chosen: tuple[Selected, ...], type_url: str) -> tuple[Selected, ...]:
    """The EnvoyFilters whose patches can change output of `type_url`: BOOTSTRAP patches
    only the bootstrap, and nothing else does (a bootstrap-only change pushes no LDS)."""
    def boot(s: Selected) -> bool:
        return any(cp.apply_to == "BOOTSTRAP" for cp in s.filter.patches)

    def other(s: Selected) -> bool:
        return any(cp.apply_to != "BOOTSTRAP" for cp in s.filter.patches)

    return tuple(s for s in chosen if (boot(s) if type_url == names.BOOTSTRAP else other(s)))


def patch(mesh: MeshSnapshot, proxy: Proxy, type_url: str, rs: ResourceSet) -> tuple[ResourceSet, list[Problem]]:
    """`rs` patched by the EnvoyFilters selecting `proxy`; the patches left out, logged."""
    kind = KIND_OF[type_url]
    items = [(name, _unpack(rs[name].any)) for name in rs]
    out, problems = apply(kind, items, selected(mesh, proxy), proxy)
    for p in problems:
        log.warning("envoyfilter patch left out", envoy_filter=p.envoy_filter, patch=p.patch, apply_to=p.apply_to,
                    code=p.code, reason=p.reason, proxy=proxy.id)
    patched = ResourceSet(type_url, [pack(name, type_url, msg) for name, msg in out])
    return patched, problems


def problems_status(found: Iterable[list[Problem]]) -> list[dict[str, Any]]:
    counts: dict[Problem, int] = {}
    for problems in list(found):  # one step (CPython): a scrape thread may read while a push adds
        for p in set(problems):
            counts[p] = counts.get(p, 0) + 1
    return [{"envoyFilter": p.envoy_filter, "patch": p.patch, "applyTo": p.apply_to, "code": p.code,
             "reason": p.reason, "outputs": n} for p, n in sorted(counts.items(), key=lambda kv: (kv[0].envoy_filter, kv[0].patch))]


def _unpack(a: any_pb2.Any) -> Any:
    cls = _MESSAGES.get(a.type_url)
    if cls is None:
        from google.protobuf import descriptor_pool, message_factory

        cls = _MESSAGES[a.type_url] = message_factory.GetMessageClass(
            descriptor_pool.Default().FindMessageTypeByName(a.type_url.rpartition("/")[2]))
    msg = cls()
    a.Unpack(msg)
    return msg


# --- ECDS: EnvoyFilter EXTENSION_CONFIG patches (extension_config.py) -------------------

def extension_key(mesh: MeshSnapshot, proxy: Proxy) -> tuple[Any, ...]:
    """What a proxy's extension configs read: the selected EnvoyFilters that have
    EXTENSION_CONFIG patches or filters naming one (name and content, in order), the
    proxy type (the context of those filters) and the node metadata their patches match on."""
    chosen = [s for s in selected(mesh, proxy) if extension_config.bears(s)]
    meta = sorted({k for s in chosen for cp in s.filter.patches if cp.match and cp.match.proxy
                   for k in (*cp.match.proxy.metadata, "ISTIO_VERSION")})
    return ("ecds", tuple((s.key, s.generation) for s in chosen), proxy.type,
            tuple(str(proxy.metadata.get(k, "")) for k in meta))


def extension_configs(mesh: MeshSnapshot, proxy: Proxy) -> tuple[ResourceSet, list[Problem]]:
    """A proxy's extension configs (every name its EnvoyFilters provide; the server sends
    those it asks for); the patches left out, logged."""
    items, problems = extension_config.build(selected(mesh, proxy), proxy)
    for p in problems:
        log.warning("envoyfilter patch left out", envoy_filter=p.envoy_filter, patch=p.patch, apply_to=p.apply_to,
                    code=p.code, reason=p.reason, proxy=proxy.id)
    return ResourceSet(names.EXTENSION_CONFIG, [pack(n, names.EXTENSION_CONFIG, m) for n, m in items]), problems


def extension_config_items(mesh: MeshSnapshot, proxy: Proxy) -> list[tuple[str, Any]]:
    """The plain builder of ECDS (generators.builders): no cache, no report."""
    return extension_config.build(selected(mesh, proxy), proxy)[0]
