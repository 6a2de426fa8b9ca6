"""A static Envoy bootstrap that behaves like a sidecar's interception listeners.

No control plane: it exists to prove the bed's interception works, and as a reference for
what meshd's sidecar config must do in the same pod. Istio's names are kept:

- `virtualInbound` on 0.0.0.0:15006 - the original_dst listener filter restores the
  address the client dialled (before the PREROUTING REDIRECT); HTTP goes to the
  `InboundPassthroughCluster` (ORIGINAL_DST), bound to source 127.0.0.6 so that iptables
  (`-o lo -s 127.0.0.6/32 -j RETURN`) lets it reach the app instead of redirecting it
  back to 15006. Adds the response header `x-testbed-sidecar: inbound-<pod>`.
- `virtualOutbound` on 0.0.0.0:15001 - the same trick for what the app dials; TCP proxied
  to `PassthroughCluster` (ORIGINAL_DST). Envoy runs as uid 1337, so its upstream
  connection is not redirected again (`-m owner --uid-owner 1337 -j RETURN`).

Stats to look at: listener.0.0.0.0_15006.downstream_cx_total,
listener.0.0.0.0_15001.downstream_cx_total, cluster.PassthroughCluster.upstream_cx_total,
cluster.InboundPassthroughCluster.upstream_cx_total.
"""
from __future__ import annotations

from typing import Any

ORIGINAL_DST_FILTER = {
    "name": "envoy.filters.listener.original_dst",
    "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.listener.original_dst.v3.OriginalDst"},
}
INBOUND_PASSTHROUGH_SOURCE = "127.0.0.6"


def _addr(host: str, port: int) -> dict[str, Any]:
    return {"socket_address": {"address": host, "port_value": port}}


def _original_dst_cluster(name: str, bind_source: str | None = None) -> dict[str, Any]:
    c: dict[str, Any] = {
        "name": name,
        "type": "ORIGINAL_DST",
        "lb_policy": "CLUSTER_PROVIDED",
        "connect_timeout": "1s",
    }
    if bind_source:
        c["upstream_bind_config"] = {"source_address": {"address": bind_source, "port_value": 0}}
    return c


def static_sidecar_bootstrap(pod_name: str, admin_port: int = 15000, inbound_port: int = 15006,
                             outbound_port: int = 15001, inbound: bool = True, outbound: bool = True
                             ) -> dict[str, Any]:
    listeners = []
    if inbound:
        listeners.append({
            "name": "virtualInbound",
            "address": _addr("0.0.0.0", inbound_port),
            "listener_filters": [ORIGINAL_DST_FILTER],
            "filter_chains": [{
                "filters": [{
                    "name": "envoy.filters.network.http_connection_manager",
                    "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                        "stat_prefix": "inbound_0.0.0.0_" + str(inbound_port),
                        "route_config": {
                            "name": "inbound",
                            "virtual_hosts": [{
                                "name": "inbound|http",
                                "domains": ["*"],
                                "routes": [{"match": {"prefix": "/"},
                                            "route": {"cluster": "InboundPassthroughCluster", "timeout": "5s"}}],
                            }],
                            "response_headers_to_add": [
                                {"header": {"key": "x-testbed-sidecar", "value": f"inbound-{pod_name}"}}],
                        },
                        "http_filters": [{
                            "name": "envoy.filters.http.router",
                            "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"},
                        }],
                    },
                }],
            }],
        })
    if outbound:
        listeners.append({
            "name": "virtualOutbound",
            "address": _addr("0.0.0.0", outbound_port),
            "listener_filters": [ORIGINAL_DST_FILTER],
            "filter_chains": [{
                "filters": [{
                    "name": "envoy.filters.network.tcp_proxy",
                    "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
                        "stat_prefix": "PassthroughCluster",
                        "cluster": "PassthroughCluster",
                    },
                }],
            }],
        })
    return {
        "node": {"id": f"sidecar~static~{pod_name}.testbed~testbed.svc.cluster.local", "cluster": pod_name},
        "admin": {"address": _addr("127.0.0.1", admin_port)},
        "static_resources": {
            "listeners": listeners,
            "clusters": [
                _original_dst_cluster("PassthroughCluster"),
                _original_dst_cluster("InboundPassthroughCluster", bind_source=INBOUND_PASSTHROUGH_SOURCE),
            ],
        },
    }
