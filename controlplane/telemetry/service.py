"""Envoy's metrics service (`envoy.service.metrics.v3.MetricsService/StreamMetrics`) on
meshd's authenticated xDS port (15012), for proxies whose bootstrap has
`meshd bootstrap --metrics-service` (Envoy's `envoy.stat_sinks.metrics_service` over the
`xds-grpc` cluster, with the same bearer token as ADS).

Each stream: authenticated before its first message is read (as ADS, secure.py); the first
message's node must claim the authenticated namespace and service account (as ADS); then
every report is cut down to the counters meshd keeps (counters.py) and stored. A stream
over the store's cap ends with RESOURCE_EXHAUSTED; Envoy retries at its next flush.
"""
from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import Any

import grpc
import structlog

from ..model.proxy import NodeError, parse_node
from ..security.authn import AuthenticationError, Authenticator, authenticate_stream, normalize_metadata
from ..security.authz import identity_mismatch
from .counters import report_counters
from .store import TelemetryStore

SERVICE = "envoy.service.metrics.v3.MetricsService"
METHOD = "StreamMetrics"
DEFAULT_MAX_CLUSTERS = 256
KEPT_METADATA = ("NAMESPACE", "LABELS", "SERVICE_ACCOUNT", "WORKLOAD_NAME", "CLUSTER_ID", "INSTANCE_IPS")


def _messages() -> Any:
    from .._gen.meshd.telemetry.v1 import metrics_sink_pb2

    return metrics_sink_pb2


class MetricsService:
    def __init__(self, store: TelemetryStore, authenticators: Sequence[Authenticator],
                 max_clusters: int = DEFAULT_MAX_CLUSTERS, logger: Any = None):
        self.store = store
        self.max_clusters = max_clusters
        self._authenticators = tuple(authenticators)
        self._log = logger if logger is not None else structlog.get_logger("meshd.telemetry")

    async def StreamMetrics(self, request_iterator: AsyncIterator[Any], context: Any) -> Any:
        pb = _messages()
        peer = context.peer()
        try:
            identity = await authenticate_stream(self._authenticators,
                                                 normalize_metadata(context.invocation_metadata()), peer)
        except AuthenticationError as e:
            self._log.warning("metrics auth failed", peer=peer, reason=str(e))
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, f"authentication failed: {e}")
        # Messages are read with context.read(), not through `request_iterator`: grpc.aio's
        # iterator keeps the last message referenced in its generator frame while it waits
        # for the next, i.e. the first message (the node, ~70 KB) of every idle proxy.
        first = await context.read()  # bytes: counters are found in them (counters.py)
        if first is grpc.aio.EOF:
            return pb.StreamMetricsResponse()
        proxy = self._proxy(pb.StreamMetricsMessage.FromString(first))
        if proxy is None:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                "the first StreamMetricsMessage must carry identifier.node with an Istio node id")
        why = identity_mismatch(proxy, identity)
        if why is not None:
            self._log.warning("metrics auth denied", peer=peer, proxy=proxy.id, reason=why)
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, why)
        token = object()
        if not self.store.open(token, proxy, identity.spiffe_uri):
            self._log.warning("metrics stream refused", proxy=proxy.id, reason="store full",
                              max_proxies=self.store.max_proxies)
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED,
                                f"meshd keeps metrics of at most {self.store.max_proxies} proxies")
        self._log.debug("metrics stream", proxy=proxy.id, peer=peer)
        try:
            self.store.report(token, proxy.id, report_counters(first, self.max_clusters))
            del first  # the node (Envoy's is ~70 KB) is not kept for the stream's life
            while (message := await context.read()) is not grpc.aio.EOF:
                self.store.report(token, proxy.id, report_counters(message, self.max_clusters))
                del message
        finally:
            self.store.close(token, proxy.id)
        return pb.StreamMetricsResponse()

    @staticmethod
    def _proxy(first: Any) -> Any:
        if not first.HasField("identifier") or not first.identifier.node:
            return None
        from envoy.config.core.v3 import base_pb2

        try:
            node = base_pb2.Node.FromString(first.identifier.node)
            # Only the metadata the reports are labelled with: bounded per proxy.
            md = {k: node.metadata.fields[k] for k in KEPT_METADATA if k in node.metadata.fields}
            from google.protobuf import struct_pb2

            kept = struct_pb2.Struct()
            for k, v in md.items():
                kept.fields[k].CopyFrom(v)
            return parse_node(node.id, kept, node.locality if node.HasField("locality") else None)
        except (NodeError, ValueError):
            return None


def add_metrics_servicer(service: MetricsService, server: grpc.aio.Server) -> None:
    """Register StreamMetrics under Envoy's service name (client streaming)."""
    pb = _messages()
    handler: grpc.RpcMethodHandler = grpc.stream_unary_rpc_method_handler(
        service.StreamMetrics, request_deserializer=None,  # bytes: see StreamMetrics
        response_serializer=pb.StreamMetricsResponse.SerializeToString)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, {METHOD: handler}),))
