"""The Gateway servers a router proxy serves, merged per listening port.

Shared by the gateway listener and route builders (istiod calls this MergeGateways):
- a server listens on the gateway Service's `targetPort` for its port number, so a
  Gateway server on 80 becomes Envoy's 8080 when the Service maps 80 -> 8080;
- plaintext HTTP servers on one listening port share one listener and one route
  configuration `http.<port>`; TLS-family servers on a port are kept together (told
  apart by SNI later); any other mix on one port is a conflict and the later server
  is dropped, the first one (in (namespace, name) order of Gateways) wins;
- VirtualServices bind to a server through `spec.gateways` and the server's hosts,
  which may restrict the VirtualService namespace (`ns/host`, `./host`, `*/host`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Mapping

from .. import names
from ..config.objects import ConfigObject
from ..model.hosts import intersect, split_namespace
from ..model.mesh import MeshSnapshot
from ..model.proxy import Proxy
from ..model.services import Service
from . import protocol
from .convert import as_int, as_list, as_map
from .virtual_services import bound_gateways, virtual_service_hosts, visible_to

HTTP = "http"  # plaintext HTTP family: one HCM, routes via RDS
TCP = "tcp"  # opaque TCP: tcp_proxy to the VirtualService `tcp` route
TLS = "tls"  # HTTPS/TLS servers: terminated or passed through by SNI (not built yet)


@dataclass(frozen=True)
class Server:
    gateway: ConfigObject
    gateway_name: str  # "namespace/name": what VirtualService `gateways` entries resolve to
    number: int  # the Gateway server port: names virtual hosts ("host:80")
    port_name: str
    protocol: str  # canonical Istio protocol (protocol.HTTP, ...)
    hosts: tuple[str, ...]  # as written, possibly "ns/host"
    tls: Mapping[str, Any]
    listen_port: int  # where Envoy listens (the gateway Service's targetPort)
    kind: str  # HTTP | TCP | TLS

    def host_names(self) -> list[str]:
        """Every host of the server, namespace part removed."""
        hosts = (split_namespace(entry, self.gateway.namespace)[1] for entry in self.hosts)
        return [h.lower() for h in hosts if h]

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
        return names.gateway_http_route_name(self.listen_port)


def server_kind(proto: str, tls: Mapping[str, Any]) -> str | None:
    """How a server is served; None for protocols a gateway cannot serve."""
    if protocol.is_http(proto):
        # Validation allows only `httpsRedirect` in a plaintext HTTP server's `tls`.
        return HTTP
    if proto in (protocol.HTTPS, protocol.TLS):
        return TLS
    if protocol.is_tcp_family(proto):
        # Any `tls` block on a TCP server means TLS (its mode defaults to PASSTHROUGH).
        return TLS if tls else TCP
    return None


def gateway_ports(mesh: MeshSnapshot, proxy: Proxy) -> list[GatewayPort]:
    """The merged servers of every Gateway selecting `proxy`, by listening port (ascending)."""
    gw_service = mesh.gateway_service_for(proxy)
    by_port: dict[int, list[Server]] = {}
    for gw in mesh.gateways_for(proxy):
        for server in _servers_of(gw, mesh, gw_service):
            existing = by_port.get(server.listen_port)
            if existing is None:
                by_port[server.listen_port] = [server]
            elif _can_share(existing[0], server):
                existing.append(server)
            # else: a conflicting server on an occupied port is dropped (istiod does the same)
    return [GatewayPort(port, servers[0].kind, tuple(servers)) for port, servers in sorted(by_port.items())]


def _can_share(first: Server, other: Server) -> bool:
    return first.kind == other.kind and first.kind in (HTTP, TLS)


def _servers_of(gw: ConfigObject, mesh: MeshSnapshot, gw_service: Service | None) -> Iterable[Server]:
    gateway_name = f"{gw.namespace}/{gw.name}"
    for raw in as_list(gw.spec.get("servers")):
        raw = as_map(raw)
        port = as_map(raw.get("port"))
        number = as_int(port.get("number"))
        if number is None or not 0 < number < 65536:
            continue
        proto = protocol.parse(str(port.get("protocol") or ""))
        tls = as_map(raw.get("tls"))
        kind = server_kind(proto, tls)
        hosts = tuple(str(h) for h in as_list(raw.get("hosts")) if h)
        if kind is None or not hosts:
            continue
        yield Server(
            gateway=gw,
            gateway_name=gateway_name,
            number=number,
            port_name=str(port.get("name") or ""),
            protocol=proto,
            hosts=hosts,
            tls=tls,
            listen_port=listen_port(number, mesh, gw_service),
            kind=kind,
        )


def listen_port(number: int, mesh: MeshSnapshot, gw_service: Service | None) -> int:
    """Translate a Gateway server port through the gateway's own Service: Envoy must
    listen where the Service sends traffic (its targetPort), not on the Service port."""
    sp = gw_service.port(number) if gw_service else None
    if sp is None:
        return number
    tp = sp.target_port
    target = as_int(tp)
    if target is not None:
        return target if 0 < target < 65536 else number
    if isinstance(tp, str) and tp:
        # A named container port: the gateway pods behind the Service resolved it already.
        for ep in mesh.service_endpoints(gw_service.hostname, number):
            return ep.port
    return number


# --- VirtualService binding ---------------------------------------------------------


def virtual_services_for_gateway(mesh: MeshSnapshot, proxy: Proxy, gateway_name: str) -> list[ConfigObject]:
    """VirtualServices bound to `gateway_name` and visible to the proxy, in stable order."""
    return [
        vs
        for vs in mesh.virtual_services
        if gateway_name in bound_gateways(vs) and visible_to(vs, proxy.namespace)
    ]


def matching_hosts(server: Server, vs: ConfigObject) -> list[str]:
    """Hosts a VirtualService serves on a server: each pair of server and VirtualService
    hosts that overlap gives the narrower of the two (wildcards on either side)."""
    out: list[str] = []
    vs_hosts = virtual_service_hosts(vs)
    for s_host in server.hosts_for_namespace(vs.namespace):
        for v_host in vs_hosts:
            h = intersect(s_host, v_host)
            if h is not None and h not in out:
                out.append(h)
    return out
