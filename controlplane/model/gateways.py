"""Gateway servers merged per listening port (istiod's MergeGateways, read not copied).

A gateway proxy serves every server of every Gateway selecting it. Servers are merged by
the port Envoy listens on (the gateway Service's `targetPort` for the server's port):

- plaintext servers (HTTP family, or TCP without `tls`): several HTTP servers of one
  protocol share a port and one route configuration `http.<port>`; anything else on a
  port already taken by a plaintext server is dropped (two TCP servers, TCP next to HTTP);
- TLS servers (HTTPS, TLS, or TCP with `tls`): several share a port and are told apart by
  SNI; an HTTPS server that terminates TLS gets its own route configuration
  `https.<port>.<port name>.<gateway>.<namespace>`; a server without `tls` on a TLS port
  is dropped;
- a server with `tls` whose hosts another server with `tls` already claims on the port is
  dropped whole: its SNI filter chain would repeat another's match, and Envoy refuses a
  listener with two equal filter chain matches.
The first server wins, Gateways taken in (namespace, name) order, servers in their order.
Every dropped server is a `GatewayConflict`; so is a host served by two plaintext HTTP
servers of different Gateways on one port (merged, as istiod merges it, but worth a word:
`istioctl analyze` reports it as ConflictingGateways).
"""
from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from ..config.objects import ConfigObject
from ..config.types.gateway import Gateway, ServerTLSSettings
from . import protocol
from .hosts import split_namespace

HTTP = "http"  # plaintext HTTP family: one HCM per port, routes via RDS `http.<port>`
TCP = "tcp"  # opaque TCP: tcp_proxy to the VirtualService `tcp` route
TLS = "tls"  # HTTPS/TLS servers: terminated or passed through, told apart by SNI

# TLS modes
SIMPLE, MUTUAL, OPTIONAL_MUTUAL, ISTIO_MUTUAL = "SIMPLE", "MUTUAL", "OPTIONAL_MUTUAL", "ISTIO_MUTUAL"
PASSTHROUGH, AUTO_PASSTHROUGH = "PASSTHROUGH", "AUTO_PASSTHROUGH"


@dataclass(frozen=True)
class Server:
    gateway: ConfigObject
    gateway_name: str  # "namespace/name": what VirtualService `gateways` entries resolve to
    index: int  # position in the Gateway's `servers`
    number: int  # the Gateway server port: names virtual hosts ("host:80")
    port_name: str
    protocol: str  # canonical Istio protocol (protocol.HTTP, ...)
    hosts: tuple[str, ...]  # as written, possibly "ns/host"
    tls: ServerTLSSettings | None  # None: no (or an empty) `tls`
    listen_port: int  # where Envoy listens (the gateway Service's targetPort)
    kind: str  # HTTP | TCP | TLS
    bind: str = ""

    @property
    def where(self) -> str:
        """`gateway ns/name servers[i] (port 443 https)` for messages."""
        return f"Gateway {self.gateway_name} spec.servers[{self.index}] (port {self.number} {self.port_name})"

    @property
    def tls_mode(self) -> str:
        if self.tls is None:
            return ""
        return self.tls.mode or PASSTHROUGH

    @property
    def terminates_http(self) -> bool:
        """HTTPS with TLS terminated here: an HTTP connection manager behind TLS."""
        return self.protocol == protocol.HTTPS and self.tls is not None and not self.passthrough

    @property
    def passthrough(self) -> bool:
        return self.tls_mode in (PASSTHROUGH, AUTO_PASSTHROUGH)

    @property
    def route_name(self) -> str:
        """The RDS name of an HTTP server (istiod's gatewayRDSRouteName); "" for others."""
        if protocol.is_http(self.protocol):
            return f"http.{self.listen_port}"
        if self.terminates_http:
            return f"https.{self.number}.{self.port_name}.{self.gateway.name}.{self.gateway.namespace}"
        return ""

    def host_names(self) -> list[str]:
        """Every host of the server, namespace part removed, lower case, de-duplicated."""
        out: list[str] = []
        for entry in self.hosts:
            h = split_namespace(entry, self.gateway.namespace)[1].lower()
            if h and h not in out:
                out.append(h)
        return out

    def sni_hosts(self) -> list[str]:
        """FilterChainMatch.server_names: the hosts, sorted; none when one is `*`."""
        hosts = self.host_names()
        return [] if "*" in hosts else sorted(hosts)

    def hosts_for_namespace(self, namespace: str) -> list[str]:
        """The server's hosts a VirtualService in `namespace` may bind to, namespace part removed."""
        out = []
        for entry in self.hosts:
            ns, host = split_namespace(entry, self.gateway.namespace)
            if ns in ("*", namespace) and host:
                out.append(host.lower())
        return out


@dataclass(frozen=True)
class GatewayPort:
    """Everything the proxy serves on one listening port."""

    listen_port: int
    kind: str
    servers: tuple[Server, ...]

    @property
    def route_name(self) -> str:
        return f"http.{self.listen_port}"


@dataclass(frozen=True)
class GatewayConflict:
    """A server meshd does not serve (or serves merged), and why."""

    server: Server
    reason: str
    other: Server | None = None
    dropped: bool = True

    def key(self) -> tuple[Any, ...]:
        o = self.other
        return (self.server.gateway_name, self.server.index, self.reason,
                (o.gateway_name, o.index) if o is not None else None, self.dropped)

    def message(self) -> str:
        what = "ignored" if self.dropped else "merged"
        with_other = f" (conflicts with {self.other.where})" if self.other is not None else ""
        return f"{self.server.where}: {self.reason}{with_other}; the server is {what}"


@dataclass(frozen=True)
class MergedGateway:
    ports: tuple[GatewayPort, ...]
    conflicts: tuple[GatewayConflict, ...] = field(default=())


def server_kind(proto: str, tls: ServerTLSSettings | None) -> str | None:
    """How a server is served; None for protocols a gateway cannot serve."""
    if protocol.is_http(proto):
        # Validation allows only `httpsRedirect` in a plaintext HTTP server's `tls`.
        return HTTP
    if proto in (protocol.HTTPS, protocol.TLS):
        return TLS
    if protocol.is_tcp_family(proto):
        # Any `tls` block on a TCP server means TLS (its mode defaults to PASSTHROUGH).
        return TLS if tls is not None else TCP
    return None


def servers_of(gw: ConfigObject, listen_port: Callable[[int], int]) -> list[Server]:
    out = []
    spec: Gateway = gw.typed
    for i, raw in enumerate(spec.servers):
        number = raw.number
        if number is None or not 0 < number < 65536:
            continue  # unix domain socket servers (port 0) are not served
        proto = protocol.parse(raw.protocol)
        kind = server_kind(proto, raw.tls)
        if kind is None or not raw.hosts:
            continue
        out.append(Server(
            gateway=gw, gateway_name=f"{gw.namespace}/{gw.name}", index=i, number=number,
            port_name=raw.port_name, protocol=proto, hosts=raw.hosts, tls=raw.tls,
            listen_port=listen_port(number), kind=kind, bind=raw.bind,
        ))
    return out


def merge_gateways(gateways: Iterable[ConfigObject], listen_port: Callable[[int], int]) -> MergedGateway:
    by_port: dict[int, list[Server]] = {}
    tls_hosts: dict[int, dict[str, Server]] = {}  # listen port -> SNI host -> server claiming it
    route_names: dict[str, Server] = {}
    http_hosts: dict[tuple[int, str], Server] = {}
    conflicts: list[GatewayConflict] = []
    for gw in sorted(gateways, key=lambda g: (g.namespace, g.name)):
        for s in servers_of(gw, listen_port):
            port = s.listen_port
            if s.tls is not None:
                known = tls_hosts.setdefault(port, {})
                dups = [h for h in s.host_names() if h in known]
                if dups:
                    conflicts.append(GatewayConflict(
                        s, f"host {dups[0]} is already served with TLS on the same port (listening port {port})", known[dups[0]]))
                    continue
            existing = by_port.get(port)
            if existing is not None:
                first = existing[0]
                if first.kind != TLS:
                    # A plaintext port: only more HTTP servers of the same protocol merge.
                    if first.protocol != s.protocol or s.kind != HTTP:
                        conflicts.append(GatewayConflict(
                            s, f"listening port {port} is already served as {first.protocol}; {s.protocol} cannot share it", first))
                        continue
                else:
                    if s.tls is None:
                        conflicts.append(GatewayConflict(
                            s, f"listening port {port} serves TLS; a server without tls settings cannot share it", first))
                        continue
                    if s.route_name and s.route_name in route_names:
                        conflicts.append(GatewayConflict(
                            s, f"route configuration {s.route_name} already exists (HTTPS port names must be unique)",
                            route_names[s.route_name]))
                        continue
                existing.append(s)
            else:
                by_port[port] = [s]
            if s.tls is not None:
                for h in s.host_names():
                    tls_hosts.setdefault(port, {})[h] = s
            if s.terminates_http:
                route_names[s.route_name] = s
            if s.kind == HTTP:
                for h in s.host_names():
                    other = http_hosts.get((port, h))
                    if other is not None and other.gateway_name != s.gateway_name:
                        conflicts.append(GatewayConflict(
                            s, f"host {h} on listening port {port} is also served by another Gateway", other, dropped=False))
                    http_hosts.setdefault((port, h), s)
    ports = tuple(GatewayPort(p, servers[0].kind, tuple(servers)) for p, servers in sorted(by_port.items()))
    return MergedGateway(ports, tuple(conflicts))
