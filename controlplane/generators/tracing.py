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

from envoy.config.core.v3 import grpc_service_pb2
from envoy.config.trace.v3 import http_tracer_pb2, opentelemetry_pb2, zipkin_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2
from envoy.type.tracing.v3 import custom_tag_pb2
from envoy.type.v3 import percent_pb2

from ..model.meshconfig import ExtensionProvider, MeshConfig
from ..model.telemetry import TracingSettings
from ..names import outbound_cluster
from .convert import typed

ZIPKIN = "zipkin"
OPENTELEMETRY = "opentelemetry"
TRACING_PROVIDER_KINDS = (ZIPKIN, OPENTELEMETRY)
ZIPKIN_ENDPOINT = "/api/v2/spans"


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
