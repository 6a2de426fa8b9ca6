"""Network and HTTP filters as istiod configures them: the HTTP connection manager with
its filter chain, and tcp_proxy.

Only filters the upstream Envoy binary ships are used: istiod's own extensions
(istio.metadata_exchange, istio.stats, istio.alpn) exist only in Istio's proxy build.
"""
from __future__ import annotations

from envoy.config.core.v3 import protocol_pb2
from envoy.config.listener.v3 import listener_components_pb2
from envoy.config.route.v3 import route_pb2
from envoy.extensions.filters.http.cors.v3 import cors_pb2
from envoy.extensions.filters.http.fault.v3 import fault_pb2
from envoy.extensions.filters.http.grpc_stats.v3 import config_pb2 as grpc_stats_pb2
from envoy.extensions.filters.http.grpc_web.v3 import grpc_web_pb2
from envoy.extensions.filters.http.router.v3 import router_pb2
from envoy.extensions.filters.listener.http_inspector.v3 import http_inspector_pb2
from envoy.extensions.filters.listener.original_dst.v3 import original_dst_pb2
from envoy.extensions.filters.listener.tls_inspector.v3 import tls_inspector_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2
from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2
from envoy.extensions.request_id.uuid.v3 import uuid_pb2
from google.protobuf import duration_pb2, wrappers_pb2
from google.protobuf.message import Message

from ..model import protocol
from .convert import ads_config_source, typed

HTTP_CONNECTION_MANAGER = "envoy.filters.network.http_connection_manager"
TCP_PROXY = "envoy.filters.network.tcp_proxy"
ROUTER = "envoy.filters.http.router"
FAULT = "envoy.filters.http.fault"
CORS = "envoy.filters.http.cors"
GRPC_STATS = "envoy.filters.http.grpc_stats"
GRPC_WEB = "envoy.filters.http.grpc_web"

# Istio's name for the Server header it sets on gateways and inbound sidecars.
ISTIO_SERVER_NAME = "istio-envoy"


def http_filters(proto: str) -> list[hcm_pb2.HttpFilter]:
    """fault and cors are always present because routes enable them per route
    (typed_per_filter_config); the router comes last."""
    out = []
    if proto == protocol.GRPC_WEB:
        out.append(hcm_pb2.HttpFilter(name=GRPC_WEB, typed_config=typed(grpc_web_pb2.GrpcWeb())))
    grpc_stats = grpc_stats_pb2.FilterConfig(
        emit_filter_state=True, stats_for_all_methods=wrappers_pb2.BoolValue(value=False)
    )
    out.append(hcm_pb2.HttpFilter(name=GRPC_STATS, typed_config=typed(grpc_stats)))
    out.append(hcm_pb2.HttpFilter(name=FAULT, typed_config=typed(fault_pb2.HTTPFault())))
    out.append(hcm_pb2.HttpFilter(name=CORS, typed_config=typed(cors_pb2.Cors())))
    out.append(hcm_pb2.HttpFilter(name=ROUTER, typed_config=typed(router_pb2.Router())))
    return out


def gateway_http_connection_manager(stat_prefix: str, route_name: str, proto: str) -> hcm_pb2.HttpConnectionManager:
    """The HCM istiod puts on a gateway's plaintext HTTP listener."""
    hcm = hcm_pb2.HttpConnectionManager(
        codec_type=hcm_pb2.HttpConnectionManager.AUTO,
        stat_prefix=stat_prefix,
        rds=hcm_pb2.Rds(route_config_name=route_name, config_source=ads_config_source()),
        http_filters=http_filters(proto),
        # Gateways face clients directly: the peer address is the client's.
        use_remote_address=wrappers_pb2.BoolValue(value=True),
        # Mesh default path normalization (BASE); escaped slashes pass as they are.
        normalize_path=wrappers_pb2.BoolValue(value=True),
        path_with_escaped_slashes_action=hcm_pb2.HttpConnectionManager.KEEP_UNCHANGED,
        upgrade_configs=[hcm_pb2.HttpConnectionManager.UpgradeConfig(upgrade_type="websocket")],
        # Long-lived streams (gRPC, websockets) must not be cut by Envoy's 5 min default.
        stream_idle_timeout=duration_pb2.Duration(),
        forward_client_cert_details=hcm_pb2.HttpConnectionManager.SANITIZE_SET,
        set_current_client_cert_details=hcm_pb2.HttpConnectionManager.SetCurrentClientCertDetails(
            subject=wrappers_pb2.BoolValue(value=True), cert=True, dns=True, uri=True
        ),
        server_name=ISTIO_SERVER_NAME,
        http_protocol_options=protocol_pb2.Http1ProtocolOptions(),
        request_id_extension=hcm_pb2.RequestIDExtension(
            typed_config=typed(
                uuid_pb2.UuidRequestIdConfig(use_request_id_for_trace_sampling=wrappers_pb2.BoolValue(value=True))
            )
        ),
    )
    return hcm


def sidecar_http_connection_manager(
    stat_prefix: str, proto: str, *, inbound: bool, rds: str = "", route_config: route_pb2.RouteConfiguration | None = None
) -> hcm_pb2.HttpConnectionManager:
    """The HCM of a sidecar: outbound chains fetch route configuration `<port>` over RDS,
    inbound chains carry theirs inline and tell the application who called (XFCC)."""
    hcm = hcm_pb2.HttpConnectionManager(
        codec_type=hcm_pb2.HttpConnectionManager.AUTO,
        stat_prefix=stat_prefix,
        http_filters=http_filters(proto),
        # The peer of a sidecar is the local application or another proxy, never a client
        # whose address should be trusted as the "remote" one.
        use_remote_address=wrappers_pb2.BoolValue(value=False),
        normalize_path=wrappers_pb2.BoolValue(value=True),
        path_with_escaped_slashes_action=hcm_pb2.HttpConnectionManager.KEEP_UNCHANGED,
        upgrade_configs=[hcm_pb2.HttpConnectionManager.UpgradeConfig(upgrade_type="websocket")],
        stream_idle_timeout=duration_pb2.Duration(),
        request_id_extension=hcm_pb2.RequestIDExtension(
            typed_config=typed(
                uuid_pb2.UuidRequestIdConfig(use_request_id_for_trace_sampling=wrappers_pb2.BoolValue(value=True))
            )
        ),
    )
    if rds:
        hcm.rds.CopyFrom(hcm_pb2.Rds(route_config_name=rds, config_source=ads_config_source()))
    elif route_config is not None:
        hcm.route_config.CopyFrom(route_config)
    if inbound:
        # istiod: "istio-envoy" inbound, Envoy's default ("envoy") outbound.
        hcm.server_name = ISTIO_SERVER_NAME
        hcm.forward_client_cert_details = hcm_pb2.HttpConnectionManager.APPEND_FORWARD
        hcm.set_current_client_cert_details.CopyFrom(
            hcm_pb2.HttpConnectionManager.SetCurrentClientCertDetails(
                subject=wrappers_pb2.BoolValue(value=True), uri=True, dns=True
            )
        )
        if protocol.is_http2(proto):
            hcm.http2_protocol_options.SetInParent()
    return hcm


# --- listener filters ----------------------------------------------------------------

ORIGINAL_DST = "envoy.filters.listener.original_dst"
TLS_INSPECTOR = "envoy.filters.listener.tls_inspector"
HTTP_INSPECTOR = "envoy.filters.listener.http_inspector"


def original_dst_filter() -> listener_components_pb2.ListenerFilter:
    return listener_components_pb2.ListenerFilter(name=ORIGINAL_DST, typed_config=typed(original_dst_pb2.OriginalDst()))


def tls_inspector_filter() -> listener_components_pb2.ListenerFilter:
    return listener_components_pb2.ListenerFilter(name=TLS_INSPECTOR, typed_config=typed(tls_inspector_pb2.TlsInspector()))


def http_inspector_filter() -> listener_components_pb2.ListenerFilter:
    return listener_components_pb2.ListenerFilter(name=HTTP_INSPECTOR, typed_config=typed(http_inspector_pb2.HttpInspector()))


def network_filter(name: str, config: Message) -> listener_components_pb2.Filter:
    return listener_components_pb2.Filter(name=name, typed_config=typed(config))


def tcp_proxy(stat_prefix: str, clusters: list[tuple[str, int]]) -> tcp_proxy_pb2.TcpProxy:
    """One (cluster, weight) pair routes to that cluster; several split by weight."""
    out = tcp_proxy_pb2.TcpProxy(stat_prefix=stat_prefix)
    if len(clusters) == 1:
        out.cluster = clusters[0][0]
    else:
        for name, weight in clusters:
            out.weighted_clusters.clusters.add(name=name, weight=weight)
    return out
