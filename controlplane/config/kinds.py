"""The kinds meshd reads, and what it does with every other kind.

Served kinds become ConfigObjects. Istio kinds meshd does not serve yet are reported
once as unsupported (an operator applied them and deserves to know they do nothing);
Kubernetes kinds meshd has no use for (Deployment, ConfigMap, ...) are skipped quietly.
"""
from __future__ import annotations

from dataclasses import dataclass

ISTIO_NETWORKING = "networking.istio.io"
ISTIO_SECURITY = "security.istio.io"
ISTIO_VERSIONS = ("v1", "v1beta1", "v1alpha3")


@dataclass(frozen=True)
class Kind:
    group: str
    kind: str
    versions: tuple[str, ...]
    namespaced: bool = True

    @property
    def istio(self) -> bool:
        return self.group.endswith("istio.io")


GATEWAY = Kind(ISTIO_NETWORKING, "Gateway", ISTIO_VERSIONS)
VIRTUAL_SERVICE = Kind(ISTIO_NETWORKING, "VirtualService", ISTIO_VERSIONS)
DESTINATION_RULE = Kind(ISTIO_NETWORKING, "DestinationRule", ISTIO_VERSIONS)
PEER_AUTHENTICATION = Kind(ISTIO_SECURITY, "PeerAuthentication", ("v1", "v1beta1"))
NAMESPACE = Kind("", "Namespace", ("v1",), namespaced=False)
SERVICE = Kind("", "Service", ("v1",))
POD = Kind("", "Pod", ("v1",))
ENDPOINT_SLICE = Kind("discovery.k8s.io", "EndpointSlice", ("v1",))
# Where pods run: only a Node's name and topology labels are kept (endpoint locality).
NODE = Kind("", "Node", ("v1",), namespaced=False)
# TLS credentials of gateways (`credentialName`); other Secrets are skipped at the gate.
SECRET = Kind("", "Secret", ("v1",))

SERVED: dict[tuple[str, str], Kind] = {
    (k.group, k.kind): k
    for k in (GATEWAY, VIRTUAL_SERVICE, DESTINATION_RULE, PEER_AUTHENTICATION, NAMESPACE, SERVICE, POD, ENDPOINT_SLICE,
              SECRET, NODE)
}

# Istio kinds an operator may apply that meshd does not act on yet.
ISTIO_UNSUPPORTED = frozenset(
    {
        "ServiceEntry", "Sidecar", "WorkloadEntry", "WorkloadGroup", "EnvoyFilter", "ProxyConfig",
        "AuthorizationPolicy", "RequestAuthentication", "Telemetry",
        "WasmPlugin",
    }
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
