"""DestinationRule hosts and subsets against the registry (Istio's
pkg/config/analysis/analyzers/destinationrule/subset.go).

A subset is the endpoints of the host's Service or ServiceEntry whose labels carry the
subset's labels; meshd's endpoint labels are the Pod's (or WorkloadEntry's, or a
ServiceEntry endpoint's) own. Unlike istiod, meshd does not add the Node's topology
labels to them, so a subset selecting `topology.kubernetes.io/region` selects only
workloads that carry the label themselves, and is reported when none does.
"""
from __future__ import annotations

from typing import Any

from .. import messages as msg
from ..context import DESTINATION_RULE, SERVICE, Context
from ..resources import Resource
from ..util import EXPORT_ALL, EXPORT_LOCAL, host_matches, selector_matches, to_fqdn
from .registry import HostDefinition, host_definitions
from .workloads import workloads_of


def _list(v: Any) -> list:
    return v if isinstance(v, list) else []


def _dict(v: Any) -> dict:
    return v if isinstance(v, dict) else {}


def _labels(v: Any) -> dict[str, str]:
    return {str(k): str(x) for k, x in _dict(v).items()}


def _subset_selects(d: HostDefinition, labels: dict[str, str], workloads: list[Resource]) -> bool:
    """Whether the Service or ServiceEntry `d` has an endpoint with `labels`."""
    r = d.resource
    if (r.group, r.kind) == SERVICE:
        wanted = {**_labels(r.spec.get("selector")), **labels}
        return any(w.namespace == r.namespace and selector_matches(wanted, w.labels) for w in workloads)
    selector = _labels(_dict(r.spec.get("workloadSelector")).get("labels"))
    if selector:
        wanted = {**selector, **labels}
        return any(w.namespace == r.namespace and selector_matches(wanted, w.labels) for w in workloads)
    endpoints = [_dict(e) for e in _list(r.spec.get("endpoints"))]
    if endpoints:
        return any(selector_matches(labels, _labels(e.get("labels"))) for e in endpoints)
    return True  # the host itself, resolved by DNS: nothing for labels to select


class SubsetSelectPodAnalyzer:
    """IST0174 for a host no visible Service or ServiceEntry has (a wildcard host is known
    when it covers one), IST0173 for a subset no endpoint of the host carries the labels of."""

    name = "destinationrule.SubsetSelectPodAnalyzer"
    description = "Checks if pods are selected by subsets in destination rules."

    def analyze(self, ctx: Context) -> None:
        defs = [d for d in host_definitions(ctx) if d.resource.kind != "VirtualService"]
        workloads = workloads_of(ctx)
        for r in ctx.for_each(DESTINATION_RULE):
            host = str(r.spec.get("host") or "")
            if not host:
                continue  # a schema error (IST0106)
            fqdn = to_fqdn(r.namespace, host)
            export = [str(e) for e in _list(r.spec.get("exportTo"))]
            scopes = [r.namespace] if not export else [r.namespace if e == EXPORT_LOCAL else e for e in export]
            backing = [d for d in defs if host_matches(fqdn, d.host) and (
                EXPORT_ALL in d.export_to or any(s != EXPORT_ALL and d.visible_to(s) for s in scopes))]
            if not backing:
                ctx.report(msg.new(msg.UNKNOWN_DESTINATION_RULE_HOST, r, host, line=r.line_of("spec", "host")))
                continue
            if fqdn.startswith("*"):
                continue  # subsets of a wildcard rule are the hosts' own business
            for i, subset in enumerate(_list(r.spec.get("subsets"))):
                subset = _dict(subset)
                labels = _labels(subset.get("labels"))
                if not any(_subset_selects(d, labels, workloads) for d in backing):
                    ctx.report(msg.new(msg.DESTINATION_RULE_SUBSET_NOT_SELECT_PODS, r, str(subset.get("name") or ""),
                                       line=r.line_of("spec", "subsets", i, "name")))


__all__ = ["SubsetSelectPodAnalyzer"]
