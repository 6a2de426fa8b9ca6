"""Telemetry analyzers (Istio's pkg/config/analysis/analyzers/telemetry).

A proxy takes the one Telemetry of its namespace whose selector selects it, and the one
without a selector (model/telemetry.py); two candidates at either level leave the choice
undefined (meshd takes the first by name, istiod the oldest).
"""
from __future__ import annotations

import re

from ...config.types.telemetry import telemetry
from ...generators.telemetry_problems import problems
from ...model.telemetry import NamedTelemetry
from .. import messages as msg
from ..context import TELEMETRY, Context
from ..resources import Resource
from ..util import selector_matches, selector_string
from .workloads import workloads_of


def _selector(r: Resource) -> dict[str, str]:
    sel = r.spec.get("selector")
    labels = sel.get("matchLabels") if isinstance(sel, dict) else None
    return {str(k): str(v) for k, v in labels.items()} if isinstance(labels, dict) else {}


def _scoped(r: Resource) -> bool:
    return bool(_selector(r) or r.spec.get("targetRef") or r.spec.get("targetRefs"))


class SelectorAnalyzer:
    """IST0101 for a selector matching no workload of the Telemetry's namespace, IST0159
    for two Telemetries selecting one workload."""

    name = "telemetry.SelectorAnalyzer"
    description = ("Validates that telemetries that define a selector match at least one pod, and that there "
                   "aren't multiple telemetry resources that select overlapping pods")

    def analyze(self, ctx: Context) -> None:
        workloads = workloads_of(ctx)
        by_workload: dict[tuple[str, str], list[Resource]] = {}
        for r in ctx.for_each(TELEMETRY):
            labels = _selector(r)
            if not labels:
                continue
            found = [w for w in workloads if w.namespace == r.namespace and selector_matches(labels, w.labels)]
            if not found:
                ctx.report(msg.new(msg.REFERENCED_RESOURCE_NOT_FOUND, r, "selector", selector_string(labels)))
            for w in found:
                by_workload.setdefault((w.namespace, w.name), []).append(r)
        for (ns, name), telemetries in sorted(by_workload.items()):
            if len(telemetries) > 1:
                names = [t.name for t in telemetries]
                for t in telemetries:
                    ctx.report(msg.new(msg.CONFLICTING_TELEMETRY_WORKLOAD_SELECTORS, t, names, ns, name))


class DefaultSelectorAnalyzer:
    """IST0160 for two Telemetries without a selector in one namespace."""

    name = "telemetry.DefaultSelectorAnalyzer"
    description = "Validates that there aren't multiple telemetry resources that have no selector"

    def analyze(self, ctx: Context) -> None:
        by_ns: dict[str, list[Resource]] = {}
        for r in ctx.for_each(TELEMETRY):
            if not _scoped(r):
                by_ns.setdefault(r.namespace, []).append(r)
        for ns, telemetries in sorted(by_ns.items()):
            if len(telemetries) > 1:
                names = [t.name for t in telemetries]
                for t in telemetries:
                    ctx.report(msg.new(msg.MULTIPLE_TELEMETRIES_WITHOUT_SELECTORS, t, names, ns))


def _path(field: str) -> tuple[str | int, ...]:
    """`spec.tracing[0].providers[1]` -> ("spec", "tracing", 0, "providers", 1)."""
    return tuple(int(p) if p.isdigit() else p for p in re.findall(r"[A-Za-z]+|\d+", field))


class NotServedAnalyzer:
    """MSH0007 for every Telemetry setting meshd accepts but does not serve (metrics,
    targetRefs, a provider it cannot build under the mesh config, useRequestIdForTraceSampling:
    false): the rows of /debug/configz `telemetryProblems`."""

    name = "telemetry.NotServedAnalyzer"
    description = "Reports Telemetry settings meshd accepts but does not serve"

    def analyze(self, ctx: Context) -> None:
        resources = {(r.namespace, r.name): r for r in ctx.for_each(TELEMETRY)}
        named = [NamedTelemetry(ns, name, telemetry(r.spec)) for (ns, name), r in resources.items()
                 if isinstance(r.spec, dict)]
        for p in problems(named, ctx.mesh_config):
            r = resources[(p.namespace, p.name)]
            ctx.report(msg.new(msg.TELEMETRY_NOT_SERVED, r, p.message(), line=r.line_of(*_path(p.field))))
