"""The foundation story end to end: meshd + a real Envoy ingress gateway + backends.

Gateway -> VirtualService -> DestinationRule -> Pod, live edits of the YAML directory,
weighted routing and 404s, with Envoy's rejection counters checked at the end.
"""
from __future__ import annotations

import http.client
import time
from collections import Counter
from pathlib import Path

import pytest

from tests.support.envoy import envoy
from tests.support.harness import free_port, http_backend, http_get, meshd, wait_for, write
from tests.support.ingress import HOST, SPLIT, backends_yaml, gateway_yaml, one_subset, vs_yaml

pytestmark = pytest.mark.e2e


def test_gateway_routes_live_config(tmp_path: Path):
    cfg = tmp_path / "config"
    cfg.mkdir()
    gw_port, backend_port = free_port(), free_port("127.0.0.2")
    write(cfg / "gateway.yaml", gateway_yaml(gw_port))
    write(cfg / "backends.yaml", backends_yaml(backend_port))
    vs = cfg / "virtualservice.yaml"
    write(vs, vs_yaml(one_subset("v1")))

    def get(host: str = HOST, path: str = "/api/catalog"):
        return http_get("127.0.0.1", gw_port, path, headers={"Host": host})

    with http_backend("127.0.0.2", backend_port, b"webapp-v1"), http_backend("127.0.0.3", backend_port, b"webapp-v2"), \
            meshd(cfg, tmp_path) as cp, \
            envoy(tmp_path, ["--type", "router", "--namespace", "istio-system", "--pod", "istio-ingressgateway-7d4b9",
                             "--ip", "127.0.0.1", "--labels", "istio=ingressgateway,app=istio-ingressgateway",
                             "--xds-address", f"127.0.0.1:{cp.xds_port}"]) as gw:
        # 1. the Gateway + VirtualService answer with the first backend
        status, body = wait_for(lambda: (r := get()) and r[0] == 200 and r, 15, what="first 200 through the gateway")
        assert body == b"webapp-v1 /api/catalog"

        # Istio's names reached Envoy
        dump = gw.admin("/config_dump")
        for name in ('"0.0.0.0_' + str(gw_port) + '"', f'"http.{gw_port}"', f'"{HOST}:80"',
                     '"outbound|80|v1|webapp.istioinaction.svc.cluster.local"'):
            assert name in dump, f"{name} missing from Envoy's config_dump"

        # 2. an unknown Host gets 404
        assert get(host="unknown.example.com")[0] == 404

        # 3. editing the VirtualService re-routes within 2 s, Envoy not restarted
        pid = gw.process.proc.pid
        write(vs, vs_yaml(one_subset("v2")))
        t0 = time.monotonic()
        wait_for(lambda: get() == (200, b"webapp-v2 /api/catalog"), 2.0, interval=0.02, what="re-route to v2 within 2s")
        print(f"re-route visible after {time.monotonic() - t0:.2f}s")
        assert gw.process.proc.pid == pid and gw.process.alive()

        # 4. broken YAML is rejected; the last good VirtualService stays in force
        write(vs, vs_yaml("    - destination: {host: webapp, port: {number: eighty}}"))
        wait_for(lambda: "config rejected" in cp.log() and "virtualservice.yaml" in cp.log(), 3, what="rejection logged")
        for _ in range(5):
            assert get() == (200, b"webapp-v2 /api/catalog")

        # 5. a 50/50 split over two subsets
        write(vs, vs_yaml(SPLIT))

        def split_seen():
            seen = Counter(get()[1].split(b" ")[0] for _ in range(20))
            return seen[b"webapp-v1"] > 0 and seen[b"webapp-v2"] > 0

        wait_for(split_seen, 5, what="weighted route in force")
        counts: Counter = Counter()
        conn = http.client.HTTPConnection("127.0.0.1", gw_port, timeout=5)
        try:
            for _ in range(1000):
                conn.request("GET", "/api/catalog", headers={"Host": HOST})
                r = conn.getresponse()
                counts[(r.status, r.read().split(b" ")[0])] += 1
        finally:
            conn.close()
        v1, v2 = counts[(200, b"webapp-v1")], counts[(200, b"webapp-v2")]
        assert v1 + v2 == 1000, counts
        assert 400 <= v1 <= 600 and 400 <= v2 <= 600, counts

        # 6. deleting the VirtualService brings back 404
        vs.unlink()
        wait_for(lambda: get()[0] == 404, 3, what="404 after the VirtualService is deleted")

        # Envoy never rejected anything meshd sent, and is connected
        rejected = gw.rejected_counters()
        assert rejected.get("listener_manager.lds.update_rejected") == 0
        assert rejected.get("cluster_manager.cds.update_rejected") == 0
        assert any(k.endswith(f"rds.http.{gw_port}.update_rejected") for k in rejected), rejected
        assert any(".update_rejected" in k and k.startswith("cluster.outbound|") for k in rejected), rejected
        assert {k: v for k, v in rejected.items() if v} == {}
        assert gw.stats("control_plane.connected_state") == {"control_plane.connected_state": 1}

        # meshd logged each push, istiod-style, and counted them
        log = cp.log()
        assert "ads RDS: PUSH request for node:istio-ingressgateway-7d4b9.istio-system resources:1" in log
        metrics = cp.metrics()
        assert "pilot_xds_pushes" in metrics
