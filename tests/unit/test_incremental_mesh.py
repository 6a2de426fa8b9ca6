"""The EndpointSlice fast path of build_mesh (a new snapshot from the previous one, only
the changed services' endpoints recomputed), the of_kind lists the store carries over,
and the indexes a fast-path snapshot takes over from the previous one (model/indexes.py):
each must give exactly what a full build (and fresh indexes) gives."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from bench.scenario import Scenario
from controlplane.config.snapshot import ConfigSnapshot
from controlplane.config.store import ConfigStore
from controlplane.generators import Generator, inputs
from controlplane.generators import dependencies as dep
from controlplane.model import sidecar_scope
from controlplane.model.mesh import MeshSnapshot, build_mesh
from controlplane.model.proxy import Proxy
from controlplane.sources.directory import DirectorySource, read_file

SCENARIO = Scenario(services=30, sidecars=40, gateways=2, namespaces=3)

# A headless Service with a named targetPort (endpoint facts, gateway conflicts read its
# endpoints) and a pod on a Node with a locality; a Service without slices.
EXTRA = """apiVersion: v1
kind: Service
metadata: {name: db, namespace: ns-0}
spec:
  clusterIP: None
  selector: {app: db}
  ports: [{name: tcp, port: 5432, targetPort: pg}]
---
apiVersion: v1
kind: Pod
metadata: {name: db-0, namespace: ns-0, labels: {app: db}}
spec: {serviceAccountName: db, nodeName: n1, containers: [{name: pg, ports: [{name: pg, containerPort: 5432}]}]}
status: {podIP: 10.9.0.1}
---
apiVersion: v1
kind: Node
metadata: {name: n1, labels: {topology.kubernetes.io/region: r1, topology.kubernetes.io/zone: z1}}
---
apiVersion: v1
kind: Service
metadata: {name: lonely, namespace: ns-1}
spec:
  clusterIP: 172.30.0.9
  selector: {app: svc-1}
  ports: [{name: http, port: 8080, targetPort: 9080}]
"""


def slice_yaml(name: str, namespace: str, owner: str | None, addresses: list[str], port: int = 9080,
               port_name: str = "http", ready: bool = True, pod: str = "") -> str:
    labels = f"labels: {{kubernetes.io/service-name: {owner}}}" if owner else "labels: {}"
    ref = f"\n  targetRef: {{kind: Pod, name: {pod}, namespace: {namespace}}}" if pod else ""
    eps = "\n".join(f"- addresses: [\"{a}\"]\n  conditions: {{ready: {str(ready).lower()}}}{ref}" for a in addresses)
    return f"""apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: {name}
  namespace: {namespace}
  {labels}
addressType: IPv4
ports: [{{name: {port_name}, port: {port}, protocol: TCP}}]
endpoints:
{eps}
"""


class World:
    """The scenario in a directory, loaded into a store; edits go through the store as
    the directory source applies them, and the changed keys are collected."""

    def __init__(self, root: Path):
        self.root = root
        SCENARIO.write(root)
        (root / "extra.yaml").write_text(EXTRA)
        (root / "endpoints" / "db.yaml").write_text(slice_yaml("db-x", "ns-0", "db", ["10.9.0.1"], port=5432, port_name="tcp", pod="db-0"))
        self.store = ConfigStore()
        DirectorySource(root, self.store).load()
        self.changed: set = set()
        self.store.subscribe(lambda _snap, keys: self.changed.update(keys))
        self.mesh = build_mesh(self.store.snapshot())
        self.proxies = [Proxy(id=s.node_id, type=s.kind, ip=s.ip, pod=s.pod, namespace=s.namespace, labels=dict(s.labels))
                        for s in SCENARIO.proxies()]
        self.proxies.append(Proxy(id="sidecar~10.9.0.1~db-0.ns-0~ns-0.svc.cluster.local", type="sidecar", ip="10.9.0.1",
                                  pod="db-0", namespace="ns-0", labels={"app": "db"}))

    def write(self, rel: str, text: str | None) -> None:
        path = self.root / rel
        if text is None:
            path.unlink()
            self.store.remove_location(str(path))
            return
        path.write_text(text)
        result = read_file(str(path))
        self.store.replace_location(result.location, [p for p in result.parsed if p is not None])

    def rebuild(self) -> tuple[MeshSnapshot, MeshSnapshot]:
        """(the snapshot built from the previous one, a full build of the same config)."""
        snap = self.store.snapshot()
        fast = build_mesh(snap, previous=self.mesh, changed=frozenset(self.changed))
        self.changed.clear()
        self.previous, self.mesh = self.mesh, fast
        return fast, build_mesh(snap)


@pytest.fixture
def world(tmp_path):
    return World(tmp_path)


def assert_same_mesh(got: MeshSnapshot, want: MeshSnapshot) -> None:
    assert got.config is want.config
    for f in dataclasses.fields(MeshSnapshot):
        if f.name in ("derived_from", "config", "indexes"):
            continue
        a, b = getattr(got, f.name), getattr(want, f.name)
        if f.name == "_pods":
            assert (a.by_name, a.by_ip, a.nodes) == (b.by_name, b.by_ip, b.nodes)
        elif f.name == "_dr_index":
            assert vars(a) == vars(b)
        else:
            assert a == b, f.name


def assert_of_kind_fresh(snap: ConfigSnapshot) -> None:
    fresh = ConfigSnapshot(snap.objects, snap.version)
    for kind in {k.kind for k in snap.objects} | set(snap._by_kind):
        assert snap.of_kind(kind) == fresh.of_kind(kind), kind
        assert all(a is b for a, b in zip(snap.of_kind(kind), fresh.of_kind(kind), strict=True)), kind


def ns(i: int) -> str:
    return SCENARIO.namespace_of(i)


STEPS = [
    # (what, [(file, content or None for removal)])
    ("endpoints of svc-1 change", [("endpoints/svc-1.yaml", SCENARIO.endpoints_yaml(1, 5))]),
    ("an endpoint turns not ready", [("endpoints/svc-1.yaml", slice_yaml("svc-1-abcde", ns(1), "svc-1", [SCENARIO.pod_ip(1, 0)], ready=False, pod="svc-1-0"))]),
    ("svc-2 loses its only slice: endpoints from pods", [("endpoints/svc-2.yaml", None)]),
    ("svc-3 gets a second slice, with an address svc-6 serves too",
     [("endpoints/svc-3-b.yaml", slice_yaml("svc-3-b", ns(3), "svc-3", [SCENARIO.pod_ip(6, 0), "10.70.0.1"]))]),
    ("svc-4's slice is relabelled to svc-7", [("endpoints/svc-4.yaml", SCENARIO.endpoints_yaml(4).replace("service-name: svc-4", "service-name: svc-7"))]),
    ("svc-2 gets a slice again (it had none)", [("endpoints/svc-2-new.yaml", slice_yaml("svc-2-new", ns(2), "svc-2", ["10.70.0.2"]))]),
    ("a slice of no Service, and one of no owner", [("endpoints/ghost.yaml", slice_yaml("ghost", ns(0), "nobody", ["10.70.0.3"]) + "---\n"
                                                    + slice_yaml("orphan", ns(0), None, ["10.70.0.4"]))]),
    ("lonely (no slice so far) gets one", [("endpoints/lonely.yaml", slice_yaml("lonely-a", ns(1), "lonely", ["10.70.0.5"]))]),
    ("headless db with a named targetPort moves", [("endpoints/db.yaml", slice_yaml("db-x", "ns-0", "db", ["10.9.0.1", "10.9.0.2"], port=5433, port_name="tcp", pod="db-0"))]),
    ("db keeps only its address without a pod (and locality)",
     [("endpoints/db.yaml", slice_yaml("db-x", "ns-0", "db", ["10.9.0.2"], port=5433, port_name="tcp"))]),
    ("two services change between two builds", [("endpoints/svc-5.yaml", SCENARIO.endpoints_yaml(5, 7)),
                                                ("endpoints/svc-8.yaml", None),
                                                ("endpoints/svc-3-b.yaml", None)]),
    ("the orphan slice is claimed by svc-9, the ghost slice goes",
     [("endpoints/ghost.yaml", slice_yaml("orphan", ns(0), "svc-9", ["10.70.0.4"]))]),
]


def test_fast_path_equals_a_full_build_after_every_slice_edit(world):
    for what, edits in STEPS:
        for rel, text in edits:
            world.write(rel, text)
        assert {k.kind for k in world.changed} == {"EndpointSlice"}, what
        before = world.mesh
        fast, full = world.rebuild()
        assert fast.derived_from == before.version and fast.indexes.shares_config_with(before.indexes), what
        assert fast.services is before.services and fast._dr_index is before._dr_index  # shared, not rebuilt
        assert_same_mesh(fast, full)
        assert_of_kind_fresh(world.store.snapshot())


def test_the_steps_change_what_they_should(world):
    """The scenario is not vacuous: the edits move endpoints and instances."""
    host = f"svc-2.{ns(2)}.svc.cluster.local"
    world.write("endpoints/svc-2.yaml", None)
    fast, _ = world.rebuild()
    assert [ep.pod for ep in fast.service_endpoints(host, 8080)] == ["svc-2-0", "svc-2-1"]  # from the pods
    world.write("endpoints/svc-3-b.yaml", slice_yaml("svc-3-b", ns(3), "svc-3", [SCENARIO.pod_ip(6, 0)]))
    fast, _ = world.rebuild()
    assert [i.service.name for i in fast._instances_by_ip[SCENARIO.pod_ip(6, 0)]] == ["svc-3", "svc-6"]
    world.write("endpoints/svc-4.yaml", SCENARIO.endpoints_yaml(4).replace("service-name: svc-4", "service-name: svc-7"))
    fast, _ = world.rebuild()
    assert len(fast.service_endpoints(f"svc-7.{ns(7)}.svc.cluster.local", 8080)) == 4


def test_other_changes_take_the_full_path(world):
    world.write(f"rules/{SCENARIO.service_name(0)}.yaml", SCENARIO.rules_yaml(0, 3))
    fast, full = world.rebuild()
    assert not derived(fast)
    assert_same_mesh(fast, full)
    # A slice and a Pod changed together: full.
    world.write("endpoints/svc-1.yaml", SCENARIO.endpoints_yaml(1, 9))
    world.write(f"services/{SCENARIO.service_name(1)}.yaml", SCENARIO.service_yaml(1).replace("containers: [{name: app}]", "containers: [{name: app2}]"))
    fast, full = world.rebuild()
    assert not derived(fast)
    assert_same_mesh(fast, full)
    assert not derived(build_mesh(world.store.snapshot(), previous=world.mesh, changed=frozenset()))
    assert not derived(build_mesh(world.store.snapshot(), previous=None, changed=frozenset(world.changed)))


# A rule for every host of a namespace and one selecting workloads.
WIDE_RULES = f"""apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: all, namespace: {ns(1)}}}
spec:
  host: "*.{ns(1)}.svc.cluster.local"
  trafficPolicy: {{connectionPool: {{tcp: {{maxConnections: 7}}}}}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: picky, namespace: {ns(2)}}}
spec:
  host: svc-2
  workloadSelector: {{matchLabels: {{app: svc-5}}}}
  trafficPolicy: {{tls: {{mode: DISABLE}}}}
"""

ROUTING_STEPS = [
    ("a DestinationRule changes", [(f"rules/{SCENARIO.service_name(0)}.yaml", SCENARIO.rules_yaml(0, 3))]),
    ("a VirtualService and its rule change", [(f"rules/{SCENARIO.service_name(0)}.yaml",
                                               SCENARIO.rules_yaml(0, 4).replace("weight: 90", "weight: 70")
                                               .replace("weight: 10", "weight: 30"))]),
    ("a rule for every host of a namespace, and one selecting workloads", [("routing.yaml", WIDE_RULES + f"""---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: delegate, namespace: {ns(2)}}}
spec:
  http: [{{route: [{{destination: {{host: svc-2}}}}]}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: root, namespace: {ns(2)}}}
spec:
  hosts: [svc-2]
  http: [{{delegate: {{name: delegate}}}}]
""")]),
    ("the rules go", [("routing.yaml", None), (f"rules/{SCENARIO.service_name(0)}.yaml", None)]),
]


def test_a_change_of_rules_and_routes_only_equals_a_full_build(world):
    """The second fast path: DestinationRules and VirtualServices read anew, the rest
    the previous snapshot's; a new snapshot for every reader (no `derived_from`, its own
    indexes)."""
    for what, edits in ROUTING_STEPS:
        for rel, text in edits:
            world.write(rel, text)
        assert {k.kind for k in world.changed} <= {"DestinationRule", "VirtualService"}, what
        before = world.mesh
        fast, full = world.rebuild()
        assert fast.services is before.services and fast.endpoints is before.endpoints, what  # not rebuilt
        assert not derived(fast) and not fast.indexes.shares_config_with(before.indexes), what
        assert_same_mesh(fast, full)
    assert len(fast.destination_rules) < len(before.destination_rules)


def test_the_store_carries_of_kind_lists_over(world):
    snap = world.store.snapshot()
    services = snap.of_kind("Service")
    slices = snap.of_kind("EndpointSlice")
    world.write("endpoints/svc-1.yaml", SCENARIO.endpoints_yaml(1, 3))
    world.write("endpoints/svc-2.yaml", None)
    world.write("endpoints/svc-2-b.yaml", slice_yaml("svc-2-b", ns(2), "svc-2", ["10.70.0.9"]))
    new = world.store.snapshot()
    assert new.of_kind("Service") is services  # untouched kind: the same list
    assert new.of_kind("EndpointSlice") is not slices
    assert_of_kind_fresh(new)


def keys(gen: Generator, mesh: MeshSnapshot, proxies) -> dict:
    return {(p.id, t): gen.key(mesh, p, t) for p in proxies for t in gen.types()}


def derived(mesh: MeshSnapshot) -> bool:
    return bool(mesh.derived_from)


def test_keys_with_carried_over_indexes_equal_fresh_ones(world):
    gen = Generator()
    keys(gen, world.mesh, world.proxies)  # the previous snapshot's indexes, filled
    for what, edits in STEPS:
        for rel, text in edits:
            world.write(rel, text)
        fast, full = world.rebuild()
        # Before any key of the new snapshot: what reads no endpoint is there already,
        # and so is what reads the endpoints of hosts that did not change.
        assert fast.indexes[dep._DR_SELECTORS] and fast.indexes.get(dep._KIND_DIGESTS), "nothing carried over"
        assert fast.indexes[dep._SERVICE_ACCOUNTS] and fast.indexes[dep._SHAPES], "nothing carried over"
        assert fast.indexes.get(dep._ENDPOINT_FACTS) is None, "a fingerprint across hosts carried over"
        assert keys(gen, fast, world.proxies) == keys(Generator(), full, world.proxies), what


def every_fact(mesh: MeshSnapshot, proxies) -> dict:
    kinds = sorted(inputs.KNOWN_KINDS) + [inputs.OTHER, inputs.MESH_VERSION, inputs.DR_ROUTING, inputs.ENDPOINT_FACTS]
    hosts = sorted(mesh.services)
    return {
        "kinds": [dep.kind(mesh, k) for k in kinds], "fingerprints": dep.fingerprints(mesh, tuple(kinds)),
        "hosts": dep.host_endpoints(mesh), "all": dep.all_endpoints(mesh), "headless": dep.headless_ips(mesh),
        "rules": dep.host_rules(mesh), "localized": dep.localized_hosts(mesh), "locality_inputs": dep.locality_inputs(mesh),
        "service_accounts": [dep.service_accounts(mesh, h) for h in hosts],
        "generations": [dep.service_generation(mesh, h) for h in hosts],
        "per_proxy": [(dep.instance_shape(mesh, p.ip), dep.proxy_locality(mesh, p), dep.mtls_policy(mesh, p.namespace, p.labels),
                       dep.dr_selectors(mesh, p.namespace, p.labels), dep.namespace_secrets(mesh, p.namespace),
                       dep.namespace_mode(mesh, p.namespace), dep.security(mesh, p))
                      for p in proxies],
        "flags": (dep.uses_dr_credentials(mesh), dep.uses_source_labels(mesh)),
    }


def test_every_carried_over_fact_equals_a_fresh_one(world):
    every_fact(world.mesh, world.proxies)
    for what, edits in STEPS:
        for rel, text in edits:
            world.write(rel, text)
        fast, full = world.rebuild()
        assert every_fact(fast, world.proxies) == every_fact(full, world.proxies), what


RULE_STEPS = [
    ("a rule's connection pool", [(f"rules/{SCENARIO.service_name(0)}.yaml", SCENARIO.rules_yaml(0, 3))]),
    ("endpoints between two rule changes", [("endpoints/svc-1.yaml", SCENARIO.endpoints_yaml(1, 6))]),
    ("a rule for every host of a namespace, one selecting workloads, one hashing", [("more-rules.yaml", WIDE_RULES + f"""---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: hashed, namespace: {ns(0)}}}
spec:
  host: svc-3
  trafficPolicy: {{loadBalancer: {{consistentHash: {{httpHeaderName: x-user}}}}}}
""")]),
    ("a rule's connection pool again", [(f"rules/{SCENARIO.service_name(0)}.yaml", SCENARIO.rules_yaml(0, 4))]),
    ("the rules go", [("more-rules.yaml", None)]),
]

SIDECARS = f"""apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {{name: default, namespace: {ns(0)}}}
spec:
  egress: [{{hosts: ["./*"]}}]
---
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {{name: default, namespace: {ns(1)}}}
spec:
  egress: [{{hosts: ["./*", "{ns(2)}/*"]}}]
"""


def test_a_rule_change_keeps_what_reads_no_rule(world):
    """A snapshot that differs in DestinationRules only takes over the previous one's
    sidecar scopes, endpoint digests and other kinds' digests (Generator.rule_change,
    as the server calls it before any key): every key and fact equals a fresh build's."""
    world.write("sidecars.yaml", SIDECARS)
    world.mesh = build_mesh(world.store.snapshot())
    world.changed.clear()
    gen = Generator()
    keys(gen, world.mesh, world.proxies)
    every_fact(world.mesh, world.proxies)
    for what, edits in RULE_STEPS:
        for rel, text in edits:
            world.write(rel, text)
        before = world.mesh
        fast, full = world.rebuild()
        gen.rule_change(before, fast)
        if derived(fast):
            assert gen.rule_change(before, fast) is None, what  # an endpoint change: nothing carried
        else:
            scopes = before.indexes[sidecar_scope._SCOPES]
            assert fast.indexes[sidecar_scope._SCOPES] is scopes and scopes, f"{what}: the scopes were not kept"
            assert fast.indexes.get(dep._KIND_DIGESTS) is not None, f"{what}: the kinds' digests were not kept"
            assert fast.indexes.get(dep._KIND_DIGESTS) != before.indexes.get(dep._KIND_DIGESTS), what
        assert keys(gen, fast, world.proxies) == keys(Generator(), full, world.proxies), what
        assert every_fact(fast, world.proxies) == every_fact(full, world.proxies), what
        assert [fast.sidecar_scope(p) for p in world.proxies] == [full.sidecar_scope(p) for p in world.proxies], what


def test_what_reads_no_endpoint_is_shared_along_derived_snapshots(world):
    """The CONFIG tables are the previous snapshot's own: filled by either snapshot, in
    either order, for the whole chain of snapshots derived by EndpointSlice changes."""
    first = world.mesh
    world.write("endpoints/svc-1.yaml", SCENARIO.endpoints_yaml(1, 4))
    second, _ = world.rebuild()
    world.write("endpoints/svc-2.yaml", SCENARIO.endpoints_yaml(2, 4))
    third, _ = world.rebuild()
    assert dep.host_rules(first) is dep.host_rules(third)  # filled after the derivations
    assert dep.security(third, world.proxies[0]) is dep.security(second, world.proxies[0])
    assert dep.host_endpoints(second) is not dep.host_endpoints(third)


def versions(rs) -> tuple:
    return rs.version, {name: rs[name].version for name in rs}


def test_generated_output_equals_a_full_builds(world):
    gen = Generator()
    for p in world.proxies:
        for t in gen.types():
            gen.generate(world.mesh, p, t)
    for what, edits in STEPS:
        for rel, text in edits:
            world.write(rel, text)
        fast, full = world.rebuild()
        fresh = Generator()
        for p in world.proxies:
            for t in gen.types():
                assert versions(gen.generate(fast, p, t)) == versions(fresh.generate(full, p, t)), (what, p.id, t)


def test_carried_over_indexes_do_not_keep_the_previous_snapshot_alive(world):
    import gc
    import weakref

    keys(Generator(), world.mesh, world.proxies)
    old = weakref.ref(world.mesh)
    world.write("endpoints/svc-1.yaml", SCENARIO.endpoints_yaml(1, 4))
    fast, _ = world.rebuild()
    keys(Generator(), fast, world.proxies)
    world.previous = None
    gc.collect()
    assert old() is None


class RecordingAds:
    def __init__(self):
        self.meshes: list[MeshSnapshot] = []

    def update(self, mesh, reason="config") -> int:
        self.meshes.append(mesh)
        return 0


def test_mesh_builder_passes_every_key_since_the_last_build_and_goes_full_after_a_failure(world, monkeypatch):
    from controlplane import app

    builder = app.MeshBuilder(world.store, RecordingAds(), debounce_after=0.1)
    builder.rebuild("initial load")
    assert not derived(builder.mesh)
    world.write("endpoints/svc-1.yaml", SCENARIO.endpoints_yaml(1, 2))
    builder._changed.clear()  # a debounce window ends without a build: the keys stay
    world.write("endpoints/svc-2.yaml", None)
    builder.rebuild("endpoint change")
    assert derived(builder.mesh)
    assert_same_mesh(builder.mesh, build_mesh(world.store.snapshot()))

    def broken(*args, **kwargs):
        raise RuntimeError("boom")

    good = builder.mesh
    world.write("endpoints/svc-3.yaml", SCENARIO.endpoints_yaml(3, 2))
    monkeypatch.setattr(app, "build_mesh", broken)
    builder.rebuild("endpoint change")
    assert builder.mesh is good
    monkeypatch.undo()
    world.write("endpoints/svc-5.yaml", SCENARIO.endpoints_yaml(5, 2))
    builder.rebuild("endpoint change")
    assert not derived(builder.mesh)  # full after the failure
    assert_same_mesh(builder.mesh, build_mesh(world.store.snapshot()))
    world.write("endpoints/svc-6.yaml", SCENARIO.endpoints_yaml(6, 2))
    builder.rebuild("endpoint change")
    assert derived(builder.mesh)
    assert_same_mesh(builder.mesh, build_mesh(world.store.snapshot()))
