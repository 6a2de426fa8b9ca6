"""Which DestinationRule applies to a host, for a client in a namespace (istiod's
PushContext.destinationRule and mergeDestinationRule, read not copied).

Per namespace, the rules for one host (after short-name resolution) are merged, oldest
first: the first rule is the base; later rules add the subsets whose names are new (a
repeated subset name is ignored) and supply the top-level `trafficPolicy` and the
`exportTo` only when the rules before them had none.

Lookup for a client in namespace C and a service host H in namespace S:
1. the merged rules of C visible in C (its own rules, unless exported away from it);
2. else the merged rules of S exported to C;
3. else the merged rules of the root namespace exported to C.
Within a namespace the most specific host wins: H itself, else the longest wildcard
covering H. `exportTo`: absent or `*` is every namespace, `.` the rule's own, `~` none.

Rules with a `workloadSelector` are merged like the others (meshd does not scope them to
the selected workloads yet: see README, deviations).
"""
from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

from ..config.objects import ConfigObject
from ..names import resolve_host
from .hosts import covers


def rule_host(dr: ConfigObject) -> str:
    return resolve_host(str(dr.spec.get("host") or ""), dr.namespace).lower()


def _age(obj: ConfigObject) -> tuple:
    created = str(obj.extra.get("creationTimestamp") or "") if obj.extra else ""
    return (created == "", created, obj.name)


def export_list(obj: ConfigObject) -> tuple[str, ...]:
    raw = obj.spec.get("exportTo")
    return tuple(str(e) for e in raw) if isinstance(raw, list) else ()


def exported_to(export: tuple[str, ...], owner_namespace: str, client_namespace: str) -> bool:
    if not export or "*" in export:
        return True
    if "~" in export:
        return False
    return client_namespace in export or ("." in export and owner_namespace == client_namespace)


@dataclass(frozen=True)
class MergedRule:
    rule: ConfigObject  # a ConfigObject with the merged spec (name/namespace of the oldest rule)
    export: tuple[str, ...]
    sources: tuple[str, ...]  # "ns/name" of every merged rule, oldest first


def merge_rules(rules: list[ConfigObject]) -> MergedRule:
    """Rules of one namespace for one host, merged the way istiod merges them."""
    rules = sorted(rules, key=_age)
    base = rules[0]
    if len(rules) == 1:
        return MergedRule(base, export_list(base), (f"{base.namespace}/{base.name}",))
    spec: dict[str, Any] = dict(base.spec)
    subsets = [s for s in (spec.get("subsets") or []) if isinstance(s, Mapping)]
    names = {s.get("name") for s in subsets}
    export = export_list(base)
    for other in rules[1:]:
        for s in other.spec.get("subsets") or []:
            if isinstance(s, Mapping) and s.get("name") not in names:
                names.add(s.get("name"))
                subsets.append(s)
        if spec.get("trafficPolicy") is None and other.spec.get("trafficPolicy") is not None:
            spec["trafficPolicy"] = other.spec["trafficPolicy"]
        if not export and export_list(other):
            export = export_list(other)
    if subsets:
        spec["subsets"] = subsets
    generation = hashlib.sha256("+".join(r.generation for r in rules).encode()).hexdigest()[:16]
    merged = dataclasses.replace(base, spec=spec, generation=generation)
    return MergedRule(merged, export, tuple(f"{r.namespace}/{r.name}" for r in rules))


class DestinationRuleIndex:
    """Merged rules by namespace and host, and the lookup order above."""

    def __init__(self, rules: Iterable[ConfigObject], root_namespace: str):
        self.root_namespace = root_namespace
        grouped: dict[str, dict[str, list[ConfigObject]]] = {}
        for dr in rules:
            grouped.setdefault(dr.namespace, {}).setdefault(rule_host(dr), []).append(dr)
        self._by_ns: dict[str, dict[str, MergedRule]] = {
            ns: {host: merge_rules(rs) for host, rs in hosts.items()} for ns, hosts in grouped.items()
        }
        # Wildcard hosts per namespace: scanned only for hosts without an exact rule.
        self._wildcards: dict[str, tuple[str, ...]] = {
            ns: tuple(sorted((h for h in hosts if h.startswith("*")), key=len, reverse=True))
            for ns, hosts in self._by_ns.items()
        }

    def __bool__(self) -> bool:
        return bool(self._by_ns)

    def _best(self, namespace: str, host: str, client_namespace: str) -> MergedRule | None:
        rules = self._by_ns.get(namespace)
        if not rules:
            return None
        exact = rules.get(host)
        if exact is not None and exported_to(exact.export, namespace, client_namespace):
            return exact
        for wildcard in self._wildcards.get(namespace, ()):
            if covers(wildcard, host):
                m = rules[wildcard]
                if exported_to(m.export, namespace, client_namespace):
                    return m
        return None

    def lookup(self, host: str, client_namespace: str, service_namespace: str | None) -> MergedRule | None:
        host = host.lower()
        order = [client_namespace]
        if service_namespace and service_namespace not in order:
            order.append(service_namespace)
        if self.root_namespace not in order:
            order.append(self.root_namespace)
        for ns in order:
            got = self._best(ns, host, client_namespace)
            if got is not None:
                return got
        return None
