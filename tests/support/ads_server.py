"""meshd's ADS server in the test's process, on a real gRPC port on 127.0.0.1, for the
clients of ads.py: `Harness` (SotW streams by default) and `DeltaHarness` (delta
streams), around meshd's Generator or `FakeGenerator`, a tiny generator whose
`FakeMesh` says exactly which clusters, endpoints and listeners exist."""
from __future__ import annotations

from dataclasses import dataclass

import grpc
import structlog
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import address_pb2
from envoy.config.endpoint.v3 import endpoint_components_pb2, endpoint_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.service.discovery.v3 import ads_pb2_grpc
from google.protobuf import duration_pb2

from controlplane import names
from controlplane.generators.resources import ResourceSet, pack
from controlplane.server.grpc_server import build_xds_server
from controlplane.server.host import AdsServer
from controlplane.server.metrics import Metrics
from tests.support.ads import NODE_ID, DeltaStream, SotwStream


@dataclass(frozen=True)
class FakeMesh:
    version: str
    clusters: tuple[tuple[str, int], ...] = (("a", 1), ("b", 1), ("c", 1))  # (name, connect timeout s)
    endpoints: tuple[tuple[str, str], ...] = (("a", "10.0.0.1"), ("b", "10.0.0.2"), ("c", "10.0.0.3"))
    listeners: tuple[str, ...] = ("0.0.0.0_8080",)


# The first FakeMesh("v1") with cluster a changed.
CHANGED = FakeMesh("v2", clusters=(("a", 2), ("b", 1), ("c", 1)))


class FakeGenerator:
    """CDS, EDS and LDS of a FakeMesh, counting its calls."""

    def __init__(self) -> None:
        self.calls = 0

    def types(self):
        return (names.CLUSTER, names.ENDPOINT, names.LISTENER)

    def generate(self, mesh: FakeMesh, proxy, type_url: str, key=None) -> ResourceSet:
        self.calls += 1
        if type_url == names.CLUSTER:
            items = [
                pack(n, type_url, cluster_pb2.Cluster(name=n, connect_timeout=duration_pb2.Duration(seconds=s)))
                for n, s in mesh.clusters
            ]
        elif type_url == names.ENDPOINT:
            items = [pack(n, type_url, _cla(n, ip)) for n, ip in mesh.endpoints]
        elif type_url == names.LISTENER:
            items = [pack(n, type_url, listener_pb2.Listener(name=n)) for n in mesh.listeners]
        else:
            items = []
        return ResourceSet(type_url, items)


def _cla(cluster: str, ip: str) -> endpoint_pb2.ClusterLoadAssignment:
    sock = address_pb2.SocketAddress(address=ip, port_value=8080)
    lb = endpoint_components_pb2.LbEndpoint(
        endpoint=endpoint_components_pb2.Endpoint(address=address_pb2.Address(socket_address=sock))
    )
    return endpoint_pb2.ClusterLoadAssignment(
        cluster_name=cluster, endpoints=[endpoint_components_pb2.LocalityLbEndpoints(lb_endpoints=[lb])]
    )


class Harness:
    """An AdsServer on a real gRPC port plus a client channel; always torn down, with every
    stream it opened. `stream()` opens a SotW stream (a delta one in DeltaHarness)."""

    def __init__(self, generator=None, *, logger=None, secrets=None):
        self.metrics = Metrics()
        self.generator = generator if generator is not None else FakeGenerator()
        self.ads = AdsServer(self.generator, self.metrics, logger or structlog.get_logger("test"), secrets=secrets)
        self.streams: list = []

    async def __aenter__(self):
        self.server, self.port = build_xds_server(self.ads, "127.0.0.1", 0)
        await self.server.start()
        try:
            self.channel = grpc.aio.insecure_channel(f"127.0.0.1:{self.port}")
            self.stub = ads_pb2_grpc.AggregatedDiscoveryServiceStub(self.channel)
        except BaseException:
            await self.server.stop(None)
            raise
        return self

    async def __aexit__(self, *exc) -> None:
        try:
            for s in self.streams:
                await s.close()
            await self.channel.close()
        finally:
            await self.server.stop(None)

    def sotw(self, node_id: str = NODE_ID, metadata: dict | None = None) -> SotwStream:
        return self._keep(SotwStream(self.stub, node_id, metadata))

    def delta(self, node_id: str = NODE_ID, metadata: dict | None = None) -> DeltaStream:
        return self._keep(DeltaStream(self.stub, node_id, metadata))

    def stream(self):
        return self.sotw()

    def _keep(self, s):
        self.streams.append(s)
        return s


class DeltaHarness(Harness):
    def stream(self) -> DeltaStream:
        return self.delta()
