"""Sidecar, typed: which workloads it applies to (`workloadSelector`), what their proxies
see (egress listeners and their `hosts`), what they accept (ingress listeners) and where
traffic to unknown hosts goes (`outboundTrafficPolicy`). What a proxy ends up seeing is
the model's business (model/sidecar_scope.py)."""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .common import each, integer, labels, mapping, optional, strings, text
from .gateway import ServerTLSSettings, server_tls
from .trafficpolicy import ConnectionPoolSettings, connection_pool
from .virtualservice import Destination, destination

DEFAULT_CAPTURE = "DEFAULT"


@dataclass(frozen=True, slots=True)
class SidecarPort:
    number: int = 0  # 0: a Unix domain socket (`bind: unix://...`)
    protocol: str = ""
    name: str = ""


@dataclass(frozen=True, slots=True)
class EgressListener:
    hosts: tuple[str, ...] = ()  # `namespace/dnsName`, as written
    port: SidecarPort | None = None  # None: the catch-all listener
    bind: str = ""
    capture_mode: str = DEFAULT_CAPTURE  # DEFAULT | IPTABLES | NONE


@dataclass(frozen=True, slots=True)
class IngressListener:
    port: SidecarPort = SidecarPort()
    bind: str = ""
    capture_mode: str = DEFAULT_CAPTURE
    default_endpoint: str = ""  # `127.0.0.1:<port>`, `0.0.0.0:<port>`, `unix://...`; "" forwards as captured
    tls: ServerTLSSettings | None = None  # a Gateway server's kind of `tls` (file paths only, as Istio)
    connection_pool: ConnectionPoolSettings | None = None  # of the inbound cluster `inbound|<port>||`


@dataclass(frozen=True, slots=True)
class OutboundTrafficPolicy:
    mode: str = "ALLOW_ANY"  # ALLOW_ANY | REGISTRY_ONLY
    egress_proxy: Destination | None = None


@dataclass(frozen=True, slots=True)
class Sidecar:
    egress: tuple[EgressListener, ...] = ()
    ingress: tuple[IngressListener, ...] = ()
    outbound_traffic_policy: OutboundTrafficPolicy | None = None  # None: the mesh config's
    # `workloadSelector.labels`; None without a selector (the namespace's default Sidecar).
    workload_selector: Mapping[str, str] | None = None
    # Every inbound cluster's connection pool, unless its ingress listener has its own.
    inbound_connection_pool: ConnectionPoolSettings | None = None


def _port(raw: Mapping[str, Any]) -> SidecarPort:
    return SidecarPort(integer(raw.get("number"), 0) or 0, text(raw.get("protocol")).upper(), text(raw.get("name")))


def _egress(raw: Mapping[str, Any]) -> EgressListener:
    return EgressListener(strings(raw.get("hosts")), optional(raw.get("port"), _port), text(raw.get("bind")),
                          text(raw.get("captureMode")) or DEFAULT_CAPTURE)


def _ingress(raw: Mapping[str, Any]) -> IngressListener:
    return IngressListener(_port(mapping(raw.get("port"))), text(raw.get("bind")),
                           text(raw.get("captureMode")) or DEFAULT_CAPTURE, text(raw.get("defaultEndpoint")),
                           optional(raw.get("tls"), server_tls), optional(raw.get("connectionPool"), connection_pool))


def _outbound(raw: Mapping[str, Any]) -> OutboundTrafficPolicy:
    return OutboundTrafficPolicy(text(raw.get("mode")) or "ALLOW_ANY", optional(raw.get("egressProxy"), destination))


def sidecar(spec: Mapping[str, Any]) -> Sidecar:
    selector = spec.get("workloadSelector")
    return Sidecar(
        egress=each(spec.get("egress"), _egress),
        ingress=each(spec.get("ingress"), _ingress),
        outbound_traffic_policy=optional(spec.get("outboundTrafficPolicy"), _outbound),
        workload_selector=labels(mapping(selector).get("labels")) if isinstance(selector, Mapping) else None,
        inbound_connection_pool=optional(spec.get("inboundConnectionPool"), connection_pool),
    )
