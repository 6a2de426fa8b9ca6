"""meshd's own analyzer: objects of kinds meshd does not serve.

Istio has no such message (istiod serves every Istio kind); meshd must say so, or an
operator moving from istiod believes config is in force that is not. The kinds and the
reasons come from config/kinds.py, so `analyze` says what the server logs, counts
(`meshd_config_unsupported`) and lists in /debug/configz.
"""
from __future__ import annotations

from ...config import kinds
from .. import messages as msg
from ..context import Context
from ..resources import Resource


def unsupported_message(resource: Resource, reason: str) -> msg.Message:
    """An error for a security kind (its access control is not enforced), else a warning."""
    security = kinds.is_security_group(kinds.split_api_version(resource.api_version)[0])
    return msg.new(msg.UNSUPPORTED_SECURITY_KIND if security else msg.UNSUPPORTED_KIND, resource, reason)


class UnsupportedKindAnalyzer:
    name = "meshd.UnsupportedKindAnalyzer"
    description = "Reports objects of kinds meshd does not serve (no effect; an error for security kinds)"

    def analyze(self, ctx: Context) -> None:
        for r in sorted(ctx.all_resources(), key=lambda r: (r.api_version, r.kind, r.namespace, r.name)):
            reason = kinds.unsupported_reason(r.group, r.kind)
            if reason is not None:
                ctx.report(unsupported_message(r, reason))


__all__ = ["UnsupportedKindAnalyzer", "unsupported_message"]
