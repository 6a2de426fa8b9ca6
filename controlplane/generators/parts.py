"""A proxy's resources of one type, cut into parts that can be shared.

Most of what a sidecar receives is the same for every sidecar of its namespace (its
outbound clusters, endpoints, listeners and routes); only a small part is its own (the
inbound side, which depends on the services its workload serves). Each `Part` says
which piece of the proxy it reads (`scope`) and which mesh fingerprints it reads
(`deps`, see dependencies.py); the Generator builds a part once per distinct
(scope, deps) and composes a proxy's answer from its parts, so 2,000 sidecars in ten
namespaces cost ten outbound generations, not 2,000.

Inside the big parts, output is cached per resource too (outbound clusters and their
ClusterLoadAssignments): a changed DestinationRule rebuilds the clusters of its host
only, a changed EndpointSlice the assignments of its host only.

The composition must equal the plain builders' output (clusters.build, listeners.build,
...): tests/unit/test_push_generation.py checks that, so a builder changed without this
table fails loudly instead of serving stale or partial config.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable, Sequence

from google.protobuf.message import Message

from .. import names
from ..model.mesh import MeshSnapshot
from ..model.proxy import ROUTER, SIDECAR, Proxy
from . import auto_mtls, clusters, endpoints, locality_lb
from .dependencies import (
    ALL_CONFIG,
    DESTINATION_RULE,
    DR_ROUTING,
    ENDPOINT_FACTS,
    MESH_VERSION,
    OTHER,
    PEER_AUTHENTICATION,
    SECRET,
    SECURITY_KINDS,
    SERVICE,
    VIRTUAL_SERVICE,
    MeshFacts,
)
from .destinations import OutboundCluster, outbound_clusters, service_clusters
from .resources import Resource, pack

Builder = Callable[[MeshSnapshot, Proxy], Iterable[tuple[str, Message]]]


class ResourceCache:
    """Packed resources by a key naming everything they were built from. Entries not
    used for `keep` generations are dropped (a generation = a new mesh snapshot seen)."""

    def __init__(self, keep: int = 2):
        self._items: dict[tuple, tuple[int, Resource]] = {}
        self._keep = keep
        self.epoch = 0
        self.hits = self.misses = 0

    def get(self, key: tuple) -> Resource | None:
        got = self._items.get(key)
        if got is None:
            self.misses += 1
            return None
        self.hits += 1
        if got[0] != self.epoch:
            self._items[key] = (self.epoch, got[1])
        return got[1]

    def put(self, key: tuple, res: Resource) -> Resource:
        self._items[key] = (self.epoch, res)
        return res

    def advance(self) -> None:
        self.epoch += 1
        cutoff = self.epoch - self._keep
        for k in [k for k, (e, _) in self._items.items() if e < cutoff]:
            del self._items[k]

    def __len__(self) -> int:
        return len(self._items)


@dataclass(frozen=True)
class Part:
    """One shareable piece of a proxy's resources of one type."""

    name: str
    type_url: str
    deps: tuple[str, ...]  # mesh fingerprints the output reads (dependencies.py)
    scope: Callable[[MeshFacts, Proxy], tuple]  # the proxy's inputs it reads
    build: Callable[[MeshSnapshot, Proxy, "Part", ResourceCache, MeshFacts], list[Resource]]
    endpoints: bool = False  # also reads endpoints (per host; EDS)
    # Given hosts whose endpoints or DestinationRules changed, each one's resources in
    # build order; the generator splices them into the previous set when nothing else
    # it reads changed (Generator._update_hosts).
    update_hosts: Callable[[MeshSnapshot, Proxy, ResourceCache, MeshFacts, Iterable[str]],
                           dict[str, list[Resource]]] | None = None

    def key(self, facts: MeshFacts, proxy: Proxy) -> tuple:
        return (self.name, self.scope(facts, proxy), facts.of(self.deps))


# --- scopes: which of the proxy's properties a part reads -----------------------------

def _client_scope(facts: MeshFacts, proxy: Proxy) -> tuple:
    # Outbound clusters and endpoints: DestinationRule lookup by the client namespace
    # (and by the labels, only when a rule's workloadSelector selects the proxy: the
    # selectors that do, not the labels, so that such proxies share too), ORIGINAL_DST
    # and credentialName handling by type, mTLS by certificate, clusters left out for
    # want of a credential by the Secrets of the namespace (only if a rule names one).
    secrets = facts.namespace_secrets(proxy.namespace) if facts.uses_dr_credentials() else None
    selectors = facts.dr_selectors(proxy.namespace, proxy.labels, proxy.label_key)
    return (proxy.type, proxy.namespace, proxy.workload_cert, selectors, secrets)


def _eds_scope(facts: MeshFacts, proxy: Proxy) -> tuple:
    # Endpoints also read the proxy's locality (and labels, for failoverPriority), but
    # only when some DestinationRule can make them matter: 2,000 sidecars of a namespace
    # share one generation per locality, or one in all when no rule reads it.
    # The locality is the mesh's (the proxy's pod, or its Node): a Node relabelled moves it.
    by_locality, by_labels = facts.locality_inputs()
    return (_client_scope(facts, proxy), facts.proxy_locality(proxy) if by_locality else None,
            proxy.label_key if by_labels else None)


def _labels(facts: MeshFacts, proxy: Proxy) -> tuple:
    return proxy.label_key if facts.uses_source_labels() else ()


def _outbound_listener_scope(facts: MeshFacts, proxy: Proxy) -> tuple:
    own_ip = proxy.ip if proxy.ip in facts.headless_ips() else ""
    return (proxy.namespace, _labels(facts, proxy), own_ip, proxy.workload_cert)


def _route_scope(facts: MeshFacts, proxy: Proxy) -> tuple:
    # Routes read DestinationRules too (consistent hash), as the proxy sees them.
    return (proxy.namespace, _labels(facts, proxy), facts.dr_selectors(proxy.namespace, proxy.labels, proxy.label_key))


def _inbound_scope(facts: MeshFacts, proxy: Proxy) -> tuple:
    # The replicas of a workload (same services and ports, same effective policy) share it.
    return (facts.mtls_policy(proxy.namespace, proxy.labels, proxy.label_key), proxy.workload_cert, facts.instance_shape(proxy.ip),
            facts.security(proxy))


def _instances_scope(facts: MeshFacts, proxy: Proxy) -> tuple:
    return (facts.instance_shape(proxy.ip),)


def _group_scope(facts: MeshFacts, proxy: Proxy) -> tuple:
    return proxy.group_key()


def _fallback_scope(facts: MeshFacts, proxy: Proxy) -> tuple:
    # Whole builders may read anything of the proxy, EDS its locality as the mesh sees it.
    return proxy.group_key() + (facts.proxy_locality(proxy),)


def _router_scope(facts: MeshFacts, proxy: Proxy) -> tuple:
    # Gateway listeners leave out the TLS servers whose credentials are missing in the
    # gateway's namespace (gateway_tls.unusable_reason): the only Secrets they read.
    # Authorization and JWT filters read fetched key sets and the mesh config too.
    return proxy.group_key() + (facts.namespace_secrets(proxy.namespace), facts.security(proxy))


def _secret_scope(facts: MeshFacts, proxy: Proxy) -> tuple:
    # secrets.build: the credentials of the proxy's namespace, for an authenticated proxy.
    return (proxy.namespace, proxy.workload_cert, facts.namespace_secrets(proxy.namespace) if proxy.workload_cert else "")


# --- builders ---------------------------------------------------------------------------

def _packed(type_url: str, items: Iterable[tuple[str, Message]]) -> list[Resource]:
    return [pack(name, type_url, msg) for name, msg in items]


def whole(builder: Builder) -> Callable:
    def build(mesh: MeshSnapshot, proxy: Proxy, part: Part, cache: ResourceCache, facts: MeshFacts) -> list[Resource]:
        return _packed(part.type_url, builder(mesh, proxy))
    return build


def _cluster_key(facts: MeshFacts, proxy: Proxy, oc: OutboundCluster) -> tuple:
    """Everything clusters.outbound_cluster reads for one cluster."""
    svc, rule = oc.service, oc.rule
    return (
        oc.name, proxy.type, proxy.workload_cert, facts.service_generation(svc.hostname),
        (rule.namespace, rule.name, rule.generation) if rule is not None else None,
        facts.service_accounts(svc.hostname), facts.namespace_mode(svc.namespace),
        facts.endpoint_facts() if svc.headless else "",
    )
    # (A cluster whose credential cannot be served is left out before it is built, so
    # the Secrets never reach this key: the part's scope carries them.)


def _outbound_clusters(mesh: MeshSnapshot, proxy: Proxy, part: Part, cache: ResourceCache, facts: MeshFacts) -> list[Resource]:
    return [_cluster(mesh, proxy, oc, cache, facts) for oc in outbound_clusters(mesh, proxy)] + _static_clusters(proxy)


def _cluster(mesh: MeshSnapshot, proxy: Proxy, oc: OutboundCluster, cache: ResourceCache, facts: MeshFacts) -> Resource:
    key = ("cds",) + _cluster_key(facts, proxy, oc)
    res = cache.get(key)
    if res is None:
        res = cache.put(key, pack(oc.name, names.CLUSTER, clusters.outbound_cluster(mesh, proxy, oc)))
    return res


def _clusters_of_hosts(mesh: MeshSnapshot, proxy: Proxy, cache: ResourceCache, facts: MeshFacts,
                       hosts: Iterable[str]) -> dict[str, list[Resource]]:
    """The outbound clusters of `hosts` only: a DestinationRule change costs the clusters
    of its hosts per sharing group, whatever the mesh size."""
    out: dict[str, list[Resource]] = {}
    for host in hosts:
        svc = mesh.services.get(host)
        out[host] = [] if svc is None else [
            _cluster(mesh, proxy, oc, cache, facts) for oc in service_clusters(mesh, proxy, svc)]
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


def _inbound_clusters(mesh: MeshSnapshot, proxy: Proxy, part: Part, cache: ResourceCache, facts: MeshFacts) -> list[Resource]:
    from .sidecar_inbound import inbound_ports

    return _packed(names.CLUSTER, ((c.name, c) for c in (clusters.inbound_cluster(ip) for ip in inbound_ports(mesh, proxy))))


def _endpoints(mesh: MeshSnapshot, proxy: Proxy, part: Part, cache: ResourceCache, facts: MeshFacts) -> list[Resource]:
    out = []
    for oc in outbound_clusters(mesh, proxy):
        if not auto_mtls.original_dst(oc, proxy):
            out.append(_assignment(mesh, proxy, oc, cache, facts))
    return out


def _assignment(mesh: MeshSnapshot, proxy: Proxy, oc: OutboundCluster, cache: ResourceCache, facts: MeshFacts) -> Resource:
    """One cluster's ClusterLoadAssignment, as endpoints.build makes it, cached by its
    cluster's inputs plus the host's endpoints and the PeerAuthentications (endpoint
    metadata follows each endpoint's own policy)."""
    host = oc.service.hostname
    key = ("eds",) + _cluster_key(facts, proxy, oc) + (facts.host_endpoints().get(host, ""), facts.kind(PEER_AUTHENTICATION),
                                                         _locality_key(facts, proxy, oc))
    res = cache.get(key)
    if res is None:
        ct = auto_mtls.cluster_tls(mesh, proxy, oc)
        eps = endpoints.cluster_endpoints(mesh, oc)
        mtls = {(ep.address, ep.port) for ep in eps if auto_mtls.endpoint_wants_mtls(mesh, oc, ep, ct)}
        res = cache.put(key, pack(oc.name, names.ENDPOINT,
                                  endpoints.load_assignment(oc, eps, mtls, proxy, facts.proxy_locality(proxy))))
    return res


def _locality_key(facts: MeshFacts, proxy: Proxy, oc: OutboundCluster) -> tuple | None:
    """What one assignment reads of the proxy for locality load balancing: nothing
    unless the cluster's own policy applies it (locality_lb.py)."""
    by_locality, by_labels = facts.locality_inputs()
    if not (by_locality or by_labels):
        return None
    policy = endpoints.cluster_policy(oc)
    if not locality_lb.reads_proxy_locality(policy, oc.service.hostname in facts.localized_hosts()):
        return None
    labels = proxy.label_key if locality_lb.reads_proxy_labels(policy) else None
    return (facts.proxy_locality(proxy), labels)


def _endpoints_of_hosts(mesh: MeshSnapshot, proxy: Proxy, cache: ResourceCache, facts: MeshFacts,
                        hosts: Iterable[str]) -> dict[str, list[Resource]]:
    """The assignments of the clusters of `hosts` only: an endpoint change of a few
    services costs a few assignments per sharing group, whatever the mesh size."""
    out: dict[str, list[Resource]] = {}
    for host in hosts:
        svc = mesh.services.get(host)
        out[host] = [] if svc is None else [
            _assignment(mesh, proxy, oc, cache, facts) for oc in service_clusters(mesh, proxy, svc)
            if not auto_mtls.original_dst(oc, proxy)]
    return out


def _outbound_listeners(mesh: MeshSnapshot, proxy: Proxy, part: Part, cache: ResourceCache, facts: MeshFacts) -> list[Resource]:
    from .sidecar_outbound import outbound_listeners, virtual_outbound

    return _packed(names.LISTENER, ((lst.name, lst) for lst in [*outbound_listeners(mesh, proxy), virtual_outbound()]))


def _virtual_inbound(mesh: MeshSnapshot, proxy: Proxy, part: Part, cache: ResourceCache, facts: MeshFacts) -> list[Resource]:
    from .sidecar_inbound import virtual_inbound

    lst = virtual_inbound(mesh, proxy)
    return _packed(names.LISTENER, [(lst.name, lst)])


def _sidecar_routes(mesh: MeshSnapshot, proxy: Proxy, part: Part, cache: ResourceCache, facts: MeshFacts) -> list[Resource]:
    from .sidecar_routes import sidecar_route_configs

    return _packed(names.ROUTE, ((cfg.name, cfg) for cfg in sidecar_route_configs(mesh, proxy)))


# --- the table -------------------------------------------------------------------------

CLIENT_DEPS = (SERVICE, DESTINATION_RULE, PEER_AUTHENTICATION, OTHER, ENDPOINT_FACTS)
# Routers read (almost) everything but are few: one part per type, all config kinds.
# Secrets are left out: what a gateway reads of them (credentialName servers) is the
# Secrets of its own namespace, carried by its scope (_router_scope).
ROUTER_DEPS = tuple(d for d in ALL_CONFIG if d != SECRET)

SIDECAR_PARTS: dict[str, Sequence[Part]] = {
    names.CLUSTER: (
        Part("sidecar-outbound-clusters", names.CLUSTER, CLIENT_DEPS, _client_scope, _outbound_clusters,
             update_hosts=_clusters_of_hosts),
        Part("sidecar-inbound-clusters", names.CLUSTER, (SERVICE, OTHER), _instances_scope, _inbound_clusters),
    ),
    names.ENDPOINT: (
        Part("sidecar-endpoints", names.ENDPOINT, CLIENT_DEPS, _eds_scope, _endpoints, endpoints=True,
             update_hosts=_endpoints_of_hosts),
    ),
    names.LISTENER: (
        Part("sidecar-outbound-listeners", names.LISTENER, (SERVICE, VIRTUAL_SERVICE, OTHER, ENDPOINT_FACTS),
             _outbound_listener_scope, _outbound_listeners),
        Part("sidecar-virtual-inbound", names.LISTENER, (SERVICE, PEER_AUTHENTICATION, *SECURITY_KINDS, OTHER),
             _inbound_scope, _virtual_inbound),
    ),
    names.ROUTE: (
        Part("sidecar-routes", names.ROUTE, (SERVICE, VIRTUAL_SERVICE, DR_ROUTING, OTHER), _route_scope, _sidecar_routes),
    ),
}


def router_parts(table: dict[str, Builder]) -> dict[str, Sequence[Part]]:
    out: dict[str, Sequence[Part]] = {
        names.CLUSTER: (Part("router-clusters", names.CLUSTER, CLIENT_DEPS, _client_scope, _outbound_clusters,
                             update_hosts=_clusters_of_hosts),),
        names.ENDPOINT: (Part("router-endpoints", names.ENDPOINT, CLIENT_DEPS, _eds_scope, _endpoints, endpoints=True,
                              update_hosts=_endpoints_of_hosts),),
    }
    for type_url in (names.LISTENER, names.ROUTE):
        if type_url in table:
            scope = _router_scope if type_url == names.LISTENER else _group_scope
            out[type_url] = (Part(f"router-{names.SHORT[type_url].lower()}", type_url, ROUTER_DEPS, scope, whole(table[type_url])),)
    if names.SECRET in table:
        out[names.SECRET] = (secret_part("router-secrets", table[names.SECRET]),)
    return out


def secret_part(name: str, builder: Builder) -> Part:
    """Credentials (`kubernetes://...`): they read the Secrets of the proxy's namespace
    and nothing else, so no other change rebuilds them and a Secret change rebuilds only
    the namespace's."""
    return Part(name, names.SECRET, (), _secret_scope, whole(builder))


def fallback_part(type_url: str, builder: Builder) -> Part:
    """A type (or proxy type) without a declared split: one part per proxy group that
    depends on the whole snapshot (mesh version), exactly as the cache worked before."""
    return Part(f"whole-{type_url}", type_url, (MESH_VERSION,), _fallback_scope, whole(builder))


def parts_for(proxy: Proxy, type_url: str, table: dict[str, Builder], routers: dict[str, Sequence[Part]],
              standard: bool) -> Sequence[Part]:
    """The parts of `proxy`'s resources of `type_url`. `standard` is False when the
    builder table is not the stock one (tests with their own builders): then every
    type is one whole part."""
    builder = table.get(type_url)
    if builder is None:
        return ()
    if standard:
        if proxy.type == SIDECAR and type_url in SIDECAR_PARTS:
            return SIDECAR_PARTS[type_url]
        if proxy.type == SIDECAR and type_url == names.SECRET:
            return (secret_part("sidecar-secrets", builder),)
        if proxy.type == ROUTER and type_url in routers:
            return routers[type_url]
    return (fallback_part(type_url, builder),)


