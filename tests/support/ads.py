"""ADS clients for tests, as Envoy speaks to meshd: a one-shot request to a running meshd
(`ads_fetch`, blocking), and streaming state-of-the-world and delta clients over
grpc.aio (`SotwStream`, `DeltaStream`) with what protocol tests need: the node on the
first request only (as our bootstraps set it), ACK/NACK, barriers, and what a delta
client holds. In-process servers to talk to are in ads_server.py.

"Not answered" is checked with a barrier where possible: responses on a stream are
strictly ordered, so if the answer to a later request arrives first, the earlier
request was not answered.
"""
from __future__ import annotations

import asyncio
import threading

import grpc
from envoy.extensions.transport_sockets.tls.v3 import secret_pb2
from envoy.service.discovery.v3 import discovery_pb2
from google.protobuf import struct_pb2
from google.rpc import status_pb2

from controlplane import names

# A gateway's node (most protocol tests need one proxy, any proxy).
NODE_ID = "router~10.0.0.1~gw-abc.istio-system~istio-system.svc.cluster.local"
GATEWAY_METADATA = {"NAMESPACE": "istio-system", "LABELS": {"istio": "ingressgateway"}, "CLUSTER_ID": "Kubernetes"}
TIMEOUT = 5.0


def run(coro):
    """Run a test's coroutine, never for more than a minute."""
    return asyncio.run(asyncio.wait_for(coro, 60))


async def eventually(pred, timeout: float = TIMEOUT) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not pred():
        if loop.time() > end:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.02)


def node_metadata(metadata: dict | None = None) -> struct_pb2.Struct:
    """The node metadata Struct (the gateway's unless given)."""
    md = struct_pb2.Struct()
    md.update(GATEWAY_METADATA if metadata is None else metadata)
    return md


def names_of(resp, msg_type) -> list[str]:
    """The names of a SotW response's resources (clusters, listeners, assignments...)."""
    out = []
    for a in resp.resources:
        m = msg_type()
        a.Unpack(m)
        out.append(getattr(m, "name", "") or getattr(m, "cluster_name", ""))
    return out


def secrets_of(resp) -> dict[str, secret_pb2.Secret]:
    """A SotW SDS response's Secrets by name."""
    out = {}
    for a in resp.resources:
        s = secret_pb2.Secret()
        a.Unpack(s)
        out[s.name] = s
    return out


def by_name(resp) -> dict[str, discovery_pb2.Resource]:
    """A delta response's resources by name."""
    return {r.name: r for r in resp.resources}


class _Stream:
    """The request queue and the response pump of one ADS stream (grpc.aio)."""

    def __init__(self, call_factory, node_id: str, metadata: dict | None):
        self.node_id, self.metadata = node_id, metadata
        self._out: asyncio.Queue = asyncio.Queue()
        self._in: asyncio.Queue = asyncio.Queue()
        self.call = call_factory(self._requests())
        self._pump_task = asyncio.create_task(self._pump())
        self._sent_node = False
        self.received: list = []  # every response, in order

    async def _requests(self):
        while (r := await self._out.get()) is not None:
            yield r

    async def _pump(self):
        try:
            async for resp in self.call:
                self.received.append(resp)
                await self._in.put(resp)
            await self._in.put(EOFError("stream ended"))
        except grpc.aio.AioRpcError as e:
            await self._in.put(e)
        except asyncio.CancelledError:
            pass

    def _put(self, req, node_id: str | None = None, error: str | None = None) -> None:
        if not self._sent_node:  # set_node_on_first_message_only, as our bootstraps do
            req.node.id = node_id or self.node_id
            req.node.metadata.CopyFrom(node_metadata(self.metadata))
            self._sent_node = True
        if error is not None:
            req.error_detail.CopyFrom(status_pb2.Status(code=13, message=error))
        self._out.put_nowait(req)

    async def _next(self, timeout: float):
        item = await asyncio.wait_for(self._in.get(), timeout)
        if isinstance(item, BaseException):
            raise item
        return item

    async def expect_nothing(self, wait: float = 0.3) -> None:
        """No response within `wait` seconds."""
        try:
            got = await self._next(wait)
        except TimeoutError:
            return
        raise AssertionError(f"expected no response, got {names.SHORT.get(got.type_url, got.type_url)}")

    async def close(self) -> None:
        self._out.put_nowait(None)
        self.call.cancel()
        self._pump_task.cancel()
        await asyncio.gather(self._pump_task, return_exceptions=True)


class SotwStream(_Stream):
    """A state-of-the-world ADS stream (StreamAggregatedResources)."""

    def __init__(self, stub, node_id: str = NODE_ID, metadata: dict | None = None):
        super().__init__(stub.StreamAggregatedResources, node_id, metadata)

    def send(self, type_url, names_=(), version="", nonce="", error=None, node_id=None):
        req = discovery_pb2.DiscoveryRequest(
            type_url=type_url, resource_names=list(names_), version_info=version, response_nonce=nonce
        )
        self._put(req, node_id, error)

    def ack(self, resp, names_=()):
        self.send(resp.type_url, names_, version=resp.version_info, nonce=resp.nonce)

    async def recv(self, timeout: float = TIMEOUT) -> discovery_pb2.DiscoveryResponse:
        return await self._next(timeout)

    async def sync(self, eds: list[str]) -> None:
        """Subscribe like Envoy (CDS and LDS wildcard, EDS for `eds`) and ACK everything."""
        self.send(names.CLUSTER)
        cds = await self.recv()
        self.send(names.ENDPOINT, eds)
        self.ack(cds)
        self.ack(await self.recv(), eds)
        self.send(names.LISTENER)
        self.ack(await self.recv())

    async def barrier(self) -> None:
        """An LDS request with an empty nonce is always answered: the next response."""
        self.send(names.LISTENER)
        resp = await self.recv()
        assert resp.type_url == names.LISTENER, f"unexpected earlier response for {resp.type_url}"

    async def route_barrier(self) -> None:
        """An RDS request naming a new route is always answered: anything received before
        its answer was pushed before it (for streams where an LDS push may be expected)."""
        self.send(names.ROUTE, [f"barrier-{len(self.received)}"])
        resp = await self.recv()
        assert resp.type_url == names.ROUTE, f"unexpected {names.SHORT.get(resp.type_url)} push"
        self.ack(resp, [f"barrier-{len(self.received) - 1}"])


class DeltaStream(_Stream):
    """An incremental ADS stream (DeltaAggregatedResources) that remembers what it holds,
    as Envoy does: `held[type_url][name] = version`."""

    def __init__(self, stub, node_id: str = NODE_ID, metadata: dict | None = None):
        super().__init__(stub.DeltaAggregatedResources, node_id, metadata)
        self.held: dict[str, dict[str, str]] = {}

    def send(self, type_url, subscribe=(), unsubscribe=(), nonce="", error=None, initial=None):
        req = discovery_pb2.DeltaDiscoveryRequest(
            type_url=type_url, resource_names_subscribe=list(subscribe), resource_names_unsubscribe=list(unsubscribe),
            response_nonce=nonce,
        )
        if initial:
            req.initial_resource_versions.update(initial)
        self._put(req, None, error)

    async def recv(self, timeout: float = TIMEOUT) -> discovery_pb2.DeltaDiscoveryResponse:
        item = await self._next(timeout)
        held = self.held.setdefault(item.type_url, {})
        for r in item.resources:
            held[r.name] = r.version
        for n in item.removed_resources:
            held.pop(n, None)
        return item

    def ack(self, resp):
        self.send(resp.type_url, nonce=resp.nonce)

    async def barrier(self) -> None:
        """Subscribing to a name is always answered (even if held): the next response
        must be that answer."""
        self.send(names.LISTENER, subscribe=["0.0.0.0_8080"])
        resp = await self.recv()
        assert resp.type_url == names.LISTENER, f"unexpected earlier response for {resp.type_url}"


def ads_fetch(port: int, node_id: str, node_metadata: dict, type_url: str, resource_names: list[str], *,
              root_pem: bytes | None = None, token: str | None = None,
              server_name: str = "istiod.istio-system.svc", timeout: float = 10.0):
    """One state-of-the-world request on a new ADS stream to 127.0.0.1:port and the first
    response (a DiscoveryResponse). TLS when `root_pem` is given (verifying meshd as
    `server_name`), with `authorization: Bearer <token>` when `token` is. Raises
    grpc.RpcError when meshd refuses the stream."""
    import grpc
    from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2

    req = discovery_pb2.DiscoveryRequest(type_url=type_url, resource_names=resource_names)
    req.node.id = node_id
    req.node.metadata.update(node_metadata)
    if root_pem is not None:
        channel = grpc.secure_channel(f"127.0.0.1:{port}", grpc.ssl_channel_credentials(root_pem),
                                      options=[("grpc.ssl_target_name_override", server_name)])
    else:
        channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    done = threading.Event()

    def requests():
        yield req
        done.wait(timeout)  # hold the stream open until the answer is in

    try:
        call = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel).StreamAggregatedResources(
            requests(), metadata=[("authorization", f"Bearer {token}")] if token else None, timeout=timeout)
        try:
            return next(call)
        finally:
            done.set()
            call.cancel()
    finally:
        channel.close()
