"""The mesh snapshot: an immutable, indexed picture of services, endpoints and
routing config that every generator reads (compare istiod's PushContext).

Built once per config change from a ConfigSnapshot; generators never look further
back than this object. It owns what readers derive from it (`indexes`, indexes.py).
"""
from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Iterable, Mapping
from collections.abc import Set as AbstractSet
from dataclasses import InitVar, dataclass, field
from typing import Any

import structlog

from ..config import kinds
from ..config.objects import ConfigKey, ConfigObject
from ..config.snapshot import ConfigSnapshot
from ..names import ROOT_NAMESPACE, fqdn, resolve_host
from .credentials import Credential, credential_ref, credentials_from
from .delegates import resolve_delegates
from .destination_rules import DestinationRuleIndex, Selector
from .gateway_api.certificates import refusal as certificate_refusal
from .gateway_api.conversion import EMPTY as NO_GATEWAY_API
from .gateway_api.conversion import GatewayAPI, convert
from .gateways import (
    ISTIO_MUTUAL,
    MUTUAL,
    OPTIONAL_MUTUAL,
    GatewayConflict,
    MergedGateway,
    Server,
    merge_gateways,
)
from .indexes import Lifetime, MeshIndexes, Value
from .locality import Locality
from .meshconfig import DEFAULT as DEFAULT_MESH_CONFIG
from .meshconfig import MeshConfig
from .peer_authentication import MtlsPolicy, effective_policy
from .proxy import Proxy
from .request_authentication import EMPTY_JWKS, JwksView, JwtRule
from .service_entries import endpoints_of, host_endpoints, resolves_host, services_of
from .services import (
    Endpoint,
    PodIndex,
    Service,
    ServicePort,
    build_service,
    endpoints_from_pods,
    endpoints_from_slices,
    labels_match,
    pod_locality,
)
from .sidecar_scope import SidecarScope, scope_for
from .workloads import Workload, is_ip, service_endpoints, workloads_of

SERVICE_NAME_LABEL = "kubernetes.io/service-name"

log = structlog.get_logger("meshd.model")


@dataclass(frozen=True)
class ServiceInstance:
    """One service port served by one workload endpoint."""

    service: Service
    port: ServicePort
    endpoint: Endpoint


@dataclass(frozen=True)
class MeshSnapshot:
    version: str
    config: ConfigSnapshot
    services: Mapping[str, Service]  # by hostname (FQDN)
    endpoints: Mapping[tuple[str, int], tuple[Endpoint, ...]]  # (hostname, service port)
    gateways: tuple[ConfigObject, ...]
    virtual_services: tuple[ConfigObject, ...]
    destination_rules: tuple[ConfigObject, ...]
    peer_authentications: tuple[ConfigObject, ...] = ()
    root_namespace: str = ROOT_NAMESPACE
    # AuthorizationPolicy and RequestAuthentication objects (security.py reads them).
    authorization_policies: tuple[ConfigObject, ...] = ()
    request_authentications: tuple[ConfigObject, ...] = ()
    mesh_config: MeshConfig = DEFAULT_MESH_CONFIG
    # The JWT key sets meshd fetched for RequestAuthentications' jwksUri (sources/jwks.py).
    jwks: JwksView = EMPTY_JWKS
    _instances_by_ip: Mapping[str, tuple[ServiceInstance, ...]] = field(default_factory=dict, repr=False)
    _dr_by_host: Mapping[str, tuple[ConfigObject, ...]] = field(default_factory=dict, repr=False)
    # The wildcard hosts of _dr_by_host: looked up for every host without a rule of its
    # own, so scanning only these keeps outbound cluster generation linear.
    _wildcard_dr_hosts: tuple[str, ...] = field(default=(), repr=False)
    # TLS credentials from Secrets, by (namespace, name); see credentials.py.
    credentials: Mapping[tuple[str, str], Credential] = field(default_factory=dict, repr=False)
    # Gateway servers that are not served (or merged), found when the snapshot is built.
    gateway_conflicts: tuple[GatewayConflict, ...] = ()
    # The Kubernetes Gateway API, converted (gateway_api/conversion.py): its derived Istio
    # Gateways and VirtualServices are in `gateways` and `virtual_services` too.
    gateway_api: GatewayAPI = NO_GATEWAY_API
    _dr_index: DestinationRuleIndex | None = field(default=None, repr=False)
    # Pods by name and IP, Node labels by name: where proxies run (proxy_locality).
    _pods: PodIndex | None = field(default=None, repr=False)
    # The WorkloadEntries (Kubernetes Services select them too: workloads.py).
    _workloads: tuple[Workload, ...] = field(default=(), repr=False)
    # ServiceEntry hosts another Service holds (a Kubernetes Service, or an older
    # ServiceEntry): not served (build_mesh, _add_service_entries).
    hidden_services: tuple[Service, ...] = field(default=(), repr=False)
    # The version of the snapshot this one was derived from when only EndpointSlices and
    # WorkloadEntries changed (build_mesh's fast path): everything but endpoints, instances
    # and the WorkloadEntries is its.
    derived_from: str = field(default="", compare=False)
    # What readers derive from this snapshot, kept as long as it lives (indexes.py): new
    # and empty, or carried over from the snapshot this one is derived from.
    indexes: MeshIndexes = field(init=False, repr=False, compare=False)
    indexes_from: InitVar[MeshIndexes | None] = None

    def __post_init__(self, indexes_from: MeshIndexes | None) -> None:
        object.__setattr__(self, "indexes", MeshIndexes() if indexes_from is None else indexes_from)

    # --- lookups generators use ------------------------------------------------
    def service(self, hostname: str) -> Service | None:
        return self.services.get(hostname)

    def service_endpoints(self, hostname: str, port: int) -> tuple[Endpoint, ...]:
        return self.endpoints.get((hostname, port), ())

    def service_accounts(self, hostname: str) -> tuple[tuple[str, str], ...]:
        """(namespace, service account) of the workloads behind a service (all ports, ready
        or not), sorted: istiod's PushContext.ServiceAccounts, the identities its clients
        verify. All that non-EDS output reads of most services' endpoints."""
        svc = self.services.get(hostname)
        if svc is None:
            return ()
        out: set[tuple[str, str]] = set()
        for sp in svc.ports:
            for ep in self.service_endpoints(hostname, sp.port):
                if ep.service_account:
                    out.add((ep.namespace or svc.namespace, ep.service_account))
        return tuple(sorted(out))

    def instances_for(self, proxy: Proxy) -> tuple[ServiceInstance, ...]:
        """The service ports this proxy's workload serves (its endpoints' IP is the
        proxy's IP), as istiod finds a sidecar's service instances."""
        return self._instances_by_ip.get(proxy.ip, ())

    def sidecar_scope(self, proxy: Proxy) -> SidecarScope:
        """What `proxy` sees of the mesh: the services, VirtualServices and outbound
        traffic policy of the Sidecar that applies to it, narrowed by `exportTo`
        (sidecar_scope.py; istiod's SidecarScope)."""
        return scope_for(self, proxy)

    def proxy_locality(self, proxy: Proxy) -> Locality:
        """Where `proxy` runs: the locality of its pod when the mesh knows the pod (by pod
        name and namespace, else by IP) and can place it (its labels, or its Node's),
        else what the proxy said (its metadata labels, or the Envoy node's locality)."""
        index = self._pods
        if index is not None:
            pod = index.by_name.get((proxy.namespace, proxy.pod)) if proxy.pod else None
            if pod is None and proxy.ip:
                pod = index.by_ip.get(proxy.ip)
            if pod is not None:
                found = pod_locality(pod, index.nodes)
                if found:
                    return found
        return proxy.locality

    def mtls_policy(self, namespace: str, labels: Mapping[str, str]) -> MtlsPolicy:
        """Effective PeerAuthentication for a workload (see peer_authentication.py)."""
        return effective_policy(self.peer_authentications, namespace, labels, self.root_namespace)

    # --- authentication and authorization (selection: security.py) -------------
    def jwks_view(self) -> JwksView:
        return self.jwks

    def jwks_digest(self, rules: Iterable[JwtRule]) -> str:
        """Fingerprint of the fetched key sets `rules` verify tokens with."""
        return self.jwks.digest_of(r.key_set for r in rules)

    def gateways_for(self, proxy: Proxy) -> list[ConfigObject]:
        """Gateways whose `selector` matches the proxy's labels (any namespace, as
        istiod does unless PILOT_SCOPE_GATEWAY_TO_NAMESPACE is set). An empty
        selector selects nothing useful in Istio either, so it is skipped."""
        out = []
        for gw in self.gateways:
            sel = gw.typed.selector
            if sel and labels_match(sel, proxy.labels):
                out.append(gw)
        return out

    def gateway_service_for(self, proxy: Proxy) -> Service | None:
        """The Service in the gateway's own namespace that selects the gateway pod:
        its ports translate Gateway server ports to the ports Envoy listens on."""
        for svc in sorted(self.services.values(), key=lambda s: s.name):
            if svc.namespace == proxy.namespace and svc.selector and labels_match(svc.selector, proxy.labels):
                return svc
        return None

    def destination_rule(self, hostname: str, client_namespace: str,
                         labels: Mapping[str, str] | None = None) -> ConfigObject | None:
        """The DestinationRule for a host as seen from a proxy of `client_namespace` with
        `labels`, as istiod picks it: the client's namespace (a rule whose
        `workloadSelector` selects the proxy first), then the service's, then the root
        namespace, honouring `exportTo`; several rules for one host in a namespace are
        merged (destination_rules.py). Without `labels`, selector rules are not seen."""
        if self._dr_index is None:
            return self._legacy_destination_rule(hostname, client_namespace)
        svc = self.services.get(hostname)
        got = self._dr_index.lookup(hostname, client_namespace, svc.namespace if svc else None, labels)
        return got.rule if got is not None else None

    def dr_selectors(self, namespace: str, labels: Mapping[str, str]) -> tuple[Selector, ...]:
        """The `workloadSelector`s of `namespace`'s DestinationRules that select a proxy with
        `labels` (empty for most proxies): proxies of one namespace with equal answers
        see the same rules."""
        return self._dr_index.selectors_matching(namespace, labels) if self._dr_index is not None else ()

    def _legacy_destination_rule(self, hostname: str, client_namespace: str) -> ConfigObject | None:
        # A snapshot built without build_mesh (tests constructing MeshSnapshot directly).
        candidates = self._dr_by_host.get(hostname)
        if not candidates:
            from .hosts import covers

            for host in self._wildcard_dr_hosts:
                if covers(host, hostname):
                    return self._dr_by_host[host][0]
            return None
        svc = self.services.get(hostname)
        for ns in (client_namespace, svc.namespace if svc else None, self.root_namespace):
            for dr in candidates:
                if dr.namespace == ns:
                    return dr
        return None

    # --- gateways and credentials ----------------------------------------------
    def merged_gateway(self, proxy: Proxy) -> MergedGateway:
        """The servers of every Gateway selecting `proxy`, merged per listening port."""
        gw_service = self.gateway_service_for(proxy)
        return merge_gateways(self.gateways_for(proxy), lambda number: self.listen_port(number, gw_service))

    def listen_port(self, number: int, gw_service: Service | None) -> int:
        """Translate a Gateway server port through the gateway's own Service: Envoy must
        listen where the Service sends traffic (its targetPort), not on the Service port."""
        sp = gw_service.port(number) if gw_service else None
        if sp is None:
            return number
        tp = sp.target_port
        if isinstance(tp, int) and not isinstance(tp, bool) or (isinstance(tp, str) and tp.isdigit()):
            target = int(tp)
            return target if 0 < target < 65536 else number
        if isinstance(tp, str) and tp:
            # A named container port: the gateway pods behind the Service resolved it already.
            assert gw_service is not None  # sp is one of its ports
            for ep in self.service_endpoints(gw_service.hostname, number):
                return ep.port
        return number

    def credential(self, namespace: str, name: str) -> Credential | None:
        """The Secret `name` of `namespace` as a credential (certificate chain and key)."""
        return self.credentials.get((namespace, name))

    def credentials_of(self, namespace: str) -> tuple[tuple[str, Credential], ...]:
        """The credentials of one namespace, by name: all a proxy there may be sent."""
        by_namespace = self.indexes.get(_CREDENTIALS_BY_NAMESPACE)
        if by_namespace is None:
            by_namespace = self.indexes.value(_CREDENTIALS_BY_NAMESPACE, _by_namespace, self.credentials)
        return by_namespace.get(namespace, ())

    def credential_problem(self, namespace: str, server: Server) -> str | None:
        """Why a Gateway server's TLS cannot be set up on a gateway in `namespace`: its
        Secrets are missing there (or lack a key or CA), or its protocol versions exclude
        each other. None: it can (or the server does not terminate TLS)."""
        if server.passthrough or server.tls is None:
            return None
        versions = ("TLSV1_0", "TLSV1_1", "TLSV1_2", "TLSV1_3")
        lo, hi = server.tls.min_protocol_version, server.tls.max_protocol_version
        if lo in versions and hi in versions and versions.index(lo) > versions.index(hi):
            return f"minProtocolVersion {lo} is above maxProtocolVersion {hi}: no TLS version is left"
        if server.tls_mode == ISTIO_MUTUAL:
            return None
        refs = []
        for name in server.tls.credentials:
            ref = credential_ref(name, namespace)
            if ref is None:
                return f"credential {name}: not a kubernetes-gateway://<namespace>/<name> reference"
            # A Gateway API reference (kubernetes-gateway://ns/name) is served only when
            # authorized (gateway_api/certificates.py): never leave Envoy waiting for it.
            refused = certificate_refusal(ref, server.gateway.namespace, namespace, self.gateway_api.grants) \
                if ref.gateway_api else ""
            if refused:
                return f"credential {refused}"
            cred = self.credentials.get((ref.namespace, ref.name))
            if cred is None or not (cred.cert_chain and cred.private_key):
                return (f"credential {ref.resource}: no Secret {ref.name} with a certificate and key in namespace "
                        f"{ref.namespace}")
            refs.append(ref)
        if refs and server.tls_mode in (MUTUAL, OPTIONAL_MUTUAL) and not self.ca_credential(refs[0].namespace, refs[0].name):
            return (f"credential {refs[0].resource}-cacert: {server.tls_mode} needs a CA: no Secret "
                    f"{refs[0].name}-cacert and no ca.crt in Secret {refs[0].name} in namespace {refs[0].namespace}")
        return None

    def ca_credential(self, namespace: str, name: str) -> bytes:
        """The CA bundle for `kubernetes://<name>-cacert`: a Secret `<name>-cacert`, else
        the `ca.crt` of the Secret `<name>` (istiod's GetCaCert); b"" when there is none."""
        own = self.credentials.get((namespace, name + "-cacert"))
        if own is not None and (own.ca or own.cert_chain):
            return own.ca or own.cert_chain
        base = self.credentials.get((namespace, name))
        return base.ca if base is not None else b""


_CREDENTIALS_BY_NAMESPACE = Value[Mapping[str, tuple[tuple[str, Credential], ...]]](
    "credentials by namespace", Lifetime.CONFIG)


def _by_namespace(credentials: Mapping[tuple[str, str], Credential]) -> dict[str, tuple[tuple[str, Credential], ...]]:
    out: dict[str, list[tuple[str, Credential]]] = {}
    for (namespace, name), cred in sorted(credentials.items()):
        out.setdefault(namespace, []).append((name, cred))
    return {ns: tuple(v) for ns, v in out.items()}


def _dr_host(dr: ConfigObject) -> str:
    return resolve_host(dr.typed.host, dr.namespace)


def build_mesh(config: ConfigSnapshot, root_namespace: str = ROOT_NAMESPACE, previous: MeshSnapshot | None = None,
               changed: AbstractSet[ConfigKey] | None = None, mesh_config: MeshConfig | None = None,
               jwks: JwksView = EMPTY_JWKS) -> MeshSnapshot:
    """The mesh of `config`. With `previous` (a mesh built by this function) and `changed`
    (every key changed since `previous.config`), a change of EndpointSlices and
    WorkloadEntries only rebuilds just the endpoints of the services owning the changed
    slices or selecting the changed entries, a change of DestinationRules and
    VirtualServices only just the rules and routes; anything else is built anew.
    `mesh_config` (else the defaults with `root_namespace`) decides the root namespace;
    it and `jwks` (the fetched key sets) are part of the snapshot's version."""
    if mesh_config is None:
        mesh_config = dataclasses.replace(DEFAULT_MESH_CONFIG, root_namespace=root_namespace)
    root_namespace = mesh_config.root_namespace
    version = mesh_version(config.version, mesh_config, jwks)
    if (previous is not None and changed and previous._pods is not None
            and previous.mesh_config == mesh_config and previous.jwks.digest == jwks.digest
            and all(k.kind in _ENDPOINT_KINDS for k in changed)):
        return _with_changed_slices(config, previous, changed)
    if (previous is not None and changed and previous._dr_index is not None
            and previous.mesh_config == mesh_config and previous.jwks.digest == jwks.digest
            and all(k.kind in _ROUTING_KINDS for k in changed)):
        return _with_changed_routing(config, previous, version)
    pods = config.of_kind(kinds.POD.kind)
    nodes = {n.name: n.labels for n in config.of_kind(kinds.NODE.kind)}
    pod_index = PodIndex(pods, nodes)
    services: dict[str, Service] = {}
    for obj in config.of_kind(kinds.SERVICE.kind):
        svc = build_service(obj)
        services[svc.hostname] = svc

    slices_by_service: dict[tuple[str, str], list[ConfigObject]] = {}
    for sl in config.of_kind(kinds.ENDPOINT_SLICE.kind):
        owner = sl.labels.get(SERVICE_NAME_LABEL)
        if owner:
            slices_by_service.setdefault((sl.namespace, owner), []).append(sl)

    endpoints: dict[tuple[str, int], tuple[Endpoint, ...]] = {}
    instances: dict[str, list[ServiceInstance]] = {}
    workloads = workloads_of(config)
    for svc in services.values():
        _add_endpoints(svc, slices_by_service.get((svc.namespace, svc.name)), pod_index, pods, workloads, endpoints,
                       instances)
    hidden = _add_service_entries(config, pods, workloads, nodes, services, endpoints, instances)

    drs = tuple(config.of_kind(kinds.DESTINATION_RULE.kind))
    credentials = credentials_from(config.of_kind(kinds.SECRET.kind))
    gateway_api = convert(config, services, credentials)
    gateways = tuple(config.of_kind(kinds.GATEWAY.kind)) + gateway_api.gateways
    dr_by_host: dict[str, list[ConfigObject]] = {}
    for dr in drs:
        dr_by_host.setdefault(_dr_host(dr), []).append(dr)

    mesh = MeshSnapshot(
        version=version,
        config=config,
        services=services,
        endpoints=endpoints,
        gateways=gateways,
        virtual_services=resolve_delegates([*config.of_kind(kinds.VIRTUAL_SERVICE.kind), *gateway_api.virtual_services]),
        destination_rules=drs,
        peer_authentications=tuple(config.of_kind(kinds.PEER_AUTHENTICATION.kind)),
        root_namespace=root_namespace,
        mesh_config=mesh_config,
        jwks=jwks,
        authorization_policies=tuple(config.of_kind(kinds.AUTHORIZATION_POLICY.kind)),
        request_authentications=tuple(config.of_kind(kinds.REQUEST_AUTHENTICATION.kind)),
        _instances_by_ip={ip: tuple(sorted(v, key=_instance_order)) for ip, v in instances.items()},
        _dr_by_host={h: tuple(v) for h, v in dr_by_host.items()},
        _wildcard_dr_hosts=tuple(h for h in dr_by_host if h.startswith("*")),
        credentials=credentials,
        gateway_api=gateway_api,
        _dr_index=DestinationRuleIndex(drs, root_namespace, mesh_config.default_destination_rule_export_to),
        _pods=pod_index,
        _workloads=workloads,
        hidden_services=hidden,
    )
    conflicts = gateway_conflicts(mesh, pods)
    report_gateway_conflicts(conflicts)
    return dataclasses.replace(mesh, gateway_conflicts=conflicts)


def mesh_version(config_version: str, mesh_config: MeshConfig, jwks: JwksView) -> str:
    """The snapshot's version: the config's, and (when not the defaults) the mesh config's
    and the fetched key sets', so that a change of either is a new snapshot."""
    if mesh_config == DEFAULT_MESH_CONFIG and not jwks.key_sets:
        return config_version
    h = hashlib.blake2b(f"{config_version}\0{mesh_config!r}\0{jwks.digest}".encode(), digest_size=8)
    return f"{config_version}-{h.hexdigest()}"


def _instance_order(i: ServiceInstance) -> tuple[str, int]:
    """The order of the instances at one address (MeshSnapshot._instances_by_ip)."""
    return (i.service.hostname, i.port.port)


def _add_endpoints(svc: Service, slices: list[ConfigObject] | None, pod_index: PodIndex, pods: list[ConfigObject],
                   workloads: tuple[Workload, ...], endpoints: dict[tuple[str, int], tuple[Endpoint, ...]],
                   instances: dict[str, list[ServiceInstance]]) -> None:
    """`svc`'s endpoints per port (from its slices, else from the pods it selects, then
    the WorkloadEntries it selects) into `endpoints`, and its instances by address into
    `instances`."""
    per_port = endpoints_from_slices(svc, slices, pod_index) if slices else endpoints_from_pods(svc, pods, pod_index.nodes)
    if workloads:
        for port, more in service_endpoints(svc, workloads).items():
            per_port[port] = per_port.get(port, ()) + tuple(more)
    _add_instances(svc, per_port, endpoints, instances)


def _add_instances(svc: Service, per_port: Mapping[int, tuple[Endpoint, ...]],
                   endpoints: dict[tuple[str, int], tuple[Endpoint, ...]],
                   instances: dict[str, list[ServiceInstance]], ip_only: bool = False) -> None:
    for port, eps in per_port.items():
        endpoints[(svc.hostname, port)] = eps
        sp = svc.port(port)
        if sp is not None:
            for ep in eps:
                # A ServiceEntry's DNS names and sockets: no proxy is found by them.
                if not ip_only or is_ip(ep.address):
                    instances.setdefault(ep.address, []).append(ServiceInstance(svc, sp, ep))


def _add_service_entries(config: ConfigSnapshot, pods: list[ConfigObject], workloads: tuple[Workload, ...],
                         nodes: Mapping[str, Mapping[str, str]], services: dict[str, Service],
                         endpoints: dict[tuple[str, int], tuple[Endpoint, ...]],
                         instances: dict[str, list[ServiceInstance]]) -> tuple[Service, ...]:
    """The Services of the ServiceEntries (service_entries.py) into `services`, their
    endpoints and instances (those at an IP: a VM's sidecar finds its inbound side) as
    _add_endpoints adds a Kubernetes Service's. A host that is already a Service stays
    that Service, as istiod's PushContext keeps it: a Kubernetes Service wins over a
    ServiceEntry, an older ServiceEntry over a newer one (creation time, then namespace
    and name). The ServiceEntry hosts left out are returned."""
    entries = sorted(config.of_kind(kinds.SERVICE_ENTRY.kind),
                     key=lambda o: (str(o.extra.get("creationTimestamp") or ""), o.namespace, o.name))
    hidden: list[Service] = []
    for obj in entries:
        shared: dict[int, tuple[Endpoint, ...]] | None = None
        for svc in services_of(obj):
            if svc.hostname in services:
                hidden.append(svc)
                continue
            services[svc.hostname] = svc
            if resolves_host(obj.typed):
                per_port = host_endpoints(svc, obj.typed)
            else:
                if shared is None:
                    shared = endpoints_of(obj, pods, workloads, nodes)
                per_port = shared
            _add_instances(svc, per_port, endpoints, instances, ip_only=True)
    _report_hidden(hidden, services)
    return tuple(hidden)


# What build_mesh's fast path follows: endpoints, and nothing but endpoints.
_ENDPOINT_KINDS = frozenset({kinds.ENDPOINT_SLICE.kind, kinds.WORKLOAD_ENTRY.kind})


def _with_changed_slices(config: ConfigSnapshot, previous: MeshSnapshot, changed: AbstractSet[ConfigKey]) -> MeshSnapshot:
    """`previous` with the endpoints of the services owning `changed` slices, and of the
    services selecting `changed` WorkloadEntries (before or after), recomputed as
    build_mesh computes them; Services, Pods, Nodes and routing config are unchanged."""
    owners: dict[tuple[str, str], list[ConfigObject]] = {}
    selected: list[tuple[str, Mapping[str, str]]] = []  # (namespace, labels) of changed WorkloadEntries
    for key in changed:
        # A deleted or relabelled slice leaves its former owner as well.
        for obj in (config.objects.get(key), previous.config.objects.get(key)):
            if obj is not None and key.kind == kinds.WORKLOAD_ENTRY.kind:
                selected.append((obj.namespace, obj.typed.labels))
                continue
            owner = obj.labels.get(SERVICE_NAME_LABEL) if obj is not None else None
            if obj is not None and owner:
                owners.setdefault((obj.namespace, owner), [])
    for known in previous.services.values() if selected else ():
        if known.source == "Kubernetes" and known.selector and _selects(known.namespace, known.selector, selected):
            owners.setdefault((known.namespace, known.name), [])
    for sl in config.of_kind(kinds.ENDPOINT_SLICE.kind):  # the order build_mesh reads them in
        got = owners.get((sl.namespace, sl.labels.get(SERVICE_NAME_LABEL, "")))
        if got is not None:
            got.append(sl)

    pod_index = previous._pods
    assert pod_index is not None
    workloads = workloads_of(config) if selected else previous._workloads
    endpoints = dict(previous.endpoints)
    fresh: dict[str, list[ServiceInstance]] = {}
    hosts: set[str] = set()
    addresses: set[str] = set()  # IPs whose instances may change: old and new endpoints
    named_target = False
    for (ns, name), slices in owners.items():
        svc = previous.services.get(fqdn(name, ns))
        if svc is None or (svc.namespace, svc.name) != (ns, name):
            continue  # slices of no Service are never read
        hosts.add(svc.hostname)
        named_target |= any(isinstance(p.target_port, str) and not p.target_port.isdigit() for p in svc.ports)
        for sp in svc.ports:
            addresses.update(ep.address for ep in previous.endpoints.get((svc.hostname, sp.port), ()))
        _add_endpoints(svc, slices, pod_index, config.of_kind(kinds.POD.kind), workloads, endpoints, fresh)
    for obj in config.of_kind(kinds.SERVICE_ENTRY.kind) if selected else ():
        selector = obj.typed.workload_selector
        if selector is None or not _selects(obj.namespace, selector, selected):
            continue
        per_port: dict[int, tuple[Endpoint, ...]] | None = None
        for of_entry in services_of(obj):
            served = previous.services.get(of_entry.hostname)
            if served is None or served != of_entry:
                continue  # another Service holds the host
            if per_port is None:
                per_port = endpoints_of(obj, config.of_kind(kinds.POD.kind), workloads, pod_index.nodes)
            hosts.add(served.hostname)
            for sp in served.ports:
                addresses.update(ep.address for ep in previous.endpoints.get((served.hostname, sp.port), ()))
            _add_instances(served, per_port, endpoints, fresh, ip_only=True)
    instances = dict(previous._instances_by_ip)
    changed_addresses = addresses | fresh.keys()
    for ip in changed_addresses:
        kept = [i for i in instances.get(ip, ()) if i.service.hostname not in hosts]
        # A stable sort, as build_mesh's: equal keys are one service's, in endpoint order.
        merged = sorted(kept + fresh.get(ip, []), key=_instance_order)
        if merged:
            instances[ip] = tuple(merged)
        else:
            instances.pop(ip, None)
    version = mesh_version(config.version, previous.mesh_config, previous.jwks)
    mesh = dataclasses.replace(previous, version=version, config=config, endpoints=endpoints,
                               _instances_by_ip=instances, _workloads=workloads, derived_from=previous.version,
                               indexes_from=previous.indexes.after_endpoint_change(hosts, changed_addresses))
    # Conflicts read endpoints only to resolve a gateway Service's named targetPort.
    conflicts = gateway_conflicts(mesh, config.of_kind(kinds.POD.kind)) if named_target else previous.gateway_conflicts
    report_gateway_conflicts(conflicts)
    return dataclasses.replace(mesh, gateway_conflicts=conflicts, indexes_from=mesh.indexes)


# What the second fast path follows: rules and routes. Nothing else build_mesh makes reads
# them (the Gateway API conversion, the services and endpoints, the gateway conflicts).
_ROUTING_KINDS = frozenset({kinds.DESTINATION_RULE.kind, kinds.VIRTUAL_SERVICE.kind})


def _with_changed_routing(config: ConfigSnapshot, previous: MeshSnapshot, version: str) -> MeshSnapshot:
    """`previous` with its DestinationRules and VirtualServices read again from `config`,
    as build_mesh reads them; services, endpoints, gateways and the rest are its. A new
    snapshot otherwise (no `derived_from`, its own indexes: what readers derive may read
    rules and routes)."""
    drs = tuple(config.of_kind(kinds.DESTINATION_RULE.kind))
    dr_by_host: dict[str, list[ConfigObject]] = {}
    for dr in drs:
        dr_by_host.setdefault(_dr_host(dr), []).append(dr)
    return dataclasses.replace(
        previous, version=version, config=config, derived_from="",
        virtual_services=resolve_delegates([*config.of_kind(kinds.VIRTUAL_SERVICE.kind),
                                            *previous.gateway_api.virtual_services]),
        destination_rules=drs,
        _dr_by_host={h: tuple(v) for h, v in dr_by_host.items()},
        _wildcard_dr_hosts=tuple(h for h in dr_by_host if h.startswith("*")),
        _dr_index=DestinationRuleIndex(drs, previous.root_namespace,
                                       previous.mesh_config.default_destination_rule_export_to))


def _selects(namespace: str, selector: Mapping[str, str], workloads: list[tuple[str, Mapping[str, str]]]) -> bool:
    """Whether `selector` (of `namespace`) selects one of `workloads` (namespace, labels)."""
    return any(ns == namespace and labels_match(selector, labels) for ns, labels in workloads)


def gateway_conflicts(mesh: MeshSnapshot, pods: list[ConfigObject]) -> tuple[GatewayConflict, ...]:
    """Conflicts of every distinct set of Gateways a gateway workload selects: the pods the
    selectors match (or, with no such pod in the snapshot, a pod with just the selector's
    labels where a Service selects it), each merged as that proxy would merge them."""
    selectors: dict[tuple[Any, ...], Mapping[str, str]] = {}
    for gw in mesh.gateways:
        sel = gw.typed.selector
        if sel:
            selectors.setdefault(tuple(sorted((str(k), str(v)) for k, v in sel.items())), sel)
    if not selectors:
        return ()
    workloads: dict[tuple[Any, ...], Proxy] = {}

    def add(namespace: str, labels: Mapping[str, str]) -> None:
        # Proxies selected by the same Gateways in the same namespace merge the same way.
        chosen = tuple(k for k, sel in selectors.items() if labels_match(sel, labels))
        if chosen:
            workloads.setdefault((namespace, chosen), Proxy(id="", type="router", ip="", pod="", namespace=namespace,
                                                            labels=dict(labels)))

    for sel in selectors.values():
        matched = [p for p in pods if labels_match(sel, p.labels)]
        for pod in matched:
            add(pod.namespace, pod.labels)
        if not matched:
            # No pod in the snapshot: the gateway runs where a Service selects such pods
            # (istio-ingressgateway in istio-system), else in its Gateways' namespaces.
            namespaces = sorted({svc.namespace for svc in mesh.services.values()
                                 if svc.selector and labels_match(svc.selector, sel)}) or \
                sorted({gw.namespace for gw in mesh.gateways if gw.typed.selector == sel})
            for ns in namespaces:
                add(ns, sel)
    seen: dict[tuple[Any, ...], GatewayConflict] = {}
    for key in sorted(workloads):
        proxy = workloads[key]
        merged = mesh.merged_gateway(proxy)
        for c in merged.conflicts:
            seen.setdefault(c.key(), c)
        for gp in merged.ports:
            for server in gp.servers:
                problem = mesh.credential_problem(proxy.namespace, server)
                if problem is not None:
                    c = GatewayConflict(server, problem + " (its filter chain is left out)")
                    seen.setdefault(c.key(), c)
    return tuple(seen[k] for k in sorted(seen, key=repr))


_reported: set[tuple[Any, ...]] = set()
_reported_hidden: set[tuple[str, str, str]] = set()


def _report_hidden(hidden: list[Service], services: Mapping[str, Service]) -> None:
    """One `service host conflict` event per ServiceEntry host left out, when it appears."""
    global _reported_hidden
    current = set()
    for svc in hidden:
        key = (svc.namespace, svc.hostname, svc.created)
        current.add(key)
        if key not in _reported_hidden:
            holder = services[svc.hostname]
            why = "a Kubernetes Service wins" if holder.source != svc.source else "the older one wins"
            log.warning("service host conflict", host=svc.hostname, namespace=svc.namespace, ignored="ServiceEntry",
                        kept=f"{holder.source} in {holder.namespace}",
                        message=f"ServiceEntry host {svc.hostname} in namespace {svc.namespace} is ignored: "
                                f"a {holder.source} in namespace {holder.namespace} defines it ({why})")
    _reported_hidden = current


def report_gateway_conflicts(conflicts: tuple[GatewayConflict, ...]) -> None:
    """One `gateway conflict` event per conflict when it appears (not on every rebuild)."""
    global _reported
    current = {c.key() for c in conflicts}
    for c in conflicts:
        if c.key() not in _reported:
            log.warning(
                "gateway conflict", gateway=c.server.gateway_name, server=c.server.index, port=c.server.number,
                hosts=list(c.server.hosts), reason=c.reason, action="ignored" if c.dropped else "merged",
                conflicts_with=(f"{c.other.gateway_name} spec.servers[{c.other.index}]" if c.other else None),
                message=c.message(),
            )
    _reported = current
