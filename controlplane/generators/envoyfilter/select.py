"""Which EnvoyFilters apply to a proxy, in the order their patches run (istiod:
PushContext.EnvoyFilters): those of the root namespace and of the proxy's namespace
whose `workloadSelector` (or `targetRefs`) selects it, by priority, then the root
namespace's first, then by creation time, then by name."""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from ...config.types.envoyfilter import EnvoyFilter
from ...model.proxy import Proxy

GATEWAY_NAME_LABEL = "gateway.networking.k8s.io/gateway-name"


@dataclass(frozen=True, slots=True)
class Selected:
    namespace: str
    name: str
    created: str  # metadata.creationTimestamp (RFC 3339 sorts as text); "" if unknown
    filter: EnvoyFilter
    generation: str = ""  # the object's content hash: part of the cache key of patched output

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"


def selects(sel: Selected, proxy: Proxy, root_namespace: str) -> bool:
    if sel.namespace not in (root_namespace, proxy.namespace):
        return False
    ef = sel.filter
    if ef.target_refs:
        return any(r.kind == "Gateway" and proxy.labels.get(GATEWAY_NAME_LABEL) == r.name
                   and sel.namespace == proxy.namespace for r in ef.target_refs)
    if ef.selector is None:
        return True
    return all(proxy.labels.get(k) == v for k, v in ef.selector.items())


def ordered(filters: Iterable[Selected], proxy: Proxy, root_namespace: str) -> tuple[Selected, ...]:
    chosen = [s for s in filters if selects(s, proxy, root_namespace)]
    return tuple(sorted(chosen, key=lambda s: (s.filter.priority, s.namespace != root_namespace, s.created,
                                               s.name, s.namespace)))
