"""Start-up: a proxy that connects while meshd is still starting is held, never served a
partial picture, and its first answers are the whole configuration, as the plain
builders make it from the same files (generation warms per group of proxies, on their
first requests, after the first snapshot)."""
from __future__ import annotations

import asyncio
import dataclasses

import grpc
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.service.discovery.v3 import ads_pb2_grpc

from bench.scenario import Scenario
from controlplane import app, names
from controlplane.config.store import ConfigStore
from controlplane.generators import builders
from controlplane.model.mesh import build_mesh
from controlplane.model.proxy import parse_node
from controlplane.sources.directory import DirectorySource
from tests.support.ads import SotwStream, node_metadata
from tests.support.harness import free_port

SCENARIO = Scenario(services=12, sidecars=6, gateways=1, namespaces=3)


def unpacked(resp, msg_type) -> dict[str, object]:
    out = {}
    for a in resp.resources:
        m = msg_type()
        a.Unpack(m)
        out[getattr(m, "name", "") or m.cluster_name] = m
    return out


def test_a_proxy_connecting_during_start_up_gets_the_whole_configuration(tmp_path):
    config = tmp_path / "config"
    SCENARIO.write(config)
    store = ConfigStore()
    DirectorySource(config, store).load()
    mesh = build_mesh(store.snapshot())
    plain = builders()
    port = free_port("127.0.0.1")
    opts = app.ServeOptions(config_dir=config, xds_port=port, monitoring_port=free_port("127.0.0.1"),
                            listen_address="127.0.0.1", secure_xds_port=0, state_dir=tmp_path / "state")

    async def scenario() -> None:
        stop = asyncio.Event()
        serving = asyncio.create_task(app.serve(opts, stop))
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
        try:
            await asyncio.wait_for(channel.channel_ready(), 30)  # the port is open: meshd is starting
            stub = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel)
            for spec in (SCENARIO.proxies()[0], SCENARIO.proxies()[-1]):  # a sidecar, a gateway
                # No CA here: the plaintext port's streams have no workload certificate.
                proxy = dataclasses.replace(parse_node(spec.node_id, node_metadata(spec.metadata())), workload_cert=False)
                stream = SotwStream(stub, spec.node_id, spec.metadata())
                stream.send(names.CLUSTER)
                cds = await stream.recv()
                want = dict(plain[names.CLUSTER](mesh, proxy))
                assert unpacked(cds, cluster_pb2.Cluster) == want, spec.node_id
                eds_names = sorted(n for n, c in want.items() if c.type == cluster_pb2.Cluster.EDS)
                stream.send(names.ENDPOINT, eds_names)
                eds = await stream.recv()
                assert unpacked(eds, endpoint_pb2.ClusterLoadAssignment) == {
                    n: m for n, m in plain[names.ENDPOINT](mesh, proxy) if n in eds_names}, spec.node_id
                await stream.close()
        finally:
            stop.set()
            await channel.close()
            await asyncio.wait_for(serving, 15)

    asyncio.run(scenario())
