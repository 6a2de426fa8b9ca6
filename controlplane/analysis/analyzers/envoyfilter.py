"""EnvoyFilter patches (Istio's pkg/config/analysis/analyzers/envoyfilter): operations
that istiod ignores for their applyTo, and relative operations without a priority, whose
outcome depends on the order EnvoyFilters happen to be applied in."""
from __future__ import annotations

from typing import Any

from .. import messages as msg
from ..context import ISTIO_NET, Context

ENVOY_FILTER = (ISTIO_NET, "EnvoyFilter")
# Istio's codes and wording (messages.py).
RELATIVE, RELATIVE_WITH_VERSION = msg.ENVOY_FILTER_RELATIVE, msg.ENVOY_FILTER_RELATIVE_WITH_VERSION
ADD, REMOVE, REPLACE = msg.ENVOY_FILTER_ADD, msg.ENVOY_FILTER_REMOVE, msg.ENVOY_FILTER_REPLACE
_ROUTES = ("ROUTE_CONFIGURATION", "HTTP_ROUTE")
# Istio's analyzer (the version of the corpus) also takes REPLACE of a VIRTUAL_HOST.
_REPLACEABLE = ("NETWORK_FILTER", "HTTP_FILTER", "VIRTUAL_HOST")


def _dict(v: Any) -> dict:
    return v if isinstance(v, dict) else {}


class EnvoyPatchAnalyzer:
    name = "envoyfilter.EnvoyPatchAnalyzer"
    description = "Checks an envoyFilters "

    def analyze(self, ctx: Context) -> None:
        # Names of what patches with a proxyVersion match touch, across EnvoyFilters in order.
        versioned: list[str] = []
        for r in ctx.for_each(ENVOY_FILTER):
            priority = r.spec.get("priority") or 0
            patches = r.spec.get("configPatches")
            reported: set[str] = set()  # one message of a kind per EnvoyFilter, as Istio's tests expect

            def report(t: msg.MessageType, line: int, r: Any = r, reported: set[str] = reported) -> None:
                if t.name not in reported:
                    reported.add(t.name)
                    ctx.report(msg.new(t, r, line=line))
            for i, cp in enumerate(patches if isinstance(patches, list) else []):
                cp = _dict(cp)
                patch = cp.get("patch")
                if not isinstance(patch, dict):
                    break
                match = _dict(cp.get("match"))
                value = _dict(patch.get("value"))
                name = str(value.get("name") or "") if value else ""
                if value and not name:
                    name = str(_dict(_dict(_dict(match.get("listener")).get("filterChain")).get("filter")).get("name")
                               or "")
                op, apply_to = patch.get("operation"), cp.get("applyTo")
                line = r.line_of("spec", "configPatches", i)

                # A value naming nothing (neither itself nor a matched filter) cannot be ordered
                # against another EnvoyFilter's: no warning (Istio's EnvoyFilterFilterChainMatch case).
                unnamed = bool(value) and not name

                def relative(name: str = name, line: int = line, unnamed: bool = unnamed,
                             priority: Any = priority) -> None:
                    if priority == 0 and not unnamed:
                        report(RELATIVE_WITH_VERSION if name in versioned else RELATIVE, line)

                if op == "ADD":
                    if apply_to in _ROUTES:
                        report(ADD, line)
                elif op == "REMOVE":
                    if apply_to in _ROUTES:
                        report(REMOVE, line)
                    else:
                        relative()
                elif op == "REPLACE":
                    if apply_to not in _REPLACEABLE:
                        report(REPLACE, line)
                    else:
                        relative()
                elif op in ("INSERT_BEFORE", "INSERT_AFTER", "MERGE"):
                    relative()
                if _dict(match.get("proxy")).get("proxyVersion"):
                    versioned.append(name)


__all__ = ["EnvoyPatchAnalyzer"]
