"""A burst of 100 file changes written within 50 ms reaches proxies as one push: meshd
builds one snapshot for the whole burst and the gateway (a Python SotW client here)
receives one route configuration carrying all 100 hosts.
"""
from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import pytest
from envoy.config.route.v3 import route_pb2
from envoy.service.discovery.v3 import ads_pb2_grpc

from controlplane import names
from tests.support.ads import SotwStream
from tests.support.chapter9 import GATEWAY_NODE
from tests.support.harness import free_port, meshd, wait_for, write
from tests.support.ingress import backends_yaml
from tests.support.manifests import documents, gateway, ingress_gateway_service

pytestmark = pytest.mark.e2e

GATEWAY_CONFIG = documents(ingress_gateway_service(8080), gateway("burst", "istio-system", ["*.example.com"]))


def vs(i: int) -> str:
    return f"""
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: host-{i}, namespace: istio-system}}
spec:
  hosts: [host-{i}.example.com]
  gateways: [burst]
  http: [{{route: [{{destination: {{host: webapp.istioinaction.svc.cluster.local, port: {{number: 80}}}}}}]}}]
"""


def vhosts(resp) -> int:
    rc = route_pb2.RouteConfiguration()
    resp.resources[0].Unpack(rc)
    return len(rc.virtual_hosts)


def test_a_burst_of_100_file_changes_is_one_push(tmp_path: Path):
    cfg = tmp_path / "config"
    cfg.mkdir()
    write(cfg / "gateway.yaml", GATEWAY_CONFIG)
    write(cfg / "backends.yaml", backends_yaml(free_port("127.0.0.2")))

    async def main(cp):
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{cp.xds_port}")
        gw = SotwStream(ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel), *GATEWAY_NODE)
        try:
            await gw.sync([])
            gw.send(names.ROUTE, ["http.8080"])
            first = await gw.recv()
            gw.ack(first, ["http.8080"])
            assert vhosts(first) == 1  # no VirtualService yet: the blackhole host
            builds = cp.log().count("mesh snapshot built")
            seen = len(gw.received)

            for i in range(100):  # written back to back: a few milliseconds for all
                write(cfg / f"vs-{i}.yaml", vs(i))

            rds = await gw.recv(timeout=10)
            assert rds.type_url == names.ROUTE and vhosts(rds) == 100  # the whole burst at once
            gw.ack(rds, ["http.8080"])
            # nothing else follows: one snapshot, one push
            await asyncio.sleep(1.5)
            assert len(gw.received) == seen + 1, [names.SHORT.get(r.type_url) for r in gw.received[seen:]]
            assert cp.log().count("mesh snapshot built") == builds + 1
        finally:
            await gw.close()
            await channel.close()

    with meshd(cfg, tmp_path) as cp:
        wait_for(lambda: "mesh snapshot built" in cp.log(), 10)
        asyncio.run(asyncio.wait_for(main(cp), 60))
