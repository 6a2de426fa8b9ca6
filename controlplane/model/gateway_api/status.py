"""The Kubernetes `status` of the Gateway API objects meshd handles, from the facts the
conversion found (conversion.py's reports): a pure function, shown by the debug views in
directory mode and written back by the leader in Kubernetes mode (kube/gateway_status.py,
which adds `lastTransitionTime` and `observedGeneration`).

    gateway_api_status(mesh.gateway_api) -> {ConfigKey: status}

The conditions and reasons are the Gateway API's (Accepted, Programmed, ResolvedRefs,
Conflicted; see docs/gateway-api.md). A route's `parents` list one entry per parentRef
meshd handled, each with `controllerName: istio.io/gateway-controller`.
"""
from __future__ import annotations

from typing import Any

from ...config.objects import ConfigKey
from ...config.types.gateway_api import ParentRef
from ...names import GATEWAY_API_CONTROLLER, GATEWAY_API_GROUP
from .conversion import Condition, GatewayAPI

Status = dict[str, Any]


def condition(c: Condition) -> dict[str, str]:
    return {"type": c.type, "status": "True" if c.status else "False", "reason": c.reason, "message": c.message}


def parent_ref(ref: ParentRef) -> dict[str, Any]:
    """A parentRef as the route's status names it (the fields the route set)."""
    out: dict[str, Any] = {"group": ref.group, "kind": ref.kind, "name": ref.name}
    if ref.namespace:
        out["namespace"] = ref.namespace
    if ref.section_name:
        out["sectionName"] = ref.section_name
    if ref.port is not None:
        out["port"] = ref.port
    return out


def gateway_api_status(result: GatewayAPI) -> dict[ConfigKey, Status]:
    """Every handled object's status: GatewayClasses, Gateways (with listeners and
    addresses) and routes (their parents)."""
    out: dict[ConfigKey, Status] = {}
    for cls in result.class_reports:
        out[cls.key] = {"conditions": [condition(c) for c in cls.conditions]}
    for gw in result.gateway_reports:
        status: Status = {}
        if gw.addresses:
            status["addresses"] = [{"type": t, "value": v} for t, v in gw.addresses]
        status["conditions"] = [condition(c) for c in gw.conditions]
        status["listeners"] = [{
            "name": ln.name,
            "attachedRoutes": ln.attached_routes,
            "supportedKinds": [{"group": k.group or GATEWAY_API_GROUP, "kind": k.kind} for k in ln.supported_kinds],
            "conditions": [condition(c) for c in ln.conditions],
        } for ln in gw.listeners]
        out[gw.key] = status
    for route in result.route_reports:
        if route.parents:
            out[route.key] = {"parents": [{
                "parentRef": parent_ref(p.ref),
                "controllerName": GATEWAY_API_CONTROLLER,
                "conditions": [condition(c) for c in p.conditions],
            } for p in route.parents]}
    return out
