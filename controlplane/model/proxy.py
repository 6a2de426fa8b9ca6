"""A connected Envoy as the model sees it: parsed from its xDS node.

Istio's node id is `<type>~<ip>~<pod>.<namespace>~<namespace>.svc.<domain>`; metadata
carries LABELS, NAMESPACE, SERVICE_ACCOUNT, ... (as pilot-agent sends them).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

ROUTER = "router"
SIDECAR = "sidecar"
PROXY_TYPES = (ROUTER, SIDECAR)


class NodeError(ValueError):
    """The node cannot be served: its id or metadata is malformed."""


@dataclass(frozen=True)
class Proxy:
    id: str
    type: str  # "router" | "sidecar"
    ip: str
    pod: str
    namespace: str
    labels: Mapping[str, str] = field(default_factory=dict)
    metadata: Mapping[str, Any] = field(default_factory=dict)
    cluster_id: str = "Kubernetes"
    # Whether this proxy can hold a workload certificate (`default` over SDS). The server
    # decides: only streams that proved an identity get one. Without it, generated config
    # must never reference `default`, or Envoy would wait for it forever.
    workload_cert: bool = True

    @property
    def short(self) -> str:
        """`pod.namespace`, as istioctl shows proxies."""
        return f"{self.pod}.{self.namespace}"

    def group_key(self) -> tuple:
        """What this proxy's generated config can depend on. Proxies with equal keys
        get identical resources, so generation is shared between them."""
        return (
            self.type,
            self.namespace,
            tuple(sorted(self.labels.items())),
            self.ip if self.type == SIDECAR else "",
            self.workload_cert,
        )


def _metadata_dict(metadata: Any) -> dict[str, Any]:
    if metadata is None:
        return {}
    if isinstance(metadata, Mapping):
        return dict(metadata)
    # google.protobuf.Struct
    from google.protobuf.json_format import MessageToDict

    return MessageToDict(metadata)


def parse_node(node_id: str, metadata: Any = None) -> Proxy:
    """Build a Proxy from an Envoy node id and its metadata (Struct or dict)."""
    parts = node_id.split("~")
    if len(parts) != 4:
        raise NodeError(f"node id {node_id!r}: want <type>~<ip>~<pod>.<namespace>~<namespace>.svc.<domain>")
    ptype, ip, pod_ns, _domain = parts
    if ptype not in PROXY_TYPES:
        raise NodeError(f"node id {node_id!r}: type {ptype!r} is not one of {', '.join(PROXY_TYPES)}")
    md = _metadata_dict(metadata)
    pod, _, ns_from_id = pod_ns.rpartition(".")
    if not pod:
        pod, ns_from_id = pod_ns, ""
    namespace = str(md.get("NAMESPACE") or ns_from_id or "default")
    labels_raw = md.get("LABELS") or {}
    if not isinstance(labels_raw, Mapping):
        raise NodeError(f"node {node_id!r}: metadata LABELS must be a map of strings")
    labels = {str(k): str(v) for k, v in labels_raw.items()}
    ips = md.get("INSTANCE_IPS")
    if not ip and isinstance(ips, str) and ips:
        ip = ips.split(",")[0]
    return Proxy(
        id=node_id,
        type=ptype,
        ip=ip,
        pod=pod,
        namespace=namespace,
        labels=labels,
        metadata=md,
        cluster_id=str(md.get("CLUSTER_ID") or "Kubernetes"),
    )
