"""The page model of /ui/: a pure function of the mesh snapshot, the connected proxies'
sync state and the calls the proxies reported (telemetry/edges.py), as JSON-able data.

The page (static/app.js) only draws it: nodes with positions (a layered layout computed
here, so that the same inputs give the same picture), edges with their lock state, the
per-workload PeerAuthentication modes with the policy that decided each, the
AuthorizationPolicies in force and each proxy's sync state.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ...model.peer_authentication import DISABLE, PERMISSIVE, STRICT
from ...telemetry.edges import MUTUAL_TLS, NONE, REFUSED, Edge, workload_name

OUTSIDE_ID = "outside"
MAX_SERVICES = 400  # beyond this the graph shows the services that carry calls only
X0, DX, Y0, DY = 90, 230, 130, 74  # room above the first row for bowed edges
LOCKS = {MUTUAL_TLS: "locked", NONE: "open", "mixed": "open", REFUSED: "refused"}


@dataclass(frozen=True)
class ProxyState:
    """A connected proxy and its sync state (debug/status.py syncz_entry)."""

    proxy: Any  # model.proxy.Proxy
    sync: Mapping[str, Any]


def wl_id(namespace: str, name: str) -> str:
    return f"wl:{namespace}/{name}"


def sync_state(sync: Mapping[str, Any]) -> tuple[str, str]:
    """SYNCED | STALE | NACK | NOT SENT, and Envoy's message for a NACK."""
    types = sync.get("types") or []
    for t in types:
        nack = t.get("nack")
        if nack and (t.get("status") == "NACKED" or (t.get("status") != "SYNCED"
                                                      and nack.get("nonce") == t.get("sentNonce"))):
            return "NACK", f"{t.get('type')}: {nack.get('message', '')}"
    statuses = {t.get("status") for t in types}
    if "STALE" in statuses:
        return "STALE", ", ".join(t.get("type", "") for t in types if t.get("status") == "STALE") + " not acknowledged"
    if not types or statuses <= {"NOT SENT"}:
        return "NOT SENT", ""
    return ("SYNCED", "") if statuses <= {"SYNCED", "NOT SENT"} else ("STALE", "")


def _deciding(mesh: Any, sources: Sequence[str], port_level: bool) -> str:
    """The policy whose mode won (the most specific one not UNSET), "ns/name"."""
    if port_level and sources:
        return f"{sources[-1]} (portLevelMtls)"
    by_name = {f"{o.namespace}/{o.name}": o for o in getattr(mesh, "peer_authentications", ())}
    for s in reversed(sources):
        o = by_name.get(s)
        if o is not None and getattr(o.typed, "mode", "UNSET") != "UNSET":
            return s
    return "default (no PeerAuthentication decides: PERMISSIVE)"


def _authz(mesh: Any, proxy: Any) -> list[dict[str, str]]:
    from ...model.security import authz_policies_for

    try:
        chosen = authz_policies_for(mesh, proxy)
    except Exception as e:  # a model the page cannot read is reported, not hidden
        return [{"namespace": "", "name": "", "action": "ERROR", "note": str(e)}]
    return [{"namespace": p.namespace, "name": p.name, "action": p.action,
             "note": "dry run" if p.dry_run else ("invalid: denies" if p.errors else "")} for p in chosen.all()]


def _workloads(mesh: Any, proxies: Sequence[ProxyState]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for ps in proxies:
        p = ps.proxy
        name = workload_name(p.labels, p.pod, p.metadata)
        wid = wl_id(p.namespace, name)
        w = out.setdefault(wid, {"id": wid, "name": name, "namespace": p.namespace, "kind": "workload",
                                 "sidecar": False, "gateway": False, "proxies": [], "labels": dict(p.labels),
                                 "ports": set()})
        w["sidecar"] |= p.type == "sidecar"
        w["gateway"] |= p.type == "router"
        w["proxies"].append(p.short)
        w["_proxy"] = p
    if mesh is not None:
        for (_host, _port), eps in mesh.endpoints.items():
            for e in eps:
                if not e.pod and not e.labels:
                    continue
                name = workload_name(e.labels, e.pod)
                wid = wl_id(e.namespace, name)
                w = out.setdefault(wid, {"id": wid, "name": name, "namespace": e.namespace, "kind": "workload",
                                         "sidecar": False, "gateway": False, "proxies": [], "labels": dict(e.labels),
                                         "ports": set()})
                w["ports"].add(e.port)
    return out


def _security_view(mesh: Any, w: dict[str, Any]) -> None:
    """Mode, per-port modes and the deciding policies of a sidecar workload, in place."""
    if not w["sidecar"] or mesh is None:
        w.update(mode=None, modeSource="", portModes=[], plaintextAllowed=True,
                 authorizationPolicies=[])
        w["note"] = "gateway" if w["gateway"] else "no sidecar: plaintext only, no policy applies"
        return
    policy = mesh.mtls_policy(w["namespace"], w["labels"])
    ports = sorted(set(w["ports"]) | set(policy.port_modes))
    port_modes = [{"port": port, "mode": policy.for_port(port),
                   "source": _deciding(mesh, policy.sources, port in policy.port_modes)} for port in ports]
    w.update(mode=policy.mode, modeSource=_deciding(mesh, policy.sources, False), portModes=port_modes,
             plaintextAllowed=policy.mode in (PERMISSIVE, DISABLE) or any(p["mode"] != STRICT for p in port_modes),
             authorizationPolicies=_authz(mesh, w["_proxy"]) if "_proxy" in w else [], note="")


def _layout(nodes: dict[str, dict[str, Any]], links: Iterable[tuple[str, str]]) -> None:
    """Layers by longest path from the nodes nobody calls (cycles cut after n rounds),
    then rows by namespace and name: positions in place."""
    succ: dict[str, set[str]] = {n: set() for n in nodes}
    for a, b in links:
        if a in succ and b in nodes and a != b:
            succ[a].add(b)
    layer = dict.fromkeys(nodes, 0)
    for _ in range(len(nodes)):
        changed = False
        for a in sorted(succ):
            for b in succ[a]:
                if layer[b] < layer[a] + 1 and layer[a] + 1 < len(nodes):
                    layer[b] = layer[a] + 1
                    changed = True
        if not changed:
            break
    rows: dict[int, int] = {}
    for nid in sorted(nodes, key=lambda n: (layer[n], nodes[n]["namespace"], nodes[n]["label"])):
        row = rows.get(layer[nid], 0)
        rows[layer[nid]] = row + 1
        nodes[nid].update(x=X0 + DX * layer[nid], y=Y0 + DY * row, layer=layer[nid])


def _edge_text(src: str, dst: str, security: str, rate: float, err: float) -> str:
    what = {MUTUAL_TLS: "mutual TLS", NONE: "plaintext", "mixed": "partly plaintext",
            REFUSED: "plaintext refused"}.get(security, "security unknown")
    return f"{src} to {dst}: {what}, {rate:.2f} per second, {err * 100:.0f}% errors"


def build_page(mesh: Any, proxies: Sequence[ProxyState], calls: Sequence[Edge], generated: str = "") -> dict[str, Any]:
    """The page model. `calls`: telemetry.edges.edges(...) of the recent reports."""
    workloads = _workloads(mesh, proxies)
    for w in workloads.values():
        _security_view(mesh, w)
    nodes: dict[str, dict[str, Any]] = {}
    edges: list[dict[str, Any]] = []
    for w in workloads.values():
        nodes[w["id"]] = {"id": w["id"], "kind": "gateway" if w["gateway"] else "workload", "label": w["name"],
                          "namespace": w["namespace"], "sidecar": w["sidecar"], "mode": w["mode"],
                          "plaintextAllowed": w["plaintextAllowed"]}
    called_services = {e.service for e in calls if e.service and e.recent}
    services = getattr(mesh, "services", {}) if mesh is not None else {}
    for host in sorted(services):
        s = services[host]
        if len(services) > MAX_SERVICES and host not in called_services:
            continue
        nodes[f"svc:{host}"] = {"id": f"svc:{host}", "kind": "service", "label": s.name, "namespace": s.namespace,
                                "host": host}
        behind = sorted({wl_id(e.namespace, workload_name(e.labels, e.pod)) for sp in s.ports
                         for e in mesh.endpoints.get((host, sp.port), ()) if e.pod or e.labels})
        for wid in behind:
            if wid in nodes:
                edges.append({"id": f"route:svc:{host}->{wid}", "from": f"svc:{host}", "to": wid, "kind": "route",
                              "security": "", "lock": "", "label": f"service {s.name} routes to {wid[3:]}"})
    for e in calls:
        if not e.recent:
            continue
        src = OUTSIDE_ID if not e.source.known else wl_id(e.source.namespace, e.source.name)
        if e.service:
            dst = f"svc:{e.service}"
            if dst not in nodes:
                nodes[dst] = {"id": dst, "kind": "service", "label": e.service.split(".")[0],
                              "namespace": e.service.split(".")[1] if "." in e.service else "", "host": e.service}
        else:
            dst = wl_id(e.destination.namespace, e.destination.name)
        if src == OUTSIDE_ID:
            nodes.setdefault(OUTSIDE_ID, {"id": OUTSIDE_ID, "kind": "outside", "label": "outside the mesh",
                                          "namespace": "", "sidecar": False})
        elif src not in nodes:
            nodes[src] = {"id": src, "kind": "workload", "label": e.source.name, "namespace": e.source.namespace,
                          "sidecar": True, "mode": None, "plaintextAllowed": False}
        rate, err = e.rate(), e.error_rate()
        src_text = "outside the mesh" if src == OUTSIDE_ID else src[3:]
        edges.append({"id": f"call:{src}->{dst}:{e.security if e.security == REFUSED else 'traffic'}",
                      "from": src, "to": dst, "kind": "call", "reporter": e.reporter, "port": e.port,
                      "security": e.security, "lock": LOCKS.get(e.security, "unknown"),
                      "rate": round(rate, 3), "errorRate": round(err, 4), "requests": e.totals.requests,
                      "connections": e.totals.connections,
                      "label": _edge_text(src_text, dst.split(":", 1)[1], e.security, rate, err)})
    _merge_duplicate_calls(edges)
    _layout(nodes, ((e["from"], e["to"]) for e in edges))
    policies = _all_policies(mesh)
    return {
        "generated": generated,
        "meshVersion": getattr(mesh, "version", None),
        "namespaces": sorted({n["namespace"] for n in nodes.values() if n["namespace"]}),
        "nodes": sorted(nodes.values(), key=lambda n: n["id"]),
        "edges": sorted(edges, key=lambda e: e["id"]),
        "workloads": sorted(({k: v for k, v in w.items() if not k.startswith("_") and k not in ("ports", "labels")}
                             for w in workloads.values()), key=lambda w: w["id"]),
        "authorizationPolicies": sorted(policies, key=lambda p: (p["namespace"], p["name"])),
        "proxies": [_proxy_row(ps) for ps in sorted(proxies, key=lambda ps: ps.proxy.id)],
    }


def _merge_duplicate_calls(edges: list[dict[str, Any]]) -> None:
    """Several proxies of one workload (or ports) calling the same target: one edge."""
    seen: dict[str, dict[str, Any]] = {}
    keep = []
    for e in edges:
        first = seen.get(e["id"])
        if first is None:
            seen[e["id"]] = e
            keep.append(e)
            continue
        for k in ("rate", "requests", "connections"):
            first[k] = round(first[k] + e[k], 3)
        if first["security"] != e["security"]:
            first["security"], first["lock"] = "mixed", "open"
    edges[:] = keep


def _all_policies(mesh: Any) -> list[dict[str, Any]]:
    if mesh is None:
        return []
    from ...model.security import typed_policies

    return [{"namespace": p.namespace, "name": p.name, "action": p.action,
             "selector": None if p.selector is None else dict(p.selector), "dryRun": p.dry_run,
             "errors": list(p.errors)} for p in typed_policies(mesh)]


def _proxy_row(ps: ProxyState) -> dict[str, Any]:
    state, message = sync_state(ps.sync)
    return {"id": ps.proxy.id, "name": ps.proxy.short, "type": ps.proxy.type, "namespace": ps.proxy.namespace,
            "state": state, "message": message,
            "types": [{"type": t.get("type"), "status": t.get("status")} for t in ps.sync.get("types") or []]}
