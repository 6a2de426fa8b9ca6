"""`meshd serve --kubeconfig`: the cluster is the source. A stand-in API server speaking
Kubernetes' list/watch protocol (no real one can run here) holds the objects; a real
Envoy gateway follows what is applied and deleted, and /ready waits for the first sync."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tests.support.envoy import envoy
from tests.support.harness import free_port, http_backend, http_get, meshd, wait_for
from tests.support.kubeapi import FakeApiServer

pytestmark = pytest.mark.e2e

HOST = "webapp.istioinaction.io"


def kubeconfig(path: Path, url: str) -> Path:
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "stand-in",
        "clusters": [{"name": "stand-in", "cluster": {"server": url}}],
        "users": [{"name": "meshd", "user": {"token": "test"}}],
        "contexts": [{"name": "stand-in", "context": {"cluster": "stand-in", "user": "meshd"}}],
    }))
    return path


def objects(gw_port: int, backend_port: int) -> list[dict]:
    return [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "istioinaction"}},
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "istio-ingressgateway", "namespace": "istio-system"},
         "spec": {"selector": {"istio": "ingressgateway"}, "ports": [{"name": "http2", "port": 80, "targetPort": gw_port}]}},
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "webapp", "namespace": "istioinaction"},
         "spec": {"selector": {"app": "webapp"}, "ports": [{"name": "http", "port": 80, "targetPort": backend_port}]}},
        {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "webapp-1", "namespace": "istioinaction", "labels": {"app": "webapp"}},
         "spec": {"containers": [{"name": "webapp", "image": "webapp"}]},
         "status": {"phase": "Running", "podIP": "127.0.0.2", "conditions": [{"type": "Ready", "status": "True"}]}},
        {"apiVersion": "networking.istio.io/v1", "kind": "Gateway", "metadata": {"name": "coolstore-gateway", "namespace": "istioinaction"},
         "spec": {"selector": {"istio": "ingressgateway"},
                  "servers": [{"port": {"number": 80, "name": "http", "protocol": "HTTP"}, "hosts": [HOST]}]}},
    ]


VS = {"apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
      "metadata": {"name": "webapp-vs-from-gw", "namespace": "istioinaction"},
      "spec": {"hosts": [HOST], "gateways": ["coolstore-gateway"],
               "http": [{"route": [{"destination": {"host": "webapp", "port": {"number": 80}}}]}]}}


def test_gateway_follows_the_cluster(tmp_path: Path):
    gw_port, backend_port = free_port(), free_port("127.0.0.2")
    api = FakeApiServer()
    api.start()
    try:
        for obj in objects(gw_port, backend_port):
            api.apply(obj)
        cfg = kubeconfig(tmp_path / "kubeconfig", api.url)

        def get():
            return http_get("127.0.0.1", gw_port, "/api/catalog", headers={"Host": HOST})

        with http_backend("127.0.0.2", backend_port, b"webapp-k8s"), \
                meshd(None, tmp_path, extra=["--kubeconfig", str(cfg)]) as cp, \
                envoy(tmp_path, ["--type", "router", "--namespace", "istio-system", "--pod", "istio-ingressgateway-1",
                                 "--ip", "127.0.0.1", "--labels", "istio=ingressgateway",
                                 "--xds-address", f"127.0.0.1:{cp.xds_port}"]) as gw:
            assert "k8s synced" in cp.log()
            # the Gateway is there but no VirtualService yet: 404
            wait_for(lambda: get()[0] == 404, 15, what="gateway listening, 404 before the VirtualService")
            api.apply(VS)  # kubectl apply
            assert wait_for(lambda: (r := get()) and r[0] == 200 and r, 5, what="route after apply")[1] == b"webapp-k8s /api/catalog"
            # the pod moves: its new IP is where traffic goes (Service without EndpointSlices)
            moved = objects(gw_port, backend_port)[3]
            moved["status"]["podIP"] = "127.0.0.3"
            with http_backend("127.0.0.3", backend_port, b"webapp-moved"):
                api.apply(moved)
                wait_for(lambda: get() == (200, b"webapp-moved /api/catalog"), 5, what="endpoint follows the pod IP")
            # an invalid object is rejected, the last good one stays
            bad = {**VS, "spec": {**VS["spec"], "http": [{"route": [{"destination": {"host": "webapp", "port": {"number": "eighty"}}}]}]}}
            api.apply(bad)
            wait_for(lambda: "config rejected" in cp.log(), 5, what="rejection logged")
            api.apply(moved | {"status": {**moved["status"], "podIP": "127.0.0.2"}})
            wait_for(lambda: get() == (200, b"webapp-k8s /api/catalog"), 5, what="last good VirtualService still routes")
            # the watch is cut: meshd resumes, then a delete is seen
            api.cut_watches()
            api.delete("networking.istio.io/v1", "VirtualService", "webapp-vs-from-gw", "istioinaction")
            wait_for(lambda: get()[0] == 404, 10, what="404 after kubectl delete")
            assert {k: v for k, v in gw.rejected_counters().items() if v} == {}
    finally:
        api.stop()
