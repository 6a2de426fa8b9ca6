"""VirtualService binding rules shared by every proxy type: which gateways a
VirtualService binds to, who may see it (`exportTo`), and its hosts as FQDNs."""
from __future__ import annotations

from collections.abc import Iterable

from .. import names
from ..config.objects import ConfigObject
from ..model.delegates import resolve_gateway_name
from ..model.sidecar_scope import visible

MESH_GATEWAY = "mesh"  # the reserved gateway name meaning "all sidecars"


def bound_gateways(vs: ConfigObject) -> set[str]:
    """Gateways a VirtualService binds to; none listed means only `mesh` (sidecars)."""
    refs = vs.typed.gateways
    if not refs:
        return {MESH_GATEWAY}
    return {resolve_gateway_name(r, vs.namespace) for r in refs}


def visible_to(obj: ConfigObject, namespace: str, default: tuple[str, ...] = ("*",)) -> bool:
    """Istio `exportTo`: "*" is everywhere, "." is the object's own namespace, "~" nowhere;
    absent, `default` (the mesh config's defaultVirtualServiceExportTo)."""
    return visible(obj.typed.export_to, default, obj.namespace, namespace)


def virtual_service_hosts(vs: ConfigObject) -> list[str]:
    return [names.resolve_host(h, vs.namespace).lower() for h in vs.typed.hosts]


def mesh_virtual_services(virtual_services: Iterable[ConfigObject], namespace: str,
                          default: tuple[str, ...] = ("*",)) -> list[ConfigObject]:
    """VirtualServices that apply to sidecars in `namespace`: bound to `mesh` (no
    `gateways`, or `mesh` among them) and exported to the namespace, in stable order.
    (Sidecars read theirs from their scope, model/sidecar_scope.py, which narrows these.)"""
    return [vs for vs in virtual_services if MESH_GATEWAY in bound_gateways(vs) and visible_to(vs, namespace, default)]
