"""Istio's protocol names, and how a Service port or Gateway server gets one.

Istio decides what a port speaks from `appProtocol`, then from the port name's prefix
(`http-web` is HTTP, `grpc-web-x` is gRPC-Web); a Gateway server names it outright in
`port.protocol`. Names compare case-insensitively; anything unknown is "UNSUPPORTED",
which for a Service port is treated as opaque TCP.
"""
from __future__ import annotations

from .services import ServicePort

HTTP = "HTTP"
HTTP2 = "HTTP2"
HTTP_PROXY = "HTTP_PROXY"
GRPC = "GRPC"
GRPC_WEB = "GRPC-WEB"
HTTPS = "HTTPS"
TLS = "TLS"
TCP = "TCP"
UDP = "UDP"
MONGO = "MONGO"
REDIS = "REDIS"
MYSQL = "MYSQL"
UNSUPPORTED = "UNSUPPORTED"

_KNOWN = {HTTP, HTTP2, HTTP_PROXY, GRPC, GRPC_WEB, HTTPS, TLS, TCP, UDP, MONGO, REDIS, MYSQL}

# Kubernetes-defined appProtocol values Istio understands.
_K8S_APP_PROTOCOLS = {"kubernetes.io/h2c": HTTP2, "kubernetes.io/ws": HTTP, "kubernetes.io/wss": HTTPS}


def parse(name: str) -> str:
    """Canonical protocol for a protocol name (case-insensitive)."""
    p = (name or "").strip().upper()
    return p if p in _KNOWN else UNSUPPORTED


def is_http(p: str) -> bool:
    """Protocols served by an HTTP connection manager in plaintext."""
    return p in (HTTP, HTTP2, GRPC, GRPC_WEB, HTTP_PROXY)


def is_http2(p: str) -> bool:
    return p in (HTTP2, GRPC, GRPC_WEB)


def is_tcp_family(p: str) -> bool:
    """Opaque byte streams (tcp_proxy), possibly with a protocol-specific name."""
    return p in (TCP, MONGO, REDIS, MYSQL)


def of_service_port(sp: ServicePort) -> str:
    """What Istio infers for a Service port (kube.ConvertProtocol)."""
    if sp.protocol.upper() == "UDP":
        return UDP
    if sp.app_protocol:
        known = _K8S_APP_PROTOCOLS.get(sp.app_protocol.lower())
        return known or parse(sp.app_protocol)
    name = sp.name.lower()
    if name.startswith("grpc-web"):  # has a hyphen of its own, so test before splitting
        return GRPC_WEB
    return parse(name.split("-", 1)[0])
