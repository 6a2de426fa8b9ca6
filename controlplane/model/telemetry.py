"""Which Telemetry settings apply to a proxy, as istiod computes them (model/telemetry.go):
the root namespace's Telemetry without a selector, then the proxy's namespace's, then one
in the proxy's namespace that selects it: by `selector.matchLabels`, or by a `targetRefs` entry
naming the Kubernetes Gateway (gateway.networking.k8s.io) the proxy implements, known by its
`gateway.networking.k8s.io/gateway-name` label; a Telemetry with targetRefs never selects by
labels, and other targetRef kinds (Service, ...) bind only waypoints in istiod, which meshd has
not: generators/telemetry_problems.py reports them. A more specific level
overrides a less specific one field by field, per mode (CLIENT: outbound and gateway
listeners; SERVER: inbound). Where no level names providers, the mesh config's
`defaultProviders` apply. Several Telemetries at one level: the first by name wins, as
istiod keeps the oldest (meshd has no creation time in files) and the analyzer reports it.

Pure: (Telemetries, mesh config, proxy) -> resolved settings the generators read.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from ..config.types.telemetry import CLIENT, CLIENT_AND_SERVER, SERVER, CustomTag, TargetRef, Telemetry
from ..names import GATEWAY_API_GROUP, GATEWAY_NAME_LABEL

# Istio's built-in access log provider: the mesh config's accessLogFile (or stdout),
# encoding and format.
ENVOY_PROVIDER = "envoy"
DEFAULT_SAMPLING = 1.0  # percent, istiod's default when neither Telemetry nor mesh config says


@dataclass(frozen=True, slots=True)
class NamedTelemetry:
    namespace: str
    name: str
    spec: Telemetry
    generation: str = ""  # content hash: the key of a proxy's telemetry changes with it


@dataclass(frozen=True, slots=True)
class AccessLogSettings:
    providers: tuple[str, ...] = ()
    filter_expression: str = ""


@dataclass(frozen=True, slots=True)
class TracingSettings:
    provider: str = ""
    random_sampling_percentage: float = DEFAULT_SAMPLING
    disable_span_reporting: bool = False
    custom_tags: Mapping[str, CustomTag] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ProxyTelemetry:
    """Per mode (CLIENT, SERVER): access logs (None: the mesh config's accessLogFile
    applies, as when no Telemetry configures logging) and tracing (None: no tracing)."""
    logging: Mapping[str, AccessLogSettings | None] = field(default_factory=dict)
    tracing: Mapping[str, TracingSettings | None] = field(default_factory=dict)
    sources: tuple[str, ...] = ()  # namespace/name of the Telemetries that apply, least specific first
    service_name: str = ""  # the workload's tracing service name (canonical name, else app, . namespace)

    @property
    def key(self) -> tuple[str, ...]:
        """What tells two proxies' telemetry apart within one snapshot (cache scopes)."""
        return (*self.sources, self.service_name)


def selects_gateway(ref: TargetRef, namespace: str, gateway: str | None) -> bool:
    """Whether `ref`, in a Telemetry of `namespace`, names the Kubernetes Gateway `gateway`."""
    return (gateway is not None and ref.group == GATEWAY_API_GROUP and ref.kind == "Gateway" and ref.name == gateway
            and ref.namespace in ("", namespace))


def _selects(t: NamedTelemetry, labels: Mapping[str, str]) -> bool:
    if t.spec.target_refs:
        return any(selects_gateway(ref, t.namespace, labels.get(GATEWAY_NAME_LABEL)) for ref in t.spec.target_refs)
    return bool(t.spec.selector) and all(labels.get(k) == v for k, v in t.spec.selector.items())


def applicable(telemetries: Iterable[NamedTelemetry], root_namespace: str, namespace: str,
               labels: Mapping[str, str]) -> list[NamedTelemetry]:
    """The Telemetries that apply to a workload, least specific first (root, namespace, workload)."""
    ordered = sorted(telemetries, key=lambda t: (t.namespace, t.name))

    def first(match: Callable[[NamedTelemetry], bool]) -> list[NamedTelemetry]:
        found = [t for t in ordered if match(t)]
        return found[:1]

    root = first(lambda t: t.namespace == root_namespace and not t.spec.workload_scoped)
    ns = first(lambda t: t.namespace == namespace != root_namespace and not t.spec.workload_scoped)
    workload = first(lambda t: t.namespace == namespace and _selects(t, labels))
    return root + ns + workload


def _applies(mode: str, wanted: str) -> bool:
    return mode == CLIENT_AND_SERVER or mode == wanted


def resolve(telemetries: Iterable[NamedTelemetry], root_namespace: str, namespace: str, labels: Mapping[str, str],
            default_providers: Mapping[str, tuple[str, ...]] | None = None) -> ProxyTelemetry:
    chain = applicable(telemetries, root_namespace, namespace, labels)
    defaults = default_providers or {}
    logging: dict[str, AccessLogSettings | None] = {}
    tracing: dict[str, TracingSettings | None] = {}
    for mode in (CLIENT, SERVER):
        logging[mode] = _logging(chain, mode, defaults.get("accessLogging", ()))
        tracing[mode] = _tracing(chain, mode, defaults.get("tracing", ()))
    app = labels.get("service.istio.io/canonical-name") or labels.get("app") or "unknown"
    return ProxyTelemetry(logging, tracing, tuple(f"{t.namespace}/{t.name}@{t.generation}" for t in chain), f"{app}.{namespace}")


def _logging(chain: list[NamedTelemetry], mode: str, defaults: tuple[str, ...]) -> AccessLogSettings | None:
    providers: tuple[str, ...] | None = tuple(defaults) if defaults else None
    disabled = False
    expression = ""
    configured = bool(defaults)
    for t in chain:
        for entry in t.spec.access_logging:
            if not _applies(entry.mode, mode):
                continue
            configured = True
            if entry.providers:
                providers = entry.providers
            if entry.disabled is not None:
                disabled = entry.disabled
            if entry.filter_expression:
                expression = entry.filter_expression
    if not configured:
        return None
    if disabled:
        return AccessLogSettings()
    # A Telemetry enabling logs without naming providers uses the defaults, else `envoy`.
    return AccessLogSettings(providers if providers is not None else (ENVOY_PROVIDER,), expression)


def _tracing(chain: list[NamedTelemetry], mode: str, defaults: tuple[str, ...]) -> TracingSettings | None:
    provider = defaults[0] if defaults else ""
    pct = DEFAULT_SAMPLING
    disable = False
    tags: dict[str, CustomTag] = {}
    for t in chain:
        for entry in t.spec.tracing:
            if not _applies(entry.mode, mode):
                continue
            if entry.providers:
                provider = entry.providers[0]
            if entry.random_sampling_percentage is not None:
                pct = entry.random_sampling_percentage
            if entry.disable_span_reporting is not None:
                disable = entry.disable_span_reporting
            tags.update(entry.custom_tags)
    if not provider:
        return None
    return TracingSettings(provider, pct, disable, tags)
