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

Metrics (`resolve_metrics`) as istiod's mergeMetrics: the providers in scope are the last
non-empty `providers` of the chain (else the mesh config's `defaultProviders.metrics`, else
Istio's default `prometheus`); each entry's overrides apply in order to the providers it
names (or inherits), an ALL_METRICS `disabled: true` drops a mode, any other override
brings it back. meshd serves the prometheus provider's standard metrics itself
(telemetry/istio_metrics.py), so only what the Telemetries say of that provider is kept.

Pure: (Telemetries, mesh config, proxy) -> resolved settings the generators read.
"""
from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from ..config.types.telemetry import CLIENT, CLIENT_AND_SERVER, SERVER, CustomTag, TargetRef, Telemetry
from ..names import GATEWAY_API_GROUP, GATEWAY_NAME_LABEL
from .meshconfig import MeshConfig

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


# --- metrics -------------------------------------------------------------------------------

PROMETHEUS_PROVIDER = "prometheus"  # Istio's default metrics provider; meshd's metrics service
ALL_METRICS = "ALL_METRICS"
ISTIO_METRICS = ("REQUEST_COUNT", "REQUEST_DURATION", "REQUEST_SIZE", "RESPONSE_SIZE", "TCP_OPENED_CONNECTIONS",
                 "TCP_CLOSED_CONNECTIONS", "TCP_SENT_BYTES", "TCP_RECEIVED_BYTES", "GRPC_REQUEST_MESSAGES",
                 "GRPC_RESPONSE_MESSAGES")
# What meshd's metrics service serves (telemetry/istio_metrics.py): istio_requests_total and
# istio_tcp_connections_opened_total. The others need Istio's stats filter.
SERVED_METRICS = frozenset({"REQUEST_COUNT", "TCP_OPENED_CONNECTIONS"})
# Node metadata meshd keeps of a reporting proxy (telemetry/service.py), usable in a tag value.
TAG_METADATA = ("NAMESPACE", "SERVICE_ACCOUNT", "WORKLOAD_NAME", "CLUSTER_ID")
_LITERAL = re.compile(r"""^\s*(?:"([^"\\]*)"|'([^'\\]*)')\s*$""")
_NODE_METADATA = re.compile(r"""^\s*node\.metadata\[\s*(?:"([A-Z_]+)"|'([A-Z_]+)')\s*\]\s*$""")


def is_prometheus(name: str, mc: MeshConfig) -> bool:
    """Whether provider `name` is a Prometheus provider: one of that kind in the mesh config, or
    the name `prometheus` when the mesh config does not define it (Istio's default config does)."""
    p = mc.provider(name)
    return p.kind == PROMETHEUS_PROVIDER if p is not None else name == PROMETHEUS_PROVIDER


def tag_value(expression: str, metadata: Mapping[str, object]) -> str | None:
    """The value of a tagOverride's `value` for a proxy, when meshd can compute it: a string
    literal, or `node.metadata['KEY']` of TAG_METADATA. None: meshd cannot (Istio's stats filter
    evaluates it as CEL against each request; meshd has only the proxies' counters)."""
    if (m := _LITERAL.match(expression)) is not None:
        return m.group(1) if m.group(1) is not None else m.group(2)
    if (m := _NODE_METADATA.match(expression)) is not None and (key := m.group(1) or m.group(2)) in TAG_METADATA:
        return str(metadata.get(key, ""))
    return None


@dataclass(frozen=True, slots=True)
class MetricSettings:
    disabled: bool = False
    tags: Mapping[str, tuple[str, str]] = field(default_factory=dict)  # tag -> (UPSERT|REMOVE, value)


ENABLED = MetricSettings()


@dataclass(frozen=True, slots=True)
class ProxyMetrics:
    """The prometheus provider's metrics of one proxy. `served` False: the providers in scope
    are not Prometheus ones, so the proxy has no Istio metrics (as without istiod's stats filter)."""

    served: bool = True
    all_disabled: frozenset[str] = frozenset()  # modes (CLIENT, SERVER) whose metrics are all dropped
    overrides: Mapping[str, Mapping[str, MetricSettings]] = field(default_factory=dict)  # mode -> metric ->

    def settings(self, mode: str, metric: str) -> MetricSettings | None:
        """What applies to `metric` (an ISTIO_METRICS name) reported on side `mode`; None: dropped."""
        if not self.served or mode in self.all_disabled:
            return None
        s = self.overrides.get(mode, {}).get(metric, ENABLED)
        return None if s.disabled else s


def resolve_metrics(chain: Iterable[NamedTelemetry], mc: MeshConfig) -> ProxyMetrics:
    """`chain`: the applicable Telemetries, least specific first (`applicable`)."""
    entries = [m for t in chain for m in t.spec.metrics]
    defaults = dict(mc.default_providers).get("metrics") or (PROMETHEUS_PROVIDER,)
    in_scope = defaults
    for m in entries:
        if m.providers:
            in_scope = m.providers
    if not any(is_prometheus(p, mc) for p in in_scope):
        return ProxyMetrics(served=False)
    parent = defaults
    off: set[str] = set()
    per: dict[str, dict[str, MetricSettings]] = {CLIENT: {}, SERVER: {}}
    for m in entries:
        names = m.providers or parent
        parent = names
        if not any(is_prometheus(p, mc) and p in in_scope for p in names):
            continue
        for o in m.overrides:
            modes = (o.mode,) if o.mode in (CLIENT, SERVER) else (CLIENT, SERVER)
            every = not o.custom_metric and o.metric in ("", ALL_METRICS)
            if every and o.disabled:
                off.update(modes)
                continue
            metrics = (o.custom_metric,) if o.custom_metric else ISTIO_METRICS if every else (o.metric,)
            for mode in modes:
                off.discard(mode)
                for name in metrics:
                    cur = per[mode].get(name, ENABLED)
                    per[mode][name] = MetricSettings(cur.disabled if o.disabled is None else o.disabled,
                                                     {**cur.tags, **o.tag_overrides})
    return ProxyMetrics(True, frozenset(off), per)
