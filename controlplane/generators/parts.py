"""A proxy's resources of one type, cut into parts that can be shared.

Most of what a sidecar receives is the same for every sidecar of its namespace (its
outbound clusters, endpoints, listeners and routes); only a small part is its own (the
inbound side, which depends on the services its workload serves). Each `Part` is its
build function with, declared on it, what the build reads: of the proxy (`scope`, a
function returning exactly the proxy's inputs to the output) and of the mesh (`deps`,
fingerprints from dependencies.py, named in inputs.py). The Generator builds a part once per distinct
(scope, deps) and composes a proxy's answer from its parts, so 2,000 sidecars in ten
namespaces cost ten outbound generations, not 2,000.

Inside the big parts, output is cached per resource too (outbound clusters and their
ClusterLoadAssignments): a changed DestinationRule rebuilds the clusters of its host
only, a changed EndpointSlice the assignments of its host only.

Two tests keep the declarations honest:
- tests/unit/test_part_inputs.py builds every part in tracking mode (ledger.py), which
  records what the build reads of the snapshot and the proxy, and fails on anything its
  scope and deps do not cover;
- tests/unit/test_push_generation.py: the composition equals the plain builders' output
  (clusters.build, listeners.build, ...) after any sequence of changes, byte for byte.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from google.protobuf.message import Message

from .. import names
from ..model.indexes import Value
from ..model.locality import NO_LOCALITY
from ..model.mesh import MeshSnapshot
from ..model.proxy import ROUTER, SIDECAR, Proxy
from . import auto_mtls, cluster_discovery, clusters, endpoints, listeners, locality_lb
from .dependencies import (
    client_mesh_settings,
    dns_hosts,
    dr_selectors,
    endpoint_facts,
    fingerprints,
    fingerprints_value,
    gateway_certificates,
    headless_ips,
    host_endpoints,
    instance_shape,
    kind,
    locality_inputs,
    localized_hosts,
    mtls_policy,
    namespace_mode,
    namespace_secrets,
    proxy_locality,
    security,
    seen_rules,
    service_accounts,
    service_generation,
    sidecar_ingress,
    sidecar_view,
    uses_dr_credentials,
    uses_source_labels,
)
from .destinations import OutboundCluster, outbound_clusters, service_clusters
from .envoyfilter import bootstrap as envoyfilter_bootstrap
from .inputs import (
    ALL_CONFIG,
    DR_ROUTING,
    GATEWAY,
    MESH_VERSION,
    OTHER,
    PEER_AUTHENTICATION,
    SECRET,
    SECURITY_KINDS,
)
from .resources import Resource, pack
from .sidecar_inbound import inbound_listeners
from .sidecar_outbound import outbound_listeners, virtual_outbound
from .sidecar_routes import sidecar_route_configs
from .tracing import proxy_telemetry, telemetry_key

Builder = Callable[[MeshSnapshot, Proxy], Iterable[tuple[str, Message]]]


class ResourceCache:
    """Packed resources by a key naming everything they were built from. Entries not
    used for `keep` generations are dropped (a generation = a new mesh snapshot seen)."""

    def __init__(self, keep: int = 2):
        self._items: dict[tuple[Any, ...], tuple[int, Resource]] = {}
        self._keep = keep
        self.epoch = 0
        self.hits = self.misses = 0

    def get(self, key: tuple[Any, ...]) -> Resource | None:
        got = self._items.get(key)
        if got is None:
            self.misses += 1
            return None
        self.hits += 1
        if got[0] != self.epoch:
            self._items[key] = (self.epoch, got[1])
        return got[1]

    def put(self, key: tuple[Any, ...], res: Resource) -> Resource:
        self._items[key] = (self.epoch, res)
        return res

    def advance(self) -> None:
        self.epoch += 1
        cutoff = self.epoch - self._keep
        for k in [k for k, (e, _) in self._items.items() if e < cutoff]:
            del self._items[k]

    def __len__(self) -> int:
        return len(self._items)


Scope = Callable[[MeshSnapshot, Proxy], tuple[Any, ...]]
Build = Callable[[MeshSnapshot, Proxy, "Part", ResourceCache], list[Resource]]
UpdateHosts = Callable[[MeshSnapshot, Proxy, ResourceCache, Iterable[str]], dict[str, list[Resource]]]


@dataclass(frozen=True)
class Part:
    """One shareable piece of a proxy's resources of one type: its build and what it reads."""

    name: str
    type_url: str
    deps: tuple[str, ...]  # mesh fingerprints the output reads (dependencies.py)
    scope: Scope  # the proxy's inputs it reads (and the per-proxy fingerprints)
    build: Build
    endpoints: bool = False  # also reads endpoints (per host; EDS)
    # Given hosts whose endpoints or DestinationRules changed, each one's resources in
    # build order; the generator splices them into the previous set when nothing else
    # it reads changed (Generator._update_hosts).
    update_hosts: UpdateHosts | None = None
    # Per-proxy fingerprints standing for kinds the proxy sees only part of (its sidecar
    # scope: the services and VirtualServices it imports, dependencies.sidecar_view),
    # appended to the deps' fingerprints in the key.
    view: Scope | None = None
    # How many of the view's fingerprints (the last ones) change host by host, as
    # DESTINATION_RULE does: the generator follows them incrementally (_update_hosts).
    per_host_view: int = 0
    # The fingerprints of `deps`, kept by the snapshot (dependencies.fingerprints).
    _fingerprints: Value[tuple[str, ...]] = dataclasses.field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_fingerprints", fingerprints_value(self.deps))

    def key(self, mesh: MeshSnapshot, proxy: Proxy) -> tuple[Any, ...]:
        got = mesh.indexes.get(self._fingerprints)
        if got is None:
            got = mesh.indexes.value(self._fingerprints, fingerprints, mesh, self.deps)
        if self.view is not None:
            got = got + self.view(mesh, proxy)
        return (self.name, self.scope(mesh, proxy), got)


def part(name: str, type_url: str, deps: tuple[str, ...], scope: Scope, *, endpoints: bool = False,
         update_hosts: UpdateHosts | None = None, view: Scope | None = None,
         per_host_view: int = 0) -> Callable[[Build], Part]:
    """Declares a build function a Part: what it reads, on the function itself."""
    def declare(build: Build) -> Part:
        return Part(name, type_url, deps, scope, build, endpoints, update_hosts, view, per_host_view)
    return declare


def _packed(type_url: str, items: Iterable[tuple[str, Message]]) -> list[Resource]:
    return [pack(name, type_url, msg) for name, msg in items]


def whole(builder: Builder) -> Build:
    def build(mesh: MeshSnapshot, proxy: Proxy, part: Part, cache: ResourceCache) -> list[Resource]:
        return _packed(part.type_url, builder(mesh, proxy))
    return build


def _sees(mesh: MeshSnapshot, proxy: Proxy) -> tuple[Any, ...]:
    # What the proxy sees of services and VirtualServices: its sidecar scope.
    return sidecar_view(mesh, proxy)


def _sees_with_rules(mesh: MeshSnapshot, proxy: Proxy) -> tuple[Any, ...]:
    # ... and the DestinationRules of the hosts it sees (last: it changes host by host).
    return sidecar_view(mesh, proxy) + (seen_rules(mesh, proxy),)


# --- outbound clusters (sidecars and routers) ------------------------------------------

# What the outbound side reads of the mesh: the Services the proxy sees, the identities
# behind them and the DestinationRules of their hosts (its sidecar scope: `view`,
# dependencies.sidecar_view and seen_rules) with the namespace-level policy of its
# namespace that applies.
CLIENT_DEPS = (PEER_AUTHENTICATION, OTHER)


def _client_scope(mesh: MeshSnapshot, proxy: Proxy) -> tuple[Any, ...]:
    # Outbound clusters and endpoints: DestinationRule lookup by the client namespace
    # (and by the labels, only when a rule's workloadSelector selects the proxy: the
    # selectors that do, not the labels, so that such proxies share too), ORIGINAL_DST
    # and credentialName handling by type, mTLS by certificate, clusters left out for
    # want of a credential by the Secrets of the namespace (only if a rule names one).
    secrets = namespace_secrets(mesh, proxy.namespace) if uses_dr_credentials(mesh) else None
    selectors = dr_selectors(mesh, proxy.namespace, proxy.labels, proxy.label_key)
    return (proxy.type, proxy.namespace, proxy.workload_cert, selectors, secrets,
            _dns_scope(mesh, proxy) if dns_hosts(mesh) else None)


def _dns_scope(mesh: MeshSnapshot, proxy: Proxy) -> tuple[Any, ...]:
    # DNS clusters (cluster_discovery.py) look names up in the proxy's IP family and carry
    # their endpoints for the proxy's locality (clusters.outbound_cluster reads the mesh's
    # placement of the proxy whether or not a rule makes it matter).
    by_labels = locality_inputs(mesh)[1]
    # (through the fingerprint the cluster key reads too: the same proxy fields)
    return (cluster_discovery.is_ipv6(proxy.ip), proxy_locality(mesh, proxy), proxy.label_key if by_labels else None)


def _cluster_key(mesh: MeshSnapshot, proxy: Proxy, oc: OutboundCluster) -> tuple[Any, ...]:
    """Everything clusters.outbound_cluster reads for one cluster."""
    svc, rule = oc.service, oc.rule
    return (
        oc.name, proxy.type, proxy.workload_cert, service_generation(mesh, svc.hostname), client_mesh_settings(mesh),
        (rule.namespace, rule.name, rule.generation) if rule is not None else None,
        service_accounts(mesh, svc.hostname), namespace_mode(mesh, svc.namespace),
        endpoint_facts(mesh) if svc.headless else "",
        # A DNS cluster carries its endpoints (ENDPOINT_FACTS digests them) and reads the proxy.
        (endpoint_facts(mesh), cluster_discovery.is_ipv6(proxy.ip), proxy_locality(mesh, proxy),
         _locality_key(mesh, proxy, oc)) if cluster_discovery.is_dns(svc) else None,
    )
    # (A cluster whose credential cannot be served is left out before it is built, so
    # the Secrets never reach this key: the part's scope carries them.)


def _cluster(mesh: MeshSnapshot, proxy: Proxy, oc: OutboundCluster, cache: ResourceCache) -> Resource:
    key = ("cds",) + _cluster_key(mesh, proxy, oc)
    res = cache.get(key)
    if res is None:
        res = cache.put(key, pack(oc.name, names.CLUSTER, clusters.outbound_cluster(mesh, proxy, oc)))
    return res


def _clusters_of_hosts(mesh: MeshSnapshot, proxy: Proxy, cache: ResourceCache,
                       hosts: Iterable[str]) -> dict[str, list[Resource]]:
    """The outbound clusters of `hosts` only: a DestinationRule change costs the clusters
    of its hosts per sharing group, whatever the mesh size."""
    out: dict[str, list[Resource]] = {}
    scope = mesh.sidecar_scope(proxy)
    for host in hosts:
        svc = scope.service(host)
        out[host] = [] if svc is None else [
            _cluster(mesh, proxy, oc, cache) for oc in service_clusters(mesh, proxy, svc)]
    return out


_STATIC: dict[str, list[Resource]] = {}


def _static_clusters(proxy: Proxy) -> list[Resource]:
    got = _STATIC.get(proxy.type)
    if got is None:
        items = [(names.BLACKHOLE_CLUSTER, clusters.blackhole_cluster())]
        if proxy.type == SIDECAR:
            items.append((names.PASSTHROUGH_CLUSTER, clusters.passthrough_cluster(names.PASSTHROUGH_CLUSTER)))
            items.append((names.INBOUND_PASSTHROUGH_CLUSTER, clusters.passthrough_cluster(
                names.INBOUND_PASSTHROUGH_CLUSTER, clusters.INBOUND_PASSTHROUGH_BIND)))
        got = _STATIC[proxy.type] = _packed(names.CLUSTER, items)
    return got


@part("sidecar-outbound-clusters", names.CLUSTER, CLIENT_DEPS, _client_scope, update_hosts=_clusters_of_hosts,
      view=_sees_with_rules, per_host_view=1)
def OUTBOUND_CLUSTERS(mesh: MeshSnapshot, proxy: Proxy, part: Part, cache: ResourceCache) -> list[Resource]:
    return [_cluster(mesh, proxy, oc, cache) for oc in outbound_clusters(mesh, proxy)] + _static_clusters(proxy)


# --- inbound clusters (sidecars) -------------------------------------------------------

def _instances_scope(mesh: MeshSnapshot, proxy: Proxy) -> tuple[Any, ...]:
    # A Sidecar's ingress listeners, when it has some, replace the services' ports.
    return (proxy.type, instance_shape(mesh, proxy.ip), sidecar_ingress(mesh, proxy))


# The inbound side reads Services only as the instances at the proxy's address
# (instance_shape): a Service elsewhere changing leaves it alone.
@part("sidecar-inbound-clusters", names.CLUSTER, (OTHER,), _instances_scope)
def INBOUND_CLUSTERS(mesh: MeshSnapshot, proxy: Proxy, part: Part, cache: ResourceCache) -> list[Resource]:
    return _packed(names.CLUSTER, ((c.name, c) for c in clusters.inbound_clusters(mesh, proxy)))


# --- endpoints of the outbound clusters (sidecars and routers) --------------------------

def _eds_scope(mesh: MeshSnapshot, proxy: Proxy) -> tuple[Any, ...]:
    # Endpoints also read the proxy's locality (and labels, for failoverPriority), but
    # only when some DestinationRule can make them matter: 2,000 sidecars of a namespace
    # share one generation per locality, or one in all when no rule reads it.
    # The locality is the mesh's (the proxy's pod, or its Node): a Node relabelled moves it.
    by_locality, by_labels = locality_inputs(mesh)
    return (_client_scope(mesh, proxy), proxy_locality(mesh, proxy) if by_locality else None,
            proxy.label_key if by_labels else None)


def _locality_key(mesh: MeshSnapshot, proxy: Proxy, oc: OutboundCluster) -> tuple[Any, ...] | None:
    """What one assignment reads of the proxy for locality load balancing: nothing
    unless the cluster's own policy applies it (locality_lb.py)."""
    by_locality, by_labels = locality_inputs(mesh)
    if not (by_locality or by_labels):
        return None
    policy, default = endpoints.cluster_policy(oc), mesh.mesh_config.locality_lb_setting
    if not locality_lb.reads_proxy_locality(policy, oc.service.hostname in localized_hosts(mesh), default):
        return None
    labels = proxy.label_key if locality_lb.reads_proxy_labels(policy, default) else None
    return (proxy_locality(mesh, proxy), labels)


def _assignment(mesh: MeshSnapshot, proxy: Proxy, oc: OutboundCluster, cache: ResourceCache) -> Resource:
    """One cluster's ClusterLoadAssignment, as endpoints.build makes it, cached by its
    cluster's inputs plus the host's endpoints and the PeerAuthentications (endpoint
    metadata follows each endpoint's own policy)."""
    host = oc.service.hostname
    at = _locality_key(mesh, proxy, oc)
    key = ("eds",) + _cluster_key(mesh, proxy, oc) + (host_endpoints(mesh).get(host, ""), kind(mesh, PEER_AUTHENTICATION), at)
    res = cache.get(key)
    if res is None:
        ct = auto_mtls.cluster_tls(mesh, proxy, oc)
        eps = endpoints.cluster_endpoints(mesh, oc)
        mtls = {(ep.address, ep.port) for ep in eps if auto_mtls.endpoint_wants_mtls(mesh, oc, ep, ct)}
        # Without a locality key the cluster's policy reads no locality of the proxy.
        res = cache.put(key, pack(oc.name, names.ENDPOINT, endpoints.load_assignment(
            oc, eps, mtls, proxy, at[0] if at is not None else NO_LOCALITY, mesh.mesh_config.locality_lb_setting)))
    return res


def _endpoints_of_hosts(mesh: MeshSnapshot, proxy: Proxy, cache: ResourceCache,
                        hosts: Iterable[str]) -> dict[str, list[Resource]]:
    """The assignments of the clusters of `hosts` only: an endpoint change of a few
    services costs a few assignments per sharing group, whatever the mesh size."""
    out: dict[str, list[Resource]] = {}
    scope = mesh.sidecar_scope(proxy)
    for host in hosts:
        svc = scope.service(host)
        out[host] = [] if svc is None else [
            _assignment(mesh, proxy, oc, cache) for oc in service_clusters(mesh, proxy, svc)
            if cluster_discovery.uses_eds(oc.service, proxy)]
    return out


@part("sidecar-endpoints", names.ENDPOINT, CLIENT_DEPS, _eds_scope, endpoints=True, update_hosts=_endpoints_of_hosts,
      view=_sees_with_rules, per_host_view=1)
def ENDPOINTS(mesh: MeshSnapshot, proxy: Proxy, part: Part, cache: ResourceCache) -> list[Resource]:
    return [_assignment(mesh, proxy, oc, cache) for oc in outbound_clusters(mesh, proxy)
            if cluster_discovery.uses_eds(oc.service, proxy)]


# --- sidecar listeners -----------------------------------------------------------------

def _labels(mesh: MeshSnapshot, proxy: Proxy) -> tuple[Any, ...]:
    # Labels matter only where a VirtualService matches `sourceLabels`.
    return proxy.label_key if uses_source_labels(mesh) else ()


def _outbound_listener_scope(mesh: MeshSnapshot, proxy: Proxy) -> tuple[Any, ...]:
    # A sidecar at a headless service's endpoint gets no listener for itself.
    own_ip = proxy.ip if proxy.ip in headless_ips(mesh) else ""
    return (proxy.namespace, _labels(mesh, proxy), own_ip, proxy.workload_cert, telemetry_key(mesh, proxy))


@part("sidecar-outbound-listeners", names.LISTENER, (OTHER,), _outbound_listener_scope,
      view=_sees)
def OUTBOUND_LISTENERS(mesh: MeshSnapshot, proxy: Proxy, part: Part, cache: ResourceCache) -> list[Resource]:
    built = listeners.finish([*outbound_listeners(mesh, proxy), virtual_outbound(mesh, proxy)], mesh.mesh_config,
                             proxy_telemetry(mesh, proxy))
    return _packed(names.LISTENER, ((lst.name, lst) for lst in built))


def _inbound_scope(mesh: MeshSnapshot, proxy: Proxy) -> tuple[Any, ...]:
    # The replicas of a workload (same services and ports, same effective policy) share it.
    return (mtls_policy(mesh, proxy.namespace, proxy.labels, proxy.label_key), proxy.workload_cert,
            instance_shape(mesh, proxy.ip), security(mesh, proxy), sidecar_ingress(mesh, proxy),
            telemetry_key(mesh, proxy))


@part("sidecar-virtual-inbound", names.LISTENER, (PEER_AUTHENTICATION, *SECURITY_KINDS, OTHER), _inbound_scope)
def VIRTUAL_INBOUND(mesh: MeshSnapshot, proxy: Proxy, part: Part, cache: ResourceCache) -> list[Resource]:
    built = listeners.finish(inbound_listeners(mesh, proxy), mesh.mesh_config, proxy_telemetry(mesh, proxy))
    return _packed(names.LISTENER, ((lst.name, lst) for lst in built))


# --- sidecar routes --------------------------------------------------------------------

def _route_scope(mesh: MeshSnapshot, proxy: Proxy) -> tuple[Any, ...]:
    # Routes read DestinationRules too (consistent hash), as the proxy sees them.
    return (proxy.namespace, _labels(mesh, proxy), dr_selectors(mesh, proxy.namespace, proxy.labels, proxy.label_key))


@part("sidecar-routes", names.ROUTE, (DR_ROUTING, OTHER), _route_scope, view=_sees)
def SIDECAR_ROUTES(mesh: MeshSnapshot, proxy: Proxy, part: Part, cache: ResourceCache) -> list[Resource]:
    return _packed(names.ROUTE, ((cfg.name, cfg) for cfg in sidecar_route_configs(mesh, proxy)))


SIDECAR_PARTS: dict[str, Sequence[Part]] = {
    names.CLUSTER: (OUTBOUND_CLUSTERS, INBOUND_CLUSTERS),
    names.ENDPOINT: (ENDPOINTS,),
    names.LISTENER: (OUTBOUND_LISTENERS, VIRTUAL_INBOUND),
    names.ROUTE: (SIDECAR_ROUTES,),
}


# --- routers: the outbound side above, listeners and routes whole ------------------------

# Routers read (almost) everything but are few: one part per type, all config kinds.
# Secrets are left out: what a gateway reads of them (credentialName servers) is the
# Secrets of its own namespace, carried by its scope (_router_scope).
ROUTER_DEPS = tuple(d for d in ALL_CONFIG if d != SECRET)


def _group_scope(mesh: MeshSnapshot, proxy: Proxy) -> tuple[Any, ...]:
    return proxy.group_key()


def _router_scope(mesh: MeshSnapshot, proxy: Proxy) -> tuple[Any, ...]:
    # Gateway listeners leave out the TLS servers whose credentials are missing in the
    # gateway's namespace (gateway_tls.unusable_reason), or, for the Gateway API's
    # kubernetes-gateway:// references, missing or not granted: the only Secrets they read.
    # Authorization and JWT filters read fetched key sets and the mesh config too.
    return proxy.group_key() + (namespace_secrets(mesh, proxy.namespace), gateway_certificates(mesh, proxy),
                                security(mesh, proxy), telemetry_key(mesh, proxy))


def router_parts(table: dict[str, Builder]) -> dict[str, Sequence[Part]]:
    out: dict[str, Sequence[Part]] = {
        names.CLUSTER: (dataclasses.replace(OUTBOUND_CLUSTERS, name="router-clusters"),),
        names.ENDPOINT: (dataclasses.replace(ENDPOINTS, name="router-endpoints"),),
    }
    for type_url in (names.LISTENER, names.ROUTE):
        if type_url in table:
            scope = _router_scope if type_url == names.LISTENER else _group_scope
            out[type_url] = (Part(f"router-{names.SHORT[type_url].lower()}", type_url, ROUTER_DEPS, scope, whole(table[type_url])),)
    if names.SECRET in table:
        # a gateway's certificates follow the Gateways selecting it and the ReferenceGrants too
        out[names.SECRET] = (dataclasses.replace(secret_part("router-secrets", table[names.SECRET]),
                                                 deps=(GATEWAY, OTHER)),)
    return out


# --- credentials, and types without a declared split ------------------------------------

def _secret_scope(mesh: MeshSnapshot, proxy: Proxy) -> tuple[Any, ...]:
    # secrets.build: the credentials of the proxy's namespace, for an authenticated proxy,
    # and for a gateway the Gateway API certificates it may read (of any namespace).
    if not proxy.workload_cert:
        return (proxy.namespace, False, "", "")
    return (proxy.namespace, True, namespace_secrets(mesh, proxy.namespace), gateway_certificates(mesh, proxy))


def secret_part(name: str, builder: Builder) -> Part:
    """Credentials (`kubernetes://...`): they read the Secrets of the proxy's namespace
    and, for a gateway, those the Gateway API lets it read (`kubernetes-gateway://...`,
    dependencies.gateway_certificates), so a Secret change rebuilds only the proxies
    that may read it."""
    return Part(name, names.SECRET, (), _secret_scope, whole(builder))


def _fallback_scope(mesh: MeshSnapshot, proxy: Proxy) -> tuple[Any, ...]:
    # Whole builders may read anything of the proxy, EDS its locality as the mesh sees it.
    return proxy.group_key() + (proxy_locality(mesh, proxy),)


def fallback_part(type_url: str, builder: Builder) -> Part:
    """A type (or proxy type) without a declared split: one part per proxy group that
    depends on the whole snapshot (mesh version), exactly as the cache worked before."""
    return Part(f"whole-{type_url}", type_url, (MESH_VERSION,), _fallback_scope, whole(builder))


def _no_scope(mesh: MeshSnapshot, proxy: Proxy) -> tuple[Any, ...]:
    return ()


# The BOOTSTRAP type's base: the same empty Bootstrap for every proxy; the EnvoyFilter
# stage merges the patches selecting a proxy into it (envoyfilter/bootstrap.py).
BOOTSTRAP_BASE = Part("bootstrap", names.BOOTSTRAP, (), _no_scope, whole(envoyfilter_bootstrap.build))


def parts_for(proxy: Proxy, type_url: str, table: dict[str, Builder], routers: dict[str, Sequence[Part]],
              standard: bool) -> Sequence[Part]:
    """The parts of `proxy`'s resources of `type_url`. `standard` is False when the
    builder table is not the stock one (tests with their own builders): then every
    type is one whole part."""
    builder = table.get(type_url)
    if builder is None:
        return ()
    if standard:
        if type_url == names.BOOTSTRAP:
            return (BOOTSTRAP_BASE,)
        if proxy.type == SIDECAR and type_url in SIDECAR_PARTS:
            return SIDECAR_PARTS[type_url]
        if proxy.type == SIDECAR and type_url == names.SECRET:
            return (secret_part("sidecar-secrets", builder),)
        if proxy.type == ROUTER and type_url in routers:
            return routers[type_url]
    return (fallback_part(type_url, builder),)
