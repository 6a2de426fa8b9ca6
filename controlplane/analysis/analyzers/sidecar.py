"""Sidecar analyzers (Istio's pkg/config/analysis/analyzers/sidecar).

A proxy takes the one Sidecar whose workloadSelector selects it, else its namespace's
Sidecar without a selector; two candidates at either level leave the choice undefined.
"""
from __future__ import annotations

from typing import Any

from ...config.types.peerauthentication import peer_authentication
from ...config.types.sidecar import sidecar
from ...model.sidecar_problems import ingress_tls_problems
from .. import messages as msg
from ..context import NAMESPACE, PEER_AUTHENTICATION, SIDECAR, Context
from ..resources import Resource
from ..util import EXPORT_ALL, EXPORT_LOCAL, host_matches, selector_matches, selector_string
from .registry import EXPORT_NONE, host_definitions
from .workloads import workloads_of

AMBIENT_REDIRECTION = "ambient.istio.io/redirection"
DATAPLANE_MODE = "istio.io/dataplane-mode"
INJECTION_LABEL = "istio-injection"
REVISION_LABEL = "istio.io/rev"


def _list(v: Any) -> list:
    return v if isinstance(v, list) else []


def _dict(v: Any) -> dict:
    return v if isinstance(v, dict) else {}


def selector_labels(r: Resource) -> dict[str, str]:
    """spec.workloadSelector.labels; empty when absent (a namespace-wide Sidecar)."""
    labels = _dict(_dict(r.spec.get("workloadSelector")).get("labels"))
    return {str(k): str(v) for k, v in labels.items()}


def workload_in_ambient_mode(w: Resource) -> bool:
    return w.annotations.get(AMBIENT_REDIRECTION) == "enabled"


def namespace_in_ambient_mode(ns: Resource | None) -> bool:
    """An injection label or a revision wins over the ambient data-plane label."""
    if ns is None:
        return False
    if ns.labels.get(INJECTION_LABEL) == "enabled" or ns.labels.get(REVISION_LABEL):
        return False
    return ns.labels.get(DATAPLANE_MODE) == "ambient"


class SelectorAnalyzer:
    """IST0101 for a selector matching no workload of the Sidecar's namespace, IST0110 for
    two Sidecars selecting one workload, IST0111 for two Sidecars without a selector in a
    namespace, IST0167 when the workloads or the namespace are in ambient mode (no sidecar
    to configure). meshd counts WorkloadEntries as workloads too: a VM proxy takes its
    Sidecar by the same selector (Istio's analyzer looks at Pods only)."""

    name = "sidecar.SelectorAnalyzer"
    description = ("Validates that sidecars that define a workload selector match at least one pod, and that there "
                   "aren't multiple sidecar resources that select overlapping pods")

    def analyze(self, ctx: Context) -> None:
        workloads = workloads_of(ctx)
        by_workload: dict[tuple[str, str, str], list[Resource]] = {}  # (ns, name, kind) -> Sidecars
        workload_of: dict[tuple[str, str, str], Resource] = {}
        namespace_wide: dict[str, list[Resource]] = {}
        for r in ctx.for_each(SIDECAR):
            labels = selector_labels(r)
            if not labels:
                namespace_wide.setdefault(r.namespace, []).append(r)
                continue
            found = False
            for w in workloads:
                if w.namespace == r.namespace and selector_matches(labels, w.labels):
                    found = True
                    key = (w.namespace, w.name, w.kind)
                    by_workload.setdefault(key, []).append(r)
                    workload_of[key] = w
            if not found:
                ctx.report(msg.new(msg.REFERENCED_RESOURCE_NOT_FOUND, r, "selector", selector_string(labels),
                                   line=r.line_of("spec", "workloadSelector", "labels", sorted(labels)[0])))
        reported: set[str] = set()
        for (ns, name, kind), sidecars in sorted(by_workload.items()):
            ambient = workload_in_ambient_mode(workload_of[(ns, name, kind)])
            if len(sidecars) == 1 and not ambient:
                continue
            names = [s.name for s in sidecars]
            for s in sidecars:
                if ambient:
                    if s.full_name not in reported:
                        reported.add(s.full_name)
                        ctx.report(msg.new(msg.INEFFECTIVE_POLICY, s,
                                           "selected workload is in ambient mode, the policy has no impact"))
                    continue
                ctx.report(msg.new(msg.CONFLICTING_SIDECAR_WORKLOAD_SELECTORS, s, names, ns, name,
                                   line=s.line_of("metadata", "name")))
        for ns, sidecars in sorted(namespace_wide.items()):
            if namespace_in_ambient_mode(ctx.find(NAMESPACE, "", ns)):
                for s in sidecars:
                    if s.full_name not in reported:
                        reported.add(s.full_name)
                        ctx.report(msg.new(msg.INEFFECTIVE_POLICY, s,
                                           "namespace is in ambient mode, the policy has no impact"))
                continue
            if len(sidecars) > 1:
                names = [s.name for s in sidecars]
                for s in sidecars:
                    ctx.report(msg.new(msg.MULTIPLE_SIDECARS_WITHOUT_SELECTORS, s, names, ns))


class EgressHostAnalyzer:
    """meshd's own: an egress host `ns/name` (no wildcard in the name) that no Service,
    ServiceEntry or mesh VirtualService of that namespace, exported to the Sidecar's,
    defines. The proxies it applies to get nothing for it (istiod accepts it silently),
    typically a short name (`ns/reviews`: egress hosts are matched as written) or a
    host the owner does not export."""

    name = "sidecar.EgressHostAnalyzer"
    description = "Checks that each Sidecar egress host names a host visible to the Sidecar's namespace"

    def analyze(self, ctx: Context) -> None:
        defs = host_definitions(ctx)
        for r in ctx.for_each(SIDECAR):
            for i, egress in enumerate(_list(r.spec.get("egress"))):
                for j, entry in enumerate(_list(_dict(egress).get("hosts"))):
                    ns, _, host = str(entry).partition("/")
                    if not host or ns == EXPORT_NONE or "*" in host:
                        continue
                    ns = r.namespace if ns == EXPORT_LOCAL else ns
                    if any((ns == EXPORT_ALL or d.resource.namespace == ns) and d.visible_to(r.namespace)
                           and host_matches(d.host, host) for d in defs):
                        continue
                    ctx.report(msg.new(msg.SIDECAR_EGRESS_HOST_NOT_FOUND, r, str(entry), r.namespace,
                                       line=r.line_of("spec", "egress", i, "hosts", j)))


class IngressTLSAnalyzer:
    """meshd's own: an ingress listener's `tls` on a port no PeerAuthentication that can
    select the Sidecar's workloads turns mTLS off on: istiod terminates it only where the
    port's mode is DISABLE, so it does nothing (the rows of /debug/configz
    `sidecarProblems`, model/sidecar_problems.py)."""

    name = "sidecar.IngressTLSAnalyzer"
    description = "Checks that each Sidecar ingress tls is on a port whose mTLS is DISABLE"

    def analyze(self, ctx: Context) -> None:
        resources = {(r.namespace, r.name): r for r in ctx.for_each(SIDECAR) if isinstance(r.spec, dict)}
        policies = [(r.namespace, peer_authentication(r.spec)) for r in ctx.for_each(PEER_AUTHENTICATION)
                    if isinstance(r.spec, dict)]
        found = ingress_tls_problems(((ns, name, sidecar(r.spec)) for (ns, name), r in resources.items()),
                                     policies, ctx.mesh_config.root_namespace)
        for p in found:
            r = resources[(p.namespace, p.name)]
            i = int(p.field.split("[", 1)[1].split("]", 1)[0])
            ctx.report(msg.new(msg.SIDECAR_INGRESS_TLS_NOT_USED, r, p.message(), line=r.line_of("spec", "ingress", i, "tls")))


__all__ = ["EgressHostAnalyzer", "IngressTLSAnalyzer", "SelectorAnalyzer", "selector_labels"]
