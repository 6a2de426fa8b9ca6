"""What a proxy sees of the mesh: istiod's SidecarScope (pilot/pkg/model/sidecar.go and
push_context.go, read not copied).

Visibility first (`exportTo`): a Service (annotation `networking.istio.io/exportTo`, a
ServiceEntry's `exportTo`) and a VirtualService are seen by a namespace they are
exported to; without an exportTo of their own the mesh config's
`defaultServiceExportTo` / `defaultVirtualServiceExportTo` decide (`*` unless set).
`*` is every namespace, `.` the object's own, `~` none, else the namespaces named.

Then the Sidecar that applies to a sidecar proxy, as istiod picks it: the oldest Sidecar
of the proxy's namespace whose `workloadSelector` selects the proxy; else the oldest one
of the namespace without a selector (the namespace default); else the oldest one without
a selector in the root namespace (the mesh default, read as if it were the proxy's
namespace's); else none: the default scope, one catch-all egress listener `*/*`.
Gateways (routers) never take a Sidecar: they see what is exported to their namespace.

Each egress listener imports, of the services visible to the namespace, those its
`hosts` (`namespace/dnsName`) name: an entry for the service's own namespace wins over
`*/...`; `.` is the Sidecar's namespace, `~` imports nothing; the dnsName is `*`, a
wildcard (`*.example.com`) or a host. A listener with a port (but HTTP_PROXY) keeps only
that port of each service. It also imports the VirtualServices (bound to `mesh`, visible
to the namespace) one of whose hosts matches an imported host of the VirtualService's
namespace (or of `*`), and the services those VirtualServices route to. The scope's
services (CDS) are the union over listeners; its VirtualServices too. A listener with an
address (`bind`, or 127.0.0.1 under `captureMode: NONE`) gets an outbound listener of its
own there; `captured` holds the services of the others (generators/sidecar_outbound.py).

`outboundTrafficPolicy` (the Sidecar's, else the mesh config's): ALLOW_ANY passes
traffic to unknown hosts through (PassthroughCluster), REGISTRY_ONLY sends it to
BlackHoleCluster (502 for HTTP); `egressProxy` (ALLOW_ANY only) sends it to that service
instead. A scope is built once per snapshot per (proxy type, namespace, Sidecar) and
kept in the snapshot's indexes; `digest` names everything it holds (cache keys,
generators/dependencies.py).
"""
from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from ..config.objects import ConfigObject
from ..config.types.sidecar import EgressListener, IngressListener, Sidecar
from ..config.types.trafficpolicy import ConnectionPoolSettings
from ..config.types.virtualservice import Destination
from ..names import resolve_host
from .destination_rules import exported_to
from .gateway_api.mesh import consumer_route, preferred_in
from .hosts import covers
from .indexes import Index, Lifetime
from .meshconfig import ALLOW_ANY, REGISTRY_ONLY
from .proxy import ROUTER, Proxy
from .services import Service, labels_match

if TYPE_CHECKING:
    from .mesh import MeshSnapshot

SIDECAR_KIND = "Sidecar"
DEFAULT_SIDECAR = "default-sidecar"  # istiod's name of the scope without a Sidecar
MESH_GATEWAY = "mesh"
HTTP_PROXY = "HTTP_PROXY"
CAPTURE_NONE = "NONE"
LOCALHOST = "127.0.0.1"  # istiod's bind of a captureMode NONE egress listener without one
_CATCH_ALL = EgressListener(hosts=("*/*",))


def visible(export_to: tuple[str, ...], default: tuple[str, ...], owner_namespace: str, namespace: str) -> bool:
    """`exportTo` (else the mesh default) lets `namespace` see an object of `owner_namespace`."""
    return exported_to(export_to or default, owner_namespace, namespace)


def service_visible(mesh: MeshSnapshot, svc: Service, namespace: str) -> bool:
    return visible(svc.export_to, mesh.mesh_config.default_service_export_to, svc.namespace, namespace)


def virtual_service_visible(mesh: MeshSnapshot, vs: ConfigObject, namespace: str) -> bool:
    if consumer_route(vs) and vs.namespace != namespace:
        return False  # a Gateway API consumer route is its namespace's only (gateway_api/mesh.py)
    return visible(vs.typed.export_to, mesh.mesh_config.default_virtual_service_export_to, vs.namespace, namespace)


@dataclass(frozen=True)
class EgressScope:
    """One egress listener of the scope and what it imports."""

    listener: EgressListener
    hosts: Mapping[str, tuple[str, ...]]  # namespace ("*": any) -> imported dnsNames
    services: tuple[Service, ...]  # by host
    virtual_services: tuple[ConfigObject, ...]  # in the snapshot's order

    @property
    def port(self) -> int:
        """The listener's port; 0 for the catch-all (and Unix domain sockets)."""
        return self.listener.port.number if self.listener.port is not None else 0

    @property
    def catch_all(self) -> bool:
        return self.listener.port is None

    @property
    def bind_to_port(self) -> bool:
        """`captureMode: NONE`: no iptables; the application dials the listener, which
        binds its port for real (istiod's bindToPort)."""
        return self.listener.capture_mode == CAPTURE_NONE

    @property
    def bind(self) -> str:
        """The address of this listener's own outbound listener ("": none, its services
        get theirs as without a Sidecar): `bind`, else 127.0.0.1 under captureMode NONE."""
        return self.listener.bind or (LOCALHOST if self.bind_to_port else "")


@dataclass(frozen=True)
class SidecarScope:
    namespace: str  # the proxy's namespace (a root-namespace Sidecar is read as this one's)
    sidecar: ConfigObject | None  # the Sidecar in force; None: the default scope
    egress: tuple[EgressScope, ...]
    services: Mapping[str, Service]  # every imported service, by host (sorted)
    virtual_services: tuple[ConfigObject, ...]
    outbound_mode: str = ALLOW_ANY  # ALLOW_ANY | REGISTRY_ONLY
    egress_proxy: Destination | None = None
    digest: str = field(default="", compare=False)
    # The services of the listeners without an address of their own (EgressScope.bind):
    # they get the usual outbound listeners; the others' come on their listener's address.
    captured: Mapping[str, Service] = field(default_factory=dict, compare=False)

    @property
    def name(self) -> str:
        return self.sidecar.name if self.sidecar is not None else DEFAULT_SIDECAR

    @property
    def spec(self) -> Sidecar | None:
        return self.sidecar.typed if self.sidecar is not None else None

    @property
    def ingress(self) -> tuple[IngressListener, ...]:
        """The Sidecar's ingress listeners: when present they replace the inbound side."""
        return self.spec.ingress if self.spec is not None else ()

    def inbound_connection_pool(self, port: int) -> ConnectionPoolSettings | None:
        """The connection pool of the inbound cluster of `port` (istiod's
        InboundConnectionPoolForPort): its ingress listener's, else the Sidecar's
        `inboundConnectionPool`; None: the defaults."""
        spec = self.spec
        if spec is None:
            return None
        for listener in spec.ingress:
            if listener.port.number == port and listener.connection_pool is not None:
                return listener.connection_pool
        return spec.inbound_connection_pool

    @property
    def registry_only(self) -> bool:
        return self.outbound_mode == REGISTRY_ONLY

    def service(self, hostname: str) -> Service | None:
        return self.services.get(hostname)

    def egress_for(self, port: int) -> EgressScope | None:
        """The egress listener serving `port` (istiod's GetEgressListenerForRDS): the one
        with that port, else the catch-all."""
        for e in self.egress:
            if e.catch_all or e.port == port:
                return e
        return None


# --- which Sidecar applies ----------------------------------------------------------------

def _age(obj: ConfigObject) -> tuple[bool, str, str, str]:
    created = str(obj.extra.get("creationTimestamp") or "") if obj.extra else ""
    return (created == "", created, obj.namespace, obj.name)


@dataclass(frozen=True)
class _Sidecars:
    """The snapshot's Sidecars, sorted oldest first: with a selector per namespace, the
    namespace defaults, the root namespace's default."""

    selecting: Mapping[str, tuple[ConfigObject, ...]]
    defaults: Mapping[str, ConfigObject]
    root: ConfigObject | None


# A scope reads no DestinationRule: a change of rules only keeps them (indexes.py).
_SIDECARS = Index[str, _Sidecars]("the Sidecars by namespace", Lifetime.CONFIG, reads_rules=False)
_SELECTED = Index[tuple[Any, ...], "ConfigObject | None"]("the Sidecar selecting a workload", Lifetime.CONFIG,
                                                           reads_rules=False)
_SCOPES = Index[tuple[Any, ...], SidecarScope]("the scope of a namespace under a Sidecar", Lifetime.CONFIG,
                                                reads_rules=False)
_VISIBLE = Index[str, tuple[tuple[Service, ...], tuple[ConfigObject, ...]]](
    "the services and mesh VirtualServices exported to a namespace", Lifetime.CONFIG, reads_rules=False)
_SERVICE_DIGESTS = Index[str, str]("the digest of a service", Lifetime.CONFIG, reads_rules=False)


def _sidecars(mesh: MeshSnapshot) -> _Sidecars:
    table = mesh.indexes[_SIDECARS]
    got = table.get("")
    if got is None:
        selecting: dict[str, list[ConfigObject]] = {}
        defaults: dict[str, ConfigObject] = {}
        for sc in sorted(mesh.config.of_kind(SIDECAR_KIND), key=_age):
            if sc.typed.workload_selector is not None:
                selecting.setdefault(sc.namespace, []).append(sc)
            else:
                defaults.setdefault(sc.namespace, sc)  # the oldest (istiod's analyzer reports the others)
        got = table[""] = _Sidecars({ns: tuple(v) for ns, v in selecting.items()}, defaults,
                                    defaults.get(mesh.root_namespace))
    return got


def sidecar_for(mesh: MeshSnapshot, proxy: Proxy) -> ConfigObject | None:
    """The Sidecar that applies to `proxy` (None: none does, or a gateway)."""
    if proxy.type == ROUTER:
        return None
    found = _sidecars(mesh)
    selecting = found.selecting.get(proxy.namespace, ())
    key = (proxy.namespace, proxy.label_key if selecting else ())
    table = mesh.indexes[_SELECTED]
    if key in table:
        return table[key]
    chosen = next((sc for sc in selecting if labels_match(sc.typed.workload_selector, proxy.labels)), None)
    if chosen is None:
        chosen = found.defaults.get(proxy.namespace, found.root)
    table[key] = chosen
    return chosen


def scope_for(mesh: MeshSnapshot, proxy: Proxy) -> SidecarScope:
    """What `proxy` sees (MeshSnapshot.sidecar_scope)."""
    sidecar = sidecar_for(mesh, proxy)
    key = (proxy.namespace, (sidecar.namespace, sidecar.name, sidecar.generation) if sidecar is not None else None)
    table = mesh.indexes[_SCOPES]
    got = table.get(key)
    if got is None:
        got = table[key] = build_scope(mesh, proxy.namespace, sidecar)
    return got


# --- building a scope -------------------------------------------------------------------

def _visible(mesh: MeshSnapshot, namespace: str) -> tuple[tuple[Service, ...], tuple[ConfigObject, ...]]:
    table = mesh.indexes[_VISIBLE]
    got = table.get(namespace)
    if got is None:
        services = tuple(mesh.services[h] for h in sorted(mesh.services)
                         if service_visible(mesh, mesh.services[h], namespace))
        vss = tuple(sorted((vs for vs in mesh.virtual_services
                            if _bound_to_mesh(vs) and virtual_service_visible(mesh, vs, namespace)),
                           key=lambda vs: not preferred_in(vs, namespace)))  # stable: else as before
        got = table[namespace] = (services, vss)
    return got


def _bound_to_mesh(vs: ConfigObject) -> bool:
    gateways = vs.typed.gateways
    return not gateways or MESH_GATEWAY in gateways


def _listener_hosts(listener: EgressListener, namespace: str) -> dict[str, tuple[str, ...]]:
    out: dict[str, list[str]] = {}
    for entry in listener.hosts:
        ns, slash, name = entry.partition("/")
        if not slash:
            continue  # validation refuses it
        out.setdefault(namespace if ns == "." else ns, []).append(name.lower())
    return {ns: tuple(v) for ns, v in out.items()}


def _port_match(listener: EgressListener) -> int:
    """The port a listener narrows its services to (0: all of them)."""
    port = listener.port
    if port is None or port.number == 0 or port.protocol == HTTP_PROXY:
        return 0
    return port.number


def _narrowed(svc: Service, port: int) -> Service | None:
    if not port:
        return svc
    sp = svc.port(port)
    return None if sp is None else replace(svc, ports=(sp,))


def _destination_hosts(vs: ConfigObject) -> Iterator[str]:
    spec = vs.typed
    for rule in spec.http:
        for d in rule.route:
            yield d.destination.host
        if rule.mirror is not None:
            yield rule.mirror.host
        for m in rule.mirrors:
            yield m.destination.host
    for rule in (*spec.tcp, *spec.tls):
        for d in rule.route:
            yield d.destination.host


def _egress(mesh: MeshSnapshot, namespace: str, listener: EgressListener) -> EgressScope:
    services, vss = _visible(mesh, namespace)
    hosts = _listener_hosts(listener, namespace)
    wildcard = hosts.get("*")
    port = _port_match(listener)
    imported: dict[str, Service] = {}
    for svc in services:
        wanted = hosts.get(svc.namespace, wildcard)
        if wanted and any(covers(h, svc.hostname) for h in wanted):
            got = _narrowed(svc, port)
            if got is not None:
                imported[svc.hostname] = got
    chosen = []
    for vs in vss:
        wanted = tuple(hosts.get(vs.namespace, ())) + tuple(wildcard or ())
        vs_hosts = [resolve_host(h, vs.namespace).lower() for h in vs.typed.hosts]
        if any(covers(h, w) or covers(w, h) for h in vs_hosts for w in wanted):
            chosen.append(vs)
    for vs in chosen:
        # The services a chosen VirtualService routes to, if the namespace sees them
        # (never replacing one the hosts imported).
        for host in _destination_hosts(vs):
            fq = resolve_host(host, vs.namespace).lower()
            dest = mesh.services.get(fq)
            if fq in imported or dest is None or not service_visible(mesh, dest, namespace):
                continue
            got = _narrowed(dest, port)
            if got is not None:
                imported[fq] = got
    return EgressScope(listener, hosts, tuple(imported[h] for h in sorted(imported)), tuple(chosen))


def _union(egress: Iterable[EgressScope]) -> dict[str, Service]:
    """Every listener's services by host; one host imported on several ports by
    port-narrowed listeners keeps all of them (istiod merges the ports)."""
    out: dict[str, Service] = {}
    for e in egress:
        for svc in e.services:
            have = out.get(svc.hostname)
            if have is None:
                out[svc.hostname] = svc
            elif have is not svc and have.namespace == svc.namespace:
                more = tuple(p for p in svc.ports if have.port(p.port) is None)
                if more:
                    out[svc.hostname] = replace(have, ports=have.ports + more)
    return {h: out[h] for h in sorted(out)}


def build_scope(mesh: MeshSnapshot, namespace: str, sidecar: ConfigObject | None) -> SidecarScope:
    spec: Sidecar | None = sidecar.typed if sidecar is not None else None
    listeners = (spec.egress if spec is not None else ()) or (_CATCH_ALL,)
    egress = tuple(_egress(mesh, namespace, listener) for listener in listeners)
    services = _union(egress)
    seen: set[tuple[str, str]] = set()
    vss = []
    for e in egress:
        for vs in e.virtual_services:
            if (vs.namespace, vs.name) not in seen:
                seen.add((vs.namespace, vs.name))
                vss.append(vs)
    policy = spec.outbound_traffic_policy if spec is not None else None
    mode = policy.mode if policy is not None else mesh.mesh_config.outbound_traffic_policy
    proxy = policy.egress_proxy if policy is not None and mode == ALLOW_ANY else None
    captured = services if all(not e.bind for e in egress) else _union(e for e in egress if not e.bind)
    scope = SidecarScope(namespace, sidecar, egress, services, tuple(vss), mode, proxy, captured=captured)
    return replace(scope, digest=_digest(mesh, scope))


def _digest(mesh: MeshSnapshot, scope: SidecarScope) -> str:
    """Names everything the scope holds: the Sidecar, the services imported (their
    content: a ServiceEntry's or a Kubernetes Service's), the VirtualServices, the policy."""
    per_service = mesh.indexes[_SERVICE_DIGESTS]
    h = hashlib.blake2b(digest_size=12)
    sc = scope.sidecar
    h.update(f"{scope.namespace} {sc.namespace}/{sc.name}={sc.generation}".encode() if sc is not None else
             f"{scope.namespace} default".encode())
    h.update(f" {scope.outbound_mode} {scope.egress_proxy!r}\n".encode())
    for host, svc in scope.services.items():
        d = per_service.get(host)
        if d is None:
            d = per_service[host] = hashlib.blake2b(repr(mesh.services.get(host)).encode(), digest_size=8).hexdigest()
        h.update(f"{host}={d}:{','.join(str(p.port) for p in svc.ports)}\n".encode())
    for vs in scope.virtual_services:
        h.update(f"vs {vs.namespace}/{vs.name}={vs.generation}\n".encode())
    return h.hexdigest()
