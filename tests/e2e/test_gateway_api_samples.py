"""Istio's `gateway-api` samples (../shared/corpus/istio/samples/*/gateway-api/) through
real Envoy gateways, as their READMEs describe, with meshd reading a directory.

The samples' manifests are copied unchanged (no namespace: `default`, as `kubectl apply`
would put them). What Kubernetes would add is written beside them: the Service Istio's
deployment controller creates for each Gateway (`<gateway>-istio`, selecting the pods
labelled `gateway.networking.k8s.io/gateway-name: <gateway>`, its port 80 on a free
local port), and the sample apps' Services with one Pod each, answered by the test's
echo backends (tests/support/traffic.py: they name themselves in `x-backend`), on the
Service ports as the samples' containers listen. Each
Gateway gets its own Envoy, found by that label; the proxy of one Gateway serves only its
own sample.

- bookinfo: `/productpage`, `/static/*`, `/login`, `/logout`, `/api/v1/products*` reach
  productpage; other paths are 404 (the route's matches are all there is);
- httpbin: every path reaches httpbin:8000;
- helloworld: `/hello` is split between v1 and v2 (the Service selects both), then, with
  helloworld-versions.yaml and helloworld-route.yaml applied (a file change, as `kubectl
  apply`), about 90 % to helloworld-v1 and 10 % to v2.
"""
from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from controlplane.names import GATEWAY_NAME_LABEL
from tests.support.envoy import envoy
from tests.support.harness import free_port, http_get, meshd, wait_for, write
from tests.support.paths import shared
from tests.support.traffic import Client, backend, service_yaml

pytestmark = pytest.mark.e2e

SAMPLES = ("corpus", "istio", "samples")
NS = "default"
GATEWAYS = ("bookinfo-gateway", "httpbin-gateway", "helloworld-gateway")
# backend name -> (ip, service, service port, pod labels)
APPS = {
    "productpage": ("127.0.0.51", "productpage", 9080, {"version": "v1"}),
    "httpbin": ("127.0.0.52", "httpbin", 8000, {"version": "v1"}),
    "helloworld-v1": ("127.0.0.53", "helloworld", 5000, {"version": "v1"}),
    "helloworld-v2": ("127.0.0.54", "helloworld", 5000, {"version": "v2"}),
}


def sample(*parts: str) -> Path:
    return shared(*SAMPLES, *parts)


def gateway_vip(gateway: str) -> str:
    return f"10.96.100.{GATEWAYS.index(gateway) + 1}"


def gateway_service(gateway: str, target: int) -> str:
    """The Service istiod's deployment controller creates for a Gateway."""
    return f"""apiVersion: v1
kind: Service
metadata: {{name: {gateway}-istio, namespace: {NS}}}
spec:
  clusterIP: {gateway_vip(gateway)}
  selector: {{{GATEWAY_NAME_LABEL}: {gateway}}}
  ports: [{{name: http, port: 80, targetPort: {target}}}]
"""


def app_services() -> str:
    """The apps' Services, each port's targetPort the port itself (the sample's
    helloworld-versions.yaml leaves it out: the backends listen on the Service ports)."""
    by_service: dict[str, list[tuple[str, int, dict]]] = {}
    for ip, svc, svc_port, labels in APPS.values():
        by_service.setdefault(svc, []).append((ip, svc_port, labels))
    return "---\n".join(service_yaml(svc, NS, [("http", pods[0][1], pods[0][1])], [(ip, labels) for ip, _, labels in pods])
                        for svc, pods in by_service.items())


@pytest.fixture(scope="module")
def samples(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("gateway-api-samples")
    cfg = tmp / "config"
    cfg.mkdir()
    gw_ports = {gw: free_port() for gw in GATEWAYS}
    shutil.copy(sample("bookinfo", "gateway-api", "bookinfo-gateway.yaml"), cfg / "bookinfo-gateway.yaml")
    shutil.copy(sample("httpbin", "gateway-api", "httpbin-gateway.yaml"), cfg / "httpbin-gateway.yaml")
    shutil.copy(sample("helloworld", "gateway-api", "helloworld-gateway.yaml"), cfg / "helloworld-gateway.yaml")
    write(cfg / "gateway-services.yaml", "---\n".join(gateway_service(gw, p) for gw, p in gw_ports.items()))
    write(cfg / "apps.yaml", app_services())
    with contextlib.ExitStack() as stack:
        for name, (ip, _, svc_port, _) in APPS.items():
            stack.enter_context(backend(name, ip, svc_port))
        cp = stack.enter_context(meshd(cfg, tmp))
        proxies = {}
        for i, gw in enumerate(GATEWAYS):
            proxies[gw] = stack.enter_context(envoy(tmp, [
                "--type", "router", "--namespace", NS, "--pod", f"{gw}-istio-5d8f9-{i}", "--ip", "127.0.0.1",
                "--labels", f"{GATEWAY_NAME_LABEL}={gw}", "--xds-address", f"127.0.0.1:{cp.xds_port}"]))
        clients = {gw: Client(p, "sample.example.com") for gw, p in gw_ports.items()}
        for gw, client in clients.items():
            wait_for(lambda client=client: _status(client, "/no-such-path") in (200, 404), 20,
                     what=f"{gw}'s Envoy listening")
        yield cfg, clients, cp
        for gw, proxy in proxies.items():
            rejected = {k: v for k, v in proxy.rejected_counters().items() if v}
            assert rejected == {}, (gw, rejected)


def _status(client: Client, path: str) -> int | None:
    try:
        return client.get(path)[0]
    except OSError:
        return None


def test_bookinfo_routes_the_productpage_paths_only(samples):
    _, clients, _ = samples
    client = clients["bookinfo-gateway"]
    wait_for(lambda: _status(client, "/productpage") == 200, 20, what="bookinfo's route served")
    for path in ("/productpage", "/static/bootstrap.css", "/login", "/logout", "/api/v1/products/1/reviews"):
        status, headers, body = client.get(path)
        assert (status, headers.get("x-backend")) == (200, "productpage"), (path, status, body[:200])
    for path in ("/", "/productpage/extra", "/loginx", "/reviews"):
        assert client.get(path)[0] == 404, path


def test_httpbin_routes_every_path(samples):
    _, clients, _ = samples
    client = clients["httpbin-gateway"]
    wait_for(lambda: _status(client, "/get") == 200, 20, what="httpbin's route served")
    for path in ("/", "/get", "/status/418", "/headers"):
        status, headers, _ = client.get(path)
        assert (status, headers.get("x-backend")) == (200, "httpbin"), path
    # the other samples' paths are not this Gateway's
    assert client.json("/productpage")["backend"] == "httpbin"


def test_helloworld_splits_by_service_then_by_route_weights(samples):
    cfg, clients, _ = samples
    client = clients["helloworld-gateway"]
    wait_for(lambda: _status(client, "/hello") == 200, 20, what="helloworld's route served")
    assert client.get("/")[0] == 404
    counts = Counter(client.get("/hello")[1].get("x-backend") for _ in range(200))
    assert set(counts) == {"helloworld-v1", "helloworld-v2"} and min(counts.values()) >= 50, counts

    # "Configure weight-based routing": the versions' Services (they select the helloworld
    # Pods by version), then the weighted route, which replaces the sample's first
    # HTTPRoute of the same name (as `kubectl apply` does: one file holds it here)
    shutil.copy(sample("helloworld", "gateway-api", "helloworld-versions.yaml"), cfg / "helloworld-versions.yaml")
    write(cfg / "helloworld-gateway.yaml", sample("helloworld", "gateway-api", "helloworld-gateway.yaml").read_text()
          .split("---")[0])
    write(cfg / "helloworld-route.yaml", sample("helloworld", "gateway-api", "helloworld-route.yaml").read_text())

    def split() -> Counter:
        return Counter(client.get("/hello")[1].get("x-backend") for _ in range(400))

    wait_for(lambda: split()["helloworld-v1"] > 300, 20, what="the 90/10 route applied")
    counts = split()
    assert counts["helloworld-v1"] + counts["helloworld-v2"] == 400, counts
    assert 0.84 <= counts["helloworld-v1"] / 400 <= 0.96, counts



BROKEN_ROUTE = """apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: broken, namespace: default}
spec:
  parentRefs: [{name: httpbin-gateway, sectionName: https}]
  rules: [{backendRefs: [{name: httpbin, port: 8000}]}]
"""


def test_status_shows_in_configz_and_meshd_analyze(samples):
    """Directory mode: /debug/configz's gatewayAPI section has the status meshd computed,
    and `meshd analyze --meshd` reports a route that does not attach."""
    cfg, _, cp = samples

    def section() -> dict:
        configz = json.loads(http_get("127.0.0.1", cp.monitoring_port, "/debug/configz")[1])
        return {(e["kind"], e["name"]): e["status"] for e in configz["gatewayAPI"]}

    bookinfo = section()[("HTTPRoute", "bookinfo")]["parents"][0]
    assert bookinfo["parentRef"]["name"] == "bookinfo-gateway"
    assert {c["type"]: c["status"] for c in bookinfo["conditions"]} == {"Accepted": "True", "ResolvedRefs": "True"}
    gateway = section()[("Gateway", "httpbin-gateway")]
    conditions = {c["type"]: c["status"] for c in gateway["conditions"]}
    assert conditions["Accepted"] == conditions["Programmed"] == "True" and set(conditions.values()) == {"True"}
    # the README's INGRESS_HOST: `kubectl get gtw httpbin-gateway -o jsonpath='{.status.addresses[*].value}'`
    assert gateway["addresses"] == [{"type": "IPAddress", "value": gateway_vip("httpbin-gateway")}]
    assert gateway["listeners"][0]["attachedRoutes"] == 1

    write(cfg / "broken-route.yaml", BROKEN_ROUTE)
    try:
        wait_for(lambda: ("HTTPRoute", "broken") in section(), 20, what="the broken route in configz")
        parent = section()[("HTTPRoute", "broken")]["parents"][0]
        accepted = next(c for c in parent["conditions"] if c["type"] == "Accepted")
        assert (accepted["status"], accepted["reason"]) == ("False", "NoMatchingParent")
        out = subprocess.run([sys.executable, "-m", "controlplane", "analyze", "--meshd",
                              f"http://127.0.0.1:{cp.monitoring_port}"], capture_output=True, text=True, timeout=60)
        lines = [ln for ln in out.stdout.splitlines() if "MSH002" in ln]
        assert len(lines) == 1 and lines[0].startswith("Error [MSH0020] (HTTPRoute default/broken"), out.stdout + out.stderr
        assert "NoMatchingParent" in lines[0]
    finally:
        (cfg / "broken-route.yaml").unlink()
    wait_for(lambda: ("HTTPRoute", "broken") not in section(), 20, what="the broken route gone")
