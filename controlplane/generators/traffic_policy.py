"""DestinationRule traffic policies: which one applies, and what it does to a Cluster.

Istio resolves the policy for a cluster in layers: the rule's top-level policy, replaced
by its `portLevelSettings` entry for the port, then overridden field by field by the
subset's policy, then by the subset's port-level entry. Each layer replaces whole
components (connectionPool, loadBalancer, ...) it sets and inherits the others, as
current istiod does (GetPortLevelTrafficPolicy / MergeTrafficPolicy). Policies stay
plain dicts until applied.
"""
from __future__ import annotations

from typing import Any, Mapping

from google.protobuf import wrappers_pb2

from envoy.config.cluster.v3 import circuit_breaker_pb2, cluster_pb2, outlier_detection_pb2
from envoy.config.core.v3 import protocol_pb2
from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2
from envoy.type.v3 import percent_pb2

from .convert import as_int, as_list, as_map, duration, typed

# The components a port-level entry or a subset replaces as a whole.
_COMPONENTS = ("connectionPool", "loadBalancer", "outlierDetection", "tls", "tunnel", "proxyProtocol")

MAX_UINT32 = 2**32 - 1
HTTP_PROTOCOL_OPTIONS = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"

_LB_POLICIES = {
    "ROUND_ROBIN": cluster_pb2.Cluster.ROUND_ROBIN,
    "LEAST_REQUEST": cluster_pb2.Cluster.LEAST_REQUEST,
    "LEAST_CONN": cluster_pb2.Cluster.LEAST_REQUEST,  # deprecated Istio alias
    "RANDOM": cluster_pb2.Cluster.RANDOM,
}


def subset_of(rule: Mapping[str, Any] | None, name: str) -> Mapping[str, Any] | None:
    for s in as_list(as_map(rule).get("subsets")):
        if as_map(s).get("name") == name:
            return as_map(s)
    return None


def _port_level(policy: Mapping[str, Any], port: int) -> Mapping[str, Any] | None:
    for entry in as_list(policy.get("portLevelSettings")):
        entry = as_map(entry)
        if as_int(as_map(entry.get("port")).get("number")) == port:
            return entry
    return None


def _merge(base: Mapping[str, Any], override: Mapping[str, Any] | None, port: int) -> dict[str, Any]:
    """`override` on top of `base`, then `override`'s own port-level entry on top of that."""
    merged = {k: base[k] for k in _COMPONENTS if base.get(k) is not None}
    if not override:
        return merged
    for k in _COMPONENTS:
        if override.get(k) is not None:
            merged[k] = override[k]
    level = _port_level(override, port)
    if level is not None:
        for k in ("connectionPool", "loadBalancer", "outlierDetection", "tls"):
            if level.get(k) is not None:
                merged[k] = level[k]
    return merged


def effective_policy(rule: Mapping[str, Any] | None, port: int, subset: str = "") -> dict[str, Any]:
    """The TrafficPolicy (plain dict) that applies to `port` (and `subset`) of a rule's host."""
    rule = as_map(rule)
    policy = _merge({}, as_map(rule.get("trafficPolicy")), port)
    if subset:
        sub = subset_of(rule, subset)
        policy = _merge(policy, as_map(sub.get("trafficPolicy")) if sub else None, port)
    return policy


def consistent_hash(policy: Mapping[str, Any]) -> Mapping[str, Any] | None:
    ch = as_map(as_map(policy.get("loadBalancer")).get("consistentHash"))
    return ch or None


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


def apply(cluster: cluster_pb2.Cluster, policy: Mapping[str, Any], http2: bool) -> None:
    """Apply connection pool, load balancer and outlier detection settings."""
    pool = as_map(policy.get("connectionPool"))
    http_options = _apply_connection_pool(cluster, pool)
    _apply_outlier_detection(cluster, policy.get("outlierDetection"))
    _apply_load_balancer(cluster, as_map(policy.get("loadBalancer")))
    _set_http_protocol_options(cluster, http_options, _http2_wanted(pool, http2),
                               as_map(pool.get("http")))


def _positive(value: Any) -> int | None:
    n = as_int(value)
    return n if n is not None and n > 0 else None


def _apply_connection_pool(cluster: cluster_pb2.Cluster, pool: Mapping[str, Any]) -> protocol_pb2.HttpProtocolOptions:
    thresholds = default_thresholds()
    common = protocol_pb2.HttpProtocolOptions()
    http = as_map(pool.get("http"))
    tcp = as_map(pool.get("tcp"))
    if (n := _positive(http.get("http2MaxRequests"))) is not None:
        thresholds.max_requests.value = n
    if (n := _positive(http.get("http1MaxPendingRequests"))) is not None:
        thresholds.max_pending_requests.value = n
    if (n := _positive(http.get("maxRetries"))) is not None:
        thresholds.max_retries.value = n
    if (n := _positive(http.get("maxRequestsPerConnection"))) is not None:
        common.max_requests_per_connection.value = n
    idle = duration(http.get("idleTimeout")) or duration(tcp.get("idleTimeout"))
    if idle is not None:
        common.idle_timeout.CopyFrom(idle)
    if (d := duration(tcp.get("connectTimeout"))) is not None:
        cluster.connect_timeout.CopyFrom(d)
    if (n := _positive(tcp.get("maxConnections"))) is not None:
        thresholds.max_connections.value = n
    if (d := duration(tcp.get("maxConnectionDuration"))) is not None:
        common.max_connection_duration.CopyFrom(d)
    keepalive = as_map(tcp.get("tcpKeepalive"))
    if keepalive:
        ka = cluster.upstream_connection_options.tcp_keepalive
        ka.SetInParent()
        if (n := _positive(keepalive.get("probes"))) is not None:
            ka.keepalive_probes.value = n
        if (d := duration(keepalive.get("time"))) is not None:
            ka.keepalive_time.value = max(d.seconds, 1)
        if (d := duration(keepalive.get("interval"))) is not None:
            ka.keepalive_interval.value = max(d.seconds, 1)
    cluster.circuit_breakers.thresholds.append(thresholds)
    return common


def _http2_wanted(pool: Mapping[str, Any], http2: bool) -> bool:
    """HTTP/2 upstream: the port speaks it, or connectionPool.http.h2UpgradePolicy UPGRADE."""
    return http2 or str(as_map(pool.get("http")).get("h2UpgradePolicy") or "").upper() == "UPGRADE"


def _set_http_protocol_options(
    cluster: cluster_pb2.Cluster, common: protocol_pb2.HttpProtocolOptions, http2: bool,
    http_pool: Mapping[str, Any] | None = None,
) -> None:
    http_pool = http_pool or {}
    use_client = bool(http_pool.get("useClientProtocol"))
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
        if (n := _positive(http_pool.get("maxConcurrentStreams"))) is not None:
            opts.explicit_http_config.http2_protocol_options.max_concurrent_streams.value = n
    else:
        opts.explicit_http_config.http_protocol_options.SetInParent()
    cluster.typed_extension_protocol_options[HTTP_PROTOCOL_OPTIONS].CopyFrom(typed(opts))


def _apply_outlier_detection(cluster: cluster_pb2.Cluster, od: Any) -> None:
    # An empty `outlierDetection: {}` still turns detection on with Envoy's defaults
    # (5 consecutive 5xx), as in istiod; locality failover relies on it.
    if od is None:
        return
    od = as_map(od)
    out = outlier_detection_pb2.OutlierDetection(enforcing_success_rate=wrappers_pb2.UInt32Value(value=0))
    errors = as_int(od.get("consecutive5xxErrors"))
    if errors is not None:
        out.consecutive_5xx.value = errors
        out.enforcing_consecutive_5xx.value = 100 if errors > 0 else 0
    gw_errors = as_int(od.get("consecutiveGatewayErrors"))
    if gw_errors is not None:
        out.consecutive_gateway_failure.value = gw_errors
        out.enforcing_consecutive_gateway_failure.value = 100 if gw_errors > 0 else 0
    if (d := duration(od.get("interval"))) is not None:
        out.interval.CopyFrom(d)
    if (d := duration(od.get("baseEjectionTime"))) is not None:
        out.base_ejection_time.CopyFrom(d)
    if (n := _positive(od.get("maxEjectionPercent"))) is not None:
        out.max_ejection_percent.value = n
    if od.get("splitExternalLocalOriginErrors"):
        out.split_external_local_origin_errors = True
        local = as_int(od.get("consecutiveLocalOriginFailures"))
        if local is not None:
            out.consecutive_local_origin_failure.value = local
            out.enforcing_consecutive_local_origin_failure.value = 100 if local > 0 else 0
        out.enforcing_local_origin_success_rate.value = 0
    cluster.outlier_detection.CopyFrom(out)
    # Panic mode rarely helps with the few pods a Kubernetes service has: istiod sets the
    # threshold to minHealthPercent, which defaults to 0 (off), whenever outliers are detected.
    min_health = as_int(od.get("minHealthPercent"), 0)
    cluster.common_lb_config.healthy_panic_threshold.CopyFrom(percent_pb2.Percent(value=float(max(min_health, 0))))


def _apply_load_balancer(cluster: cluster_pb2.Cluster, lb: Mapping[str, Any]) -> None:
    simple = str(lb.get("simple") or "").upper()
    # Istio's default is LEAST_REQUEST (since 1.14), not Envoy's ROUND_ROBIN.
    cluster.lb_policy = _LB_POLICIES.get(simple, cluster_pb2.Cluster.LEAST_REQUEST)
    warmup = duration(lb.get("warmupDurationSecs"))
    if warmup is not None and cluster.lb_policy == cluster_pb2.Cluster.ROUND_ROBIN:
        cluster.round_robin_lb_config.slow_start_config.slow_start_window.CopyFrom(warmup)
    elif warmup is not None and cluster.lb_policy == cluster_pb2.Cluster.LEAST_REQUEST:
        cluster.least_request_lb_config.slow_start_config.slow_start_window.CopyFrom(warmup)
    ch = as_map(lb.get("consistentHash"))
    if not ch:
        return
    maglev = ch.get("maglev")
    ring = ch.get("ringHash")
    if isinstance(maglev, Mapping):
        cluster.lb_policy = cluster_pb2.Cluster.MAGLEV
        if (n := _positive(maglev.get("tableSize"))) is not None:
            cluster.maglev_lb_config.table_size.value = n
    else:
        cluster.lb_policy = cluster_pb2.Cluster.RING_HASH
        ring_size = _positive(as_map(ring).get("minimumRingSize")) or _positive(ch.get("minimumRingSize"))
        if ring_size is not None or not isinstance(ring, Mapping):
            cluster.ring_hash_lb_config.minimum_ring_size.value = ring_size or 1024
