"""`meshd serve --kubeconfig`: the cluster is the source. The session's real API server
(the `kube` fixture: namespaces of this test's own) holds the objects; a real Envoy
gateway follows what is applied and deleted, and /ready waits for the first sync. (A
watch cut mid-stream, which a real server cannot be made to do, is the Kubernetes
source's unit test on the stand-in: tests/unit/test_kube_source.py.)"""
from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.envoy import envoy
from tests.support.harness import free_port, http_backend, http_get, meshd, wait_for

pytestmark = pytest.mark.e2e

HOST = "webapp.istioinaction.io"


def objects(gw_port: int, backend_port: int, system: str, ns: str) -> list[dict]:
    return [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}},
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "istio-ingressgateway", "namespace": system},
         "spec": {"selector": {"istio": "ingressgateway"}, "ports": [{"name": "http2", "port": 80, "targetPort": gw_port}]}},
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "webapp", "namespace": ns},
         "spec": {"selector": {"app": "webapp"}, "ports": [{"name": "http", "port": 80, "targetPort": backend_port}]}},
        {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "webapp-1", "namespace": ns, "labels": {"app": "webapp"}},
         "spec": {"containers": [{"name": "webapp", "image": "webapp"}]},
         "status": {"phase": "Running", "podIP": "127.0.0.2", "conditions": [{"type": "Ready", "status": "True"}]}},
        {"apiVersion": "networking.istio.io/v1", "kind": "Gateway", "metadata": {"name": "coolstore-gateway", "namespace": ns},
         "spec": {"selector": {"istio": "ingressgateway"},
                  "servers": [{"port": {"number": 80, "name": "http", "protocol": "HTTP"}, "hosts": [HOST]}]}},
    ]


def virtual_service(ns: str, port: int = 80) -> dict:
    return {"apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
            "metadata": {"name": "webapp-vs-from-gw", "namespace": ns},
            "spec": {"hosts": [HOST], "gateways": ["coolstore-gateway"],
                     "http": [{"route": [{"destination": {"host": "webapp", "port": {"number": port}}}]}]}}


def test_gateway_follows_the_cluster(kube, tmp_path: Path):
    system, ns = kube.ns("istio-system"), kube.name("istioinaction")
    gw_port, backend_port = free_port(), free_port("127.0.0.2")
    for obj in objects(gw_port, backend_port, system, ns):
        kube.apply(obj)

    def get():
        return http_get("127.0.0.1", gw_port, "/api/catalog", headers={"Host": HOST})

    with http_backend("127.0.0.2", backend_port, b"webapp-k8s"), \
            meshd(None, tmp_path, extra=["--kubeconfig", str(kube.cluster.kubeconfig),
                                         "--leader-election-namespace", system, "--root-namespace", system]) as cp, \
            envoy(tmp_path, ["--type", "router", "--namespace", system, "--pod", "istio-ingressgateway-1",
                             "--ip", "127.0.0.1", "--labels", "istio=ingressgateway",
                             "--xds-address", f"127.0.0.1:{cp.xds_port}"]) as gw:
        assert "k8s synced" in cp.log()
        # the Gateway is there but no VirtualService yet: 404
        wait_for(lambda: get()[0] == 404, 15, what="gateway listening, 404 before the VirtualService")
        kube.apply(virtual_service(ns))  # kubectl apply
        assert wait_for(lambda: (r := get()) and r[0] == 200 and r, 5, what="route after apply")[1] == b"webapp-k8s /api/catalog"
        # the pod moves: its new IP is where traffic goes (Service without EndpointSlices)
        moved = objects(gw_port, backend_port, system, ns)[3]
        moved["status"]["podIP"] = "127.0.0.3"
        with http_backend("127.0.0.3", backend_port, b"webapp-moved"):
            kube.apply(moved)
            wait_for(lambda: get() == (200, b"webapp-moved /api/catalog"), 5, what="endpoint follows the pod IP")
        # an invalid object (a port the CRD's schema takes, no port there is) is rejected,
        # the last good one stays
        kube.apply(virtual_service(ns, port=70000))
        wait_for(lambda: "config rejected" in cp.log(), 5, what="rejection logged")
        kube.apply(moved | {"status": {**moved["status"], "podIP": "127.0.0.2"}})
        wait_for(lambda: get() == (200, b"webapp-k8s /api/catalog"), 5, what="last good VirtualService still routes")
        kube.delete("networking.istio.io/v1", "VirtualService", "webapp-vs-from-gw", ns)
        wait_for(lambda: get()[0] == 404, 10, what="404 after kubectl delete")
        assert {k: v for k, v in gw.rejected_counters().items() if v} == {}
