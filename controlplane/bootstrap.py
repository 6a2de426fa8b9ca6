"""Envoy bootstrap for a proxy that gets its configuration from meshd.

The node id and metadata follow what pilot-agent writes for Istio proxies, so meshd
(and anyone reading /debug or logs) sees the same identity istiod would. Static parts
mirror Istio's bootstrap: the `xds-grpc` ADS cluster, admin on loopback, the Prometheus
listener (15090) and the readiness listener (15021, answered from Envoy's own /ready
because there is no pilot-agent here).
"""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Any

from . import names

HTTP2_OPTIONS = {
    "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
        "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
        "explicit_http_config": {"http2_protocol_options": {}},
    }
}
ROUTER_FILTER = {
    "name": "envoy.filters.http.router",
    "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"},
}


@dataclass
class BootstrapParams:
    proxy_type: str  # "router" | "sidecar"
    namespace: str
    pod: str
    ip: str
    xds_address: str  # host:port
    labels: dict[str, str] = field(default_factory=dict)
    admin_port: int = names.PORT_ENVOY_ADMIN
    service_account: str = "default"
    cluster_id: str = "Kubernetes"
    stats_port: int = names.PORT_STATS  # 0: no Prometheus listener
    health_port: int = names.PORT_HEALTH  # 0: no readiness listener
    xds_transport: str = "sotw"  # the delta protocol comes with the push-engine work


def parse_labels(text: str) -> dict[str, str]:
    """`k=v,k2=v2` -> dict; raises ValueError naming the bad item."""
    out: dict[str, str] = {}
    for item in filter(None, (p.strip() for p in text.split(","))):
        k, sep, v = item.partition("=")
        if not sep or not k:
            raise ValueError(f"label {item!r} is not key=value")
        out[k] = v
    return out


def _address_cluster(name: str, host: str, port: int, http2: bool = False) -> dict[str, Any]:
    try:
        ipaddress.ip_address(host)
        kind = "STATIC"
    except ValueError:
        kind = "STRICT_DNS"
    c: dict[str, Any] = {
        "name": name,
        "type": kind,
        "connect_timeout": "1s",
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {"socket_address": {"address": host, "port_value": port}}}}]}],
        },
    }
    if http2:
        c["typed_extension_protocol_options"] = HTTP2_OPTIONS
    return c


def _static_listener(name: str, port: int, prefix: str, cluster: str, rewrite: str | None = None) -> dict[str, Any]:
    route: dict[str, Any] = {"cluster": cluster}
    if rewrite:
        route["prefix_rewrite"] = rewrite
    return {
        "name": name,
        "address": {"socket_address": {"address": "0.0.0.0", "port_value": port}},
        "filter_chains": [
            {
                "filters": [
                    {
                        "name": "envoy.filters.network.http_connection_manager",
                        "typed_config": {
                            "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                            "stat_prefix": name,
                            "route_config": {
                                "virtual_hosts": [
                                    {"name": "backend", "domains": ["*"], "routes": [{"match": {"prefix": prefix}, "route": route}]}
                                ]
                            },
                            "http_filters": [ROUTER_FILTER],
                        },
                    }
                ]
            }
        ],
    }


def build_bootstrap(p: BootstrapParams) -> dict[str, Any]:
    host, _, port = p.xds_address.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"--xds-address {p.xds_address!r} is not host:port")
    host = host.strip("[]")
    node_id = names.node_id(p.proxy_type, p.ip, p.pod, p.namespace)
    app = p.labels.get("app") or p.labels.get("istio") or p.pod
    metadata: dict[str, Any] = {
        "NAMESPACE": p.namespace,
        "NAME": p.pod,
        "POD_NAME": p.pod,
        "LABELS": dict(p.labels),
        "INSTANCE_IPS": p.ip,
        "SERVICE_ACCOUNT": p.service_account,
        "CLUSTER_ID": p.cluster_id,
        "MESH_ID": names.DOMAIN_SUFFIX,
        "WORKLOAD_NAME": app,
        "ISTIO_VERSION": "meshd",
    }
    if p.proxy_type == "sidecar":
        metadata["INTERCEPTION_MODE"] = "REDIRECT"
    ads_source = {"ads": {}, "resource_api_version": "V3", "initial_fetch_timeout": "0s"}
    api_type = "DELTA_GRPC" if p.xds_transport == "delta" else "GRPC"
    clusters = [_address_cluster("xds-grpc", host, int(port), http2=True)]
    listeners = []
    if p.stats_port or p.health_port:
        clusters.append(_address_cluster("prometheus_stats", "127.0.0.1", p.admin_port))
    if p.stats_port:
        listeners.append(_static_listener(f"0.0.0.0_{p.stats_port}", p.stats_port, "/stats/prometheus", "prometheus_stats"))
    if p.health_port:
        listeners.append(_static_listener(f"0.0.0.0_{p.health_port}", p.health_port, "/healthz/ready", "prometheus_stats", rewrite="/ready"))
    # The xds-grpc cluster gets generous circuit breakers, as in Istio's bootstrap:
    # thousands of resources are pushed over one connection.
    clusters[0]["circuit_breakers"] = {"thresholds": [{"priority": "DEFAULT", "max_connections": 100000, "max_pending_requests": 100000, "max_requests": 100000}]}
    clusters[0]["upstream_connection_options"] = {"tcp_keepalive": {"keepalive_time": 300}}
    return {
        "node": {"id": node_id, "cluster": f"{app}.{p.namespace}", "metadata": metadata},
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": p.admin_port}}},
        "dynamic_resources": {
            "ads_config": {
                "api_type": api_type,
                "transport_api_version": "V3",
                "grpc_services": [{"envoy_grpc": {"cluster_name": "xds-grpc"}}],
                "set_node_on_first_message_only": True,
            },
            "cds_config": ads_source,
            "lds_config": ads_source,
        },
        "static_resources": {"clusters": clusters, "listeners": listeners},
        "layered_runtime": {
            "layers": [{"name": "global config", "static_layer": {"overload.global_downstream_max_connections": 2147483647}}]
        },
    }
