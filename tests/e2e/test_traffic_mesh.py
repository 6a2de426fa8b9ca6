"""VirtualService and DestinationRule behaviour on sidecars (`gateways: [mesh]` or none),
on the netns test bed: a `client` pod with a sidecar and Istio's interception calls the
`reviews` Service VIP; the VirtualService decides where each request goes.

Shown from inside the client pod, through its real Envoy: header-match routing, an 80/20
split, fault abort and delay, a prefix rewrite, and a `tcp` route sending the bytes for
one service to another. Envoy rejects nothing.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from collections import Counter

import pytest

from tests.support.harness import free_port, meshd
from tests.support.paths import REPO
from tests.testbed.bed import TestBed, wait_for
from tests.testbed.fixtures import require_testbed

pytestmark = pytest.mark.e2e

NS = "bookinfo"
PORT = 9080


def layout(pods: dict, vips: dict) -> str:
    def pod(name: str, labels: str, sa: str) -> str:
        return f"""
        ---
        apiVersion: v1
        kind: Pod
        metadata: {{name: {name}-0, namespace: {NS}, labels: {{{labels}}}}}
        spec: {{serviceAccountName: {sa}, containers: [{{name: app}}]}}
        status: {{podIP: {pods[name].ip}}}"""

    return textwrap.dedent(f"""
        apiVersion: v1
        kind: Service
        metadata: {{name: reviews, namespace: {NS}}}
        spec:
          clusterIP: {vips['reviews']}
          selector: {{app: reviews}}
          ports: [{{name: http, port: 9080, targetPort: {PORT}}}]
        ---
        apiVersion: v1
        kind: Service
        metadata: {{name: tcp-echo, namespace: {NS}}}
        spec:
          clusterIP: {vips['tcp-echo']}
          selector: {{app: tcp-echo, version: v1}}
          ports: [{{name: tcp, port: 9000, targetPort: 9000}}]
        ---
        apiVersion: v1
        kind: Service
        metadata: {{name: tcp-echo-v2, namespace: {NS}}}
        spec:
          clusterIP: {vips['tcp-echo-v2']}
          selector: {{app: tcp-echo, version: v2}}
          ports: [{{name: tcp, port: 9000, targetPort: 9000}}]
        """) + textwrap.dedent("".join([
        pod("client", "app: client, security.istio.io/tlsMode: istio", "client"),
        pod("reviews-v1", "app: reviews, version: v1", "reviews"),
        pod("reviews-v2", "app: reviews, version: v2", "reviews"),
        pod("echo-v1", "app: tcp-echo, version: v1", "tcp-echo"),
        pod("echo-v2", "app: tcp-echo, version: v2", "tcp-echo"),
    ])) + "\n"


ROUTING = f"""
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: reviews, namespace: {NS}}}
spec:
  host: reviews
  subsets:
  - {{name: v1, labels: {{version: v1}}}}
  - {{name: v2, labels: {{version: v2}}}}
---
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
    work = tmp_path_factory.mktemp("mesh-traffic")
    config_dir, ca_dir = work / "config", work / "ca"
    config_dir.mkdir()
    with TestBed() as tb:
        pods = {n: tb.add_pod(n, sidecar=(n == "client"))
                for n in ("client", "reviews-v1", "reviews-v2", "echo-v1", "echo-v2")}
        vips = {n: tb.service_ip() for n in ("reviews", "tcp-echo", "tcp-echo-v2")}
        (config_dir / "layout.yaml").write_text(layout(pods, vips))
        (config_dir / "routing.yaml").write_text(ROUTING)
        for n in ("reviews-v1", "reviews-v2"):
            pods[n].run_echo(http=[PORT])
        for n in ("echo-v1", "echo-v2"):
            pods[n].run_echo(http=[], tcp=[9000])
        secure = free_port("127.0.0.1")
        with meshd(config_dir, work, extra=["--ca-dir", str(ca_dir), "--secure-xds-port", str(secure)]) as cp:
            client = pods["client"]
            client.forward_to_host(secure, pod_port=15012)
            boot = work / "client-bootstrap.yaml"
            subprocess.run(
                [sys.executable, "-m", "controlplane", "bootstrap", "--type", "sidecar", "--namespace", NS,
                 "--service-account", "client", "--pod", "client-0", "--ip", client.ip,
                 "--labels", "app=client,security.istio.io/tlsMode=istio", "--xds-address", "127.0.0.1:15012",
                 "--admin-port", "15000", "--ca-dir", str(ca_dir), "--output", str(boot)],
                check=True, env={**os.environ, "PYTHONPATH": str(REPO)})
            envoy = client.start_envoy(boot, admin_port=15000)
            wait_for(envoy.ready, 30, what="client envoy ready")
            b = Bed(client, vips, envoy, cp)
            wait_for(lambda: b.get("/")[0] == 200, 20, what="first request through the sidecar")
            yield b
            bad = {k: v for k, v in envoy.stats("update_rejected").items() if v}
            assert bad == {}, bad


class Bed:
    def __init__(self, client, vips, envoy, cp):
        self.client, self.vips, self.envoy, self.cp = client, vips, envoy, cp

    def get(self, path: str, headers: dict | None = None, timeout: float = 5.0):
        status, hdrs, body = self.client.http_get(self.vips["reviews"], 9080, path, headers=headers, timeout=timeout)
        return status, hdrs, body

    def pod(self, path: str, headers: dict | None = None) -> str:
        status, _, body = self.get(path, headers)
        assert status == 200, (status, body[:200])
        return json.loads(body)["pod"]


def test_header_match_on_the_sidecar(bed):
    assert bed.pod("/", {"end-user": "jason"}) == "reviews-v2"
    assert bed.pod("/", {"end-user": "bob"}) == "reviews-v1"


def test_weighted_split_on_the_sidecar(bed):
    counts = Counter(bed.pod("/split") for _ in range(400))
    assert 0.72 <= counts["reviews-v1"] / 400 <= 0.88, counts
    assert counts["reviews-v1"] + counts["reviews-v2"] == 400


def test_fault_abort_and_delay_on_the_sidecar(bed):
    assert bed.get("/abort")[0] == 418
    t0 = time.monotonic()
    assert bed.get("/delay")[0] == 200
    assert time.monotonic() - t0 >= 0.95


def test_rewrite_on_the_sidecar(bed):
    status, _, body = bed.get("/old/page")
    assert status == 200 and json.loads(body)["path"] == "/new/page"


def test_tcp_route_on_the_sidecar(bed):
    s = bed.client.connect(bed.vips["tcp-echo"], 9000)
    try:
        s.sendall(b"ping\n")
        got = b""
        deadline = time.monotonic() + 5
        while not got.endswith(b"\n") and time.monotonic() < deadline:
            got += s.recv(4096)
    finally:
        s.close()
    assert got == b"echo-v2 ping\n"  # the VirtualService sent tcp-echo's bytes to tcp-echo-v2
