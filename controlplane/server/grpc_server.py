"""The gRPC servers that carry ADS: 15010 plaintext and 15012 TLS, as istiod's.

Both serve the same AdsServer; the secure one wraps it in SecureAdsServicer, which
authenticates each stream before it reaches the protocol (see secure.py).
"""
from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any, Protocol

import grpc
import structlog

from .host import AdsServer
from .protocol import Context
from .secure import SecureAdsServicer

# Tuned for thousands of long-lived streams (istiod: keepalive 30s/10s, MaxRecvMsgSize
# 4MB; Envoy's first request with its node is ~60KB). Streams per connection are capped
# (istiod allows 100000): an Envoy opens one ADS stream per connection, an agent a few;
# a client opening more waits for its own streams to end, it cannot exhaust the server.
MAX_STREAMS_PER_CONNECTION = 128
SERVER_OPTIONS: tuple[tuple[str, int], ...] = (
    ("grpc.max_concurrent_streams", MAX_STREAMS_PER_CONNECTION),
    # A connection without any stream for 5 minutes is closed (Envoy's ADS connection
    # always carries its stream); one that stops answering pings after keepalive below.
    ("grpc.max_connection_idle_ms", 300_000),
    ("grpc.max_receive_message_length", 16 * 1024 * 1024),
    ("grpc.max_send_message_length", -1),
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
    # Accept client pings every 15s (istiod's enforcement MinTime) instead of gRPC's
    # default 5 minutes, and never answer frequent pings with GOAWAY.
    ("grpc.http2.min_recv_ping_interval_without_data_ms", 15_000),
    ("grpc.http2.max_ping_strikes", 0),
    # A second meshd on the same port must fail to bind, not silently share it.
    ("grpc.so_reuseport", 0),
    # Each stream may send 1 MB before the server reads (a sidecar's EDS ACK repeats every
    # cluster name: ~56 KB for 1,000 services), a fixed window instead of gRPC's probing
    # for one: no BDP pings and fewer window updates per ACK (10-20 % less CPU per push
    # in the benchmark), and a bound on what a client that is not read can buffer.
    ("grpc.http2.bdp_probe", 0),
    ("grpc.http2.lookahead_bytes", 1 << 20),
)


def server_options(share_ports: bool = False) -> tuple[tuple[str, int], ...]:
    """The options of every meshd gRPC port. With `share_ports` the port is bound with
    SO_REUSEPORT: `meshd serve --workers N` runs N processes on the same ports
    (server/workers.py)."""
    if not share_ports:
        return SERVER_OPTIONS
    return tuple(o for o in SERVER_OPTIONS if o[0] != "grpc.so_reuseport") + (("grpc.so_reuseport", 1),)


class AdsServicer(Protocol):
    """The two ADS methods (AdsServer, SecureAdsServicer); requests and responses as
    add_ads_servicer below registers them."""

    async def StreamAggregatedResources(self, request_iterator: AsyncIterator[bytes],
                                        context: Context) -> None: ...

    async def DeltaAggregatedResources(self, request_iterator: AsyncIterator[Any],
                                       context: Context) -> None: ...


def add_ads_servicer(servicer: AdsServicer, server: grpc.aio.Server) -> None:
    """Register ADS (SotW and delta) like the generated add_..._to_server, except that
    responses may be bytes already in wire form (wire.py): the servicer writes responses
    assembled from resources serialized once, and gRPC sends them as they are."""
    from envoy.service.discovery.v3 import discovery_pb2

    from .wire import serialize

    handlers = {
        "StreamAggregatedResources": grpc.stream_stream_rpc_method_handler(
            # Requests as bytes: the server recognises most ACKs without decoding them
            # (acks.py) and decodes the others itself.
            servicer.StreamAggregatedResources, request_deserializer=None, response_serializer=serialize,
        ),
        "DeltaAggregatedResources": grpc.stream_stream_rpc_method_handler(
            servicer.DeltaAggregatedResources,
            request_deserializer=discovery_pb2.DeltaDiscoveryRequest.FromString, response_serializer=serialize,
        ),
    }
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler("envoy.service.discovery.v3.AggregatedDiscoveryService", handlers),)
    )


def address(host: str, port: int) -> str:
    """host:port as gRPC binds it (IPv6 hosts in brackets)."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def build_xds_server(ads: AdsServer, host: str, port: int, *,
                     share_ports: bool = False) -> tuple[grpc.aio.Server, int]:
    """An unstarted server with ADS bound to host:port; returns it and the bound port
    (useful with port 0). Raises RuntimeError if the port cannot be bound."""
    server = grpc.aio.server(options=server_options(share_ports))
    add_ads_servicer(ads, server)
    bind = address(host, port)
    bound = server.add_insecure_port(bind)
    if bound == 0:  # older grpcio reported failure this way
        raise RuntimeError(f"cannot bind the xDS server to {bind}")
    return server, bound


def build_secure_xds_server(
    servicer: SecureAdsServicer, credentials: grpc.ServerCredentials, host: str, port: int,
    extra: Sequence[Callable[[grpc.aio.Server], None]] = (), *, share_ports: bool = False,
) -> tuple[grpc.aio.Server, int]:
    """Like build_xds_server, over TLS, with the authenticating servicer. `extra` adds
    more services to the port (the Istio CA API, security/ca_service.py)."""
    server = grpc.aio.server(options=server_options(share_ports))
    add_ads_servicer(servicer, server)
    for add in extra:
        add(server)
    bind = address(host, port)
    bound = server.add_secure_port(bind, credentials)
    if bound == 0:
        raise RuntimeError(f"cannot bind the secure xDS server to {bind}")
    return server, bound


async def start_xds_server(ads: AdsServer, host: str, port: int, logger: Any = None, *,
                           share_ports: bool = False) -> grpc.aio.Server:
    server, bound = build_xds_server(ads, host, port, share_ports=share_ports)
    await server.start()
    (logger or structlog.get_logger("meshd.ads")).info("xds server listening", host=host, port=bound, tls=False)
    return server


async def start_secure_xds_server(
    servicer: SecureAdsServicer, credentials: grpc.ServerCredentials, host: str, port: int, logger: Any = None,
    extra: Sequence[Callable[[grpc.aio.Server], None]] = (), *, share_ports: bool = False,
) -> grpc.aio.Server:
    server, bound = build_secure_xds_server(servicer, credentials, host, port, extra, share_ports=share_ports)
    await server.start()
    (logger or structlog.get_logger("meshd.ads")).info("xds server listening", host=host, port=bound, tls=True)
    return server
