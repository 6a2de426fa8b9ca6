"""The express path of an endpoint change: which proxies it reaches, worked out from the
change itself instead of from every proxy's cache keys.

After an EndpointSlice change the ordinary push compares, for every connection and every
subscribed type, the generator's key with the key of the last response (2,010 proxies x
5 types: 40-90 ms before the first byte at the reference scale). For an endpoint-only
change that work is known in advance to find EDS only, and only at the proxies
subscribed to the changed hosts' assignments, provided nothing but EDS reads what
changed. `endpoint_change` checks that provision on the two snapshots and, when it
holds, says what changed: the hosts (their assignments) and the endpoint addresses
before and after (a sidecar at one of those addresses may see its inbound side change:
the server falls back to the full key comparison for it).

What non-EDS output reads of endpoints is declared (generators/inputs.py, enforced by
tests/unit/test_part_inputs.py): ENDPOINT_FACTS (the service accounts behind each host,
the endpoints of headless services and of named target ports), the addresses of headless
endpoints (headless_ips), the hosts with a locality (localized_hosts, through
locality_inputs), and the instances at the proxy's own address (instance_shape, per
proxy: the addresses above). Pods and Nodes (where a proxy runs) are not endpoint-only
changes here: those take the ordinary path.

A DestinationRule change has an express path of its own (`rule_change`): when nothing
but DestinationRules changed, and none of them selects workloads or changes what routes,
locality or credentials read of rules, a sidecar's output can change only through the
rules of the hosts in its sidecar scope (dependencies.seen_rules and the clusters and
assignments of those hosts). Sidecars whose scope holds none of the changed rules' hosts
are passed over without a key comparison: with one Sidecar per namespace, a rule change
compares the keys of one namespace's sidecars (and the gateways), not of the fleet.
"""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from ..model.destination_rules import rule_host, selector_of
from ..model.mesh import MeshSnapshot
from ..model.proxy import SIDECAR, Proxy
from ..model.sidecar_scope import sidecar_for
from .dependencies import (
    carry_kind_digests,
    dr_routing,
    endpoint_facts,
    headless_ips,
    host_endpoints,
    locality_inputs,
    localized_hosts,
    uses_dr_credentials,
)
from .inputs import DESTINATION_RULE


@dataclass(frozen=True)
class EndpointChange:
    """An endpoint change only EDS reads: the hosts whose assignments changed and the
    endpoint addresses of those hosts before and after."""

    hosts: frozenset[str]
    addresses: frozenset[str]
    # names set (shared by every proxy asking the same, server/caches.py) -> touched
    _touched: dict[frozenset[str], bool] = field(default_factory=dict, compare=False, repr=False)

    def touches(self, subscribed: frozenset[str]) -> bool:
        """Whether an EDS subscription to `subscribed` names an assignment of a changed
        host (`outbound|port|subset|host`). Once per distinct set: the sidecars of a
        namespace share theirs."""
        got = self._touched.get(subscribed)
        if got is None:
            got = self._touched[subscribed] = any(_host(n) in self.hosts for n in subscribed)
        return got


def endpoint_change(previous: MeshSnapshot, mesh: MeshSnapshot) -> EndpointChange | None:
    """What `mesh` changed over `previous` when that is endpoints only and nothing but
    EDS (and the inbound side of proxies at the changed addresses) reads it; None when
    the ordinary push must decide."""
    if not mesh.derived_from or mesh.derived_from != previous.version:
        return None  # not build_mesh's EndpointSlice fast path from `previous`
    if (endpoint_facts(mesh) != endpoint_facts(previous) or headless_ips(mesh) != headless_ips(previous)
            or localized_hosts(mesh) != localized_hosts(previous) or locality_inputs(mesh) != locality_inputs(previous)):
        return None
    old, new = host_endpoints(previous), host_endpoints(mesh)
    hosts = frozenset(h for h in old.keys() | new.keys() if old.get(h) != new.get(h))
    return EndpointChange(hosts, frozenset(_addresses(previous, hosts)) | frozenset(_addresses(mesh, hosts)))


def _addresses(mesh: MeshSnapshot, hosts: frozenset[str]) -> Iterable[str]:
    for (host, _port), eps in mesh.endpoints.items():
        if host in hosts:
            for ep in eps:
                yield ep.address


def _host(name: str) -> str:
    fields = name.split("|")
    return fields[3] if len(fields) == 4 else ""


# (namespace, the Sidecar in force) -> the hosts of that sidecar scope: what a scope holds
# stays true from one snapshot to the next while only DestinationRules change (a scope
# reads none), so Generator.rule_change carries it along such a chain of changes.
VisibleHosts = dict[tuple[str, tuple[str, str, str] | None], frozenset[str]]


@dataclass(frozen=True)
class RuleChange:
    """A change of DestinationRules only, each for one service host (`hosts`, before and
    after): a sidecar whose scope holds none of them has the same output of every type."""

    hosts: frozenset[str]
    mesh: MeshSnapshot = field(compare=False, repr=False)  # the snapshot after the change
    visible: VisibleHosts = field(default_factory=dict, compare=False, repr=False)

    def reaches(self, proxy: Proxy) -> bool:
        """Whether `proxy`'s output may differ from before the change (a router's always
        may: gateways read every rule; few, they are compared in full)."""
        if proxy.type != SIDECAR:
            return True
        sidecar = sidecar_for(self.mesh, proxy)
        key = (proxy.namespace, (sidecar.namespace, sidecar.name, sidecar.generation) if sidecar is not None else None)
        seen = self.visible.get(key)
        if seen is None:
            seen = self.visible[key] = frozenset(self.mesh.sidecar_scope(proxy).services)
        return not self.hosts.isdisjoint(seen)


def rules_only(previous: MeshSnapshot, mesh: MeshSnapshot) -> bool:
    """Whether `mesh` differs from `previous` in DestinationRules only (and is not the
    same snapshot)."""
    # A snapshot is made of the config objects, the mesh config and the key sets
    # (model/mesh.py build_mesh): every object but DestinationRules must be the same.
    if mesh is previous or mesh.derived_from or previous.mesh_config != mesh.mesh_config:
        return False
    if previous.jwks is not mesh.jwks and previous.jwks.digest != mesh.jwks.digest:
        return False
    before_objects, found = previous.config.objects, 0
    for key, obj in mesh.config.objects.items():
        was = before_objects.get(key)
        if was is not None:
            found += 1
        if was is not obj and (was is None or was.generation != obj.generation) and key.kind != DESTINATION_RULE:
            return False
    # Deleted objects: DestinationRules only.
    return found == len(before_objects) or all(
        k.kind == DESTINATION_RULE for k in before_objects.keys() - mesh.config.objects.keys())


def carry_past_rules(previous: MeshSnapshot, mesh: MeshSnapshot) -> None:
    """`mesh` differs from `previous` in DestinationRules only: it takes over what
    `previous` derived that reads none (model/indexes.py; the sidecar scopes, the
    endpoint digests, the digests of the other kinds), so a rule change pays for the
    rules, not for a new snapshot."""
    mesh.indexes.carry_past_rule_change(previous.indexes)
    carry_kind_digests(previous, mesh)


def rule_change(previous: MeshSnapshot, mesh: MeshSnapshot, visible: VisibleHosts | None = None, *,
                checked: bool = False) -> RuleChange | None:
    """What `mesh` changed over `previous` when that is DestinationRules only, read by
    sidecars only through the rules of the hosts they see; None when the ordinary push
    must decide (anything else changed, a rule selects workloads, covers a wildcard or
    a host that is not a service, or changes what routes, locality load balancing or
    credentials read of rules: those reach proxies that do not see its host). `visible`:
    what the scopes of `previous` hold, when known (RuleChange.visible of the change that
    made it); `checked`: rules_only(previous, mesh) is known to hold."""
    if not checked and not rules_only(previous, mesh):
        return None
    if (dr_routing(previous) != dr_routing(mesh) or locality_inputs(previous) != locality_inputs(mesh)
            or uses_dr_credentials(previous) != uses_dr_credentials(mesh)):
        return None
    old = {(dr.namespace, dr.name): dr for dr in previous.destination_rules}
    new = {(dr.namespace, dr.name): dr for dr in mesh.destination_rules}
    hosts: set[str] = set()
    for name in old.keys() | new.keys():
        before, after = old.get(name), new.get(name)
        if before is not None and after is not None and before.generation == after.generation:
            continue
        for dr in (before, after):
            if dr is None:
                continue
            host = rule_host(dr)
            if selector_of(dr) is not None or "*" in host or host not in mesh.services or host not in previous.services:
                return None
            hosts.add(host)
    return RuleChange(frozenset(hosts), mesh, visible if visible is not None else {})
