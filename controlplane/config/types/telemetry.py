"""Telemetry (telemetry.istio.io v1, v1alpha1), typed: the workloads it selects and what it
says about access logs, tracing and metrics. Which Telemetry decides for a proxy, and how
root namespace, namespace and workload objects combine, is the model's business
(model/telemetry.py)."""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .common import each, labels, mapping, text

# WorkloadMode: which side of the proxy's traffic an entry applies to.
CLIENT_AND_SERVER = "CLIENT_AND_SERVER"
CLIENT = "CLIENT"
SERVER = "SERVER"
MODES = (CLIENT_AND_SERVER, CLIENT, SERVER)


@dataclass(frozen=True, slots=True)
class TargetRef:
    kind: str
    name: str
    group: str = ""
    namespace: str = ""  # "": the Telemetry's own (another one never matches, as in istiod)


@dataclass(frozen=True, slots=True)
class CustomTag:
    """Exactly one of literal / environment / header (validation enforces it)."""
    literal: str | None = None
    environment: str | None = None
    header: str | None = None
    default_value: str = ""


@dataclass(frozen=True, slots=True)
class Tracing:
    mode: str = CLIENT_AND_SERVER
    providers: tuple[str, ...] = ()
    random_sampling_percentage: float | None = None  # None: inherit
    disable_span_reporting: bool | None = None  # None: inherit
    custom_tags: Mapping[str, CustomTag] = field(default_factory=dict)
    use_request_id_for_trace_sampling: bool | None = None  # None: Istio's default, true


@dataclass(frozen=True, slots=True)
class AccessLogging:
    mode: str = CLIENT_AND_SERVER
    providers: tuple[str, ...] = ()
    disabled: bool | None = None  # None: inherit
    filter_expression: str = ""  # CEL; "": log every request


@dataclass(frozen=True, slots=True)
class MetricOverride:
    metric: str = ""  # Istio's metric name (REQUEST_COUNT, ...) or ALL_METRICS
    custom_metric: str = ""
    mode: str = CLIENT_AND_SERVER
    disabled: bool | None = None
    tag_overrides: Mapping[str, tuple[str, str]] = field(default_factory=dict)  # tag -> (operation, value)


@dataclass(frozen=True, slots=True)
class Metrics:
    providers: tuple[str, ...] = ()
    overrides: tuple[MetricOverride, ...] = ()
    reporting_interval: str = ""


@dataclass(frozen=True, slots=True)
class Telemetry:
    selector: Mapping[str, str] = field(default_factory=dict)  # `selector.matchLabels`
    target_refs: tuple[TargetRef, ...] = ()  # `targetRef` and `targetRefs`
    tracing: tuple[Tracing, ...] = ()
    access_logging: tuple[AccessLogging, ...] = ()
    metrics: tuple[Metrics, ...] = ()

    @property
    def workload_scoped(self) -> bool:
        return bool(self.selector or self.target_refs)


def _mode(entry: Mapping[str, Any]) -> str:
    return text(mapping(entry.get("match")).get("mode")) or CLIENT_AND_SERVER


def _providers(entry: Mapping[str, Any]) -> tuple[str, ...]:
    return tuple(text(mapping(p).get("name")) for p in entry.get("providers") or [] if isinstance(p, Mapping))


def _optional_bool(value: Any) -> bool | None:
    return value if isinstance(value, bool) else None


def _custom_tag(raw: Mapping[str, Any]) -> CustomTag:
    if "literal" in raw:
        return CustomTag(literal=text(mapping(raw["literal"]).get("value")))
    if "environment" in raw:
        env = mapping(raw["environment"])
        return CustomTag(environment=text(env.get("name")), default_value=text(env.get("defaultValue")))
    if "header" in raw:
        hdr = mapping(raw["header"])
        return CustomTag(header=text(hdr.get("name")), default_value=text(hdr.get("defaultValue")))
    return CustomTag()


def _tracing(raw: Mapping[str, Any]) -> Tracing:
    pct = raw.get("randomSamplingPercentage")
    return Tracing(
        mode=_mode(raw),
        providers=_providers(raw),
        random_sampling_percentage=float(pct) if isinstance(pct, (int, float)) and not isinstance(pct, bool) else None,
        disable_span_reporting=_optional_bool(raw.get("disableSpanReporting")),
        custom_tags={str(k): _custom_tag(mapping(v)) for k, v in mapping(raw.get("customTags")).items()},
        use_request_id_for_trace_sampling=_optional_bool(raw.get("useRequestIdForTraceSampling")),
    )


def _access_logging(raw: Mapping[str, Any]) -> AccessLogging:
    return AccessLogging(mode=_mode(raw), providers=_providers(raw), disabled=_optional_bool(raw.get("disabled")),
                         filter_expression=text(mapping(raw.get("filter")).get("expression")))


def _override(raw: Mapping[str, Any]) -> MetricOverride:
    match = mapping(raw.get("match"))
    tags = {str(k): (text(mapping(v).get("operation")) or "UPSERT", text(mapping(v).get("value")))
            for k, v in mapping(raw.get("tagOverrides")).items()}
    return MetricOverride(metric=text(match.get("metric")), custom_metric=text(match.get("customMetric")),
                          mode=text(match.get("mode")) or CLIENT_AND_SERVER,
                          disabled=_optional_bool(raw.get("disabled")), tag_overrides=tags)


def _metrics(raw: Mapping[str, Any]) -> Metrics:
    return Metrics(providers=_providers(raw), overrides=each(raw.get("overrides"), _override),
                   reporting_interval=text(raw.get("reportingInterval")))


def _target_ref(raw: Mapping[str, Any]) -> TargetRef:
    return TargetRef(kind=text(raw.get("kind")), name=text(raw.get("name")), group=text(raw.get("group")),
                     namespace=text(raw.get("namespace")))


def telemetry(spec: Mapping[str, Any]) -> Telemetry:
    refs = each(spec.get("targetRefs"), _target_ref)
    if isinstance(spec.get("targetRef"), Mapping):
        refs = (_target_ref(spec["targetRef"]), *refs)
    return Telemetry(
        selector=labels(mapping(spec.get("selector")).get("matchLabels")),
        target_refs=refs,
        tracing=each(spec.get("tracing"), _tracing),
        access_logging=each(spec.get("accessLogging"), _access_logging),
        metrics=each(spec.get("metrics"), _metrics),
    )
