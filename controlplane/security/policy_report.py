"""Authorization policies that are not enforced as written, made impossible to miss.

istiod turns a policy it cannot build (a CUSTOM policy whose provider is not in the mesh
config, a rule it cannot translate) into something that fails closed, and says so in its
log only. meshd does the same and reports each such policy once per appearance as a
`policy not enforced as written` event, in `/debug/configz` (section `policyProblems`)
and in the gauge `meshd_policy_problems{kind,severity}`.

Fed with each new mesh snapshot by app.py (one pass over the policies per snapshot, not
per proxy).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import structlog
from prometheus_client import CollectorRegistry, Gauge

from ..generators.authz.builder import Problem, problems
from ..model.mesh import MeshSnapshot
from ..model.security import typed_policies

log = structlog.get_logger("meshd.security")

KIND = "AuthorizationPolicy"


@dataclass
class PolicyReport:
    registry: CollectorRegistry | None = None
    current: tuple[Problem, ...] = ()
    _seen: set[Problem] = field(default_factory=set)
    _gauge: Any = None
    _input: tuple[Any, ...] = ()

    def __post_init__(self) -> None:
        if self.registry is not None:
            self._gauge = Gauge("meshd_policy_problems", "Security policies meshd does not enforce as written (it "
                                "fails closed instead, as istiod), by kind and severity.", ["kind", "severity"],
                                registry=self.registry)
            for severity in ("error", "warning"):
                self._gauge.labels(KIND, severity).set(0)

    def update(self, mesh: MeshSnapshot) -> None:
        policies = mesh.authorization_policies
        # Services matter only to CUSTOM providers: no policy, nothing to look up on every snapshot.
        key = (tuple((p.namespace, p.name, p.generation) for p in policies), repr(mesh.mesh_config),
               tuple(sorted(mesh.services)) if policies else ())
        if key == self._input:
            return
        self._input = key
        found = problems(typed_policies(mesh), mesh.mesh_config, services=mesh.services)
        for p in found:
            if p not in self._seen:
                log.warning("policy not enforced as written", kind=KIND, object=f"{p.namespace}/{p.name}",
                            field=p.field or None, severity=p.severity, reason=p.reason, message=p.message())
        self._seen = set(found)
        self.current = found
        if self._gauge is not None:
            for severity in ("error", "warning"):
                self._gauge.labels(KIND, severity).set(sum(1 for p in found if p.severity == severity))

    def status(self) -> list[dict[str, Any]]:
        return [{"kind": KIND, "namespace": p.namespace, "name": p.name, "field": p.field, "severity": p.severity,
                 "reason": p.reason, "message": p.message()} for p in self.current]
