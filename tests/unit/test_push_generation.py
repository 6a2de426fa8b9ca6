"""Shared generation: the Generator composes each proxy's resources from shared, cached
parts (generators/parts.py). Whatever the cache does, the bytes must equal what the plain
builders (clusters.build, listeners.build, ...) make for that proxy and snapshot, also
after a sequence of changes of every kind with one long-lived cache; and a change must
rebuild only what depends on it.
"""
from __future__ import annotations

import dataclasses

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from controlplane import names
from controlplane.config import kinds
from controlplane.generators import Generator, builders
from controlplane.generators.envoyfilter import Selected, ordered, selects
from controlplane.generators.envoyfilter import apply as apply_patches
from controlplane.generators.envoyfilter import stage as envoyfilter_stage
from controlplane.generators.resources import changes, pack
from controlplane.generators.tracing import mesh_telemetries
from controlplane.model.proxy import parse_node
from controlplane.model.telemetry import applicable
from tests.support import mesh_changes
from tests.support.chapter9 import (
    CATALOG_PROXY,
    GATEWAY_PROXY,
    LAYOUT,
    NS,
    RICH,
    SLEEP_PROXY,
    STRICT_MESH,
    TCP_SERVICES,
    WEBAPP_PROXY,
    dr,
    endpoints_v2,
    mesh,
    pa,
)

TYPES = (names.CLUSTER, names.ENDPOINT, names.LISTENER, names.ROUTE)

HEADLESS = """
apiVersion: v1
kind: Service
metadata: {name: db, namespace: istioinaction}
spec:
  clusterIP: None
  selector: {app: db}
  ports: [{name: tcp, port: 5432}]
---
apiVersion: v1
kind: Pod
metadata: {name: db-0, namespace: istioinaction, labels: {app: db, security.istio.io/tlsMode: istio}}
spec: {serviceAccountName: db, containers: [{name: db}]}
status: {podIP: 10.1.0.40}
"""
DB_PROXY = parse_node(f"sidecar~10.1.0.40~db-0.{NS}~{NS}.svc.cluster.local", {"NAMESPACE": NS, "LABELS": {"app": "db"}})
SOURCE_LABELS = """
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: mysql-canary, namespace: default}
spec:
  hosts: [mysql]
  tcp:
  - match: [{port: 3306, sourceLabels: {app: webapp}}]
    route: [{destination: {host: mysql}}]
"""
CATALOG_2 = parse_node(  # a replica of catalog-1: shares its inbound side
    f"sidecar~10.1.0.12~catalog-2.{NS}~{NS}.svc.cluster.local",
    {"NAMESPACE": NS, "LABELS": {"app": "catalog", "version": "v2", "security.istio.io/tlsMode": "istio"},
     "SERVICE_ACCOUNT": "catalog-v2"},
)
PROXIES = [WEBAPP_PROXY, CATALOG_PROXY, CATALOG_2, SLEEP_PROXY, GATEWAY_PROXY, DB_PROXY]


def envoy_filters(m) -> list[Selected]:
    """The snapshot's EnvoyFilters, read directly (not through the stage's index)."""
    return [Selected(o.namespace, o.name, str(o.extra.get("creationTimestamp") or ""), o.typed, o.generation)
            for o in m.config.of_kind(kinds.ENVOY_FILTER.kind) if o.typed is not None]


def expected(m, proxy, type_url) -> dict[str, bytes]:
    """The plain builders' output, patched by the EnvoyFilters selecting `proxy` (no cache)."""
    items = list(builders()[type_url](m, proxy))
    if type_url in envoyfilter_stage.KIND_OF:
        chosen = ordered(envoy_filters(m), proxy, m.root_namespace)
        if chosen:
            items, _ = apply_patches(envoyfilter_stage.KIND_OF[type_url], items, chosen, proxy)
    return {name: pack(name, type_url, msg).any.value for name, msg in items}


def got(g: Generator, m, proxy, type_url) -> dict[str, bytes]:
    rs = g.generate(m, proxy, type_url)
    out = {name: rs[name].any.value for name in rs}
    assert len(out) == len(rs)  # no name twice across parts
    return out


def check_all(g: Generator, m) -> None:
    for proxy in PROXIES:
        for wc in (True, False):
            p = dataclasses.replace(proxy, workload_cert=wc)
            for t in TYPES:
                assert got(g, m, p, t) == expected(m, p, t), (p.id, wc, names.SHORT[t])


# Each step is a whole configuration; one Generator sees them in order.
STEPS = [
    ("base", []),
    ("rich", ["rich"]),
    ("endpoint added", ["rich", "ep1"]),
    ("endpoint moved", ["rich", "ep2"]),
    ("mesh STRICT", ["rich", "ep2", "strict"]),
    ("workload policy", ["rich", "ep2", "strict", "pa-webapp"]),
    ("destination rule", ["rich", "ep2", "strict", "pa-webapp", "dr"]),
    ("source labels", ["rich", "ep2", "strict", "pa-webapp", "dr", "srclabels"]),
    ("headless", ["rich", "ep2", "headless", "dr"]),
    ("authz on one catalog version", ["rich", "ep2", "authz-v2"]),
    ("authz mesh-wide and at the gateway", ["rich", "ep2", "authz-v2", "authz-mesh", "authz-gw"]),
    ("authz changed", ["rich", "ep2", "authz-v2b", "authz-mesh", "authz-gw"]),
    ("back to base", []),
]

AUTHZ_V2 = """
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: catalog-v2, namespace: istioinaction}
spec:
  selector: {matchLabels: {app: catalog, version: v2}}
  action: ALLOW
  rules:
  - from: [{source: {principals: ["cluster.local/ns/istioinaction/sa/webapp"]}}]
    to: [{operation: {methods: [%s]}}]
"""
AUTHZ_MESH = """
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-admin, namespace: istio-system}
spec:
  action: DENY
  rules: [{to: [{operation: {paths: ["/admin*"], ports: ["3000"]}}]}]
"""
AUTHZ_GW = """
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: gw-deny-api, namespace: istio-system}
spec:
  selector: {matchLabels: {istio: ingressgateway}}
  action: DENY
  rules: [{to: [{operation: {paths: ["/api/*"]}}]}]
"""


def config(tmp_path, parts: list[str]) -> list[str]:
    from tests.support.chapter9 import rich_drs as _rich_drs

    texts = {
        "rich": RICH,
        "ep1": endpoints_v2("10.1.0.13"),
        "ep2": endpoints_v2("10.1.0.14"),
        "strict": STRICT_MESH,
        "pa-webapp": pa("webapp", NS, "PERMISSIVE", selector={"app": "webapp"}, ports={8080: "STRICT"}),
        "dr": _rich_drs(tmp_path),
        "srclabels": TCP_SERVICES + "\n---\n" + SOURCE_LABELS,
        "headless": HEADLESS,
        "authz-v2": AUTHZ_V2 % "GET",
        "authz-v2b": AUTHZ_V2 % "GET, POST",
        "authz-mesh": AUTHZ_MESH,
        "authz-gw": AUTHZ_GW,
    }
    return [texts[p] for p in parts]


def test_composed_output_equals_the_builders_across_changes(tmp_path):
    g = Generator()
    for _label, parts in STEPS:
        m = mesh(*config(tmp_path, parts))
        check_all(g, m)


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(initial=mesh_changes.initial_states(), walk=st.lists(mesh_changes.steps(), min_size=1, max_size=6))
def test_composed_output_equals_the_builders_over_random_changes(initial, walk):
    """A random mesh (tests/support/mesh_changes.py: every kind the generators serve), then
    random steps adding, changing and removing objects of any kind (an EndpointSlice alone
    takes build_mesh's fast path), seen by one long-lived Generator: after every step, each
    proxy's composed output of every type equals the plain builders' byte for byte."""
    world = mesh_changes.World(initial)
    g = Generator()
    for m in [world.mesh, *(world.apply(step) for step in walk)]:
        for proxy in mesh_changes.PROXIES:
            for t in (*TYPES, names.SECRET):
                assert got(g, m, proxy, t) == expected(m, proxy, t), (world.state, proxy.id, proxy.workload_cert, names.SHORT[t])


def test_key_is_stable_and_changes_with_the_output(tmp_path):
    g = Generator()
    m1 = mesh()
    m2 = mesh(pa("default", "istio-system", "STRICT"))
    for p in PROXIES:
        for t in TYPES:
            assert g.key(m1, p, t) == g.key(mesh(), p, t)  # a rebuilt identical snapshot
            if g.key(m1, p, t) == g.key(m2, p, t):
                assert got(g, m1, p, t) == got(g, m2, p, t), (p.id, names.SHORT[t])


def test_proxies_with_identical_output_share_one_copy():
    g = Generator()
    m = mesh()
    a = dataclasses.replace(CATALOG_PROXY, id="sidecar~10.1.0.11~catalog-1b.x~x", pod="catalog-1b")
    for t in TYPES:
        assert g.generate(m, CATALOG_PROXY, t) is g.generate(m, a, t)
    # replicas of one workload (different IPs) share their inbound side
    r1 = g.generate(m, CATALOG_PROXY, names.LISTENER)
    r2 = g.generate(m, CATALOG_2, names.LISTENER)
    assert r1["virtualInbound"] is r2["virtualInbound"]
    # and everyone in the namespace shares the outbound clusters, resource by resource
    c1 = g.generate(m, CATALOG_PROXY, names.CLUSTER)
    c2 = g.generate(m, WEBAPP_PROXY, names.CLUSTER)
    name = f"outbound|80||catalog.{NS}.svc.cluster.local"
    assert c1[name] is c2[name]


def test_an_endpoint_change_rebuilds_only_the_changed_assignments():
    g = Generator()
    m1 = mesh()
    for p in PROXIES:
        for t in TYPES:
            g.generate(m1, p, t)
    before = {(p.id, t): g.generate(m1, p, t) for p in PROXIES for t in TYPES}
    m2 = mesh(endpoints_v2("10.1.0.13"))  # one more catalog pod (no new service account)
    built = g.builds
    for p in PROXIES:
        for t in (names.CLUSTER, names.LISTENER, names.ROUTE):
            if p is CATALOG_PROXY or p is CATALOG_2:
                continue
            assert g.key(m1, p, t) == g.key(m2, p, t), (p.id, names.SHORT[t])
            assert g.generate(m2, p, t) is before[(p.id, t)]
    assert g.builds == built  # nothing rebuilt for them
    eds = g.generate(m2, WEBAPP_PROXY, names.ENDPOINT)
    old = before[(WEBAPP_PROXY.id, names.ENDPOINT)]
    changed, removed = changes(old, eds)
    assert changed == {f"outbound|80||catalog.{NS}.svc.cluster.local", f"outbound|81||catalog.{NS}.svc.cluster.local"}
    assert not removed
    for n in eds:
        if n not in changed:
            assert eds[n] is old[n]


def test_a_gateway_change_leaves_every_sidecar_output_untouched():
    g = Generator()
    m1 = mesh()
    gw = """
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: second, namespace: istioinaction}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 81, name: http, protocol: HTTP}
    hosts: ["other.example.com"]
"""
    m2 = mesh(gw)
    for p in (WEBAPP_PROXY, CATALOG_PROXY, SLEEP_PROXY):
        for t in TYPES:
            assert g.key(m1, p, t) == g.key(m2, p, t), (p.id, names.SHORT[t])
    assert g.key(m1, GATEWAY_PROXY, names.LISTENER) != g.key(m2, GATEWAY_PROXY, names.LISTENER)


def test_a_connection_pool_change_leaves_routes_and_listeners_cached():
    g = Generator()
    base = dr("catalog", "catalog", "  trafficPolicy: {connectionPool: {tcp: {maxConnections: 10}}}\n")
    m1, m2 = mesh(base), mesh(base.replace("maxConnections: 10", "maxConnections: 20"))
    for p in (WEBAPP_PROXY, SLEEP_PROXY):
        assert g.key(m1, p, names.ROUTE) == g.key(m2, p, names.ROUTE)
        assert g.key(m1, p, names.LISTENER) == g.key(m2, p, names.LISTENER)
        assert g.key(m1, p, names.CLUSTER) != g.key(m2, p, names.CLUSTER)
        c1, c2 = g.generate(m1, p, names.CLUSTER), g.generate(m2, p, names.CLUSTER)
        changed, _ = changes(c1, c2)
        assert changed == {f"outbound|80||catalog.{NS}.svc.cluster.local", f"outbound|81||catalog.{NS}.svc.cluster.local"}


SUBSETS = "  subsets:\n  - {name: v1, labels: {version: v1}}\n  - {name: v2, labels: {version: v2}}\n"
# DestinationRule-only steps: each differs from the one before in rules alone.
RULE_STEPS = [
    [],
    [dr("catalog", "catalog", SUBSETS)],  # subsets appear: clusters added inside the host's block
    [dr("catalog", "catalog", "  trafficPolicy: {connectionPool: {tcp: {maxConnections: 5}}}\n" + SUBSETS)],
    [dr("catalog", "catalog", SUBSETS), dr("wide", f"\"*.{NS}.svc.cluster.local\"",
                                             "  trafficPolicy: {tls: {mode: DISABLE}}\n")],  # a wildcard
    [dr("catalog", "webapp", SUBSETS)],  # the rule moves to another host
    [dr("catalog", "webapp", SUBSETS, namespace="default")],  # and to another namespace
    [],  # gone
]


def test_a_destination_rule_change_rebuilds_only_its_hosts_in_place():
    """A rule change splices the new clusters and assignments of the hosts the rule
    covers (before or after) into the previous sets: same names in the same order and
    bytes as a whole build, the other hosts' resources untouched."""
    g = Generator()
    before: dict = {}
    for step, rules in enumerate(RULE_STEPS):
        m = mesh(*rules)
        for p in PROXIES:
            for t in (names.CLUSTER, names.ENDPOINT):
                rs = g.generate(m, p, t)
                parts = rs.parts
                fresh = Generator().generate(m, p, t)  # built whole
                assert [n for part in parts for n in part] == [n for part in fresh.parts for n in part], (step, p.id)
                assert got(g, m, p, t) == expected(m, p, t), (step, p.id, names.SHORT[t])
                old, before[(p.id, t)] = before.get((p.id, t)), rs
                if old is None:
                    continue
                changed, removed = changes(old, rs)
                hosts = {f"catalog.{NS}.svc.cluster.local", f"webapp.{NS}.svc.cluster.local"}  # the rules' hosts
                assert {n.split("|")[3] for n in changed | removed} <= hosts, (step, changed, removed)
                for part, old_part in zip(parts, old.parts, strict=True):
                    if part is old_part:
                        continue
                    assert part.base is old_part, (step, p.id, "not an incremental update")
                    for n in part:
                        if n.count("|") != 3 or n.split("|")[3] not in hosts:
                            assert part[n] is old_part[n], (step, n)


@pytest.mark.parametrize("layout", [LAYOUT])
def test_old_generations_are_dropped(layout):
    g = Generator(keep_generations=2)
    for i in range(6):
        m = mesh(pa("default", "istio-system", ["STRICT", "PERMISSIVE"][i % 2]))
        for p in PROXIES:
            for t in TYPES:
                g.generate(m, p, t)
    # bounded: a couple of generations' worth, not six
    assert g.stats()["sets"] <= 3 * len(PROXIES) * len(TYPES) * 2


def test_whole_responses_are_joined_once_per_group_and_bounded():
    """Proxies holding the same generated set at the same response count get the very
    same bytes (joined once); other nonces or sets are made anew; memory stays bounded."""
    from controlplane.server.caches import SharedResponses

    made = []

    def make(tag: bytes, size: int = 100):
        return lambda: made.append(tag) or tag * size

    shared = SharedResponses(max_bytes=1000)
    group, other = object(), object()
    first = shared.get(group, "v1", "n1", make(b"a"))
    assert shared.get(group, "v1", "n1", make(b"b")) is first and made == [b"a"]
    assert shared.get(group, "v1", "n2", make(b"c")) == b"c" * 100
    assert shared.get(other, "v1", "n1", make(b"d")) == b"d" * 100
    for i in range(20):  # 2,000 bytes through a 1,000-byte cache: the oldest go
        shared.get(group, "v2", f"n{i}", make(b"e"))
    assert shared.size <= 1000
    assert shared.get(group, "v1", "n1", make(b"f")) == b"f" * 100  # evicted, made again


# ServiceEntry and WorkloadEntry changes (tests/support/mesh_changes.py slots), in order.
REGISTRY_WALK = [
    ("a STATIC entry and a WorkloadEntry", [("serviceentry/shop/payments", 0), ("workloadentry/shop/vm-1", 0)]),
    ("the entry selects the WorkloadEntry (app: vm)", [("serviceentry/shop/payments", 2)]),
    ("the WorkloadEntry's network, locality and weight", [("workloadentry/shop/vm-1", 2)]),
    ("the WorkloadEntry moves to another address", [("workloadentry/shop/vm-1", 3)]),
    ("the WorkloadEntry joins the Kubernetes Service cart", [("workloadentry/shop/vm-1", 1)]),
    ("DNS", [("serviceentry/shop/payments", 1)]),
    ("DNS_ROUND_ROBIN", [("serviceentry/shop/payments", 4)]),
    ("NONE with a CIDR", [("serviceentry/shop/payments", 3)]),
    ("the host of the Service cart: hidden", [("serviceentry/shop/payments", 5)]),
    ("the Service goes: the entry holds the host", [("service/shop/cart", None)]),
    ("an older entry in another namespace holds api.payments.example",
     [("service/shop/cart", 0), ("serviceentry/web/payments", 0), ("serviceentry/shop/payments", 0)]),
    ("the older one goes", [("serviceentry/web/payments", None)]),
    ("a WorkloadGroup", [("workloadgroup/shop/vm", 0)]),
    ("all gone", [("serviceentry/shop/payments", None), ("workloadentry/shop/vm-1", None),
                  ("workloadgroup/shop/vm", None)]),
]


def test_composed_output_equals_the_builders_across_registry_changes():
    """Every ServiceEntry resolution, a WorkloadEntry selected by an entry and by a
    Kubernetes Service, host conflicts: one long-lived Generator equals the plain builders
    after each step, for every proxy (the VM's sidecar among them)."""
    registry = ("serviceentry/", "workloadentry/", "workloadgroup/")
    world = mesh_changes.World({s: v for s, v in mesh_changes.everything().items() if not s.startswith(registry)})
    g = Generator()
    for what, step in REGISTRY_WALK:
        m = world.apply([mesh_changes.Change(slot, variant) for slot, variant in step])
        for proxy in mesh_changes.PROXIES:
            for t in (*TYPES, names.SECRET):
                assert got(g, m, proxy, t) == expected(m, proxy, t), (what, proxy.id, proxy.workload_cert, names.SHORT[t])


def test_a_workload_entry_change_rebuilds_only_what_reads_it():
    """A WorkloadEntry behind a STATIC entry changes its weight and locality: the entry's
    assignment changes, nothing else any proxy holds (clusters, listeners, routes keep
    their keys); a ServiceEntry change is a change of the services."""
    world = mesh_changes.World({**mesh_changes.everything(), "serviceentry/shop/payments": 2, "workloadentry/shop/vm-1": 0})
    world.apply([mesh_changes.Change("serviceentry/web/payments", None)])
    g = Generator()
    before = world.mesh
    after = world.apply([mesh_changes.Change("workloadentry/shop/vm-1", 2)])
    client = mesh_changes.FRONT_1
    for t in (names.CLUSTER, names.LISTENER, names.ROUTE):
        assert g.key(before, client, t) == g.key(after, client, t), names.SHORT[t]
    changed, removed = changes(g.generate(before, client, names.ENDPOINT), g.generate(after, client, names.ENDPOINT))
    assert changed == {"outbound|8080||vm.shop.internal"} and not removed
    moved = world.apply([mesh_changes.Change("serviceentry/shop/payments", 1)])
    assert g.key(after, client, names.CLUSTER) != g.key(moved, client, names.CLUSTER)


ENVOY_FILTER_SLOTS = sorted(slot for slot in mesh_changes.slots() if slot.startswith("envoyfilter/"))


def test_an_envoy_filter_change_pushes_exactly_to_the_proxies_it_selects():
    """Every EnvoyFilter slot through every variant and back to empty, with one long-lived
    Generator: a proxy that neither the old nor the new object selects keeps every key (no
    push); each output equals the builders' patched by the selected EnvoyFilters, so a
    proxy whose patched output changed got a new key (else the cache would serve the old
    output and differ here). Each variant that applies patches changes some proxy's output."""
    world = mesh_changes.World({s: v for s, v in mesh_changes.everything().items() if s not in ENVOY_FILTER_SLOTS})
    g = Generator()
    patch_types = (*envoyfilter_stage.KIND_OF, names.EXTENSION_CONFIG)
    for slot in ENVOY_FILTER_SLOTS:
        variants = mesh_changes.slots()[slot]
        for variant in [*range(len(variants)), None]:
            before = world.mesh
            old = {(o.namespace, o.name): o for o in envoy_filters(before)}
            after = world.apply([mesh_changes.Change(slot, variant)])
            new = {(o.namespace, o.name): o for o in envoy_filters(after)}
            _, ns, name = slot.split("/")
            changed_output = False
            for proxy in mesh_changes.PROXIES:
                selected = any(sel is not None and selects(sel, proxy, after.root_namespace)
                               for sel in (old.get((ns, name)), new.get((ns, name))))
                for t in (*TYPES, names.SECRET, names.EXTENSION_CONFIG):
                    if not selected or t not in patch_types:
                        assert g.key(before, proxy, t) == g.key(after, proxy, t), (slot, variant, proxy.id, names.SHORT[t])
                    now = expected(after, proxy, t)
                    assert got(g, after, proxy, t) == now, (slot, variant, proxy.id, names.SHORT[t])
                    if t in patch_types:
                        changed_output |= now != expected(before, proxy, t)
            left_out = {r["envoyFilter"] for r in g.envoy_filter_problems()}
            assert changed_output or variant is None or f"{ns}/{name}" in left_out or variant == 0 and not old, (
                slot, variant, "changed nothing")


TELEMETRY_SLOTS = sorted(slot for slot in mesh_changes.slots() if slot.startswith("telemetry/"))


def test_a_telemetry_change_pushes_exactly_to_the_proxies_it_applies_to():
    """Every Telemetry slot through every variant and back to empty, one long-lived Generator:
    a proxy to which neither the old nor the new object applies (model/telemetry.applicable)
    keeps every key; every output equals the builders'."""
    world = mesh_changes.World({s: v for s, v in mesh_changes.everything().items() if s not in TELEMETRY_SLOTS})
    g = Generator()

    def applies(m, proxy, ns: str, name: str) -> bool:
        chain = applicable(mesh_telemetries(m), m.root_namespace, proxy.namespace, proxy.labels)
        return any((t.namespace, t.name) == (ns, name) for t in chain)

    for slot in TELEMETRY_SLOTS:
        _, ns, name = slot.split("/")
        for variant in [*range(len(mesh_changes.slots()[slot])), None]:
            before = world.mesh
            after = world.apply([mesh_changes.Change(slot, variant)])
            for proxy in mesh_changes.PROXIES:
                touched = applies(before, proxy, ns, name) or applies(after, proxy, ns, name)
                for t in (*TYPES, names.SECRET):
                    if not touched:
                        assert g.key(before, proxy, t) == g.key(after, proxy, t), (slot, variant, proxy.id, names.SHORT[t])
                    assert got(g, after, proxy, t) == expected(after, proxy, t), (slot, variant, proxy.id, names.SHORT[t])
