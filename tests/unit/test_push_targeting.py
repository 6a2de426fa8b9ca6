"""Who a push reaches and what it sends, with the real generator over real gRPC:

- a Gateway change pushes to the gateway and nothing to sidecars;
- an endpoint change pushes only EDS, only the changed ClusterLoadAssignments, and only
  to the proxies subscribed to them (SotW and delta alike);
- a change that alters nothing a proxy receives sends it nothing.
"""
from __future__ import annotations

import asyncio

import grpc
import structlog
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2
from google.protobuf import struct_pb2

from controlplane import names
from controlplane.generators import Generator
from controlplane.server.host import AdsServer
from controlplane.server.grpc_server import build_xds_server
from controlplane.server.metrics import Metrics
from tests.support.chapter9 import NS, endpoints_v2, mesh
from tests.unit.test_ads import eventually, run

CATALOG_80 = f"outbound|80||catalog.{NS}.svc.cluster.local"
CATALOG_81 = f"outbound|81||catalog.{NS}.svc.cluster.local"
WEBAPP_80 = f"outbound|80||webapp.{NS}.svc.cluster.local"

SIDECAR = (f"sidecar~10.1.0.10~webapp-1.{NS}~{NS}.svc.cluster.local",
           {"NAMESPACE": NS, "LABELS": {"app": "webapp", "security.istio.io/tlsMode": "istio"},
            "SERVICE_ACCOUNT": "webapp", "INTERCEPTION_MODE": "REDIRECT"})
SLEEP = ("sidecar~10.1.0.20~sleep-1.default~default.svc.cluster.local",
         {"NAMESPACE": "default", "LABELS": {"app": "sleep"}})
GATEWAY = ("router~10.1.0.2~gw-1.istio-system~istio-system.svc.cluster.local",
           {"NAMESPACE": "istio-system", "LABELS": {"istio": "ingressgateway"}})

SECOND_GATEWAY = """
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: second, namespace: istioinaction}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 81, name: http, protocol: HTTP}
    hosts: ["other.example.com"]
"""


class Server:
    def __init__(self):
        self.metrics = Metrics()
        self.ads = AdsServer(Generator(), self.metrics, structlog.get_logger("test"))
        self.clients: list = []

    async def __aenter__(self):
        self.server, self.port = build_xds_server(self.ads, "127.0.0.1", 0)
        await self.server.start()
        self.channel = grpc.aio.insecure_channel(f"127.0.0.1:{self.port}")
        self.stub = ads_pb2_grpc.AggregatedDiscoveryServiceStub(self.channel)
        return self

    async def __aexit__(self, *exc):
        try:
            for c in self.clients:
                await c.close()
            await self.channel.close()
        finally:
            await self.server.stop(None)

    def sotw(self, node) -> "SotwClient":
        c = SotwClient(self.stub, *node)
        self.clients.append(c)
        return c


class SotwClient:
    """An Envoy-like SotW client: CDS and LDS wildcard, EDS for the given clusters."""

    def __init__(self, stub, node_id, metadata):
        self.node_id, self.metadata = node_id, metadata
        self._out: asyncio.Queue = asyncio.Queue()
        self._in: asyncio.Queue = asyncio.Queue()
        self.call = stub.StreamAggregatedResources(self._requests())
        self._pump_task = asyncio.create_task(self._pump())
        self._sent_node = False
        self.received: list[discovery_pb2.DiscoveryResponse] = []

    async def _requests(self):
        while (r := await self._out.get()) is not None:
            yield r

    async def _pump(self):
        try:
            async for resp in self.call:
                self.received.append(resp)
                await self._in.put(resp)
        except (grpc.aio.AioRpcError, asyncio.CancelledError):
            pass

    def send(self, type_url, names_=(), version="", nonce=""):
        req = discovery_pb2.DiscoveryRequest(type_url=type_url, resource_names=list(names_), version_info=version,
                                             response_nonce=nonce)
        if not self._sent_node:
            req.node.id = self.node_id
            md = struct_pb2.Struct()
            md.update(self.metadata)
            req.node.metadata.CopyFrom(md)
            self._sent_node = True
        self._out.put_nowait(req)

    async def recv(self, timeout: float = 5.0) -> discovery_pb2.DiscoveryResponse:
        return await asyncio.wait_for(self._in.get(), timeout)

    def ack(self, resp, names_=()):
        self.send(resp.type_url, names_, resp.version_info, resp.nonce)

    async def sync(self, eds: list[str]) -> None:
        """Subscribe like Envoy and ACK everything."""
        self.send(names.CLUSTER)
        cds = await self.recv()
        self.send(names.ENDPOINT, eds)
        self.ack(cds)
        self.ack(await self.recv(), eds)
        self.send(names.LISTENER)
        self.ack(await self.recv())

    async def barrier(self) -> None:
        """An RDS request naming a new route is always answered: anything received before
        its answer was pushed before it."""
        self.send(names.ROUTE, [f"barrier-{len(self.received)}"])
        resp = await self.recv()
        assert resp.type_url == names.ROUTE, f"unexpected {names.SHORT.get(resp.type_url)} push"
        self.ack(resp, [f"barrier-{len(self.received) - 1}"])

    async def close(self):
        self._out.put_nowait(None)
        self.call.cancel()
        self._pump_task.cancel()
        await asyncio.gather(self._pump_task, return_exceptions=True)


def cla_names(resp) -> list[str]:
    out = []
    for a in resp.resources:
        cla = endpoint_pb2.ClusterLoadAssignment()
        a.Unpack(cla)
        out.append(cla.cluster_name)
    return sorted(out)


def test_a_gateway_change_pushes_to_gateways_and_nothing_to_sidecars():
    async def main():
        async with Server() as s:
            s.ads.update(mesh())
            sidecar, gateway = s.sotw(SIDECAR), s.sotw(GATEWAY)
            await sidecar.sync([CATALOG_80])
            await gateway.sync([WEBAPP_80])
            await eventually(lambda: len(s.ads.connections()) == 2)
            queued = s.ads.update(mesh(SECOND_GATEWAY))
            assert queued == 1  # the gateway's connection only
            lds = await gateway.recv()
            assert lds.type_url == names.LISTENER and len(lds.resources) == 2
            await sidecar.barrier()  # nothing arrived before the barrier's answer

    run(main())


def test_an_endpoint_change_pushes_only_the_changed_assignments_to_their_subscribers():
    async def main():
        async with Server() as s:
            s.ads.update(mesh())
            webapp, sleep, gateway = s.sotw(SIDECAR), s.sotw(SLEEP), s.sotw(GATEWAY)
            await webapp.sync([CATALOG_80, CATALOG_81, WEBAPP_80])
            await sleep.sync([WEBAPP_80])  # not subscribed to catalog's endpoints
            await gateway.sync([WEBAPP_80, CATALOG_80])
            await eventually(lambda: len(s.ads.connections()) == 3)
            s.ads.update(mesh(endpoints_v2("10.1.0.13")))  # one more catalog pod
            eds = await webapp.recv()
            assert eds.type_url == names.ENDPOINT
            assert cla_names(eds) == [CATALOG_80, CATALOG_81]  # not webapp's: unchanged
            webapp.ack(eds, [CATALOG_80, CATALOG_81, WEBAPP_80])
            gw_eds = await gateway.recv()
            assert gw_eds.type_url == names.ENDPOINT and cla_names(gw_eds) == [CATALOG_80]
            for c in (webapp, sleep, gateway):
                await c.barrier()  # no CDS, LDS or RDS pushed to anyone, nothing to sleep

    run(main())


def test_an_endpoint_change_over_delta_sends_one_resource():
    from tests.unit.test_delta import DeltaStream, by_name

    async def main():
        async with Server() as s:
            s.ads.update(mesh())
            d = DeltaStream(s.stub)
            s.clients.append(d)
            d.send(names.CLUSTER)
            d.ack(await d.recv())
            d.send(names.ENDPOINT, subscribe=[CATALOG_80, WEBAPP_80])
            d.ack(await d.recv())
            s.ads.update(mesh(endpoints_v2("10.1.0.13")))
            resp = await d.recv()
            assert resp.type_url == names.ENDPOINT and list(by_name(resp)) == [CATALOG_80]
            assert not resp.removed_resources

    run(main())


def test_an_unrelated_change_queues_no_push():
    async def main():
        async with Server() as s:
            s.ads.update(mesh())
            sleep = s.sotw(SLEEP)
            await sleep.sync([WEBAPP_80])
            await eventually(lambda: len(s.ads.connections()) == 1)
            unrelated = """
apiVersion: v1
kind: Pod
metadata: {name: job-1, namespace: default, labels: {app: job}}
spec: {containers: [{name: job}]}
status: {podIP: 10.1.0.99}
"""
            assert s.ads.update(mesh(unrelated)) == 0
            await sleep.barrier()
            # and re-pushing the same snapshot re-checks everyone (an explicit push)
            assert s.ads.update(s.ads.mesh, "manual") == 1

    run(main())
