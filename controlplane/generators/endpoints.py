"""EDS: a ClusterLoadAssignment for every EDS cluster CDS sends, per proxy type.

Every cluster gets one, even without endpoints: Envoy keeps a cluster warming until
its assignment arrives. Only ready endpoints are sent (istiod's default); a subset
cluster keeps the endpoints whose labels carry the subset's labels.

Routers and sidecars get the same outbound clusters (sidecars reach headless services
and ServiceEntry hosts with `resolution: NONE` through ORIGINAL_DST clusters, which have
no assignment; DNS clusters carry theirs inline: cluster_discovery.py). Endpoints that should be
reached over Istio mTLS carry `envoy.transport_socket_match: {tlsMode: istio}` metadata,
which the clusters' transport_socket_matches key on (auto_mtls.py).

Endpoints are grouped by locality (region/zone/subzone of their pod, or of its Node;
sorted; weight = the sum of the endpoints' weights, 1 each unless a ServiceEntry
endpoint or WorkloadEntry gives one). The DestinationRule's `localityLbSetting` then sets
priorities or locality weights relative to the proxy's own locality (its pod's when the
mesh knows it: MeshSnapshot.proxy_locality; locality_lb.py), so an assignment can differ
between proxies in different localities.
"""
from __future__ import annotations

from collections.abc import Iterable

from envoy.config.core.v3 import address_pb2, health_check_pb2
from envoy.config.endpoint.v3 import endpoint_components_pb2, endpoint_pb2
from google.protobuf import wrappers_pb2
from google.protobuf.message import Message

from .. import names
from ..config.types.trafficpolicy import LocalityLbSetting, TrafficPolicy
from ..model.locality import Locality
from ..model.mesh import MeshSnapshot
from ..model.proxy import ROUTER, SIDECAR, Proxy
from ..model.services import Endpoint, labels_match
from . import auto_mtls, cluster_discovery, locality_lb
from .destinations import OutboundCluster, outbound_clusters


def build(mesh: MeshSnapshot, proxy: Proxy) -> list[tuple[str, Message]]:
    if proxy.type not in (ROUTER, SIDECAR):
        return []
    out: list[tuple[str, Message]] = []
    for oc in outbound_clusters(mesh, proxy):
        if not cluster_discovery.uses_eds(oc.service, proxy):
            continue  # ORIGINAL_DST has no assignment; DNS clusters carry theirs inline
        ct = auto_mtls.cluster_tls(mesh, proxy, oc)
        eps = cluster_endpoints(mesh, oc)
        mtls = {(ep.address, ep.port) for ep in eps if auto_mtls.endpoint_wants_mtls(mesh, oc, ep, ct)}
        out.append((oc.name, load_assignment(oc, eps, mtls, proxy, mesh.proxy_locality(proxy),
                                             mesh.mesh_config.locality_lb_setting)))
    return out


def cluster_policy(oc: OutboundCluster) -> TrafficPolicy:
    """The effective traffic policy of the cluster (what its CDS side applies too)."""
    return oc.policy


def cluster_endpoints(mesh: MeshSnapshot, oc: OutboundCluster) -> list[Endpoint]:
    """Ready endpoints of the cluster, each address once, sorted so that the order of
    EndpointSlices cannot change the bytes (and so the version) of the assignment."""
    return select_endpoints(oc, mesh.service_endpoints(oc.service.hostname, oc.port.port))


def select_endpoints(oc: OutboundCluster, endpoints: Iterable[Endpoint]) -> list[Endpoint]:
    """The ready endpoints of `endpoints` in the cluster's subset, each address once, sorted."""
    chosen: dict[tuple[str, int], Endpoint] = {}
    for ep in endpoints:
        if ep.ready and labels_match(oc.subset_labels, ep.labels):
            chosen.setdefault((ep.address, ep.port), ep)
    return [chosen[k] for k in sorted(chosen)]


def load_assignment(
    oc: OutboundCluster, endpoints: list[Endpoint], mtls: set[tuple[str, int]] | None = None,
    proxy: Proxy | None = None, locality: Locality | None = None,
    mesh_locality: LocalityLbSetting = locality_lb.MESH_DEFAULT,
) -> endpoint_pb2.ClusterLoadAssignment:
    """The cluster's assignment; with `proxy`, prioritized / weighted for its locality
    (`locality`, as the mesh places the proxy; the proxy's own word when not given)."""
    cla = endpoint_pb2.ClusterLoadAssignment(cluster_name=oc.name)
    if not endpoints:
        return cla
    groups: dict[Locality, list[Endpoint]] = {}
    for ep in endpoints:
        groups.setdefault(ep.locality, []).append(ep)
    locs = sorted(groups)
    ordered = [groups[loc] for loc in locs]
    for loc, eps in zip(locs, ordered, strict=True):
        llb = cla.endpoints.add()
        llb.locality.SetInParent()
        llb.locality.region, llb.locality.zone, llb.locality.sub_zone = loc
        # gRPC xDS clients drop a locality whose weight is 0 (or unset).
        llb.load_balancing_weight.value = sum(_weight(ep) for ep in eps)
        for ep in eps:
            lb = _lb_endpoint(ep)
            if mtls and (ep.address, ep.port) in mtls:
                lb.metadata.filter_metadata[names.TRANSPORT_SOCKET_MATCH].CopyFrom(auto_mtls.endpoint_metadata())
            llb.lb_endpoints.append(lb)
    if proxy is not None:
        locality_lb.apply(cla, ordered, cluster_policy(oc), proxy.locality if locality is None else locality,
                          proxy.labels, mesh_locality)
    return cla


def _lb_endpoint(ep: Endpoint) -> endpoint_components_pb2.LbEndpoint:
    return endpoint_components_pb2.LbEndpoint(
        endpoint=endpoint_components_pb2.Endpoint(
            address=address_pb2.Address(
                socket_address=address_pb2.SocketAddress(address=ep.address, port_value=ep.port)
            )
        ),
        health_status=health_check_pb2.HEALTHY,
        load_balancing_weight=wrappers_pb2.UInt32Value(value=_weight(ep)),
    )


def _weight(ep: Endpoint) -> int:
    """A ServiceEntry endpoint's or WorkloadEntry's `weight`; 1 when not given."""
    return ep.weight if ep.weight > 0 else 1
