"""`Generator`: packs each proxy's resources once and shares them between proxies and
snapshots (the package docstring says how). Its own module so that importing one
generator module (resources, for the server and SDS) does not import them all."""
from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

from google.protobuf.message import Message

from .. import names
from ..model.mesh import MeshSnapshot
from ..model.proxy import Proxy
from . import dependencies as dep
from .envoyfilter import bootstrap as envoyfilter_bootstrap
from .envoyfilter import stage as envoyfilter_stage
from .express import (
    EndpointChange,
    RuleChange,
    VisibleHosts,
    carry_past_rules,
    endpoint_change,
    rule_change,
    rules_only,
)
from .inputs import DESTINATION_RULE, DR_ROUTING
from .parts import Part, ResourceCache, parts_for, router_parts
from .resources import ComposedSet, Resource, ResourceSet

Builder = Callable[[MeshSnapshot, Proxy], Iterable[tuple[str, Message]]]


def builders() -> dict[str, Builder]:
    from . import clusters, endpoints, listeners, routes, secrets

    return {
        names.CLUSTER: clusters.build,
        names.ENDPOINT: endpoints.build,
        names.LISTENER: listeners.build,
        names.ROUTE: routes.build,
        # SDS names other than `default`/`ROOTCA` (the SecretProvider's): gateway
        # credentials `kubernetes://<name>[-cacert]` from Secrets (secrets.py).
        names.SECRET: secrets.build,
        # EnvoyFilter EXTENSION_CONFIG patches, served over ECDS (envoyfilter/extension_config.py).
        names.EXTENSION_CONFIG: envoyfilter_stage.extension_config_items,
        # EnvoyFilter BOOTSTRAP patches, fetched when a bootstrap is written (envoyfilter/bootstrap.py).
        names.BOOTSTRAP: envoyfilter_bootstrap.build,
    }


class Generator:
    """Generates and caches proxies' resources by what they depend on."""

    def __init__(self, table: dict[str, Builder] | None = None, *, keep_generations: int = 2):
        self._standard = table is None
        self._builders = table or builders()
        self._routers = router_parts(self._builders)
        self._parts_of: dict[tuple[str, str], Sequence[Part]] = {}
        self._resources = ResourceCache(keep_generations)
        self._keep = keep_generations
        # part key -> (epoch last used, set)
        self._sets: dict[tuple[Any, ...], tuple[int, ResourceSet]] = {}
        # (part name, scope) -> newest set: the base a rebuilt set records changes against
        self._latest: dict[tuple[Any, ...], ResourceSet] = {}
        # lineage -> (part key, host endpoints, host rules) of _latest (for _update_hosts)
        self._latest_key: dict[tuple[Any, ...], tuple[Any, ...]] = {}
        self._composed: dict[tuple[Any, ...], tuple[int, ResourceSet]] = {}
        self._mesh_version: str | None = None
        self._epoch = 0
        self.builds = 0  # parts built (not served from cache): for tests and metrics
        # key of patched output -> the EnvoyFilter patches left out of it (envoy_filter_problems)
        self._ef_problems: dict[tuple[Any, ...], list[Any]] = {}
        # (snapshot, the hosts of its sidecar scopes) after a DestinationRule-only change (rule_change)
        self._rule_chain: tuple[MeshSnapshot, VisibleHosts] | None = None

    def types(self) -> tuple[str, ...]:
        return tuple(t for t in names.PUSH_ORDER if t in self._builders)

    def parts(self, proxy: Proxy, type_url: str) -> Sequence[Part]:
        key = (proxy.type, type_url)
        got = self._parts_of.get(key)
        if got is None:
            got = self._parts_of[key] = () if self._standard and type_url == names.EXTENSION_CONFIG else \
                parts_for(proxy, type_url, self._builders, self._routers, self._standard)
        return got

    def key(self, mesh: MeshSnapshot, proxy: Proxy, type_url: str) -> tuple[Any, ...]:
        """Cache key of `proxy`'s resources of `type_url` under `mesh`: equal keys mean
        equal output. Cheap (fingerprints are computed once per snapshot)."""
        if self._standard and type_url == names.EXTENSION_CONFIG:
            return envoyfilter_stage.extension_key(mesh, proxy)
        out = []
        for part in self.parts(proxy, type_url):
            k = part.key(mesh, proxy)
            if part.endpoints:
                # The endpoints of every host the proxy sees in one string: the EDS key changes
                # with any of them, while the per-cluster cache inside the part rebuilds only
                # the changed hosts'.
                k += (dep.seen_endpoints(mesh, proxy),)
            out.append(k)
        if self._standard:
            out.extend(envoyfilter_stage.key(mesh, proxy, type_url))  # () unless an EnvoyFilter selects it
        return tuple(out)

    def endpoint_change(self, previous: MeshSnapshot, mesh: MeshSnapshot) -> EndpointChange | None:
        """What `mesh` changed over `previous` when only EDS reads it (express.py), so the
        server can push without comparing every proxy's keys; None: compare them. Only
        for the standard parts, whose inputs are declared."""
        return endpoint_change(previous, mesh) if self._standard else None

    def rule_change(self, previous: MeshSnapshot, mesh: MeshSnapshot) -> RuleChange | None:
        """What `mesh` changed over `previous` when that is DestinationRules only, read by
        sidecars through the hosts they see (express.py), so the server can pass over the
        sidecars that see none of them; None: compare every proxy's keys."""
        if not self._standard:
            return None
        if not rules_only(previous, mesh):
            self._rule_chain = None
            return None
        carry_past_rules(previous, mesh)  # before any key of `mesh`: what reads no rule is kept
        chain = self._rule_chain
        change = rule_change(previous, mesh, chain[1] if chain is not None and chain[0] is previous else None,
                             checked=True)
        # What the scopes hold stays true along a chain of rule changes: kept for the next.
        self._rule_chain = (mesh, change.visible) if change is not None else None
        return change

    def generate(self, mesh: MeshSnapshot, proxy: Proxy, type_url: str, key: tuple[Any, ...] | None = None) -> ResourceSet:
        """`proxy`'s resources of `type_url`; `key`: its key() under `mesh`, if known
        (the server has it already: a push looks at the key first)."""
        self._see(mesh)
        if key is None:
            key = self.key(mesh, proxy, type_url)
        if self._standard and type_url == names.EXTENSION_CONFIG:
            return self._extension_configs(mesh, proxy, key)
        parts = self.parts(proxy, type_url)
        if not parts:
            return ResourceSet(type_url, ())
        if len(key) > len(parts):
            return self._patched(mesh, proxy, type_url, key, len(parts))
        if len(parts) > 1:
            hit = self._composed.get(key)
            if hit is not None:
                if hit[0] != self._epoch:
                    self._composed[key] = (self._epoch, hit[1])
                return hit[1]
        sets = [self._part(mesh, proxy, part, k) for part, k in zip(parts, key, strict=True)]
        if len(sets) == 1:
            return sets[0]
        composed = ComposedSet(type_url, sets)
        self._composed[key] = (self._epoch, composed)
        return composed

    def _patched(self, mesh: MeshSnapshot, proxy: Proxy, type_url: str, key: tuple[Any, ...],
                 n: int) -> ResourceSet:
        """The EnvoyFilter stage (envoyfilter/stage.py): the composed parts (`key[:n]`), patched,
        cached by the whole key."""
        hit = self._composed.get(key)
        if hit is not None:
            if hit[0] != self._epoch:
                self._composed[key] = (self._epoch, hit[1])
            return hit[1]
        rs, problems = envoyfilter_stage.patch(mesh, proxy, type_url, self.generate(mesh, proxy, type_url, key[:n]))
        self._composed[key] = (self._epoch, rs)
        if problems:
            self._ef_problems[key] = problems
        return rs

    def _extension_configs(self, mesh: MeshSnapshot, proxy: Proxy, key: tuple[Any, ...]) -> ResourceSet:
        """ECDS (envoyfilter/stage.py): the EnvoyFilters' EXTENSION_CONFIG patches, cached by key."""
        hit = self._composed.get(key)
        if hit is not None:
            if hit[0] != self._epoch:
                self._composed[key] = (self._epoch, hit[1])
            return hit[1]
        rs, problems = envoyfilter_stage.extension_configs(mesh, proxy)
        self._composed[key] = (self._epoch, rs)
        if problems:
            self._ef_problems[key] = problems
        return rs

    def envoy_filter_problems(self) -> list[dict[str, Any]]:
        """/debug/configz `envoyFilterProblems`: the patches left out of output still cached
        (so still served), each with how many distinct outputs left it out."""
        return envoyfilter_stage.problems_status(self._ef_problems.values())

    def _part(self, mesh: MeshSnapshot, proxy: Proxy, part: Part, key: tuple[Any, ...]) -> ResourceSet:
        hit = self._sets.get(key)
        if hit is not None:
            if hit[0] != self._epoch:
                self._sets[key] = (self._epoch, hit[1])
            return hit[1]
        self.builds += 1
        lineage = (part.name, key[1])
        base = self._latest.get(lineage)
        rs = None
        if base is not None and part.update_hosts is not None:
            rs = self._update_hosts(mesh, proxy, part, key, base)
        if rs is None:
            rs = ResourceSet(part.type_url, part.build(mesh, proxy, part, self._resources))
            if base is not None:
                rs.derive_from(base)
        if base is not None:
            base.base = None  # keep one step of history: enough for connections in sync
        self._latest[lineage] = rs
        self._latest_key[lineage] = (key, dep.host_endpoints(mesh) if part.endpoints else None,
                                     dep.host_rules(mesh) if part.update_hosts is not None else None)
        self._sets[key] = (self._epoch, rs)
        return rs

    def _update_hosts(self, mesh: MeshSnapshot, proxy: Proxy, part: Part, key: tuple[Any, ...],
                      base: ResourceSet) -> ResourceSet | None:
        """Incremental update: when what the part read changed only per host (endpoints,
        DestinationRules) since `base` was built, replace the resources of the changed
        hosts in place and keep every other one. None: build the part whole."""
        prev = self._latest_key.get((part.name, key[1]))
        if prev is None:
            return None
        prev_key, prev_endpoints, prev_rules = prev
        if len(prev_key) != len(key) or prev_key[0] != key[0]:
            return None
        rules_changed = False
        n, m = len(part.deps), len(key[2]) - part.per_host_view
        if prev_key[2][n:m] != key[2][n:m]:
            return None  # what the proxy sees changed (Part.view)
        if prev_key[2][m:] != key[2][m:]:
            rules_changed = True  # the rules of the hosts it sees (dependencies.seen_rules)
        for name, old, new in zip(part.deps, prev_key[2][:n], key[2][:n], strict=True):
            if old != new:
                if name not in _PER_HOST_DEPS:
                    return None
                rules_changed = True
        changed: set[str] = set()
        if part.endpoints and prev_key[3] != key[3]:
            if prev_endpoints is None:
                return None
            hosts = dep.host_endpoints(mesh)
            changed.update(h for h in hosts.keys() | prev_endpoints.keys() if hosts.get(h) != prev_endpoints.get(h))
        if rules_changed:
            if prev_rules is None:
                return None
            rules = dep.host_rules(mesh)
            changed.update(h for h in rules.keys() | prev_rules.keys() if rules.get(h) != prev_rules.get(h))
        assert part.update_hosts is not None
        replaced = part.update_hosts(mesh, proxy, self._resources, changed)
        # A host's resources are contiguous and in host order (destinations.outbound_clusters):
        # its new ones take the place of its old ones, so the set equals a whole build.
        items: dict[str, Resource] = {}
        pending = dict(replaced)
        dropped: list[str] = []
        for name, res in base._items.items():
            host = _host_of(name)
            if host is not None and host in replaced:
                dropped.append(name)
                for r in pending.pop(host, ()):
                    items[r.name] = r
                continue
            items[name] = res
        if any(pending.values()):
            return None  # a host's first resources: only a whole build knows their place
        rs = ResourceSet(part.type_url, ())
        rs._items = items
        removed = frozenset(n for n in dropped if n not in items)
        if not removed and len(items) == len(base._items):
            rs._names = base.names  # the same names: share the set (memos compare it by identity)
        rs.base = base
        rs.changed = frozenset(r.name for rs_ in replaced.values() for r in rs_
                               if (old := base._items.get(r.name)) is None or old.version != r.version)
        rs.removed = removed
        return rs

    def _see(self, mesh: MeshSnapshot) -> None:
        if mesh.version == self._mesh_version:
            return
        # A new snapshot: a new generation. Cached output not used for `keep`
        # generations is dropped; what is still current stays (that is the point).
        self._mesh_version = mesh.version
        self._epoch += 1
        self._resources.advance()
        cutoff = self._epoch - self._keep
        for k in [k for k, (e, _) in self._composed.items() if e < cutoff]:
            del self._composed[k]
            self._ef_problems.pop(k, None)
        # A composed set served from its cache (generate) does not touch its parts: they
        # live as long as a composed set uses them.
        used = {k for ck in self._composed for k in ck}
        for k in [k for k, (e, _) in self._sets.items() if e < cutoff and k not in used]:
            del self._sets[k]
        live = {(k[0], k[1]) for k in self._sets}
        for lineage in [k for k in self._latest if k not in live]:
            del self._latest[lineage]
            self._latest_key.pop(lineage, None)

    def stats(self) -> dict[str, int]:
        return {"sets": len(self._sets), "composed": len(self._composed), "resources": len(self._resources),
                "builds": self.builds}


# Part inputs a change of which _update_hosts can follow host by host (dependencies.host_rules).
_PER_HOST_DEPS = frozenset({DESTINATION_RULE, DR_ROUTING})


def _host_of(name: str) -> str | None:
    """The host of an outbound cluster (or assignment) name `outbound|port|subset|host`
    (remembered: every group's sets hold the same names)."""
    try:
        return _HOSTS[name]
    except KeyError:
        pass
    fields = name.split("|")
    host = fields[3] if len(fields) == 4 else None
    if len(_HOSTS) >= 200_000:
        _HOSTS.clear()
    _HOSTS[name] = host
    return host


_HOSTS: dict[str, str | None] = {}

