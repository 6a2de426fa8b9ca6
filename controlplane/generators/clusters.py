"""CDS: Clusters, per proxy type.

Both proxy types get a cluster for every service port and DestinationRule subset (see
destinations.py), of the type the service's resolution asks for (EDS, STRICT_DNS or
LOGICAL_DNS with the endpoints inline, ORIGINAL_DST: cluster_discovery.py), shaped by the
DestinationRule's traffic policy, with the client side TLS of auto_mtls.py (a TLS
origination without `sni` lets Envoy pick it from the Host: tls_origination.py), plus
`BlackHoleCluster`. Clusters of MESH_EXTERNAL ServiceEntry hosts say so in their
`istio` metadata (`external: true`).

Sidecars also get:
- `inbound|<port>||` for every port their workload serves: ORIGINAL_DST (the address the
  client dialled, restored by the inbound listener), connecting from 127.0.0.6 so that
  istio-init's `-o lo -s 127.0.0.6 -j RETURN` lets it reach the application instead of
  redirecting it back to 15006 (istiod >= 1.10; the application may listen on the pod IP);
- `PassthroughCluster` (ORIGINAL_DST) for outbound traffic to unknown destinations
  (outboundTrafficPolicy ALLOW_ANY) and `InboundPassthroughCluster` (ORIGINAL_DST from
  127.0.0.6) for inbound traffic to ports no service declares;
- headless services and ServiceEntry hosts with `resolution: NONE` as ORIGINAL_DST
  clusters instead of EDS (the application dialled one particular address).
"""
from __future__ import annotations

from typing import Any

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import address_pb2, protocol_pb2
from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2
from google.protobuf import duration_pb2
from google.protobuf.message import Message

from .. import names
from ..config.types.trafficpolicy import NO_POLICY, TrafficPolicy
from ..config.types.workloadentry import UNIX_PREFIX
from ..model import protocol
from ..model.mesh import MeshSnapshot
from ..model.meshconfig import LOCALHOST as LOCALHOST_MODE
from ..model.proxy import ROUTER, SIDECAR, Proxy
from . import auto_mtls, cluster_discovery, endpoints, locality_lb, tls_origination, traffic_policy
from .convert import ads_config_source, struct, typed
from .destinations import OutboundCluster, outbound_clusters
from .sidecar_inbound import InboundPort, inbound_ports

# MeshConfig.connectTimeout's default.
DEFAULT_CONNECT_TIMEOUT = duration_pb2.Duration(seconds=10)
# Where inbound traffic to the application comes from (istio-iptables lets it through).
INBOUND_PASSTHROUGH_BIND = "127.0.0.6"
LOCALHOST = "127.0.0.1"  # where inbound traffic goes with inboundTrafficPolicy LOCALHOST
# istiod's idle timeout for passthrough HTTP connections.
PASSTHROUGH_IDLE_TIMEOUT = duration_pb2.Duration(seconds=300)


def build(mesh: MeshSnapshot, proxy: Proxy) -> list[tuple[str, Message]]:
    if proxy.type not in (ROUTER, SIDECAR):
        return []
    out: list[tuple[str, Message]] = [
        (oc.name, c) for oc in outbound_clusters(mesh, proxy) if (c := outbound_cluster(mesh, proxy, oc)) is not None
    ]
    if proxy.type == SIDECAR:
        out += [(c.name, c) for c in inbound_clusters(mesh, proxy)]
    out.append((names.BLACKHOLE_CLUSTER, blackhole_cluster()))
    if proxy.type == SIDECAR:
        out.append((names.PASSTHROUGH_CLUSTER, passthrough_cluster(names.PASSTHROUGH_CLUSTER)))
        out.append(
            (
                names.INBOUND_PASSTHROUGH_CLUSTER,
                passthrough_cluster(names.INBOUND_PASSTHROUGH_CLUSTER, INBOUND_PASSTHROUGH_BIND),
            )
        )
    return out


def outbound_cluster(mesh: MeshSnapshot, proxy: Proxy, oc: OutboundCluster) -> cluster_pb2.Cluster | None:
    """The cluster of `oc`, of the type its service's resolution asks for
    (cluster_discovery.py); None for a DNS cluster without any endpoint (istiod leaves it out)."""
    c = cluster_pb2.Cluster(
        name=oc.name,
        connect_timeout=DEFAULT_CONNECT_TIMEOUT,
        common_lb_config=cluster_pb2.Cluster.CommonLbConfig(),
    )
    traffic_policy.apply(c, oc.policy, http2=protocol.is_http2(oc.protocol))
    ct = auto_mtls.cluster_tls(mesh, proxy, oc)
    c.type = cluster_discovery.discovery_type(oc.service, proxy)
    if c.type == cluster_discovery.ORIGINAL_DST:
        c.lb_policy = cluster_pb2.Cluster.CLUSTER_PROVIDED
    elif c.type == cluster_discovery.EDS:
        locality_lb.apply_cluster(c, oc.policy, mesh.mesh_config.locality_lb_setting)  # locality weights, when the assignment carries them
        c.eds_cluster_config.CopyFrom(
            cluster_pb2.Cluster.EdsClusterConfig(service_name=oc.name, eds_config=ads_config_source())
        )
    else:
        svc = oc.service
        eps = endpoints.select_endpoints(oc, mesh.service_endpoints(svc.hostname, oc.port.port))
        eps = cluster_discovery.first_for_logical_dns(svc, eps)
        if not eps:
            return None
        cluster_discovery.apply_dns(c, proxy)
        locality_lb.apply_cluster(c, oc.policy, mesh.mesh_config.locality_lb_setting)
        mtls = {(ep.address, ep.port) for ep in eps if auto_mtls.endpoint_wants_mtls(mesh, oc, ep, ct)}
        c.load_assignment.CopyFrom(endpoints.load_assignment(oc, eps, mtls, proxy, mesh.proxy_locality(proxy),
                                                               mesh.mesh_config.locality_lb_setting))
    auto_mtls.apply(c, ct)
    if ct.kind == auto_mtls.USER:
        tls_origination.apply_auto_sni(c, oc.policy.client_tls)
    c.metadata.filter_metadata["istio"].CopyFrom(struct(istio_metadata(oc)))
    return c


def istio_metadata(oc: OutboundCluster) -> dict[str, Any]:
    """What istiod records on a cluster for telemetry and istioctl: the service behind
    it, its port, and the DestinationRule (and subset) that shaped it."""
    svc = oc.service
    md: dict[str, Any] = {
        "default_original_port": oc.port.port,
        "services": [{"host": svc.hostname, "name": svc.name, "namespace": svc.namespace}],
    }
    if oc.rule is not None:
        md["config"] = destination_rule_path(oc.rule.namespace, oc.rule.name, oc.rule.version)
    if oc.subset:
        md["subset"] = oc.subset
    if svc.mesh_external and not oc.subset:
        md["external"] = True  # istiod marks clusters of MESH_EXTERNAL ServiceEntries
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


def _bind(address: str) -> address_pb2.BindConfig:
    return address_pb2.BindConfig(source_address=address_pb2.SocketAddress(address=address, port_value=0))


def inbound_cluster(ip: InboundPort, localhost: bool = False) -> cluster_pb2.Cluster:
    """`inbound|<port>||`: to the application at the address the client dialled (the pod
    IP and the workload port), from 127.0.0.6; with the mesh config's inboundTrafficPolicy
    LOCALHOST (`localhost`), to 127.0.0.1 and the workload port (STATIC, as istiod). A
    Sidecar's connection pool for the port shapes it as a DestinationRule's would."""
    c = cluster_pb2.Cluster(
        name=ip.cluster,
        connect_timeout=DEFAULT_CONNECT_TIMEOUT,
        common_lb_config=cluster_pb2.Cluster.CommonLbConfig(),
    )
    policy = TrafficPolicy(connection_pool=ip.connection_pool) if ip.connection_pool is not None else NO_POLICY
    traffic_policy.apply(c, policy, http2=protocol.is_http2(ip.protocol))
    if ip.default_endpoint:
        # A Sidecar ingress listener's defaultEndpoint (`127.0.0.1:8080`; `0.0.0.0` is the
        # pod IP; `unix:///path` a Unix domain socket).
        c.type = cluster_pb2.Cluster.STATIC
        c.load_assignment.cluster_name = ip.cluster
        ep = c.load_assignment.endpoints.add().lb_endpoints.add().endpoint
        if ip.default_endpoint.startswith(UNIX_PREFIX):
            ep.address.pipe.path = ip.default_endpoint[len(UNIX_PREFIX):]
        else:
            host, _, port = ip.default_endpoint.rpartition(":")
            host = host.strip("[]") or LOCALHOST
            ep.address.socket_address.address = host
            ep.address.socket_address.port_value = int(port)
            if host not in (LOCALHOST, "::1"):
                # The pod's own address: from 127.0.0.6, or iptables would send it back to 15006.
                c.upstream_bind_config.CopyFrom(_bind(INBOUND_PASSTHROUGH_BIND))
    elif localhost:
        c.type = cluster_pb2.Cluster.STATIC
        c.load_assignment.cluster_name = ip.cluster
        ep = c.load_assignment.endpoints.add().lb_endpoints.add().endpoint
        ep.address.socket_address.address, ep.address.socket_address.port_value = LOCALHOST, ip.port
    else:
        c.type = cluster_pb2.Cluster.ORIGINAL_DST
        c.upstream_bind_config.CopyFrom(_bind(INBOUND_PASSTHROUGH_BIND))
        c.lb_policy = cluster_pb2.Cluster.CLUSTER_PROVIDED
    svc = ip.service
    c.metadata.filter_metadata["istio"].CopyFrom(
        struct({"services": [{"host": svc.hostname, "name": svc.name, "namespace": svc.namespace}]})
    )
    return c


def inbound_clusters(mesh: MeshSnapshot, proxy: Proxy) -> list[cluster_pb2.Cluster]:
    localhost = mesh.mesh_config.inbound_traffic_policy == LOCALHOST_MODE
    return [inbound_cluster(ip, localhost) for ip in inbound_ports(mesh, proxy)]


def passthrough_cluster(name: str, bind: str = "") -> cluster_pb2.Cluster:
    """ORIGINAL_DST to wherever the connection was going; HTTP keeps the downstream's
    protocol version."""
    c = cluster_pb2.Cluster(
        name=name,
        type=cluster_pb2.Cluster.ORIGINAL_DST,
        connect_timeout=DEFAULT_CONNECT_TIMEOUT,
        lb_policy=cluster_pb2.Cluster.CLUSTER_PROVIDED,
    )
    if bind:
        c.upstream_bind_config.CopyFrom(_bind(bind))
    opts = http_protocol_options_pb2.HttpProtocolOptions(
        common_http_protocol_options=protocol_pb2.HttpProtocolOptions(idle_timeout=PASSTHROUGH_IDLE_TIMEOUT),
    )
    opts.use_downstream_protocol_config.http_protocol_options.SetInParent()
    opts.use_downstream_protocol_config.http2_protocol_options.SetInParent()
    c.typed_extension_protocol_options[traffic_policy.HTTP_PROTOCOL_OPTIONS].CopyFrom(typed(opts))
    return c
