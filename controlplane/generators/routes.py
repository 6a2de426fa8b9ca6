"""RDS: RouteConfigurations, per proxy type.

Router (ingress gateway): one `http.<listen port>` per plaintext HTTP port, and one
`https.<port>.<port name>.<gateway>.<namespace>` per HTTPS server that terminates TLS
(its virtual hosts only, since each SNI filter chain names its own; a Gateway API
server's also answers 421 for its port's other listeners' hosts, misdirected.py). Virtual
hosts come from the VirtualServices bound to the port's servers: one per host shared
by a server and a VirtualService, named `<host>:<server port>` with exactly that host
as domain (ports are ignored in host matching). With no VirtualService bound, a single
`blackhole:<port>` virtual host without routes makes Envoy answer 404.

Sidecar: route configuration `<port>` per HTTP service port (sidecar_routes.py).
"""
from __future__ import annotations

from dataclasses import dataclass, field

from envoy.config.route.v3 import route_components_pb2 as rc
from envoy.config.route.v3 import route_pb2
from google.protobuf.message import Message

from .. import names
from ..model.gateways import HTTP, TLS, GatewayPort, Server
from ..model.mesh import MeshSnapshot
from ..model.proxy import ROUTER, SIDECAR, Proxy
from .gateway_servers import gateway_ports, matching_hosts, virtual_services_for_gateway
from .http_routes import RouteContext, catch_all_last, virtual_service_routes
from .misdirected import misdirected_virtual_hosts
from .route_config import route_config
from .sidecar_routes import sidecar_route_configs


def build(mesh: MeshSnapshot, proxy: Proxy) -> list[tuple[str, Message]]:
    if proxy.type == ROUTER:
        return [(cfg.name, cfg) for cfg in gateway_route_configs(mesh, proxy)]
    if proxy.type == SIDECAR:
        return [(cfg.name, cfg) for cfg in sidecar_route_configs(mesh, proxy)]
    return []


def gateway_route_configs(mesh: MeshSnapshot, proxy: Proxy) -> list[route_pb2.RouteConfiguration]:
    out = []
    for gp in gateway_ports(mesh, proxy):
        if gp.kind == HTTP:
            out.append(gateway_route_config(mesh, proxy, gp))
        elif gp.kind == TLS:
            # One route configuration per HTTPS server terminating TLS: each SNI filter
            # chain sees only its own server's virtual hosts (istiod's choice too).
            for server in gp.servers:
                if server.terminates_http:
                    out.append(_route_config_for(mesh, proxy, server.route_name, [server], is_tls=True,
                                                 siblings=gp.servers))
    return out


def gateway_route_config(mesh: MeshSnapshot, proxy: Proxy, gp: GatewayPort) -> route_pb2.RouteConfiguration:
    return _route_config_for(mesh, proxy, gp.route_name, list(gp.servers), is_tls=False)


def _route_config_for(mesh: MeshSnapshot, proxy: Proxy, name: str, servers: list[Server],
                      is_tls: bool, siblings: tuple[Server, ...] = ()) -> route_pb2.RouteConfiguration:
    vhosts = _gateway_virtual_hosts(mesh, proxy, servers, is_tls)
    # An HTTPS server of the Gateway API answers 421 for its port's other listeners' hosts.
    extra = misdirected_virtual_hosts(servers[0], siblings, vhosts) if is_tls else []
    if not vhosts and not any("*" in vh.domains for vh in extra):
        vhosts = [rc.VirtualHost(name=names.virtual_host_name("blackhole", servers[0].number), domains=["*"])]
    return route_config(name, vhosts + extra)


@dataclass
class _VHost:
    """A virtual host being assembled: routes are collected before the proto is built."""

    name: str
    host: str
    routes: list[rc.Route] = field(default_factory=list)
    sources: set[tuple[str, str]] = field(default_factory=set)  # VirtualServices already added
    require_tls: bool = False

    def proto(self) -> rc.VirtualHost:
        vh = rc.VirtualHost(
            name=self.name,
            domains=[self.host],
            routes=catch_all_last(self.routes),
            include_request_attempt_count=True,
        )
        if self.require_tls:
            vh.require_tls = rc.VirtualHost.ALL
        return vh


def _gateway_virtual_hosts(mesh: MeshSnapshot, proxy: Proxy, servers: list[Server], is_tls: bool) -> list[rc.VirtualHost]:
    by_host: dict[str, _VHost] = {}

    def vhost(host: str, server_port: int) -> _VHost:
        # The first server to reach a host names it (istiod dedups by host the same way).
        if host not in by_host:
            by_host[host] = _VHost(names.virtual_host_name(host, server_port), host)
        return by_host[host]

    built: dict[tuple[str, str, str], list[rc.Route]] = {}  # (gateway, vs namespace, vs name)
    for server in servers:
        ctx = RouteContext(mesh, proxy, server.number, frozenset({server.gateway_name}), is_tls=is_tls)
        redirect = server.tls is not None and server.tls.https_redirect
        for vs in virtual_services_for_gateway(mesh, proxy, server.gateway_name):
            hosts = matching_hosts(server, vs)
            if not hosts:
                continue
            key = (server.gateway_name, vs.namespace, vs.name)
            if key not in built:
                built[key] = virtual_service_routes(vs, ctx)
            if not built[key]:
                continue  # nothing of this VirtualService applies here (istiod skips it too)
            for host in hosts:
                vh = vhost(host, server.number)
                # The same VirtualService reached through a second server adds nothing new.
                if (vs.namespace, vs.name) not in vh.sources:
                    vh.sources.add((vs.namespace, vs.name))
                    vh.routes.extend(built[key])
                vh.require_tls = vh.require_tls or redirect
        if redirect:
            # httpsRedirect answers every host of the server, bound or not.
            for host in server.host_names():
                vhost(host, server.number).require_tls = True
    return [by_host[h].proto() for h in sorted(by_host, key=lambda h: by_host[h].name)]
