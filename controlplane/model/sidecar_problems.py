"""Sidecar settings meshd accepts but that do nothing as written, made impossible to miss
(problem_report.py): logged once when they appear (`sidecar not served as written`),
listed in `/debug/configz` (section `sidecarProblems`) and counted in the gauge
`meshd_sidecar_problems{reason}`.

One such setting today: an ingress listener's `tls` is terminated only where the
PeerAuthentication mode of its port is DISABLE (istiod's rule: the Sidecar's TLS does not
combine with Istio mTLS; docs/sidecar-scope.md). It is reported when no PeerAuthentication
that can apply to the Sidecar's workloads turns mTLS off on that port, so the `tls` block is
certainly not used (a DISABLE that selects only some of them is not reported).

Fed with each new mesh snapshot by app.py; recomputed only when the Sidecars,
PeerAuthentications or the root namespace change.
"""
from __future__ import annotations

from collections.abc import Hashable, Iterable, Mapping
from dataclasses import dataclass

from prometheus_client import CollectorRegistry

from ..config.types.peerauthentication import PeerAuthentication
from ..config.types.sidecar import Sidecar
from ..problem_report import ProblemReport, ReportSpec
from .mesh import MeshSnapshot
from .peer_authentication import DISABLE
from .sidecar_scope import SIDECAR_KIND

TLS_WITH_MTLS = "IngressTLSUnderMutualTLS"
REASONS = (TLS_WITH_MTLS,)


@dataclass(frozen=True)
class SidecarProblem:
    namespace: str
    name: str
    field: str  # the spec path, e.g. `spec.ingress[0].tls`
    reason: str  # one of REASONS
    detail: str

    def message(self) -> str:
        return f"{self.field}: {self.detail}"


def _compatible(a: Mapping[str, str], b: Mapping[str, str]) -> bool:
    """Some workload can carry both label sets."""
    return all(b.get(k, v) == v for k, v in a.items())


def _may_disable(pa_namespace: str, pa: PeerAuthentication, namespace: str, sidecar: Sidecar, port: int,
                 root: str) -> bool:
    """The PeerAuthentication sets DISABLE for `port` and may select a workload of `sidecar`."""
    if pa.mode != DISABLE and pa.port_level_mtls.get(port) != DISABLE:
        return False
    mesh_default = namespace == root and sidecar.workload_selector is None
    if not mesh_default and pa_namespace not in (namespace, root):
        return False
    return _compatible(pa.selector, sidecar.workload_selector or {})


def ingress_tls_problems(sidecars: Iterable[tuple[str, str, Sidecar]],
                         policies: Iterable[tuple[str, PeerAuthentication]], root: str) -> tuple[SidecarProblem, ...]:
    """Of Sidecars (namespace, name, spec) and PeerAuthentications (namespace, spec); also
    what `meshd analyze` reports (MSH0008, analysis/analyzers/sidecar.py)."""
    pas = list(policies)
    out: list[SidecarProblem] = []
    for namespace, name, sc in sidecars:
        for i, listener in enumerate(sc.ingress):
            port = listener.port.number
            if listener.tls is None or any(_may_disable(ns, pa, namespace, sc, port, root) for ns, pa in pas):
                continue
            out.append(SidecarProblem(
                namespace, name, f"spec.ingress[{i}].tls", TLS_WITH_MTLS,
                f"not used: no PeerAuthentication turns mTLS off (DISABLE) on port {port} for the workloads of "
                "this Sidecar, and a Sidecar's TLS is terminated only there (as in istiod); set portLevelMtls "
                f"{port}: DISABLE in a PeerAuthentication selecting them"))
    return tuple(sorted(out, key=lambda p: (p.namespace, p.name, p.field)))


def problems(mesh: MeshSnapshot) -> tuple[SidecarProblem, ...]:
    return ingress_tls_problems(((o.namespace, o.name, o.typed) for o in mesh.config.of_kind(SIDECAR_KIND)),
                                ((o.namespace, o.typed) for o in mesh.peer_authentications), mesh.root_namespace)


def _input(mesh: MeshSnapshot) -> Hashable:
    return (tuple((o.namespace, o.name, o.generation) for o in mesh.config.of_kind(SIDECAR_KIND)),
            tuple((o.namespace, o.name, o.generation) for o in mesh.peer_authentications), mesh.root_namespace)


SPEC = ReportSpec[SidecarProblem](
    kind=SIDECAR_KIND, event="sidecar not served as written", logger="meshd.sidecar",
    metric="meshd_sidecar_problems",
    help="Sidecar settings meshd accepts but that do nothing as written (an ingress tls under Istio mTLS), by reason.",
    labels=("reason",), label_values=lambda p: (p.reason,), always=tuple((r,) for r in REASONS))


class SidecarReport(ProblemReport[SidecarProblem]):
    def __init__(self, registry: CollectorRegistry | None = None):
        super().__init__(SPEC, problems, _input, registry)
