"""Fairness and back-pressure: a proxy that stops reading does not stop the others from
converging, a stream stuck past the write timeout is dropped and the proxy can
reconnect, and no more than the configured number of responses are written at once.

The stalled client keeps gRPC's flow-control window small (no BDP probing) and never
reads, so the server's write to it blocks as it would for an Envoy whose main thread is
stuck.
"""
from __future__ import annotations

import asyncio

import grpc
import pytest
import structlog
from envoy.config.cluster.v3 import cluster_pb2
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2
from google.protobuf import duration_pb2

from controlplane import names
from controlplane.generators.resources import ResourceSet, pack
from controlplane.server.flow import PushLimiter, StreamStuck
from controlplane.server.grpc_server import build_xds_server
from controlplane.server.host import AdsOptions, AdsServer
from controlplane.server.metrics import Metrics
from tests.support.ads import NODE_ID, SotwStream, eventually, node_metadata, run
from tests.support.ads_server import FakeMesh, Harness


class BigGenerator:
    """CDS of 64 clusters with a ~16 KB description each: ~1 MB per response, like a
    sidecar's CDS in a large mesh."""

    def types(self):
        return (names.CLUSTER,)

    def generate(self, mesh, proxy, type_url, key=None):
        filler = "x" * 16_000
        return ResourceSet(type_url, [
            pack(f"c{i}", type_url, cluster_pb2.Cluster(
                name=f"c{i}", alt_stat_name=f"{mesh}-{filler}", connect_timeout=duration_pb2.Duration(seconds=1)))
            for i in range(64)
        ])


class Plane:
    def __init__(self, **kw):
        self.metrics = Metrics()
        self.ads = AdsServer(BigGenerator(), self.metrics, structlog.get_logger("test"), options=AdsOptions(**kw))

    async def __aenter__(self):
        self.server, self.port = build_xds_server(self.ads, "127.0.0.1", 0)
        await self.server.start()
        return self

    async def __aexit__(self, *exc):
        await self.server.stop(None)

    def channel(self, stalled: bool = False) -> grpc.aio.Channel:
        opts = [("grpc.http2.bdp_probe", 0), ("grpc.max_receive_message_length", -1)] if stalled else \
            [("grpc.max_receive_message_length", -1)]
        return grpc.aio.insecure_channel(f"127.0.0.1:{self.port}", options=opts)


async def stalled_client(channel: grpc.aio.Channel, node_id: str):
    """Sends its CDS request, then never reads a response."""
    done = asyncio.Event()

    async def reqs():
        req = discovery_pb2.DiscoveryRequest(type_url=names.CLUSTER)
        req.node.id = node_id
        req.node.metadata.CopyFrom(node_metadata())
        yield req
        await done.wait()

    call = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel).StreamAggregatedResources(reqs())
    return call, done


def test_a_stalled_proxy_does_not_stop_another_from_converging():
    async def main():
        async with Plane(max_pushes_in_flight=2, write_timeout=60) as p:
            p.ads.update("v1")
            stalled_ch = p.channel(stalled=True)
            call, done = await stalled_client(stalled_ch, NODE_ID.replace("gw-abc", "stuck"))
            await eventually(lambda: len(p.ads.connections()) == 1)
            await eventually(lambda: p.ads.limiter.in_flight == 1)  # its first write is stuck
            healthy_ch = p.channel()
            healthy = SotwStream(ads_pb2_grpc.AggregatedDiscoveryServiceStub(healthy_ch))
            try:
                healthy.send(names.CLUSTER)
                first = await healthy.recv()
                healthy.ack(first)
                for version in ("v2", "v3", "v4"):  # pushes keep reaching the healthy proxy
                    p.ads.update(version)
                    resp = await healthy.recv()
                    assert version in str(resp.resources[0].value[:40]) or resp.version_info != first.version_info
                    healthy.ack(resp)
                await eventually(lambda: p.ads.limiter.in_flight == 1)  # the stalled write is still stuck
                assert len(p.ads.connections()) == 2
            finally:
                await healthy.close()
                done.set()
                call.cancel()
                await healthy_ch.close()
                await stalled_ch.close()

    run(main())


def test_a_stuck_stream_is_dropped_after_the_write_timeout_and_can_reconnect():
    async def main():
        async with Plane(max_pushes_in_flight=1, write_timeout=1.0) as p:
            p.ads.update("v1")
            ch = p.channel(stalled=True)
            call, done = await stalled_client(ch, NODE_ID)
            await eventually(lambda: len(p.ads.connections()) == 1)
            # the server gives the stream up: connection state and write slot freed
            await eventually(lambda: not p.ads.connections(), timeout=10)
            assert 'meshd_xds_streams_dropped_total{reason="write_timeout"} 1.0' in p.metrics.render().decode()
            assert p.ads.limiter.in_flight == 0
            # when the proxy reads again it finds its stream ended (UNAVAILABLE: reconnect)
            # (a proxy that is wholly stuck stops answering HTTP/2 pings, and gRPC's
            # keepalive closes its connection)
            with pytest.raises(grpc.aio.AioRpcError) as err:
                async for _ in call:
                    pass
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE
            done.set()
            await ch.close()
            # the proxy reconnects (reading this time) and is served in full
            ch2 = p.channel()
            s = SotwStream(ads_pb2_grpc.AggregatedDiscoveryServiceStub(ch2))
            try:
                s.send(names.CLUSTER)
                resp = await s.recv()
                assert len(resp.resources) == 64
            finally:
                await s.close()
                await ch2.close()

    run(main())


def test_the_limiter_bounds_writes_in_flight_and_times_out():
    async def main():
        limiter = PushLimiter(max_in_flight=2, write_timeout=0.5)
        gate = asyncio.Event()
        peak = 0

        class Ctx:
            async def write(self, data):
                nonlocal peak
                peak = max(peak, limiter.in_flight)
                if data == "stuck":
                    await asyncio.sleep(1)  # past the timeout, then completes
                await gate.wait()

        writes = [asyncio.create_task(limiter.write(Ctx(), i)) for i in range(6)]
        await asyncio.sleep(0.05)
        assert limiter.in_flight == 2 and limiter.waiting == 4
        gate.set()
        await asyncio.gather(*writes)
        assert peak == 2 and limiter.in_flight == 0
        stuck = []
        write = asyncio.create_task(limiter.write(Ctx(), "stuck", on_stuck=lambda: stuck.append(limiter.in_flight)))
        await asyncio.sleep(0.7)
        assert stuck == [0]  # told at the timeout, slot already free while the write goes on
        with pytest.raises(StreamStuck):
            await write  # raised once the write completed
        assert limiter.in_flight == 0

    run(main())


def test_the_server_is_busy_while_it_writes_and_for_a_moment_after():
    """gcpolicy collects only when the server is not busy: a response written just now
    (say, the answer to an EDS re-request after a push) still counts."""
    async def main():
        async with Harness() as h:
            h.ads.update(FakeMesh("v1"))
            assert not h.ads.busy  # nothing written yet, no push queued
            s = h.stream()
            s.send(names.CLUSTER)
            await s.recv()
            assert h.ads.busy
            await asyncio.sleep(1.2)
            assert not h.ads.busy

    run(main())
