"""DestinationRule, typed: the host it is for, who sees it (`exportTo`, `workloadSelector`),
its subsets and traffic policies. Which rule applies to a proxy, and how several rules
for one host merge, is the model's business (model/destination_rules.py)."""
from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from .common import each, labels, mapping, optional, text
from .trafficpolicy import NO_POLICY, TrafficPolicy, traffic_policy


@dataclass(frozen=True, slots=True)
class Subset:
    name: str = ""
    labels: Mapping[str, str] = field(default_factory=dict)
    traffic_policy: TrafficPolicy | None = None


@dataclass(frozen=True, slots=True)
class DestinationRule:
    host: str = ""  # as written (a short name resolves in the rule's namespace)
    traffic_policy: TrafficPolicy | None = None
    subsets: tuple[Subset, ...] = ()
    export_to: tuple[str, ...] = ()
    # `workloadSelector.matchLabels`; None without a selector (an empty one selects every
    # workload of the namespace, as in istiod).
    workload_selector: Mapping[str, str] | None = None

    def subset(self, name: str) -> Subset | None:
        for s in self.subsets:
            if s.name == name:
                return s
        return None

    def policies(self) -> Iterator[tuple[str, TrafficPolicy]]:
        """Every traffic policy the rule writes, as written (not layered), with where it is:
        "" for the top level, "subset=<name>" for a subset's. What a cache key needs to
        know of the rule's policies (generators/dependencies.py) reads them here."""
        if self.traffic_policy is not None:
            yield "", self.traffic_policy
        for s in self.subsets:
            if s.traffic_policy is not None:
                yield f"subset={s.name}", s.traffic_policy

    def policy_for(self, port: int, subset: str = "") -> TrafficPolicy:
        """The traffic policy of `port` (and `subset`) of the rule's host, layered as Istio
        layers it (trafficpolicy.py)."""
        policy = self.traffic_policy.over(NO_POLICY, port) if self.traffic_policy is not None else NO_POLICY
        if subset:
            sub = self.subset(subset)
            if sub is not None and sub.traffic_policy is not None:
                policy = sub.traffic_policy.over(policy, port)
        return policy


def _subset(raw: Mapping[str, Any]) -> Subset:
    return Subset(text(raw.get("name")), labels(raw.get("labels")), optional(raw.get("trafficPolicy"), traffic_policy))


def destination_rule(spec: Mapping[str, Any]) -> DestinationRule:
    selector = spec.get("workloadSelector")
    export = spec.get("exportTo")
    return DestinationRule(
        host=text(spec.get("host")),
        traffic_policy=optional(spec.get("trafficPolicy"), traffic_policy),
        subsets=each(spec.get("subsets"), _subset),
        export_to=tuple(str(e) for e in export) if isinstance(export, list) else (),
        workload_selector=labels(mapping(selector).get("matchLabels")) if isinstance(selector, Mapping) else None,
    )
