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
covering H. `exportTo`: `*` is every namespace, `.` the rule's own, `~` none; absent, the
mesh config's `defaultDestinationRuleExportTo` (`*` unless set).

Rules with a `workloadSelector` (istiod's sidecar scope, read not copied) apply only to
the proxies of their own namespace whose labels include the selector's; they are never
exported. For such a proxy, among the rules of its namespace for a host, the oldest
selector rule that selects it wins, merged the same way with the other selector rules
of an equal selector and then with the namespace's selector-less rules (they supply
subsets and a `trafficPolicy` only where the selector rules have none). Two selector
rules with different selectors never merge. A proxy that no selector rule selects does
not see them at all: it gets the selector-less rules of its namespace, else the lookup
goes on to the service's namespace and the root namespace. (istiod stops at the client
namespace there and applies no rule; its issues #52691 and #57719 call that a bug.)
"""
from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from ..config.objects import ConfigObject
from ..config.types import DestinationRule
from ..names import resolve_host
from .hosts import covers


def rule_host(dr: ConfigObject) -> str:
    return resolve_host(dr.typed.host, dr.namespace).lower()


def _age(obj: ConfigObject) -> tuple[bool, str, str]:
    created = str(obj.extra.get("creationTimestamp") or "") if obj.extra else ""
    return (created == "", created, obj.name)


Selector = tuple[tuple[str, str], ...]


def selector_of(obj: ConfigObject) -> Selector | None:
    """The rule's `workloadSelector.matchLabels` as sorted pairs; None without a selector
    (an empty selector selects every workload of the namespace, as in istiod)."""
    labels = obj.typed.workload_selector
    return None if labels is None else tuple(sorted(labels.items()))


def selects(selector: Selector, labels: Mapping[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector)


def export_list(obj: ConfigObject) -> tuple[str, ...]:
    rule: DestinationRule = obj.typed
    return rule.export_to


def exported_to(export: tuple[str, ...], owner_namespace: str, client_namespace: str) -> bool:
    if not export or "*" in export:
        return True
    if "~" in export:
        return False
    return client_namespace in export or ("." in export and owner_namespace == client_namespace)


@dataclass(frozen=True)
class MergedRule:
    # The oldest rule, its typed reading merged from all (`spec` stays its own document).
    rule: ConfigObject
    export: tuple[str, ...]
    sources: tuple[str, ...]  # "ns/name" of every merged rule, oldest first
    selector: Selector | None = None  # the proxies of the rule's namespace it applies to


def merge_rules(rules: list[ConfigObject], ordered: bool = False) -> MergedRule:
    """Rules of one namespace for one host, merged the way istiod merges them (oldest
    first, unless `ordered`: then in the given order)."""
    rules = list(rules) if ordered else sorted(rules, key=_age)
    base = rules[0]
    if len(rules) == 1:
        return MergedRule(base, export_list(base), (f"{base.namespace}/{base.name}",))
    first: DestinationRule = base.typed
    subsets = list(first.subsets)
    names = {s.name for s in subsets}
    policy = first.traffic_policy
    export = export_list(base)
    for other in rules[1:]:
        typed: DestinationRule = other.typed
        for s in typed.subsets:
            if s.name not in names:
                names.add(s.name)
                subsets.append(s)
        if policy is None:
            policy = typed.traffic_policy
        if not export and export_list(other):
            export = export_list(other)
    generation = hashlib.sha256("+".join(r.generation for r in rules).encode()).hexdigest()[:16]
    merged = base.derived(dataclasses.replace(first, subsets=tuple(subsets), traffic_policy=policy),
                          generation=generation)
    return MergedRule(merged, export, tuple(f"{r.namespace}/{r.name}" for r in rules))


def _merge_selected(rules: list[ConfigObject], plain: list[ConfigObject]) -> list[MergedRule]:
    """One entry per distinct selector (oldest first): its rules, oldest first, then the
    selector-less rules of the namespace merged in after them."""
    groups: dict[Selector, list[ConfigObject]] = {}
    for dr in sorted(rules, key=_age):
        groups.setdefault(selector_of(dr) or (), []).append(dr)
    tail = sorted(plain, key=_age)
    out = []
    for sel, members in groups.items():
        m = merge_rules(members + tail, ordered=True)
        out.append(dataclasses.replace(m, export=(".",), selector=sel))
    return out


class DestinationRuleIndex:
    """Merged rules by namespace and host, and the lookup order above."""

    def __init__(self, rules: Iterable[ConfigObject], root_namespace: str, default_export: tuple[str, ...] = ("*",)):
        self.root_namespace = root_namespace
        # Who sees a rule without `exportTo` (the mesh config's defaultDestinationRuleExportTo).
        self.default_export = default_export
        grouped: dict[str, dict[str, list[ConfigObject]]] = {}
        selected: dict[str, dict[str, list[ConfigObject]]] = {}
        for dr in rules:
            into = grouped if selector_of(dr) is None else selected
            into.setdefault(dr.namespace, {}).setdefault(rule_host(dr), []).append(dr)
        self._by_ns: dict[str, dict[str, MergedRule]] = {
            ns: {host: merge_rules(rs) for host, rs in hosts.items()} for ns, hosts in grouped.items()
        }
        # Selector rules by namespace and host, each entry already merged with the
        # namespace's selector-less rules for the host; in precedence order.
        self._selected: dict[str, dict[str, list[MergedRule]]] = {
            ns: {host: _merge_selected(rs, grouped.get(ns, {}).get(host, [])) for host, rs in hosts.items()}
            for ns, hosts in selected.items()
        }
        # The distinct selectors of each namespace (what a proxy's cluster cache keys on).
        self._selectors: dict[str, tuple[Selector, ...]] = {
            ns: tuple(sorted({m.selector for ms in hosts.values() for m in ms if m.selector is not None}))
            for ns, hosts in self._selected.items()
        }
        # Wildcard hosts per namespace: scanned only for hosts without an exact rule.
        self._wildcards: dict[str, tuple[str, ...]] = {
            ns: tuple(sorted((h for h in set(self._by_ns.get(ns, {})) | set(self._selected.get(ns, {}))
                              if h.startswith("*")), key=len, reverse=True))
            for ns in set(self._by_ns) | set(self._selected)
        }

    def __bool__(self) -> bool:
        return bool(self._by_ns) or bool(self._selected)

    def selectors_matching(self, namespace: str, labels: Mapping[str, str] | None) -> tuple[Selector, ...]:
        """The selectors of `namespace`'s selector rules that select a proxy with `labels`:
        all that its rule lookups depend on beyond its namespace (empty for most proxies)."""
        if labels is None:
            return ()
        return tuple(s for s in self._selectors.get(namespace, ()) if selects(s, labels))

    def _for_host(self, namespace: str, host: str, client_namespace: str,
                  labels: Mapping[str, str] | None) -> MergedRule | None:
        if labels is not None and namespace == client_namespace:
            for m in self._selected.get(namespace, {}).get(host, ()):
                if m.selector is not None and selects(m.selector, labels):
                    return m
        rule = self._by_ns.get(namespace, {}).get(host)
        if rule is not None and exported_to(rule.export or self.default_export, namespace, client_namespace):
            return rule
        return None

    def _best(self, namespace: str, host: str, client_namespace: str,
              labels: Mapping[str, str] | None = None) -> MergedRule | None:
        got = self._for_host(namespace, host, client_namespace, labels)
        if got is not None:
            return got
        for wildcard in self._wildcards.get(namespace, ()):
            if covers(wildcard, host):
                got = self._for_host(namespace, wildcard, client_namespace, labels)
                if got is not None:
                    return got
        return None

    def lookup(self, host: str, client_namespace: str, service_namespace: str | None,
               labels: Mapping[str, str] | None = None) -> MergedRule | None:
        """The rule for `host` seen by a proxy of `client_namespace` with `labels` (None:
        a proxy no selector rule selects)."""
        host = host.lower()
        order = [client_namespace]
        if service_namespace and service_namespace not in order:
            order.append(service_namespace)
        if self.root_namespace not in order:
            order.append(self.root_namespace)
        for ns in order:
            got = self._best(ns, host, client_namespace, labels)
            if got is not None:
                return got
        return None
