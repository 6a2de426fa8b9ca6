"""Telemetry settings meshd accepts but does not serve, made impossible to miss: each
problem of generators/telemetry_problems.py is logged once when it appears (`telemetry not
served as written`), listed in `/debug/configz` (section `telemetryProblems`) and counted in
the gauge `meshd_telemetry_problems{reason}` (problem_report.py).

Fed with each new mesh snapshot by app.py; recomputed only when the Telemetries or the mesh
config change.
"""
from __future__ import annotations

from collections.abc import Hashable

from prometheus_client import CollectorRegistry

from ..generators.telemetry_problem import REASONS, TelemetryProblem
from ..model.mesh import MeshSnapshot
from ..problem_report import ProblemReport, ReportSpec

SPEC = ReportSpec[TelemetryProblem](
    kind="Telemetry", event="telemetry not served as written", logger="meshd.telemetry",
    metric="meshd_telemetry_problems",
    help="Telemetry settings meshd accepts but does not serve (metrics overrides, targetRefs, providers it cannot "
         "build, ...), by reason.",
    labels=("reason",), label_values=lambda p: (p.reason,), always=tuple((r,) for r in REASONS))


def _input(mesh: MeshSnapshot) -> Hashable:
    from ..generators.tracing import mesh_telemetries  # the generators after ready (app.py warms them)

    return (tuple((t.namespace, t.name, t.generation) for t in mesh_telemetries(mesh)), repr(mesh.mesh_config))


def _find(mesh: MeshSnapshot) -> tuple[TelemetryProblem, ...]:
    from ..generators.telemetry_problems import mesh_problems

    return mesh_problems(mesh)


class TelemetryReport(ProblemReport[TelemetryProblem]):
    def __init__(self, registry: CollectorRegistry | None = None):
        super().__init__(SPEC, _find, _input, registry)
