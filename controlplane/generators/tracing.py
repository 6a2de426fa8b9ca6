"""The HTTP connection manager's `tracing` for a proxy's resolved Telemetry tracing
(model/telemetry.py), as istiod builds it (networking/core/tracing.go): the mesh config
provider's `service`/`port` resolved to the outbound cluster `outbound|PORT||SERVICE`,
`randomSamplingPercentage` as Envoy's random sampling (client and overall sampling 100 %,
so a client's x-client-trace-id or an upstream decision still counts), custom tags
literal / environment / request header. Providers: `zipkin` and `opentelemetry` (OTLP
over gRPC). `disableSpanReporting` keeps the trace context but sends no span: the
tracing block is left out, as istiod does. Other provider kinds raise TracingError,
which the caller reports (never a silent missing trace)."""
from __future__ import annotations

import hashlib
from collections.abc import Iterable

import structlog
from envoy.config.accesslog.v3 import accesslog_pb2
from envoy.config.core.v3 import base_pb2, grpc_service_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.config.trace.v3 import http_tracer_pb2, opentelemetry_pb2, zipkin_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2
from envoy.type.tracing.v3 import custom_tag_pb2
from envoy.type.v3 import percent_pb2

from ..config.kinds import TELEMETRY
from ..config.types.telemetry import CLIENT, SERVER, Telemetry
from ..model.indexes import Lifetime, Value
from ..model.mesh import MeshSnapshot
from ..model.meshconfig import ExtensionProvider, MeshConfig
from ..model.proxy import Proxy
from ..model.telemetry import NamedTelemetry, ProxyTelemetry, TracingSettings, resolve
from ..names import outbound_cluster
from . import access_log, inputs
from .convert import typed
from .filters import HTTP_CONNECTION_MANAGER
from .inputs import stands_for

ZIPKIN = "zipkin"
OPENTELEMETRY = "opentelemetry"
TRACING_PROVIDER_KINDS = (ZIPKIN, OPENTELEMETRY)
ZIPKIN_ENDPOINT = "/api/v2/spans"
log = structlog.get_logger(__name__)


# The snapshot's Telemetries as listeners read them (computed once per config).
_TELEMETRIES = Value[tuple[NamedTelemetry, ...]]("Telemetries, keyed by what listeners read", Lifetime.CONFIG)


def mesh_telemetries(mesh: MeshSnapshot) -> list[NamedTelemetry]:
    """The snapshot's valid Telemetry objects, each with a `generation` digesting only what
    xDS output reads of it (selection, access logging, tracing): a change to `metrics`
    alone, which meshd's metrics service reads (telemetry/istio_metrics.py) and no
    listener does, leaves every proxy's listener keys as they were."""
    got = mesh.indexes.get(_TELEMETRIES)
    if got is None:
        got = mesh.indexes.value(_TELEMETRIES, _listener_view, mesh)
    return list(got)


def _listener_view(mesh: MeshSnapshot) -> tuple[NamedTelemetry, ...]:
    return tuple(NamedTelemetry(o.namespace, o.name, o.typed, _xds_digest(o.typed))
                 for o in mesh.config.of_kind(TELEMETRY.kind) if o.typed is not None)


def _xds_digest(spec: Telemetry) -> str:
    read = (sorted(spec.selector.items()), spec.target_refs, spec.access_logging, spec.tracing)
    return hashlib.sha256(repr(read).encode()).hexdigest()[:16]


def proxy_telemetry(mesh: MeshSnapshot, proxy: Proxy) -> ProxyTelemetry:
    """The Telemetry settings of `proxy`."""
    return resolve(mesh_telemetries(mesh), mesh.root_namespace, proxy.namespace, proxy.labels,
                   dict(mesh.mesh_config.default_providers))


class TracingError(ValueError):
    """A Telemetry names a tracing provider meshd cannot build: the reason, with the name."""


def provider_cluster(provider: ExtensionProvider) -> str:
    """`service`/`port` of a provider as the outbound cluster it is reached through."""
    service = str(provider.settings.get("service") or "")
    port = provider.settings.get("port")
    if not service or not isinstance(port, int):
        raise TracingError(f"extension provider {provider.name!r}: service and port are required")
    return outbound_cluster(port, service)


def _provider(provider: ExtensionProvider, service_name: str) -> http_tracer_pb2.Tracing.Http:
    cluster = provider_cluster(provider)
    if provider.kind == ZIPKIN:
        cfg = zipkin_pb2.ZipkinConfig(
            collector_cluster=cluster, collector_endpoint=ZIPKIN_ENDPOINT,
            collector_endpoint_version=zipkin_pb2.ZipkinConfig.HTTP_JSON, trace_id_128bit=True)
        cfg.shared_span_context.value = False
        return http_tracer_pb2.Tracing.Http(name="envoy.tracers.zipkin", typed_config=typed(cfg))
    if provider.kind == OPENTELEMETRY:
        grpc = grpc_service_pb2.GrpcService(envoy_grpc=grpc_service_pb2.GrpcService.EnvoyGrpc(
            cluster_name=cluster, authority=str(provider.settings.get("service"))))
        cfg = opentelemetry_pb2.OpenTelemetryConfig(grpc_service=grpc, service_name=service_name)
        return http_tracer_pb2.Tracing.Http(name="envoy.tracers.opentelemetry", typed_config=typed(cfg))
    raise TracingError(f"extension provider {provider.name!r}: kind {provider.kind} is not a tracing provider "
                       f"meshd serves ({', '.join(TRACING_PROVIDER_KINDS)})")


@stands_for(inputs.TELEMETRY)
def telemetry_key(mesh: MeshSnapshot, proxy: Proxy) -> tuple[str, ...]:
    """The part scopes' share of Telemetry: which objects apply to the proxy, and their versions."""
    return proxy_telemetry(mesh, proxy).key


def traced(settings: TracingSettings | None, mc: MeshConfig, service_name: str) -> hcm_pb2.HttpConnectionManager.Tracing | None:
    """hcm_tracing, with a provider meshd cannot build reported and left out."""
    if settings is None:
        return None
    try:
        return hcm_tracing(settings, mc, service_name)
    except TracingError as e:
        log.warning("telemetry tracing not served", reason=str(e))
        return None


def hcm_tracing(settings: TracingSettings, mc: MeshConfig, service_name: str) -> hcm_pb2.HttpConnectionManager.Tracing | None:
    """The HCM tracing block, None when spans are not reported."""
    if settings.disable_span_reporting:
        return None
    provider = mc.provider(settings.provider)
    if provider is None:
        raise TracingError(f"tracing provider {settings.provider!r} is not in the mesh config's extensionProviders")
    out = hcm_pb2.HttpConnectionManager.Tracing(provider=_provider(provider, service_name))
    out.client_sampling.CopyFrom(percent_pb2.Percent(value=100.0))
    out.overall_sampling.CopyFrom(percent_pb2.Percent(value=100.0))
    out.random_sampling.CopyFrom(percent_pb2.Percent(value=settings.random_sampling_percentage))
    for name in sorted(settings.custom_tags):
        tag = settings.custom_tags[name]
        ct = custom_tag_pb2.CustomTag(tag=name)
        if tag.literal is not None:
            ct.literal.value = tag.literal
        elif tag.environment is not None:
            ct.environment.name, ct.environment.default_value = tag.environment, tag.default_value
        elif tag.header is not None:
            ct.request_header.name, ct.request_header.default_value = tag.header, tag.default_value
        out.custom_tags.append(ct)
    return out


# Telemetry's modes as the listeners they cover: CLIENT the outbound side (and gateways,
# which istiod treats as clients), SERVER the inbound side.
DIRECTIONS = ((CLIENT, base_pb2.OUTBOUND), (SERVER, base_pb2.INBOUND))


def telemetry_access_logs(telemetry: ProxyTelemetry, mc: MeshConfig) -> dict[int, list[accesslog_pb2.AccessLog]]:
    """Traffic direction -> the access logs a Telemetry sets there ([]: disabled); a direction
    no Telemetry configures is left out (the mesh config's accessLogFile applies). A provider
    meshd cannot build is reported and left out."""
    out: dict[int, list[accesslog_pb2.AccessLog]] = {}
    for mode, direction in DIRECTIONS:
        settings = telemetry.logging.get(mode)
        if settings is None:
            continue
        logs = []
        for name in settings.providers:
            try:
                logs += access_log.telemetry_logs([name], settings.filter_expression, mc)
            except access_log.AccessLogProviderError as e:
                log.warning("telemetry access log not served", reason=str(e))
        out[direction] = logs
    return out


def apply_tracing(listeners: Iterable[listener_pb2.Listener], telemetry: ProxyTelemetry, mc: MeshConfig) -> None:
    """Set the HCM tracing of every HTTP connection manager of `listeners` (in place) by
    the listener's direction."""
    by_direction = {d: traced(telemetry.tracing.get(mode), mc, telemetry.service_name) for mode, d in DIRECTIONS}
    for listener in listeners:
        tracing = by_direction.get(listener.traffic_direction)
        if tracing is None:
            continue
        for f in access_log.listener_filters(listener):
            if f.name != HTTP_CONNECTION_MANAGER:
                continue
            hcm = hcm_pb2.HttpConnectionManager()
            f.typed_config.Unpack(hcm)
            hcm.tracing.CopyFrom(tracing)
            f.typed_config.CopyFrom(typed(hcm))
