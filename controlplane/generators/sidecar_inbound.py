"""A sidecar's inbound side (REDIRECT interception): the `virtualInbound` listener on
15006, where istio-init sends every connection to the pod, and the ports it serves.

The original_dst listener filter restores the address the client dialled, and filter
chains are picked by destination port, transport (the tls_inspector reports "tls" or
"raw_buffer") and ALPN (from the TLS ClientHello, or from the http_inspector for
plaintext HTTP). The listener does not set `use_original_dst`: handing connections to the
listener of the original address would send inbound traffic into the outbound listeners
of the same port (istiod does not set it either).

Chains, as istiod builds them (listener_inbound.go, filterchain_options.go):
- `virtualInbound-blackhole`: connections to 15006 itself go nowhere (no loop);
- per workload port of the services the pod serves (`0.0.0.0_<port>`), by the effective
  PeerAuthentication mode of the port:
    STRICT      TLS only, terminated with Istio mTLS (client certificate required);
    PERMISSIVE  Istio mTLS (ALPN "istio", "istio-http/1.1", ...) and plaintext; for TCP
                ports also TLS from a client outside the mesh, passed through untouched;
    DISABLE     plaintext only.
  HTTP ports end in an HTTP connection manager routing to `inbound|<port>||`, TCP ports
  in tcp_proxy to the same cluster.
- passthrough chains for every other port, with the workload's mode (and per-port chains
  for `portLevelMtls` ports no service declares): HTTP and TCP, mTLS and plaintext,
  to `InboundPassthroughCluster`.
A plaintext client of a STRICT port finds no chain; Envoy closes the connection and the
client sees "Connection reset by peer".

A Sidecar's ingress listeners replace the service ports (istiod's buildInboundChainConfigs):
their chains are named `<bind>_<port>` (the pod IP without a `bind`); one with `tls` on a
port whose mode is DISABLE gets a single chain terminating that TLS instead (any TLS
client, the certificate files of `tls`); one with `captureMode: NONE` gets its chains on a
listener of its own that binds `<bind>:<port>` for real (docs/sidecar-scope.md).
"""
from __future__ import annotations

from dataclasses import dataclass

from envoy.config.core.v3 import address_pb2, base_pb2
from envoy.config.listener.v3 import listener_components_pb2 as lc
from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_components_pb2 as rc
from envoy.config.route.v3 import route_pb2
from google.protobuf import duration_pb2, wrappers_pb2

from .. import names
from ..config.types.gateway import ServerTLSSettings
from ..config.types.sidecar import IngressListener
from ..config.types.trafficpolicy import ConnectionPoolSettings
from ..model import protocol
from ..model.mesh import MeshSnapshot, ServiceInstance
from ..model.peer_authentication import DISABLE, PERMISSIVE, STRICT
from ..model.proxy import SIDECAR, Proxy
from ..model.services import Service, ServicePort
from ..model.sidecar_scope import CAPTURE_NONE
from . import filter_chains, filters, gateway_tls, security_filters, tls

WILDCARD = "0.0.0.0"
VIRTUAL_INBOUND = "virtualInbound"
BLACKHOLE_CHAIN = "virtualInbound-blackhole"
CATCHALL_HTTP_CHAIN = "virtualInbound-catchall-http"
CATCHALL_TCP_CHAIN = VIRTUAL_INBOUND  # istiod names the TCP passthrough chains after the listener

# Ports of the sidecar itself (admin, outbound, inbound, agent, health, Prometheus): never
# served as application ports.
RESERVED_PORTS = frozenset(
    {names.PORT_ENVOY_ADMIN, names.PORT_OUTBOUND, names.PORT_INBOUND, 15020, names.PORT_HEALTH, names.PORT_STATS}
)


@dataclass(frozen=True)
class InboundPort:
    """One workload port the sidecar serves, from the Service port that targets it."""

    port: int  # the workload (container) port: what clients' connections arrive on
    service: Service
    service_port: ServicePort
    protocol: str
    # A Sidecar ingress listener's `defaultEndpoint` (`127.0.0.1:8080`, `unix://...`): where
    # the inbound cluster sends connections instead of the address the client dialled.
    default_endpoint: str = ""
    # The address in the chain's name `<bind>_<port>` (istiod: a Sidecar ingress listener's
    # `bind`, else the pod IP; 0.0.0.0 for service ports), and, with `bind_to_port`
    # (captureMode NONE), where a listener of its own really binds.
    bind: str = WILDCARD
    bind_to_port: bool = False
    tls: ServerTLSSettings | None = None  # a Sidecar ingress listener's TLS, terminated here
    connection_pool: ConnectionPoolSettings | None = None  # of `inbound|<port>||` (the Sidecar's)

    @property
    def cluster(self) -> str:
        return names.inbound_cluster(self.port)

    @property
    def name(self) -> str:
        """The name of its filter chains (and of its listener, when bound): `<bind>_<port>`."""
        return f"{self.bind}_{self.port}"

    @property
    def http(self) -> bool:
        return protocol.is_http(self.protocol)


def _age(svc: Service) -> tuple[bool, str, str]:
    return (svc.created == "", svc.created, svc.hostname)


def inbound_ports(mesh: MeshSnapshot, proxy: Proxy) -> list[InboundPort]:
    """The ports of `mesh.instances_for(proxy)`, one per workload port: when two services
    target the same port, the oldest wins (then by name), as in istiod. Unnamed ports are
    treated as TCP (no protocol sniffing); UDP and the sidecar's own ports are skipped."""
    if proxy.type != SIDECAR:
        return []
    scope = mesh.sidecar_scope(proxy)
    if scope.ingress:
        return _ingress_ports(mesh, proxy, scope.ingress)
    chosen: dict[int, InboundPort] = {}
    for inst in sorted(mesh.instances_for(proxy), key=lambda i: (_age(i.service), i.port.port)):
        proto = protocol.of_service_port(inst.port)
        port = inst.endpoint.port
        if proto == protocol.UDP or port in RESERVED_PORTS or port in chosen:
            continue
        chosen[port] = InboundPort(port, inst.service, inst.port, proto,
                                   connection_pool=scope.inbound_connection_pool(port))
    return [chosen[p] for p in sorted(chosen)]


def _ingress_ports(mesh: MeshSnapshot, proxy: Proxy, ingress: tuple[IngressListener, ...]) -> list[InboundPort]:
    """A Sidecar's ingress listeners replace the ports of the services the workload serves
    (istiod: the listener's port, protocol and `defaultEndpoint`; the service of an
    instance on that port names the cluster's metadata, else a stand-in of the proxy's
    namespace, as for a workload no Service selects)."""
    by_port: dict[int, ServiceInstance] = {}
    for found in sorted(mesh.instances_for(proxy), key=lambda i: (_age(i.service), i.port.port)):
        by_port.setdefault(found.endpoint.port, found)  # the oldest service on the port
    scope = mesh.sidecar_scope(proxy)
    out: dict[int, InboundPort] = {}
    for listener in ingress:
        number = listener.port.number
        if number in out or number in RESERVED_PORTS:
            continue
        inst = by_port.get(number)
        sp = ServicePort(listener.port.name, number, number, app_protocol=listener.port.protocol.lower())
        svc = inst.service if inst is not None else Service(
            name="sidecar", namespace=proxy.namespace, hostname=f"sidecar.{proxy.namespace}", ports=(sp,),
            selector={}, labels={})
        proto = protocol.parse(listener.port.protocol)
        if listener.tls is not None:
            proto = _after_tls_termination(proto)
        out[number] = InboundPort(number, svc, inst.port if inst is not None else sp, proto,
                                  _endpoint(listener.default_endpoint, proxy),
                                  bind=listener.bind or proxy.ip or WILDCARD,
                                  bind_to_port=listener.capture_mode == CAPTURE_NONE, tls=listener.tls,
                                  connection_pool=scope.inbound_connection_pool(number))
    return [out[p] for p in sorted(out)]


def _after_tls_termination(proto: str) -> str:
    """What a port speaks once the sidecar has terminated its TLS (istiod's
    AfterTLSTermination): HTTPS is HTTP, TLS is TCP."""
    return {protocol.HTTPS: protocol.HTTP, protocol.TLS: protocol.TCP}.get(proto, proto)


def _endpoint(default_endpoint: str, proxy: Proxy) -> str:
    """`0.0.0.0:<port>` (or `[::]`) is the workload's own address (istiod); "" keeps the
    address the client dialled."""
    host, _, port = default_endpoint.rpartition(":")
    if host in ("0.0.0.0", "[::]") and proxy.ip:
        return f"{proxy.ip}:{port}"
    return default_endpoint


# --- filter chain match options per mTLS mode ---------------------------------------


@dataclass(frozen=True)
class ChainOption:
    http: bool  # HTTP connection manager (else tcp_proxy)
    transport: str  # tls.TLS_TRANSPORT or tls.RAW_BUFFER_TRANSPORT
    alpn: tuple[str, ...] = ()
    mtls: bool = False  # terminate Istio mTLS (else plaintext, or TLS passed through as bytes)


_T, _R = tls.TLS_TRANSPORT, tls.RAW_BUFFER_TRANSPORT

HTTP_OPTIONS = {
    STRICT: (ChainOption(True, _T, mtls=True),),
    PERMISSIVE: (ChainOption(True, _T, tls.ALPN_ISTIO_MTLS, mtls=True), ChainOption(True, _R)),
    DISABLE: (ChainOption(True, _R),),
}
TCP_OPTIONS = {
    STRICT: (ChainOption(False, _T, mtls=True),),
    PERMISSIVE: (
        ChainOption(False, _T, tls.ALPN_ISTIO_MTLS, mtls=True),
        ChainOption(False, _R),
        ChainOption(False, _T),  # TLS from outside the mesh: the application terminates it
    ),
    DISABLE: (ChainOption(False, _R),),
}
# Passthrough chains do not know the protocol: they tell HTTP from TCP by ALPN.
AUTO_OPTIONS = {
    STRICT: (ChainOption(True, _T, tls.ALPN_ISTIO_MTLS_HTTP, mtls=True), ChainOption(False, _T, mtls=True)),
    PERMISSIVE: (
        ChainOption(True, _T, tls.ALPN_ISTIO_MTLS_HTTP, mtls=True),
        ChainOption(True, _R, tls.ALPN_PLAINTEXT_HTTP),
        ChainOption(False, _T, tls.ALPN_ISTIO_MTLS_TCP, mtls=True),
        ChainOption(False, _R),
        ChainOption(False, _T),
    ),
    DISABLE: (ChainOption(True, _R, tls.ALPN_PLAINTEXT_HTTP), ChainOption(False, _R)),
}


def _mode(mode: str) -> str:
    return mode if mode in (STRICT, PERMISSIVE, DISABLE) else PERMISSIVE


def _match(port: int | None, opt: ChainOption) -> lc.FilterChainMatch:
    m = lc.FilterChainMatch(transport_protocol=opt.transport, application_protocols=list(opt.alpn))
    if port:
        m.destination_port.value = port
    return m


def _chain(name: str, match: lc.FilterChainMatch, filter_: lc.Filter, opt: ChainOption) -> lc.FilterChain:
    chain = lc.FilterChain(name=name, filter_chain_match=match, filters=[filter_])
    if opt.mtls:
        chain.transport_socket.CopyFrom(tls.transport_socket(tls.inbound_mtls()))
    return chain


# --- the listener --------------------------------------------------------------------


def inbound_listeners(mesh: MeshSnapshot, proxy: Proxy) -> list[listener_pb2.Listener]:
    """`virtualInbound`, then a listener of its own for each Sidecar ingress port with
    `captureMode: NONE` (istiod's buildInboundListeners)."""
    ports = inbound_ports(mesh, proxy)
    return [virtual_inbound(mesh, proxy, ports), *(_bound_listener(mesh, proxy, ip) for ip in ports if ip.bind_to_port)]


def virtual_inbound(mesh: MeshSnapshot, proxy: Proxy, ports: list[InboundPort] | None = None) -> listener_pb2.Listener:
    policy = mesh.mtls_policy(proxy.namespace, proxy.labels)
    if ports is None:
        ports = inbound_ports(mesh, proxy)
    chains = [_blackhole_chain()]
    chains += _passthrough_chains(None, _mode(policy.mode))
    served = {p.port for p in ports}
    for port, mode in sorted(policy.port_modes.items()):
        if port not in served and port not in RESERVED_PORTS and 0 < port < 65536:
            chains += _passthrough_chains(port, _mode(mode))
    captured = [ip for ip in ports if not ip.bind_to_port]
    chains = _mesh_chains(mesh, proxy, chains + [c for ip in captured for c in _port_chains(ip, policy.for_port(ip.port))])
    chains += [c for ip in captured for c in _user_tls_chains(ip, policy.for_port(ip.port))]
    listener = listener_pb2.Listener(
        name=VIRTUAL_INBOUND,
        address=address_pb2.Address(socket_address=address_pb2.SocketAddress(address=WILDCARD, port_value=names.PORT_INBOUND)),
        filter_chains=chains,
        traffic_direction=base_pb2.INBOUND,
        # MeshConfig.protocolDetectionTimeout defaults to 0: wait for the client's bytes.
        listener_filters_timeout=duration_pb2.Duration(),
        continue_on_listener_filters_timeout=True,
    )
    listener.listener_filters.append(filters.original_dst_filter())
    listener.listener_filters.extend(filter_chains.inspectors(chains))
    security_filters.secure(listener, security_filters.for_proxy(mesh, proxy, is_gateway=False), frozenset({BLACKHOLE_CHAIN}))
    return listener


def _bound_listener(mesh: MeshSnapshot, proxy: Proxy, ip: InboundPort) -> listener_pb2.Listener:
    """A Sidecar ingress port with `captureMode: NONE`: a listener `<bind>_<port>` that
    binds the address for real (no iptables: clients dial it), with the chains the port
    would have had in virtualInbound and no original_dst filter (istiod's
    inboundCustomListener)."""
    mode = mesh.mtls_policy(proxy.namespace, proxy.labels).for_port(ip.port)
    chains = _mesh_chains(mesh, proxy, _port_chains(ip, mode)) + _user_tls_chains(ip, mode)
    listener = listener_pb2.Listener(
        name=ip.name,
        address=address_pb2.Address(socket_address=address_pb2.SocketAddress(address=ip.bind, port_value=ip.port)),
        filter_chains=chains,
        traffic_direction=base_pb2.INBOUND,
        listener_filters_timeout=duration_pb2.Duration(),
        continue_on_listener_filters_timeout=True,
    )
    listener.listener_filters.extend(filter_chains.inspectors(chains))
    security_filters.secure(listener, security_filters.for_proxy(mesh, proxy, is_gateway=False))
    return listener


def _mesh_chains(mesh: MeshSnapshot, proxy: Proxy, chains: list[lc.FilterChain]) -> list[lc.FilterChain]:
    """Chains of the mesh's own TLS (Istio mTLS) and plaintext, de-duplicated."""
    chains = filter_chains.dedupe(chains)
    if not proxy.workload_cert:
        # No certificate to terminate mTLS with: drop those chains rather than leave the
        # listener waiting for `default` forever (STRICT ports then refuse everything).
        chains = [c for c in chains if not c.HasField("transport_socket")]
    tls.accept_trust_domain_aliases(chains, mesh.mesh_config.trust_domain, mesh.mesh_config.trust_domain_aliases)
    return chains


def _uses_own_tls(ip: InboundPort, mode: str) -> bool:
    """A Sidecar ingress listener's `tls` is terminated only where the port's
    PeerAuthentication mode is DISABLE (istiod: it does not combine with Istio mTLS); under
    STRICT or PERMISSIVE the port is served as its protocol after TLS termination, with
    the mesh's chains, and the `tls` does nothing (docs/sidecar-scope.md)."""
    return ip.tls is not None and _mode(mode) == DISABLE


def _port_chains(ip: InboundPort, mode: str) -> list[lc.FilterChain]:
    if _uses_own_tls(ip, mode):
        return []
    options = (HTTP_OPTIONS if ip.http else TCP_OPTIONS)[_mode(mode)]
    return [_service_chain(ip, opt) for opt in options]


def _user_tls_chains(ip: InboundPort, mode: str) -> list[lc.FilterChain]:
    """One chain terminating the listener's own TLS: any TLS client of the port (no ALPN
    match), the certificate files of `tls` (as a Gateway server's: gateway_tls.py)."""
    if not _uses_own_tls(ip, mode):
        return []
    assert ip.tls is not None
    chain = _service_chain(ip, ChainOption(ip.http, _T))
    chain.transport_socket.CopyFrom(tls.transport_socket(gateway_tls.settings_context(ip.tls, ip.tls.mode)))
    return [chain]


def _blackhole_chain() -> lc.FilterChain:
    match = lc.FilterChainMatch()
    match.destination_port.value = names.PORT_INBOUND
    tcp = filters.tcp_proxy(names.BLACKHOLE_CLUSTER, [(names.BLACKHOLE_CLUSTER, 1)])
    return lc.FilterChain(name=BLACKHOLE_CHAIN, filter_chain_match=match, filters=[filters.network_filter(filters.TCP_PROXY, tcp)])


def _passthrough_chains(port: int | None, mode: str) -> list[lc.FilterChain]:
    cluster = names.INBOUND_PASSTHROUGH_CLUSTER
    out = []
    for opt in AUTO_OPTIONS[mode]:
        if opt.http:
            route = inbound_route_config(cluster, 0, ":0/*")
            hcm = filters.sidecar_http_connection_manager(cluster, protocol.HTTP, inbound=True, route_config=route)
            f = filters.network_filter(filters.HTTP_CONNECTION_MANAGER, hcm)
            out.append(_chain(CATCHALL_HTTP_CHAIN, _match(port, opt), f, opt))
        else:
            f = filters.network_filter(filters.TCP_PROXY, filters.tcp_proxy(cluster, [(cluster, 1)]))
            out.append(_chain(CATCHALL_TCP_CHAIN, _match(port, opt), f, opt))
    return out


def _service_chain(ip: InboundPort, opt: ChainOption) -> lc.FilterChain:
    name = ip.name
    if opt.http:
        route = inbound_route_config(ip.cluster, ip.service_port.port, f"{ip.service.hostname}:{ip.service_port.port}/*")
        hcm = filters.sidecar_http_connection_manager(f"inbound_{name}", ip.protocol, inbound=True, route_config=route)
        f = filters.network_filter(filters.HTTP_CONNECTION_MANAGER, hcm)
    else:
        f = filters.network_filter(filters.TCP_PROXY, filters.tcp_proxy(ip.cluster, [(ip.cluster, 1)]))
    return _chain(name, _match(ip.port, opt), f, opt)


def inbound_route_config(cluster: str, service_port: int, operation: str) -> route_pb2.RouteConfiguration:
    """One virtual host `inbound|http|<service port>` for every authority, everything to
    the inbound cluster, without timeouts (the caller's sidecar applies those)."""
    action = rc.RouteAction(cluster=cluster)
    action.timeout.SetInParent()
    action.max_stream_duration.max_stream_duration.SetInParent()
    action.max_stream_duration.grpc_timeout_header_max.SetInParent()
    route = rc.Route(name="default", match=rc.RouteMatch(prefix="/"), route=action, decorator=rc.Decorator(operation=operation))
    vhost = rc.VirtualHost(name=f"inbound|http|{service_port}", domains=["*"], routes=[route])
    return route_pb2.RouteConfiguration(name=cluster, virtual_hosts=[vhost], validate_clusters=wrappers_pb2.BoolValue(value=False))
