"""VirtualService and DestinationRule behaviour on sidecars (`gateways: [mesh]` or none),
on the netns test bed: a `client` pod with a sidecar and Istio's interception calls the
`reviews` Service VIP; the VirtualService decides where each request goes.

Shown from inside the client pod, through its real Envoy: header-match routing, an 80/20
split, fault abort and delay, a prefix rewrite, and a `tcp` route sending the bytes for
one service to another. Envoy rejects nothing.
"""
from __future__ import annotations

import json
import time
from collections import Counter

import pytest

from tests.support.manifests import destination_rule, documents, service
from tests.testbed.bed import wait_for
from tests.testbed.fixtures import require_testbed
from tests.testbed.mesh import Mesh, PodSpec, pods_yaml, run_mesh, tcp_line

pytestmark = pytest.mark.e2e

NS = "bookinfo"
PORT = 9080


PODS = {
    "client": PodSpec(NS, "sidecar", "client", "app=client,security.istio.io/tlsMode=istio"),
    "reviews-v1": PodSpec(NS, service_account="reviews", labels="app=reviews,version=v1", http=(PORT,)),
    "reviews-v2": PodSpec(NS, service_account="reviews", labels="app=reviews,version=v2", http=(PORT,)),
    "echo-v1": PodSpec(NS, service_account="tcp-echo", labels="app=tcp-echo,version=v1", tcp=(9000,)),
    "echo-v2": PodSpec(NS, service_account="tcp-echo", labels="app=tcp-echo,version=v2", tcp=(9000,)),
}


def layout(pods: dict, vips: dict) -> str:
    return documents(
        service("reviews", NS, [("http", 9080, PORT)], cluster_ip=vips["reviews"]),
        service("tcp-echo", NS, [("tcp", 9000, 9000)], selector={"app": "tcp-echo", "version": "v1"},
                cluster_ip=vips["tcp-echo"]),
        service("tcp-echo-v2", NS, [("tcp", 9000, 9000)], selector={"app": "tcp-echo", "version": "v2"},
                cluster_ip=vips["tcp-echo-v2"]),
        destination_rule("reviews", NS, "reviews", subsets={"v1": {"version": "v1"}, "v2": {"version": "v2"}}),
        ROUTING) + pods_yaml(PODS, pods)


ROUTING = f"""
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: reviews, namespace: {NS}}}
spec:
  hosts: [reviews]
  http:
  - match: [{{headers: {{end-user: {{exact: jason}}}}}}]
    route: [{{destination: {{host: reviews, subset: v2}}}}]
  - match: [{{uri: {{prefix: /abort}}}}]
    fault: {{abort: {{httpStatus: 418, percentage: {{value: 100}}}}}}
    route: [{{destination: {{host: reviews, subset: v1}}}}]
  - match: [{{uri: {{prefix: /split}}}}]
    route:
    - {{destination: {{host: reviews, subset: v1}}, weight: 80}}
    - {{destination: {{host: reviews, subset: v2}}, weight: 20}}
  - match: [{{uri: {{prefix: /old/}}}}]
    rewrite: {{uri: /new/}}
    route: [{{destination: {{host: reviews, subset: v1}}}}]
  - match: [{{uri: {{prefix: /delay}}}}]
    fault: {{delay: {{fixedDelay: 1s, percentage: {{value: 100}}}}}}
    route: [{{destination: {{host: reviews, subset: v1}}}}]
  - route: [{{destination: {{host: reviews, subset: v1}}}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: tcp-echo, namespace: {NS}}}
spec:
  hosts: [tcp-echo]
  tcp:
  - match: [{{port: 9000}}]
    route: [{{destination: {{host: tcp-echo-v2, port: {{number: 9000}}}}}}]
"""


@pytest.fixture(scope="module")
def bed(tmp_path_factory):
    require_testbed()
    with run_mesh(tmp_path_factory.mktemp("mesh-traffic"), PODS, layout,
                  services=("reviews", "tcp-echo", "tcp-echo-v2")) as mesh:
        wait_for(lambda: get(mesh, "/")[0] == 200, 20, what="first request through the sidecar")
        yield mesh


def get(mesh: Mesh, path: str, headers: dict | None = None, timeout: float = 5.0):
    """The client's request to the `reviews` VIP, through its sidecar: (status, headers, body)."""
    return mesh.pods["client"].http_get(mesh.vips["reviews"], 9080, path, headers=headers, timeout=timeout)


def served_by(mesh: Mesh, path: str, headers: dict | None = None) -> str:
    """The reviews pod that answered (the request must succeed)."""
    status, _, body = get(mesh, path, headers)
    assert status == 200, (status, body[:200])
    return json.loads(body)["pod"]


def test_header_match_on_the_sidecar(bed):
    assert served_by(bed, "/", {"end-user": "jason"}) == "reviews-v2"
    assert served_by(bed, "/", {"end-user": "bob"}) == "reviews-v1"


def test_weighted_split_on_the_sidecar(bed):
    counts = Counter(served_by(bed, "/split") for _ in range(400))
    assert 0.72 <= counts["reviews-v1"] / 400 <= 0.88, counts
    assert counts["reviews-v1"] + counts["reviews-v2"] == 400


def test_fault_abort_and_delay_on_the_sidecar(bed):
    assert get(bed, "/abort")[0] == 418
    t0 = time.monotonic()
    assert get(bed, "/delay")[0] == 200
    assert time.monotonic() - t0 >= 0.95


def test_rewrite_on_the_sidecar(bed):
    status, _, body = get(bed, "/old/page")
    assert status == 200 and json.loads(body)["path"] == "/new/page"


def test_tcp_route_on_the_sidecar(bed):
    got = tcp_line(bed.pods["client"], bed.vips["tcp-echo"], 9000)
    assert got == b"echo-v2 ping\n"  # the VirtualService sent tcp-echo's bytes to tcp-echo-v2
