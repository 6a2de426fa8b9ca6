"""The parts of Telemetry objects meshd accepts but does not serve, one row per object and
field, so none is silently ignored (docs/telemetry.md, "What meshd does not serve"):

- `metrics` meshd's metrics service cannot apply (telemetry/istio_metrics.py applies the
  rest): a provider other than Prometheus, `reportingInterval`, a custom metric, an override
  of a metric meshd does not serve, a tag value it cannot compute;
- a `targetRef(s)` entry other than a Kubernetes Gateway of the Telemetry's namespace (a
  Service, ServiceEntry or GatewayClass binds only waypoints in istiod): it selects no proxy;
- a provider meshd cannot build for access logs or tracing (not in the mesh config's
  extensionProviders, another kind, no service/port): the generators leave it out;
- `useRequestIdForTraceSampling: false`: Envoy keeps using the request id for sampling.

Pure: (Telemetries, mesh config) -> problems. The providers are checked with the builders
the generators use, so a row here is exactly what the proxies do not get. Reported by
telemetry/problem_report.py (event, /debug/configz, gauge) and `meshd analyze` (MSH0007).
"""
from __future__ import annotations

from collections.abc import Iterable

from ..config.types.telemetry import Metrics
from ..model.mesh import MeshSnapshot
from ..model.meshconfig import MeshConfig
from ..model.telemetry import (
    ALL_METRICS,
    ENVOY_PROVIDER,
    PROMETHEUS_PROVIDER,
    SERVED_METRICS,
    NamedTelemetry,
    TracingSettings,
    is_prometheus,
    tag_value,
)
from ..names import GATEWAY_API_GROUP
from . import access_log
from .telemetry_problem import (
    METRICS_NOT_APPLIED,
    PROVIDER_NOT_SERVED,
    REQUEST_ID_SAMPLING_NOT_SERVED,
    TARGET_REFS_NOT_SERVED,
    UNKNOWN_PROVIDER,
    TelemetryProblem,
)
from .tracing import TracingError, hcm_tracing, mesh_telemetries


def _provider_problem(name: str, mc: MeshConfig, tracing: bool) -> tuple[str, str] | None:
    """(reason, detail) when the generators cannot build provider `name`, else None."""
    if mc.provider(name) is None and not (name == ENVOY_PROVIDER and not tracing):
        return UNKNOWN_PROVIDER, f"provider {name!r} is not in the mesh config's extensionProviders; left out"
    try:
        if tracing:
            hcm_tracing(TracingSettings(provider=name), mc, "")
        else:
            access_log.provider_log(name, mc)
    except (TracingError, access_log.AccessLogProviderError) as e:
        return PROVIDER_NOT_SERVED, f"{e}; left out"
    return None


def _metrics_problems(metrics: Metrics, mc: MeshConfig) -> list[tuple[str, str, str]]:
    """(field under the entry, reason, detail) of what meshd's metrics service does not apply."""
    out = []
    for j, name in enumerate(metrics.providers):
        if not is_prometheus(name, mc):
            reason = UNKNOWN_PROVIDER if mc.provider(name) is None and name != PROMETHEUS_PROVIDER else PROVIDER_NOT_SERVED
            out.append((f".providers[{j}]", reason, f"meshd serves metrics for Prometheus providers only; {name!r} "
                        "gets none (and a workload whose metrics providers are all such gets no Istio metrics)"))
    if metrics.reporting_interval:
        out.append((".reportingInterval", METRICS_NOT_APPLIED, "not applied: the proxies report at their stats flush "
                    "interval (meshd bootstrap --metrics-flush-interval)"))
    for k, o in enumerate(metrics.overrides):
        where = f".overrides[{k}]"
        if o.custom_metric:
            out.append((f"{where}.match.customMetric", METRICS_NOT_APPLIED,
                        f"custom metric {o.custom_metric!r} not served: it needs Istio's stats filter"))
            continue
        if o.metric not in ("", ALL_METRICS) and o.metric not in SERVED_METRICS and (o.tag_overrides or o.disabled is False):
            out.append((f"{where}.match.metric", METRICS_NOT_APPLIED, f"{o.metric} is not served by meshd (only "
                        "REQUEST_COUNT and TCP_OPENED_CONNECTIONS, from Envoy's counters); its overrides change nothing"))
            continue
        for tag, (operation, value) in sorted(o.tag_overrides.items()):
            if operation == "UPSERT" and tag_value(value, {}) is None:
                out.append((f"{where}.tagOverrides.{tag}.value", METRICS_NOT_APPLIED,
                            f"meshd cannot compute {value!r} from the proxies' counters (string literals and "
                            "node.metadata['NAMESPACE' | 'SERVICE_ACCOUNT' | 'WORKLOAD_NAME' | 'CLUSTER_ID'] only): "
                            f"tag {tag!r} is left as it is"))
    return out


def problems(telemetries: Iterable[NamedTelemetry], mc: MeshConfig) -> tuple[TelemetryProblem, ...]:
    out: list[TelemetryProblem] = []
    for t in sorted(telemetries, key=lambda t: (t.namespace, t.name)):
        def add(field: str, reason: str, detail: str, t: NamedTelemetry = t) -> None:
            out.append(TelemetryProblem(t.namespace, t.name, field, reason, detail))

        spec = t.spec
        for i, ref in enumerate(spec.target_refs):
            if ref.group == GATEWAY_API_GROUP and ref.kind == "Gateway":
                if ref.namespace in ("", t.namespace):
                    continue
                why = f"a Gateway in another namespace ({ref.namespace}) is never selected"
            else:
                why = f"meshd selects only Kubernetes Gateways ({GATEWAY_API_GROUP}) by targetRef"
            add(f"spec.targetRefs[{i}]", TARGET_REFS_NOT_SERVED,
                f"targetRef {ref.group or 'core'}/{ref.kind} {ref.name!r} selects no proxy: {why}")
        for i, metrics in enumerate(spec.metrics):
            for field, reason, detail in _metrics_problems(metrics, mc):
                add(f"spec.metrics[{i}]{field}", reason, detail)
        for i, entry in enumerate(spec.access_logging):
            for j, name in enumerate(entry.providers):
                if (found := _provider_problem(name, mc, tracing=False)) is not None:
                    add(f"spec.accessLogging[{i}].providers[{j}]", *found)
        for i, trace in enumerate(spec.tracing):
            for j, name in enumerate(trace.providers):
                if (found := _provider_problem(name, mc, tracing=True)) is not None:
                    add(f"spec.tracing[{i}].providers[{j}]", *found)
            if trace.use_request_id_for_trace_sampling is False:
                add(f"spec.tracing[{i}].useRequestIdForTraceSampling", REQUEST_ID_SAMPLING_NOT_SERVED,
                    "false is not served: Envoy keeps sampling by the request id")
    return tuple(out)


def mesh_problems(mesh: MeshSnapshot) -> tuple[TelemetryProblem, ...]:
    """The problems of the snapshot's Telemetries under its mesh config."""
    return problems(mesh_telemetries(mesh), mesh.mesh_config)
