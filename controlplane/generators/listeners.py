"""LDS: Listeners, per proxy type.

Router (ingress gateway): one listener `0.0.0.0_<port>` per listening port (the
gateway Service's targetPort of each Gateway server port). Plaintext HTTP servers get
an HTTP connection manager fetching route configuration `http.<port>` over RDS; a TCP
server gets tcp_proxy to the destination of the first bound VirtualService `tcp` rule
that matches it (no such rule: no listener, as with istiod). TLS servers on a port get
one filter chain each, told apart by SNI (`server_names` = the server's hosts; the
tls_inspector reads it): HTTPS terminates TLS (gateway_tls.py) in front of an HTTP
connection manager with route configuration `https.<port>.<port name>.<gateway>.<ns>`;
TLS with SIMPLE/MUTUAL/ISTIO_MUTUAL terminates and proxies TCP by the `tcp` routes;
PASSTHROUGH gets a chain per VirtualService `tls` match (SNI from `sniHosts`) proxying
the still encrypted bytes; AUTO_PASSTHROUGH routes by the SNI of Istio mTLS clients.

Sidecar: the outbound listeners and `virtualOutbound` of sidecar_outbound.py, then
`virtualInbound` of sidecar_inbound.py (and the listeners of Sidecar ingress ports with
`captureMode: NONE`; istiod's order).
"""
from __future__ import annotations

from typing import Any

from envoy.config.core.v3 import address_pb2, base_pb2
from envoy.config.listener.v3 import listener_components_pb2, listener_pb2
from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2
from google.protobuf import duration_pb2
from google.protobuf.message import Message

from .. import names
from ..config.objects import ConfigObject
from ..config.types.virtualservice import L4Match, RouteDestination
from ..model.delegates import resolve_gateway_name
from ..model.gateways import AUTO_PASSTHROUGH, HTTP, TCP, GatewayPort, Server
from ..model.hosts import covers
from ..model.mesh import MeshSnapshot
from ..model.meshconfig import MeshConfig
from ..model.proxy import ROUTER, SIDECAR, Proxy
from ..model.telemetry import ProxyTelemetry
from . import access_log, filter_chains, filters, gateway_tls, security_filters, tls
from .gateway_servers import gateway_ports, matching_hosts, virtual_services_for_gateway
from .http_routes import RouteContext, destination_cluster
from .sidecar_inbound import inbound_listeners
from .sidecar_outbound import outbound_listeners, virtual_outbound
from .tracing import apply_tracing, proxy_telemetry, telemetry_access_logs

WILDCARD = "0.0.0.0"
# istiod bounds how long a downstream TLS handshake may take on gateways (slow-handshake DoS).
GATEWAY_TRANSPORT_SOCKET_CONNECT_TIMEOUT = duration_pb2.Duration(seconds=15)


def build(mesh: MeshSnapshot, proxy: Proxy) -> list[tuple[str, Message]]:
    if proxy.type == ROUTER:
        return [(lst.name, lst) for lst in finish(gateway_listeners(mesh, proxy), mesh.mesh_config,
                                                  proxy_telemetry(mesh, proxy))]
    if proxy.type == SIDECAR:
        return [(lst.name, lst) for lst in finish(sidecar_listeners(mesh, proxy), mesh.mesh_config,
                                                  proxy_telemetry(mesh, proxy))]
    return []


def finish(listeners: list[listener_pb2.Listener], mc: MeshConfig,
           telemetry: ProxyTelemetry | None = None) -> list[listener_pb2.Listener]:
    """What the mesh config and the proxy's Telemetry add to built listeners (in place):
    access logs and tracing (docs/telemetry.md), and the protocol detection timeout of the
    listeners that sniff (those that continue on a listener filter timeout: virtualInbound,
    outbound ports with HTTP and TCP)."""
    access_log.apply(listeners, mc, telemetry_access_logs(telemetry, mc) if telemetry else None)
    if telemetry is not None:
        apply_tracing(listeners, telemetry, mc)
    timeout = mc.protocol_detection_timeout
    for lst in listeners:
        if lst.continue_on_listener_filters_timeout:
            lst.listener_filters_timeout.seconds, lst.listener_filters_timeout.nanos = timeout.seconds, timeout.nanos
    return listeners


def sidecar_listeners(mesh: MeshSnapshot, proxy: Proxy) -> list[listener_pb2.Listener]:
    return [*outbound_listeners(mesh, proxy), virtual_outbound(mesh, proxy), *inbound_listeners(mesh, proxy)]


def gateway_listeners(mesh: MeshSnapshot, proxy: Proxy) -> list[listener_pb2.Listener]:
    out = []
    sec = security_filters.for_proxy(mesh, proxy, is_gateway=True)
    for gp in gateway_ports(mesh, proxy):
        if gp.kind == HTTP:
            chains = [_http_filter_chain(gp)]
        elif gp.kind == TCP:
            chains = _tcp_filter_chains(mesh, proxy, gp.servers[0])
        else:
            chains = _tls_filter_chains(mesh, proxy, gp)
        if chains:
            listener = _gateway_listener(gp.listen_port, chains)
            security_filters.secure(listener, sec)
            out.append(listener)
    return out


def _gateway_listener(port: int, chains: list[listener_components_pb2.FilterChain]) -> listener_pb2.Listener:
    for chain in chains:
        chain.transport_socket_connect_timeout.CopyFrom(GATEWAY_TRANSPORT_SOCKET_CONNECT_TIMEOUT)
    out = listener_pb2.Listener(
        name=names.gateway_listener_name(port, WILDCARD),
        address=address_pb2.Address(socket_address=address_pb2.SocketAddress(address=WILDCARD, port_value=port)),
        filter_chains=chains,
        # istiod marks gateway listeners OUTBOUND: traffic leaves for the mesh.
        traffic_direction=base_pb2.OUTBOUND,
    )
    if any(c.filter_chain_match.server_names or c.HasField("transport_socket") for c in chains):
        # SNI (server_names) is read from the ClientHello by the tls_inspector.
        out.listener_filters.append(filters.tls_inspector_filter())
    return out


def stat_prefix(port: int) -> str:
    return f"outbound_{names.gateway_listener_name(port, WILDCARD)}"


def _http_filter_chain(gp: GatewayPort) -> listener_components_pb2.FilterChain:
    hcm = filters.gateway_http_connection_manager(stat_prefix(gp.listen_port), gp.route_name, gp.servers[0].protocol)
    return listener_components_pb2.FilterChain(filters=[filters.network_filter(filters.HTTP_CONNECTION_MANAGER, hcm)])


# --- TLS servers: terminated (HTTPS, TLS) or passed through, told apart by SNI ------------


def _tls_filter_chains(mesh: MeshSnapshot, proxy: Proxy, gp: GatewayPort) -> list[listener_components_pb2.FilterChain]:
    chains: list[listener_components_pb2.FilterChain] = []
    for server in gp.servers:
        if gateway_tls.unusable_reason(mesh, proxy, server) is not None:
            continue  # reported as a gateway conflict when the snapshot is built
        if server.terminates_http:
            chains.append(_https_filter_chain(gp, server))
        elif server.tls_mode == AUTO_PASSTHROUGH:
            chains += _auto_passthrough_chains(mesh, proxy, server)
        elif server.passthrough:
            chains += _passthrough_chains(mesh, proxy, server)
        else:
            # TLS terminated here, then opaque TCP to the VirtualService `tcp` route.
            tcp = _tcp_route_filter(mesh, proxy, server)
            if tcp is not None:
                chains.append(_tls_chain(server.sni_hosts(), [tcp], gateway_tls.downstream_context(server)))
    # Equal matches would make Envoy refuse the listener: the first chain wins (the
    # conflicting servers were already reported; duplicate VirtualService SNI rules are
    # skipped as istiod skips them).
    return filter_chains.dedupe(chains)


def _tls_chain(sni: list[str], network_filters: list[Any],
               context: Message | None = None) -> listener_components_pb2.FilterChain:
    chain = listener_components_pb2.FilterChain(filters=network_filters)
    if sni:
        chain.filter_chain_match.server_names.extend(sni)
    if context is not None:
        chain.transport_socket.CopyFrom(tls.transport_socket(context))
    return chain


def _https_filter_chain(gp: GatewayPort, server: Server) -> listener_components_pb2.FilterChain:
    hcm = filters.gateway_http_connection_manager(stat_prefix(gp.listen_port), server.route_name, server.protocol)
    return _tls_chain(server.sni_hosts(), [filters.network_filter(filters.HTTP_CONNECTION_MANAGER, hcm)],
                      gateway_tls.downstream_context(server))


def _passthrough_chains(mesh: MeshSnapshot, proxy: Proxy, server: Server) -> list[listener_components_pb2.FilterChain]:
    """One chain per VirtualService `tls` match that fits the server: SNI from the match's
    `sniHosts`, tcp_proxy to the rule's destinations; TLS is not terminated."""
    out = []
    for vs in virtual_services_for_gateway(mesh, proxy, server.gateway_name):
        if not matching_hosts(server, vs):
            continue
        for rule in vs.typed.tls:
            if not rule.route:
                continue
            for m in rule.match:
                if not _l4_match_applies(m, server, vs, proxy):
                    continue
                sni = sorted({h.lower() for h in m.sni_hosts})
                if "*" in sni:
                    sni = []
                tcp = filters.network_filter(filters.TCP_PROXY, _tcp_proxy(mesh, proxy, server, vs, rule.route))
                out.append(_tls_chain(sni, [tcp]))
    return out


def _auto_passthrough_chains(mesh: MeshSnapshot, proxy: Proxy, server: Server) -> list[listener_components_pb2.FilterChain]:
    """AUTO_PASSTHROUGH: the client's SNI names the cluster (`outbound_.<port>_.<subset>_.<host>`,
    what Istio mTLS clients send); one chain per service port (and subset) the server's
    hosts cover."""
    from .destinations import service_clusters

    out = []
    hosts = server.host_names()
    for svc in sorted(mesh.services.values(), key=lambda s: s.hostname):
        if not any(covers(h, svc.hostname) for h in hosts):
            continue
        for oc in service_clusters(mesh, proxy, svc):
            sni = tls.outbound_sni(oc.port.port, oc.subset, svc.hostname)
            tcp = filters.network_filter(filters.TCP_PROXY, filters.tcp_proxy(oc.name, [(oc.name, 1)]))
            chain = _tls_chain([sni], [tcp])
            chain.filter_chain_match.application_protocols.extend(tls.ALPN_ISTIO_MTLS)
            out.append(chain)
    return out


# --- TCP servers ---------------------------------------------------------------------


def _tcp_filter_chains(mesh: MeshSnapshot, proxy: Proxy, server: Server) -> list[listener_components_pb2.FilterChain]:
    tcp = _tcp_route_filter(mesh, proxy, server)
    return [listener_components_pb2.FilterChain(filters=[tcp])] if tcp is not None else []


def _tcp_route_filter(mesh: MeshSnapshot, proxy: Proxy, server: Server) -> listener_components_pb2.Filter | None:
    """tcp_proxy to the first VirtualService `tcp` rule bound to the server whose match
    fits (istiod: only one rule can win, there is no SNI or header to choose by)."""
    for vs in virtual_services_for_gateway(mesh, proxy, server.gateway_name):
        if not matching_hosts(server, vs):
            continue
        for rule in vs.typed.tcp:
            if rule.route and _l4_matches(rule.match, server, vs, proxy):
                return filters.network_filter(filters.TCP_PROXY, _tcp_proxy(mesh, proxy, server, vs, rule.route))
    return None


def _l4_matches(matches: tuple[L4Match, ...], server: Server, vs: ConfigObject, proxy: Proxy) -> bool:
    """No match conditions, or one that fits this server (istiod's l4MultiMatch)."""
    if not matches:
        return True
    return any(_l4_match_applies(m, server, vs, proxy) for m in matches)


def _l4_match_applies(m: L4Match, server: Server, vs: ConfigObject, proxy: Proxy) -> bool:
    """A `tcp`/`tls` match on a gateway: its port and gateways (if given) fit the server.
    As istiod (l4SingleMatch), a gateway ignores `sourceLabels`, `sourceNamespace` and
    `destinationSubnets`: they describe sidecar clients."""
    if m.port and m.port != server.number:
        return False
    gateways = [resolve_gateway_name(g, vs.namespace) for g in m.gateways]
    return not gateways or server.gateway_name in gateways


def _tcp_proxy(mesh: MeshSnapshot, proxy: Proxy, server: Server, vs: ConfigObject,
               destinations: tuple[RouteDestination, ...]) -> tcp_proxy_pb2.TcpProxy:
    ctx = RouteContext(mesh, proxy, server.number, frozenset({server.gateway_name}))
    clusters = [(destination_cluster(d.destination, vs.namespace, ctx), d.weight) for d in destinations]
    if len(clusters) > 1:
        weighted = [c for c in clusters if c[1] > 0]
        if weighted:
            # istiod names the stats of a split after the VirtualService.
            return filters.tcp_proxy(f"{vs.name}.{vs.namespace}", weighted)
    name = clusters[0][0]
    return filters.tcp_proxy(name, [(name, 1)])
