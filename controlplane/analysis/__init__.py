"""`meshd analyze`: Istio's configuration analyzers, on files or a running meshd.

    resources, errors = load_paths(["config/"])
    messages = analyze(resources)          # sorted and de-duplicated, as istioctl prints them

Analyzers carry Istio's names (`virtualservice.GatewayAnalyzer`, ...) and emit Istio's
message codes and wording (messages.py); `ANALYZERS` lists what is implemented, and the
docs/operator-view.md has the table of codes implemented against Istio's.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence

from ..model.meshconfig import DEFAULT as DEFAULT_MESH_CONFIG
from ..model.meshconfig import MeshConfig
from .analyzers.authorization import (
    AuthorizationPoliciesAnalyzer,
    AuthorizationPrincipalAnalyzer,
    CustomProviderAnalyzer,
)
from .analyzers.deprecation import FieldAnalyzer
from .analyzers.destinationrule import SubsetSelectPodAnalyzer
from .analyzers.envoyfilter import EnvoyPatchAnalyzer
from .analyzers.gateway import (
    CertificateAnalyzer,
    ConflictingGatewayAnalyzer,
    IngressGatewayPortAnalyzer,
    SecretAnalyzer,
)
from .analyzers.gateway_api import GatewayAPIStatusAnalyzer
from .analyzers.others import (
    CaCertificateAnalyzer,
    PeerAuthenticationAnalyzer,
    PortNameAnalyzer,
    SchemaValidationAnalyzer,
)
from .analyzers.serviceentry import (
    ConflictingServiceEntryProtocolAnalyzer,
    HostConflictAnalyzer,
    ProtocolAddressesAnalyzer,
    WorkloadSelectorAnalyzer,
)
from .analyzers.sidecar import EgressHostAnalyzer, IngressTLSAnalyzer
from .analyzers.sidecar import SelectorAnalyzer as SidecarSelectorAnalyzer
from .analyzers.telemetry import DefaultSelectorAnalyzer as TelemetryDefaultSelectorAnalyzer
from .analyzers.telemetry import NotServedAnalyzer as TelemetryNotServedAnalyzer
from .analyzers.telemetry import SelectorAnalyzer as TelemetrySelectorAnalyzer
from .analyzers.unsupported import UnsupportedKindAnalyzer
from .analyzers.virtualservice import (
    ConflictingMeshGatewayHostsAnalyzer,
    DestinationHostAnalyzer,
    DestinationRuleAnalyzer,
    GatewayAnalyzer,
)
from .context import Context
from .messages import Message
from .resources import LoadError, Resource, default_resources, load_paths, service_stand_ins

ANALYZERS = (
    SchemaValidationAnalyzer(),
    GatewayAnalyzer(),
    DestinationHostAnalyzer(),
    DestinationRuleAnalyzer(),
    ConflictingMeshGatewayHostsAnalyzer(),
    IngressGatewayPortAnalyzer(),
    ConflictingGatewayAnalyzer(),
    SecretAnalyzer(),
    CertificateAnalyzer(),
    CaCertificateAnalyzer(),
    PortNameAnalyzer(),
    PeerAuthenticationAnalyzer(),
    AuthorizationPoliciesAnalyzer(),
    AuthorizationPrincipalAnalyzer(),
    CustomProviderAnalyzer(),
    SidecarSelectorAnalyzer(),
    ProtocolAddressesAnalyzer(),
    ConflictingServiceEntryProtocolAnalyzer(),
    WorkloadSelectorAnalyzer(),
    HostConflictAnalyzer(),
    EgressHostAnalyzer(),
    IngressTLSAnalyzer(),
    SubsetSelectPodAnalyzer(),
    FieldAnalyzer(),
    EnvoyPatchAnalyzer(),
    TelemetrySelectorAnalyzer(),
    TelemetryDefaultSelectorAnalyzer(),
    TelemetryNotServedAnalyzer(),
    UnsupportedKindAnalyzer(),
    GatewayAPIStatusAnalyzer(),
)
BY_NAME = {a.name: a for a in ANALYZERS}


def analyze(resources: Iterable[Resource], analyzers: Sequence = ANALYZERS, *, defaults: bool = True,
            service_workloads: bool = False, mesh_config: MeshConfig = DEFAULT_MESH_CONFIG) -> list[Message]:
    """Run analyzers; `defaults` adds what istioctl assumes offline (the default ingress
    gateway pod and service in istio-system) unless the input defines that service;
    `mesh_config` is the mesh's MeshConfig (root namespace, extension providers).

    `service_workloads` (meshd's directory configs, which describe workloads by Services
    and EndpointSlices rather than Pods): when the input has no Pod at all, each Service
    selector stands for a workload with those labels, so selectors are not reported as
    matching nothing merely because no Pod objects exist."""
    resources = list(resources)
    if service_workloads and not any(r.kind == "Pod" for r in resources):
        resources += service_stand_ins(resources)
    if defaults and not any(r.kind == "Service" and r.namespace == "istio-system" and r.name == "istio-ingressgateway"
                            for r in resources):
        have = {(r.kind, r.namespace, r.name) for r in resources}
        resources += [r for r in default_resources() if (r.kind, r.namespace, r.name) not in have]
    ctx = Context(resources, mesh_config)
    for a in analyzers:
        a.analyze(ctx)
    seen: set[str] = set()
    out = []
    for m in sorted(ctx.messages, key=lambda m: m.sort_key()):
        key = str(m)
        if key not in seen:
            seen.add(key)
            out.append(m)
    return out


__all__ = ["ANALYZERS", "BY_NAME", "analyze", "load_paths", "LoadError", "Message", "Resource"]
