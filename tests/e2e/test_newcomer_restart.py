"""Nothing lost across a restart (issue 16 item 4), with a real Envoy gateway carrying a
steady request stream: meshd is stopped (SIGTERM), a VirtualService is edited into an
invalid one while meshd is down, and meshd starts again on the same ports and state
directory. The last good VirtualService comes back from $MESHD_HOME/lastgood: no
request fails, Envoy is sent the very versions it holds (nothing changes in it), and
meshd says what it did (log, /debug/configz, meshd_config_restored) until the file is
fixed."""
from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest

from tests.support.envoy import envoy
from tests.support.harness import Process, Traffic, free_port, http_backend, http_get, meshd, wait_for
from tests.support.manifests import documents, gateway, ingress_gateway_service

pytestmark = pytest.mark.e2e

HOST = "shop.example.com"


def config(gw_port: int, backend_port: int) -> dict[str, str]:
    return {
        "gateway.yaml": documents(ingress_gateway_service(gw_port), gateway("shop-gateway", "shop", [HOST])),
        "backend.yaml": f"""
apiVersion: v1
kind: Service
metadata: {{name: web, namespace: shop}}
spec:
  selector: {{app: web}}
  ports: [{{name: http, port: 80, targetPort: {backend_port}}}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: web-1, namespace: shop, labels: {{kubernetes.io/service-name: web}}}}
addressType: IPv4
ports: [{{name: http, port: {backend_port}, protocol: TCP}}]
endpoints: [{{addresses: ["127.0.0.2"], conditions: {{ready: true}}}}]
""",
        "virtualservice.yaml": vs("host: web"),
    }


def vs(destination: str) -> str:
    return f"""
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: shop, namespace: shop}}
spec:
  hosts: ["{HOST}"]
  gateways: [shop-gateway]
  http:
  - route:
    - destination: {{{destination}, port: {{number: 80}}}}
"""


def configz_vs(cp) -> dict:
    _, body = http_get("127.0.0.1", cp.monitoring_port, "/debug/configz")
    return next(o for o in json.loads(body)["objects"] if o["kind"] == "VirtualService")


def restored_metric(cp) -> str:
    return next((line for line in cp.metrics().splitlines()
                 if line.startswith('meshd_config_restored{kind="VirtualService"}')), "")


def test_an_invalid_edit_while_meshd_is_down_loses_nothing(tmp_path: Path):
    cfg = tmp_path / "config"
    cfg.mkdir()
    gw_port, backend_port = free_port(), free_port("127.0.0.2")
    for name, text in config(gw_port, backend_port).items():
        (cfg / name).write_text(text)
    home = tmp_path / "home"
    gateway = ["--type", "router", "--namespace", "istio-system", "--pod", "istio-ingressgateway-0", "--ip", "127.0.0.1",
               "--labels", "istio=ingressgateway"]
    with http_backend("127.0.0.2", backend_port, b"web"), \
            meshd(cfg, tmp_path, extra=["--log-format", "json"], home=home) as cp, \
            envoy(tmp_path, gateway + ["--xds-address", f"127.0.0.1:{cp.xds_port}"]) as gw:
        wait_for(lambda: http_get("127.0.0.1", gw_port, "/api/catalog", {"Host": HOST})[0] == 200, 15, what="first 200")
        wait_for(lambda: len(list(home.glob("lastgood/*/*.json"))) == 3, 10, what="the last good copies written")
        versions, changes = gw.xds_versions(), gw.config_changes()
        second = None
        try:
            with Traffic(gw_port, HOST, b"web") as traffic:
                wait_for(lambda: traffic.ok >= 20, 10, what="traffic flowing")
                cp.process.stop(signal.SIGTERM)
                assert cp.process.proc.returncode == 0, cp.log()[-2000:]
                (cfg / "virtualservice.yaml").write_text(vs("hots: web"))  # the operator's typo, meshd down
                wait_for(lambda: gw.stats("control_plane.connected_state") == {"control_plane.connected_state": 0},
                         10, what="envoy notices meshd is gone")
                second = Process("meshd", cp.process.argv, tmp_path / "meshd-restarted.log", env=cp.env)
                wait_for(lambda: cp.ready() or not second.alive(), 30, what="restarted meshd /ready")
                assert second.alive(), second.log()
                wait_for(lambda: gw.stats("control_plane.connected_state") == {"control_plane.connected_state": 1},
                         30, what="envoy reconnects")
                served = traffic.ok
                wait_for(lambda: traffic.ok >= served + 100, 20, what="traffic through the restarted meshd's config")
            assert traffic.failures == [], traffic.failures[:5]
            # content-derived versions: Envoy holds what it held, and changed nothing
            assert gw.xds_versions() == versions
            assert gw.config_changes() == changes
            assert {k: v for k, v in gw.rejected_counters().items() if v} == {}
            # reported as restored, with the file's error, until the file is fixed
            obj = configz_vs(cp)
            assert obj["restored"] and "restored from meshd's state directory" in obj["status"]
            assert obj["rejection"] and "hots" in obj["rejection"]
            assert restored_metric(cp).endswith(" 1.0")
            assert '"event": "config restored last good version"' in second.log()
            (cfg / "virtualservice.yaml").write_text(vs("host: web"))
            wait_for(lambda: restored_metric(cp).endswith(" 0.0"), 10, what="the metric back to 0 once fixed")
            assert configz_vs(cp)["restored"] is False
            assert http_get("127.0.0.1", gw_port, "/api/catalog", {"Host": HOST})[0] == 200
        finally:
            if second is not None:
                second.stop()
