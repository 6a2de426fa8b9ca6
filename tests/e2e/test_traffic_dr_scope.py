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
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.support.harness import free_port, meshd
from tests.support.paths import REPO
from tests.support.pki import make_ca, make_cert, tls_secret_yaml
from tests.testbed.bed import TestBed, wait_for
from tests.testbed.fixtures import require_testbed

pytestmark = pytest.mark.e2e

NS = "bookinfo"
PORT = 9080
GW_PORT = 8080


def layout(pods: dict, vips: dict) -> str:
    def pod(name: str, labels: str, sa: str, ns: str = NS) -> str:
        return f"""
        ---
        apiVersion: v1
        kind: Pod
        metadata: {{name: {name}-0, namespace: {ns}, labels: {{{labels}}}}}
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
        metadata: {{name: secure-echo, namespace: {NS}}}
        spec:
          clusterIP: {vips['secure-echo']}
          selector: {{app: secure-echo}}
          ports: [{{name: http, port: 9080, targetPort: {PORT}}}]
        ---
        apiVersion: v1
        kind: Service
        metadata: {{name: istio-ingressgateway, namespace: istio-system}}
        spec:
          clusterIP: {vips['gateway']}
          selector: {{istio: ingressgateway}}
          ports: [{{name: http2, port: 80, targetPort: {GW_PORT}}}]
        """) + textwrap.dedent("".join([
        pod("client-a", "app: client-a, track: canary, security.istio.io/tlsMode: istio", "client-a"),
        pod("client-b", "app: client-b, security.istio.io/tlsMode: istio", "client-b"),
        pod("reviews-v1", "app: reviews, version: v1", "reviews"),
        pod("reviews-v2", "app: reviews, version: v2", "reviews"),
        pod("secure-echo", "app: secure-echo", "secure-echo"),
        pod("gateway", "istio: ingressgateway", "istio-ingressgateway-service-account", ns="istio-system"),
    ])) + "\n"


ROUTING = f"""
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: reviews, namespace: {NS}}}
spec:
  host: reviews
  subsets:
  - {{name: pinned, labels: {{version: v1}}}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: reviews, namespace: {NS}}}
spec:
  hosts: [reviews]
  http:
  - route: [{{destination: {{host: reviews, subset: pinned}}}}]
"""


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


def _bootstrap(path: Path, kind: str, namespace: str, sa: str, pod, labels: str, ca_dir: Path | None,
               xds: str) -> Path:
    argv = [sys.executable, "-m", "controlplane", "bootstrap", "--type", kind, "--namespace", namespace,
            "--service-account", sa, "--pod", f"{pod.name}-0", "--ip", pod.ip, "--labels", labels,
            "--xds-address", xds, "--admin-port", "15000", "--output", str(path)]
    if ca_dir is not None:
        argv += ["--ca-dir", str(ca_dir)]
    subprocess.run(argv, check=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    return path


class Bed:
    def __init__(self, config_dir: Path, pods: dict, vips: dict, envoys: dict, cp):
        self.config_dir, self.pods, self.vips, self.envoys, self.cp = config_dir, pods, vips, envoys, cp

    def apply(self, name: str, text: str | None) -> None:
        path = self.config_dir / f"{name}.yaml"
        if text is None:
            path.unlink(missing_ok=True)
            return
        tmp = path.with_suffix(".tmp")
        tmp.write_text(text)
        tmp.replace(path)

    def reviews_pod(self, client: str) -> str:
        status, _, body = self.pods[client].http_get(self.vips["reviews"], 9080, "/", timeout=5)
        assert status == 200, (client, status, body[:200])
        return json.loads(body)["pod"]

    def pinned(self, want: dict[str, str], timeout: float = 20) -> None:
        """Wait until every client lands on the pod it should, several times in a row."""
        def ok() -> bool:
            return all(all(self.reviews_pod(c) == p for _ in range(5)) for c, p in want.items())
        wait_for(ok, timeout, interval=0.2, what=f"routing {want}")
        # The clusters the rule change updated got their assignments (meshd answers
        # Envoy's EDS re-request with just those): none is left warming, well within
        # Envoy's 15 s initial fetch timeout.
        for c in want:
            wait_for(lambda c=c: not self.envoys[c].config_dump("dynamic_warming_clusters").get("configs"), 5,
                     interval=0.2, what=f"{c}: no cluster warming")

    def gateway_get(self, path: str) -> tuple[int, bytes]:
        status, _, body = self.pods["tester"].http_get(self.pods["gateway"].ip, GW_PORT, path, timeout=5)
        return status, body


@pytest.fixture(scope="module")
def bed(tmp_path_factory):
    require_testbed()
    work = tmp_path_factory.mktemp("dr-scope")
    config_dir, ca_dir = work / "config", work / "ca"
    config_dir.mkdir()
    with TestBed() as tb:
        pods = {n: tb.add_pod(n, sidecar=n.startswith("client"))
                for n in ("client-a", "client-b", "reviews-v1", "reviews-v2", "secure-echo", "gateway", "tester")}
        vips = {n: tb.service_ip() for n in ("reviews", "secure-echo", "gateway")}
        (config_dir / "layout.yaml").write_text(layout(pods, vips))
        (config_dir / "routing.yaml").write_text(ROUTING)
        (config_dir / "gateway.yaml").write_text(GATEWAY_ROUTING)
        # The Secret exists: only the gateway's missing identity keeps it from being served.
        (config_dir / "secret.yaml").write_text(
            tls_secret_yaml("secure-echo-ca", "istio-system", make_cert(CA, ["secure-echo"]), CA.cert))
        for n in ("reviews-v1", "reviews-v2", "secure-echo"):
            pods[n].run_echo(http=[PORT])
        secure = free_port("127.0.0.1")
        with meshd(config_dir, work, extra=["--ca-dir", str(ca_dir), "--secure-xds-port", str(secure)]) as cp:
            envoys = {}
            for name in ("client-a", "client-b"):
                pod = pods[name]
                pod.forward_to_host(secure, pod_port=15012)
                labels = {"client-a": "app=client-a,track=canary", "client-b": "app=client-b"}[name]
                boot = _bootstrap(work / f"{name}.yaml", "sidecar", NS, name, pod,
                                  labels + ",security.istio.io/tlsMode=istio", ca_dir, "127.0.0.1:15012")
                envoys[name] = pod.start_envoy(boot, admin_port=15000)
            gw = pods["gateway"]
            gw.forward_to_host(cp.xds_port, pod_port=15010)  # the plaintext xDS port: no identity
            boot = _bootstrap(work / "gateway.yaml", "router", "istio-system", "istio-ingressgateway-service-account",
                              gw, "istio=ingressgateway", None, "127.0.0.1:15010")
            envoys["gateway"] = gw.start_envoy(boot, admin_port=15000)
            for name, e in envoys.items():
                wait_for(e.ready, 30, what=f"{name} envoy ready")
            b = Bed(config_dir, pods, vips, envoys, cp)
            yield b
            for name, e in envoys.items():
                bad = {k: v for k, v in e.stats("update_rejected").items() if v}
                assert bad == {}, f"{name} rejected config: {bad}"


def test_workload_selector_scopes_the_rule_to_the_selected_client(bed):
    # no selector rule: both clients follow the namespace's rule
    bed.pinned({"client-a": "reviews-v1", "client-b": "reviews-v1"})
    # the selector rule selects client-a only
    bed.apply("canary", selector_rule("track: canary"))
    bed.pinned({"client-a": "reviews-v2", "client-b": "reviews-v1"})
    # the same rule moved to client-b: they swap
    bed.apply("canary", selector_rule("app: client-b"))
    bed.pinned({"client-a": "reviews-v1", "client-b": "reviews-v2"})
    # gone: both back on the namespace's rule
    bed.apply("canary", None)
    bed.pinned({"client-a": "reviews-v1", "client-b": "reviews-v1"})


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
    status, body = bed.gateway_get("/")
    assert status == 200 and json.loads(body)["pod"].startswith("reviews-"), (status, body[:200])
    status, _ = bed.gateway_get("/secure")
    assert status == 503
    # the operator is told which rule, which field and why
    log = bed.cp.process.log()
    lines = [ln for ln in log.splitlines() if "destination rule conflict" in ln]
    assert lines, log[-3000:]
    assert "istio-system/secure-echo-origination" in lines[0]
    assert "spec.trafficPolicy.tls.credentialName" in lines[0]
    assert "plaintext xDS port" in lines[0]
