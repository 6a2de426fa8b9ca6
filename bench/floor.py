"""The floor: a trivial grpcio ADS server that serves pre-serialized bytes.

It knows no config, no protocol state beyond "what did I send last", and does no
generation: it replays the responses meshd sent to one proxy of each group (proxy kind
and namespace), captured by the load generator, with fresh versions and nonces. Its
time to push the same bytes to the same clients is what sending costs in Python gRPC on
this machine; meshd's push time divided by it is the overhead of everything else.

- A request with an empty nonce (the first for a type) is answered with the captured
  first response of the proxy's group.
- `push` sends each given type's captured last response to every stream, with a new
  version, in the given order (CDS then EDS, as meshd answers Envoy's EDS re-request
  after a cluster change). ACKs are not answered.

Runs in its own process; the driver sends ("push", [types]) over a pipe.
"""
from __future__ import annotations

import asyncio
import os
import sys
import time
from typing import Any

import grpc

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from envoy.service.discovery.v3 import discovery_pb2

from controlplane.server.grpc_server import SERVER_OPTIONS
from controlplane.server.wire import delta_response, field_bytes, serialize, sotw_response


def _group(node_id: str, metadata: Any) -> tuple[str, str]:
    kind = node_id.split("~", 1)[0]
    ns = metadata.fields["NAMESPACE"].string_value if "NAMESPACE" in metadata.fields else ""
    return kind, ns


class Prepared:
    """One captured response, its resources encoded once; re-versioned per send."""

    def __init__(self, data: bytes, delta: bool):
        self.delta = delta
        if delta:
            resp = discovery_pb2.DeltaDiscoveryResponse.FromString(data)
            self.blob = b"".join(field_bytes(2, r.SerializeToString()) for r in resp.resources)
            self.removed = list(resp.removed_resources)
        else:
            resp = discovery_pb2.DiscoveryResponse.FromString(data)
            self.blob = b"".join(field_bytes(2, a.SerializeToString()) for a in resp.resources)
        self.type_url = resp.type_url

    def bytes(self, version: str, nonce: str) -> bytes:
        if self.delta:
            return delta_response(version, [self.blob], self.type_url, nonce, self.removed)
        return sotw_response(version, [self.blob], self.type_url, nonce)


class FloorServer:
    def __init__(self, capture: dict, delta: bool):
        self.delta = delta
        self.first = {g: {t: Prepared(d, delta) for t, d in v["first"].items()} for g, v in capture.items()}
        self.last = {g: {t: Prepared(d, delta) for t, d in v["last"].items()} for g, v in capture.items()}
        self.streams: list[tuple[tuple[str, str], asyncio.Queue]] = []
        self.counter = 0
        self.version = "floor-0"

    def nonce(self) -> str:
        self.counter += 1
        return f"n{self.counter}"

    async def handler(self, request_iterator, context) -> None:
        requests = request_iterator.__aiter__()
        first = await requests.__anext__()
        group = _group(first.node.id, first.node.metadata)
        out: asyncio.Queue = asyncio.Queue()
        entry = (group, out)
        self.streams.append(entry)

        async def read():
            req = first
            while True:
                if not req.response_nonce and req.type_url in self.first.get(group, {}):
                    out.put_nowait(self.first[group][req.type_url].bytes(self.version, self.nonce()))
                try:
                    req = await requests.__anext__()
                except StopAsyncIteration:
                    out.put_nowait(None)
                    return

        reader = asyncio.create_task(read())
        try:
            while (data := await out.get()) is not None:
                await context.write(data)
        finally:
            reader.cancel()
            self.streams.remove(entry)

    def push(self, types: list[str]) -> int:
        self.version = f"floor-{time.time_ns()}"
        n = 0
        for group, out in self.streams:
            for t in types:
                prepared = self.last.get(group, {}).get(t)
                if prepared is not None:
                    out.put_nowait(prepared.bytes(self.version, self.nonce()))
                    n += 1
        return n


async def _serve(capture: dict, delta: bool, port: int, pipe: Any) -> None:
    floor = FloorServer(capture, delta)
    server = grpc.aio.server(options=SERVER_OPTIONS)
    method = "DeltaAggregatedResources" if delta else "StreamAggregatedResources"
    deser = discovery_pb2.DeltaDiscoveryRequest.FromString if delta else discovery_pb2.DiscoveryRequest.FromString
    handler = grpc.method_handlers_generic_handler("envoy.service.discovery.v3.AggregatedDiscoveryService", {
        method: grpc.stream_stream_rpc_method_handler(floor.handler, request_deserializer=deser, response_serializer=serialize),
    })
    server.add_generic_rpc_handlers((handler,))
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    pipe.send("ready")
    loop = asyncio.get_running_loop()
    try:
        while True:
            cmd = await loop.run_in_executor(None, pipe.recv)
            if cmd[0] == "push":
                pipe.send(floor.push(cmd[1]))
            elif cmd[0] == "streams":
                pipe.send(len(floor.streams))
            else:
                pipe.send("ok")
                break
    finally:
        await server.stop(0)


def process_main(capture: dict, delta: bool, port: int, pipe: Any) -> None:
    asyncio.run(_serve(capture, delta, port, pipe))
