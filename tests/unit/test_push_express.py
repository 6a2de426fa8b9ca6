"""The express path of an endpoint change (generators/express.py, AdsServer.update):

- an EndpointSlice change pushes EDS only, only the changed assignment, and only to the
  proxies subscribed to it (SotW and delta), without the full key comparison;
- a sidecar at an address the change touches is still checked in full (its inbound side
  may change);
- a change that non-EDS output reads (a headless service's endpoints) takes the
  ordinary path;
- over a walk of endpoint changes, the proxies the express path leaves out are exactly
  those whose output the full key comparison finds unchanged.
"""
from __future__ import annotations

from pathlib import Path

import pytest
from envoy.config.endpoint.v3 import endpoint_pb2

from bench.scenario import HTTP_PORT, Scenario
from controlplane import names
from controlplane.config.store import ConfigStore
from controlplane.generators import Generator
from controlplane.generators.express import endpoint_change
from controlplane.model.mesh import MeshSnapshot, build_mesh
from controlplane.model.proxy import Proxy
from controlplane.sources.directory import DirectorySource, read_file
from tests.support.ads import by_name, eventually, names_of, run
from tests.support.ads_server import Harness

SCENARIO = Scenario(services=12, sidecars=12, gateways=1, namespaces=3)

HEADLESS = """apiVersion: v1
kind: Service
metadata: {name: db, namespace: ns-0}
spec:
  clusterIP: None
  selector: {app: db}
  ports: [{name: tcp, port: 5432, targetPort: 5432}]
"""


def headless_slice(*addresses: str) -> str:
    eps = "\n".join(f'- addresses: ["{a}"]\n  conditions: {{ready: true}}' for a in addresses)
    return f"""apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: db-x, namespace: ns-0, labels: {{kubernetes.io/service-name: db}}}}
addressType: IPv4
ports: [{{name: tcp, port: 5432, protocol: TCP}}]
endpoints:
{eps}
"""


def cluster(i: int) -> str:
    return f"outbound|{HTTP_PORT}||{SCENARIO.service_name(i)}.{SCENARIO.namespace_of(i)}.svc.cluster.local"


class World:
    """The scenario in a directory, loaded into a store as the directory source does;
    `rebuild` makes the next snapshot the way meshd does (build_mesh's fast path)."""

    def __init__(self, root: Path):
        self.root = root
        SCENARIO.write(root)
        (root / "db.yaml").write_text(HEADLESS)
        (root / "endpoints" / "db.yaml").write_text(headless_slice("10.9.0.1"))
        self.store = ConfigStore()
        DirectorySource(root, self.store).load()
        self.changed: set = set()
        self.store.subscribe(lambda _snap, keys: self.changed.update(keys))
        self.mesh = build_mesh(self.store.snapshot())

    def write(self, rel: str, text: str) -> None:
        path = self.root / rel
        path.write_text(text)
        result = read_file(str(path))
        self.store.replace_location(result.location, [p for p in result.parsed if p is not None])

    def endpoints(self, i: int, generation: int) -> None:
        self.write(f"endpoints/{SCENARIO.service_name(i)}.yaml", SCENARIO.endpoints_yaml(i, generation))

    def rebuild(self) -> MeshSnapshot:
        self.mesh = build_mesh(self.store.snapshot(), previous=self.mesh, changed=frozenset(self.changed))
        self.changed.clear()
        return self.mesh


@pytest.fixture
def world(tmp_path):
    return World(tmp_path)


def node(spec) -> tuple[str, dict]:
    return spec.node_id, spec.metadata()


def cla_names(resp) -> list[str]:
    return sorted(names_of(resp, endpoint_pb2.ClusterLoadAssignment))


def test_an_endpoint_change_pushes_eds_only_to_its_subscribers_by_the_express_path(world):
    specs = SCENARIO.proxies()
    changed = 4  # svc-4 in ns-1; its pods are sidecars 8 and 9
    subscriber, other, at_address = specs[0], specs[2], specs[8]

    async def main():
        async with Harness(Generator()) as s:
            s.ads.update(world.mesh)
            a, b, c = s.sotw(*node(subscriber)), s.sotw(*node(other)), s.sotw(*node(at_address))
            await a.sync([cluster(changed), cluster(1)])
            await b.sync([cluster(1), cluster(2)])  # not subscribed to svc-4's assignment
            await c.sync([cluster(changed)])
            await eventually(lambda: len(s.ads.connections()) == 3)
            world.endpoints(changed, 1)  # one more endpoint of svc-4
            queued = s.ads.update(world.rebuild(), reason="endpoint change")
            assert s.ads.express
            assert queued == 2  # the two subscribers; the one at svc-4's address was checked in full
            eds = await a.recv()
            assert eds.type_url == names.ENDPOINT and cla_names(eds) == [cluster(changed)]
            a.ack(eds, [cluster(changed), cluster(1)])
            eds = await c.recv()
            assert eds.type_url == names.ENDPOINT and cla_names(eds) == [cluster(changed)]
            c.ack(eds, [cluster(changed)])
            for stream in (a, b, c):
                await stream.route_barrier()  # no CDS, LDS or RDS to anyone, nothing to b

    run(main())


def test_an_endpoint_change_over_delta_takes_the_express_path(world):
    async def main():
        async with Harness(Generator()) as s:
            s.ads.update(world.mesh)
            d = s.delta(*node(SCENARIO.proxies()[0]))
            d.send(names.CLUSTER)
            d.ack(await d.recv())
            d.send(names.ENDPOINT, subscribe=[cluster(4), cluster(1)])
            d.ack(await d.recv())
            world.endpoints(4, 1)
            assert s.ads.update(world.rebuild()) == 1
            assert s.ads.express
            resp = await d.recv()
            assert resp.type_url == names.ENDPOINT and list(by_name(resp)) == [cluster(4)]
            assert not resp.removed_resources

    run(main())


def test_a_change_that_listeners_read_takes_the_ordinary_path(world):
    """A headless service's endpoints are read by outbound listeners (ENDPOINT_FACTS)."""
    world.rebuild()
    previous = world.mesh
    world.write("endpoints/db.yaml", headless_slice("10.9.0.1", "10.9.0.2"))
    assert endpoint_change(previous, world.rebuild()) is None


def test_the_express_path_leaves_out_exactly_the_proxies_whose_output_is_unchanged(world):
    """Against the full key comparison over a walk of endpoint changes: a proxy the express
    path does not push (not at a changed address, not subscribed to a changed host) has
    the same output of every type; one it pushes EDS to has every other type unchanged."""
    gen = Generator()
    specs = SCENARIO.proxies()
    proxies = [Proxy(id=s.node_id, type=s.kind, ip=s.ip, pod=s.pod, namespace=s.namespace, labels=dict(s.labels))
               for s in specs]
    types = [t for t in names.PUSH_ORDER if t in gen.types() and t != names.SECRET]
    steps = [(4, 1), (4, 2), (0, 1), (7, 1), (4, 0), (11, 3)]
    expressed = 0
    for i, generation in steps:
        before = world.mesh
        world.endpoints(i, generation)
        after = world.rebuild()
        change = endpoint_change(before, after)
        if change is None:
            continue
        expressed += 1
        assert change.hosts == {f"{SCENARIO.service_name(i)}.{SCENARIO.namespace_of(i)}.svc.cluster.local"}
        for p in proxies:
            if p.ip in change.addresses:
                continue  # checked in full by the server
            old = {t: gen.generate(before, p, t) for t in types}
            new = {t: gen.generate(after, p, t) for t in types}
            for t in types:
                if t != names.ENDPOINT:
                    assert gen.key(before, p, t) == gen.key(after, p, t), (p.id, t)
            eds_names = frozenset(old[names.ENDPOINT].names)
            differs = {n for n in eds_names if old[names.ENDPOINT][n].version != new[names.ENDPOINT][n].version}
            assert bool(differs) == change.touches(eds_names), p.id
    assert expressed == len(steps)
