"""DestinationRule `trafficPolicy`, typed, and the policy that applies to one port of one
subset (istiod's GetPortLevelTrafficPolicy / MergeTrafficPolicy, read not copied).

Istio resolves a cluster's policy in layers: the rule's top-level policy, replaced by its
`portLevelSettings` entry for the port, then overridden component by component by the
subset's policy, then by the subset's port-level entry. Each layer replaces whole
components (connectionPool, loadBalancer, outlierDetection, tls) it sets and inherits the
others. A component is None when absent; an empty block (`outlierDetection: {}`) is
present and counts (it turns outlier detection on with Envoy's defaults).
"""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .common import (
    Duration,
    duration,
    each,
    entries,
    integer,
    mapping,
    nonempty_strings,
    optional,
    strings,
    text,
)

# --- connectionPool ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TcpKeepalive:
    probes: int | None = None
    time: Duration | None = None
    interval: Duration | None = None


@dataclass(frozen=True, slots=True)
class TcpSettings:
    max_connections: int | None = None
    connect_timeout: Duration | None = None
    # None also for an empty block: `tcpKeepalive: {}` asks for nothing.
    tcp_keepalive: TcpKeepalive | None = None
    max_connection_duration: Duration | None = None
    idle_timeout: Duration | None = None


@dataclass(frozen=True, slots=True)
class HttpSettings:
    http1_max_pending_requests: int | None = None
    http2_max_requests: int | None = None
    max_requests_per_connection: int | None = None
    max_retries: int | None = None
    idle_timeout: Duration | None = None
    h2_upgrade_policy: str = ""
    use_client_protocol: bool = False
    max_concurrent_streams: int | None = None


@dataclass(frozen=True, slots=True)
class ConnectionPoolSettings:
    tcp: TcpSettings = TcpSettings()
    http: HttpSettings = HttpSettings()


def _keepalive(raw: Any) -> TcpKeepalive | None:
    k = mapping(raw)
    if not k:
        return None
    return TcpKeepalive(integer(k.get("probes")), duration(k.get("time")), duration(k.get("interval")))


def connection_pool(raw: Mapping[str, Any]) -> ConnectionPoolSettings:
    tcp, http = mapping(raw.get("tcp")), mapping(raw.get("http"))
    return ConnectionPoolSettings(
        tcp=TcpSettings(
            max_connections=integer(tcp.get("maxConnections")),
            connect_timeout=duration(tcp.get("connectTimeout")),
            tcp_keepalive=_keepalive(tcp.get("tcpKeepalive")),
            max_connection_duration=duration(tcp.get("maxConnectionDuration")),
            idle_timeout=duration(tcp.get("idleTimeout")),
        ),
        http=HttpSettings(
            http1_max_pending_requests=integer(http.get("http1MaxPendingRequests")),
            http2_max_requests=integer(http.get("http2MaxRequests")),
            max_requests_per_connection=integer(http.get("maxRequestsPerConnection")),
            max_retries=integer(http.get("maxRetries")),
            idle_timeout=duration(http.get("idleTimeout")),
            h2_upgrade_policy=text(http.get("h2UpgradePolicy")).upper(),
            use_client_protocol=bool(http.get("useClientProtocol")),
            max_concurrent_streams=integer(http.get("maxConcurrentStreams")),
        ),
    )


# --- loadBalancer ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class HttpCookie:
    name: str = ""
    path: str = ""
    ttl: Duration | None = None


@dataclass(frozen=True, slots=True)
class ConsistentHash:
    http_header_name: str = ""
    http_cookie: HttpCookie | None = None
    use_source_ip: bool = False
    http_query_parameter_name: str = ""
    # ringHash / maglev as given (an empty block selects the algorithm); None when absent.
    ring_hash_minimum_ring_size: int | None = None
    ring_hash: bool = False
    maglev_table_size: int | None = None
    maglev: bool = False
    minimum_ring_size: int | None = None  # the deprecated top-level field


def _consistent_hash(raw: Any) -> ConsistentHash | None:
    ch = mapping(raw)
    if not ch:
        return None  # an empty block hashes on nothing: plain load balancing
    cookie = ch.get("httpCookie")
    ring, maglev = ch.get("ringHash"), ch.get("maglev")
    return ConsistentHash(
        http_header_name=text(ch.get("httpHeaderName")),
        http_cookie=HttpCookie(text(mapping(cookie).get("name")), text(mapping(cookie).get("path")),
                               duration(mapping(cookie).get("ttl"))) if isinstance(cookie, Mapping) else None,
        use_source_ip=bool(ch.get("useSourceIp")),
        http_query_parameter_name=text(ch.get("httpQueryParameterName")),
        ring_hash_minimum_ring_size=integer(mapping(ring).get("minimumRingSize")),
        ring_hash=isinstance(ring, Mapping),
        maglev_table_size=integer(mapping(maglev).get("tableSize")),
        maglev=isinstance(maglev, Mapping),
        minimum_ring_size=integer(ch.get("minimumRingSize")),
    )


@dataclass(frozen=True, slots=True)
class LocalityDistribute:
    from_: str = ""
    to: Mapping[str, int] = dataclasses.field(default_factory=dict)  # locality -> weight


@dataclass(frozen=True, slots=True)
class LocalityFailover:
    from_: str = ""
    to: str = ""


@dataclass(frozen=True, slots=True)
class LocalityLbSetting:
    enabled: bool = True
    distribute: tuple[LocalityDistribute, ...] = ()
    failover: tuple[LocalityFailover, ...] = ()
    failover_priority: tuple[str, ...] = ()  # label names, or `label=value`


def locality_lb_setting(raw: Mapping[str, Any]) -> LocalityLbSetting:
    enabled = raw.get("enabled")
    return LocalityLbSetting(
        enabled=not (enabled is False or (isinstance(enabled, str) and enabled.lower() == "false")),
        distribute=tuple(
            LocalityDistribute(text(mapping(d).get("from")),
                               {str(k): integer(v, 0) or 0 for k, v in mapping(mapping(d).get("to")).items()})
            for d in entries(raw.get("distribute")) if d is not None),
        failover=each(raw.get("failover"), lambda f: LocalityFailover(text(f.get("from")), text(f.get("to")))),
        failover_priority=nonempty_strings(raw.get("failoverPriority")),
    )


@dataclass(frozen=True, slots=True)
class LoadBalancerSettings:
    simple: str = ""
    consistent_hash: ConsistentHash | None = None
    locality_lb_setting: LocalityLbSetting | None = None
    warmup_duration: Duration | None = None


def load_balancer(raw: Mapping[str, Any]) -> LoadBalancerSettings:
    return LoadBalancerSettings(
        simple=text(raw.get("simple")).upper(),
        consistent_hash=_consistent_hash(raw.get("consistentHash")),
        locality_lb_setting=optional(raw.get("localityLbSetting"), locality_lb_setting),
        warmup_duration=duration(raw.get("warmupDurationSecs")),
    )


# --- outlierDetection ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class OutlierDetection:
    consecutive_5xx_errors: int | None = None
    consecutive_gateway_errors: int | None = None
    interval: Duration | None = None
    base_ejection_time: Duration | None = None
    max_ejection_percent: int | None = None
    split_external_local_origin_errors: bool = False
    consecutive_local_origin_failures: int | None = None
    min_health_percent: int = 0


def outlier_detection(raw: Mapping[str, Any]) -> OutlierDetection:
    return OutlierDetection(
        consecutive_5xx_errors=integer(raw.get("consecutive5xxErrors")),
        consecutive_gateway_errors=integer(raw.get("consecutiveGatewayErrors")),
        interval=duration(raw.get("interval")),
        base_ejection_time=duration(raw.get("baseEjectionTime")),
        max_ejection_percent=integer(raw.get("maxEjectionPercent")),
        split_external_local_origin_errors=bool(raw.get("splitExternalLocalOriginErrors")),
        consecutive_local_origin_failures=integer(raw.get("consecutiveLocalOriginFailures")),
        min_health_percent=integer(raw.get("minHealthPercent"), 0) or 0,
    )


# --- tls -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ClientTLSSettings:
    """What a client sends to the destination. An empty block (`tls: {}`) replaces the
    layers below it like any other, and then asks for nothing (auto mTLS)."""

    mode: str = ""  # "" when not given: DISABLE
    credential_name: str = ""
    client_certificate: str = ""
    private_key: str = ""
    ca_certificates: str = ""
    ca_crl: str = ""
    subject_alt_names: tuple[str, ...] = ()
    sni: str = ""
    insecure_skip_verify: bool = False
    given: bool = True  # False for an empty block

    @property
    def effective_mode(self) -> str:
        return self.mode or "DISABLE"


def client_tls(raw: Mapping[str, Any]) -> ClientTLSSettings:
    return ClientTLSSettings(
        mode=text(raw.get("mode")).upper(),
        credential_name=text(raw.get("credentialName")),
        client_certificate=text(raw.get("clientCertificate")),
        private_key=text(raw.get("privateKey")),
        ca_certificates=text(raw.get("caCertificates")),
        ca_crl=text(raw.get("caCrl")),
        subject_alt_names=strings(raw.get("subjectAltNames")),
        sni=text(raw.get("sni")),
        insecure_skip_verify=bool(raw.get("insecureSkipVerify")),
        given=bool(raw),
    )


# --- the policy and its layers ---------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PortTrafficPolicy:
    """A `portLevelSettings` entry: the components it replaces for one port."""

    port: int | None = None
    connection_pool: ConnectionPoolSettings | None = None
    load_balancer: LoadBalancerSettings | None = None
    outlier_detection: OutlierDetection | None = None
    tls: ClientTLSSettings | None = None


@dataclass(frozen=True, slots=True)
class TrafficPolicy:
    connection_pool: ConnectionPoolSettings | None = None
    load_balancer: LoadBalancerSettings | None = None
    outlier_detection: OutlierDetection | None = None
    tls: ClientTLSSettings | None = None
    port_level_settings: tuple[PortTrafficPolicy, ...] = ()

    def port_level(self, port: int) -> PortTrafficPolicy | None:
        for entry in self.port_level_settings:
            if entry.port == port:
                return entry
        return None

    def over(self, base: TrafficPolicy, port: int) -> TrafficPolicy:
        """This policy's components on top of `base`'s, then this policy's own port-level
        entry for `port` on top of that (one layer of Istio's merge)."""
        merged = TrafficPolicy(
            connection_pool=self.connection_pool if self.connection_pool is not None else base.connection_pool,
            load_balancer=self.load_balancer if self.load_balancer is not None else base.load_balancer,
            outlier_detection=self.outlier_detection if self.outlier_detection is not None else base.outlier_detection,
            tls=self.tls if self.tls is not None else base.tls,
        )
        level = self.port_level(port)
        if level is None:
            return merged
        return TrafficPolicy(
            connection_pool=level.connection_pool if level.connection_pool is not None else merged.connection_pool,
            load_balancer=level.load_balancer if level.load_balancer is not None else merged.load_balancer,
            outlier_detection=(level.outlier_detection if level.outlier_detection is not None
                               else merged.outlier_detection),
            tls=level.tls if level.tls is not None else merged.tls,
        )

    @property
    def client_tls(self) -> ClientTLSSettings | None:
        """The `tls` that decides what a client sends; None when none (or an empty one) applies."""
        return self.tls if self.tls is not None and self.tls.given else None


NO_POLICY = TrafficPolicy()


def _port_traffic_policy(raw: Mapping[str, Any]) -> PortTrafficPolicy:
    return PortTrafficPolicy(
        port=integer(mapping(raw.get("port")).get("number")),
        connection_pool=optional(raw.get("connectionPool"), connection_pool),
        load_balancer=optional(raw.get("loadBalancer"), load_balancer),
        outlier_detection=optional(raw.get("outlierDetection"), outlier_detection),
        tls=optional(raw.get("tls"), client_tls),
    )


def traffic_policy(raw: Mapping[str, Any]) -> TrafficPolicy:
    return TrafficPolicy(
        connection_pool=optional(raw.get("connectionPool"), connection_pool),
        load_balancer=optional(raw.get("loadBalancer"), load_balancer),
        outlier_detection=optional(raw.get("outlierDetection"), outlier_detection),
        tls=optional(raw.get("tls"), client_tls),
        port_level_settings=each(raw.get("portLevelSettings"), _port_traffic_policy),
    )
