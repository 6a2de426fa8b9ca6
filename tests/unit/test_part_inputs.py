"""Every part of a proxy's output declares what it reads (generators/parts.py: its scope
and deps), and the generator cache trusts that declaration. In tracking mode
(generators/ledger.py) a part's build runs against a recording snapshot and proxy; a
read its declaration does not cover would be served stale, and fails here."""
from __future__ import annotations

import dataclasses
import inspect

import pytest
from hypothesis import HealthCheck, given, settings

from controlplane import names
from controlplane.generators import Generator, inputs
from controlplane.generators.ledger import READS, UnclassifiedRead, undeclared
from controlplane.generators.parts import Part, ResourceCache, whole
from controlplane.model.mesh import MeshSnapshot
from tests.support import chapter9
from tests.support.mesh_changes import (
    CART_1,
    FRONT_1,
    GATEWAY,
    PROXIES,
    Change,
    World,
    everything,
    initial_states,
    slots,
)


def worlds():
    """The whole mesh, then each variant of each object in it."""
    yield "everything", everything()
    for slot, variants in slots().items():
        for i in range(1, len(variants)):
            yield f"{slot}#{i}", {**everything(), slot: i}


def parts_of(gen: Generator, proxy):
    return [part for t in gen.types() for part in gen.parts(proxy, t)]


def test_every_part_reads_only_what_it_declares():
    gen = Generator()
    checked = 0
    for what, state in worlds():
        mesh = World(state).mesh
        for proxy in PROXIES:
            for part in parts_of(gen, proxy):
                assert undeclared(part, mesh, proxy, hosts=sorted(mesh.services)) == frozenset(), (what, proxy.id, part.name)
                checked += 1
    assert checked > 1000


def test_every_part_reads_only_what_it_declares_in_the_chapter_9_meshes(tmp_path):
    gen = Generator()
    meshes = [chapter9.mesh(), chapter9.mesh(chapter9.RICH, chapter9.rich_drs(tmp_path), chapter9.TCP_SERVICES),
              chapter9.mesh(chapter9.STRICT_MESH, chapter9.endpoints_v2("10.1.0.13"))]
    proxies = (chapter9.WEBAPP_PROXY, chapter9.CATALOG_PROXY, chapter9.SLEEP_PROXY, chapter9.GATEWAY_PROXY)
    for i, mesh in enumerate(meshes):
        for proxy in proxies:
            for part in parts_of(gen, proxy):
                assert undeclared(part, mesh, proxy, hosts=sorted(mesh.services)) == frozenset(), (i, proxy.id, part.name)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(state=initial_states())
def test_every_part_reads_only_what_it_declares_in_random_meshes(state):
    gen = Generator()
    mesh = World(state).mesh
    for proxy in PROXIES:
        for part in parts_of(gen, proxy):
            assert undeclared(part, mesh, proxy, hosts=sorted(mesh.services)) == frozenset(), (state, proxy.id, part.name)


# --- the check itself can fail ------------------------------------------------------------

def _reads_virtual_services_and_labels(mesh: MeshSnapshot, proxy) -> list:
    # A listener named after the VirtualServices and the proxy's labels: reads both.
    name = "x-" + "-".join(vs.name for vs in mesh.virtual_services) + "-" + ",".join(sorted(proxy.labels))
    from envoy.config.listener.v3 import listener_pb2

    return [(name, listener_pb2.Listener(name=name))]


CARELESS = Part("test-careless", names.LISTENER, (inputs.SERVICE,), lambda mesh, proxy: (proxy.namespace,),
                whole(_reads_virtual_services_and_labels))


def test_a_build_reading_what_its_part_does_not_declare_is_caught():
    mesh = World(everything()).mesh
    assert undeclared(CARELESS, mesh, CART_1) == {inputs.VIRTUAL_SERVICE, "proxy.labels"}
    declared = dataclasses.replace(CARELESS, deps=(inputs.SERVICE, inputs.VIRTUAL_SERVICE),
                                   scope=lambda mesh, proxy: (proxy.namespace, proxy.label_key))
    assert undeclared(declared, mesh, CART_1) == frozenset()


def test_what_an_undeclared_read_costs():
    """Why the check matters: the careless part's key stays the same when a VirtualService
    goes, and for a replica with other labels, while its output does not."""
    world = World(everything())
    before = world.mesh
    after = world.apply([Change("virtualservice/shop/cart", None)])
    other = dataclasses.replace(CART_1, labels={"app": "cart"})

    def output(mesh, proxy) -> list[str]:
        return [r.name for r in CARELESS.build(mesh, proxy, CARELESS, ResourceCache())]

    assert CARELESS.key(before, CART_1) == CARELESS.key(after, CART_1)
    assert output(before, CART_1) != output(after, CART_1)  # the old listener would be served on
    assert CARELESS.key(before, CART_1) == CARELESS.key(before, other)
    assert output(before, CART_1) != output(before, other)  # the replica would get cart-1's


# Each part's deps, less one it needs: the check names what is then undeclared.
NEEDED = [
    ("sidecar-outbound-clusters", inputs.PEER_AUTHENTICATION, inputs.PEER_AUTHENTICATION),
    ("sidecar-endpoints", inputs.PEER_AUTHENTICATION, inputs.PEER_AUTHENTICATION),
    ("sidecar-routes", inputs.DR_ROUTING, inputs.DR_ROUTING),
    ("router-lds", inputs.GATEWAY, inputs.GATEWAY),
    ("router-rds", inputs.VIRTUAL_SERVICE, inputs.VIRTUAL_SERVICE),
    ("router-rds", inputs.DESTINATION_RULE, inputs.DR_ROUTING),
]


@pytest.mark.parametrize("name,left_out,caught", NEEDED, ids=[f"{n}-{d}" for n, d, _ in NEEDED])
def test_a_part_without_an_input_it_reads_is_caught(name, left_out, caught):
    gen = Generator()
    found: set[str] = set()
    for _, state in worlds():
        mesh = World(state).mesh
        for proxy in (CART_1, FRONT_1, GATEWAY):
            for part in parts_of(gen, proxy):
                if part.name == name:
                    cut = dataclasses.replace(part, deps=tuple(d for d in part.deps if d != left_out))
                    found |= undeclared(cut, mesh, proxy, hosts=sorted(mesh.services))
        if caught in found:
            return
    pytest.fail(f"{name} without {left_out}: {sorted(found)}")


# The sidecar parts read services, VirtualServices and endpoint facts (and the outbound
# clusters the DestinationRules of their hosts) through the proxy's sidecar scope (their
# `view`, dependencies.sidecar_view, seen_rules), not through SERVICE, VIRTUAL_SERVICE,
# ENDPOINT_FACTS and DESTINATION_RULE.
VIEWED = ["sidecar-outbound-clusters", "sidecar-endpoints", "sidecar-outbound-listeners", "sidecar-routes"]


@pytest.mark.parametrize("name", VIEWED)
def test_a_part_without_its_view_of_the_mesh_is_caught(name):
    gen = Generator()
    mesh = World(everything()).mesh
    found: set[str] = set()
    for proxy in (CART_1, FRONT_1):
        for part in parts_of(gen, proxy):
            if part.name == name:
                assert part.view is not None
                assert not {inputs.SERVICE, inputs.VIRTUAL_SERVICE, inputs.ENDPOINT_FACTS,
                            inputs.DESTINATION_RULE} & set(part.deps)
                found |= undeclared(dataclasses.replace(part, view=None), mesh, proxy, hosts=sorted(mesh.services))
    assert inputs.SIDECAR_SCOPE in found, sorted(found)
    if name in ("sidecar-outbound-clusters", "sidecar-endpoints"):
        assert inputs.DR_ROUTING in found, sorted(found)


def test_every_field_and_lookup_of_the_snapshot_says_what_it_reads():
    fields = {f.name for f in dataclasses.fields(MeshSnapshot)} - {"indexes"}
    lookups = {n for n, v in vars(MeshSnapshot).items() if inspect.isfunction(v) and not n.startswith("__")}
    assert fields | lookups <= READS.keys(), sorted((fields | lookups) - READS.keys())


def test_a_lookup_added_to_the_snapshot_cannot_be_read_unclassified(monkeypatch):
    monkeypatch.setattr(MeshSnapshot, "hosts", property(lambda mesh: sorted(mesh.services)), raising=False)

    def reads_hosts(mesh: MeshSnapshot, proxy) -> list:
        return [(h, None) for h in mesh.hosts]  # type: ignore[attr-defined]

    part = Part("test-new-lookup", names.LISTENER, (inputs.MESH_VERSION,), lambda mesh, proxy: (), whole(reads_hosts))
    with pytest.raises(UnclassifiedRead, match="MeshSnapshot.hosts"):
        undeclared(part, World(everything()).mesh, CART_1)
