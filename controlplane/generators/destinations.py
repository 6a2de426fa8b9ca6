"""The outbound clusters a proxy gets, shared by CDS (clusters) and EDS (their endpoints).

istiod gives a proxy a cluster for every port of every service in its scope (the
services exported to its namespace, narrowed by the Sidecar that applies to it:
model/sidecar_scope.py) (`outbound|port||host`) plus one per DestinationRule subset of
that host (`outbound|port|subset|host`). UDP ports get none: Envoy proxies TCP and HTTP
only.

The rule of a host is the one the proxy sees (its namespace and labels: a rule's
`workloadSelector` narrows it to the proxies it selects, model/destination_rules.py).

A cluster whose DestinationRule `tls` takes its certificate or CA from a Secret
(`credentialName`) that this proxy will never be sent over SDS (the proxy is not
authenticated, or the Secret, its key or its CA is missing in the proxy's namespace) is
left out, and reported: Envoy would keep it warming, and with it every cluster and
listener of the proxy, waiting for the secret. Traffic routed to it fails (503, no
cluster), as it fails in istiod once its credential fetch times out; it never goes out
in plaintext.
"""
from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import structlog

from .. import names
from ..config.objects import ConfigObject
from ..config.types.destinationrule import DestinationRule
from ..config.types.trafficpolicy import NO_POLICY, ClientTLSSettings, TrafficPolicy
from ..model import protocol
from ..model.credentials import sds_ca_name, sds_name
from ..model.destination_rules import rule_host, selector_of
from ..model.indexes import Index, Lifetime
from ..model.mesh import MeshSnapshot
from ..model.proxy import SIDECAR, Proxy
from ..model.services import Service, ServicePort

log = structlog.get_logger("meshd.generators")


@dataclass(frozen=True)
class OutboundCluster:
    name: str
    service: Service
    port: ServicePort
    protocol: str  # Istio protocol of the service port
    rule: ConfigObject | None  # the DestinationRule that applies to the host, if any
    subset: str = ""
    subset_labels: Mapping[str, str] = field(default_factory=dict)
    # The rule's traffic policy for this port and subset (DestinationRule.policy_for): what
    # CDS, EDS and the client TLS read.
    policy: TrafficPolicy = NO_POLICY


# The clusters of a service port under a rule (made once per snapshot, shared by every
# namespace's build): they read Services and rules only, so a snapshot derived by an
# EndpointSlice change keeps them.
_PORT_CLUSTERS = Index[tuple[Any, ...], tuple[OutboundCluster, ...]](
    "outbound clusters of a port under a rule", Lifetime.CONFIG)


def outbound_clusters(mesh: MeshSnapshot, proxy: Proxy) -> list[OutboundCluster]:
    """In a stable order: services by host, ports as declared, subsets as declared."""
    out: list[OutboundCluster] = []
    for svc in mesh.sidecar_scope(proxy).services.values():  # by host
        out += service_clusters(mesh, proxy, svc)
    return out


def service_clusters(mesh: MeshSnapshot, proxy: Proxy, svc: Service) -> list[OutboundCluster]:
    """The outbound clusters of one service (names are unique per host, so the clusters
    of different services never collide)."""
    out: list[OutboundCluster] = []
    seen: set[str] = set()
    rule = mesh.destination_rule(svc.hostname, proxy.namespace, proxy.labels)
    for oc in _rule_clusters(mesh, svc, rule):
        # A repeated subset name would give Envoy two clusters with one name.
        if oc.name not in seen:
            seen.add(oc.name)
            if rule is not None and _credential_left_out(mesh, proxy, oc):
                continue
            out.append(oc)
    return out


def _rule_clusters(mesh: MeshSnapshot, svc: Service, rule: ConfigObject | None) -> Iterator[OutboundCluster]:
    """The clusters of every (non-UDP) port of `svc` under `rule`. Every namespace's (and
    selector group's) build walks all services: the clusters of a port under a rule are
    made once per snapshot (a merged rule's generation names its content) and shared."""
    memo = mesh.indexes[_PORT_CLUSTERS]
    rule_id = (rule.namespace, rule.name, rule.generation) if rule is not None else None
    for sp in svc.ports:
        key = (svc.hostname, sp.name, sp.port, rule_id)
        ocs = memo.get(key)
        if ocs is None:
            proto = protocol.of_service_port(sp)
            ocs = memo[key] = () if proto == protocol.UDP else tuple(_clusters_for_port(svc, sp, proto, rule))
        yield from ocs


# --- DestinationRule credentials a proxy will never get ---------------------------------


@dataclass(frozen=True)
class CredentialProblem:
    """A DestinationRule `tls.credentialName` that a proxy cannot be served."""

    rule: str  # "namespace/name" of the DestinationRule that sets it
    field: str  # e.g. "spec.trafficPolicy.tls.credentialName"
    reason: str

    def message(self) -> str:
        return f"DestinationRule {self.rule}: {self.field}: {self.reason}"


# credential_problem reads rules and Secrets only.
_CREDENTIAL_PROBLEMS = Index[tuple[Any, ...], CredentialProblem | None](
    "credential problem of a cluster", Lifetime.CONFIG)


def credential_problem(mesh: MeshSnapshot, proxy: Proxy, oc: OutboundCluster) -> CredentialProblem | None:
    """Why the client TLS of `oc` cannot be set up on `proxy`: its `credentialName` Secret
    would never be served to it over SDS. None: it can (or no Secret is involved)."""
    if oc.rule is None:
        return None
    settings = oc.policy.client_tls
    credential = settings.credential_name if settings is not None else ""
    mode = settings.effective_mode if settings is not None else "DISABLE"
    if settings is None or not credential or mode not in ("SIMPLE", "MUTUAL"):
        return None
    if proxy.type == SIDECAR and selector_of(oc.rule) is None:
        return None  # istiod ignores it there: no TLS at all (auto_mtls.cluster_tls)
    reason = None
    if not proxy.workload_cert:
        reason = (f"credential {sds_name(credential)} is only served to a proxy that proved its identity "
                  "(this one is connected to the plaintext xDS port)")
    elif "/" in credential or "://" in credential:
        reason = f"credential {credential}: meshd serves only Secret names of the proxy's own namespace"
    else:
        cred = mesh.credential(proxy.namespace, credential)
        if mode == "MUTUAL" and (cred is None or not (cred.cert_chain and cred.private_key)):
            reason = (f"credential {sds_name(credential)}: no Secret {credential} with a certificate and key "
                      f"in namespace {proxy.namespace}")
        elif not settings.insecure_skip_verify and not mesh.ca_credential(proxy.namespace, credential):
            reason = (f"credential {sds_ca_name(credential)}: no Secret {credential}-cacert and no ca.crt in "
                      f"Secret {credential} in namespace {proxy.namespace}")
    if reason is None:
        return None
    owner, path = _tls_source(mesh, oc, credential)
    return CredentialProblem(owner, path + ".credentialName", reason + "; the cluster is left out")


def _credential_left_out(mesh: MeshSnapshot, proxy: Proxy, oc: OutboundCluster) -> bool:
    rule = oc.rule
    assert rule is not None
    # What credential_problem reads of the proxy (its namespace's Secrets via `mesh`).
    key = (rule.namespace, rule.name, rule.generation, oc.name, proxy.type, proxy.workload_cert, proxy.namespace)
    memo = mesh.indexes[_CREDENTIAL_PROBLEMS]
    if key in memo:
        problem = memo[key]
    else:
        problem = memo[key] = credential_problem(mesh, proxy, oc)
    if problem is None:
        return False
    _report(proxy, oc, problem)
    return True


def _tls_source(mesh: MeshSnapshot, oc: OutboundCluster, credential: str) -> tuple[str, str]:
    """The rule (of those merged into `oc.rule`) that names `credential` for the cluster,
    and the path of its `tls` block."""
    rule = oc.rule
    assert rule is not None
    host = rule_host(rule)
    same = sorted((dr for dr in mesh.destination_rules if dr.namespace == rule.namespace and rule_host(dr) == host),
                  key=lambda dr: dr.name != rule.name)  # the merged rule's own name first
    for dr in same:
        path = _tls_path(dr.typed, oc.port.port, oc.subset, credential)
        if path is not None:
            return f"{dr.namespace}/{dr.name}", path
    return f"{rule.namespace}/{rule.name}", "spec.trafficPolicy.tls"


def _tls_path(rule: DestinationRule, port: int, subset: str, credential: str) -> str | None:
    """Where in the rule a `tls` naming `credential` applies to `port` (and `subset`), most
    specific first (the order DestinationRule.policy_for layers them)."""
    places: list[tuple[str, TrafficPolicy | None]] = []
    for i, s in enumerate(rule.subsets):
        if subset and s.name == subset:
            places.append((f"spec.subsets[{i}].trafficPolicy", s.traffic_policy))
            break
    places.append(("spec.trafficPolicy", rule.traffic_policy))
    for where, policy in places:
        if policy is None:
            continue
        for j, pl in enumerate(policy.port_level_settings):
            if pl.port == port and _names(pl.tls, credential):
                return f"{where}.portLevelSettings[{j}].tls"
        if _names(policy.tls, credential):
            return f"{where}.tls"
    return None


def _names(tls: ClientTLSSettings | None, credential: str) -> bool:
    return (tls.credential_name if tls is not None else "") == credential


_reported: set[tuple[Any, ...]] = set()


def _report(proxy: Proxy, oc: OutboundCluster, problem: CredentialProblem) -> None:
    """One event per problem and kind of proxy when it first appears (generation is
    cached, so this runs once per distinct output, not once per proxy)."""
    key = (problem, proxy.type, proxy.namespace, proxy.workload_cert)
    if key in _reported:
        return
    if len(_reported) > 10_000:
        _reported.clear()
    _reported.add(key)
    log.warning(
        "destination rule conflict", destination_rule=problem.rule, field=problem.field, reason=problem.reason,
        cluster=oc.name, proxy=proxy.id, proxy_type=proxy.type, namespace=proxy.namespace, action="ignored",
        message=problem.message(),
    )


def credential_problems(mesh: MeshSnapshot, proxy: Proxy) -> list[tuple[str, CredentialProblem]]:
    """(cluster, problem) for every outbound cluster left out of `proxy`'s CDS (debug
    views and golden notes)."""
    out = []
    for svc in mesh.sidecar_scope(proxy).services.values():
        rule = mesh.destination_rule(svc.hostname, proxy.namespace, proxy.labels)
        if rule is None:
            continue
        for oc in _rule_clusters(mesh, svc, rule):
            problem = credential_problem(mesh, proxy, oc)
            if problem is not None:
                out.append((oc.name, problem))
    return out


def _clusters_for_port(svc: Service, sp: ServicePort, proto: str, rule: ConfigObject | None) -> list[OutboundCluster]:
    spec: DestinationRule | None = rule.typed if rule is not None else None
    policy = spec.policy_for(sp.port) if spec is not None else NO_POLICY
    out = [OutboundCluster(names.outbound_cluster(sp.port, svc.hostname), svc, sp, proto, rule, policy=policy)]
    if spec is None:
        return out
    for subset in spec.subsets:
        if not subset.name:
            continue
        out.append(OutboundCluster(names.outbound_cluster(sp.port, svc.hostname, subset.name), svc, sp, proto, rule,
                                   subset.name, subset.labels, spec.policy_for(sp.port, subset.name)))
    return out
