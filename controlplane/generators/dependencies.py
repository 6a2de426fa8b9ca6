"""What generated output depends on, as cheap fingerprints of a mesh snapshot.

The generator cache keys every piece of output on the fingerprints of exactly the inputs
it reads (inputs.py names them), so a new snapshot invalidates only what a change
touched (istiod reaches the same end with ConfigsUpdated and per-type "needs push"
filters):

- one fingerprint per config kind (every object's key and content generation), and one
  for OTHER;
- `ENDPOINT_FACTS`: the few things non-EDS output reads from endpoints (the service
  accounts behind each service, the endpoints of headless services, the endpoint port
  of a named targetPort). A pod moving or turning ready changes none of them, so an
  endpoint change leaves clusters, listeners and routes cached;
- per host, the endpoints themselves (EDS, rebuilt per changed host only);
- per workload IP, the services and ports a sidecar at that IP serves (its inbound side);
- per proxy, what its scope reads through them (its effective PeerAuthentication, the
  DestinationRule selectors selecting it, the Secrets of its namespace, ...).

Endpoint kinds (EndpointSlice, Pod, Node) are read only through these. A Node is read
for its topology labels only, i.e. for the locality of the endpoints on it (part of the
per-host endpoint fingerprints, not of ENDPOINT_FACTS) and of the proxies on it
(`proxy_locality`, read by EDS only): relabelling a Node can change EDS and nothing else.

Every fingerprint is computed once per snapshot, on first use, into the snapshot's own
indexes (model/indexes.py), each declared below with the lifetime of what it reads: a
snapshot derived from the previous one when only EndpointSlices (or WorkloadEntries) changed keeps what reads
no endpoint, and the per-host and per-address entries of what did not change. Each
fingerprint function says what it stands for (`@stands_for`, checked in tracking mode).
"""
from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from .. import names
from ..config.objects import ConfigKey, ConfigObject
from ..config.types.destinationrule import DestinationRule
from ..config.types.trafficpolicy import PortTrafficPolicy, TrafficPolicy
from ..model import security as model_security
from ..model.destination_rules import rule_host
from ..model.hosts import covers
from ..model.indexes import Index, Lifetime, Value
from ..model.locality import Locality
from ..model.mesh import MeshSnapshot
from ..model.peer_authentication import selector_labels
from ..model.proxy import Proxy
from ..model.services import Endpoint
from . import secrets
from .inputs import (
    AUTHORIZATION_POLICY,
    DESTINATION_RULE,
    DR_ROUTING,
    DR_SELECTORS,
    ENDPOINT_FACTS,
    ENDPOINT_SLICE,
    ENDPOINTS,
    INSTANCES,
    JWKS,
    MESH_CONFIG,
    MESH_VERSION,
    OTHER,
    PEER_AUTHENTICATION,
    PROXY_LOCALITY,
    REQUEST_AUTHENTICATION,
    SECRET,
    SERVICE,
    SERVICE_ENTRY,
    SIDECAR_SCOPE,
    STANDS_FOR,
    WORKLOAD_ENTRY,
    input_of,
    stands_for,
)

# Fingerprints that read endpoints (or everything): the others hold for every snapshot
# derived from this one by an EndpointSlice change.
_ENDPOINT_DEPS = frozenset({ENDPOINT_SLICE, WORKLOAD_ENTRY, ENDPOINT_FACTS, MESH_VERSION})
# Kinds build_mesh's fast path follows (endpoints only): their digests are the snapshot's own.
_ENDPOINT_CHANGE_KINDS = (ENDPOINT_SLICE, WORKLOAD_ENTRY)

# --- what the fingerprints keep in the snapshot (model/indexes.py), for how long --------
CONFIG, HOST, ADDRESS, SNAPSHOT = Lifetime.CONFIG, Lifetime.HOST, Lifetime.ADDRESS, Lifetime.SNAPSHOT
_KIND_DIGESTS = Value[dict[str, str]]("digest per kind but EndpointSlice, and OTHER", CONFIG)
_SLICES_DIGEST = Value[str]("digest of the EndpointSlices", SNAPSHOT)
_WORKLOAD_ENTRIES_DIGEST = Value[str]("digest of the WorkloadEntries", SNAPSHOT)
_DR_ROUTING = Value[str]("DestinationRules as routes read them", CONFIG)
_HOST_RULES = Value[dict[str, tuple[Any, ...]]]("DestinationRules covering each host", CONFIG)
_DR_LOCALITY = Value[tuple[bool, bool, bool]]("DestinationRule locality settings", CONFIG)
_DR_SELECTORS = Index[tuple[Any, ...], tuple[Any, ...]]("DestinationRule selectors selecting a workload", CONFIG)
_DR_CREDENTIALS = Value[bool]("some DestinationRule names a credentialName", CONFIG)
_NAMESPACE_SECRETS = Value[dict[str, str]]("digest of the Secrets per namespace", CONFIG)
_SOURCE_LABELS = Value[bool]("some VirtualService matches sourceLabels", CONFIG)
_DNS_HOSTS = Value[bool]("some service is resolved by DNS", CONFIG, reads_rules=False)
_SELECTOR_POLICY_NAMESPACES = Value[frozenset[str]]("namespaces with a selector PeerAuthentication", CONFIG)
_POLICIES = Index[tuple[Any, ...], tuple[Any, ...]]("effective PeerAuthentication of a workload", CONFIG)
_NAMESPACE_MODES = Index[str, str]("namespace PeerAuthentication mode", CONFIG)
_SERVICE_GENERATIONS = Value[dict[str, str]]("generation of each Service object", CONFIG, reads_rules=False)
_PROXY_LOCALITIES = Index[tuple[Any, ...], Locality]("where a proxy runs", CONFIG)
_SECURITY = Index[tuple[Any, ...], tuple[Any, ...]]("authn/authz inputs of a workload", CONFIG)
_HOST_ENDPOINTS = Index[str, str]("digest of a host's endpoints", HOST, reads_rules=False)
_SERVICE_ACCOUNTS = Index[str, str]("service accounts behind a host", HOST, reads_rules=False)
_LOCALIZED = Index[str, bool]("a host has an endpoint in a known locality", HOST)
_HEADLESS_ADDRESSES = Index[str, frozenset[str]]("endpoint addresses of a headless host", HOST, reads_rules=False)
_SHAPES = Index[str, tuple[Any, ...]]("the instances at an address, as the inbound side reads them", ADDRESS)
_ALL_HOST_ENDPOINTS = Value[dict[str, str]]("digest of each host's endpoints", SNAPSHOT, reads_rules=False)
_ALL_ENDPOINTS = Value[str]("digest of every endpoint", SNAPSHOT, reads_rules=False)
_ENDPOINT_FACTS = Value[str]("digest of what non-EDS output reads of endpoints", SNAPSHOT, reads_rules=False)
_HEADLESS_IPS = Value[frozenset[str]]("endpoint addresses of headless services", SNAPSHOT, reads_rules=False)
_LOCALIZED_HOSTS = Value[frozenset[str]]("hosts with an endpoint in a known locality", SNAPSHOT)
_LOCALITY_INPUTS = Value[tuple[bool, bool]]("assignments read the proxy's locality, labels", SNAPSHOT)
_HOST_FACTS = Index[str, str]("what non-EDS output reads of a host's endpoints", HOST, reads_rules=False)
_SCOPED_FACTS = Index[str, str]("endpoint facts of the hosts of a sidecar scope", SNAPSHOT, reads_rules=False)
_SCOPED_ENDPOINTS = Index[str, str]("digest of the endpoints of the hosts of a sidecar scope", SNAPSHOT, reads_rules=False)
_SCOPED_RULES = Index[str, str]("DestinationRules covering the hosts of a sidecar scope", CONFIG)


def _digest(parts: Iterable[str]) -> str:
    h = hashlib.blake2b(digest_size=12)
    for p in parts:
        h.update(p.encode())
        h.update(b"\n")
    return h.hexdigest()


def _endpoint_text(ep: Endpoint) -> str:
    return (f"{ep.address}:{ep.port}:{int(ep.ready)}:{ep.namespace}/{ep.pod}/{ep.service_account}:"
            f"{sorted(ep.labels.items())}:w{ep.weight}")


def _label_key(labels: Mapping[str, str], label_key: tuple[Any, ...] | None) -> tuple[Any, ...]:
    """Labels as a memo key: the proxy's precomputed `label_key` when given (callers on
    the push path pass it), else sorted here."""
    return label_key if label_key is not None else tuple(sorted(labels.items()))


def _eds_endpoint_text(ep: Endpoint) -> str:
    # EDS also reads the locality, which may come from the pod's Node rather than its labels.
    return f"{_endpoint_text(ep)}@{'/'.join(ep.locality)}"


def _object_line(key: ConfigKey, obj: ConfigObject) -> str:
    """One object in a per-kind fingerprint."""
    return f"{key.kind}/{key.namespace}/{key.name}={obj.generation}"


# --- per kind ---------------------------------------------------------------------------

@stands_for(per_call=lambda mesh, name: STANDS_FOR[name])
def kind(mesh: MeshSnapshot, name: str) -> str:
    """The fingerprint `name`: a config kind's, OTHER, or one of the narrower ones."""
    if name == ENDPOINT_FACTS:
        return endpoint_facts(mesh)
    if name == MESH_VERSION:
        return mesh.version
    if name == DR_ROUTING:
        return dr_routing(mesh)
    if name == ENDPOINT_SLICE:
        # Apart from the other kinds: a snapshot derived by an EndpointSlice change keeps
        # those, and no part reads this one, so an endpoint change hashes no slice.
        got = mesh.indexes.get(_SLICES_DIGEST)
        return got if got is not None else mesh.indexes.value(_SLICES_DIGEST, _slices_digest, mesh)
    if name == WORKLOAD_ENTRY:  # the same, for a snapshot derived by a WorkloadEntry change
        got = mesh.indexes.get(_WORKLOAD_ENTRIES_DIGEST)
        return got if got is not None else mesh.indexes.value(_WORKLOAD_ENTRIES_DIGEST, _entries_digest, mesh)
    digests = mesh.indexes.get(_KIND_DIGESTS)
    if digests is None:
        digests = mesh.indexes.value(_KIND_DIGESTS, _kind_digests, mesh)
    return digests.get(name, "")


def carry_kind_digests(previous: MeshSnapshot, mesh: MeshSnapshot) -> None:
    """`mesh` differs from `previous` in DestinationRules only: its digest per kind is
    `previous`'s with the DestinationRules' made anew (hashing one kind, not every
    object). Nothing when `previous` has none yet or `mesh` has its own."""
    old = previous.indexes.get(_KIND_DIGESTS)
    if old is None or mesh.indexes.get(_KIND_DIGESTS) is not None or input_of(DESTINATION_RULE) != DESTINATION_RULE:
        return
    digests = dict(old)
    lines = [_object_line(o.key, o) for o in mesh.config.of_kind(DESTINATION_RULE)]
    if lines:
        digests[DESTINATION_RULE] = _digest(sorted(lines))
    else:
        digests.pop(DESTINATION_RULE, None)
    mesh.indexes.value(_KIND_DIGESTS, lambda: digests)


def _slices_digest(mesh: MeshSnapshot) -> str:
    lines = [_object_line(o.key, o) for o in mesh.config.of_kind(ENDPOINT_SLICE)]
    return _digest(sorted(lines)) if lines else ""


def _entries_digest(mesh: MeshSnapshot) -> str:
    lines = [_object_line(o.key, o) for o in mesh.config.of_kind(WORKLOAD_ENTRY)]
    return _digest(sorted(lines)) if lines else ""


def _kind_digests(mesh: MeshSnapshot) -> dict[str, str]:
    by_kind: dict[str, list[str]] = {}
    for key, obj in mesh.config.objects.items():
        if key.kind not in _ENDPOINT_CHANGE_KINDS:
            by_kind.setdefault(input_of(key.kind), []).append(_object_line(key, obj))
    # The mesh config (root namespace, trust domain, providers) can change any output:
    # it counts as an unanalysed input, like the kinds under OTHER.
    by_kind.setdefault(OTHER, []).append(f"meshconfig={mesh.mesh_config!r}")
    return {k: _digest(sorted(v)) for k, v in by_kind.items()}


def fingerprints_value(deps: tuple[str, ...]) -> Value[tuple[str, ...]]:
    """Where a snapshot keeps the fingerprints of `deps` (a Part's, Part._fingerprints):
    with what is CONFIG when none of them reads endpoints."""
    lifetime = CONFIG if _ENDPOINT_DEPS.isdisjoint(deps) else SNAPSHOT
    return Value[tuple[str, ...]](f"fingerprints of {', '.join(deps)}", lifetime)


@stands_for(per_call=lambda mesh, deps: (i for d in deps for i in STANDS_FOR[d]))
def fingerprints(mesh: MeshSnapshot, deps: tuple[str, ...]) -> tuple[str, ...]:
    """The fingerprints of `deps` (a part's declared inputs)."""
    return tuple(kind(mesh, d) for d in deps)


@stands_for(DR_ROUTING, DR_SELECTORS)
def dr_routing(mesh: MeshSnapshot) -> str:
    got = mesh.indexes.get(_DR_ROUTING)
    return got if got is not None else mesh.indexes.value(_DR_ROUTING, _dr_routing, mesh)


def _dr_routing(mesh: MeshSnapshot) -> str:
    lines = []
    for dr in mesh.destination_rules:
        rule: DestinationRule = dr.typed
        balancers = [f"{where}:{p.load_balancer!r}" for where, p in _policies(rule) if p.load_balancer is not None]
        lines.append(f"{dr.namespace}/{dr.name} host={rule.host} export={rule.export_to} "
                     f"selector={rule.workload_selector!r} lb={';'.join(balancers)}")
    return _digest(lines)


@stands_for(DESTINATION_RULE)
def host_rules(mesh: MeshSnapshot) -> dict[str, tuple[Any, ...]]:
    """host -> every DestinationRule whose `host` covers it (key and generation),
    whatever namespaces it serves: a changed rule can change the clusters and
    assignments of these hosts and of no other (generators: incremental updates)."""
    got = mesh.indexes.get(_HOST_RULES)
    return got if got is not None else mesh.indexes.value(_HOST_RULES, _host_rules, mesh)


def _host_rules(mesh: MeshSnapshot) -> dict[str, tuple[Any, ...]]:
    exact: dict[str, list[tuple[Any, ...]]] = {}
    wild: list[tuple[str, tuple[Any, ...]]] = []
    for dr in mesh.destination_rules:
        host, line = rule_host(dr), (dr.namespace, dr.name, dr.generation)
        if host.startswith("*"):
            wild.append((host, line))
        else:
            exact.setdefault(host, []).append(line)
    out: dict[str, tuple[Any, ...]] = {}
    for host in mesh.services:
        lines = exact.get(host, []) + [line for w, line in wild if covers(w, host)]
        if lines:
            out[host] = tuple(sorted(lines))
    return out


# --- what non-EDS output reads from endpoints -------------------------------------------

@stands_for(ENDPOINT_FACTS)
def endpoint_facts(mesh: MeshSnapshot) -> str:
    got = mesh.indexes.get(_ENDPOINT_FACTS)
    return got if got is not None else mesh.indexes.value(_ENDPOINT_FACTS, _endpoint_facts, mesh)


def _endpoint_facts(mesh: MeshSnapshot) -> str:
    lines = []
    for host in sorted(mesh.services):
        svc = mesh.services[host]
        lines.append(f"{host} sa={service_accounts(mesh, host)}")
        named = any(isinstance(p.target_port, str) and p.target_port and not p.target_port.isdigit() for p in svc.ports)
        # DNS clusters carry their endpoints inline (cluster_discovery.py): CDS reads them all.
        dns = svc.resolution in ("DNS", "DNSRoundRobin")
        if svc.headless or named or dns or svc.resolution == "Passthrough":
            text = _eds_endpoint_text if dns else _endpoint_text
            for sp in svc.ports:
                eps = mesh.service_endpoints(host, sp.port)
                lines.append(f"{host}:{sp.port} " + ";".join(text(e) for e in eps))
    return _digest(lines)


@stands_for(ENDPOINT_FACTS)
def service_accounts(mesh: MeshSnapshot, host: str) -> str:
    """The identities behind a service (MeshSnapshot.service_accounts)."""
    table = mesh.indexes[_SERVICE_ACCOUNTS]
    got = table.get(host)
    if got is None:
        got = table[host] = ",".join(sorted(f"{ns}/{sa}" for ns, sa in mesh.service_accounts(host)))
    return got


@stands_for()
def headless_ips(mesh: MeshSnapshot) -> frozenset[str]:
    """Addresses of headless services' endpoints: a sidecar at one of them gets no
    listener for itself, so its outbound listeners depend on its IP."""
    got = mesh.indexes.get(_HEADLESS_IPS)
    return got if got is not None else mesh.indexes.value(_HEADLESS_IPS, _headless_ips, mesh)


def _headless_ips(mesh: MeshSnapshot) -> frozenset[str]:
    per_host = mesh.indexes[_HEADLESS_ADDRESSES]
    out: set[str] = set()
    for svc in mesh.services.values():
        if svc.headless:
            addresses = per_host.get(svc.hostname)
            if addresses is None:
                addresses = per_host[svc.hostname] = frozenset(
                    ep.address for sp in svc.ports for ep in mesh.service_endpoints(svc.hostname, sp.port))
            out |= addresses
    return frozenset(out)


@stands_for()
def locality_inputs(mesh: MeshSnapshot) -> tuple[bool, bool]:
    """Whether some assignment can depend on the proxy's locality (a DestinationRule
    sets `outlierDetection`, which turns on the mesh's default locality failover, or
    a `localityLbSetting`) and on its labels (`failoverPriority`). Without such
    rules, proxies in different localities share their endpoints."""
    got = mesh.indexes.get(_LOCALITY_INPUTS)
    return got if got is not None else mesh.indexes.value(_LOCALITY_INPUTS, _locality_inputs, mesh)


def _locality_inputs(mesh: MeshSnapshot) -> tuple[bool, bool]:
    failover, distribute, by_labels = _dr_locality(mesh)
    default = mesh.mesh_config.locality_lb_setting  # for clusters whose rule sets none
    if default.enabled:
        distribute = distribute or bool(default.distribute)
        by_labels = by_labels or (failover and bool(default.failover_priority))
    # Plain failover orders localities of endpoints: with every endpoint in the empty
    # locality, it gives one priority wherever the proxy is.
    failover = failover and bool(localized_hosts(mesh))
    return (failover or distribute or by_labels, by_labels)


def _dr_locality(mesh: MeshSnapshot) -> tuple[bool, bool, bool]:
    """Whether DestinationRules set failover (outlierDetection, localityLbSetting),
    `distribute`, `failoverPriority`: what locality_inputs reads of config."""
    got = mesh.indexes.get(_DR_LOCALITY)
    if got is None:
        def scan() -> tuple[bool, bool, bool]:
            policies = [p for dr in mesh.destination_rules for _, p in _policies(dr.typed)]
            settings = [p.load_balancer.locality_lb_setting for p in policies
                        if p.load_balancer is not None and p.load_balancer.locality_lb_setting is not None]
            return (any(p.outlier_detection is not None for p in policies) or bool(settings),
                    any(s.distribute for s in settings), any(s.failover_priority for s in settings))
        got = mesh.indexes.value(_DR_LOCALITY, scan)
    return got


@stands_for()
def localized_hosts(mesh: MeshSnapshot) -> frozenset[str]:
    """Hosts with at least one endpoint in a known locality."""
    got = mesh.indexes.get(_LOCALIZED_HOSTS)
    return got if got is not None else mesh.indexes.value(_LOCALIZED_HOSTS, _localized_hosts, mesh)


def _localized_hosts(mesh: MeshSnapshot) -> frozenset[str]:
    per_host = mesh.indexes[_LOCALIZED]
    missing: dict[str, bool] = {}
    for (host, _), eps in mesh.endpoints.items():
        if host not in per_host:
            missing[host] = missing.get(host, False) or any(ep.locality for ep in eps)
    per_host.update(missing)
    return frozenset(host for (host, _) in mesh.endpoints if per_host[host])


@stands_for(DR_SELECTORS)
def dr_selectors(mesh: MeshSnapshot, namespace: str, labels: Mapping[str, str], label_key: tuple[Any, ...] | None = None) -> tuple[Any, ...]:
    """The DestinationRule `workloadSelector`s of `namespace` that select a proxy with
    `labels`: with the namespace, all a proxy's rule lookups depend on. Empty unless
    such a rule selects the proxy, so proxies without one keep sharing output."""
    table = mesh.indexes[_DR_SELECTORS]
    key = (namespace, _label_key(labels, label_key))
    got = table.get(key)
    if got is None:
        got = table[key] = mesh.dr_selectors(namespace, labels)
    return got


@stands_for()
def uses_dr_credentials(mesh: MeshSnapshot) -> bool:
    """Whether some DestinationRule names a `credentialName`: only then do outbound
    clusters depend on Secrets (destinations.credential_problem)."""
    got = mesh.indexes.get(_DR_CREDENTIALS)
    if got is None:
        got = mesh.indexes.value(_DR_CREDENTIALS, lambda: any(
            p.tls is not None and p.tls.credential_name for dr in mesh.destination_rules for _, p in _policies(dr.typed)))
    return got


@stands_for(per_call=lambda mesh, namespace: (f"{SECRET}@{namespace}",))
def namespace_secrets(mesh: MeshSnapshot, namespace: str) -> str:
    """Fingerprint of the credentials (Secrets) of one namespace: all a proxy of that
    namespace can be sent over SDS."""
    per_ns = mesh.indexes.get(_NAMESPACE_SECRETS)
    if per_ns is None:
        per_ns = mesh.indexes.value(_NAMESPACE_SECRETS, _namespace_secrets, mesh)
    return per_ns.get(namespace, "")


# Stands for the Secrets only: which references it names follows from the Gateways
# selecting the proxy and the ReferenceGrants, which the parts calling it declare
# themselves (GATEWAY, OTHER); its value names them, so it changes with them too.
@stands_for(SECRET)
def gateway_certificates(mesh: MeshSnapshot, proxy: Proxy) -> str:
    """Fingerprint of the Gateway API certificates (`kubernetes-gateway://ns/name`) an
    authenticated gateway may read and of their Secrets, whatever their namespace: which
    ones follow from the Gateways selecting it and the ReferenceGrants
    (model/gateway_api/certificates.py). "" for a sidecar, which is sent none."""
    refs = secrets.gateway_certificates(mesh, proxy)
    if not refs:
        return ""
    lines = []
    for ref, with_ca in refs:
        for name in (ref.name, ref.name + "-cacert"):
            cred = mesh.credential(ref.namespace, name)
            lines.append(f"{ref.resource} {with_ca} {name}={cred.generation if cred is not None else ''}")
    return _digest(lines)


def _namespace_secrets(mesh: MeshSnapshot) -> dict[str, str]:
    lines: dict[str, list[str]] = {}
    for (ns, name), cred in mesh.credentials.items():
        lines.setdefault(ns, []).append(f"{name}={cred.generation}")
    return {ns: _digest(sorted(v)) for ns, v in lines.items()}


@stands_for()
def dns_hosts(mesh: MeshSnapshot) -> bool:
    """Whether some service is resolved by DNS (ServiceEntry DNS, DNS_ROUND_ROBIN): only
    then do outbound clusters read the proxy's IP family and, for the endpoints they
    carry, its locality (cluster_discovery.py)."""
    got = mesh.indexes.get(_DNS_HOSTS)
    if got is None:
        got = mesh.indexes.value(_DNS_HOSTS, lambda: any(
            s.resolution in ("DNS", "DNSRoundRobin") for s in mesh.services.values()))
    return got


@stands_for()
def uses_source_labels(mesh: MeshSnapshot) -> bool:
    """Whether any VirtualService matches on `sourceLabels`: only then do a sidecar's
    routes (and TCP listeners) depend on its labels."""
    got = mesh.indexes.get(_SOURCE_LABELS)
    if got is None:
        got = mesh.indexes.value(_SOURCE_LABELS, lambda: any(vs.typed.uses_source_labels() for vs in mesh.virtual_services))
    return got


# --- EDS --------------------------------------------------------------------------------

@stands_for(ENDPOINTS)
def host_endpoints(mesh: MeshSnapshot) -> dict[str, str]:
    """host -> fingerprint of its endpoints (all ports)."""
    got = mesh.indexes.get(_ALL_HOST_ENDPOINTS)
    return got if got is not None else mesh.indexes.value(_ALL_HOST_ENDPOINTS, _host_endpoints, mesh)


def _host_endpoints(mesh: MeshSnapshot) -> dict[str, str]:
    per_host = mesh.indexes[_HOST_ENDPOINTS]  # kept for the hosts whose endpoints did not change
    missing: dict[str, list[str]] = {}
    for (host, port), eps in mesh.endpoints.items():
        if host not in per_host:
            missing.setdefault(host, []).append(f"{port}=" + ";".join(_eds_endpoint_text(e) for e in eps))
    per_host.update({h: _digest(sorted(v)) for h, v in missing.items()})
    return {host: per_host[host] for (host, _) in mesh.endpoints}


@stands_for(ENDPOINTS)
def all_endpoints(mesh: MeshSnapshot) -> str:
    got = mesh.indexes.get(_ALL_ENDPOINTS)
    if got is None:
        got = mesh.indexes.value(_ALL_ENDPOINTS, lambda: _digest(f"{h}={v}" for h, v in sorted(host_endpoints(mesh).items())))
    return got


# --- per proxy / per service ------------------------------------------------------------

@stands_for(PROXY_LOCALITY)
def proxy_locality(mesh: MeshSnapshot, proxy: Proxy) -> Locality:
    """Where the proxy runs, as the mesh places it (MeshSnapshot.proxy_locality)."""
    table = mesh.indexes[_PROXY_LOCALITIES]
    key = (proxy.namespace, proxy.pod, proxy.ip, proxy.locality)
    got = table.get(key)
    if got is None:
        got = table[key] = mesh.proxy_locality(proxy)
    return got


@stands_for(INSTANCES)
def instance_shape(mesh: MeshSnapshot, ip: str) -> tuple[Any, ...]:
    """What a sidecar's inbound side reads of its instances: the services and ports,
    not the pod's address or labels, so the replicas of a workload share it."""
    table = mesh.indexes[_SHAPES]
    got = table.get(ip)
    if got is None:
        # A tuple of plain values (cheap; keys never leave the process).
        got = table[ip] = tuple(
            (i.service.hostname, i.service.name, i.service.namespace, i.service.created, i.port.name,
             i.port.port, str(i.port.target_port), i.port.protocol, i.port.app_protocol, i.endpoint.port)
            for i in mesh._instances_by_ip.get(ip, ())
        )
    return got


@stands_for(PEER_AUTHENTICATION)
def mtls_policy(mesh: MeshSnapshot, namespace: str, labels: Mapping[str, str], label_key: tuple[Any, ...] | None = None) -> tuple[Any, ...]:
    """The effective PeerAuthentication of a workload, as the inbound side reads it.
    Labels matter only in a namespace with a selector policy: elsewhere one answer
    serves the whole namespace (thousands of pods, one evaluation)."""
    namespaces = mesh.indexes.get(_SELECTOR_POLICY_NAMESPACES)
    if namespaces is None:
        namespaces = mesh.indexes.value(_SELECTOR_POLICY_NAMESPACES, lambda: frozenset(
            pa.namespace for pa in mesh.peer_authentications if selector_labels(pa)))
    key = (namespace, _label_key(labels, label_key) if namespace in namespaces else None)
    table = mesh.indexes[_POLICIES]
    got = table.get(key)
    if got is None:
        pol = mesh.mtls_policy(namespace, labels)
        got = table[key] = (pol.mode, tuple(sorted(pol.port_modes.items())))
    return got


@stands_for(MESH_CONFIG)
def client_mesh_settings(mesh: MeshSnapshot) -> str:
    """What a cluster and its assignment read of the mesh config (auto mTLS, the trust
    domain aliases its SANs carry, the default locality load balancing)."""
    mc = mesh.mesh_config
    return f"{mc.enable_auto_mtls} {mc.trust_domain_aliases} {mc.locality_lb_setting!r}"


@stands_for(*STANDS_FOR[SIDECAR_SCOPE], ENDPOINT_FACTS)
def sidecar_view(mesh: MeshSnapshot, proxy: Proxy) -> tuple[str, ...]:
    """What the proxy sees of services and VirtualServices: the digest of its sidecar
    scope (model/sidecar_scope.py), one per (namespace, Sidecar) and snapshot, and the
    endpoint facts of the hosts in it (what ENDPOINT_FACTS says of every host). A change
    of a service, VirtualService or endpoint fact the scope does not hold leaves both
    unchanged."""
    scope = mesh.sidecar_scope(proxy)
    table = mesh.indexes[_SCOPED_FACTS]
    facts = table.get(scope.digest)
    if facts is None:
        facts = table[scope.digest] = _digest(_host_facts(mesh, h) for h in scope.services)
    return (scope.digest, facts)


@stands_for(*STANDS_FOR[DESTINATION_RULE])
def seen_rules(mesh: MeshSnapshot, proxy: Proxy) -> str:
    """The DestinationRules covering the hosts the proxy sees (host_rules of each): a rule
    for other hosts leaves it unchanged. It changes host by host, as host_rules does, so the
    generator can follow it incrementally (Part.per_host_view)."""
    scope = mesh.sidecar_scope(proxy)
    table = mesh.indexes[_SCOPED_RULES]
    got = table.get(scope.digest)
    if got is None:
        rules = host_rules(mesh)
        got = table[scope.digest] = _digest(f"{h}={rules[h]}" for h in scope.services if h in rules)
    return got


@stands_for(SIDECAR_SCOPE)
def sidecar_ingress(mesh: MeshSnapshot, proxy: Proxy) -> tuple[Any, ...] | None:
    """The Sidecar whose ingress listeners replace the proxy's inbound side, or whose
    `inboundConnectionPool` shapes its inbound clusters (None for most proxies), and the
    proxy's address when ingress listeners there are (their chains are named after it, and
    `defaultEndpoint: 0.0.0.0:<port>` is the workload's own). The inbound side reads
    nothing else of the scope."""
    if proxy.type != "sidecar":
        return None
    scope = mesh.sidecar_scope(proxy)
    spec = scope.spec
    if scope.sidecar is None or spec is None or not (spec.ingress or spec.inbound_connection_pool is not None):
        return None
    sc = scope.sidecar
    return (sc.namespace, sc.name, sc.generation, proxy.ip if spec.ingress else "")


@stands_for(ENDPOINTS)
def seen_endpoints(mesh: MeshSnapshot, proxy: Proxy) -> str:
    """The endpoints of the hosts in the proxy's scope (what its EDS can hold): an
    endpoint change elsewhere leaves the proxy's EDS key alone."""
    scope = mesh.sidecar_scope(proxy)
    table = mesh.indexes[_SCOPED_ENDPOINTS]
    got = table.get(scope.digest)
    if got is None:
        per_host = host_endpoints(mesh)
        got = table[scope.digest] = _digest(f"{h}={per_host.get(h, '')}" for h in scope.services)
    return got


def _host_facts(mesh: MeshSnapshot, host: str) -> str:
    """One host's part of ENDPOINT_FACTS (as _endpoint_facts writes it)."""
    table = mesh.indexes[_HOST_FACTS]
    got = table.get(host)
    if got is None:
        svc = mesh.services.get(host)
        lines = [f"{host} sa={service_accounts(mesh, host)}"]
        if svc is not None:
            named = any(isinstance(p.target_port, str) and p.target_port and not p.target_port.isdigit()
                        for p in svc.ports)
            if svc.headless or named:
                for sp in svc.ports:
                    eps = mesh.service_endpoints(host, sp.port)
                    lines.append(f"{host}:{sp.port} " + ";".join(_endpoint_text(e) for e in eps))
        got = table[host] = "\n".join(lines)
    return got


@stands_for(SERVICE)
def service_generation(mesh: MeshSnapshot, host: str) -> str:
    """The generation of the objects defining `host`: its Kubernetes Service, and every
    ServiceEntry naming it (the one whose Service the mesh keeps, and those it hides)."""
    generations = mesh.indexes.get(_SERVICE_GENERATIONS)
    if generations is None:
        generations = mesh.indexes.value(_SERVICE_GENERATIONS, _service_generations, mesh)
    return generations.get(host, "")


def _service_generations(mesh: MeshSnapshot) -> dict[str, str]:
    out = {names.fqdn(obj.name, obj.namespace): obj.generation for obj in mesh.config.of_kind(SERVICE)}
    for obj in mesh.config.of_kind(SERVICE_ENTRY):
        for host in dict.fromkeys(obj.typed.hosts):
            out[host] = f"{out[host]}+{obj.generation}" if host in out else obj.generation
    return out


@stands_for(AUTHORIZATION_POLICY, REQUEST_AUTHENTICATION, JWKS, MESH_CONFIG, SERVICE)
def security(mesh: MeshSnapshot, proxy: Proxy) -> tuple[Any, ...]:
    """What a proxy's authentication and authorization filters read: the policies
    that select its workload (by namespace and labels), the key sets their JWT rules
    use and the mesh config's providers (model/security.py security_key)."""
    table = mesh.indexes[_SECURITY]
    key = (proxy.type, proxy.namespace, proxy.label_key)
    got = table.get(key)
    if got is None:
        got = table[key] = model_security.security_key(mesh, proxy)
    return got


@stands_for(PEER_AUTHENTICATION)
def namespace_mode(mesh: MeshSnapshot, namespace: str) -> str:
    """The namespace-level PeerAuthentication mode clients consult (auto mTLS)."""
    table = mesh.indexes[_NAMESPACE_MODES]
    got = table.get(namespace)
    if got is None:
        got = table[namespace] = mesh.mtls_policy(namespace, {}).mode
    return got


def _policies(rule: DestinationRule) -> Iterator[tuple[str, TrafficPolicy | PortTrafficPolicy]]:
    """Every traffic policy of a rule, where it is: top level, per subset, and their
    port-level entries."""
    for where, policy in rule.policies():
        yield where, policy
        for level in policy.port_level_settings:
            yield f"{where}.port={level.port}", level
