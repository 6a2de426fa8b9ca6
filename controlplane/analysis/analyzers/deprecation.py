"""Deprecated fields and kinds (Istio's pkg/config/analysis/analyzers/deprecation)."""
from __future__ import annotations

from typing import Any

from .. import messages as msg
from ..context import SIDECAR, VIRTUAL_SERVICE, Context

CRD = ("apiextensions.k8s.io", "CustomResourceDefinition")
# Istio CRDs removed from its charts (its analyzer's list).
REMOVED_CRDS = frozenset({("rbac.istio.io", "ClusterRbacConfig"), ("rbac.istio.io", "RbacConfig"),
                          ("rbac.istio.io", "ServiceRole"), ("rbac.istio.io", "ServiceRoleBinding")})


def _list(v: Any) -> list:
    return v if isinstance(v, list) else []


def _dict(v: Any) -> dict:
    return v if isinstance(v, dict) else {}


class FieldAnalyzer:
    """IST0002 for a VirtualService fault delay's `percent` (replaced by `percentage`), a
    Sidecar's outboundTrafficPolicy.egressProxy, and the removed rbac.istio.io CRDs."""

    name = "deprecation.DeprecationAnalyzer"
    description = "Checks for deprecated Istio types and fields"

    def analyze(self, ctx: Context) -> None:
        for r in ctx.for_each(VIRTUAL_SERVICE):
            for i, route in enumerate(_list(r.spec.get("http"))):
                delay = _dict(_dict(_dict(route).get("fault")).get("delay"))
                percent = delay.get("percent")
                if isinstance(percent, (int, float)) and not isinstance(percent, bool) and percent > 0:
                    ctx.report(msg.new(msg.DEPRECATED, r, "HTTPRoute.fault.delay.percent is deprecated; use "
                                       "HTTPRoute.fault.delay.percentage",
                                       line=r.line_of("spec", "http", i, "fault", "delay", "percent")))
        for r in ctx.for_each(SIDECAR):
            if _dict(r.spec.get("outboundTrafficPolicy")).get("egressProxy") is not None:
                # Istio's text says "ignored"; meshd's Sidecar scope does apply it (ALLOW_ANY).
                ctx.report(msg.new(msg.DEPRECATED, r, "OutboundTrafficPolicy.EgressProxy is deprecated (meshd "
                                   "still applies it in ALLOW_ANY mode)",
                                   line=r.line_of("spec", "outboundTrafficPolicy", "egressProxy")))
        for r in ctx.for_each(CRD):
            group = str(r.spec.get("group") or "")
            kind = str(_dict(r.spec.get("names")).get("kind") or "")
            if (group, kind) in REMOVED_CRDS:
                ctx.report(msg.new(msg.DEPRECATED, r, f"Custom resource type {group} {kind} is removed"))


__all__ = ["FieldAnalyzer"]
