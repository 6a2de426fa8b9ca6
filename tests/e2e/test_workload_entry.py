"""Workloads outside Kubernetes, end to end (docs/vm.md): a "VM" is a test-bed pod with
Istio's interception and a real Envoy but NO Pod object; the mesh knows it only through a
WorkloadEntry, written by hand or registered by meshd when its proxy joins a
WorkloadGroup. A Kubernetes Service selects it by label, and a sidecar in the cluster
reaches it by the Service's address with mutual TLS.

    client (Pod, sidecar)  --mTLS-->  ratings (WorkloadEntry by hand, sidecar)
                           --mTLS-->  joiner  (WorkloadEntry auto-registered from WorkloadGroup reviews)
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from controlplane import names
from tests.support.harness import http_get, meshd_cli
from tests.support.manifests import documents, service
from tests.support.paths import REPO
from tests.testbed.bed import wait_for
from tests.testbed.fixtures import require_testbed
from tests.testbed.mesh import ENVOY_ADMIN, MESHED, Mesh, PodSpec, pod_yaml, run_mesh

pytestmark = pytest.mark.e2e

NS = "vmtest"
APP_PORT = 9080
GRACE = 2.0  # --workload-entry-grace-period: short, so the test sees the entry go
PODS = {
    "client": PodSpec(NS, "sidecar", "client", f"app=client,{MESHED}"),
    # the VM of the hand-written WorkloadEntry: a sidecar, no Pod object (see layout)
    "ratings": PodSpec(NS, "sidecar", "ratings-vm", "app=ratings", http=(APP_PORT,)),
}
SERVICES = ("ratings", "reviews")
REVIEWS_GROUP = f"""
apiVersion: networking.istio.io/v1
kind: WorkloadGroup
metadata: {{name: reviews, namespace: {NS}}}
spec:
  metadata:
    labels: {{app: reviews}}
  template:
    serviceAccount: reviews-vm
    labels: {{version: v1}}
"""


def layout(pods, vips) -> str:
    entry = {"apiVersion": "networking.istio.io/v1", "kind": "WorkloadEntry",
             "metadata": {"name": "ratings-vm", "namespace": NS},
             "spec": {"address": pods["ratings"].ip, "labels": {"app": "ratings"}, "serviceAccount": "ratings-vm"}}
    return documents(
        service("ratings", NS, [("http", 80, APP_PORT)], cluster_ip=vips["ratings"]),
        service("reviews", NS, [("http", 80, APP_PORT)], cluster_ip=vips["reviews"]),
        entry,
        REVIEWS_GROUP,
    ) + pod_yaml("client", PODS["client"], pods["client"].ip)  # the client is a Pod; the VMs are not


def prepare(bed, pods, vips) -> None:
    """The auto-registering VM (its Envoy is started by the test) and a pod for an intruder."""
    pods["joiner"] = bed.add_pod("joiner", sidecar=True)
    pods["joiner"].run_echo(http=[APP_PORT])
    pods["intruder"] = bed.add_pod("intruder")


@pytest.fixture(scope="module")
def mesh(tmp_path_factory):
    require_testbed()
    work = tmp_path_factory.mktemp("vm")
    with run_mesh(work, PODS, layout, services=SERVICES, prepare=prepare,
                  meshd_args=["--workload-entry-grace-period", f"{GRACE:g}s"]) as m:
        m.work = work  # type: ignore[attr-defined]
        yield m


def reply(mesh: Mesh, svc: str) -> dict:
    r = mesh.expect("client", mesh.vip(svc), 0, "200", timeout=20)
    return json.loads(r.body)


def configz(mesh: Mesh) -> dict:
    return json.loads(http_get("127.0.0.1", mesh.cp.monitoring_port, "/debug/configz?content=1")[1])


def entry(mesh: Mesh, name: str) -> dict | None:
    for o in configz(mesh)["objects"]:
        if o["kind"] == "WorkloadEntry" and o["namespace"] == NS and o["name"] == name:
            return o["content"]  # labels, annotations, spec
    return None


def endpoints(mesh: Mesh, proxy: str, svc: str) -> str:
    cp = meshd_cli("proxy-config", "endpoint", proxy, "--meshd", f"http://127.0.0.1:{mesh.cp.monitoring_port}",
                   "--cluster", f"outbound|80||{svc}.{NS}.svc.cluster.local")
    return cp.stdout


def test_a_workload_entry_outside_kubernetes_is_reached_by_service_name_with_mtls(mesh: Mesh):
    body = reply(mesh, "ratings")
    assert body["pod"] == "ratings"
    # The VM's Envoy terminated mutual TLS: it forwards the client's certificate identity
    # (XFCC), which only a TLS connection with a client certificate can give.
    xfcc = body["headers"].get("x-forwarded-client-cert", "")
    assert f"By=spiffe://cluster.local/ns/{NS}/sa/ratings-vm" in xfcc, body["headers"]
    assert f"URI=spiffe://cluster.local/ns/{NS}/sa/client" in xfcc, body["headers"]
    rows = endpoints(mesh, f"client-0.{NS}", "ratings")
    assert f"{mesh.pods['ratings'].ip}:{APP_PORT}" in rows and "HEALTHY" in rows, rows


def _bootstrap_member(mesh: Mesh, pod: str, *flags: str) -> Path:
    work: Path = mesh.work  # type: ignore[attr-defined]
    out = work / f"{pod}-bootstrap.json"
    subprocess.run(
        [sys.executable, "-m", "controlplane", "bootstrap", "--type", "sidecar", "--ip", mesh.pods[pod].ip,
         "--pod", f"{pod}-vm", "--xds-address", "127.0.0.1:15012", "--admin-port", str(ENVOY_ADMIN),
         "--ca-dir", str(work / "ca"), *flags, "--output", str(out)],
        check=True, env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True,
    )
    return out


def test_a_proxy_joining_a_workload_group_is_registered_while_connected(mesh: Mesh):
    work: Path = mesh.work  # type: ignore[attr-defined]
    joiner = mesh.pods["joiner"]
    name = f"reviews-{joiner.ip}"
    assert entry(mesh, name) is None
    group_file = work / "reviews-wg.yaml"
    group_file.write_text(REVIEWS_GROUP)
    joiner.forward_to_host(mesh.cp.secure_port, pod_port=15012)
    envoy = joiner.start_envoy(_bootstrap_member(mesh, "joiner", "--workload-group", str(group_file)),
                               admin_port=ENVOY_ADMIN)
    mesh.envoys["joiner"] = envoy  # its update_rejected counters are checked at teardown
    wait_for(envoy.ready, 30, what=lambda: f"joiner envoy ready\n{envoy.log(40)}")

    # the entry: in the config snapshot, made from the group's template, with istiod's annotations
    wait_for(lambda: entry(mesh, name) is not None, 10, what=f"WorkloadEntry {NS}/{name} in /debug/configz")
    we = entry(mesh, name)
    assert we is not None
    assert we["spec"]["address"] == joiner.ip and we["spec"]["serviceAccount"] == "reviews-vm"
    assert we["spec"]["labels"]["app"] == "reviews" and we["spec"]["labels"]["version"] == "v1"
    ann = we["annotations"]
    assert ann[names.AUTO_REGISTRATION_GROUP_ANNOTATION] == "reviews"
    assert names.CONNECTED_AT_ANNOTATION in ann and ann[names.WORKLOAD_CONTROLLER_ANNOTATION]
    assert configz(mesh)["autoRegistration"]["connected"] == [f"{NS}/{name}"]
    assert "auto_registration_success_total 1.0" in mesh.cp.metrics()  # istiod's counter

    # another proxy has it as an endpoint of the Service selecting app=reviews, and reaches it with mTLS
    wait_for(lambda: f"{joiner.ip}:{APP_PORT}" in endpoints(mesh, f"client-0.{NS}", "reviews"), 10,
             what="the joiner as an endpoint of reviews in the client's EDS")
    body = reply(mesh, "reviews")
    assert body["pod"] == "joiner"
    xfcc = body["headers"].get("x-forwarded-client-cert", "")
    assert f"By=spiffe://cluster.local/ns/{NS}/sa/reviews-vm" in xfcc and \
        f"URI=spiffe://cluster.local/ns/{NS}/sa/client" in xfcc, body["headers"]

    # it leaves: marked disconnected, still there during the grace period, then gone
    envoy.stop()
    del mesh.envoys["joiner"]
    wait_for(lambda: names.DISCONNECTED_AT_ANNOTATION in ((entry(mesh, name) or {}).get("annotations") or {}), 10,
             what="the entry marked disconnected")
    wait_for(lambda: entry(mesh, name) is None, GRACE + 10, what="the entry deleted after the grace period")
    wait_for(lambda: f"{joiner.ip}:{APP_PORT}" not in endpoints(mesh, f"client-0.{NS}", "reviews"), 10,
             what="the joiner gone from the client's endpoints")
    mesh.expect("client", mesh.vip("reviews"), 0, "503", timeout=10)  # no endpoint left: no healthy upstream


def test_a_proxy_of_another_identity_cannot_join_the_group(mesh: Mesh):
    """A proxy naming the group with a token for service account `client` (not the
    template's `reviews-vm`) is refused, with a message naming both; no entry is made."""
    intruder = mesh.pods["intruder"]
    intruder.forward_to_host(mesh.cp.secure_port, pod_port=15012)
    boot = _bootstrap_member(mesh, "intruder", "--namespace", NS, "--service-account", "client",
                             "--auto-register-group", "reviews", "--labels", "app=reviews")
    envoy = intruder.start_envoy(boot, admin_port=ENVOY_ADMIN)
    try:
        expected = ("WorkloadGroup vmtest/reviews template: serviceAccount 'reviews-vm' is not the proxy's "
                    "authenticated service account 'client'")
        wait_for(lambda: expected in mesh.cp.log(), 15, what="the refusal in meshd's log")
        assert "auto-registration refused" in mesh.cp.log()
        assert entry(mesh, f"reviews-{intruder.ip}") is None
        assert envoy.stat("control_plane.connected_state") == 0
    finally:
        envoy.stop()


# --- Kubernetes mode: the entry in the API server ------------------------------------------
class HeldStream:
    """An ADS stream to meshd's secure port held open (a connected proxy) until close()."""

    def __init__(self, port: int, root_pem: bytes, token: str, node_id: str, metadata: dict):
        import threading

        import grpc
        from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2

        req = discovery_pb2.DiscoveryRequest(type_url=names.CLUSTER)
        req.node.id = node_id
        req.node.metadata.update(metadata)
        self._done = threading.Event()

        def requests():
            yield req
            self._done.wait(60)

        self.channel = grpc.secure_channel(f"127.0.0.1:{port}", grpc.ssl_channel_credentials(root_pem),
                                           options=[("grpc.ssl_target_name_override", "istiod.istio-system.svc")])
        self.call = ads_pb2_grpc.AggregatedDiscoveryServiceStub(self.channel).StreamAggregatedResources(
            requests(), metadata=[("authorization", f"Bearer {token}")], timeout=60)

    def first(self):
        return next(self.call)

    def close(self) -> None:
        self._done.set()
        self.call.cancel()
        self.channel.close()


def test_kubernetes_mode_registers_the_member_in_the_api_server(kube, tmp_path: Path):
    """`meshd serve --kubeconfig` (leader election on) and the real kube-apiserver: the
    WorkloadGroup is watched, a proxy holding a ServiceAccount token of the group's
    template joins, and its WorkloadEntry is created in the API server with istiod's
    annotations, comes back through the watch, is marked disconnected when the stream
    ends and deleted after the grace period; a token of another service account is
    refused with PERMISSION_DENIED naming both."""
    import grpc

    from tests.support.harness import meshd

    system, ns = kube.ns("istio-system"), kube.ns("vm")
    kube.apply({"apiVersion": "networking.istio.io/v1", "kind": "WorkloadGroup",
                "metadata": {"name": "reviews", "namespace": ns},
                "spec": {"metadata": {"labels": {"app": "reviews"}}, "template": {"serviceAccount": "reviews-vm"}}})
    token, other = kube.token(ns, "reviews-vm"), kube.token(ns, "web")
    name = "reviews-10.250.0.7"
    node = names.node_id("sidecar", "10.250.0.7", "vm-1", ns)
    md = {"NAMESPACE": ns, "SERVICE_ACCOUNT": "reviews-vm", names.META_AUTO_REGISTER_GROUP: "reviews",
          "LABELS": {"version": "v1"}}

    def api_entry() -> dict | None:
        return kube.get("networking.istio.io/v1", "WorkloadEntry", name, ns)

    with meshd(None, tmp_path, extra=["--kubeconfig", str(kube.cluster.kubeconfig),
                                      "--leader-election-namespace", system, "--root-namespace", system,
                                      "--workload-entry-grace-period", "1s"]) as m:
        root = m.root_cert.read_bytes()

        def served(kind: str, obj: str) -> bool:
            objects = json.loads(http_get("127.0.0.1", m.monitoring_port, "/debug/configz")[1])["objects"]
            return any(o["kind"] == kind and o["namespace"] == ns and o["name"] == obj for o in objects)

        wait_for(lambda: served("WorkloadGroup", "reviews"), 30, what="the WorkloadGroup watched")
        stream = HeldStream(m.secure_port, root, token, node, md)
        try:
            stream.first()
            doc = api_entry()
            assert doc is not None, m.log()[-3000:]
            assert doc["spec"]["address"] == "10.250.0.7" and doc["spec"]["serviceAccount"] == "reviews-vm"
            assert doc["spec"]["labels"] == {"app": "reviews", "version": "v1"}
            ann = doc["metadata"]["annotations"]
            assert ann[names.AUTO_REGISTRATION_GROUP_ANNOTATION] == "reviews"
            assert ann[names.WORKLOAD_CONTROLLER_ANNOTATION] and names.CONNECTED_AT_ANNOTATION in ann
            wait_for(lambda: served("WorkloadEntry", name), 10, what="the entry back through the watch")
        finally:
            stream.close()
        wait_for(lambda: names.DISCONNECTED_AT_ANNOTATION in ((api_entry() or {}).get("metadata", {})
                                                              .get("annotations") or {}) or api_entry() is None,
                 10, what="the entry marked disconnected")
        wait_for(lambda: api_entry() is None, 15, what="the entry deleted after the grace period")
        wait_for(lambda: not served("WorkloadEntry", name), 10, what="the entry gone from meshd's store")

        intruder = HeldStream(m.secure_port, root, other, names.node_id("sidecar", "10.250.0.8", "vm-2", ns),
                              {**md, "SERVICE_ACCOUNT": "web"})
        try:
            with pytest.raises(grpc.RpcError) as err:
                intruder.first()
            assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
            assert ("serviceAccount 'reviews-vm' is not the proxy's authenticated service account 'web'"
                    in err.value.details())
        finally:
            intruder.close()
        assert kube.get("networking.istio.io/v1", "WorkloadEntry", "reviews-10.250.0.8", ns) is None
