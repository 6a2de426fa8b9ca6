"""LDS: Listeners, per proxy type.

Router (ingress gateway): one listener `0.0.0.0_<port>` per listening port (the
gateway Service's targetPort of each Gateway server port). Plaintext HTTP servers get
an HTTP connection manager fetching route configuration `http.<port>` over RDS; a TCP
server gets tcp_proxy to the destination of the first bound VirtualService `tcp` rule
that matches it (no such rule: no listener, as with istiod). HTTPS/TLS servers come
with gateway TLS support.

Sidecar: the outbound listeners and `virtualOutbound` of sidecar_outbound.py, then
`virtualInbound` of sidecar_inbound.py (istiod's order).
"""
from __future__ import annotations

from google.protobuf import duration_pb2
from google.protobuf.message import Message

from envoy.config.core.v3 import address_pb2, base_pb2
from envoy.config.listener.v3 import listener_components_pb2, listener_pb2

from .. import names
from ..config.objects import ConfigObject
from ..model.mesh import MeshSnapshot
from ..model.proxy import ROUTER, SIDECAR, Proxy
from . import filters
from .convert import as_int, as_list, as_map
from .gateway_servers import HTTP, TCP, GatewayPort, Server, gateway_ports, matching_hosts, virtual_services_for_gateway
from .http_routes import RouteContext, destination_cluster
from .sidecar_inbound import virtual_inbound
from .sidecar_outbound import outbound_listeners, virtual_outbound
from .virtual_services import resolve_gateway_name

WILDCARD = "0.0.0.0"
# istiod bounds how long a downstream TLS handshake may take on gateways (slow-handshake DoS).
GATEWAY_TRANSPORT_SOCKET_CONNECT_TIMEOUT = duration_pb2.Duration(seconds=15)


def build(mesh: MeshSnapshot, proxy: Proxy) -> list[tuple[str, Message]]:
    if proxy.type == ROUTER:
        return [(lst.name, lst) for lst in gateway_listeners(mesh, proxy)]
    if proxy.type == SIDECAR:
        return [(lst.name, lst) for lst in sidecar_listeners(mesh, proxy)]
    return []


def sidecar_listeners(mesh: MeshSnapshot, proxy: Proxy) -> list[listener_pb2.Listener]:
    return [*outbound_listeners(mesh, proxy), virtual_outbound(), virtual_inbound(mesh, proxy)]


def gateway_listeners(mesh: MeshSnapshot, proxy: Proxy) -> list[listener_pb2.Listener]:
    out = []
    for gp in gateway_ports(mesh, proxy):
        if gp.kind == HTTP:
            chains = [_http_filter_chain(gp)]
        elif gp.kind == TCP:
            chains = _tcp_filter_chains(mesh, proxy, gp.servers[0])
        else:
            continue  # TLS servers: built with gateway TLS support
        if chains:
            out.append(_gateway_listener(gp.listen_port, chains))
    return out


def _gateway_listener(port: int, chains: list[listener_components_pb2.FilterChain]) -> listener_pb2.Listener:
    for chain in chains:
        chain.transport_socket_connect_timeout.CopyFrom(GATEWAY_TRANSPORT_SOCKET_CONNECT_TIMEOUT)
    return listener_pb2.Listener(
        name=names.gateway_listener_name(port, WILDCARD),
        address=address_pb2.Address(socket_address=address_pb2.SocketAddress(address=WILDCARD, port_value=port)),
        filter_chains=chains,
        # istiod marks gateway listeners OUTBOUND: traffic leaves for the mesh.
        traffic_direction=base_pb2.OUTBOUND,
    )


def stat_prefix(port: int) -> str:
    return f"outbound_{names.gateway_listener_name(port, WILDCARD)}"


def _http_filter_chain(gp: GatewayPort) -> listener_components_pb2.FilterChain:
    hcm = filters.gateway_http_connection_manager(stat_prefix(gp.listen_port), gp.route_name, gp.servers[0].protocol)
    return listener_components_pb2.FilterChain(filters=[filters.network_filter(filters.HTTP_CONNECTION_MANAGER, hcm)])


# --- TCP servers ---------------------------------------------------------------------


def _tcp_filter_chains(mesh: MeshSnapshot, proxy: Proxy, server: Server) -> list[listener_components_pb2.FilterChain]:
    for vs in virtual_services_for_gateway(mesh, proxy, server.gateway_name):
        if not matching_hosts(server, vs):
            continue
        for rule in as_list(vs.spec.get("tcp")):
            rule = as_map(rule)
            destinations = [as_map(d) for d in as_list(rule.get("route"))]
            if destinations and _l4_matches(as_list(rule.get("match")), server, vs):
                tcp = filters.network_filter(filters.TCP_PROXY, _tcp_proxy(mesh, proxy, server, vs, destinations))
                return [listener_components_pb2.FilterChain(filters=[tcp])]
    return []


def _l4_matches(matches: list, server: Server, vs: ConfigObject) -> bool:
    """No match conditions, or one whose port and gateways (if given) fit this server."""
    if not matches:
        return True
    for m in matches:
        m = as_map(m)
        port = as_int(m.get("port"), 0)
        if port and port != server.number:
            continue
        gateways = [resolve_gateway_name(str(g), vs.namespace) for g in as_list(m.get("gateways"))]
        if gateways and server.gateway_name not in gateways:
            continue
        return True
    return False


def _tcp_proxy(mesh: MeshSnapshot, proxy: Proxy, server: Server, vs: ConfigObject, destinations: list):
    ctx = RouteContext(mesh, proxy, server.number, frozenset({server.gateway_name}))
    clusters = [
        (destination_cluster(as_map(d.get("destination")), vs.namespace, ctx), as_int(d.get("weight"), 0) or 0)
        for d in destinations
    ]
    if len(clusters) > 1:
        weighted = [c for c in clusters if c[1] > 0]
        if weighted:
            # istiod names the stats of a split after the VirtualService.
            return filters.tcp_proxy(f"{vs.name}.{vs.namespace}", weighted)
    name = clusters[0][0]
    return filters.tcp_proxy(name, [(name, 1)])
