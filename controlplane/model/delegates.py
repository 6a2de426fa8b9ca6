"""Delegate VirtualServices: a root VirtualService's `http[].delegate` pulls in the `http`
rules of another VirtualService (one without `hosts`), merged with the root rule the way
istiod merges them (mergeVirtualServicesIfNeeded, read not copied):

- every match of a delegate rule must fit inside some match of the root rule (a narrower
  or equal uri, the same method/scheme/authority, no contradicting header, query, port,
  source or gateway condition); each fitting pair becomes one merged match, and a delegate
  rule that fits no root match is dropped;
- the delegate rule keeps its own actions and inherits from the root rule what it leaves
  unset (rewrite, directResponse, timeout, retries, fault, mirror(s), corsPolicy, headers);
- a delegate must be exported to the root's namespace; delegates never bind on their own
  and do not delegate further.
The merged root replaces the original in the mesh snapshot; delegates are left out.
Short host names in a delegate resolve in the delegate's namespace.
"""
from __future__ import annotations

import dataclasses
import hashlib
from typing import Any, Iterable, Mapping

import structlog

from ..config.objects import ConfigObject
from ..names import resolve_host

log = structlog.get_logger("meshd.model")

_INHERITED = ("rewrite", "directResponse", "timeout", "retries", "fault", "mirror", "mirrorPercent",
              "mirrorPercentage", "corsPolicy", "mirrors", "headers")


def _exported_to(vs: ConfigObject, namespace: str) -> bool:
    export = [str(e) for e in vs.spec.get("exportTo") or []]
    if not export or "*" in export:
        return True
    return namespace in export or ("." in export and vs.namespace == namespace)


def _string_conflict(root: Any, leaf: Any) -> bool:
    if not isinstance(root, Mapping) or not isinstance(leaf, Mapping):
        return False
    if root.get("regex"):
        return bool(leaf.get("regex") or leaf.get("prefix") or leaf.get("exact"))
    if leaf.get("regex"):
        return bool(root.get("prefix") or root.get("exact"))
    if root.get("exact"):
        return bool(leaf.get("prefix")) or leaf.get("exact") != root.get("exact")
    if root.get("prefix"):
        if leaf.get("prefix"):
            return not str(leaf["prefix"]).startswith(str(root["prefix"]))
        if leaf.get("exact"):
            return not str(leaf["exact"]).startswith(str(root["prefix"]))
    return True


def _map(m: Mapping, key: str) -> Mapping:
    v = m.get(key)
    return v if isinstance(v, Mapping) else {}


def has_conflict(root: Mapping, leaf: Mapping) -> bool:
    for key in ("uri", "scheme", "method", "authority"):
        if root.get(key) is not None and leaf.get(key) is not None and _string_conflict(root[key], leaf[key]):
            return True
    for key in ("headers", "withoutHeaders", "queryParams"):
        r = _map(root, key)
        for k, v in _map(leaf, key).items():
            if k in r and _string_conflict(r[k], v):
                return True
    if bool(root.get("ignoreUriCase")) != bool(leaf.get("ignoreUriCase")):
        return True
    rp, lp = root.get("port") or 0, leaf.get("port") or 0
    if rp and lp and rp != lp:
        return True
    if root.get("sourceNamespace") and leaf.get("sourceNamespace") != root.get("sourceNamespace"):
        return True
    rl = _map(root, "sourceLabels")
    for k, v in _map(leaf, "sourceLabels").items():
        if k in rl and rl[k] != v:
            return True
    rg, lg = list(root.get("gateways") or []), list(leaf.get("gateways") or [])
    if rg and lg and not set(lg) <= set(rg):
        return True
    return False


def merge_match(root: Mapping, leaf: Mapping) -> dict:
    out = dict(leaf)
    if root.get("name"):
        out["name"] = f"{root['name']}-{leaf['name']}" if leaf.get("name") else root["name"]
    for key in ("uri", "scheme", "method", "authority"):
        if out.get(key) is None and root.get(key) is not None:
            out[key] = root[key]
    for key in ("headers", "withoutHeaders", "queryParams", "sourceLabels"):
        merged = {**_map(root, key), **_map(leaf, key)}
        if merged:
            out[key] = merged
    if not out.get("port") and root.get("port"):
        out["port"] = root["port"]
    if not out.get("sourceNamespace") and root.get("sourceNamespace"):
        out["sourceNamespace"] = root["sourceNamespace"]
    if not out.get("gateways") and root.get("gateways"):
        out["gateways"] = root["gateways"]
    if "ignoreUriCase" in root and "ignoreUriCase" not in out:
        out["ignoreUriCase"] = root["ignoreUriCase"]
    return out


def merge_matches(root: list, leaf: list) -> list | None:
    """The merged match list; None when a delegate match fits no root match."""
    if not root:
        return list(leaf)
    if not leaf:
        return list(root)
    out = []
    for sub in leaf:
        found = False
        for r in root:
            if has_conflict(r, sub):
                continue
            out.append(merge_match(r, sub))
            found = True
        if not found:
            return None
    return out or None


def resolve_gateway_name(ref: str, namespace: str) -> str:
    """A `gateways` entry as "namespace/name" (Istio's resolveGatewayName)."""
    ref = ref.strip()
    if ref == "mesh":
        return ref
    if "/" in ref:
        ns, _, name = ref.partition("/")
        return f"{namespace if ns == '.' else ns}/{name}"
    if "." in ref:  # legacy "name.namespace.svc.cluster.local"
        name, ns = ref.split(".")[:2]
        return f"{ns}/{name}"
    return f"{namespace}/{ref}"


def _resolved(rule: Mapping, namespace: str) -> dict:
    """A delegate rule with its short host names and gateway references made absolute
    (they belong to the delegate's namespace, not the root's)."""
    out = dict(rule)

    def dest(d: Any) -> Any:
        if isinstance(d, Mapping) and d.get("host"):
            return {**d, "host": resolve_host(str(d["host"]), namespace)}
        return d

    if isinstance(rule.get("route"), list):
        out["route"] = [{**r, "destination": dest(r.get("destination"))} if isinstance(r, Mapping) else r
                        for r in rule["route"]]
    if rule.get("mirror") is not None:
        out["mirror"] = dest(rule["mirror"])
    if isinstance(rule.get("mirrors"), list):
        out["mirrors"] = [{**m, "destination": dest(m.get("destination"))} if isinstance(m, Mapping) else m
                          for m in rule["mirrors"]]
    if isinstance(rule.get("match"), list):
        out["match"] = [
            {**m, "gateways": [resolve_gateway_name(str(g), namespace) for g in m["gateways"]]}
            if isinstance(m, Mapping) and isinstance(m.get("gateways"), list) else m
            for m in rule["match"]
        ]
    return out


def merge_route(root: Mapping, delegate: Mapping) -> dict | None:
    matches = merge_matches([m for m in root.get("match") or [] if isinstance(m, Mapping)],
                            [m for m in delegate.get("match") or [] if isinstance(m, Mapping)])
    if matches is None:
        return None
    out = dict(delegate)
    out.pop("delegate", None)
    if matches:
        out["match"] = matches
    if root.get("name"):
        out["name"] = f"{root['name']}-{delegate['name']}" if delegate.get("name") else root["name"]
    for key in _INHERITED:
        if out.get(key) is None and root.get(key) is not None:
            out[key] = root[key]
    return out


def resolve_delegates(virtual_services: Iterable[ConfigObject]) -> tuple[ConfigObject, ...]:
    """The VirtualServices in force: roots with their delegates merged in, delegates
    (VirtualServices without hosts) left out."""
    vss = list(virtual_services)
    delegates = {(vs.namespace, vs.name): vs for vs in vss if not vs.spec.get("hosts")}
    out = []
    for vs in vss:
        if (vs.namespace, vs.name) in delegates:
            continue
        rules = vs.spec.get("http") or []
        if not any(isinstance(r, Mapping) and r.get("delegate") for r in rules):
            out.append(vs)
            continue
        merged_rules: list = []
        generations = [vs.generation]
        for rule in rules:
            ref = rule.get("delegate") if isinstance(rule, Mapping) else None
            if not isinstance(ref, Mapping):
                merged_rules.append(rule)
                continue
            key = (str(ref.get("namespace") or vs.namespace), str(ref.get("name") or ""))
            target = delegates.get(key)
            if target is None or not _exported_to(target, vs.namespace):
                log.warning("delegate virtual service not found", virtual_service=f"{vs.namespace}/{vs.name}",
                            delegate=f"{key[0]}/{key[1]}",
                            reason="missing" if target is None else f"not exported to {vs.namespace}")
                continue  # istiod drops just this rule
            generations.append(target.generation)
            for sub in target.spec.get("http") or []:
                if not isinstance(sub, Mapping) or sub.get("delegate"):
                    continue  # one level of delegation only
                merged = merge_route(rule, _resolved(sub, target.namespace))
                if merged is not None:
                    merged_rules.append(merged)
        spec = {**vs.spec, "http": merged_rules}
        generation = hashlib.sha256("+".join(generations).encode()).hexdigest()[:16]
        out.append(dataclasses.replace(vs, spec=spec, generation=generation))
    return tuple(out)
