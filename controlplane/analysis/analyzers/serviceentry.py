"""ServiceEntry analyzers (Istio's pkg/config/analysis/analyzers/serviceentry), and
meshd's check that a ServiceEntry's workloadSelector selects something."""
from __future__ import annotations

from typing import Any

from .. import messages as msg
from ..context import SERVICE, SERVICE_ENTRY, Context
from ..resources import Resource
from ..util import EXPORT_ALL, EXPORT_LOCAL, export_to_all
from .registry import service_fqdn
from .workloads import report_unmatched, workloads_of


def _list(v: Any) -> list:
    return v if isinstance(v, list) else []


def _dict(v: Any) -> dict:
    return v if isinstance(v, dict) else {}


class ProtocolAddressesAnalyzer:
    """IST0134: a TCP port (or one without protocol) of a ServiceEntry without addresses
    gets an outbound listener on 0.0.0.0:<port>, which takes that port's traffic to every
    host. Istio skips the check when the mesh config turns on the agent's DNS
    auto-allocation or istiod allocated addresses (status.addresses); meshd has neither
    (no DNS proxy, no allocator, status ignored), so the warning stands for meshd."""

    name = "serviceentry.Analyzer"
    description = "Checks the validity of ServiceEntry"

    def analyze(self, ctx: Context) -> None:
        for r in ctx.for_each(SERVICE_ENTRY):
            if _list(r.spec.get("addresses")):
                continue
            for i, port in enumerate(_list(r.spec.get("ports"))):
                protocol = str(_dict(port).get("protocol") or "")
                if protocol == "" or protocol.upper() == "TCP":
                    ctx.report(msg.new(msg.SERVICE_ENTRY_ADDRESSES_REQUIRED, r, line=r.line_of("spec", "ports", i)))


def export_scopes(export_to: list[str], namespace: str) -> set[str]:
    """The namespaces an object is visible in: {"*"} for everyone, "." is its own."""
    if export_to_all(export_to):
        return {EXPORT_ALL}
    return {namespace if e == EXPORT_LOCAL else e for e in export_to}


class ConflictingServiceEntryProtocolAnalyzer:
    """IST0177: ServiceEntries visible in one namespace give one host and port different
    protocols; the proxy can build only one listener/cluster for it."""

    name = "serviceentry.ConflictingServiceEntryProtocolAnalyzer"
    description = "Checks if multiple ServiceEntries define the same host and port with different protocols"

    def analyze(self, ctx: Context) -> None:
        index: dict[tuple[str, str, int], list[tuple[str, Resource]]] = {}
        for r in ctx.for_each(SERVICE_ENTRY):
            export_to = [str(e) for e in _list(r.spec.get("exportTo"))]
            for scope in export_scopes(export_to, r.namespace):
                for h in _list(r.spec.get("hosts")):
                    for p in _list(r.spec.get("ports")):
                        p = _dict(p)
                        number = p.get("number")
                        if not isinstance(number, int) or isinstance(number, bool):
                            continue  # a schema error (IST0106), not a port to compare
                        key = (scope, str(h), number)
                        index.setdefault(key, []).append((str(p.get("protocol") or ""), r))
        reported: set[str] = set()
        for key in sorted(index):
            scope, host, port = key
            entries = list(index[key])
            if scope != EXPORT_ALL:  # what every namespace sees is seen in this one too
                entries += index.get((EXPORT_ALL, host, port), [])
            protocols = sorted({p.upper() for p, _ in entries})
            if len(protocols) < 2:
                continue
            names = ", ".join(sorted({r.full_name for _, r in entries}))
            for _, r in entries:
                if r.full_name in reported:
                    continue
                reported.add(r.full_name)
                ctx.report(msg.new(msg.CONFLICTING_SERVICE_ENTRY_PROTOCOL, r, names, host, port, ", ".join(protocols),
                                   line=r.line_of("metadata", "name")))


class WorkloadSelectorAnalyzer:
    """meshd's own (Istio has no such check): a ServiceEntry whose workloadSelector
    matches no Pod or WorkloadEntry of its namespace has no endpoints, so requests to its
    hosts fail (503, no healthy upstream). Istio's IST0127 wording."""

    name = "serviceentry.WorkloadSelectorAnalyzer"
    description = "Checks that a ServiceEntry's workloadSelector selects a Pod or WorkloadEntry of its namespace"

    def analyze(self, ctx: Context) -> None:
        workloads = workloads_of(ctx)
        for r in ctx.for_each(SERVICE_ENTRY):
            raw = _dict(_dict(r.spec.get("workloadSelector")).get("labels"))
            report_unmatched(ctx, workloads, r, {str(k): str(v) for k, v in raw.items()},
                             r.line_of("spec", "workloadSelector", "labels"))


class HostConflictAnalyzer:
    """meshd's own: meshd keeps one Service per host (model/mesh.py), as istiod's push
    context does across registries: a Kubernetes Service wins over a ServiceEntry host, an
    older ServiceEntry (creationTimestamp, then namespace and name) over a newer one.
    The host of the losing ServiceEntry is not served from it (istiod would merge the
    ports of two ServiceEntries; meshd does not)."""

    name = "serviceentry.HostConflictAnalyzer"
    description = "Reports ServiceEntry hosts meshd does not serve because a Service or an older ServiceEntry has them"

    def analyze(self, ctx: Context) -> None:
        kube = {service_fqdn(r): r for r in ctx.for_each(SERVICE) if not r.assumed}
        held: dict[str, Resource] = {}
        entries = sorted(ctx.all(SERVICE_ENTRY),
                         key=lambda r: (str(r.metadata.get("creationTimestamp") or ""), r.namespace, r.name))
        for r in entries:
            for i, h in enumerate(_list(r.spec.get("hosts"))):
                host = str(h)
                holder, why = kube.get(host), "a Kubernetes Service wins"
                if holder is None:
                    holder, why = held.get(host), "the older one wins"
                if holder is None:
                    held[host] = r
                elif (holder.kind, holder.full_name) != (r.kind, r.full_name):  # not the same object twice
                    ctx.report(msg.new(msg.SERVICE_HOST_CONFLICT, r, host, holder.kind, holder.full_name, why,
                                       line=r.line_of("spec", "hosts", i)))


__all__ = ["HostConflictAnalyzer", "ConflictingServiceEntryProtocolAnalyzer", "ProtocolAddressesAnalyzer", "WorkloadSelectorAnalyzer",
           "export_scopes"]
