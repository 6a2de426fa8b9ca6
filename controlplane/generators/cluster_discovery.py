"""How a proxy finds the hosts of an outbound cluster: the cluster type a service's
resolution asks for (istiod's convertResolution and ClusterBuilder.buildCluster, read not
copied).

- ClientSideLB (Kubernetes Services, ServiceEntry `resolution: STATIC`): EDS, the
  endpoints come over ADS (endpoints.py).
- DNS (`resolution: DNS`): STRICT_DNS, every endpoint address (a name or an IP) is
  resolved and each answer is a host; DNSRoundRobin (`DNS_ROUND_ROBIN`): LOGICAL_DNS,
  one name, connections go to the first answer of the latest lookup. The endpoints ride
  inline in the cluster (`load_assignment`), so there is no EDS for them (a ServiceEntry
  without endpoints has its own host as one: model/service_entries.py). Lookups follow istiod: the address family of the proxy's IP,
  every 60 s (MeshConfig.dnsRefreshRate's default) unless the answer's TTL says
  otherwise (`respect_dns_ttl`). A DNS cluster without any endpoint is left out, as
  istiod leaves it out.
- Passthrough (headless Services, ServiceEntry `resolution: NONE`): ORIGINAL_DST on
  sidecars, to the address the application dialled; gateways have no such address and
  load balance over EDS instead.
"""
from __future__ import annotations

import ipaddress

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import extension_pb2 as core_extension_pb2
from envoy.extensions.network.dns_resolver.cares.v3 import cares_dns_resolver_pb2
from google.protobuf import duration_pb2, wrappers_pb2

from ..model.proxy import SIDECAR, Proxy
from ..model.services import Endpoint, Service
from .convert import typed

# istiod's model.Resolution names, as model/services.py carries them.
CLIENT_SIDE_LB = "ClientSideLB"
PASSTHROUGH = "Passthrough"
DNS = "DNS"
DNS_ROUND_ROBIN = "DNSRoundRobin"

# Cluster.DiscoveryType values (the Envoy messages have no type stubs: plain ints).
EDS: int = cluster_pb2.Cluster.EDS
STRICT_DNS: int = cluster_pb2.Cluster.STRICT_DNS
LOGICAL_DNS: int = cluster_pb2.Cluster.LOGICAL_DNS
ORIGINAL_DST: int = cluster_pb2.Cluster.ORIGINAL_DST

# MeshConfig.dnsRefreshRate's default.
DNS_REFRESH_RATE = duration_pb2.Duration(seconds=60)
DNS_JITTER = duration_pb2.Duration(nanos=100_000_000)
_CARES = core_extension_pb2.TypedExtensionConfig(
    name="envoy.network.dns_resolver.cares",
    typed_config=typed(cares_dns_resolver_pb2.CaresDnsResolverConfig(udp_max_queries=wrappers_pb2.UInt32Value(value=100))),
)


def passthrough(svc: Service) -> bool:
    """The application dials the endpoint itself: a headless Service or a ServiceEntry
    with `resolution: NONE`."""
    return svc.headless or svc.resolution == PASSTHROUGH


def discovery_type(svc: Service, proxy: Proxy) -> int:
    if svc.resolution == DNS:
        return STRICT_DNS
    if svc.resolution == DNS_ROUND_ROBIN:
        return LOGICAL_DNS
    if passthrough(svc) and proxy.type == SIDECAR:
        return ORIGINAL_DST
    return EDS


def uses_eds(svc: Service, proxy: Proxy) -> bool:
    return discovery_type(svc, proxy) == EDS


def is_dns(svc: Service) -> bool:
    return svc.resolution in (DNS, DNS_ROUND_ROBIN)


def first_for_logical_dns(svc: Service, endpoints: list[Endpoint]) -> list[Endpoint]:
    """Envoy's LOGICAL_DNS takes exactly one host (validation allows DNS_ROUND_ROBIN one
    endpoint at most)."""
    return endpoints[:1] if svc.resolution == DNS_ROUND_ROBIN else endpoints


def apply_dns(cluster: cluster_pb2.Cluster, proxy: Proxy) -> None:
    """istiod's lookup settings for STRICT_DNS and LOGICAL_DNS clusters: c-ares with at
    most 100 queries per UDP channel (PILOT_DNS_CARES_UDP_MAX_QUERIES), refreshes
    jittered by up to 100 ms (PILOT_DNS_JITTER_DURATION)."""
    cluster.dns_lookup_family = (
        cluster_pb2.Cluster.V6_ONLY if is_ipv6(proxy.ip) else cluster_pb2.Cluster.V4_ONLY
    )
    cluster.typed_dns_resolver_config.CopyFrom(_CARES)
    cluster.dns_jitter.CopyFrom(DNS_JITTER)
    cluster.dns_refresh_rate.CopyFrom(DNS_REFRESH_RATE)
    cluster.respect_dns_ttl = True


def is_ipv6(address: str) -> bool:
    try:
        return ipaddress.ip_address(address).version == 6
    except ValueError:
        return False
