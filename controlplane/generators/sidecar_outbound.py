"""A sidecar's outbound side (REDIRECT interception): `virtualOutbound` on 15001, where
istio-init sends every connection the application opens, and one listener per service
port of the mesh that it hands connections to (`use_original_dst`), none of which binds a
port of its own (istiod's buildSidecarOutboundListeners, read not copied).

- HTTP ports (Service port name prefix / appProtocol, protocol.py): `0.0.0.0_<port>`,
  shared by every service on the port. Plaintext HTTP (ALPN "http/1.1" or "h2c" from the
  http_inspector) goes to an HTTP connection manager with route configuration `<port>`
  over RDS; anything else falls to the default chain, tcp_proxy to PassthroughCluster.
- TCP ports (and ports without a protocol: no sniffing here, they are TCP):
  `<clusterIP>_<port>` with tcp_proxy to `outbound|<port>||<host>` (or to the
  destination of a VirtualService `tcp` route whose match fits: port, source labels and
  namespace, `destinationSubnets` holding the listener's address). TLS/HTTPS ports add
  one chain per VirtualService `tls` match, told apart by SNI (`sniHosts`). A headless service gets a listener per
  endpoint (`<podIP>_<port>`, never the sidecar's own IP); a service without any cluster
  IP (a static file) gets `0.0.0.0_<port>`.
- ServiceEntry hosts: TCP ports listen on each IP of `addresses`; a CIDR becomes chains
  of `0.0.0.0_<port>` matching the range (`prefix_ranges`); without addresses the port
  is `0.0.0.0_<port>`, so every TCP connection to that port goes to the host, as in
  istiod. TLS/HTTPS ports on the wildcard tell hosts apart by SNI (`server_names`).
  HTTP ports join `0.0.0.0_<port>` like any service (virtual hosts: sidecar_routes.py).
- Conflicts on one address and port resolve as istiod does, services taken oldest first:
  HTTP and TCP mix into one listener that tells them apart by ALPN (the match-all TCP
  chain becomes the default chain); a second TCP service whose chain would match exactly
  what the first one matches is dropped (Envoy rejects duplicate matches).
- Only the services of the proxy's scope (model/sidecar_scope.py: exportTo, the Sidecar
  that applies) get listeners, and only its VirtualServices apply.
- `virtualOutbound` passes everything no listener claims to PassthroughCluster (Istio's
  default outboundTrafficPolicy ALLOW_ANY), to the Sidecar's `egressProxy`, or, with
  REGISTRY_ONLY, to BlackHoleCluster (so do HTTP listeners' non-HTTP default chains),
  except connections to 15001 itself.
"""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

from envoy.config.core.v3 import address_pb2, base_pb2
from envoy.config.listener.v3 import listener_components_pb2 as lc
from envoy.config.listener.v3 import listener_pb2
from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2
from google.protobuf import duration_pb2, wrappers_pb2

from .. import names
from ..config.objects import ConfigObject
from ..config.types.virtualservice import L4Match, RouteDestination
from ..model import protocol
from ..model.delegates import resolve_gateway_name
from ..model.hosts import covers
from ..model.mesh import MeshSnapshot
from ..model.proxy import Proxy
from ..model.services import Service, ServicePort, labels_match
from ..model.sidecar_scope import EgressScope, SidecarScope
from . import filter_chains, filters, tls
from .http_routes import RouteContext, destination_cluster
from .virtual_services import MESH_GATEWAY, virtual_service_hosts

WILDCARD = "0.0.0.0"
VIRTUAL_OUTBOUND = "virtualOutbound"
BLACKHOLE_CHAIN = "virtualOutbound-blackhole"
CATCHALL_CHAIN = "virtualOutbound-catchall-tcp"
PASSTHROUGH_CHAIN = "PassthroughFilterChain"

# Never an outbound listener: the sidecar's own capture ports, and on the wildcard address
# the names of the static health and Prometheus listeners of the bootstrap.
RESERVED_PORTS = frozenset({names.PORT_OUTBOUND, names.PORT_INBOUND})
RESERVED_WILDCARD_PORTS = RESERVED_PORTS | {names.PORT_HEALTH, names.PORT_STATS}

HTTP, TCP, MIXED = "HTTP", "TCP", "MIXED"
SERVICE_ENTRY = "ServiceEntry"  # Service.source of ServiceEntry hosts


def service_age(svc: Service) -> tuple[bool, str, str]:
    return (svc.created == "", svc.created, svc.hostname)


def services_by_age(mesh: MeshSnapshot, proxy: Proxy) -> list[Service]:
    """The services in `proxy`'s scope (model/sidecar_scope.py), ordered as istiod orders
    them wherever the first one wins: by creation time, then host."""
    return sorted(mesh.sidecar_scope(proxy).services.values(), key=service_age)


def fallback_cluster(scope: SidecarScope) -> str:
    """Where traffic to a host outside the registry goes (outboundTrafficPolicy):
    PassthroughCluster (ALLOW_ANY), the `egressProxy`'s cluster, or BlackHoleCluster
    (REGISTRY_ONLY)."""
    if scope.registry_only:
        return names.BLACKHOLE_CLUSTER
    proxy = scope.egress_proxy
    if proxy is not None:
        return names.outbound_cluster(proxy.port or 0, proxy.host, proxy.subset)
    return names.PASSTHROUGH_CLUSTER


def is_http_port(sp: ServicePort) -> bool:
    return protocol.is_http(protocol.of_service_port(sp))


def http_route_ports(mesh: MeshSnapshot, proxy: Proxy) -> list[int]:
    """The ports whose outbound listener fetches route configuration `<port>` over RDS."""
    services = mesh.sidecar_scope(proxy).services.values()
    return sorted({sp.port for svc in services for sp in svc.ports if is_http_port(sp)} - RESERVED_WILDCARD_PORTS)


@dataclass
class _Chain:
    filters: list[lc.Filter]
    match: lc.FilterChainMatch = field(default_factory=lc.FilterChainMatch)
    name: str = ""

    def key(self) -> bytes:
        return bytes(self.match.SerializeToString(deterministic=True))  # the same object: typed

    def match_all(self) -> bool:
        return not self.match.ByteSize()


@dataclass
class _Entry:
    bind: str
    port: int
    kind: str
    chains: list[_Chain]
    bind_to_port: bool = False  # a captureMode NONE egress listener: dialled, not captured

    def merge(self, incoming: list[_Chain]) -> None:
        """Add chains whose match differs from every existing one (istiod's
        mergeTCPFilterChains: the first chain with a match wins)."""
        keys = {c.key() for c in self.chains}
        for c in incoming:
            if c.key() not in keys:
                keys.add(c.key())
                self.chains.append(c)


def outbound_listeners(mesh: MeshSnapshot, proxy: Proxy) -> list[listener_pb2.Listener]:
    entries: dict[tuple[str, int], _Entry] = {}
    scope = mesh.sidecar_scope(proxy)
    vss = list(scope.virtual_services)
    for e in scope.egress:
        if e.bind:
            _egress_listener(entries, mesh, proxy, e, vss)
    for svc in sorted(scope.captured.values(), key=service_age):
        for sp in svc.ports:
            proto = protocol.of_service_port(sp)
            if proto == protocol.UDP:
                continue
            if protocol.is_http(proto):
                _add(entries, WILDCARD, sp.port, HTTP, [_http_chain(sp.port, proto)])
                continue
            for bind in _tcp_binds(mesh, proxy, svc, sp):
                _add(entries, bind, sp.port, TCP, [*_tls_route_chains(mesh, proxy, svc, sp, vss, bind),
                                                   _tcp_chain(mesh, proxy, svc, sp, vss, bind)])
    fallback = fallback_cluster(scope)
    return [_listener(entries[k], fallback) for k in sorted(entries, key=lambda k: (k[1], k[0]))]


def _egress_listener(entries: dict[tuple[str, int], _Entry], mesh: MeshSnapshot, proxy: Proxy, e: EgressScope,
                     vss: list[ConfigObject]) -> None:
    """A Sidecar egress listener with an address (`bind`, or 127.0.0.1 under captureMode
    NONE): one listener `<bind>_<port>` of the listener's protocol for its services on its
    port, bound for real under captureMode NONE (istiod's buildSidecarOutboundListeners)."""
    proto = protocol.parse(e.listener.port.protocol if e.listener.port is not None else "")
    if proto == protocol.UDP:
        return
    if protocol.is_http(proto):
        _add(entries, e.bind, e.port, HTTP, [_http_chain(e.port, proto, e.bind)], e.bind_to_port)
        return
    for svc in sorted(e.services, key=service_age):
        sp = svc.port(e.port)
        if sp is not None:
            _add(entries, e.bind, e.port, TCP, [*_tls_route_chains(mesh, proxy, svc, sp, vss, e.bind),
                                                 _tcp_chain(mesh, proxy, svc, sp, vss, e.bind)], e.bind_to_port)


def _tcp_binds(mesh: MeshSnapshot, proxy: Proxy, svc: Service, sp: ServicePort) -> list[str]:
    if svc.source == SERVICE_ENTRY:
        return service_entry_binds(svc)
    if svc.vip:
        return [svc.vip]
    if svc.headless:
        # One listener per pod: the application dialled that pod's address.
        addrs = {ep.address for ep in mesh.service_endpoints(svc.hostname, sp.port) if ep.address != proxy.ip}
        return sorted(addrs)
    return [WILDCARD]


def service_entry_binds(svc: Service) -> list[str]:
    """A ServiceEntry's listener addresses: each IP of `addresses` (a /32 or /128 is an IP),
    each CIDR as itself (the wildcard listener matches it: _add), none: the wildcard
    (istiod gives each (host, address) a service of its own; without addresses 0.0.0.0,
    so every connection to the port goes to the host)."""
    out = []
    for a in svc.addresses:
        try:
            net = ipaddress.ip_network(a, strict=False)
        except ValueError:
            continue  # validation rejects it; never a listener
        single = net.prefixlen == net.max_prefixlen
        out.append(str(net.network_address) if single else str(net))
    return sorted(set(out)) or [WILDCARD]


def _add(entries: dict[tuple[str, int], _Entry], bind: str, port: int, kind: str, chains: list[_Chain],
         bind_to_port: bool = False) -> None:
    if "/" in bind:
        # A CIDR: the wildcard listener, its chains matching the range (istiod).
        net = ipaddress.ip_network(bind, strict=False)
        for c in chains:
            r = c.match.prefix_ranges.add(address_prefix=str(net.network_address))
            r.prefix_len.value = net.prefixlen
        bind = WILDCARD
    if port in RESERVED_PORTS or (bind == WILDCARD and port in RESERVED_WILDCARD_PORTS):
        return
    key = (bind, port)
    cur = entries.get(key)
    if cur is None:
        entries[key] = _Entry(bind, port, kind, chains, bind_to_port)
        return
    if kind == HTTP and cur.kind in (HTTP, MIXED):
        return  # one HTTP chain per port serves every host (virtual hosts come over RDS)
    cur.merge(chains)
    if cur.kind != kind:
        cur.kind = MIXED  # HTTP and TCP on one port: told apart by the http_inspector


def _http_chain(port: int, proto: str, bind: str = WILDCARD) -> _Chain:
    hcm = filters.sidecar_http_connection_manager(
        f"outbound_{bind}_{port}", proto, inbound=False, rds=str(port)
    )
    match = lc.FilterChainMatch(
        transport_protocol=tls.RAW_BUFFER_TRANSPORT, application_protocols=list(tls.ALPN_PLAINTEXT_HTTP)
    )
    return _Chain([filters.network_filter(filters.HTTP_CONNECTION_MANAGER, hcm)], match)


def _tcp_chain(mesh: MeshSnapshot, proxy: Proxy, svc: Service, sp: ServicePort, vss: list[ConfigObject],
               bind: str = WILDCARD) -> _Chain:
    tcp = _virtual_service_tcp_proxy(mesh, proxy, svc, sp, vss, bind)
    if tcp is None:
        cluster = names.outbound_cluster(sp.port, svc.hostname)
        tcp = filters.tcp_proxy(cluster, [(cluster, 1)])
    match = lc.FilterChainMatch()
    if (svc.source == SERVICE_ENTRY and protocol.of_service_port(sp) in (protocol.TLS, protocol.HTTPS)
            and (bind == WILDCARD or "/" in bind)):
        # Without an address of its own, TLS to the port is told apart by SNI: the host
        # (istiod's buildSidecarOutboundTLSFilterChainOpts; a Kubernetes Service always
        # has a cluster IP there, one from a static file without keeps its match-all chain).
        match = lc.FilterChainMatch(transport_protocol=tls.TLS_TRANSPORT, server_names=[svc.hostname])
    return _Chain([filters.network_filter(filters.TCP_PROXY, tcp)], match)


# --- VirtualService tcp routes --------------------------------------------------------


def _vs_matches_host(vs: ConfigObject, host: str) -> bool:
    return any(h == host or (h.startswith("*") and covers(h, host)) for h in virtual_service_hosts(vs))


def _in_subnets(address: str, subnets: tuple[str, ...]) -> bool:
    import ipaddress

    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    for cidr in subnets:
        try:
            if ip in ipaddress.ip_network(cidr, strict=False):
                return True
        except ValueError:
            continue
    return False


def _tcp_match_applies(m: L4Match, vs: ConfigObject, proxy: Proxy, port: int, bind: str = WILDCARD) -> bool:
    if m.port and m.port != port:
        return False
    subnets = m.destination_subnets
    if subnets and not _in_subnets(bind, subnets):
        # The listener is the service's own address: the rule applies when that address
        # is in one of the subnets (a wildcard listener has no address to compare).
        return False
    gateways = [resolve_gateway_name(g, vs.namespace) for g in m.gateways]
    if gateways and MESH_GATEWAY not in gateways:
        return False
    if not labels_match(m.source_labels, proxy.labels):
        return False
    ns = m.source_namespace
    return not ns or ns == proxy.namespace


def _tls_route_chains(mesh: MeshSnapshot, proxy: Proxy, svc: Service, sp: ServicePort, vss: list[ConfigObject],
                      bind: str) -> list[_Chain]:
    """VirtualService `tls` rules for a TLS/HTTPS service port: one chain per match, told
    apart by SNI (`sniHosts`), proxying the still encrypted bytes to the rule's route
    (istiod's buildSidecarOutboundTLSFilterChainOpts). Other connections fall to the
    port's default chain."""
    if protocol.of_service_port(sp) not in (protocol.TLS, protocol.HTTPS):
        return []
    ctx = RouteContext(mesh, proxy, sp.port, frozenset({MESH_GATEWAY}))
    out: list[_Chain] = []
    for vs in vss:
        if not _vs_matches_host(vs, svc.hostname):
            continue
        for rule in vs.typed.tls:
            if not rule.route:
                continue
            for m in rule.match:
                if not _tcp_match_applies(m, vs, proxy, sp.port, bind):
                    continue
                sni = sorted({h.lower() for h in m.sni_hosts if h != "*"})
                match = lc.FilterChainMatch(transport_protocol=tls.TLS_TRANSPORT, server_names=sni)
                out.append(_Chain([filters.network_filter(filters.TCP_PROXY, _route_tcp_proxy(vs, rule.route, ctx))],
                                  match))
    return out


def _route_tcp_proxy(vs: ConfigObject, destinations: tuple[RouteDestination, ...],
                     ctx: RouteContext) -> tcp_proxy_pb2.TcpProxy:
    clusters = [(destination_cluster(d.destination, vs.namespace, ctx), d.weight) for d in destinations]
    weighted = [c for c in clusters if c[1] > 0] if len(clusters) > 1 else []
    if weighted:
        return filters.tcp_proxy(f"{vs.name}.{vs.namespace}", weighted)
    return filters.tcp_proxy(clusters[0][0], [(clusters[0][0], 1)])


def _virtual_service_tcp_proxy(mesh: MeshSnapshot, proxy: Proxy, svc: Service, sp: ServicePort, vss: list[ConfigObject],
                               bind: str = WILDCARD) -> tcp_proxy_pb2.TcpProxy | None:
    """tcp_proxy for the first VirtualService `tcp` rule of the host that applies here."""
    ctx = RouteContext(mesh, proxy, sp.port, frozenset({MESH_GATEWAY}))
    for vs in vss:
        if not _vs_matches_host(vs, svc.hostname):
            continue
        for rule in vs.typed.tcp:
            if not rule.route:
                continue
            if rule.match and not any(_tcp_match_applies(m, vs, proxy, sp.port, bind) for m in rule.match):
                continue
            return _route_tcp_proxy(vs, rule.route, ctx)
    return None


# --- listeners -----------------------------------------------------------------------


def _passthrough_filter(cluster: str = names.PASSTHROUGH_CLUSTER) -> lc.Filter:
    return filters.network_filter(filters.TCP_PROXY, filters.tcp_proxy(cluster, [(cluster, 1)]))


def _listener(e: _Entry, fallback: str = names.PASSTHROUGH_CLUSTER) -> listener_pb2.Listener:
    out = listener_pb2.Listener(
        name=f"{e.bind}_{e.port}",
        address=address_pb2.Address(socket_address=address_pb2.SocketAddress(address=e.bind, port_value=e.port)),
        traffic_direction=base_pb2.OUTBOUND,
        # Reached through virtualOutbound's use_original_dst, unless the application
        # dials it (a captureMode NONE egress listener).
        bind_to_port=wrappers_pb2.BoolValue(value=e.bind_to_port),
    )
    default: lc.FilterChain | None = None
    for c in e.chains:
        chain = lc.FilterChain(filters=c.filters, name=c.name)
        if c.match_all():
            chain.filter_chain_match.SetInParent()
            default = chain
        else:
            chain.filter_chain_match.CopyFrom(c.match)
            out.filter_chains.append(chain)
    if default is not None and not out.filter_chains:
        default.ClearField("filter_chain_match")
        out.filter_chains.append(default)
    elif default is not None:
        # The match-all chain is the fallback of the matching ones (istio/istio#26079).
        out.default_filter_chain.CopyFrom(default)
    else:
        # Only HTTP chains: what is not plaintext HTTP passes through untouched.
        out.default_filter_chain.CopyFrom(
            lc.FilterChain(name=PASSTHROUGH_CHAIN, filter_chain_match=lc.FilterChainMatch(),
                           filters=[_passthrough_filter(fallback)])
        )
    deduped = filter_chains.dedupe(out.filter_chains)  # a no-op: entries merge by match
    del out.filter_chains[:]
    out.filter_chains.extend(deduped)
    lfs = filter_chains.inspectors(out.filter_chains)
    if lfs:
        # Outbound listeners set application_protocols without a transport protocol only
        # together with raw_buffer, but Envoy injects a tls_inspector for ALPN matches
        # anyway; istiod installs both explicitly.
        out.listener_filters.append(filters.tls_inspector_filter())
        out.listener_filters.append(filters.http_inspector_filter())
        out.listener_filters_timeout.CopyFrom(duration_pb2.Duration())
        out.continue_on_listener_filters_timeout = True
    return out


def virtual_outbound(mesh: MeshSnapshot, proxy: Proxy) -> listener_pb2.Listener:
    """15001: what no listener claims goes where the outbound traffic policy says
    (fallback_cluster): PassthroughCluster, the egress proxy, or BlackHoleCluster."""
    fallback = fallback_cluster(mesh.sidecar_scope(proxy))
    blackhole_match = lc.FilterChainMatch()
    blackhole_match.destination_port.value = names.PORT_OUTBOUND
    blackhole = filters.network_filter(
        filters.TCP_PROXY, filters.tcp_proxy(names.BLACKHOLE_CLUSTER, [(names.BLACKHOLE_CLUSTER, 1)])
    )
    return listener_pb2.Listener(
        name=VIRTUAL_OUTBOUND,
        address=address_pb2.Address(
            socket_address=address_pb2.SocketAddress(address=WILDCARD, port_value=names.PORT_OUTBOUND)
        ),
        use_original_dst=wrappers_pb2.BoolValue(value=True),
        filter_chains=[
            # Connections to 15001 itself would loop back into this listener.
            lc.FilterChain(name=BLACKHOLE_CHAIN, filter_chain_match=blackhole_match, filters=[blackhole]),
            lc.FilterChain(name=CATCHALL_CHAIN, filters=[_passthrough_filter(fallback)]),
        ],
        traffic_direction=base_pb2.OUTBOUND,
    )
