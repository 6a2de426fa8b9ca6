"""The hosts of the service registry as analyzers see them: Kubernetes Services,
ServiceEntry hosts and VirtualService hosts, each with the namespaces it is exported to
(its own exportTo, else the mesh config's default for its kind)."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ...names import fqdn
from ..context import SERVICE, SERVICE_ENTRY, VIRTUAL_SERVICE, Context
from ..resources import Resource
from ..util import EXPORT_ALL, EXPORT_LOCAL, MESH_GATEWAY, to_fqdn

EXPORT_NONE = "~"
EXPORT_TO_ANNOTATION = "networking.istio.io/exportTo"


def _list(v: Any) -> list:
    return v if isinstance(v, list) else []


@dataclass(frozen=True)
class HostDefinition:
    host: str  # a Service's FQDN, a ServiceEntry host as written, a VirtualService host qualified
    resource: Resource
    export_to: tuple[str, ...]

    def visible_to(self, namespace: str) -> bool:
        """istiod's exportTo: `*` everyone, `.` the owner's namespace, `~` nobody, else names."""
        for e in self.export_to:
            if e == EXPORT_ALL or e == namespace or (e == EXPORT_LOCAL and self.resource.namespace == namespace):
                return True
        return False


def _export(values: Sequence[str], default: Sequence[str]) -> tuple[str, ...]:
    return tuple(values) if values else tuple(default)


def service_fqdn(r: Resource) -> str:
    return fqdn(r.name, r.namespace)


def host_definitions(ctx: Context) -> list[HostDefinition]:
    mc = ctx.mesh_config
    out: list[HostDefinition] = []
    for r in ctx.for_each(SERVICE):
        anno = r.annotations.get(EXPORT_TO_ANNOTATION, "")
        named = [e.strip() for e in anno.split(",") if e.strip()]
        out.append(HostDefinition(service_fqdn(r), r, _export(named, mc.default_service_export_to)))
    for r in ctx.for_each(SERVICE_ENTRY):
        export = _export([str(e) for e in _list(r.spec.get("exportTo"))], mc.default_service_export_to)
        out += [HostDefinition(str(h), r, export) for h in _list(r.spec.get("hosts"))]
    for r in ctx.for_each(VIRTUAL_SERVICE):
        gateways = [str(g) for g in _list(r.spec.get("gateways"))]
        if gateways and MESH_GATEWAY not in gateways:  # a gateway's routes, not the sidecars'
            continue
        export = _export([str(e) for e in _list(r.spec.get("exportTo"))], mc.default_virtual_service_export_to)
        out += [HostDefinition(to_fqdn(r.namespace, str(h)), r, export) for h in _list(r.spec.get("hosts"))]
    return out


__all__ = ["EXPORT_NONE", "HostDefinition", "host_definitions", "service_fqdn"]
