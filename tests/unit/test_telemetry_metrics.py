"""Telemetry `metrics` overrides applied by meshd's metrics service (it is the `prometheus`
provider): which settings apply to a proxy, as istiod's mergeMetrics, and what
istio_requests_total / istio_tcp_connections_opened_total then show on /metrics."""
from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from controlplane.config.types.telemetry import CLIENT, SERVER, telemetry
from controlplane.config.validation.telemetry import validate_telemetry
from controlplane.model.meshconfig import parse_mesh_config
from controlplane.model.telemetry import NamedTelemetry, applicable, resolve_metrics, tag_value
from controlplane.telemetry.counters import read_counters
from controlplane.telemetry.istio_metrics import IstioMetricsCollector
from controlplane.telemetry.store import TelemetryStore
from tests.support.configs import mesh_from_yaml
from tests.support.envoy_stats import family
from tests.support.manifests import MESHED, documents, pod, service

NS = "istioinaction"
CATALOG = f"catalog.{NS}.svc.cluster.local"
OUT = f"outbound|80||{CATALOG}"
DEFAULT_MC = parse_mesh_config({})


def _t(ns: str, name: str, spec: dict) -> NamedTelemetry:
    assert validate_telemetry(spec) == []
    return NamedTelemetry(ns, name, telemetry(spec))


def _metrics(objs: list[NamedTelemetry], labels: dict, namespace: str = NS, mc=DEFAULT_MC):
    return resolve_metrics(applicable(objs, "istio-system", namespace, labels), mc)


def test_root_disables_all_and_a_namespace_brings_one_metric_back():
    root = _t("istio-system", "mesh", {"metrics": [{"providers": [{"name": "prometheus"}],
                                                    "overrides": [{"match": {"metric": "ALL_METRICS"}, "disabled": True}]}]})
    ns = _t(NS, "ns", {"metrics": [{"overrides": [{"match": {"metric": "REQUEST_COUNT", "mode": "CLIENT"},
                                                   "disabled": False}]}]})
    only_root = _metrics([root], {"app": "webapp"})
    assert only_root.settings(CLIENT, "REQUEST_COUNT") is None and only_root.settings(SERVER, "REQUEST_COUNT") is None
    both = _metrics([root, ns], {"app": "webapp"})
    assert both.settings(CLIENT, "REQUEST_COUNT") is not None  # the CLIENT side is back, every metric of it
    assert both.settings(CLIENT, "TCP_OPENED_CONNECTIONS") is not None
    assert both.settings(SERVER, "REQUEST_COUNT") is None  # the SERVER side stays off
    assert _metrics([root, ns], {}, namespace="other").settings(CLIENT, "REQUEST_COUNT") is None


def test_tag_overrides_merge_by_tag_and_providers_decide_whether_there_are_metrics():
    root = _t("istio-system", "mesh", {"metrics": [{"overrides": [{"tagOverrides": {
        "a": {"value": "'root'"}, "b": {"value": "'root'"}}}]}]})
    wl = _t(NS, "wl", {"selector": {"matchLabels": {"app": "webapp"}}, "metrics": [{"overrides": [
        {"match": {"metric": "REQUEST_COUNT"}, "tagOverrides": {"b": {"operation": "REMOVE"}}}]}]})
    got = _metrics([root, wl], {"app": "webapp"}).settings(SERVER, "REQUEST_COUNT")
    assert got is not None and dict(got.tags) == {"a": ("UPSERT", "'root'"), "b": ("REMOVE", "")}
    # providers in scope without a Prometheus one: no Istio metrics at all, as without istiod's stats filter
    sd = parse_mesh_config({"extensionProviders": [{"name": "sd", "stackdriver": {}}]})
    other = _t(NS, "wl", {"selector": {"matchLabels": {"app": "webapp"}}, "metrics": [{"providers": [{"name": "sd"}]}]})
    assert not _metrics([root, other], {"app": "webapp"}, mc=sd).served
    assert _metrics([root, other], {"app": "catalog"}, mc=sd).served
    assert not _metrics([], {}, mc=parse_mesh_config({"defaultProviders": {"metrics": ["sd"]},
                                                      "extensionProviders": [{"name": "sd", "stackdriver": {}}]})).served


def test_tag_values_meshd_can_compute():
    md = {"NAMESPACE": "shop", "CLUSTER_ID": "east"}
    assert tag_value("'prod'", md) == "prod" and tag_value('"prod"', md) == "prod"
    assert tag_value("node.metadata['CLUSTER_ID']", md) == "east"
    assert tag_value("request.host", md) is None and tag_value("node.metadata['LABELS']", md) is None


def _report(proxy_id_store, proxy, fams):
    store, token = proxy_id_store
    store.open(token, proxy, f"spiffe://cluster.local/ns/{NS}/sa/{proxy.labels['app']}")
    store.report(token, proxy.id, read_counters(fams))


def _node(app: str, ip: str):
    from controlplane.model.proxy import parse_node

    return parse_node(f"sidecar~{ip}~{app}-0.{NS}~{NS}.svc.cluster.local",
                      {"NAMESPACE": NS, "LABELS": {"app": app, "security.istio.io/tlsMode": "istio"},
                       "SERVICE_ACCOUNT": app, "WORKLOAD_NAME": app, "CLUSTER_ID": "east"})


def _scrape(telemetries: str) -> dict[str, list[tuple[dict, float]]]:
    """istio_* samples with webapp calling catalog (source: 4 2xx, 1 5xx, 2 mTLS connections)
    and catalog receiving 3 plaintext connections (destination: connections only, Envoy's
    inbound stats do not say which requests came in plaintext), under `telemetries`."""
    store = TelemetryStore()
    webapp, catalog = _node("webapp", "10.0.0.1"), _node("catalog", "10.0.0.2")
    _report((store, object()), webapp, [
        family(f"cluster.{OUT}.upstream_rq_total", 5), family(f"cluster.{OUT}.upstream_rq_2xx", 4),
        family(f"cluster.{OUT}.upstream_rq_5xx", 1), family(f"cluster.{OUT}.upstream_cx_total", 2),
        family(f"cluster.{OUT}.tlsMode-istio.ssl.handshake", 2)])
    _report((store, object()), catalog, [family("http.inbound_0.0.0.0_3000.downstream_cx_total", 3),
                                         family("http.inbound_0.0.0.0_3000.downstream_rq_2xx", 3)])
    mesh = mesh_from_yaml(documents(service("catalog", NS, [("http", 80, 3000)]),
                                    pod("catalog-0", NS, "10.0.0.2", {"app": "catalog", **MESHED},
                                        service_account="catalog")) + telemetries)
    registry = CollectorRegistry()
    registry.register(IstioMetricsCollector(store, lambda: mesh))
    out: dict[str, list[tuple[dict, float]]] = {}
    for fam in text_string_to_metric_families(generate_latest(registry).decode()):
        for s in fam.samples:
            if s.name.startswith("istio_"):
                out.setdefault(s.name, []).append((s.labels, s.value))
    return out


def _telemetry(name: str, namespace: str, body: str) -> str:
    return f"---\napiVersion: telemetry.istio.io/v1\nkind: Telemetry\nmetadata: {{name: {name}, namespace: {namespace}}}\nspec:\n{body}"


def test_without_telemetry_every_edge_is_served_with_istios_labels():
    got = _scrape("")
    assert sorted((s["reporter"], s["response_code_class"], v) for s, v in got["istio_requests_total"]) == [
        ("source", "2xx", 4.0), ("source", "5xx", 1.0)]
    assert all("source_principal" in s for s, _ in got["istio_requests_total"])
    # catalog's plaintext connections from outside the mesh: reported by its side (destination)
    assert sorted((s["reporter"], s["connection_security_policy"], v)
                  for s, v in got["istio_tcp_connections_opened_total"]) == [
        ("destination", "none", 3.0), ("source", "mutual_tls", 2.0)]


def test_overrides_disable_remove_and_upsert_per_reporting_proxy():
    got = _scrape(
        # mesh-wide, client side: no principal, a literal and a node metadata tag; classes summed
        _telemetry("mesh", "istio-system", "  metrics:\n  - overrides:\n"
                   "    - match: {metric: REQUEST_COUNT, mode: CLIENT}\n"
                   "      tagOverrides:\n        source_principal: {operation: REMOVE}\n"
                   "        response_code_class: {operation: REMOVE}\n"
                   "        mesh: {value: \"'prod'\"}\n        cluster: {value: \"node.metadata['CLUSTER_ID']\"}\n")
        # catalog's proxy: its TCP connections metric off (it reports the destination side)
        + _telemetry("catalog", NS, "  selector: {matchLabels: {app: catalog}}\n  metrics:\n  - overrides:\n"
                     "    - {match: {metric: TCP_OPENED_CONNECTIONS, mode: SERVER}, disabled: true}\n"))
    source = [(s, v) for s, v in got["istio_requests_total"] if s["reporter"] == "source"]
    assert len(source) == 1  # 2xx and 5xx: one series once the class is removed
    labels, value = source[0]
    assert value == 5.0 and "source_principal" not in labels and "response_code_class" not in labels
    assert labels["mesh"] == "prod" and labels["cluster"] == "east" and labels["source_workload"] == "webapp"
    # TCP_OPENED_CONNECTIONS was not overridden on the client side: Istio's labels, as without Telemetry
    [(tcp, n)] = got["istio_tcp_connections_opened_total"]  # catalog's destination side is off
    assert (tcp["reporter"], "mesh" in tcp, "source_principal" in tcp, n) == ("source", False, True, 2.0)


def test_all_metrics_disabled_mesh_wide_leaves_none():
    got = _scrape(_telemetry("mesh", "istio-system", "  metrics:\n  - overrides: [{disabled: true}]\n"))
    assert got.get("istio_requests_total", []) == [] and got.get("istio_tcp_connections_opened_total", []) == []
