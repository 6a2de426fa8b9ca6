"""The ingress story over incremental xDS: the gateway's Envoy bootstrapped with
`meshd bootstrap --xds-transport delta` (api_type DELTA_GRPC) passes the same traffic
checks as the state-of-the-world gateway test, and a DestinationRule change (clusters
updated in place) leaves no cluster warming.
"""
from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from tests.support.envoy import envoy
from tests.support.harness import free_port, http_backend, http_get, meshd, wait_for, write
from tests.support.ingress import HOST, SPLIT, backends_yaml, gateway_yaml, one_subset, vs_yaml

pytestmark = pytest.mark.e2e

GATEWAY_ARGS = ["--type", "router", "--namespace", "istio-system", "--pod", "istio-ingressgateway-delta",
                "--ip", "127.0.0.1", "--labels", "istio=ingressgateway,app=istio-ingressgateway",
                "--xds-transport", "delta"]


def test_delta_gateway_routes_live_config(tmp_path: Path):
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
            envoy(tmp_path, [*GATEWAY_ARGS, "--xds-address", f"127.0.0.1:{cp.xds_port}"]) as gw:
        status, body = wait_for(lambda: (r := get()) and r[0] == 200 and r, 15, what="first 200 through the gateway")
        assert body == b"webapp-v1 /api/catalog"
        assert get(host="unknown.example.com")[0] == 404
        assert "delta=True" in cp.log() or '"delta": true' in cp.log()

        # re-route, split, delete: the same live edits as over SotW
        write(vs, vs_yaml(one_subset("v2")))
        wait_for(lambda: get() == (200, b"webapp-v2 /api/catalog"), 5, what="re-route to v2")
        write(vs, vs_yaml(SPLIT))

        def split_seen():
            seen = Counter(get()[1].split(b" ")[0] for _ in range(20))
            return seen[b"webapp-v1"] > 0 and seen[b"webapp-v2"] > 0

        wait_for(split_seen, 5, what="weighted route in force")

        # a DestinationRule change updates clusters in place: none may stay warming
        write(cfg / "backends.yaml", backends_yaml(backend_port).replace(
            "  host: webapp\n", "  host: webapp\n  trafficPolicy: {connectionPool: {tcp: {maxConnections: 50}}}\n"))
        wait_for(lambda: '"max_connections": 50' in gw.admin("/config_dump?resource=dynamic_active_clusters"), 5,
                 what="updated clusters active")
        wait_for(lambda: "outbound|" not in gw.admin("/config_dump?resource=dynamic_warming_clusters"), 5,
                 what="no cluster left warming")
        assert split_seen()

        vs.unlink()
        wait_for(lambda: get()[0] == 404, 5, what="404 after the VirtualService is deleted")

        rejected = {k: v for k, v in gw.rejected_counters().items() if v}
        assert rejected == {}
        assert gw.stats("control_plane.connected_state") == {"control_plane.connected_state": 1}
        log = cp.log()
        assert "ads RDS: delta PUSH request for node:istio-ingressgateway-delta.istio-system resources:1" in log
