"""The proxies' reports as Istio's standard metrics on meshd's /metrics.

    istio_requests_total{reporter, source_*, destination_*, connection_security_policy,
                         response_code_class}
    istio_tcp_connections_opened_total{... same, without response_code_class}
    meshd_telemetry_proxies, meshd_telemetry_streams_refused_total

Istio's label names and values (`reporter="source"|"destination"`, `unknown` for what is
not known, `connection_security_policy="mutual_tls"|"none"`), computed when scraped from
the store (edges.py): nothing is kept twice. One difference: Envoy's stats count
responses by class, so the label is `response_code_class="2xx"` (Istio's `response_code`
holds the exact code, which only Istio's own stats filter can count).

meshd is the `prometheus` metrics provider here, so the Telemetry `metrics` overrides of
the reporting proxy apply as istiod's stats filter would apply them (model/telemetry.py
`resolve_metrics`): a metric disabled for a mode (CLIENT: reporter source, SERVER: reporter
destination) is left out, a tagOverride REMOVE drops the label (series that then look the
same are summed), an UPSERT sets it when meshd can compute the value (`tag_value`); what it
cannot is reported by generators/telemetry_problems.py and the label stays as it was.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from ..config.types.telemetry import CLIENT, SERVER
from ..model.proxy import Proxy
from ..model.telemetry import ProxyMetrics, applicable, resolve_metrics, tag_value
from .counters import CLASSES
from .edges import UNKNOWN, Edge, edges
from .store import TelemetryStore

LABELS = ("reporter", "source_workload", "source_workload_namespace", "source_principal", "destination_workload",
          "destination_workload_namespace", "destination_principal", "destination_service",
          "destination_service_name", "destination_service_namespace", "connection_security_policy")
REQUESTS, TCP_OPENED = "istio_requests_total", "istio_tcp_connections_opened_total"
ISTIO_NAME = {REQUESTS: "REQUEST_COUNT", TCP_OPENED: "TCP_OPENED_CONNECTIONS"}  # model.telemetry.SERVED_METRICS
Series = tuple[tuple[str, str], ...]


def _labels(e: Edge) -> dict[str, str]:
    svc_name, _, rest = e.service.partition(".")
    svc_ns = rest.split(".", 1)[0] if rest else UNKNOWN
    policy = e.security if e.security in ("mutual_tls", "none") else UNKNOWN
    return dict(zip(LABELS, (e.reporter, e.source.name, e.source.namespace, e.source.principal, e.destination.name,
                             e.destination.namespace, e.destination.principal, e.service or UNKNOWN,
                             svc_name or UNKNOWN, svc_ns, policy), strict=True))


def overridden(labels: Mapping[str, str], tags: Mapping[str, tuple[str, str]], proxy: Proxy | None) -> Series:
    """`labels` after a metric's tagOverrides, as a series key."""
    out = dict(labels)
    for tag, (operation, value) in sorted(tags.items()):
        if operation == "REMOVE":
            out.pop(tag, None)
        elif (computed := tag_value(value, proxy.metadata if proxy is not None else {})) is not None:
            out[tag] = computed
    return tuple(sorted(out.items()))


def metrics_settings(mesh: Any) -> Callable[[Proxy | None], ProxyMetrics]:
    """The Telemetry metrics settings of a reporting proxy under `mesh`, one resolution per
    namespace and label set."""
    if mesh is None:
        return lambda _proxy: ProxyMetrics()
    from ..generators.tracing import mesh_telemetries  # the generators after ready (app.py warms them)

    telemetries = mesh_telemetries(mesh)
    if not any(t.spec.metrics for t in telemetries) and not dict(mesh.mesh_config.default_providers).get("metrics"):
        every = ProxyMetrics()
        return lambda _proxy: every  # no Telemetry says anything of metrics: the common case
    seen: dict[tuple[str, Any], ProxyMetrics] = {}

    def of(proxy: Proxy | None) -> ProxyMetrics:
        if proxy is None:
            return ProxyMetrics()
        key = (proxy.namespace, proxy.label_key)
        got = seen.get(key)
        if got is None:
            chain = applicable(telemetries, mesh.root_namespace, proxy.namespace, proxy.labels)
            got = seen[key] = resolve_metrics(chain, mesh.mesh_config)
        return got

    return of


def _family(cls: type, name: str, doc: str, series: Mapping[Series, float]) -> Any:
    fam = cls(name, doc)
    for labels, value in sorted(series.items()):
        fam.add_sample(name, dict(labels), value)  # label sets may differ (tagOverrides)
    return fam


class IstioMetricsCollector:
    """A prometheus_client collector over the store (register it in meshd's registry)."""

    def __init__(self, store: TelemetryStore, mesh: Callable[[], Any], trust_domain: str = "cluster.local"):
        self.store = store
        self.mesh = mesh
        self.trust_domain = trust_domain

    def describe(self) -> list[Any]:
        return []  # collected on scrape only: no sample at registration

    def collect(self) -> Iterator[Any]:
        mesh = self.mesh()
        settings_of = metrics_settings(mesh)
        requests: dict[Series, float] = {}
        tcp: dict[Series, float] = {}
        for e in edges(self.store.proxies(), mesh, trust_domain=self.trust_domain):
            if e.security == "refused":
                continue  # not a connection anyone served
            settings = settings_of(e.by)
            mode = CLIENT if e.reporter == "source" else SERVER
            labels = _labels(e)
            rq = settings.settings(mode, ISTIO_NAME[REQUESTS])
            if rq is not None:
                for c in CLASSES:
                    n = e.totals.count(c)
                    if n:
                        key = overridden({**labels, "response_code_class": c}, rq.tags, e.by)
                        requests[key] = requests.get(key, 0) + n
            cx = settings.settings(mode, ISTIO_NAME[TCP_OPENED])
            if cx is not None and e.totals.connections:
                key = overridden(labels, cx.tags, e.by)
                tcp[key] = tcp.get(key, 0) + e.totals.connections
        yield _family(CounterMetricFamily, REQUESTS, "Requests the proxies reported (meshd telemetry).", requests)
        yield _family(CounterMetricFamily, TCP_OPENED, "Connections the proxies reported (meshd telemetry).", tcp)
        yield GaugeMetricFamily("meshd_telemetry_proxies", "Proxies whose metrics meshd holds.", value=len(self.store))
        refused = CounterMetricFamily("meshd_telemetry_streams_refused", "Metrics streams refused: store full.")
        refused.add_metric([], self.store.refused_streams)
        yield refused
