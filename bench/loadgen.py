"""A fleet of simulated proxies that speak xDS the way Envoy does, for the benchmark.

Run in its own process (the driver, bench/run.py, talks to it over a pipe). Each
simulated proxy has its own gRPC channel (one HTTP/2 connection, as an Envoy has) and
one ADS stream, state of the world or delta:

SotW (as Envoy 1.40, see DESIGN.md): CDS wildcard first; on a CDS response it
(re-)requests EDS for the EDS clusters (named, with the last EDS version and nonce: after
a cluster change this looks exactly like an ACK) and holds the CDS ACK until the EDS
answer arrived (cluster warming); then LDS wildcard, RDS for the route names the
listeners use, ACK/NACK with version and nonce.
Delta: CDS and LDS wildcard (no names), EDS/RDS subscribed and unsubscribed as clusters
and listeners come and go, each response ACKed with its nonce.

Shortcuts that do not change what the server sees: the names a Cluster or Listener
refers to are decoded once per distinct resource (by name and version for delta, by
bytes for SotW) and remembered across the fleet, the way the same config repeats across
proxies; a resource is otherwise not decoded (Envoy would apply it).

Measurements: the driver `arm`s a condition (a new version of a type ACKed, or a named
resource received and ACKed) and asks for `status`: how many proxies met it and when
(wall clock, shared with the driver), and how many responses of each type arrived since.
"""
from __future__ import annotations

import asyncio
import gc
import os
import re
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import grpc

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from envoy.config.listener.v3 import listener_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2
from envoy.service.discovery.v3 import discovery_pb2
from google.protobuf import any_pb2, struct_pb2

from bench.scenario import ProxySpec

CDS = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
EDS = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"
LDS = "type.googleapis.com/envoy.config.listener.v3.Listener"
RDS = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"
SDS = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"
SHORT = {CDS: "CDS", EDS: "EDS", LDS: "LDS", RDS: "RDS", SDS: "SDS"}
HCM = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
CHANNEL_OPTIONS = [("grpc.max_receive_message_length", -1), ("grpc.max_send_message_length", -1),
                   ("grpc.use_local_subchannel_pool", 1),  # a connection per proxy, as Envoy has
                   ("grpc.keepalive_time_ms", 300_000)]


def _ident(b: bytes) -> bytes:
    return b


def _head_class():
    """DiscoveryResponse with `resources` left as bytes: a SotW response is read for its
    version, nonce and type, and its resources counted, without decoding 1,200 Anys
    (an Envoy applies them; the simulated one need not look)."""
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

    f = descriptor_pb2.FileDescriptorProto(name="bench_head.proto", package="bench", syntax="proto3")
    m = f.message_type.add(name="ResponseHead")
    for number, name, label, kind in ((1, "version_info", 1, 9), (2, "resources", 3, 12), (4, "type_url", 1, 9),
                                      (5, "nonce", 1, 9)):  # label 1 optional / 3 repeated; type 9 string / 12 bytes
        m.field.add(name=name, number=number, label=label, type=kind)
    pool = descriptor_pool.DescriptorPool()
    pool.Add(f)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("bench.ResponseHead"))


ResponseHead = _head_class()


def _any_value(entry: bytes) -> bytes:
    return any_pb2.Any.FromString(entry).value


# --- what a resource refers to, decoded once per distinct resource ------------------------
_eds_of: dict[bytes, str | None] = {}  # Cluster bytes -> its EDS service name (None: not EDS)
_routes_of: dict[bytes, tuple[str, ...]] = {}  # Listener bytes -> RDS names


def cluster_eds_name(value: bytes) -> str | None:
    got = _eds_of.get(value, "")
    if got != "":
        return got
    from envoy.config.cluster.v3 import cluster_pb2

    c = cluster_pb2.Cluster.FromString(value)
    got = (c.eds_cluster_config.service_name or c.name) if c.type == cluster_pb2.Cluster.EDS else None
    _eds_of[value] = got
    return got


# A Cluster inside a response: the Any's type_url, then its value, whose first fields are
# name (1) and, for EDS clusters, type (2) = EDS (3), in that order (protobuf serializers
# write fields in number order). Scanning the bytes finds the EDS clusters of a 1 MB CDS
# response in C, instead of a Python loop over a thousand resources; the simulated fleet
# must cost far less than the server it measures. Checked against the resource count,
# with a full decode as the fallback.
_CLUSTER_AT = re.compile(
    re.escape(b"\x0a" + bytes([len(CDS)]) + CDS.encode() + b"\x12") + rb"[\x80-\xff]{0,4}[\x00-\x7f]\x0a([\x00-\x7f])")


def eds_cluster_names(data: bytes, resp: Any) -> list[str]:
    names, count = [], 0
    for m in _CLUSTER_AT.finditer(data):
        start = m.end()
        end = start + data[start - 1]
        count += 1
        if data[end:end + 2] == b"\x10\x03":
            names.append(data[start:end].decode())
    if count == len(resp.resources) and names:
        return sorted(set(names))
    # Another server's field order (istiod writes a Cluster's type after other fields):
    # decode, once per distinct set of clusters across the fleet.
    key = hash(b"".join(resp.resources))
    got = _eds_sets.get(key)
    if got is None:
        if len(_eds_sets) > 256:
            _eds_sets.clear()
        got = _eds_sets[key] = sorted({n for a in resp.resources if (n := cluster_eds_name(_any_value(a)))})
    return got


_eds_sets: dict[int, list[str]] = {}


def listener_routes(value: bytes) -> tuple[str, ...]:
    got = _routes_of.get(value)
    if got is None:
        lst = listener_pb2.Listener.FromString(value)
        names = []
        chains = list(lst.filter_chains) + ([lst.default_filter_chain] if lst.HasField("default_filter_chain") else [])
        for ch in chains:
            for f in ch.filters:
                if f.typed_config.type_url == HCM:
                    h = hcm_pb2.HttpConnectionManager.FromString(f.typed_config.value)
                    if h.HasField("rds"):
                        names.append(h.rds.route_config_name)
        got = _routes_of[value] = tuple(sorted(set(names)))
    return got


# --- measurement ---------------------------------------------------------------------------
@dataclass
class Condition:
    label: str
    kind: str  # "version" | "resource"
    type_url: str
    name: str = ""
    armed_at: float = 0.0


@dataclass
class Record:
    """One proxy's view, for the driver."""

    acked: dict[str, str] = field(default_factory=dict)  # type -> last ACKed version (SotW) / system version
    received: dict[str, int] = field(default_factory=dict)  # type -> responses
    bytes: int = 0
    synced_at: float = 0.0  # all four types answered and ACKed once
    baseline: dict[str, dict[str, str]] = field(default_factory=dict)  # label -> type -> acked version
    counts_at: dict[str, dict[str, int]] = field(default_factory=dict)  # label -> received at arm
    done: dict[str, float] = field(default_factory=dict)  # label -> when the condition held
    errors: int = 0


class Fleet:
    def __init__(self):
        self.records: list[Record] = []
        self.conditions: dict[str, Condition] = {}
        self.active: list[Condition] = []
        self.done: dict[str, int] = {}  # label -> proxies that met it (cheap to poll)
        self.capture: dict[tuple[str, str], dict[str, dict[str, bytes]]] = {}  # group -> {first,last} -> type -> bytes

    def arm(self, label: str, kind: str, type_url: str, name: str = "") -> None:
        cond = Condition(label, kind, type_url, name, time.time())
        for r in self.records:
            r.baseline[label] = dict(r.acked)
            r.counts_at[label] = dict(r.received)
        self.conditions[label] = cond
        self.active = [cond]  # the driver waits for one condition at a time

    def status(self, label: str) -> dict:
        times = [r.done[label] for r in self.records if label in r.done]
        since: dict[str, int] = {}
        for r in self.records:
            for t, n in r.received.items():
                d = n - r.counts_at.get(label, {}).get(t, 0)
                if d:
                    since[SHORT.get(t, t)] = since.get(SHORT.get(t, t), 0) + d
        cond = self.conditions[label]
        return {"done": len(times), "total": len(self.records), "times": times, "armed_at": cond.armed_at,
                "responses_since": since}

    def check(self, rec: Record, type_url: str, version: str, data: bytes | None) -> None:
        now = time.time()
        for cond in self.active:
            if cond.label in rec.done or cond.type_url != type_url:
                continue
            if (cond.kind == "version" and version != rec.baseline.get(cond.label, {}).get(type_url)) or (
                    cond.kind == "resource" and data is not None and cond.name.encode() in data):
                rec.done[cond.label] = now
                self.done[cond.label] = self.done.get(cond.label, 0) + 1

    def keep(self, group: tuple[str, str], type_url: str, data: bytes) -> None:
        slot = self.capture.setdefault(group, {"first": {}, "last": {}})
        slot["first"].setdefault(type_url, data)
        slot["last"][type_url] = data


# --- simulated proxies ---------------------------------------------------------------------
async def _converse(proxy, first_type: str) -> None:
    """One stream, read and written by one task: each response is handled and the
    requests it causes are written before the next is read (an Envoy answers a response
    before it looks at the next one too). Writing on the call directly, instead of
    feeding a request iterator through a queue, saves a task switch per message."""
    call = proxy.call()
    proxy.send(first_type)
    while True:
        for req in proxy.out:
            await call.write(req)
        proxy.out.clear()
        data = await call.read()
        if data is grpc.aio.EOF:
            return
        proxy.on_response(data)


def _node(req: Any, spec: ProxySpec) -> None:
    req.node.id = spec.node_id
    md = struct_pb2.Struct()
    md.update(spec.metadata())
    req.node.metadata.CopyFrom(md)


class SotwProxy:
    def __init__(self, spec: ProxySpec, channel: grpc.aio.Channel, fleet: Fleet, rec: Record, sds: bool):
        self.spec, self.fleet, self.rec, self.sds = spec, fleet, rec, sds
        self.group = (spec.kind, spec.namespace)
        self.call = channel.stream_stream(
            "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources",
            request_serializer=_ident, response_deserializer=_ident,
        )
        self.out: list = []  # requests to write after the response being handled
        self.first = True
        self._body: dict[str, tuple[Any, bytes]] = {}  # type -> (names object, serialized names + type)
        self.state: dict[str, tuple[str, str, list[str]]] = {}  # type -> (version, nonce, names)
        self.eds_names: list[str] = []
        self.cluster_count = -1
        self.rds_names: list[str] = []
        self.pending_cds: tuple[str, str] | None = None  # CDS ACK held until EDS arrives (warming)
        self.synced: set[str] = set()
        self.listening = False  # LDS asked for on this stream

    def reconnected(self) -> None:
        """A new stream: Envoy subscribes afresh (its nonces are gone, it asks for LDS again)."""
        self.first, self.out, self.state, self.pending_cds, self.listening = True, [], {}, None, False
        self.cluster_count, self.rds_names = -1, []

    def send(self, type_url: str, names=(), version: str = "", nonce: str = "") -> None:
        # An ACK repeats the name list (1,200 EDS names for a sidecar): serialize the list
        # once per list and append version and nonce (protobuf's wire format merges
        # concatenated messages), so the simulated fleet costs far less than the server.
        body = self._body.get(type_url)
        if body is None or body[0] is not names:
            body = self._body[type_url] = (names, discovery_pb2.DiscoveryRequest(
                type_url=type_url, resource_names=list(names)).SerializeToString())
        rest = discovery_pb2.DiscoveryRequest(version_info=version, response_nonce=nonce)
        if self.first:
            _node(rest, self.spec)
            self.first = False
        self.out.append(body[1] + rest.SerializeToString())

    async def run(self) -> None:
        await _converse(self, CDS)

    def on_response(self, data: bytes) -> None:
        resp = ResponseHead.FromString(data)
        t, version, nonce = resp.type_url, resp.version_info, resp.nonce
        rec = self.rec
        rec.received[t] = rec.received.get(t, 0) + 1
        rec.bytes += len(data)
        self.fleet.keep(self.group, t, data)
        if t == CDS:
            # The EDS names are re-derived when the cluster count changes: the benchmark
            # only adds or removes clusters (a rename at equal count would go unnoticed;
            # the requests sent are those Envoy would send for these scenarios).
            count = len(resp.resources)
            if count != self.cluster_count:
                self.cluster_count = count
                self.eds_names = eds_cluster_names(data, resp)
            names = self.eds_names
            self.state[CDS] = (version, nonce, [])
            # Envoy: (re-)request EDS for the clusters (warming), ACK CDS once EDS answered.
            ev, en, _ = self.state.get(EDS, ("", "", []))
            self.pending_cds = (version, nonce)
            self.send(EDS, names, ev, en)
            if not names:
                self._ack_cds()
        elif t == EDS:
            self.state[EDS] = (version, nonce, self.eds_names)
            self.send(EDS, self.eds_names, version, nonce)
            self._acked(EDS, version, data)
            if self.pending_cds is not None:
                self._ack_cds()
        elif t == LDS:
            names = sorted({n for a in resp.resources for n in listener_routes(_any_value(a))})
            self.state[LDS] = (version, nonce, [])
            if names != self.rds_names or RDS not in self.state:
                self.rds_names = names
                rv, rn, _ = self.state.get(RDS, ("", "", []))
                self.send(RDS, names, rv, rn)
            self.send(LDS, (), version, nonce)
            self._acked(LDS, version, data)
        elif t == RDS:
            self.state[RDS] = (version, nonce, self.rds_names)
            self.send(RDS, self.rds_names, version, nonce)
            self._acked(RDS, version, data)
        else:
            self.send(t, [], version, nonce)
            self._acked(t, version, data)

    def _ack_cds(self) -> None:
        assert self.pending_cds is not None  # called only while an ACK is held
        version, nonce = self.pending_cds
        self.pending_cds = None
        self.send(CDS, (), version, nonce)
        first = not self.listening
        self.listening = True
        self._acked(CDS, version, None)
        if first:
            self.send(LDS)
            if self.sds:
                self.send(SDS, ["ROOTCA", "default"])

    def _acked(self, t: str, version: str, data: bytes | None) -> None:
        self.rec.acked[t] = version
        self.fleet.check(self.rec, t, version, data)
        self.synced.add(t)
        if not self.rec.synced_at and {CDS, EDS, LDS, RDS} <= self.synced:
            self.rec.synced_at = time.time()


class DeltaProxy:
    def __init__(self, spec: ProxySpec, channel: grpc.aio.Channel, fleet: Fleet, rec: Record, sds: bool):
        self.spec, self.fleet, self.rec, self.sds = spec, fleet, rec, sds
        self.group = (spec.kind, spec.namespace)
        self.call = channel.stream_stream(
            "/envoy.service.discovery.v3.AggregatedDiscoveryService/DeltaAggregatedResources",
            request_serializer=discovery_pb2.DeltaDiscoveryRequest.SerializeToString, response_deserializer=_ident,
        )
        self.out: list = []
        self.first = True
        self.held: dict[str, dict[str, str]] = {}
        self.eds: set[str] = set()
        self.cluster_eds: dict[str, str] = {}  # cluster -> its EDS name
        self.rds: set[str] = set()
        self.listener_rds: dict[str, tuple[str, ...]] = {}
        self.synced: set[str] = set()
        self.listening = False  # LDS subscribed on this stream

    def reconnected(self) -> None:
        """A new stream: subscribed afresh, holding nothing."""
        self.first, self.out, self.listening = True, [], False
        self.held, self.eds, self.cluster_eds, self.rds, self.listener_rds = {}, set(), {}, set(), {}

    def send(self, type_url: str, subscribe=(), unsubscribe=(), nonce: str = "") -> None:
        req = discovery_pb2.DeltaDiscoveryRequest(type_url=type_url, resource_names_subscribe=list(subscribe),
                                                  resource_names_unsubscribe=list(unsubscribe), response_nonce=nonce)
        if self.first:
            _node(req, self.spec)
            self.first = False
        self.out.append(req)

    async def run(self) -> None:
        await _converse(self, CDS)

    def on_response(self, data: bytes) -> None:
        resp = discovery_pb2.DeltaDiscoveryResponse.FromString(data)
        t = resp.type_url
        rec = self.rec
        rec.received[t] = rec.received.get(t, 0) + 1
        rec.bytes += len(data)
        self.fleet.keep(self.group, t, data)
        held = self.held.setdefault(t, {})
        for n in resp.removed_resources:
            held.pop(n, None)
        if t == CDS:
            for r in resp.resources:
                held[r.name] = r.version
                eds = cluster_eds_name(r.resource.value)
                if eds:
                    self.cluster_eds[r.name] = eds
                else:
                    self.cluster_eds.pop(r.name, None)
            for n in resp.removed_resources:
                self.cluster_eds.pop(n, None)
            want = set(self.cluster_eds.values())
            add, drop = want - self.eds, self.eds - want
            self.eds = want
            if add or drop:
                self.send(EDS, sorted(add), sorted(drop))
            self.send(CDS, nonce=resp.nonce)
            first = not self.listening
            self.listening = True
            self._acked(CDS, resp.system_version_info, None)
            if first:
                self.send(LDS)
                if self.sds:
                    self.send(SDS, ["ROOTCA", "default"])
        elif t == LDS:
            for r in resp.resources:
                held[r.name] = r.version
                self.listener_rds[r.name] = listener_routes(r.resource.value)
            for n in resp.removed_resources:
                self.listener_rds.pop(n, None)
            want = {n for names in self.listener_rds.values() for n in names}
            add, drop = want - self.rds, self.rds - want
            self.rds = want
            if add or drop:
                self.send(RDS, sorted(add), sorted(drop))
            self.send(LDS, nonce=resp.nonce)
            self._acked(LDS, resp.system_version_info, None)
        else:
            for r in resp.resources:
                held[r.name] = r.version
            self.send(t, nonce=resp.nonce)
            self._acked(t, resp.system_version_info, data)

    def _acked(self, t: str, version: str, data: bytes | None) -> None:
        self.rec.acked[t] = version
        self.fleet.check(self.rec, t, version, data)
        self.synced.add(t)
        if not self.rec.synced_at and {CDS, EDS, LDS, RDS} <= self.synced:
            self.rec.synced_at = time.time()


# --- the process ---------------------------------------------------------------------------
async def _fleet_main(specs: list[ProxySpec], address: str, transport: str, pipe: Any, sds: bool,
                      credentials: Any = None, tokens: dict | None = None, ramp: float = 0.0) -> None:
    fleet = Fleet()
    channels, tasks = [], []
    kind = DeltaProxy if transport == "delta" else SotwProxy

    async def one(proxy) -> None:
        while True:
            try:
                await proxy.run()
            except grpc.aio.AioRpcError:
                proxy.rec.errors += 1
            except asyncio.CancelledError:
                return
            await asyncio.sleep(1)  # reconnect, as Envoy does (with backoff)
            proxy.reconnected()

    for i, spec in enumerate(specs):
        if credentials is not None:
            ch = grpc.aio.secure_channel(address, credentials, options=CHANNEL_OPTIONS + [
                ("grpc.ssl_target_name_override", "istiod.istio-system.svc")])
        else:
            ch = grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS)
        rec = Record()
        fleet.records.append(rec)
        proxy = kind(spec, ch, fleet, rec, sds)
        if tokens:
            proxy.call = _with_token(proxy.call, tokens[spec.service_account, spec.namespace])
        channels.append(ch)
        tasks.append(asyncio.create_task(one(proxy)))
        if ramp and i % 100 == 99:
            await asyncio.sleep(ramp)

    loop = asyncio.get_running_loop()
    try:
        while True:
            cmd = await loop.run_in_executor(None, pipe.recv)
            op = cmd[0]
            if op == "stop":
                pipe.send("ok")
                break
            if op == "synced":
                synced = [r.synced_at for r in fleet.records if r.synced_at]
                pipe.send({"synced": len(synced), "total": len(fleet.records), "last": max(synced, default=0),
                           "errors": sum(r.errors for r in fleet.records),
                           "bytes": sum(r.bytes for r in fleet.records)})
            elif op == "arm":
                fleet.arm(*cmd[1:])
                # Before a measurement: a full collection now, and survivors frozen, so
                # none runs in the middle of it (a ~0.5 s pause of the simulated fleet).
                gc.collect()
                gc.freeze()
                pipe.send("ok")
            elif op == "progress":  # polled while a push goes on: must cost next to nothing
                pipe.send((fleet.done.get(cmd[1], 0), len(fleet.records)))
            elif op == "status":
                pipe.send(fleet.status(cmd[1]))
            elif op == "capture":
                pipe.send({k: v for k, v in fleet.capture.items()})
            else:
                pipe.send({"error": f"unknown command {op!r}"})
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for ch in channels:
            await ch.close()


def _with_token(method, token: str):
    def call():
        return method(metadata=[("authorization", f"Bearer {token}")])
    return call


def process_main(specs: list[ProxySpec], address: str, transport: str, pipe: Any, sds: bool = False,
                 root_pem: bytes | None = None, tokens: dict | None = None, ramp: float = 0.0) -> None:
    """Entry point of the load generator process."""
    creds = grpc.ssl_channel_credentials(root_pem) if root_pem else None
    gc.set_threshold(50_000, 20, 1_000_000_000)  # full collections only when armed (above)
    asyncio.run(_fleet_main(specs, address, transport, pipe, sds, creds, tokens, ramp))
