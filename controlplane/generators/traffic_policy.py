"""DestinationRule traffic policies applied to a Cluster: connection pool, load balancer
and outlier detection. Which policy applies to a cluster (the rule's, its port-level
entry, the subset's) is decided once, by the typed rule (config/types/trafficpolicy.py,
DestinationRule.policy_for); destinations.py hands it to every builder on the cluster.
"""
from __future__ import annotations

from envoy.config.cluster.v3 import circuit_breaker_pb2, cluster_pb2, outlier_detection_pb2
from envoy.config.core.v3 import protocol_pb2
from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2
from envoy.type.v3 import percent_pb2
from google.protobuf import wrappers_pb2

from ..config.types.trafficpolicy import (
    ConnectionPoolSettings,
    HttpSettings,
    LoadBalancerSettings,
    OutlierDetection,
    TrafficPolicy,
)
from .convert import proto_duration, typed

MAX_UINT32 = 2**32 - 1
HTTP_PROTOCOL_OPTIONS = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"

_LB_POLICIES = {
    "ROUND_ROBIN": cluster_pb2.Cluster.ROUND_ROBIN,
    "LEAST_REQUEST": cluster_pb2.Cluster.LEAST_REQUEST,
    "LEAST_CONN": cluster_pb2.Cluster.LEAST_REQUEST,  # deprecated Istio alias
    "RANDOM": cluster_pb2.Cluster.RANDOM,
}
_NO_POOL = ConnectionPoolSettings()
_NO_LB = LoadBalancerSettings()


# --- applying a policy to a Cluster --------------------------------------------------


def default_thresholds() -> circuit_breaker_pb2.CircuitBreakers.Thresholds:
    """istiod lifts Envoy's small circuit breaker defaults (e.g. 3 parallel retries), which
    cause 503s during pod churn, to the maximum unless a DestinationRule says otherwise."""
    return circuit_breaker_pb2.CircuitBreakers.Thresholds(
        max_connections=wrappers_pb2.UInt32Value(value=MAX_UINT32),
        max_pending_requests=wrappers_pb2.UInt32Value(value=MAX_UINT32),
        max_requests=wrappers_pb2.UInt32Value(value=MAX_UINT32),
        max_retries=wrappers_pb2.UInt32Value(value=MAX_UINT32),
        track_remaining=True,
    )


def apply(cluster: cluster_pb2.Cluster, policy: TrafficPolicy, http2: bool) -> None:
    """Apply connection pool, load balancer and outlier detection settings."""
    pool = policy.connection_pool or _NO_POOL
    http_options = _apply_connection_pool(cluster, pool)
    _apply_outlier_detection(cluster, policy.outlier_detection)
    _apply_load_balancer(cluster, policy.load_balancer or _NO_LB)
    _set_http_protocol_options(cluster, http_options, _http2_wanted(pool, http2), pool.http)


def _positive(n: int | None) -> int | None:
    return n if n is not None and n > 0 else None


def _apply_connection_pool(cluster: cluster_pb2.Cluster, pool: ConnectionPoolSettings) -> protocol_pb2.HttpProtocolOptions:
    thresholds = default_thresholds()
    common = protocol_pb2.HttpProtocolOptions()
    http, tcp = pool.http, pool.tcp
    if (n := _positive(http.http2_max_requests)) is not None:
        thresholds.max_requests.value = n
    if (n := _positive(http.http1_max_pending_requests)) is not None:
        thresholds.max_pending_requests.value = n
    if (n := _positive(http.max_retries)) is not None:
        thresholds.max_retries.value = n
    if (n := _positive(http.max_requests_per_connection)) is not None:
        common.max_requests_per_connection.value = n
    idle = http.idle_timeout if http.idle_timeout is not None else tcp.idle_timeout
    if (d := proto_duration(idle)) is not None:
        common.idle_timeout.CopyFrom(d)
    if (d := proto_duration(tcp.connect_timeout)) is not None:
        cluster.connect_timeout.CopyFrom(d)
    if (n := _positive(tcp.max_connections)) is not None:
        thresholds.max_connections.value = n
    if (d := proto_duration(tcp.max_connection_duration)) is not None:
        common.max_connection_duration.CopyFrom(d)
    keepalive = tcp.tcp_keepalive
    if keepalive is not None:
        ka = cluster.upstream_connection_options.tcp_keepalive
        ka.SetInParent()
        if (n := _positive(keepalive.probes)) is not None:
            ka.keepalive_probes.value = n
        if keepalive.time is not None:
            ka.keepalive_time.value = max(keepalive.time.seconds, 1)
        if keepalive.interval is not None:
            ka.keepalive_interval.value = max(keepalive.interval.seconds, 1)
    cluster.circuit_breakers.thresholds.append(thresholds)
    return common


def _http2_wanted(pool: ConnectionPoolSettings, http2: bool) -> bool:
    """HTTP/2 upstream: the port speaks it, or connectionPool.http.h2UpgradePolicy UPGRADE."""
    return http2 or pool.http.h2_upgrade_policy == "UPGRADE"


def _set_http_protocol_options(
    cluster: cluster_pb2.Cluster, common: protocol_pb2.HttpProtocolOptions, http2: bool, http_pool: HttpSettings,
) -> None:
    use_client = http_pool.use_client_protocol
    if not http2 and not use_client and common.ByteSize() == 0:
        return
    opts = http_protocol_options_pb2.HttpProtocolOptions()
    if common.ByteSize():
        opts.common_http_protocol_options.CopyFrom(common)
    if use_client:
        # The client's own protocol upstream (istiod's useClientProtocol).
        opts.use_downstream_protocol_config.http_protocol_options.SetInParent()
        opts.use_downstream_protocol_config.http2_protocol_options.SetInParent()
    # Envoy requires an upstream protocol choice in these options; HTTP/1.1 is its default.
    elif http2:
        opts.explicit_http_config.http2_protocol_options.SetInParent()
        if (n := _positive(http_pool.max_concurrent_streams)) is not None:
            opts.explicit_http_config.http2_protocol_options.max_concurrent_streams.value = n
    else:
        opts.explicit_http_config.http_protocol_options.SetInParent()
    cluster.typed_extension_protocol_options[HTTP_PROTOCOL_OPTIONS].CopyFrom(typed(opts))


def _apply_outlier_detection(cluster: cluster_pb2.Cluster, od: OutlierDetection | None) -> None:
    # An empty `outlierDetection: {}` still turns detection on with Envoy's defaults
    # (5 consecutive 5xx), as in istiod; locality failover relies on it.
    if od is None:
        return
    out = outlier_detection_pb2.OutlierDetection(enforcing_success_rate=wrappers_pb2.UInt32Value(value=0))
    errors = od.consecutive_5xx_errors
    if errors is not None:
        out.consecutive_5xx.value = errors
        out.enforcing_consecutive_5xx.value = 100 if errors > 0 else 0
    gw_errors = od.consecutive_gateway_errors
    if gw_errors is not None:
        out.consecutive_gateway_failure.value = gw_errors
        out.enforcing_consecutive_gateway_failure.value = 100 if gw_errors > 0 else 0
    if (d := proto_duration(od.interval)) is not None:
        out.interval.CopyFrom(d)
    if (d := proto_duration(od.base_ejection_time)) is not None:
        out.base_ejection_time.CopyFrom(d)
    if (n := _positive(od.max_ejection_percent)) is not None:
        out.max_ejection_percent.value = n
    if od.split_external_local_origin_errors:
        out.split_external_local_origin_errors = True
        local = od.consecutive_local_origin_failures
        if local is not None:
            out.consecutive_local_origin_failure.value = local
            out.enforcing_consecutive_local_origin_failure.value = 100 if local > 0 else 0
        out.enforcing_local_origin_success_rate.value = 0
    cluster.outlier_detection.CopyFrom(out)
    # Panic mode rarely helps with the few pods a Kubernetes service has: istiod sets the
    # threshold to minHealthPercent, which defaults to 0 (off), whenever outliers are detected.
    min_health = od.min_health_percent
    cluster.common_lb_config.healthy_panic_threshold.CopyFrom(percent_pb2.Percent(value=float(max(min_health, 0))))


def _apply_load_balancer(cluster: cluster_pb2.Cluster, lb: LoadBalancerSettings) -> None:
    # Istio's default is LEAST_REQUEST (since 1.14), not Envoy's ROUND_ROBIN.
    cluster.lb_policy = _LB_POLICIES.get(lb.simple, cluster_pb2.Cluster.LEAST_REQUEST)
    warmup = proto_duration(lb.warmup_duration)
    if warmup is not None and cluster.lb_policy == cluster_pb2.Cluster.ROUND_ROBIN:
        cluster.round_robin_lb_config.slow_start_config.slow_start_window.CopyFrom(warmup)
    elif warmup is not None and cluster.lb_policy == cluster_pb2.Cluster.LEAST_REQUEST:
        cluster.least_request_lb_config.slow_start_config.slow_start_window.CopyFrom(warmup)
    ch = lb.consistent_hash
    if ch is None:
        return
    if ch.maglev:
        cluster.lb_policy = cluster_pb2.Cluster.MAGLEV
        if (n := _positive(ch.maglev_table_size)) is not None:
            cluster.maglev_lb_config.table_size.value = n
    else:
        cluster.lb_policy = cluster_pb2.Cluster.RING_HASH
        ring_size = _positive(ch.ring_hash_minimum_ring_size) or _positive(ch.minimum_ring_size)
        if ring_size is not None or not ch.ring_hash:
            cluster.ring_hash_lb_config.minimum_ring_size.value = ring_size or 1024
