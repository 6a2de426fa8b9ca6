"""CDS: Clusters, per proxy type.

Router (ingress gateway): an EDS cluster for every service port and DestinationRule
subset (see destinations.py), shaped by the DestinationRule's traffic policy, plus
`BlackHoleCluster`. Sidecars: not built yet.
"""
from __future__ import annotations

from google.protobuf import duration_pb2
from google.protobuf.message import Message

from envoy.config.cluster.v3 import cluster_pb2

from .. import names
from ..model.mesh import MeshSnapshot
from ..model.proxy import ROUTER, Proxy
from . import protocol, traffic_policy
from .convert import ads_config_source, struct
from .destinations import OutboundCluster, outbound_clusters

# MeshConfig.connectTimeout's default.
DEFAULT_CONNECT_TIMEOUT = duration_pb2.Duration(seconds=10)


def build(mesh: MeshSnapshot, proxy: Proxy) -> list[tuple[str, Message]]:
    if proxy.type != ROUTER:
        return []  # sidecar clusters come with sidecar support
    out: list[tuple[str, Message]] = [(oc.name, eds_cluster(oc)) for oc in outbound_clusters(mesh, proxy)]
    out.append((names.BLACKHOLE_CLUSTER, blackhole_cluster()))
    return out


def eds_cluster(oc: OutboundCluster) -> cluster_pb2.Cluster:
    c = cluster_pb2.Cluster(
        name=oc.name,
        type=cluster_pb2.Cluster.EDS,
        eds_cluster_config=cluster_pb2.Cluster.EdsClusterConfig(service_name=oc.name, eds_config=ads_config_source()),
        connect_timeout=DEFAULT_CONNECT_TIMEOUT,
        common_lb_config=cluster_pb2.Cluster.CommonLbConfig(),
    )
    policy = traffic_policy.effective_policy(oc.rule.spec if oc.rule else None, oc.port.port, oc.subset)
    traffic_policy.apply(c, policy, http2=protocol.is_http2(oc.protocol))
    c.metadata.filter_metadata["istio"].CopyFrom(struct(istio_metadata(oc)))
    return c


def istio_metadata(oc: OutboundCluster) -> dict:
    """What istiod records on a cluster for telemetry and istioctl: the service behind
    it, its port, and the DestinationRule (and subset) that shaped it."""
    svc = oc.service
    md: dict = {
        "default_original_port": oc.port.port,
        "services": [{"host": svc.hostname, "name": svc.name, "namespace": svc.namespace}],
    }
    if oc.rule is not None:
        md["config"] = destination_rule_path(oc.rule.namespace, oc.rule.name, oc.rule.version)
    if oc.subset:
        md["subset"] = oc.subset
    return md


def destination_rule_path(namespace: str, name: str, version: str = "v1") -> str:
    return f"/apis/networking.istio.io/{version}/namespaces/{namespace}/destination-rule/{name}"


def blackhole_cluster() -> cluster_pb2.Cluster:
    """A cluster without endpoints: traffic sent to it fails at once (503 / reset)."""
    return cluster_pb2.Cluster(
        name=names.BLACKHOLE_CLUSTER,
        type=cluster_pb2.Cluster.STATIC,
        connect_timeout=DEFAULT_CONNECT_TIMEOUT,
        lb_policy=cluster_pb2.Cluster.ROUND_ROBIN,
    )
