"""A connected Envoy as the model sees it: parsed from its xDS node.

Istio's node id is `<type>~<ip>~<pod>.<namespace>~<namespace>.svc.<domain>`; metadata
carries LABELS, NAMESPACE, SERVICE_ACCOUNT, ... (as pilot-agent sends them).
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from .locality import NO_LOCALITY, Locality, from_labels

ROUTER = "router"
SIDECAR = "sidecar"
PROXY_TYPES = (ROUTER, SIDECAR)


class NodeError(ValueError):
    """The node cannot be served: its id or metadata is malformed."""


class ProxyRefused(Exception):
    """A connection observer refuses to serve the proxy (e.g. WorkloadGroup
    auto-registration, sources/autoregistration.py): the message says why. `permission`:
    the proxy's identity may not do what it asked (PERMISSION_DENIED), else a
    precondition failed (FAILED_PRECONDITION, e.g. its WorkloadGroup does not exist)."""

    def __init__(self, message: str, *, permission: bool):
        super().__init__(message)
        self.permission = permission


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
    # Where the proxy says it runs (locality.py): its workload's topology labels, else
    # the Envoy node's `locality`. When the mesh knows the proxy's pod, its pod's (or
    # Node's) locality wins: generators read MeshSnapshot.proxy_locality, not this.
    locality: Locality = NO_LOCALITY

    @cached_property
    def label_key(self) -> tuple[tuple[str, str], ...]:
        """The labels as a sorted tuple, made once per proxy: cache keys of every push
        read it for thousands of proxies."""
        return tuple(sorted(self.labels.items()))

    @property
    def short(self) -> str:
        """`pod.namespace`, as istioctl shows proxies."""
        return f"{self.pod}.{self.namespace}"

    def group_key(self) -> tuple[Any, ...]:
        """What this proxy's generated config can depend on. Proxies with equal keys
        get identical resources, so generation is shared between them."""
        return (
            self.type,
            self.namespace,
            self.label_key,
            self.ip if self.type == SIDECAR else "",
            self.workload_cert,
            self.locality,
        )


def _metadata_dict(metadata: Any) -> dict[str, Any]:
    if metadata is None:
        return {}
    if isinstance(metadata, Mapping):
        return dict(metadata)
    # google.protobuf.Struct
    from google.protobuf.json_format import MessageToDict

    out: dict[str, Any] = MessageToDict(metadata)
    return out


def _node_locality(locality: Any) -> Locality:
    """An Envoy node's `locality` (envoy.config.core.v3.Locality, a dict or "r/z/s")."""
    if locality is None:
        return NO_LOCALITY
    if isinstance(locality, str):
        return Locality.parse(locality)
    if isinstance(locality, Mapping):
        return Locality(str(locality.get("region") or ""), str(locality.get("zone") or ""),
                        str(locality.get("sub_zone") or locality.get("subZone") or ""))
    return Locality(str(locality.region), str(locality.zone), str(locality.sub_zone))


def parse_node(node_id: str, metadata: Any = None, locality: Any = None) -> Proxy:
    """Build a Proxy from an Envoy node id, its metadata (Struct or dict) and its
    locality. As istiod, the workload's topology labels win over the node's locality."""
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
        locality=from_labels(labels) or _node_locality(locality),
    )
