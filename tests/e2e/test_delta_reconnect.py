"""A delta client reconnecting to a real meshd with `initial_resource_versions` is sent
nothing it already holds; a later change sends only the changed resource. The client is
a Python delta xDS client (tests/support/ads.py) acting as the ingress gateway.
"""
from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import pytest
from envoy.service.discovery.v3 import ads_pb2_grpc

from controlplane import names
from tests.support.ads import DeltaStream, by_name
from tests.support.harness import free_port, meshd, write
from tests.support.ingress import backends_yaml, gateway_yaml, one_subset, vs_yaml

pytestmark = pytest.mark.e2e


async def sync(stub) -> tuple[DeltaStream, dict]:
    """Subscribe like Envoy (CDS, EDS for every cluster, LDS, RDS) and ACK everything."""
    s = DeltaStream(stub)
    s.send(names.CLUSTER)
    cds = await s.recv()
    s.ack(cds)
    eds_names = sorted(n for n in by_name(cds) if n.startswith("outbound|"))  # the EDS clusters
    s.send(names.ENDPOINT, subscribe=eds_names)
    s.ack(await s.recv())
    s.send(names.LISTENER)
    s.ack(await s.recv())
    s.send(names.ROUTE, subscribe=["http.8080"])
    s.ack(await s.recv())
    return s, {"eds": eds_names}


async def rds_barrier(s: DeltaStream) -> None:
    """Subscribing to a route name is always answered: nothing came before it."""
    s.send(names.ROUTE, subscribe=["http.8080"])
    resp = await s.recv()
    assert resp.type_url == names.ROUTE, f"{names.SHORT.get(resp.type_url)} was sent"
    s.ack(resp)


def test_reconnect_with_initial_resource_versions_resends_nothing_unchanged(tmp_path: Path):
    cfg = tmp_path / "config"
    cfg.mkdir()
    backend_port = free_port("127.0.0.2")
    write(cfg / "gateway.yaml", gateway_yaml(8080))
    write(cfg / "backends.yaml", backends_yaml(backend_port))
    vs = cfg / "virtualservice.yaml"
    write(vs, vs_yaml(one_subset("v1")))

    async def main(cp):
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{cp.xds_port}")
        stub = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel)
        try:
            first, info = await sync(stub)
            held = {t: dict(v) for t, v in first.held.items()}
            assert len(held[names.CLUSTER]) == 5 and len(held[names.ENDPOINT]) == 4
            await first.close()

            # reconnect declaring everything held: nothing is sent again
            again = DeltaStream(stub)
            again.send(names.CLUSTER, initial=held[names.CLUSTER])
            again.send(names.ENDPOINT, subscribe=info["eds"], initial=held[names.ENDPOINT])
            again.send(names.LISTENER, initial=held[names.LISTENER])
            await asyncio.sleep(0.5)
            again.send(names.ROUTE, subscribe=["http.8080"], initial=held[names.ROUTE])
            await asyncio.sleep(0.5)
            assert again._in.empty(), "meshd resent resources the client holds"

            # a change on the new stream sends only the changed route configuration
            write(vs, vs_yaml(one_subset("v2")))
            resp = await again.recv(timeout=10)
            assert resp.type_url == names.ROUTE and list(by_name(resp)) == ["http.8080"]
            assert by_name(resp)["http.8080"].version != held[names.ROUTE]["http.8080"]
            again.ack(resp)
            await rds_barrier(again)
            await again.close()

            # a client that missed the change while away gets exactly that resource
            third = DeltaStream(stub)
            third.send(names.ROUTE, subscribe=["http.8080"], initial=held[names.ROUTE])
            resp = await third.recv(timeout=10)
            assert list(by_name(resp)) == ["http.8080"]
            third.send(names.CLUSTER, initial=held[names.CLUSTER], nonce="")
            await asyncio.sleep(0.5)
            assert third._in.empty()
            await third.close()
        finally:
            await channel.close()

    with meshd(cfg, tmp_path) as cp:
        asyncio.run(asyncio.wait_for(main(cp), 60))
