"""Authorization policies that are not enforced as written, made impossible to miss.

istiod turns a policy it cannot build (a CUSTOM policy whose provider is not in the mesh
config, a rule it cannot translate) into something that fails closed, and says so in its
log only. meshd does the same and reports each such policy once per appearance as a
`policy not enforced as written` event, in `/debug/configz` (section `policyProblems`)
and in the gauge `meshd_policy_problems{kind,severity}` (problem_report.py).

Fed with each new mesh snapshot by app.py (one pass over the policies per changed input,
not per proxy).
"""
from __future__ import annotations

from collections.abc import Hashable

from prometheus_client import CollectorRegistry

from ..generators.authz.problem import ERROR, WARNING, Problem
from ..model.mesh import MeshSnapshot
from ..model.security import typed_policies
from ..problem_report import ProblemReport, ReportSpec

KIND = "AuthorizationPolicy"

SPEC = ReportSpec[Problem](
    kind=KIND, event="policy not enforced as written", logger="meshd.security",
    metric="meshd_policy_problems",
    help="Security policies meshd does not enforce as written (it fails closed instead, as istiod), by kind and "
         "severity.",
    labels=("kind", "severity"), label_values=lambda p: (KIND, p.severity),
    always=((KIND, ERROR), (KIND, WARNING)), details=lambda p: {"severity": p.severity})


def _input(mesh: MeshSnapshot) -> Hashable:
    policies = mesh.authorization_policies
    # Services matter only to CUSTOM providers: no policy, nothing to look up on every snapshot.
    return (tuple((p.namespace, p.name, p.generation) for p in policies), repr(mesh.mesh_config),
            tuple(sorted(mesh.services)) if policies else ())


def _find(mesh: MeshSnapshot) -> tuple[Problem, ...]:
    from ..generators.authz.builder import problems  # the builder after ready (app.py warms it)

    return problems(typed_policies(mesh), mesh.mesh_config, services=mesh.services)


class PolicyReport(ProblemReport[Problem]):
    def __init__(self, registry: CollectorRegistry | None = None):
        super().__init__(SPEC, _find, _input, registry)
