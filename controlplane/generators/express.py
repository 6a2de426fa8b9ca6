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
"""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from ..model.mesh import MeshSnapshot
from .dependencies import endpoint_facts, headless_ips, host_endpoints, locality_inputs, localized_hosts


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
