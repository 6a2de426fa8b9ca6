"""RDS for sidecars: route configuration `<port>` for every HTTP service port of the mesh
(istiod's buildSidecarOutboundHTTPRouteConfig, read not copied).

Virtual hosts are named `<host>:<port>`. A service's domains are its FQDN, the short
names a client in the proxy's namespace can use (`name`, `name.ns`, `name.ns.svc` for a
service of the same namespace; `name.ns`, `name.ns.svc` for one of another namespace) and
its cluster IP (a ServiceEntry: each IP of its `addresses`; a wildcard host such as
`*.wikipedia.org` is its own domain); ports are not listed because the route
configuration ignores the port in the Host header (`ignore_port_in_host_matching`, as
current istiod sets for sidecars).
A service a VirtualService (bound to `mesh`) routes for gets the VirtualService's routes;
other services a default route to `outbound|<port>||<host>`. VirtualService hosts that are
no service become virtual hosts of their own (on port 80, or next to a service they also
name). Last, `allow_any` sends requests for unknown hosts to PassthroughCluster (or to
the Sidecar's `egressProxy`); with outboundTrafficPolicy REGISTRY_ONLY, `block_all`
answers them 502. Only the services and VirtualServices of the proxy's scope take part
(model/sidecar_scope.py): those of the egress listener serving the port.
"""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from envoy.config.route.v3 import route_components_pb2 as rc
from envoy.config.route.v3 import route_pb2

from .. import names
from ..config.objects import ConfigObject
from ..config.types.virtualservice import Destination
from ..model.hosts import covers
from ..model.mesh import MeshSnapshot
from ..model.proxy import Proxy
from ..model.services import Service
from ..model.sidecar_scope import SidecarScope
from .http_routes import NO_TIMEOUT, RouteContext, hash_policy, virtual_service_routes
from .route_config import route_config
from .route_policies import retry_policy
from .sidecar_outbound import (
    SERVICE_ENTRY,
    WILDCARD,
    fallback_cluster,
    http_route_ports,
    is_http_port,
    service_age,
    service_entry_binds,
    services_by_age,
)
from .virtual_services import MESH_GATEWAY, virtual_service_hosts

ALLOW_ANY = "allow_any"
BLOCK_ALL = "block_all"
DEFAULT_ROUTE = "default"
KUBE_SUFFIX = f".svc.{names.DOMAIN_SUFFIX}"


def sidecar_route_configs(mesh: MeshSnapshot, proxy: Proxy) -> list[route_pb2.RouteConfiguration]:
    """One route configuration per HTTP port of the proxy's scope, each made of what the
    egress listener serving the port imports (istiod's GetEgressListenerForRDS)."""
    scope = mesh.sidecar_scope(proxy)
    out = []
    for port in http_route_ports(mesh, proxy):
        egress = scope.egress_for(port)
        vss = list(egress.virtual_services) if egress is not None else []
        out.append(route_config_for_port(mesh, proxy, port, vss, egress.services if egress is not None else ()))
    return out


@dataclass
class _Wrapper:
    """Virtual hosts sharing routes: a VirtualService's hosts, or one service's default."""

    routes: list[rc.Route]
    services: list[Service]
    other_hosts: list[str]  # VirtualService hosts that are no service


def alt_hosts(hostname: str, proxy_namespace: str) -> list[str]:
    """Short names of a Kubernetes service host as seen from `proxy_namespace`."""
    if not hostname.endswith(KUBE_SUFFIX):
        return []
    parts = hostname[: -len(KUBE_SUFFIX)].split(".")
    if len(parts) != 2:
        return []
    name, ns = parts
    if ns == proxy_namespace:
        return [name, f"{name}.{ns}.svc", f"{name}.{ns}"]
    return [f"{name}.{ns}", f"{name}.{ns}.svc"]


def service_domains(svc: Service, proxy_namespace: str) -> tuple[list[str], list[str]]:
    alts = alt_hosts(svc.hostname, proxy_namespace)
    domains = [svc.hostname, *alts]
    if svc.headless:
        # Clients address single pods of a headless service by `<pod>.<service>...`.
        domains += [f"*.{d}" for d in domains]
    if svc.source == SERVICE_ENTRY:
        # Each IP of a ServiceEntry's `addresses` (istiod leaves CIDRs out).
        domains += [a for a in service_entry_binds(svc) if a != WILDCARD and "/" not in a]
    elif svc.vip:
        domains.append(svc.vip)
    return domains, alts


def _most_specific_wildcards(vss: list[ConfigObject], services: dict[str, Service]) -> dict[str, tuple[str, str]]:
    """Service host -> the VirtualService whose wildcard host names it most specifically."""
    best: dict[str, tuple[int, tuple[str, str]]] = {}
    for vs in vss:
        for h in virtual_service_hosts(vs):
            if not h.startswith("*"):
                continue
            for host in services:
                if covers(h, host) and len(h) > best.get(host, (-1, None))[0]:
                    best[host] = (len(h), (vs.namespace, vs.name))
    return {host: v[1] for host, v in best.items()}


def _names_service(vs_host: str, services: dict[str, Service]) -> bool:
    if vs_host in services:
        return True
    return vs_host.startswith("*") and any(covers(vs_host, host) for host in services)


def _separate(vs: ConfigObject, services: dict[str, Service],
              wildcard_owner: dict[str, tuple[str, str]]) -> tuple[list[str], list[Service]]:
    other_hosts: list[str] = []
    matched: list[Service] = []
    for h in virtual_service_hosts(vs):
        if not h.startswith("*"):
            if h in services:
                matched.append(services[h])
            else:
                other_hosts.append(h)
            continue
        found = False
        for host, svc in services.items():
            if covers(h, host):
                found = True
                if wildcard_owner.get(host) == (vs.namespace, vs.name) and svc not in matched:
                    matched.append(svc)
        if not found:
            other_hosts.append(h)
    return other_hosts, matched


def route_config_for_port(
    mesh: MeshSnapshot, proxy: Proxy, port: int, vss: list[ConfigObject], imported: Iterable[Service] | None = None,
) -> route_pb2.RouteConfiguration:
    """Route configuration `<port>`: of `imported` (the egress listener's services; by
    default the proxy's scope), the virtual hosts of those with the port."""
    pool = services_by_age(mesh, proxy) if imported is None else sorted(imported, key=service_age)
    all_services = {svc.hostname: svc for svc in pool}
    services = {h: svc for h, svc in all_services.items() if svc.port(port) is not None}
    if port != 80:
        # istiod keeps VirtualServices naming no service of the port off other ports.
        vss = [vs for vs in vss if any(_names_service(h, services) for h in virtual_service_hosts(vs))]
    owners = _most_specific_wildcards(vss, all_services)
    ctx = RouteContext(mesh, proxy, port, frozenset({MESH_GATEWAY}))

    wrappers: list[_Wrapper] = []
    routed: set[str] = set()
    for vs in vss:
        routes = virtual_service_routes(vs, ctx)
        if not routes:
            continue
        # Hosts that name a service of any port are that service's (istiod's
        # separateVSHostsAndServices); only a VirtualService naming no HTTP service at all
        # lands on port 80 with its other hosts.
        other_hosts, matched = _separate(vs, all_services, owners)
        http_services = [s for s in matched if (sp := s.port(port)) is not None and is_http_port(sp)]
        if not http_services:
            if port != 80 or any(is_http_port(sp) for svc in matched for sp in svc.ports):
                continue
        wrappers.append(_Wrapper(routes, http_services, other_hosts))
        routed.update(s.hostname for s in http_services)
    for svc in services.values():
        sp = svc.port(port)
        if svc.hostname not in routed and sp is not None and is_http_port(sp):  # every one has the port
            wrappers.append(_Wrapper([default_route(mesh, proxy, svc, port)], [svc], []))

    known_fqdns = {h for w in wrappers for s in w.services for h in (s.hostname, names.virtual_host_name(s.hostname, port))}
    vhost_names: set[str] = set()
    seen_domains: set[str] = set()
    vhosts: list[rc.VirtualHost] = []

    def add(host: str, domains: list[str], expanded: list[str], routes: list[rc.Route]) -> None:
        name = names.virtual_host_name(host, port)
        if name in vhost_names:
            return  # a second VirtualService for the same host: the first one wins
        vhost_names.add(name)
        kept = []
        for d in domains:
            if d.lower() in seen_domains or (d in expanded and d in known_fqdns):
                continue  # Envoy rejects a domain in two virtual hosts of one configuration
            seen_domains.add(d.lower())
            kept.append(d)
        if kept:
            vhosts.append(rc.VirtualHost(name=name, domains=kept, routes=routes, include_request_attempt_count=True))

    for w in wrappers:
        for host in w.other_hosts:
            add(host, [host], [], w.routes)
        for svc in w.services:
            domains, expanded = service_domains(svc, proxy.namespace)
            add(svc.hostname, domains, expanded, w.routes)
    vhosts.sort(key=lambda v: v.name)
    vhosts.append(fallback_virtual_host(mesh.sidecar_scope(proxy)))
    return route_config(str(port), vhosts)


def default_route(mesh: MeshSnapshot, proxy: Proxy, svc: Service, port: int) -> rc.Route:
    """What a service without a VirtualService gets: everything to its cluster, with
    Istio's default retries and no timeout; a DestinationRule's consistent hash applies."""
    cluster = names.outbound_cluster(port, svc.hostname)
    action = rc.RouteAction(cluster=cluster, timeout=NO_TIMEOUT, max_grpc_timeout=NO_TIMEOUT)
    ctx = RouteContext(mesh, proxy, port, frozenset({MESH_GATEWAY}))
    hp = hash_policy(Destination(svc.hostname, port=port), svc.namespace, ctx)
    if hp is not None:
        action.hash_policy.append(hp)
    policy = retry_policy(None, consistent_hash=hp is not None, mesh_default=mesh.mesh_config.default_http_retry_policy)
    if policy is not None:
        action.retry_policy.CopyFrom(policy)
    return rc.Route(
        name=DEFAULT_ROUTE,
        match=rc.RouteMatch(prefix="/"),
        route=action,
        decorator=rc.Decorator(operation=f"{svc.hostname}:{port}/*"),
    )


def fallback_virtual_host(scope: SidecarScope) -> rc.VirtualHost:
    """Requests for hosts outside the registry: `block_all` answers 502 (REGISTRY_ONLY),
    else `allow_any` passes them on (to the `egressProxy`, if one is set)."""
    if scope.registry_only:
        return block_all_virtual_host()
    return allow_any_virtual_host(fallback_cluster(scope))


def block_all_virtual_host() -> rc.VirtualHost:
    """outboundTrafficPolicy REGISTRY_ONLY: a host the proxy does not know gets a 502."""
    route = rc.Route(name=BLOCK_ALL, match=rc.RouteMatch(prefix="/"), direct_response=rc.DirectResponseAction(status=502))
    return rc.VirtualHost(name=BLOCK_ALL, domains=["*"], routes=[route], include_request_attempt_count=True)


def allow_any_virtual_host(cluster: str = names.PASSTHROUGH_CLUSTER) -> rc.VirtualHost:
    """Unknown hosts pass through to where the application was connecting
    (outboundTrafficPolicy ALLOW_ANY), or to the egress proxy."""
    action = rc.RouteAction(cluster=cluster, timeout=NO_TIMEOUT, max_grpc_timeout=NO_TIMEOUT)
    route = rc.Route(name=ALLOW_ANY, match=rc.RouteMatch(prefix="/"), route=action)
    return rc.VirtualHost(name=ALLOW_ANY, domains=["*"], routes=[route], include_request_attempt_count=True)
