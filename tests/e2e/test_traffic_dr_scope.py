"""DestinationRule scope on the netns test bed (issue 5), through real Envoys:

- `workloadSelector`: two client pods with sidecars in one namespace call the same
  `reviews` VIP through the same VirtualService (`subset: pinned`). The namespace's rule
  pins the subset to reviews-v1; a rule with a workloadSelector pins it to reviews-v2
  for the pods it selects only. The selected client lands on v2, the other on v1; moving
  the selector to the other client swaps them live; removing it puts both on v1.
- `tls.credentialName` on a gateway attached to the plaintext xDS port: the credential
  is never served to it, so meshd leaves that cluster out (and logs why) instead of
  sending one that waits for SDS. The gateway still becomes ready, serves its other
  routes, and the route to the left-out cluster fails (503), never in plaintext.
"""
from __future__ import annotations

import json

import pytest

from tests.support.manifests import INGRESS, destination_rule, documents, service, virtual_service
from tests.support.pki import make_ca, make_cert, tls_secret_yaml
from tests.testbed.bed import wait_for
from tests.testbed.fixtures import require_testbed
from tests.testbed.mesh import Mesh, PodSpec, pods_yaml, run_mesh

pytestmark = pytest.mark.e2e

NS = "bookinfo"
PORT = 9080
GW_PORT = 8080


MESHED = "security.istio.io/tlsMode=istio"
PODS = {
    "client-a": PodSpec(NS, "sidecar", "client-a", f"app=client-a,track=canary,{MESHED}"),
    "client-b": PodSpec(NS, "sidecar", "client-b", f"app=client-b,{MESHED}"),
    "reviews-v1": PodSpec(NS, service_account="reviews", labels="app=reviews,version=v1", http=(PORT,)),
    "reviews-v2": PodSpec(NS, service_account="reviews", labels="app=reviews,version=v2", http=(PORT,)),
    "secure-echo": PodSpec(NS, service_account="secure-echo", labels="app=secure-echo", http=(PORT,)),
    # on meshd's plaintext xDS port: no identity, so no credential is ever served to it
    "gateway": PodSpec("istio-system", "router", "istio-ingressgateway-service-account", "istio=ingressgateway",
                       plaintext_xds=True),
    "tester": PodSpec(NS),  # a client outside the mesh, no Pod object
}


def layout(pods: dict, vips: dict) -> str:
    return documents(
        service("reviews", NS, [("http", 9080, PORT)], cluster_ip=vips["reviews"]),
        service("secure-echo", NS, [("http", 9080, PORT)], cluster_ip=vips["secure-echo"]),
        service("istio-ingressgateway", "istio-system", [("http2", 80, GW_PORT)], selector=INGRESS,
                cluster_ip=vips["gateway"]),
        ROUTING, GATEWAY_ROUTING,
        # The Secret exists: only the gateway's missing identity keeps it from being served.
        tls_secret_yaml("secure-echo-ca", "istio-system", make_cert(CA, ["secure-echo"]), CA.cert),
    ) + pods_yaml({n: spec for n, spec in PODS.items() if n != "tester"}, pods)


ROUTING = documents(
    destination_rule("reviews", NS, "reviews", subsets={"pinned": {"version": "v1"}}),
    virtual_service("reviews", NS, ["reviews"], "reviews", subset="pinned"))


def selector_rule(selector: str) -> str:
    return f"""
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: reviews-canary, namespace: {NS}}}
spec:
  host: reviews
  workloadSelector: {{matchLabels: {{{selector}}}}}
  subsets:
  - {{name: pinned, labels: {{version: v2}}}}
"""


CA = make_ca()
GATEWAY_ROUTING = f"""
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: gw, namespace: istio-system}}
spec:
  selector: {{istio: ingressgateway}}
  servers:
  - port: {{number: 80, name: http, protocol: HTTP}}
    hosts: ["*"]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: gw-routes, namespace: istio-system}}
spec:
  hosts: ["*"]
  gateways: [gw]
  http:
  - match: [{{uri: {{prefix: /secure}}}}]
    route: [{{destination: {{host: secure-echo.{NS}.svc.cluster.local, port: {{number: 9080}}}}}}]
  - route: [{{destination: {{host: reviews.{NS}.svc.cluster.local, port: {{number: 9080}}}}}}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: secure-echo-origination, namespace: istio-system}}
spec:
  host: secure-echo.{NS}.svc.cluster.local
  trafficPolicy:
    tls: {{mode: SIMPLE, credentialName: secure-echo-ca}}
"""


def reviews_pod(mesh: Mesh, client: str) -> str:
    status, _, body = mesh.pods[client].http_get(mesh.vips["reviews"], 9080, "/", timeout=5)
    assert status == 200, (client, status, body[:200])
    return json.loads(body)["pod"]


def pinned(mesh: Mesh, want: dict[str, str], timeout: float = 20) -> None:
    """Wait until every client lands on the pod it should, several times in a row."""
    def ok() -> bool:
        return all(all(reviews_pod(mesh, c) == p for _ in range(5)) for c, p in want.items())
    wait_for(ok, timeout, interval=0.2, what=f"routing {want}")
    # The clusters the rule change updated got their assignments (meshd answers
    # Envoy's EDS re-request with just those): none is left warming, well within
    # Envoy's 15 s initial fetch timeout.
    for c in want:
        wait_for(lambda c=c: not mesh.envoys[c].config_dump("dynamic_warming_clusters").get("configs"), 5,
                 interval=0.2, what=f"{c}: no cluster warming")


def gateway_get(mesh: Mesh, path: str) -> tuple[int, bytes]:
    status, _, body = mesh.pods["tester"].http_get(mesh.pods["gateway"].ip, GW_PORT, path, timeout=5)
    return status, body


@pytest.fixture(scope="module")
def bed(tmp_path_factory):
    require_testbed()
    with run_mesh(tmp_path_factory.mktemp("dr-scope"), PODS, layout,
                  services=("reviews", "secure-echo", "gateway")) as mesh:
        yield mesh


def test_workload_selector_scopes_the_rule_to_the_selected_client(bed):
    # no selector rule: both clients follow the namespace's rule
    pinned(bed, {"client-a": "reviews-v1", "client-b": "reviews-v1"})
    # the selector rule selects client-a only
    bed.apply("canary", selector_rule("track: canary"))
    pinned(bed, {"client-a": "reviews-v2", "client-b": "reviews-v1"})
    # the same rule moved to client-b: they swap
    bed.apply("canary", selector_rule("app: client-b"))
    pinned(bed, {"client-a": "reviews-v1", "client-b": "reviews-v2"})
    # gone: both back on the namespace's rule
    bed.apply("canary", None)
    pinned(bed, {"client-a": "reviews-v1", "client-b": "reviews-v1"})


def test_plaintext_gateway_gets_no_cluster_waiting_for_a_credential(bed):
    gw = bed.envoys["gateway"]
    # the gateway finished its initial configuration (ready above) and nothing warms
    warming = gw.config_dump("dynamic_warming_clusters")
    assert not warming.get("configs"), warming
    clusters = json.dumps(gw.config_dump("dynamic_active_clusters"))
    assert f"outbound|9080||reviews.{NS}.svc.cluster.local" in clusters
    assert f"secure-echo.{NS}" not in clusters
    assert "kubernetes://" not in clusters
    # its other routes work; the route to the left-out cluster fails instead of going
    # out in plaintext
    status, body = gateway_get(bed, "/")
    assert status == 200 and json.loads(body)["pod"].startswith("reviews-"), (status, body[:200])
    status, _ = gateway_get(bed, "/secure")
    assert status == 503
    # the operator is told which rule, which field and why
    log = bed.cp.process.log()
    lines = [ln for ln in log.splitlines() if "destination rule conflict" in ln]
    assert lines, log[-3000:]
    assert "istio-system/secure-echo-origination" in lines[0]
    assert "spec.trafficPolicy.tls.credentialName" in lines[0]
    assert "plaintext xDS port" in lines[0]
