"""Endpoint and proxy locality from the pod's Node (model/locality.py): Nodes parsed down
to name + topology labels (a status heartbeat is no change), read from a config
directory and listed/watched from the real API server (the `kube` fixture), and a Node
relabelled being an endpoint-only change for the push engine (EDS keys move, nothing else)."""
from __future__ import annotations

import asyncio
import copy

import yaml
from structlog.testing import capture_logs

from controlplane import names
from controlplane.app import MeshBuilder
from controlplane.config import kinds
from controlplane.config.objects import ConfigKey, ConfigObject, Origin, Rejection
from controlplane.config.parse import parse_document
from controlplane.config.store import ConfigStore
from controlplane.config.validation import validate
from controlplane.generators import Generator, builders
from controlplane.generators.resources import pack
from controlplane.model.locality import Locality
from controlplane.model.mesh import build_mesh
from controlplane.model.proxy import parse_node
from controlplane.sources.directory import DirectorySource
from tests.support.configs import mesh_from_yaml
from tests.support.kube_source import Changes, get, running, until

NS = "shop"
HOST = f"web.{NS}.svc.cluster.local"
CLUSTER = f"outbound|80||{HOST}"
REGION, ZONE, SUBZONE = "topology.kubernetes.io/region", "topology.kubernetes.io/zone", "topology.istio.io/subzone"


def node(name: str, region: str = "", zone: str = "", subzone: str = "", heartbeat: str = "2026-11-22T10:00:00Z",
         **labels) -> dict:
    """A v1 Node as a kubelet reports it (labels, annotations, status with heartbeats)."""
    topo = {k: v for k, v in ((REGION, region), (ZONE, zone), (SUBZONE, subzone)) if v}
    return {
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name, "kubernetes.io/os": "linux", **topo, **labels},
                     "annotations": {"node.alpha.kubernetes.io/ttl": "0"}},
        "spec": {"podCIDR": "10.244.0.0/24", "providerID": f"kind://docker/kind/{name}"},
        "status": {
            "conditions": [{"type": "Ready", "status": "True", "lastHeartbeatTime": heartbeat,
                            "lastTransitionTime": "2026-11-22T09:00:00Z", "reason": "KubeletReady"}],
            "addresses": [{"type": "InternalIP", "address": "172.18.0.2"}],
            "images": [{"names": ["registry.k8s.io/pause:3.9"], "sizeBytes": 321520}],
            "nodeInfo": {"kubeletVersion": "v1.30.0"},
        },
    }


def pod(name: str, ip: str, node_name: str = "", app: str = "web", **labels) -> dict:
    spec: dict = {"containers": [{"name": "app", "image": "app:1", "ports": [{"containerPort": 8080}]}]}
    if node_name:
        spec["nodeName"] = node_name
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": NS, "labels": {"app": app, **labels}},
            "spec": spec,
            "status": {"phase": "Running", "podIP": ip, "conditions": [{"type": "Ready", "status": "True"}]}}


def service(name: str = "web") -> dict:
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": NS, "labels": {"mesh": "on"}},
            "spec": {"selector": {"app": name}, "ports": [{"name": "http", "port": 80, "targetPort": 8080}]}}


OUTLIER_DR = {"apiVersion": "networking.istio.io/v1", "kind": "DestinationRule", "metadata": {"name": "web", "namespace": NS},
              "spec": {"host": "web", "trafficPolicy": {"outlierDetection": {"consecutive5xxErrors": 1, "interval": "1s",
                                                                                 "baseEjectionTime": "30s"}}}}


def cluster_docs(n1_region: str = "r1") -> list[dict]:
    return [
        node("node-1", n1_region, "z1"),
        node("node-2", "r2", "z2", "s2"),
        node("node-3"),  # no topology labels
        service(),
        pod("web-a", "10.0.0.1", "node-1"),
        pod("web-b", "10.0.0.2", "node-2"),
        pod("web-c", "10.0.0.3", "node-2", **{"istio-locality": "r9.z9"}),  # the label wins over the Node
        pod("web-d", "10.0.0.4", "node-1", **{REGION: "r5"}),  # topology labels on the pod win too
        pod("web-e", "10.0.0.5", "node-unknown"),  # a Node meshd has not seen: no locality
        pod("web-f", "10.0.0.6", "node-3"),
        pod("client-0", "10.9.0.1", "node-2", app="client"),
        pod("client-1", "10.9.0.2", "node-3", app="client"),
        OUTLIER_DR,
    ]


def mesh_of(docs: list[dict]):
    return mesh_from_yaml(yaml.safe_dump_all(docs))


def sidecar(pod_name: str, ip: str, locality: str = "", **labels):
    md = {"NAMESPACE": NS, "LABELS": {"app": "client", **labels}}
    return parse_node(f"sidecar~{ip}~{pod_name}.{NS}~{NS}.svc.cluster.local", md, locality or None)


def router(pod_name: str = "gw-0", ip: str = "10.8.0.1"):
    md = {"NAMESPACE": "istio-system", "LABELS": {"istio": "ingressgateway"}}
    return parse_node(f"router~{ip}~{pod_name}.istio-system~istio-system.svc.cluster.local", md, None)


def endpoint_localities(m, host: str = HOST) -> dict[str, Locality]:
    return {ep.pod: ep.locality for ep in m.service_endpoints(host, 80)}


# --- the parse gate ----------------------------------------------------------------------

def test_a_node_keeps_only_its_name_and_topology_labels():
    doc = node("node-1", "r1", "z1", "s1", **{"failure-domain.beta.kubernetes.io/zone": "old-z"})
    assert validate(copy.deepcopy(doc), kinds.NODE) == []
    obj = parse_document(doc, Origin("file", "nodes.yaml"))
    assert isinstance(obj, ConfigObject), obj
    assert obj.key == ConfigKey("Node", "", "node-1")
    assert dict(obj.labels) == {REGION: "r1", ZONE: "z1", SUBZONE: "s1", "failure-domain.beta.kubernetes.io/zone": "old-z"}
    assert obj.spec == {} and dict(obj.annotations) == {}

    # a heartbeat, a new condition, other labels and annotations: the same content
    beat = node("node-1", "r1", "z1", "s1", heartbeat="2026-11-22T10:05:00Z",
                **{"failure-domain.beta.kubernetes.io/zone": "old-z", "team": "infra"})
    beat["status"]["conditions"].append({"type": "MemoryPressure", "status": "False"})
    beat["metadata"]["annotations"]["volumes.kubernetes.io/controller-managed-attach-detach"] = "true"
    beat["metadata"]["resourceVersion"] = "99"
    assert parse_document(beat, Origin("file", "nodes.yaml")).generation == obj.generation
    # a topology label moved: another content
    assert parse_document(node("node-1", "r1", "z2", "s1"), Origin("file", "nodes.yaml")).generation != obj.generation


def test_a_malformed_node_is_rejected_not_reported_as_unsupported():
    bad = node("node-1", "r1")
    bad["status"] = "Ready"
    rej = parse_document(bad, Origin("file", "nodes.yaml"))
    assert isinstance(rej, Rejection) and rej.field == "status", rej
    bad = node("node-1", "r1")
    bad["bogus"] = 1
    assert isinstance(parse_document(bad, Origin("file", "nodes.yaml")), Rejection)


# --- the model ---------------------------------------------------------------------------

def test_endpoint_locality_from_the_pods_node_unless_the_pod_says_otherwise():
    m = mesh_of(cluster_docs())
    assert endpoint_localities(m) == {
        "web-a": Locality("r1", "z1"),
        "web-b": Locality("r2", "z2", "s2"),
        "web-c": Locality("r9", "z9"),  # istio-locality
        "web-d": Locality("r5"),  # the pod's own topology labels
        "web-e": Locality(),  # its Node is unknown
        "web-f": Locality(),  # its Node has no topology labels
    }


def test_endpoint_locality_from_the_node_through_endpoint_slices():
    docs = cluster_docs() + [{
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": "web-x", "namespace": NS, "labels": {"kubernetes.io/service-name": "web"}},
        "addressType": "IPv4", "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
        "endpoints": [{"addresses": ["10.0.0.1"], "targetRef": {"kind": "Pod", "name": "web-a", "namespace": NS}},
                      {"addresses": ["10.0.0.2"]}],  # found by IP
    }]
    assert endpoint_localities(mesh_of(docs)) == {"web-a": Locality("r1", "z1"), "web-b": Locality("r2", "z2", "s2")}


def test_proxy_locality_from_its_pods_node_else_from_what_the_proxy_says():
    m = mesh_of(cluster_docs())
    # known pod (by name): its Node wins over the bootstrap's locality and the metadata labels
    assert m.proxy_locality(sidecar("client-0", "10.9.0.1", "r7/z7", **{REGION: "r8"})) == Locality("r2", "z2", "s2")
    # pod name unknown, IP known
    assert m.proxy_locality(sidecar("renamed", "10.9.0.1", "r7/z7")) == Locality("r2", "z2", "s2")
    # pod known, but neither it nor its Node places it: the proxy's own word
    assert m.proxy_locality(sidecar("client-1", "10.9.0.2", "r7/z7")) == Locality("r7", "z7")
    assert m.proxy_locality(sidecar("client-1", "10.9.0.2", "r7/z7", **{REGION: "r8"})) == Locality("r8")
    # pod unknown
    assert m.proxy_locality(sidecar("elsewhere", "10.9.9.9", "r7/z7")) == Locality("r7", "z7")
    assert m.proxy_locality(sidecar("elsewhere", "10.9.9.9")) == Locality()


def test_eds_priorities_follow_the_proxys_node():
    m = mesh_of(cluster_docs())
    g = Generator()
    proxy = sidecar("client-0", "10.9.0.1", "r1/z1")  # says r1/z1, runs on node-2 (r2/z2/s2)
    got = g.generate(m, proxy, names.ENDPOINT)
    expected = {name: pack(name, names.ENDPOINT, msg).any.value for name, msg in builders()[names.ENDPOINT](m, proxy)}
    assert {n: got[n].any.value for n in got} == expected  # parts and plain builders agree
    from envoy.config.endpoint.v3 import endpoint_pb2

    cla = endpoint_pb2.ClusterLoadAssignment()
    got[CLUSTER].any.Unpack(cla)
    prio = {(l.locality.region, l.locality.zone, l.locality.sub_zone): l.priority for l in cla.endpoints}
    assert prio[("r2", "z2", "s2")] == 0 and prio[("r1", "z1", "")] > 0


# --- config directory --------------------------------------------------------------------

def test_a_config_directory_with_node_documents(tmp_path):
    (tmp_path / "nodes.yaml").write_text(yaml.safe_dump_all([node("node-1", "r1", "z1"), node("node-2", "r2", "z2", "s2")]))
    (tmp_path / "app.yaml").write_text(yaml.safe_dump_all([service(), pod("web-a", "10.0.0.1", "node-1"),
                                                           pod("web-b", "10.0.0.2", "node-2")]))
    store = ConfigStore()
    with capture_logs() as logs:
        DirectorySource(tmp_path, store).load()
    assert [e for e in logs if e["event"] in ("config unsupported", "config rejected")] == []
    assert get(store, "Node", "", "node-1").labels == {REGION: "r1", ZONE: "z1"}
    m = build_mesh(store.snapshot())
    assert endpoint_localities(m) == {"web-a": Locality("r1", "z1"), "web-b": Locality("r2", "z2", "s2")}


# --- the store and the push engine -----------------------------------------------------------

def test_a_node_status_update_is_no_change_in_the_store():
    store = ConfigStore()
    changes = Changes(store)
    loc = "k8s:/api/v1/nodes/node-1"
    store.replace_location(loc, [parse_document(node("node-1", "r1", "z1"), Origin("kubernetes", loc))])
    assert changes.keys == [ConfigKey("Node", "", "node-1")]
    changes.clear()
    version = store.snapshot().version
    for i in range(3):
        beat = node("node-1", "r1", "z1", heartbeat=f"2026-11-22T10:0{i}:00Z", **{"kubernetes.io/arch": f"a{i}"})
        store.replace_location(loc, [parse_document(beat, Origin("kubernetes", loc))])
    assert changes.keys == [] and store.snapshot().version == version
    store.replace_location(loc, [parse_document(node("node-1", "r1", "z3"), Origin("kubernetes", loc))])
    assert changes.keys == [ConfigKey("Node", "", "node-1")]


def test_a_node_change_is_an_endpoint_change():
    assert MeshBuilder.classify({ConfigKey("Node", "", "node-1")}) == "endpoint"
    assert MeshBuilder.classify({ConfigKey("Node", "", "node-1"), ConfigKey("Pod", NS, "web-a")}) == "endpoint"


def test_relabelling_a_node_moves_eds_keys_only():
    g = Generator()
    before, after = mesh_of(cluster_docs("r1")), mesh_of(cluster_docs("r3"))
    assert before.version != after.version
    proxies = [sidecar("client-0", "10.9.0.1"), sidecar("client-1", "10.9.0.2"), router()]
    for p in proxies:
        for t in (names.CLUSTER, names.LISTENER, names.ROUTE):
            assert g.key(before, p, t) == g.key(after, p, t), (p.id, names.SHORT[t])
        assert g.key(before, p, names.ENDPOINT) != g.key(after, p, names.ENDPOINT), p.id
        got = g.generate(after, p, names.ENDPOINT)
        expected = {n: pack(n, names.ENDPOINT, msg).any.value for n, msg in builders()[names.ENDPOINT](after, p)}
        assert {n: got[n].any.value for n in got} == expected


def test_a_proxys_node_relabelled_moves_its_eds_key_only():
    # node-2 carries no endpoint of `web`, only the client: the endpoints stay, the
    # client's locality (and so its priorities) moves.
    g = Generator()
    docs = cluster_docs()
    moved = copy.deepcopy(docs)
    moved[1] = node("node-2", "r1", "z1")
    moved = [d for d in moved if d["kind"] != "Pod" or d["metadata"]["name"] not in ("web-b", "web-c")]
    docs = [d for d in docs if d["kind"] != "Pod" or d["metadata"]["name"] not in ("web-b", "web-c")]
    before, after = mesh_of(docs), mesh_of(moved)
    client, other = sidecar("client-0", "10.9.0.1"), sidecar("client-1", "10.9.0.2")
    assert after.proxy_locality(client) == Locality("r1", "z1")
    assert g.key(before, client, names.ENDPOINT) != g.key(after, client, names.ENDPOINT)
    assert g.key(before, other, names.ENDPOINT) == g.key(after, other, names.ENDPOINT)
    for t in (names.CLUSTER, names.LISTENER, names.ROUTE):
        assert g.key(before, client, t) == g.key(after, client, t)


def test_an_unused_node_relabelled_changes_no_key():
    g = Generator()
    docs = cluster_docs() + [node("node-9", "r1", "z1")]
    moved = cluster_docs() + [node("node-9", "r4", "z4")]
    before, after = mesh_of(docs), mesh_of(moved)
    assert before.version != after.version
    for p in (sidecar("client-0", "10.9.0.1"), router()):
        for t in (names.CLUSTER, names.ENDPOINT, names.LISTENER, names.ROUTE):
            assert g.key(before, p, t) == g.key(after, p, t)


# --- the Kubernetes source -------------------------------------------------------------------

def test_nodes_are_listed_and_watched_and_heartbeats_change_nothing(kube):
    ns = kube.ns(NS)
    n1, n2 = kube.name("node-1"), kube.name("node-2")

    def here(obj: dict) -> dict:  # this test's namespace
        obj["metadata"]["namespace"] = ns
        return obj

    kube.apply(node(n1, "r1", "z1"))
    kube.apply(here(service()))
    web_a = here(pod("web-a", "10.0.0.1", n1, mesh="on"))
    kube.apply(web_a)
    # Kubernetes 1.36 copies the Node's topology labels onto a pod created on it
    # (PodTopologyLabels admission), and a pod's own labels win (model/locality.py):
    # applied again, the pod is one that does not say where it runs, as the test wants.
    assert kube.get("v1", "Pod", "web-a", ns)["metadata"]["labels"].get(REGION) == "r1"
    kube.apply(web_a)
    host = f"web.{ns}.svc.cluster.local"

    async def scenario():
        # --namespaces and --label-selector do not hide Nodes: pods on them need them
        async with running(kube, namespaces=[ns], label_selector="mesh=on") as (src, store):
            got = get(store, "Node", "", n1)
            assert got is not None and got.origin.location == f"k8s:/api/v1/nodes/{n1}"
            assert got.labels == {REGION: "r1", ZONE: "z1"} and got.spec == {}
            assert endpoint_localities(build_mesh(store.snapshot()), host) == {"web-a": Locality("r1", "z1")}
            await asyncio.to_thread(kube.wait_watches, 1, "nodes")
            assert {r.path for r in kube.requests_for("nodes")} == {"/api/v1/nodes"}  # list and watch
            assert all("labelSelector" not in r.query for r in kube.requests_for("nodes"))

            changes = Changes(store)
            version = store.snapshot().version
            events = src.stats()["Node"].events
            for i in range(3):  # kubelet status updates (and a label meshd does not keep)
                kube.apply(node(n1, "r1", "z1", heartbeat=f"2026-11-22T10:1{i}:00Z", team=f"t{i}"))
            # each is two writes on a real server (the Node, then its /status): two events
            await until(lambda: src.stats()["Node"].events == events + 6, "heartbeats seen")
            await asyncio.sleep(0.1)
            assert changes.keys == [] and store.snapshot().version == version

            kube.apply(node(n1, "r2", "z2"))  # relabelled
            await until(lambda: changes.keys == [ConfigKey("Node", "", n1)], "relabel")
            assert endpoint_localities(build_mesh(store.snapshot()), host) == {"web-a": Locality("r2", "z2")}

            kube.apply(node(n2, "r3"))  # added
            await until(lambda: get(store, "Node", "", n2) is not None, "new node")
            assert kube.delete("v1", "Node", n1)
            await until(lambda: get(store, "Node", "", n1) is None, "deleted node")
            assert endpoint_localities(build_mesh(store.snapshot()), host) == {"web-a": Locality()}

    asyncio.run(scenario())
