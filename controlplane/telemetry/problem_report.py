"""Telemetry settings meshd accepts but does not serve, made impossible to miss: each
problem of generators/telemetry_problems.py is logged once when it appears (`telemetry not
served as written`), listed in `/debug/configz` (section `telemetryProblems`) and counted in
the gauge `meshd_telemetry_problems{reason}`.

Fed with each new mesh snapshot by app.py; recomputed only when the Telemetries or the mesh
config change.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import structlog
from prometheus_client import CollectorRegistry, Gauge

from ..generators.telemetry_problems import REASONS, TelemetryProblem, problems
from ..generators.tracing import mesh_telemetries
from ..model.mesh import MeshSnapshot

log = structlog.get_logger("meshd.telemetry")


@dataclass
class TelemetryReport:
    registry: CollectorRegistry | None = None
    current: tuple[TelemetryProblem, ...] = ()
    _gauge: Any = None
    _input: tuple[Any, ...] | None = None

    def __post_init__(self) -> None:
        if self.registry is not None:
            self._gauge = Gauge("meshd_telemetry_problems", "Telemetry settings meshd accepts but does not serve "
                                "(metrics, targetRefs, providers it cannot build, ...), by reason.", ["reason"],
                                registry=self.registry)
            for reason in REASONS:
                self._gauge.labels(reason).set(0)

    def update(self, mesh: MeshSnapshot) -> None:
        telemetries = mesh_telemetries(mesh)
        key = (tuple((t.namespace, t.name, t.generation) for t in telemetries), repr(mesh.mesh_config))
        if key == self._input:
            return
        self._input = key
        found = problems(telemetries, mesh.mesh_config)
        seen = set(self.current)
        for p in found:
            if p not in seen:
                log.warning("telemetry not served as written", kind="Telemetry", object=f"{p.namespace}/{p.name}",
                            field=p.field, reason=p.reason, message=p.message())
        self.current = found
        if self._gauge is not None:
            for reason in REASONS:
                self._gauge.labels(reason).set(sum(1 for p in found if p.reason == reason))

    def status(self) -> list[dict[str, Any]]:
        return [{"kind": "Telemetry", "namespace": p.namespace, "name": p.name, "field": p.field,
                 "reason": p.reason, "message": p.message()} for p in self.current]
