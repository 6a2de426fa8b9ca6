"""The kinds meshd reads, and what it does with every other kind.

Served kinds become ConfigObjects. Kinds of the API groups an operator writes mesh
config in (every `*.istio.io` group, the Kubernetes Gateway API and its extension
groups) that meshd does not serve are *unsupported*: never dropped silently, each object
is kept by the store and reported (/debug/configz, `meshd_config_unsupported`, `meshd
analyze`, `meshd validate`; docs/unsupported.md). Those of the security groups are
errors: the access control they describe is not enforced. Kubernetes kinds meshd has no
use for (Deployment, ConfigMap, ...) are skipped quietly.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..names import GATEWAY_API_GROUP

ISTIO_NETWORKING = "networking.istio.io"
ISTIO_SECURITY = "security.istio.io"
ISTIO_VERSIONS = ("v1", "v1beta1", "v1alpha3")


@dataclass(frozen=True)
class Kind:
    group: str
    kind: str
    versions: tuple[str, ...]
    namespaced: bool = True
    # The kind the store keys its objects by when `kind` alone is taken: the Gateway API's
    # Gateway is "KubernetesGateway" (istiod's name for it), beside Istio's Gateway.
    store_kind: str = ""

    @property
    def istio(self) -> bool:
        return self.group.endswith("istio.io")

    @property
    def key_kind(self) -> str:
        """ConfigObject.kind and ConfigKey.kind of this kind's objects."""
        return self.store_kind or self.kind

    @property
    def custom(self) -> bool:
        """A CRD kind (Istio's, the Gateway API's): the store keeps its `spec`, not `status`."""
        return self.istio or self.group == GATEWAY_API_GROUP


GATEWAY = Kind(ISTIO_NETWORKING, "Gateway", ISTIO_VERSIONS)
VIRTUAL_SERVICE = Kind(ISTIO_NETWORKING, "VirtualService", ISTIO_VERSIONS)
DESTINATION_RULE = Kind(ISTIO_NETWORKING, "DestinationRule", ISTIO_VERSIONS)
PEER_AUTHENTICATION = Kind(ISTIO_SECURITY, "PeerAuthentication", ("v1", "v1beta1"))
AUTHORIZATION_POLICY = Kind(ISTIO_SECURITY, "AuthorizationPolicy", ("v1", "v1beta1"))
REQUEST_AUTHENTICATION = Kind(ISTIO_SECURITY, "RequestAuthentication", ("v1", "v1beta1"))
# The service registry and its scope (docs/registry.md).
SERVICE_ENTRY = Kind(ISTIO_NETWORKING, "ServiceEntry", ISTIO_VERSIONS)
WORKLOAD_ENTRY = Kind(ISTIO_NETWORKING, "WorkloadEntry", ISTIO_VERSIONS)
WORKLOAD_GROUP = Kind(ISTIO_NETWORKING, "WorkloadGroup", ISTIO_VERSIONS)
SIDECAR = Kind(ISTIO_NETWORKING, "Sidecar", ISTIO_VERSIONS)
# Patches to generated output (docs/envoyfilter.md).
ENVOY_FILTER = Kind(ISTIO_NETWORKING, "EnvoyFilter", ("v1alpha3",))
# Access logs, tracing and metrics per workload (docs/telemetry.md).
TELEMETRY = Kind("telemetry.istio.io", "Telemetry", ("v1", "v1alpha1"))
NAMESPACE = Kind("", "Namespace", ("v1",), namespaced=False)
SERVICE = Kind("", "Service", ("v1",))
POD = Kind("", "Pod", ("v1",))
ENDPOINT_SLICE = Kind("discovery.k8s.io", "EndpointSlice", ("v1",))
# Where pods run: only a Node's name and topology labels are kept (endpoint locality).
NODE = Kind("", "Node", ("v1",), namespaced=False)
# TLS credentials of gateways (`credentialName`); other Secrets are skipped at the gate.
SECRET = Kind("", "Secret", ("v1",))
# The Kubernetes Gateway API, standard channel (docs/gateway-api.md): the versions its CRDs
# serve, storage version first. Translated into Istio Gateways and VirtualServices by the
# model (model/gateway_api/).
_GW = GATEWAY_API_GROUP
GATEWAY_CLASS = Kind(_GW, "GatewayClass", ("v1", "v1beta1"), namespaced=False)
K8S_GATEWAY = Kind(_GW, "Gateway", ("v1", "v1beta1"), store_kind="KubernetesGateway")
HTTP_ROUTE = Kind(_GW, "HTTPRoute", ("v1", "v1beta1"))
GRPC_ROUTE = Kind(_GW, "GRPCRoute", ("v1",))
TCP_ROUTE = Kind(_GW, "TCPRoute", ("v1", "v1alpha2"))
TLS_ROUTE = Kind(_GW, "TLSRoute", ("v1", "v1alpha3", "v1alpha2"))
REFERENCE_GRANT = Kind(_GW, "ReferenceGrant", ("v1", "v1beta1"))
GATEWAY_API_KINDS = (GATEWAY_CLASS, K8S_GATEWAY, HTTP_ROUTE, GRPC_ROUTE, TCP_ROUTE, TLS_ROUTE, REFERENCE_GRANT)

SERVED: dict[tuple[str, str], Kind] = {
    (k.group, k.kind): k
    for k in (GATEWAY, VIRTUAL_SERVICE, DESTINATION_RULE, PEER_AUTHENTICATION, AUTHORIZATION_POLICY,
              REQUEST_AUTHENTICATION, NAMESPACE, SERVICE, POD, ENDPOINT_SLICE, SECRET, NODE, SIDECAR, SERVICE_ENTRY,
              WORKLOAD_ENTRY, WORKLOAD_GROUP, ENVOY_FILTER, TELEMETRY) + GATEWAY_API_KINDS
}

# Istio kinds an operator may apply that meshd does not act on yet.
ISTIO_UNSUPPORTED = frozenset(
    {
        "ProxyConfig", "WasmPlugin",
    }
)

# The Kubernetes Gateway API and its extension groups: mesh config an operator expects
# to matter, which meshd does not implement (it serves Istio's Gateway/VirtualService).
GATEWAY_API_GROUPS = frozenset({
    "gateway.networking.k8s.io",
    "gateway.networking.x-k8s.io",  # experimental: XListenerSet, XBackendTrafficPolicy, XMesh
    "inference.networking.k8s.io",  # Gateway API Inference Extension
    "inference.networking.x-k8s.io",
})
# Groups whose kinds control access: an unsupported one means an operator believes
# requests are checked that are not. The two older ones are Istio's pre-1.6 APIs
# (ServiceRole, ServiceRoleBinding, Policy, MeshPolicy), which istiod no longer reads either.
SECURITY_GROUPS = frozenset({ISTIO_SECURITY, "rbac.istio.io", "authentication.istio.io"})
# Cluster-scoped kinds among the unsupported ones (the rest are namespaced).
CLUSTER_SCOPED_UNSERVED: frozenset[tuple[str, str]] = frozenset()

_GW_VERSIONS = ("v1", "v1beta1", "v1alpha3", "v1alpha2")
# The unsupported kinds the Kubernetes source lists and watches (when their CRDs are
# installed) so that objects applied with kubectl are reported like those of files:
# (kind, plural). Istio's from ISTIO_UNSUPPORTED, and the Gateway API's kinds meshd does
# not serve (UDPRoute, BackendTLSPolicy, ListenerSet).
WATCHED_UNSUPPORTED: tuple[tuple[Kind, str], ...] = (
    (Kind(ISTIO_NETWORKING, "ProxyConfig", ("v1beta1",)), "proxyconfigs"),
    (Kind("extensions.istio.io", "WasmPlugin", ("v1alpha1",)), "wasmplugins"),
    (Kind(_GW, "UDPRoute", _GW_VERSIONS), "udproutes"),
    (Kind(_GW, "BackendTLSPolicy", _GW_VERSIONS), "backendtlspolicies"),
    (Kind(_GW, "ListenerSet", _GW_VERSIONS), "listenersets"),
)


def split_api_version(api_version: str) -> tuple[str, str]:
    """`networking.istio.io/v1` -> (group, version); core `v1` -> ("", "v1")."""
    if "/" in api_version:
        group, _, version = api_version.rpartition("/")
        return group, version
    return "", api_version


def lookup(api_version: str, kind: str) -> Kind | None:
    group, _ = split_api_version(api_version)
    return SERVED.get((group, kind))


def is_istio_group(group: str) -> bool:
    return group.endswith(".istio.io")


def is_mesh_group(group: str) -> bool:
    """A group an operator writes mesh config in: its kinds are served or reported."""
    return is_istio_group(group) or group in GATEWAY_API_GROUPS


def is_security_group(group: str) -> bool:
    return group in SECURITY_GROUPS


def unsupported_reason(group: str, kind: str) -> str | None:
    """Why an object of (group, kind) has no effect in meshd; None when the kind is served
    or is not mesh config at all (a Deployment, a ConfigMap)."""
    if (group, kind) in SERVED or not is_mesh_group(group):
        return None
    if is_security_group(group):
        what = "a security kind meshd does not serve: the access control it describes is NOT enforced"
    elif group in GATEWAY_API_GROUPS:
        what = ("a Kubernetes Gateway API kind meshd does not serve (it serves the standard channel's GatewayClass, "
                "Gateway, HTTPRoute, GRPCRoute, TCPRoute, TLSRoute and ReferenceGrant), so it has no effect")
    elif kind in ISTIO_UNSUPPORTED:
        what = "an Istio kind meshd does not serve yet, so it has no effect"
    else:
        what = "not a kind meshd knows, so it has no effect"
    return f"{kind} ({group}) is {what}"
