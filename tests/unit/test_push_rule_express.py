"""The express path of a DestinationRule change (generators/express.py rule_change,
AdsServer.update), with one Sidecar per namespace as the benchmark's --sidecar-scope:

- a rule change is pushed to the sidecars that see its host and to the gateways, and no
  other proxy is even compared (SotW and delta);
- over a walk of rule changes, every sidecar the express path passes over has the same
  output of every type under the new snapshot, and the ones it reaches include every
  sidecar whose CDS changed;
- a change that reaches beyond the host's viewers (what routes read of a rule, a
  workload selector, a wildcard host, another kind changing too) takes the ordinary path.
"""
from __future__ import annotations

from pathlib import Path

import pytest
from envoy.config.cluster.v3 import cluster_pb2

from bench.scenario import HTTP_PORT, Scenario
from controlplane import names
from controlplane.config.store import ConfigStore
from controlplane.generators import Generator
from controlplane.generators.express import rule_change
from controlplane.model.mesh import MeshSnapshot, build_mesh
from controlplane.model.proxy import Proxy
from controlplane.sources.directory import DirectorySource, read_file
from tests.support.ads import by_name, eventually, names_of, run
from tests.support.ads_server import Harness

SCENARIO = Scenario(services=12, sidecars=12, gateways=1, namespaces=3, routed_fraction=0.5, sidecar_scope=True)


def host(i: int) -> str:
    return f"{SCENARIO.service_name(i)}.{SCENARIO.namespace_of(i)}.svc.cluster.local"


def cluster(i: int, subset: str = "") -> str:
    return f"outbound|{HTTP_PORT}|{subset}|{host(i)}"


class World:
    """The scenario in a directory, loaded into a store as the directory source does."""

    def __init__(self, root: Path):
        self.root = root
        SCENARIO.write(root)
        self.store = ConfigStore()
        DirectorySource(root, self.store).load()
        self.mesh = build_mesh(self.store.snapshot())

    def write(self, rel: str, text: str) -> MeshSnapshot:
        """Replace one file's objects and build the next snapshot (a full build: the
        DestinationRule change is not build_mesh's endpoint fast path)."""
        path = self.root / rel
        path.write_text(text)
        result = read_file(str(path))
        self.store.replace_location(result.location, [p for p in result.parsed if p is not None])
        self.mesh = build_mesh(self.store.snapshot())
        return self.mesh

    def rule(self, i: int, generation: int) -> MeshSnapshot:
        """Rewrite service `i`'s rules file: the VirtualService as it was, the
        DestinationRule's connection pool changed."""
        return self.write(f"rules/{SCENARIO.service_name(i)}.yaml", SCENARIO.rules_yaml(i, generation))


@pytest.fixture
def world(tmp_path):
    return World(tmp_path)


def routed() -> list[int]:
    return [i for i in range(SCENARIO.services) if SCENARIO.routed(i)]


def proxies() -> list[Proxy]:
    return [Proxy(id=s.node_id, type=s.kind, ip=s.ip, pod=s.pod, namespace=s.namespace, labels=dict(s.labels))
            for s in SCENARIO.proxies()]


def test_a_rule_change_reaches_the_sidecars_that_see_its_host_and_the_gateways(world):
    i = routed()[0]
    before = world.mesh
    change = rule_change(before, world.rule(i, 1))
    assert change is not None and change.hosts == {host(i)}
    reached = {p.id for p in proxies() if change.reaches(p)}
    expected = {s.node_id for s in SCENARIO.proxies() if s.kind == "router" or s.namespace == SCENARIO.namespace_of(i)}
    assert reached == expected
    assert len(reached) == SCENARIO.seeing(i)


def test_the_express_path_passes_over_exactly_proxies_whose_output_is_unchanged(world):
    """Against the generator's own keys and output over a walk of rule changes."""
    gen = Generator()
    types = [t for t in names.PUSH_ORDER if t in gen.types() and t != names.SECRET]
    steps = [(i, g) for g in (1, 2) for i in routed()]
    for i, generation in steps:
        before = world.mesh
        after = world.rule(i, generation)
        change = gen.rule_change(before, after)  # what the scopes hold, carried along the walk
        assert change is not None and change.hosts == {host(i)}
        for p in proxies():
            old_cds, new_cds = gen.generate(before, p, names.CLUSTER), gen.generate(after, p, names.CLUSTER)
            cds_changed = old_cds.version != new_cds.version
            if change.reaches(p):
                # The sidecars that see the host get the rule's clusters anew.
                assert cds_changed or p.type == "router", p.id
                continue
            assert not cds_changed, p.id
            for t in types:
                assert gen.key(before, p, t) == gen.key(after, p, t), (p.id, t)


def test_what_scopes_hold_is_not_carried_past_a_change_of_something_else(world):
    """A new service between two rule changes: the second change, for the new host,
    reaches the sidecars of its namespace (their scopes hold it now)."""
    gen = Generator()
    i = routed()[0]
    ns = SCENARIO.namespace_of(i)

    def extra_rule(connections: int) -> str:
        return f"""apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: extra, namespace: {ns}}}
spec:
  host: extra
  trafficPolicy: {{connectionPool: {{tcp: {{maxConnections: {connections}}}}}}}
"""
    world.write("extra-rule.yaml", extra_rule(1))  # for a host that is no service yet
    before = world.mesh
    first = gen.rule_change(before, world.rule(i, 1))
    assert first is not None
    assert {p.id for p in proxies() if p.type == "sidecar" and first.reaches(p)} == {
        p.id for p in proxies() if p.type == "sidecar" and p.namespace == ns}
    before = world.write("extra.yaml", f"""apiVersion: v1
kind: Service
metadata: {{name: extra, namespace: {ns}}}
spec:
  selector: {{app: extra}}
  ports: [{{name: http, port: {HTTP_PORT}, targetPort: 9080}}]
""")
    assert gen.rule_change(first.mesh, before) is None  # a Service changed: the ordinary path
    change = gen.rule_change(before, world.write("extra-rule.yaml", extra_rule(2)))
    assert change is not None and change.hosts == {f"extra.{ns}.svc.cluster.local"}
    reached = {p.id for p in proxies() if p.type == "sidecar" and change.reaches(p)}
    assert reached == {p.id for p in proxies() if p.type == "sidecar" and p.namespace == ns}


def test_changes_that_reach_beyond_the_hosts_viewers_take_the_ordinary_path(world):
    i = routed()[0]
    ns, svc = SCENARIO.namespace_of(i), SCENARIO.service_name(i)
    rules = f"rules/{svc}.yaml"
    before = world.mesh
    # What routes read of a rule (consistent hash): every proxy's RDS reads DR_ROUTING.
    hashed = SCENARIO.rules_yaml(i).replace("trafficPolicy:\n", "trafficPolicy:\n    loadBalancer: {consistentHash: {httpHeaderName: x-user}}\n")
    assert rule_change(before, world.write(rules, hashed)) is None
    # A rule selecting workloads.
    before = world.mesh
    selected = SCENARIO.rules_yaml(i, 3).replace(f"spec:\n  host: {svc}\n", f"spec:\n  host: {svc}\n  workloadSelector: {{matchLabels: {{app: x}}}}\n")
    assert rule_change(before, world.write(rules, selected)) is None
    # A rule for every host of a namespace.
    before = world.mesh
    wildcard = f"""apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: all, namespace: {ns}}}
spec:
  host: "*.{ns}.svc.cluster.local"
  trafficPolicy: {{connectionPool: {{tcp: {{maxConnections: 7}}}}}}
"""
    assert rule_change(before, world.write("wildcard.yaml", wildcard)) is None
    # A rule and a VirtualService changing together.
    before = world.mesh
    both = SCENARIO.rules_yaml(i, 4).replace("weight: 90", "weight: 80").replace("weight: 10", "weight: 20")
    assert rule_change(before, world.write(rules, both)) is None
    # Back to a rule-only change: the express path again.
    before = world.mesh
    assert rule_change(before, world.write(rules, both.replace(str(100 + 4), str(100 + 5)))) is not None


@pytest.mark.parametrize("delta", [False, True])
def test_the_server_pushes_a_rule_change_to_the_sidecars_that_see_it_only(world, delta):
    i = routed()[0]
    specs = SCENARIO.proxies()
    seeing = next(s for s in specs if s.kind == "sidecar" and s.namespace == SCENARIO.namespace_of(i))
    blind = next(s for s in specs if s.kind == "sidecar" and s.namespace != SCENARIO.namespace_of(i))

    async def main():
        async with Harness(Generator()) as s:
            s.ads.update(world.mesh)
            streams = []
            for spec in (seeing, blind):
                if delta:
                    d = s.delta(spec.node_id, spec.metadata())
                    d.send(names.CLUSTER)
                    d.ack(await d.recv())
                    streams.append(d)
                else:
                    a = s.sotw(spec.node_id, spec.metadata())
                    a.send(names.CLUSTER)
                    a.ack(await a.recv())
                    streams.append(a)
            await eventually(lambda: len(s.ads.connections()) == 2)
            assert s.ads.update(world.rule(i, 1), reason="config change: DestinationRule") == 1
            cds = await streams[0].recv()
            assert cds.type_url == names.CLUSTER
            sent = by_name(cds) if delta else names_of(cds, cluster_pb2.Cluster)
            assert cluster(i, "v1") in sent
            # Nothing to the sidecar that cannot see the host: its queue was never touched.
            blind_conn = next(c for c in s.ads.connections() if c.proxy.id == blind.node_id)
            assert blind_conn.events.pending_push is None and blind_conn.mesh is world.mesh

    run(main())
