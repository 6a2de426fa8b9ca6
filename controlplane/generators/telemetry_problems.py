"""The parts of Telemetry objects meshd accepts but does not serve, one row per object and
field, so none is silently ignored (docs/telemetry.md, "What meshd does not serve"):

- `metrics`: every override acts on Istio's stats filter, which upstream Envoy lacks;
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
from dataclasses import dataclass

from ..model.mesh import MeshSnapshot
from ..model.meshconfig import MeshConfig
from ..model.telemetry import ENVOY_PROVIDER, NamedTelemetry, TracingSettings
from ..names import GATEWAY_API_GROUP
from . import access_log
from .tracing import TracingError, hcm_tracing, mesh_telemetries

METRICS_NOT_APPLIED = "MetricsNotApplied"
TARGET_REFS_NOT_SERVED = "TargetRefsNotServed"
UNKNOWN_PROVIDER = "UnknownProvider"
PROVIDER_NOT_SERVED = "ProviderNotServed"
REQUEST_ID_SAMPLING_NOT_SERVED = "RequestIdSamplingNotServed"
REASONS = (METRICS_NOT_APPLIED, TARGET_REFS_NOT_SERVED, UNKNOWN_PROVIDER, PROVIDER_NOT_SERVED,
           REQUEST_ID_SAMPLING_NOT_SERVED)


@dataclass(frozen=True, slots=True)
class TelemetryProblem:
    namespace: str
    name: str
    field: str  # the spec path, e.g. `spec.tracing[0].providers[0]`
    reason: str  # one of REASONS
    detail: str  # what is not served and why, for people

    def message(self) -> str:
        return f"{self.field}: {self.detail}"


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
        for i, _ in enumerate(spec.metrics):
            add(f"spec.metrics[{i}]", METRICS_NOT_APPLIED,
                "metrics are not applied: they need Istio's stats filter, which upstream Envoy does not have")
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
