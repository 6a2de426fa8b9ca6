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
"""
from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from .counters import CLASSES
from .edges import UNKNOWN, Edge, edges
from .store import TelemetryStore

LABELS = ("reporter", "source_workload", "source_workload_namespace", "source_principal", "destination_workload",
          "destination_workload_namespace", "destination_principal", "destination_service",
          "destination_service_name", "destination_service_namespace", "connection_security_policy")


def _labels(e: Edge) -> list[str]:
    svc_name, _, rest = e.service.partition(".")
    svc_ns = rest.split(".", 1)[0] if rest else UNKNOWN
    policy = e.security if e.security in ("mutual_tls", "none") else UNKNOWN
    return [e.reporter, e.source.name, e.source.namespace, e.source.principal, e.destination.name,
            e.destination.namespace, e.destination.principal, e.service or UNKNOWN, svc_name or UNKNOWN,
            svc_ns, policy]


class IstioMetricsCollector:
    """A prometheus_client collector over the store (register it in meshd's registry)."""

    def __init__(self, store: TelemetryStore, mesh: Callable[[], Any], trust_domain: str = "cluster.local"):
        self.store = store
        self.mesh = mesh
        self.trust_domain = trust_domain

    def describe(self) -> list[Any]:
        return []  # collected on scrape only: no sample at registration

    def collect(self) -> Iterator[Any]:
        requests = CounterMetricFamily("istio_requests_total", "Requests the proxies reported (meshd telemetry).",
                                       labels=(*LABELS, "response_code_class"))
        tcp = CounterMetricFamily("istio_tcp_connections_opened_total",
                                  "Connections the proxies reported (meshd telemetry).", labels=LABELS)
        for e in edges(self.store.proxies(), self.mesh(), trust_domain=self.trust_domain):
            labels = _labels(e)
            if e.security == "refused":
                continue  # not a connection anyone served
            for c in CLASSES:
                n = e.totals.count(c)
                if n:
                    requests.add_metric([*labels, c], n)
            if e.totals.connections:
                tcp.add_metric(labels, e.totals.connections)
        yield requests
        yield tcp
        yield GaugeMetricFamily("meshd_telemetry_proxies", "Proxies whose metrics meshd holds.", value=len(self.store))
        refused = CounterMetricFamily("meshd_telemetry_streams_refused", "Metrics streams refused: store full.")
        refused.add_metric([], self.store.refused_streams)
        yield refused
