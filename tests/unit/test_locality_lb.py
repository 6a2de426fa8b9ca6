"""Locality load balancing (DestinationRule `localityLbSetting`, generators/locality_lb.py):
endpoints grouped by their pod's locality, EDS priorities relative to the proxy's
locality when outlier detection is on, `failover`, `failoverPriority`, `distribute`
weights with CDS `locality_weighted_lb_config`, `enabled: false`, and the push cache
sharing endpoints between proxies whenever their locality cannot matter.
"""
from __future__ import annotations

import dataclasses

from envoy.config.core.v3 import base_pb2

from controlplane import names
from controlplane.bootstrap import BootstrapParams, build_bootstrap
from controlplane.generators import Generator, builders, clusters, endpoints, locality_lb
from controlplane.generators.resources import pack
from controlplane.model.locality import Locality, from_labels
from controlplane.model.proxy import parse_node
from tests.support.configs import mesh_from_yaml

NS = "shop"
HOST = f"web.{NS}.svc.cluster.local"
CLUSTER = f"outbound|80||{HOST}"

# name, ip, locality labels (as a pod carries them)
PODS = [
    ("a", "10.0.0.1", {"topology.kubernetes.io/region": "r1", "topology.kubernetes.io/zone": "z1",
                       "topology.istio.io/subzone": "s1"}),
    ("b", "10.0.0.2", {"topology.kubernetes.io/region": "r1", "topology.kubernetes.io/zone": "z1",
                       "topology.istio.io/subzone": "s2"}),
    ("c", "10.0.0.3", {"istio-locality": "r1.z2"}),
    ("d", "10.0.0.4", {"istio-locality": "r1.z2"}),
    ("e", "10.0.0.5", {"topology.kubernetes.io/region": "r2", "topology.kubernetes.io/zone": "z1"}),
    ("f", "10.0.0.6", {"topology.kubernetes.io/region": "r3", "topology.kubernetes.io/zone": "z1"}),
]


def service(pods=PODS) -> str:
    docs = [f"""apiVersion: v1
kind: Service
metadata: {{name: web, namespace: {NS}}}
spec:
  selector: {{app: web}}
  ports: [{{name: http, port: 80, targetPort: 8080}}]"""]
    for name, ip, labels in pods:
        lab = ", ".join(f"{k}: {v}" for k, v in {"app": "web", "version": "v-" + name, **labels}.items())
        docs.append(f"""apiVersion: v1
kind: Pod
metadata: {{name: web-{name}, namespace: {NS}, labels: {{{lab}}}}}
spec: {{containers: [{{name: app}}]}}
status: {{podIP: {ip}}}""")
    return "\n---\n".join(docs)


def dr(policy: str, subsets: str = "") -> str:
    return f"""apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: web, namespace: {NS}}}
spec:
  host: web
  trafficPolicy: {policy}
{subsets}"""


OUTLIER = "outlierDetection: {consecutive5xxErrors: 1, interval: 1s, baseEjectionTime: 30s}"


def mesh(*extra: str):
    return mesh_from_yaml("\n---\n".join([service(), *extra]))


def sidecar(locality: str = "", labels: dict | None = None, pod: str = "client-0", ip: str = "10.9.0.1"):
    md = {"NAMESPACE": NS, "LABELS": {"app": "client", **(labels or {})}}
    return parse_node(f"sidecar~{ip}~{pod}.{NS}~{NS}.svc.cluster.local", md, locality or None)


def cla(m, proxy, name: str = CLUSTER):
    return dict(endpoints.build(m, proxy))[name]


def cluster(m, proxy, name: str = CLUSTER):
    return dict(clusters.build(m, proxy))[name]


def localities(a) -> list[tuple[str, int, int, list[str]]]:
    """(locality, priority, weight, addresses) per LocalityLbEndpoints."""
    out = []
    for llb in a.endpoints:
        loc = str(Locality(llb.locality.region, llb.locality.zone, llb.locality.sub_zone))
        addrs = [e.endpoint.address.socket_address.address for e in llb.lb_endpoints]
        out.append((loc, llb.priority, llb.load_balancing_weight.value, addrs))
    return out


def priorities(a) -> dict[str, int]:
    return {loc: prio for loc, prio, _, _ in localities(a)}


# --- localities of endpoints and proxies -------------------------------------------------


def test_locality_from_labels():
    assert from_labels({"istio-locality": "us-east.us-east-1a.rack7"}) == Locality("us-east", "us-east-1a", "rack7")
    assert from_labels({"topology.kubernetes.io/region": "r", "topology.kubernetes.io/zone": "z",
                        "topology.istio.io/subzone": "s"}) == Locality("r", "z", "s")
    assert from_labels({"failure-domain.beta.kubernetes.io/region": "old"}) == Locality("old")
    # the explicit label wins
    assert from_labels({"istio-locality": "a.b", "topology.kubernetes.io/region": "x"}) == Locality("a", "b")
    assert not from_labels({"app": "x"})
    assert str(Locality("r1", "z1")) == "r1/z1"


def test_endpoints_are_grouped_per_locality_with_their_count_as_weight():
    a = cla(mesh(), sidecar())
    assert localities(a) == [
        ("r1/z1/s1", 0, 1, ["10.0.0.1"]),
        ("r1/z1/s2", 0, 1, ["10.0.0.2"]),
        ("r1/z2", 0, 2, ["10.0.0.3", "10.0.0.4"]),
        ("r2/z1", 0, 1, ["10.0.0.5"]),
        ("r3/z1", 0, 1, ["10.0.0.6"]),
    ]


def test_endpoints_without_locality_stay_in_one_empty_locality():
    pods = [(n, ip, {}) for n, ip, _ in PODS[:3]]
    a = cla(mesh_from_yaml(service(pods)), sidecar("r1/z1"))
    assert localities(a) == [("", 0, 3, ["10.0.0.1", "10.0.0.2", "10.0.0.3"])]
    assert a.endpoints[0].HasField("locality")


def test_proxy_locality_from_its_labels_else_from_the_node():
    assert sidecar("r9/z9/s9").locality == Locality("r9", "z9", "s9")
    assert sidecar("r9/z9", {"istio-locality": "r1.z1"}).locality == Locality("r1", "z1")
    p = parse_node(f"router~10.0.0.9~gw-0.{NS}~{NS}.svc.cluster.local", {},
                   base_pb2.Locality(region="r2", zone="z2", sub_zone="s2"))
    assert p.locality == Locality("r2", "z2", "s2")
    assert parse_node(f"router~10.0.0.9~gw-0.{NS}~{NS}.svc.cluster.local", {}).locality == Locality()


def test_bootstrap_locality_flag_sets_the_node_locality():
    doc = build_bootstrap(BootstrapParams(proxy_type="router", namespace="istio-system", pod="gw-0",
                                          ip="127.0.0.1", xds_address="127.0.0.1:15010", locality="r1/z1/s1"))
    assert doc["node"]["locality"] == {"region": "r1", "zone": "z1", "sub_zone": "s1"}
    doc = build_bootstrap(BootstrapParams(proxy_type="router", namespace="istio-system", pod="gw-0",
                                          ip="127.0.0.1", xds_address="127.0.0.1:15010"))
    assert "locality" not in doc["node"]


# --- failover priorities ---------------------------------------------------------------


def test_without_outlier_detection_every_locality_keeps_priority_0():
    for m in (mesh(), mesh(dr("{loadBalancer: {simple: ROUND_ROBIN}}")),
              mesh(dr("{loadBalancer: {localityLbSetting: {enabled: true}}}"))):
        a = cla(m, sidecar("r1/z1/s1"))
        assert set(priorities(a).values()) == {0}
        assert not cluster(m, sidecar("r1/z1/s1")).common_lb_config.HasField("locality_weighted_lb_config")


def test_outlier_detection_turns_on_the_mesh_default_failover():
    m = mesh(dr("{" + OUTLIER + "}"))
    a = cla(m, sidecar("r1/z1/s1"))
    assert priorities(a) == {"r1/z1/s1": 0, "r1/z1/s2": 1, "r1/z2": 2, "r2/z1": 3, "r3/z1": 3}
    # relative to the proxy: from r2 its own region first, then the others
    assert priorities(cla(m, sidecar("r2/z1"))) == {"r1/z1/s1": 1, "r1/z1/s2": 1, "r1/z2": 1, "r2/z1": 0, "r3/z1": 1}
    # priorities have no gaps: a proxy in r1/z2 (no subzone) sees r1/z2 at 0, r1/z1/* at 1 (same region)
    assert priorities(cla(m, sidecar("r1/z2"))) == {"r1/z1/s1": 1, "r1/z1/s2": 1, "r1/z2": 0, "r2/z1": 2, "r3/z1": 2}
    # weights stay the endpoint counts; CDS needs no locality weights for plain failover
    assert [w for _, _, w, _ in localities(a)] == [1, 1, 2, 1, 1]
    assert not cluster(m, sidecar("r1/z1/s1")).common_lb_config.HasField("locality_weighted_lb_config")


def test_an_empty_outlier_detection_counts_as_configured():
    m = mesh(dr("{outlierDetection: {}}"))
    assert priorities(cla(m, sidecar("r2/z1")))["r2/z1"] == 0
    assert cluster(m, sidecar("r2/z1")).HasField("outlier_detection")  # Envoy's defaults apply


def test_failover_to_a_chosen_region():
    m = mesh(dr("{" + OUTLIER + ", loadBalancer: {localityLbSetting: {failover: [{from: r1, to: r3}]}}}"))
    assert priorities(cla(m, sidecar("r1/z1/s1"))) == {"r1/z1/s1": 0, "r1/z1/s2": 1, "r1/z2": 2, "r3/z1": 3, "r2/z1": 4}
    # the entry is for proxies in r1 only
    assert priorities(cla(m, sidecar("r2/z1"))) == {"r1/z1/s1": 1, "r1/z1/s2": 1, "r1/z2": 1, "r2/z1": 0, "r3/z1": 1}
    assert cluster(m, sidecar("r1/z1/s1")).common_lb_config.HasField("locality_weighted_lb_config")


def test_enabled_false_turns_it_off():
    m = mesh(dr("{" + OUTLIER + ", loadBalancer: {localityLbSetting: {enabled: false, failover: [{from: r1, to: r3}]}}}"))
    assert set(priorities(cla(m, sidecar("r1/z1/s1"))).values()) == {0}
    assert not cluster(m, sidecar("r1/z1/s1")).common_lb_config.HasField("locality_weighted_lb_config")


def test_a_subset_policy_replaces_the_load_balancer_but_inherits_outlier_detection():
    subsets = "  subsets:\n  - {name: all, trafficPolicy: {loadBalancer: {localityLbSetting: {enabled: false}}}}\n"
    m = mesh(dr("{" + OUTLIER + "}", subsets))
    p = sidecar("r1/z1/s1")
    assert priorities(cla(m, p))["r2/z1"] == 3
    assert set(priorities(cla(m, p, f"outbound|80|all|{HOST}")).values()) == {0}


def test_failover_priority_splits_localities_by_matching_labels():
    policy = "{" + OUTLIER + ", loadBalancer: {localityLbSetting: {failoverPriority: [topology.kubernetes.io/region, version]}}}"
    m = mesh(dr(policy))
    # a proxy in r1 whose version label matches pod c: c first, then the rest of r1, then r2/r3
    a = cla(m, sidecar("r1/z9", {"version": "v-c"}))
    assert localities(a) == [
        ("r1/z1/s1", 1, 1, ["10.0.0.1"]),
        ("r1/z1/s2", 1, 1, ["10.0.0.2"]),
        ("r1/z2", 0, 1, ["10.0.0.3"]),
        ("r1/z2", 1, 1, ["10.0.0.4"]),
        ("r2/z1", 2, 1, ["10.0.0.5"]),
        ("r3/z1", 2, 1, ["10.0.0.6"]),
    ]
    assert cluster(m, sidecar("r1/z9")).common_lb_config.HasField("locality_weighted_lb_config")


def test_failover_priority_with_a_fixed_value():
    policy = "{" + OUTLIER + ", loadBalancer: {localityLbSetting: {failoverPriority: [topology.kubernetes.io/region=r3]}}}"
    m = mesh(dr(policy))
    assert priorities(cla(m, sidecar("r1/z1/s1"))) == {"r1/z1/s1": 1, "r1/z1/s2": 1, "r1/z2": 1, "r2/z1": 1, "r3/z1": 0}


def test_failover_priority_and_failover_together():
    policy = ("{" + OUTLIER + ", loadBalancer: {localityLbSetting: {failoverPriority: [version=v-e],"
              " failover: [{from: r1, to: r3}]}}}")
    a = cla(mesh(dr(policy)), sidecar("r1/z1/s1"))
    # e matches the label (first split), then locality order within each split
    assert priorities(a) == {"r2/z1": 0, "r1/z1/s1": 1, "r1/z1/s2": 2, "r1/z2": 3, "r3/z1": 4}


# --- distribute --------------------------------------------------------------------------


def test_distribute_sets_locality_weights_and_drops_unnamed_localities():
    policy = ('{loadBalancer: {localityLbSetting: {distribute: [{from: "r1/z1/*", to: {"r1/z1/*": 80, "r2/z1": 20}},'
              ' {from: "r2/*", to: {"r1/*": 100}}]}}}')
    m = mesh(dr(policy))
    a = cla(m, sidecar("r1/z1/s1"))
    assert localities(a) == [
        ("r1/z1/s1", 0, 40, ["10.0.0.1"]),
        ("r1/z1/s2", 0, 40, ["10.0.0.2"]),
        ("r1/z2", 0, 2, []),
        ("r2/z1", 0, 20, ["10.0.0.5"]),
        ("r3/z1", 0, 1, []),
    ]
    assert cluster(m, sidecar("r1/z1/s1")).common_lb_config.HasField("locality_weighted_lb_config")
    # a wildcard target shares its weight by endpoint count (rounded up): 1:1:2 of 100
    b = cla(m, sidecar("r2/z1"))
    assert [(loc, w, bool(addrs)) for loc, _, w, addrs in localities(b)] == [
        ("r1/z1/s1", 25, True), ("r1/z1/s2", 25, True), ("r1/z2", 50, True), ("r2/z1", 1, False), ("r3/z1", 1, False)]
    # no entry for r3: the endpoints are sent as they are
    assert localities(cla(m, sidecar("r3/z1"))) == localities(cla(mesh(), sidecar()))


def test_distribute_wins_over_failover_even_with_outlier_detection():
    policy = '{' + OUTLIER + ', loadBalancer: {localityLbSetting: {distribute: [{from: "*", to: {"r1/z2": 100}}]}}}'
    a = cla(mesh(dr(policy)), sidecar("r1/z1/s1"))
    assert set(priorities(a).values()) == {0}
    assert [(loc, bool(addrs)) for loc, _, _, addrs in localities(a)] == [
        ("r1/z1/s1", False), ("r1/z1/s2", False), ("r1/z2", True), ("r2/z1", False), ("r3/z1", False)]


def test_locality_match():
    loc = Locality("r1", "z1", "s1")
    assert locality_lb.locality_match(loc, "*")
    assert locality_lb.locality_match(loc, "r1")
    assert locality_lb.locality_match(loc, "r1/*")
    assert locality_lb.locality_match(loc, "r1/z1/s1")
    assert not locality_lb.locality_match(loc, "r1/z2/*")
    assert not locality_lb.locality_match(loc, "r2")


# --- the push cache ----------------------------------------------------------------------


def _expected(m, proxy, type_url):
    return {name: pack(name, type_url, msg).any.value for name, msg in builders()[type_url](m, proxy)}


def _got(g, m, proxy, type_url):
    rs = g.generate(m, proxy, type_url)
    return {name: rs[name].any.value for name in rs}


def test_proxies_in_other_localities_share_endpoints_when_no_rule_reads_the_locality():
    g = Generator()
    m = mesh(dr("{loadBalancer: {simple: ROUND_ROBIN}}"))
    a, b = sidecar("r1/z1/s1", pod="c-1"), sidecar("r2/z1", pod="c-2", ip="10.9.0.2")
    assert g.generate(m, a, names.ENDPOINT) is g.generate(m, b, names.ENDPOINT)
    assert g.key(m, a, names.ENDPOINT) == g.key(m, b, names.ENDPOINT)


def test_outlier_detection_alone_does_not_split_when_no_endpoint_has_a_locality():
    g = Generator()
    pods = [(n, ip, {}) for n, ip, _ in PODS]
    m = mesh_from_yaml("\n---\n".join([service(pods), dr("{" + OUTLIER + "}")]))
    a, b = sidecar("r1/z1/s1", pod="c-1"), sidecar("r2/z1", pod="c-2", ip="10.9.0.2")
    assert g.generate(m, a, names.ENDPOINT) is g.generate(m, b, names.ENDPOINT)
    for p in (a, b):
        assert _got(g, m, p, names.ENDPOINT) == _expected(m, p, names.ENDPOINT)
    # distribute reads the proxy's locality even then (its `from`)
    m2 = mesh_from_yaml("\n---\n".join([service(pods), dr('{loadBalancer: {localityLbSetting: {distribute: '
                                                            '[{from: "r1/*", to: {"r9/*": 100}}]}}}')]))
    assert g.generate(m2, a, names.ENDPOINT) is not g.generate(m2, b, names.ENDPOINT)
    for p in (a, b):
        assert _got(g, m2, p, names.ENDPOINT) == _expected(m2, p, names.ENDPOINT)


def test_locality_splits_endpoints_only_per_locality_and_clusters_not_at_all():
    g = Generator()
    m = mesh(dr("{" + OUTLIER + "}"))
    a1 = sidecar("r1/z1/s1", pod="c-1")
    a2 = dataclasses.replace(sidecar("r1/z1/s1", pod="c-2", ip="10.9.0.2"))
    b = sidecar("r2/z1", pod="c-3", ip="10.9.0.3")
    for p in (a1, a2, b):
        for t in (names.CLUSTER, names.ENDPOINT):
            assert _got(g, m, p, t) == _expected(m, p, t), (p.id, names.SHORT[t])
    # 2,000 sidecars of one locality: one generation
    assert g.generate(m, a1, names.ENDPOINT) is g.generate(m, a2, names.ENDPOINT)
    ea, eb = g.generate(m, a1, names.ENDPOINT), g.generate(m, b, names.ENDPOINT)
    assert ea is not eb and ea[CLUSTER].version != eb[CLUSTER].version
    # clusters of other hosts (no locality policy) are the same resource objects
    assert g.generate(m, a1, names.CLUSTER) is g.generate(m, b, names.CLUSTER)


def test_failover_priority_makes_endpoints_depend_on_labels():
    g = Generator()
    policy = "{" + OUTLIER + ", loadBalancer: {localityLbSetting: {failoverPriority: [version]}}}"
    m = mesh(dr(policy))
    a = sidecar("r1/z1", {"version": "v-a"}, pod="c-1")
    b = sidecar("r1/z1", {"version": "v-b"}, pod="c-2", ip="10.9.0.2")
    for p in (a, b):
        assert _got(g, m, p, names.ENDPOINT) == _expected(m, p, names.ENDPOINT)
    assert g.generate(m, a, names.ENDPOINT)[CLUSTER].version != g.generate(m, b, names.ENDPOINT)[CLUSTER].version
