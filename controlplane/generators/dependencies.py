"""What generated output depends on, as cheap fingerprints of a mesh snapshot.

The generator cache keys every piece of output on the fingerprints of exactly the inputs
it reads, so a new snapshot invalidates only what a change touched (istiod reaches the
same end with ConfigsUpdated and per-type "needs push" filters). The inputs are:

- one fingerprint per config kind (every object's key and content generation);
- `OTHER`: every kind not listed in KNOWN_KINDS. A kind added later (ServiceEntry,
  AuthorizationPolicy, ...) is therefore a dependency of everything until someone
  declares who reads it: correct first, precise later;
- `ENDPOINT_FACTS`: the few things non-EDS output reads from endpoints (the service
  accounts behind each service, the endpoints of headless services, the endpoint port
  of a named targetPort). A pod moving or turning ready changes none of them, so an
  endpoint change leaves clusters, listeners and routes cached;
- per host, the endpoints themselves (EDS, rebuilt per changed host only);
- per workload IP, the services and ports a sidecar at that IP serves (its inbound side).

Endpoint kinds (EndpointSlice, Pod, Node) are read only through these. A Node is read
for its topology labels only, i.e. for the locality of the endpoints on it (part of the
per-host endpoint fingerprints, not of ENDPOINT_FACTS) and of the proxies on it
(`proxy_locality`, read by EDS only): relabelling a Node can change EDS and nothing else.

Facts are computed lazily, once per snapshot (a snapshot is immutable).
"""
from __future__ import annotations

import hashlib
import weakref
from typing import Iterable

from .. import names
from ..config import kinds
from ..model.destination_rules import rule_host
from ..model.hosts import covers
from ..model.locality import Locality
from ..model.mesh import MeshSnapshot
from ..model.peer_authentication import selector_labels
from ..model import security
from ..model.proxy import Proxy
from ..model.services import Endpoint

GATEWAY = kinds.GATEWAY.kind
VIRTUAL_SERVICE = kinds.VIRTUAL_SERVICE.kind
DESTINATION_RULE = kinds.DESTINATION_RULE.kind
PEER_AUTHENTICATION = kinds.PEER_AUTHENTICATION.kind
SERVICE = kinds.SERVICE.kind
# Secrets are read only as credentials (model/credentials.py): by the SDS builder, by
# gateway listeners (credentialName servers) and by clusters whose DestinationRule names
# a `credentialName` (through MeshFacts.namespace_secrets, so a Secret change leaves
# everything else cached).
SECRET = kinds.SECRET.kind
NODE = kinds.NODE.kind
ENDPOINT_KINDS = frozenset({kinds.ENDPOINT_SLICE.kind, kinds.POD.kind, NODE})
# Kinds whose readers are declared precisely (dependency sets in parts.py).
# Authorization and request authentication: read by the inbound listener of a sidecar and
# by gateway listeners only (generators/security_filters.py).
AUTHORIZATION_POLICY = kinds.AUTHORIZATION_POLICY.kind
REQUEST_AUTHENTICATION = kinds.REQUEST_AUTHENTICATION.kind
SECURITY_KINDS = (AUTHORIZATION_POLICY, REQUEST_AUTHENTICATION)
KNOWN_KINDS = frozenset({GATEWAY, VIRTUAL_SERVICE, DESTINATION_RULE, PEER_AUTHENTICATION, SERVICE, SECRET,
                         *SECURITY_KINDS}) | ENDPOINT_KINDS

OTHER = "*other*"
MESH_VERSION = "*mesh*"  # the whole snapshot: for output nobody has analysed
# What routes read of DestinationRules: which rule applies to a host (host, namespace,
# exportTo) and its consistent-hash settings. A connection pool or TLS change is not
# in it, so it leaves every route configuration cached.
DR_ROUTING = "*dr-routing*"
ENDPOINT_FACTS = "*endpoint-facts*"
ALL_CONFIG = (GATEWAY, VIRTUAL_SERVICE, DESTINATION_RULE, PEER_AUTHENTICATION, SERVICE, SECRET, *SECURITY_KINDS, OTHER,
              ENDPOINT_FACTS)


def _digest(parts: Iterable[str]) -> str:
    h = hashlib.blake2b(digest_size=12)
    for p in parts:
        h.update(p.encode())
        h.update(b"\n")
    return h.hexdigest()


def _endpoint_text(ep: Endpoint) -> str:
    return f"{ep.address}:{ep.port}:{int(ep.ready)}:{ep.namespace}/{ep.pod}/{ep.service_account}:{sorted(ep.labels.items())}"


def _label_key(labels, label_key: tuple | None) -> tuple:
    """Labels as a memo key: the proxy's precomputed `label_key` when given (callers on
    the push path pass it), else sorted here."""
    return label_key if label_key is not None else tuple(sorted(labels.items()))


def _eds_endpoint_text(ep: Endpoint) -> str:
    # EDS also reads the locality, which may come from the pod's Node rather than its labels.
    return f"{_endpoint_text(ep)}@{'/'.join(ep.locality)}"


def _host_digests(endpoints: Iterable[tuple[tuple[str, int], tuple[Endpoint, ...]]]) -> dict[str, str]:
    """A fingerprint per host of its endpoints on every port, as EDS reads them."""
    per_host: dict[str, list[str]] = {}
    for (host, port), eps in endpoints:
        per_host.setdefault(host, []).append(f"{port}=" + ";".join(_eds_endpoint_text(e) for e in eps))
    return {h: _digest(sorted(v)) for h, v in per_host.items()}


def _object_line(key, obj) -> str:
    """One object in a per-kind fingerprint."""
    return f"{key.kind}/{key.namespace}/{key.name}={obj.generation}"


# What facts of a snapshot built by build_mesh's EndpointSlice fast path (only endpoints
# and instances differ from the snapshot it was derived from) are carried over from the
# facts of that snapshot. Whole, the memos below: they read no endpoint or instance.
INHERITED = (
    ("_selector_policy_namespaces", "PeerAuthentications"),
    ("_dr_routing", "DestinationRules"),
    ("_host_rules", "DestinationRules and Service hosts"),
    ("_policies", "PeerAuthentications"),
    ("_service_generation", "Service objects"),
    ("_namespace_modes", "PeerAuthentications"),
    ("_source_labels", "VirtualServices"),
    ("_dr_selectors", "DestinationRules"),
    ("_dr_credentials", "DestinationRules"),
    ("_namespace_secrets", "credentials (Secrets)"),
    ("_proxy_localities", "Pods and Nodes (MeshSnapshot._pods), not endpoints"),
)
# Carried over in part:
# - `_kinds` but the EndpointSlice digest (recomputed on use);
# - `_of` but the tuples reading _ENDPOINT_DEPS;
# - `memo` entries of the prefixes _INHERITED_MEMOS (destinations.py: clusters of a
#   Service port under a rule, credential problems: Services, rules, Secrets only);
# - the memos reading endpoints or instances, but for the hosts whose endpoints and the
#   IPs whose instances changed: `_hosts`, `_service_accounts`, `_localized_hosts` (per
#   host), `_shapes` (per IP), `_headless_ips` (whole, unless a headless host changed).
# Never: `_facts`, `_all_endpoints`, `_locality_inputs` (digests of every endpoint).
_INHERITED_MEMOS = ("clusters", "credential")
_ENDPOINT_DEPS = frozenset({kinds.ENDPOINT_SLICE.kind, ENDPOINT_FACTS, MESH_VERSION})


class MeshFacts:
    """Fingerprints of one snapshot, computed on first use."""

    def __init__(self, mesh: MeshSnapshot):
        self._mesh = weakref.ref(mesh)
        # Memos of derived values other modules keep for this snapshot (destinations.py:
        # the clusters of a service port under a rule, shared by every namespace's build).
        self.memo: dict[tuple, object] = {}
        self._selector_policy_namespaces: frozenset[str] | None = None
        self._kinds: dict[str, str] | None = None
        self._of: dict[tuple[str, ...], tuple[str, ...]] = {}
        self._facts: str | None = None
        self._hosts: dict[str, str] | None = None
        self._all_endpoints: str | None = None
        self._dr_routing: str | None = None
        self._host_rules: dict[str, tuple] | None = None
        self._shapes: dict[str, tuple] = {}
        self._policies: dict[tuple, tuple] = {}
        self._service_generation: dict[str, str] | None = None
        self._service_accounts: dict[str, str] = {}
        self._namespace_modes: dict[str, str] = {}
        self._source_labels: bool | None = None
        self._headless_ips: frozenset[str] | None = None
        self._dr_selectors: dict[tuple, tuple] = {}
        self._dr_credentials: bool | None = None
        self._namespace_secrets: dict[str, str] | None = None
        self._locality_inputs: tuple[bool, bool] | None = None
        self._localized_hosts: frozenset[str] | None = None
        self._proxy_localities: dict[tuple, Locality] = {}
        self._security: dict[tuple, tuple] = {}
        self._stale_kinds: tuple[str, ...] = ()  # entries of an inherited `_kinds` to recompute

    def inherit(self, previous: "MeshFacts", base: MeshSnapshot) -> None:
        """Start from `previous`'s facts (those of `base`): this snapshot differs from
        `base` in EndpointSlices (so endpoints and instances) only."""
        for name, _why in INHERITED:
            value = getattr(previous, name)
            setattr(self, name, dict(value) if isinstance(value, dict) else value)
        self.memo = {k: v for k, v in previous.memo.items() if k[0] in _INHERITED_MEMOS}
        self._of = {deps: v for deps, v in previous._of.items() if _ENDPOINT_DEPS.isdisjoint(deps)}
        if previous._kinds is not None:
            self._kinds = dict(previous._kinds)
            self._stale_kinds = previous._stale_kinds + (kinds.ENDPOINT_SLICE.kind,)
        mesh = self.mesh
        if mesh.endpoints.keys() != base.endpoints.keys():
            return  # not a fast-path pair after all: nothing per host
        # The fast path replaces exactly the entries it recomputes: identity tells them.
        hosts = {h for (h, port), eps in mesh.endpoints.items() if base.endpoints[(h, port)] is not eps}
        old_ips, new_ips = base._instances_by_ip, mesh._instances_by_ip
        ips = {ip for ip in old_ips.keys() | new_ips.keys() if old_ips.get(ip) is not new_ips.get(ip)}
        self._service_accounts = {h: v for h, v in previous._service_accounts.items() if h not in hosts}
        self._shapes = {ip: v for ip, v in previous._shapes.items() if ip not in ips}
        if previous._headless_ips is not None and not any(h not in mesh.services or mesh.services[h].headless for h in hosts):
            self._headless_ips = previous._headless_ips
        if previous._hosts is not None:
            self._hosts = {h: v for h, v in previous._hosts.items() if h not in hosts}
            self._hosts.update(_host_digests(item for item in mesh.endpoints.items() if item[0][0] in hosts))
        if previous._localized_hosts is not None:
            self._localized_hosts = (previous._localized_hosts - hosts) | {
                h for (h, _), eps in mesh.endpoints.items() if h in hosts and any(ep.locality for ep in eps)}

    @property
    def mesh(self) -> MeshSnapshot:
        m = self._mesh()
        assert m is not None, "facts outlived their snapshot"
        return m

    # --- per kind ---------------------------------------------------------------
    def kind(self, kind: str) -> str:
        if self._kinds is None:
            by_kind: dict[str, list[str]] = {}
            for key, obj in self.mesh.config.objects.items():
                kind_name = key.kind if key.kind in KNOWN_KINDS else OTHER
                by_kind.setdefault(kind_name, []).append(_object_line(key, obj))
            # The mesh config (root namespace, trust domain, providers) can change any
            # output: it counts as an unanalysed input, like the kinds under OTHER.
            by_kind.setdefault(OTHER, []).append(f"meshconfig={self.mesh.mesh_config!r}")
            self._kinds = {k: _digest(sorted(v)) for k, v in by_kind.items()}
        elif kind in self._stale_kinds:  # a known kind: its objects are of_kind's
            # Recomputed when asked for only: no part reads the EndpointSlice digest, so
            # an endpoint change does not pay for hashing a thousand slices.
            lines = [_object_line(o.key, o) for o in self.mesh.config.of_kind(kind)]
            self._kinds.pop(kind, None)
            if lines:
                self._kinds[kind] = _digest(sorted(lines))
            self._stale_kinds = tuple(k for k in self._stale_kinds if k != kind)
        if kind == ENDPOINT_FACTS:
            return self.endpoint_facts()
        if kind == MESH_VERSION:
            return self.mesh.version
        if kind == DR_ROUTING:
            return self.dr_routing()
        return self._kinds.get(kind, "")

    def of(self, deps: tuple[str, ...]) -> tuple[str, ...]:
        got = self._of.get(deps)
        if got is None:
            got = self._of[deps] = tuple(self.kind(d) for d in deps)
        return got

    def dr_routing(self) -> str:
        if self._dr_routing is None:
            lines = []
            for dr in self.mesh.destination_rules:
                spec = dr.spec
                lines.append(f"{dr.namespace}/{dr.name} host={spec.get('host')} export={spec.get('exportTo')} "
                             f"selector={spec.get('workloadSelector')!r} lb={_load_balancers(spec)}")
            self._dr_routing = _digest(lines)
        return self._dr_routing

    def host_rules(self) -> dict[str, tuple]:
        """host -> every DestinationRule whose `host` covers it (key and generation),
        whatever namespaces it serves: a changed rule can change the clusters and
        assignments of these hosts and of no other (generators: incremental updates)."""
        if self._host_rules is None:
            exact: dict[str, list[tuple]] = {}
            wild: list[tuple[str, tuple]] = []
            for dr in self.mesh.destination_rules:
                host, line = rule_host(dr), (dr.namespace, dr.name, dr.generation)
                if host.startswith("*"):
                    wild.append((host, line))
                else:
                    exact.setdefault(host, []).append(line)
            out: dict[str, tuple] = {}
            for host in self.mesh.services:
                lines = exact.get(host, []) + [line for w, line in wild if covers(w, host)]
                if lines:
                    out[host] = tuple(sorted(lines))
            self._host_rules = out
        return self._host_rules

    # --- what non-EDS output reads from endpoints -------------------------------
    def endpoint_facts(self) -> str:
        if self._facts is None:
            mesh = self.mesh
            lines = []
            for host in sorted(mesh.services):
                svc = mesh.services[host]
                lines.append(f"{host} sa={self.service_accounts(host)}")
                named = any(isinstance(p.target_port, str) and p.target_port and not p.target_port.isdigit() for p in svc.ports)
                if svc.headless or named:
                    for sp in svc.ports:
                        eps = mesh.service_endpoints(host, sp.port)
                        lines.append(f"{host}:{sp.port} " + ";".join(_endpoint_text(e) for e in eps))
            self._facts = _digest(lines)
        return self._facts

    def service_accounts(self, host: str) -> str:
        """The identities behind a service (as auto_mtls.service_accounts reads them)."""
        got = self._service_accounts.get(host)
        if got is None:
            mesh = self.mesh
            svc = mesh.services.get(host)
            out: set[str] = set()
            if svc is not None:
                for sp in svc.ports:
                    for ep in mesh.service_endpoints(host, sp.port):
                        if ep.service_account:
                            out.add(f"{ep.namespace or svc.namespace}/{ep.service_account}")
            got = self._service_accounts[host] = ",".join(sorted(out))
        return got

    def headless_ips(self) -> frozenset[str]:
        """Addresses of headless services' endpoints: a sidecar at one of them gets no
        listener for itself, so its outbound listeners depend on its IP."""
        if self._headless_ips is None:
            mesh = self.mesh
            self._headless_ips = frozenset(
                ep.address for svc in mesh.services.values() if svc.headless
                for sp in svc.ports for ep in mesh.service_endpoints(svc.hostname, sp.port)
            )
        return self._headless_ips

    def locality_inputs(self) -> tuple[bool, bool]:
        """Whether some assignment can depend on the proxy's locality (a DestinationRule
        sets `outlierDetection`, which turns on the mesh's default locality failover, or
        a `localityLbSetting`) and on its labels (`failoverPriority`). Without such
        rules, proxies in different localities share their endpoints."""
        if self._locality_inputs is None:
            text = [repr(dr.spec.get("trafficPolicy")) + repr(dr.spec.get("subsets")) for dr in self.mesh.destination_rules]
            # Plain failover orders localities of endpoints: with every endpoint in the
            # empty locality, it gives one priority wherever the proxy is.
            failover = any("outlierDetection" in t or "localityLbSetting" in t for t in text) and bool(self.localized_hosts())
            self._locality_inputs = (
                failover or any("distribute" in t or "failoverPriority" in t for t in text),
                any("failoverPriority" in t for t in text),
            )
        return self._locality_inputs

    def localized_hosts(self) -> frozenset[str]:
        """Hosts with at least one endpoint in a known locality."""
        if self._localized_hosts is None:
            self._localized_hosts = frozenset(host for (host, _), eps in self.mesh.endpoints.items()
                                              if any(ep.locality for ep in eps))
        return self._localized_hosts

    def dr_selectors(self, namespace: str, labels, label_key: tuple | None = None) -> tuple:
        """The DestinationRule `workloadSelector`s of `namespace` that select a proxy with
        `labels`: with the namespace, all a proxy's rule lookups depend on. Empty unless
        such a rule selects the proxy, so proxies without one keep sharing output."""
        key = (namespace, _label_key(labels, label_key))
        got = self._dr_selectors.get(key)
        if got is None:
            got = self._dr_selectors[key] = self.mesh.dr_selectors(namespace, labels)
        return got

    def uses_dr_credentials(self) -> bool:
        """Whether some DestinationRule names a `credentialName`: only then do outbound
        clusters depend on Secrets (destinations.credential_problem)."""
        if self._dr_credentials is None:
            self._dr_credentials = any("credentialName" in repr(dr.spec) for dr in self.mesh.destination_rules)
        return self._dr_credentials

    def namespace_secrets(self, namespace: str) -> str:
        """Fingerprint of the credentials (Secrets) of one namespace: all a proxy of that
        namespace can be sent over SDS."""
        if self._namespace_secrets is None:
            per_ns: dict[str, list[str]] = {}
            for (ns, name), cred in self.mesh.credentials.items():
                per_ns.setdefault(ns, []).append(f"{name}={cred.generation}")
            self._namespace_secrets = {ns: _digest(sorted(v)) for ns, v in per_ns.items()}
        return self._namespace_secrets.get(namespace, "")

    def uses_source_labels(self) -> bool:
        """Whether any VirtualService matches on `sourceLabels`: only then do a sidecar's
        routes (and TCP listeners) depend on its labels."""
        if self._source_labels is None:
            self._source_labels = any(_has_source_labels(vs.spec) for vs in self.mesh.virtual_services)
        return self._source_labels

    # --- EDS --------------------------------------------------------------------
    def host_endpoints(self) -> dict[str, str]:
        """host -> fingerprint of its endpoints (all ports)."""
        if self._hosts is None:
            self._hosts = _host_digests(self.mesh.endpoints.items())
        return self._hosts

    def all_endpoints(self) -> str:
        if self._all_endpoints is None:
            self._all_endpoints = _digest(f"{h}={v}" for h, v in sorted(self.host_endpoints().items()))
        return self._all_endpoints

    # --- per proxy / per service ---------------------------------------------------
    def proxy_locality(self, proxy: Proxy) -> Locality:
        """Where the proxy runs, as the mesh places it (MeshSnapshot.proxy_locality)."""
        key = (proxy.namespace, proxy.pod, proxy.ip, proxy.locality)
        got = self._proxy_localities.get(key)
        if got is None:
            got = self._proxy_localities[key] = self.mesh.proxy_locality(proxy)
        return got

    def instance_shape(self, ip: str) -> tuple:
        """What a sidecar's inbound side reads of its instances: the services and ports,
        not the pod's address or labels, so the replicas of a workload share it."""
        got = self._shapes.get(ip)
        if got is None:
            # A tuple of plain values (cheap; keys never leave the process).
            got = self._shapes[ip] = tuple(
                (i.service.hostname, i.service.name, i.service.namespace, i.service.created, i.port.name,
                 i.port.port, str(i.port.target_port), i.port.protocol, i.port.app_protocol, i.endpoint.port)
                for i in self.mesh._instances_by_ip.get(ip, ())
            )
        return got

    def mtls_policy(self, namespace: str, labels, label_key: tuple | None = None) -> tuple:
        """The effective PeerAuthentication of a workload, as the inbound side reads it.
        Labels matter only in a namespace with a selector policy: elsewhere one answer
        serves the whole namespace (thousands of pods, one evaluation)."""
        if self._selector_policy_namespaces is None:
            self._selector_policy_namespaces = frozenset(
                pa.namespace for pa in self.mesh.peer_authentications if selector_labels(pa))
        if namespace not in self._selector_policy_namespaces:
            key = (namespace, None)
        else:
            key = (namespace, _label_key(labels, label_key))
        got = self._policies.get(key)
        if got is None:
            pol = self.mesh.mtls_policy(namespace, labels)
            got = self._policies[key] = (pol.mode, tuple(sorted(pol.port_modes.items())))
        return got

    def service_generation(self, host: str) -> str:
        if self._service_generation is None:
            self._service_generation = {}
            for obj in self.mesh.config.of_kind(SERVICE):
                self._service_generation[names.fqdn(obj.name, obj.namespace)] = obj.generation
        return self._service_generation.get(host, "")

    def security(self, proxy: Proxy) -> tuple:
        """What a proxy's authentication and authorization filters read: the policies
        that select its workload (by namespace and labels), the key sets their JWT rules
        use and the mesh config's providers (model/security.py security_key). Not inherited by
        endpoint-only snapshots: cheap, and it must follow fetched key sets."""
        key = (proxy.type, proxy.namespace, proxy.label_key)
        got = self._security.get(key)
        if got is None:
            got = self._security[key] = security.security_key(self.mesh, proxy)
        return got

    def namespace_mode(self, namespace: str) -> str:
        """The namespace-level PeerAuthentication mode clients consult (auto mTLS)."""
        got = self._namespace_modes.get(namespace)
        if got is None:
            got = self._namespace_modes[namespace] = self.mesh.mtls_policy(namespace, {}).mode
        return got


def _load_balancers(spec) -> str:
    """Every `loadBalancer` block of a DestinationRule (top level, per port, per subset)."""
    found = []

    def policy(p, where: str) -> None:
        p = p or {}
        if p.get("loadBalancer"):
            found.append(f"{where}:{p['loadBalancer']!r}")
        for i, pl in enumerate(p.get("portLevelSettings") or ()):
            if (pl or {}).get("loadBalancer"):
                found.append(f"{where}.port{i}:{pl!r}")

    policy(spec.get("trafficPolicy"), "")
    for s in spec.get("subsets") or ():
        policy((s or {}).get("trafficPolicy"), f"subset={(s or {}).get('name')}")
    return ";".join(found)


def _has_source_labels(spec) -> bool:
    for section in ("http", "tcp", "tls"):
        for rule in spec.get(section) or ():
            for m in (rule or {}).get("match") or ():
                if isinstance(m, dict) and m.get("sourceLabels"):
                    return True
    return False


_facts: dict[int, MeshFacts] = {}


def facts(mesh: MeshSnapshot) -> MeshFacts:
    """The facts of `mesh`, memoized for the snapshot's lifetime."""
    key = id(mesh)
    got = _facts.get(key)
    if got is None or got._mesh() is not mesh:
        got = _facts[key] = MeshFacts(mesh)
        weakref.finalize(mesh, _facts.pop, key, None)
        derived_from = getattr(mesh, "_derived_from", None)
        base = derived_from() if derived_from is not None else None
        prev = _facts.get(id(base)) if base is not None else None
        if prev is not None and prev._mesh() is base:
            got.inherit(prev, base)
    return got
