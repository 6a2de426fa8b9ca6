"""The Gateway API status meshd writes, merged into what the cluster holds (pure).

The model computes each Gateway API object's status (model/gateway_api/: conditions
with the spec's reasons, listeners, addresses, route parents) in the shape of the
CRDs' `status`; this module turns it into the JSON merge patch of `<plural>/status`
that makes the cluster say it, touching only what belongs to meshd:

- GatewayClass and Gateway: the condition types meshd computes (others' types stay),
  and a Gateway's `listeners` and `addresses` (a Gateway has one controller: its class's);
- routes: the `parents` entries whose `controllerName` is istio.io/gateway-controller;
  other implementations' entries stay, in their order, before meshd's.

Every condition meshd writes carries the object's `observedGeneration`, and keeps its
`lastTransitionTime` while its status does not change (the spec's rule), so writing the
same verdict again changes nothing and writes nothing.

A Gateway API object the parse gate rejects (the store keeps its last good version, so
the model still reports on that one) says so in the spec's terms: GatewayClass and
Gateway `Accepted: False` (reasons InvalidParameters, Invalid), each parent of a route
`Accepted: False` reason UnsupportedValue, with the field and reason as message.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..names import GATEWAY_API_CONTROLLER

ROUTE_KINDS = frozenset({"HTTPRoute", "GRPCRoute", "TCPRoute", "TLSRoute"})
# Accepted=False reason of a rejected object, per kind (the spec's reasons)
REJECTED_REASON = {"GatewayClass": "InvalidParameters", "Gateway": "Invalid"}
ROUTE_REJECTED_REASON = "UnsupportedValue"

Status = dict[str, Any]


def _stamp(conditions: list[Any], previous: list[Any], generation: int | None, now: Callable[[], str]) -> list[Any]:
    """`conditions` as written: observedGeneration set, lastTransitionTime kept from the
    previous condition of the same type while its status is the same."""
    before = {c.get("type"): c for c in previous if isinstance(c, dict)}
    out = []
    for c in conditions:
        cond = {k: v for k, v in c.items() if k not in ("lastTransitionTime", "observedGeneration")}
        if generation is not None:
            cond["observedGeneration"] = generation
        old = before.get(cond.get("type"))
        kept = old.get("lastTransitionTime") if old is not None and old.get("status") == cond.get("status") else None
        cond["lastTransitionTime"] = kept or now()
        out.append(cond)
    return out


def _rejected_conditions(conditions: list[Any], reason: str, message: str) -> list[Any]:
    accepted = {"type": "Accepted", "status": "False", "reason": reason, "message": message}
    return [accepted, *(c for c in conditions if isinstance(c, dict) and c.get("type") != "Accepted")]


def wanted(kind: str, current: Status, ours: Status, generation: int | None, rejection: str | None,
           now: Callable[[], str]) -> Status:
    """The whole status the object should have: `current` with meshd's part replaced by `ours`."""
    new = dict(current)
    if kind in ROUTE_KINDS:
        previous = [p for p in current.get("parents") or [] if isinstance(p, dict)]
        foreign = [p for p in previous if p.get("controllerName") != GATEWAY_API_CONTROLLER]
        mine = []
        for parent in ours.get("parents") or []:
            before = next((p for p in previous if p.get("controllerName") == GATEWAY_API_CONTROLLER
                           and p.get("parentRef") == parent.get("parentRef")), {})
            conditions = list(parent.get("conditions") or [])
            if rejection is not None:
                conditions = _rejected_conditions(conditions, ROUTE_REJECTED_REASON, rejection)
            mine.append({**parent, "controllerName": GATEWAY_API_CONTROLLER,
                         "conditions": _stamp(conditions, before.get("conditions") or [], generation, now)})
        new["parents"] = foreign + mine
        if not new["parents"]:
            new.pop("parents")
        return new
    conditions = list(ours.get("conditions") or [])
    if rejection is not None:
        conditions = _rejected_conditions(conditions, REJECTED_REASON.get(kind, "Invalid"), rejection)
    types = {c.get("type") for c in conditions}
    previous = [c for c in current.get("conditions") or [] if isinstance(c, dict)]
    new["conditions"] = [c for c in previous if c.get("type") not in types] + _stamp(conditions, previous, generation, now)
    if kind == "Gateway":
        before = {ln.get("name"): ln for ln in current.get("listeners") or [] if isinstance(ln, dict)}
        new["listeners"] = [{**ln, "conditions": _stamp(list(ln.get("conditions") or []),
                                                       (before.get(ln.get("name")) or {}).get("conditions") or [],
                                                       generation, now)}
                            for ln in ours.get("listeners") or []]
        new["addresses"] = list(ours.get("addresses") or [])
    return {k: v for k, v in new.items() if v not in ([], None)}


def _comparable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _comparable(v) for k, v in value.items() if k != "lastTransitionTime"}
    if isinstance(value, list):
        return [_comparable(v) for v in value]
    return value


def status_patch(kind: str, current: Status, ours: Status, generation: int | None, rejection: str | None = None,
                 now: Callable[[], str] = lambda: "") -> Status | None:
    """The merge patch of `.status` (None: the cluster already says it)."""
    new = wanted(kind, current, ours, generation, rejection, now)
    if _comparable(new) == _comparable(current):
        return None
    return {k: new.get(k) for k in set(current) | set(new)}  # absent keys -> null: removed by the merge patch


def rejected_message(kind: str, status: Status) -> str | None:
    """The rejection meshd wrote into this status, if any (so an Event is sent once)."""
    if kind in ROUTE_KINDS:
        conditions = [c for p in status.get("parents") or [] if isinstance(p, dict)
                      and p.get("controllerName") == GATEWAY_API_CONTROLLER for c in p.get("conditions") or []]
        reason = ROUTE_REJECTED_REASON
    else:
        conditions = status.get("conditions") or []
        reason = REJECTED_REASON.get(kind, "Invalid")
    return next((str(c.get("message") or "") for c in conditions if isinstance(c, dict)
                 and c.get("type") == "Accepted" and c.get("status") == "False" and c.get("reason") == reason), None)
