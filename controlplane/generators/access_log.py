"""Envoy file access logs from the mesh config (`accessLogFile`, `accessLogEncoding`,
`accessLogFormat`), as istiod adds them when no Telemetry resource configures logging
(a Telemetry's accessLogging, resolved per direction by model/telemetry.py, replaces
them for the listeners it covers: `telemetry_logs`, docs/telemetry.md).

- Every HTTP connection manager and tcp_proxy of sidecar and gateway listeners writes
  to `accessLogFile` (`/dev/stdout` is Envoy's standard output: the proxy's log).
- Every listener also logs connections no filter chain took (response flag NR), the
  only trace those leave (istiod's listener access log).
- TEXT: `accessLogFormat`, with a newline added when missing, or Istio's default format
  (below) when empty. JSON: `accessLogFormat` as a JSON object of field -> command
  operator, or Istio's default fields when empty.

The listeners are built without access logs and finished here (`apply`), so no builder
of a filter needs the mesh config.
"""
from __future__ import annotations

import functools
import json
from collections.abc import Iterable, Mapping

from envoy.config.accesslog.v3 import accesslog_pb2
from envoy.config.core.v3 import base_pb2, config_source_pb2, grpc_service_pb2
from envoy.config.core.v3 import substitution_format_string_pb2 as sfs_pb2
from envoy.config.listener.v3 import listener_components_pb2, listener_pb2
from envoy.extensions.access_loggers.file.v3 import file_pb2
from envoy.extensions.access_loggers.filters.cel.v3 import cel_pb2
from envoy.extensions.access_loggers.grpc.v3 import als_pb2
from envoy.extensions.access_loggers.open_telemetry.v3 import logs_service_pb2 as otel_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2
from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2
from google.protobuf import struct_pb2

from ..model.meshconfig import JSON, MeshConfig
from ..names import outbound_cluster
from .convert import typed
from .filters import HTTP_CONNECTION_MANAGER, TCP_PROXY

FILE_ACCESS_LOG = "envoy.access_loggers.file"

# Istio's default TEXT format (model.EnvoyTextLogFormat, Istio 1.9 onwards).
DEFAULT_TEXT_FORMAT = (
    '[%START_TIME%] "%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL%" '
    "%RESPONSE_CODE% %RESPONSE_FLAGS% %RESPONSE_CODE_DETAILS% %CONNECTION_TERMINATION_DETAILS% "
    '"%UPSTREAM_TRANSPORT_FAILURE_REASON%" %BYTES_RECEIVED% %BYTES_SENT% %DURATION% '
    '%RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)% "%REQ(X-FORWARDED-FOR)%" "%REQ(USER-AGENT)%" '
    '"%REQ(X-REQUEST-ID)%" "%REQ(:AUTHORITY)%" "%UPSTREAM_HOST%" %UPSTREAM_CLUSTER_RAW% '
    "%UPSTREAM_LOCAL_ADDRESS% %DOWNSTREAM_LOCAL_ADDRESS% %DOWNSTREAM_REMOTE_ADDRESS% "
    "%REQUESTED_SERVER_NAME% %ROUTE_NAME%\n"
)
# Istio's default JSON fields (model.EnvoyJSONLogFormatIstio).
DEFAULT_JSON_FORMAT = {
    "start_time": "%START_TIME%",
    "route_name": "%ROUTE_NAME%",
    "method": "%REQ(:METHOD)%",
    "path": "%REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%",
    "protocol": "%PROTOCOL%",
    "response_code": "%RESPONSE_CODE%",
    "response_flags": "%RESPONSE_FLAGS%",
    "response_code_details": "%RESPONSE_CODE_DETAILS%",
    "connection_termination_details": "%CONNECTION_TERMINATION_DETAILS%",
    "bytes_received": "%BYTES_RECEIVED%",
    "bytes_sent": "%BYTES_SENT%",
    "duration": "%DURATION%",
    "upstream_service_time": "%RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)%",
    "x_forwarded_for": "%REQ(X-FORWARDED-FOR)%",
    "user_agent": "%REQ(USER-AGENT)%",
    "request_id": "%REQ(X-REQUEST-ID)%",
    "authority": "%REQ(:AUTHORITY)%",
    "upstream_host": "%UPSTREAM_HOST%",
    "upstream_cluster": "%UPSTREAM_CLUSTER_RAW%",
    "upstream_local_address": "%UPSTREAM_LOCAL_ADDRESS%",
    "downstream_local_address": "%DOWNSTREAM_LOCAL_ADDRESS%",
    "downstream_remote_address": "%DOWNSTREAM_REMOTE_ADDRESS%",
    "requested_server_name": "%REQUESTED_SERVER_NAME%",
    "upstream_transport_failure_reason": "%UPSTREAM_TRANSPORT_FAILURE_REASON%",
}


def text_format(fmt: str) -> str:
    """The TEXT format in force: Istio appends the newline a format lacks."""
    if not fmt:
        return DEFAULT_TEXT_FORMAT
    return fmt if fmt.endswith("\n") else fmt + "\n"


@functools.lru_cache(maxsize=8)
def file_access_log(path: str, encoding: str, fmt: str, no_route_only: bool = False) -> accesslog_pb2.AccessLog:
    """One file access log (built once per mesh config; callers copy it in)."""
    log_format = sfs_pb2.SubstitutionFormatString()
    if encoding == JSON:
        fields = json.loads(fmt) if fmt.strip() else DEFAULT_JSON_FORMAT
        s = struct_pb2.Struct()
        s.update(fields)
        log_format.json_format.CopyFrom(s)
    else:
        log_format.text_format_source.CopyFrom(base_pb2.DataSource(inline_string=text_format(fmt)))
    out = accesslog_pb2.AccessLog(name=FILE_ACCESS_LOG, typed_config=typed(file_pb2.FileAccessLog(path=path, log_format=log_format)))
    if no_route_only:
        # NR: no filter chain matched, the only connections no filter logs.
        out.filter.response_flag_filter.flags.append("NR")
    return out


def enabled(mc: MeshConfig) -> bool:
    return bool(mc.access_log_file)


class AccessLogProviderError(ValueError):
    """A Telemetry names an access log provider meshd cannot build (reported by the caller)."""


def cel_filter(expression: str) -> accesslog_pb2.AccessLogFilter:
    """Telemetry `filter.expression` as Envoy's CEL access log filter."""
    return accesslog_pb2.AccessLogFilter(extension_filter=accesslog_pb2.ExtensionFilter(
        name="envoy.access_loggers.extension_filters.cel", typed_config=typed(cel_pb2.ExpressionFilter(expression=expression))))


def provider_log(name: str, mc: MeshConfig) -> accesslog_pb2.AccessLog:
    """The access log of one Telemetry provider: the built-in `envoy` (the mesh config's file,
    encoding and format; stdout without accessLogFile), an `envoyFileAccessLog` (path,
    logFormat text or labels) or an `envoyOtelAls` / `opentelemetry` provider (OTLP/gRPC to
    the provider's service and port)."""
    if name == "envoy" and mc.provider(name) is None:
        return file_access_log(mc.access_log_file or "/dev/stdout", mc.access_log_encoding, mc.access_log_format)
    p = mc.provider(name)
    if p is None:
        raise AccessLogProviderError(f"access log provider {name!r} is not in the mesh config's extensionProviders")
    fmt = p.settings.get("logFormat") or {}
    if p.kind == "envoyFileAccessLog":
        if "labels" in fmt:
            return file_access_log(str(p.settings.get("path") or "/dev/stdout"), JSON, json.dumps(fmt["labels"], sort_keys=True))
        return file_access_log(str(p.settings.get("path") or "/dev/stdout"), "TEXT", str(fmt.get("text") or ""))
    if p.kind in ("envoyOtelAls", "opentelemetry"):
        service, port = str(p.settings.get("service") or ""), p.settings.get("port")
        if not service or not isinstance(port, int):
            raise AccessLogProviderError(f"extension provider {name!r}: service and port are required")
        common = als_pb2.CommonGrpcAccessLogConfig(
            log_name="otel_envoy_accesslog", transport_api_version=config_source_pb2.V3,
            grpc_service=grpc_service_pb2.GrpcService(envoy_grpc=grpc_service_pb2.GrpcService.EnvoyGrpc(
                cluster_name=outbound_cluster(port, service), authority=service)))
        cfg = otel_pb2.OpenTelemetryAccessLogConfig(common_config=common)
        cfg.body.string_value = text_format(str(fmt.get("text") or ""))
        return accesslog_pb2.AccessLog(name="envoy.access_loggers.open_telemetry", typed_config=typed(cfg))
    raise AccessLogProviderError(f"extension provider {name!r}: kind {p.kind} is not an access log provider meshd serves")


def telemetry_logs(providers: Iterable[str], expression: str, mc: MeshConfig) -> list[accesslog_pb2.AccessLog]:
    """The access logs a resolved Telemetry asks for (model/telemetry.py), filtered by its CEL expression."""
    out = []
    for name in providers:
        log = accesslog_pb2.AccessLog()
        log.CopyFrom(provider_log(name, mc))
        if expression:
            log.filter.CopyFrom(cel_filter(expression))
        out.append(log)
    return out


def apply(listeners: Iterable[listener_pb2.Listener], mc: MeshConfig,
          by_direction: Mapping[int, list[accesslog_pb2.AccessLog]] | None = None) -> None:
    """Add the mesh config's access log to the HTTP connection managers and tcp_proxies of
    `listeners` (in place), and the no-route log to each listener. Nothing without
    `accessLogFile`. `by_direction` (Telemetry: traffic direction -> its logs, [] for
    disabled) replaces the mesh config's logs for the listeners of that direction."""
    by_direction = by_direction or {}
    if not enabled(mc) and not by_direction:
        return
    log = file_access_log(mc.access_log_file, mc.access_log_encoding, mc.access_log_format) if enabled(mc) else None
    listener_log = file_access_log(mc.access_log_file, mc.access_log_encoding, mc.access_log_format, True) if enabled(mc) else None
    for listener in listeners:
        if listener.traffic_direction in by_direction:
            for f in listener_filters(listener):
                for tlog in by_direction[listener.traffic_direction]:
                    _add(f, tlog)
            continue
        if log is None or listener_log is None:
            continue
        listener.access_log.append(listener_log)
        chains = list(listener.filter_chains)
        if listener.HasField("default_filter_chain"):
            chains.append(listener.default_filter_chain)
        for chain in chains:
            for f in chain.filters:
                _add(f, log)


def listener_filters(listener: listener_pb2.Listener) -> list[listener_components_pb2.Filter]:
    chains = list(listener.filter_chains)
    if listener.HasField("default_filter_chain"):
        chains.append(listener.default_filter_chain)
    return [f for chain in chains for f in chain.filters]


def _add(f: listener_components_pb2.Filter, log: accesslog_pb2.AccessLog) -> None:
    msg: hcm_pb2.HttpConnectionManager | tcp_proxy_pb2.TcpProxy
    if f.name == HTTP_CONNECTION_MANAGER:
        msg = hcm_pb2.HttpConnectionManager()
    elif f.name == TCP_PROXY:
        msg = tcp_proxy_pb2.TcpProxy()
    else:
        return
    f.typed_config.Unpack(msg)
    msg.access_log.append(log)
    f.typed_config.CopyFrom(typed(msg))
