"""What a proxy sees (model/sidecar_scope.py, istiod's SidecarScope), what the generators
make of it, and that the push engine follows it: a change outside a proxy's scope
changes none of its keys, so it is pushed nothing."""
from __future__ import annotations

from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_pb2
from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2

from controlplane import names
from controlplane.generators import Generator, builders
from controlplane.model.meshconfig import MeshConfig
from controlplane.model.proxy import parse_node
from tests.support import chapter9
from tests.support.ads import run
from tests.support.ads_server import Harness
from tests.support.configs import mesh_from_yaml
from tests.support.mesh_changes import CART_1, CART_2, FRONT_1, GATEWAY, Change, World, everything

TYPES = (names.CLUSTER, names.ENDPOINT, names.LISTENER, names.ROUTE)
FRONT = "front.web.svc.cluster.local"
CART = "cart.shop.svc.cluster.local"
DB = "db.shop.svc.cluster.local"


def _world(**slots: int | None) -> World:
    state = everything()
    for slot, variant in slots.items():
        key = slot.replace("__", "/")
        if variant is None:
            state.pop(key, None)
        else:
            state[key] = variant
    return World(state)


def hosts(world: World, proxy) -> set[str]:
    return set(world.mesh.sidecar_scope(proxy).services)


def cluster_names(mesh, proxy) -> set[str]:
    return {name for name, _ in builders()[names.CLUSTER](mesh, proxy)}


# --- the model: which Sidecar, which services ----------------------------------------------

def test_without_a_sidecar_a_proxy_sees_every_service_exported_to_its_namespace():
    world = _world(**{"sidecar__shop__default": None, "sidecar__shop__cart": None, "sidecar__istio-system__default": None})
    scope = world.mesh.sidecar_scope(CART_1)
    assert scope.sidecar is None and scope.name == "default-sidecar"
    assert {FRONT, CART, DB} <= set(scope.services)
    # front exported to its own namespace only (networking.istio.io/exportTo: ".")
    world.apply([Change("service/web/front", 2)])
    assert FRONT not in hosts(world, CART_1) and FRONT in hosts(world, FRONT_1)
    assert f"outbound|80||{FRONT}" not in cluster_names(world.mesh, CART_1)


def test_egress_hosts_import_namespaces_and_hosts_as_istio_reads_them():
    world = _world(**{"sidecar__shop__cart": None, "sidecar__shop__default": 1})  # ./* and istio-system/*
    seen = hosts(world, CART_1)
    assert CART in seen and DB in seen and FRONT not in seen
    assert all(h.endswith(("shop.svc.cluster.local", "istio-system.svc.cluster.local")) or "." not in h[:-1]
               for h in seen if h.endswith(".svc.cluster.local"))
    # The root namespace's default applies where a namespace has none: web (front-1).
    world.apply([Change("sidecar/istio-system/default", 1)])  # ./*, istio-system/*, REGISTRY_ONLY
    front_scope = world.mesh.sidecar_scope(FRONT_1)
    assert front_scope.sidecar.namespace == "istio-system" and front_scope.namespace == "web"
    assert FRONT in front_scope.services and CART not in front_scope.services
    assert front_scope.registry_only
    # `~/*` imports nothing.
    world.apply([Change("sidecar/shop/default", 4)])
    assert hosts(world, CART_1) == set()


def test_a_selector_sidecar_wins_over_the_namespace_default_for_the_workloads_it_selects():
    world = _world(**{"sidecar__shop__default": 1, "sidecar__shop__cart": 1})  # cart v2: web/front only
    assert world.mesh.sidecar_scope(CART_2).name == "cart"
    assert hosts(world, CART_2) == {FRONT}
    assert world.mesh.sidecar_scope(CART_1).name == "default"  # v1: not selected
    assert FRONT not in hosts(world, CART_1)


def test_a_port_listener_narrows_its_services_to_its_port_and_the_virtual_services_it_names():
    world = _world(**{"sidecar__shop__cart": None, "sidecar__shop__default": 3})  # 80/HTTP: web/*; ./*
    scope = world.mesh.sidecar_scope(CART_1)
    port80, catch_all = scope.egress
    assert port80.port == 80 and FRONT in {s.hostname for s in port80.services}
    assert {s.namespace for s in port80.services} == {"web"}
    assert all(len(s.ports) == 1 and s.ports[0].port == 80 for s in port80.services)
    assert scope.egress_for(80) is port80 and scope.egress_for(9000) is catch_all
    # the shop VirtualService for `cart` is imported by the catch-all (./*) only
    assert [vs.name for vs in catch_all.virtual_services] == ["cart"] and not port80.virtual_services


def test_virtual_services_follow_export_to_and_bring_their_destinations():
    world = _world(**{"sidecar__shop__default": None, "sidecar__shop__cart": None,
                      "sidecar__istio-system__default": None})
    assert "cart" in [vs.name for vs in world.mesh.sidecar_scope(FRONT_1).virtual_services]
    world.apply([Change("virtualservice/shop/cart", 4)])  # exportTo: ["."]
    assert [vs.name for vs in world.mesh.sidecar_scope(FRONT_1).virtual_services] == []
    assert [vs.name for vs in world.mesh.sidecar_scope(CART_1).virtual_services] == ["cart"]


def test_the_mesh_config_decides_what_objects_without_export_to_and_sidecars_without_a_policy_do():
    yaml_text = chapter9.LAYOUT
    mc = MeshConfig(default_service_export_to=(".",), default_virtual_service_export_to=(".",),
                    outbound_traffic_policy="REGISTRY_ONLY")
    from controlplane.config.store import ConfigStore
    from controlplane.model.mesh import build_mesh
    from tests.support.configs import objects_from_yaml

    store = ConfigStore()
    store.replace_location("layout", objects_from_yaml(yaml_text, "layout"))
    mesh = build_mesh(store.snapshot(), mesh_config=mc)
    sleep = mesh.sidecar_scope(chapter9.SLEEP_PROXY)
    assert sleep.registry_only
    assert all(svc.namespace == "default" for svc in sleep.services.values())
    webapp = mesh.sidecar_scope(chapter9.WEBAPP_PROXY)
    assert chapter9.CATALOG_HOST in webapp.services


# --- generators ---------------------------------------------------------------------------

def _listener(mesh, proxy, name) -> listener_pb2.Listener:
    return dict(builders()[names.LISTENER](mesh, proxy))[name]


def _catch_all_cluster(lst: listener_pb2.Listener) -> str:
    chain = next(c for c in lst.filter_chains if c.name == "virtualOutbound-catchall-tcp")
    tcp = tcp_proxy_pb2.TcpProxy()
    chain.filters[0].typed_config.Unpack(tcp)
    return tcp.cluster


def test_registry_only_sends_unknown_hosts_to_the_blackhole_and_http_to_a_502():
    world = _world(**{"sidecar__shop__cart": None, "sidecar__shop__default": 2})  # ./*, REGISTRY_ONLY
    mesh = world.mesh
    assert _catch_all_cluster(_listener(mesh, CART_1, "virtualOutbound")) == names.BLACKHOLE_CLUSTER
    routes = dict(builders()[names.ROUTE](mesh, CART_1))
    rc: route_pb2.RouteConfiguration = routes["80"]
    last = rc.virtual_hosts[-1]
    assert last.name == "block_all" and list(last.domains) == ["*"]
    assert last.routes[0].direct_response.status == 502
    assert not any(vh.name.startswith(FRONT) for vh in rc.virtual_hosts)
    # Front (no Sidecar of its own, the root default imports all): ALLOW_ANY
    assert _catch_all_cluster(_listener(mesh, FRONT_1, "virtualOutbound")) == names.PASSTHROUGH_CLUSTER
    assert dict(builders()[names.ROUTE](mesh, FRONT_1))["80"].virtual_hosts[-1].name == "allow_any"


def test_an_egress_proxy_takes_what_is_unknown():
    world = _world(**{"sidecar__shop__cart": None, "sidecar__shop__default": 4})
    egress = f"outbound|80||{FRONT}"
    assert _catch_all_cluster(_listener(world.mesh, CART_1, "virtualOutbound")) == egress


def test_clusters_listeners_and_routes_hold_only_the_scope():
    world = _world(**{"sidecar__shop__cart": None, "sidecar__shop__default": 1})
    mesh = world.mesh
    assert not any(n.endswith(FRONT) for n in cluster_names(mesh, CART_1))
    assert any(n.endswith(FRONT) for n in cluster_names(mesh, FRONT_1))
    assert any(n.endswith(CART) for n in cluster_names(mesh, CART_1))
    # the gateway never takes a Sidecar
    assert any(n.endswith(FRONT) for n in cluster_names(mesh, GATEWAY))


def test_ingress_listeners_replace_the_inbound_side():
    from envoy.config.cluster.v3 import cluster_pb2

    world = _world(**{"sidecar__shop__cart": 2, "peerauthentication__shop__cart": None})  # no portLevelMtls 8080
    mesh = world.mesh
    clusters = dict(builders()[names.CLUSTER](mesh, CART_1))
    inbound = {n: c for n, c in clusters.items() if n.startswith("inbound|")}
    assert set(inbound) == {"inbound|9090||", "inbound|9091||"}  # not the Service's 8080
    http = inbound["inbound|9090||"]
    assert http.type == cluster_pb2.Cluster.STATIC
    addr = http.load_assignment.endpoints[0].lb_endpoints[0].endpoint.address.socket_address
    assert (addr.address, addr.port_value) == ("127.0.0.1", 8080)
    own = inbound["inbound|9091||"].load_assignment.endpoints[0].lb_endpoints[0].endpoint.address.socket_address
    assert (own.address, own.port_value) == (CART_1.ip, 7070)
    vin = _listener(mesh, CART_1, "virtualInbound")
    ports = {c.filter_chain_match.destination_port.value for c in vin.filter_chains}
    assert {9090, 9091} <= ports and 8080 not in ports
    # the replica that Sidecar does not select keeps the Service's port
    world.apply([Change("sidecar/shop/cart", 1)])
    assert "inbound|8080||" in dict(builders()[names.CLUSTER](world.mesh, CART_1))


# --- the push engine ------------------------------------------------------------------------

def keys(gen: Generator, mesh, proxy) -> dict[str, tuple]:
    return {t: gen.key(mesh, proxy, t) for t in TYPES}


def test_a_change_outside_a_proxys_scope_changes_none_of_its_keys():
    world = _world(**{"sidecar__shop__cart": None, "sidecar__shop__default": 1})  # shop sees shop, istio-system
    gen = Generator()
    before_cart, before_front = keys(gen, world.mesh, CART_1), keys(gen, world.mesh, FRONT_1)
    for t in TYPES:
        gen.generate(world.mesh, CART_1, t)
    built = gen.builds
    world.apply([Change("service/web/front", 1)])  # a port more on web's front
    assert keys(gen, world.mesh, CART_1) == before_cart
    after_front = keys(gen, world.mesh, FRONT_1)
    assert after_front[names.CLUSTER] != before_front[names.CLUSTER]
    for t in TYPES:
        gen.generate(world.mesh, CART_1, t)
    assert gen.builds == built  # served from the cache: nothing to build, nothing to push
    # the same change seen by a proxy whose scope holds front: new keys
    world.apply([Change("sidecar/shop/default", 0)])
    moved = keys(gen, world.mesh, CART_1)
    world.apply([Change("service/web/front", 0)])
    assert keys(gen, world.mesh, CART_1)[names.CLUSTER] != moved[names.CLUSTER]


def test_a_destination_rule_for_a_host_outside_the_scope_changes_none_of_its_keys():
    world = _world(**{"sidecar__shop__cart": None, "sidecar__shop__default": 4,  # ~/*: shop sees nothing
                      "destinationrule__istio-system__wildcard": None})
    gen = Generator()
    before = keys(gen, world.mesh, CART_1)
    world.apply([Change("destinationrule/shop/cart", 1)])  # cart's connection pool
    assert keys(gen, world.mesh, CART_1) == before
    assert keys(gen, world.mesh, FRONT_1)[names.CLUSTER] != keys(gen, _world(**{
        "sidecar__shop__cart": None, "sidecar__shop__default": 4,
        "destinationrule__istio-system__wildcard": None}).mesh, FRONT_1)[names.CLUSTER]


def test_a_virtual_service_hidden_by_export_to_leaves_other_namespaces_alone():
    world = _world(**{"sidecar__shop__default": None, "sidecar__shop__cart": None,
                      "sidecar__istio-system__default": None, "virtualservice__shop__cart": 4})  # exportTo "."
    gen = Generator()
    before = keys(gen, world.mesh, FRONT_1)
    world.apply([Change("virtualservice/shop/cart", None)])
    assert keys(gen, world.mesh, FRONT_1) == before
    assert keys(gen, world.mesh, CART_1)[names.ROUTE] != keys(gen, _world(**{
        "sidecar__shop__default": None, "sidecar__shop__cart": None, "sidecar__istio-system__default": None,
        "virtualservice__shop__cart": 4}).mesh, CART_1)[names.ROUTE]


HIDE_ISTIOINACTION = """
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {name: default, namespace: default}
spec:
  egress: [{hosts: ["./*", "istio-system/*"]}]
"""
NEW_SERVICE = f"""
apiVersion: v1
kind: Service
metadata: {{name: reviews, namespace: {chapter9.NS}}}
spec:
  clusterIP: 10.96.9.9
  selector: {{app: reviews}}
  ports: [{{name: http, port: 9080}}]
"""
SIDECAR_NODE = (f"sidecar~10.1.0.10~webapp-1.{chapter9.NS}~{chapter9.NS}.svc.cluster.local",
                {"NAMESPACE": chapter9.NS, "LABELS": {"app": "webapp", "security.istio.io/tlsMode": "istio"},
                 "SERVICE_ACCOUNT": "webapp", "INTERCEPTION_MODE": "REDIRECT"})
SLEEP_NODE = ("sidecar~10.1.0.20~sleep-1.default~default.svc.cluster.local",
              {"NAMESPACE": "default", "LABELS": {"app": "sleep"}})


def test_the_server_pushes_a_change_outside_a_scope_to_nobody_who_cannot_see_it():
    async def main():
        async with Harness(Generator()) as s:
            s.ads.update(chapter9.mesh(HIDE_ISTIOINACTION))
            webapp, sleep = s.sotw(*SIDECAR_NODE), s.sotw(*SLEEP_NODE)
            await webapp.sync([chapter9.CATALOG])
            await sleep.sync([])
            queued = s.ads.update(chapter9.mesh(HIDE_ISTIOINACTION, NEW_SERVICE))
            assert queued == 1  # webapp only: sleep does not see istioinaction
            cds = await webapp.recv()
            assert cds.type_url == names.CLUSTER
            await sleep.route_barrier()  # nothing arrived for sleep

    run(main())


def test_sleep_sees_only_its_scope_in_every_type():
    mesh = chapter9.mesh(HIDE_ISTIOINACTION)
    sleep = parse_node(*SLEEP_NODE)
    assert not any(chapter9.NS in n for n in cluster_names(mesh, sleep))
    vhosts = [vh.name for _, rc in builders()[names.ROUTE](mesh, sleep) for vh in rc.virtual_hosts]
    assert vhosts and all(chapter9.NS not in vh for vh in vhosts)


def test_mesh_from_yaml_accepts_a_sidecar():
    mesh = mesh_from_yaml(HIDE_ISTIOINACTION)
    assert [s.name for s in mesh.config.of_kind("Sidecar")] == ["default"]
