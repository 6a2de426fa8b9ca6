"""What analyzers see: the resources by kind, and where their findings go."""
from __future__ import annotations

from collections.abc import Iterator

from ..model.meshconfig import DEFAULT as DEFAULT_MESH_CONFIG
from ..model.meshconfig import MeshConfig
from .messages import Message
from .resources import Resource

# (group, kind) for the kinds analyzers read; Istio's Gateway and the Gateway API's share a kind.
ISTIO_NET = "networking.istio.io"
ISTIO_SEC = "security.istio.io"
GATEWAY = (ISTIO_NET, "Gateway")
VIRTUAL_SERVICE = (ISTIO_NET, "VirtualService")
DESTINATION_RULE = (ISTIO_NET, "DestinationRule")
SERVICE_ENTRY = (ISTIO_NET, "ServiceEntry")
SIDECAR = (ISTIO_NET, "Sidecar")
TELEMETRY = ("telemetry.istio.io", "Telemetry")
WORKLOAD_ENTRY = (ISTIO_NET, "WorkloadEntry")
WORKLOAD_GROUP = (ISTIO_NET, "WorkloadGroup")
PEER_AUTHENTICATION = (ISTIO_SEC, "PeerAuthentication")
AUTHORIZATION_POLICY = (ISTIO_SEC, "AuthorizationPolicy")
K8S_GATEWAY = ("gateway.networking.k8s.io", "Gateway")
SERVICE = ("", "Service")
POD = ("", "Pod")
SECRET = ("", "Secret")
SERVICE_ACCOUNT = ("", "ServiceAccount")
NAMESPACE = ("", "Namespace")
DEPLOYMENT = ("apps", "Deployment")


class Context:
    def __init__(self, resources: list[Resource], mesh_config: MeshConfig = DEFAULT_MESH_CONFIG):
        self.mesh_config = mesh_config  # `analyze --mesh-config`, else Istio's defaults
        self._by_kind: dict[tuple[str, str], list[Resource]] = {}
        for r in resources:
            self._by_kind.setdefault((r.group, r.kind), []).append(r)
        for v in self._by_kind.values():
            v.sort(key=lambda r: (r.namespace, r.name))
        self.messages: list[Message] = []

    def for_each(self, kind: tuple[str, str]) -> Iterator[Resource]:
        yield from list(self._by_kind.get(kind, ()))

    def all_resources(self) -> list[Resource]:
        return [r for rs in self._by_kind.values() for r in rs]

    def all(self, kind: tuple[str, str]) -> list[Resource]:
        return list(self._by_kind.get(kind, ()))

    def find(self, kind: tuple[str, str], namespace: str, name: str) -> Resource | None:
        for r in self._by_kind.get(kind, ()):
            if r.namespace == namespace and r.name == name:
                return r
        return None

    def exists(self, kind: tuple[str, str], namespace: str, name: str) -> bool:
        return self.find(kind, namespace, name) is not None

    def report(self, msg: Message) -> None:
        self.messages.append(msg)
