"""The metrics service's parts without Envoy: which counters a report keeps, the store's
bounds, the calls (edges) and Istio metrics made from them, the bootstrap's sink, and the
/ui/ page model."""
from __future__ import annotations

import asyncio
import json

import grpc
import pytest
from prometheus_client import CollectorRegistry, generate_latest

from controlplane._gen.meshd.telemetry.v1 import metrics_sink_pb2 as pb
from controlplane.bootstrap import BootstrapParams, XdsTls, build_bootstrap
from controlplane.debug.ui.model import ProxyState, build_page, sync_state
from controlplane.model.proxy import parse_node
from controlplane.telemetry.counters import read_counters
from controlplane.telemetry.edges import MUTUAL_TLS, NONE, REFUSED, edges
from controlplane.telemetry.istio_metrics import IstioMetricsCollector
from controlplane.telemetry.store import TelemetryStore
from tests.support.configs import mesh_from_yaml
from tests.support.envoy_stats import family
from tests.support.manifests import MESHED, documents, pod, service

NS = "istioinaction"
CATALOG = f"catalog.{NS}.svc.cluster.local"
OUT = f"outbound|80||{CATALOG}"


def report(rq2: int = 0, rq5: int = 0, cx: int = 0, tls: int = 0, in_cx: int = 0, in_tls: int = 0,
           refused: int = 0, extra: int = 0) -> list[bytes]:
    fams = [
        family(f"cluster.{OUT}.upstream_rq_total", rq2 + rq5), family(f"cluster.{OUT}.upstream_rq_2xx", rq2),
        family(f"cluster.{OUT}.upstream_rq_5xx", rq5), family(f"cluster.{OUT}.upstream_cx_total", cx),
        family(f"cluster.{OUT}.tlsMode-istio.ssl.handshake", tls),
        family("http.inbound_0.0.0.0_3000.downstream_cx_total", in_cx),
        family("http.inbound_0.0.0.0_3000.downstream_cx_ssl_total", in_tls),
        family("http.inbound_0.0.0.0_3000.downstream_rq_2xx", in_cx),
        family("listener.0.0.0.0_15006.no_filter_chain_match", refused),
        family(f"cluster.{OUT}.upstream_rq_active", 3, type_=1),  # a gauge: skipped
        family("server.uptime", 5, type_=1),
    ]
    fams += [family(f"cluster.outbound|80||svc{i}.{NS}.svc.cluster.local.upstream_rq_total", 1) for i in range(extra)]
    return fams


def proxy(app: str, sa: str, ip: str = "10.0.0.1"):
    return parse_node(f"sidecar~{ip}~{app}-0.{NS}~{NS}.svc.cluster.local",
                      {"NAMESPACE": NS, "LABELS": {"app": app, "security.istio.io/tlsMode": "istio"},
                       "SERVICE_ACCOUNT": sa, "WORKLOAD_NAME": app})


def mesh(extra: str = ""):
    return mesh_from_yaml(documents(
        service("catalog", NS, [("http", 80, 3000)]),
        pod("catalog-0", NS, "10.0.0.2", {"app": "catalog", **MESHED}, service_account="catalog")) + extra)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_report_keeps_only_the_counters_it_needs_by_full_name():
    c = read_counters(report(rq2=7, rq5=1, cx=2, tls=2, in_cx=5, in_tls=3, refused=4))
    t = c.outbound[OUT]
    assert (t.requests, t.count("2xx"), t.count("5xx"), t.connections, t.tls) == (8, 7, 1, 2, 2)
    assert (c.inbound[3000].connections, c.inbound[3000].tls, c.inbound[3000].count("2xx")) == (5, 3, 5)
    assert c.refused == 4
    assert set(c.outbound) == {OUT}  # no gauge, no server stats


def test_clusters_over_the_cap_are_dropped_and_counted():
    c = read_counters(report(rq2=1, extra=10), max_clusters=4)
    assert len(c.outbound) == 4 and c.truncated == 7


def test_store_rates_recency_cap_and_dropping_proxies():
    clock = Clock()
    store = TelemetryStore(max_proxies=2, recent=30, clock=clock)
    a, b, c = object(), object(), object()
    webapp, catalog = proxy("webapp", "webapp"), proxy("catalog", "catalog", "10.0.0.2")
    assert store.open(a, webapp, "spiffe://cluster.local/ns/istioinaction/sa/webapp")
    assert store.open(b, catalog, "spiffe://cluster.local/ns/istioinaction/sa/catalog")
    assert not store.open(c, proxy("third", "x", "10.0.0.3"), "p") and store.refused_streams == 1
    store.report(a, webapp.id, read_counters(report(rq2=10, cx=1, tls=1)))
    clock.now += 10
    store.report(a, webapp.id, read_counters(report(rq2=30, rq5=10, cx=1, tls=1)))
    (p,) = [x for x in store.proxies() if x.proxy.id == webapp.id]
    assert p.window.outbound[OUT].requests == 30 and p.window_seconds == 10
    (e,) = edges([p], mesh(), store.grew_recently)
    assert e.rate() == 3.0 and e.error_rate() == pytest.approx(1 / 3)
    assert e.security == MUTUAL_TLS and e.destination.name == "catalog" and e.recent
    assert e.destination.principal == "spiffe://cluster.local/ns/istioinaction/sa/catalog"
    clock.now += 31  # no growth for longer than `recent`
    store.report(a, webapp.id, read_counters(report(rq2=30, rq5=10, cx=1, tls=1)))
    assert not edges(store.proxies(), mesh(), store.grew_recently)[0].recent
    store.close(object(), webapp.id)  # another stream's end does not drop it
    assert len(store) == 2
    store.close(a, webapp.id)
    assert [x.proxy.id for x in store.proxies()] == [catalog.id]
    assert store.open(c, proxy("third", "x", "10.0.0.3"), "p")  # room again


def test_inbound_plaintext_and_refused_calls_come_from_outside():
    store = TelemetryStore()
    t, catalog = object(), proxy("catalog", "catalog", "10.0.0.2")
    store.open(t, catalog, "spiffe://cluster.local/ns/istioinaction/sa/catalog")
    store.report(t, catalog.id, read_counters(report(in_cx=5, in_tls=3, refused=2)))
    by_security = {e.security: e for e in edges(store.proxies(), mesh(), store.grew_recently)}
    assert set(by_security) == {NONE, REFUSED}
    assert by_security[NONE].totals.connections == 2 and not by_security[NONE].source.known
    assert by_security[NONE].destination.name == "catalog"
    assert by_security[REFUSED].totals.connections == 2


def test_istio_requests_total_labels():
    store = TelemetryStore()
    t, webapp = object(), proxy("webapp", "webapp")
    store.open(t, webapp, "spiffe://cluster.local/ns/istioinaction/sa/webapp")
    store.report(t, webapp.id, read_counters(report(rq2=4, rq5=1, cx=2, tls=2)))
    registry = CollectorRegistry()
    registry.register(IstioMetricsCollector(store, mesh))
    text = generate_latest(registry).decode()
    line = next(x for x in text.splitlines() if x.startswith("istio_requests_total{") and '"5xx"' in x)
    for label in ('reporter="source"', 'source_workload="webapp"', 'source_workload_namespace="istioinaction"',
                  'source_principal="spiffe://cluster.local/ns/istioinaction/sa/webapp"',
                  'destination_workload="catalog"', f'destination_service="{CATALOG}"',
                  'destination_service_name="catalog"', 'connection_security_policy="mutual_tls"'):
        assert label in line, (label, line)
    assert line.endswith(" 1.0")
    assert "meshd_telemetry_proxies 1.0" in text


def test_bootstrap_metrics_sink_needs_the_secure_port():
    base = dict(proxy_type="sidecar", namespace=NS, pod="webapp-0", ip="10.0.0.1", xds_address="127.0.0.1:15012")
    plain = build_bootstrap(BootstrapParams(**base))
    assert "stats_sinks" not in plain and "stats_flush_interval" not in plain
    with pytest.raises(ValueError, match="authenticated xDS port"):
        build_bootstrap(BootstrapParams(**base, metrics_flush_interval=10))
    tls = XdsTls(root_cert_pem="-----BEGIN CERTIFICATE-----", token="a.b.c")
    doc = build_bootstrap(BootstrapParams(**base, tls=tls, metrics_flush_interval=10))
    sink = doc["stats_sinks"][0]
    assert doc["stats_flush_interval"] == "10s" and sink["name"] == "envoy.stat_sinks.metrics_service"
    assert sink["typed_config"]["grpc_service"] == doc["dynamic_resources"]["ads_config"]["grpc_services"][0]
    assert sink["typed_config"]["emit_tags_as_labels"] is False


def test_sync_state_names_envoys_message():
    nack = {"types": [{"type": "LDS", "status": "NACKED", "sentNonce": "n2",
                       "nack": {"nonce": "n2", "message": "duplicate filter chain"}}]}
    assert sync_state(nack) == ("NACK", "LDS: duplicate filter chain")
    assert sync_state({"types": [{"type": "CDS", "status": "SYNCED"}]}) == ("SYNCED", "")
    assert sync_state({"types": [{"type": "CDS", "status": "STALE"}]})[0] == "STALE"


def test_page_model_modes_deciding_policy_and_locks():
    m = mesh("""
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: istio-system}
spec: {mtls: {mode: STRICT}}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: catalog, namespace: istioinaction}
spec:
  selector: {matchLabels: {app: catalog}}
  mtls: {mode: UNSET}
  portLevelMtls: {3001: {mode: PERMISSIVE}}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow-webapp, namespace: istioinaction}
spec:
  selector: {matchLabels: {app: catalog}}
  rules: [{from: [{source: {principals: [cluster.local/ns/istioinaction/sa/webapp]}}]}]
""")
    store = TelemetryStore()
    webapp, catalog = proxy("webapp", "webapp"), proxy("catalog", "catalog", "10.0.0.2")
    for p, counters in ((webapp, report(rq2=3, cx=1, tls=1)), (catalog, report(in_cx=4, in_tls=1, refused=1))):
        t = object()
        store.open(t, p, "x")
        store.report(t, p.id, read_counters(counters))
    synced = {"types": [{"type": "CDS", "status": "SYNCED"}]}
    page = build_page(m, [ProxyState(webapp, synced), ProxyState(catalog, synced)],
                      edges(store.proxies(), m, store.grew_recently))
    json.dumps(page)  # JSON-able as served
    w = {x["id"]: x for x in page["workloads"]}["wl:istioinaction/catalog"]
    assert (w["mode"], w["modeSource"]) == ("STRICT", "istio-system/default")
    assert {p["port"]: (p["mode"], p["source"]) for p in w["portModes"]} == {
        3000: ("STRICT", "istio-system/default"),
        3001: ("PERMISSIVE", "istioinaction/catalog (portLevelMtls)")}
    assert w["plaintextAllowed"] is True
    assert [(p["action"], p["name"]) for p in w["authorizationPolicies"]] == [("ALLOW", "allow-webapp")]
    locks = {e["id"]: e["lock"] for e in page["edges"] if e["kind"] == "call"}
    assert locks == {f"call:wl:{NS}/webapp->svc:{CATALOG}:traffic": "locked",
                     f"call:outside->wl:{NS}/catalog:traffic": "open",
                     f"call:outside->wl:{NS}/catalog:refused": "refused"}
    nodes = {n["id"]: n for n in page["nodes"]}
    assert nodes["outside"]["x"] < nodes[f"svc:{CATALOG}"]["x"] < nodes[f"wl:{NS}/catalog"]["x"]
    assert [p["state"] for p in page["proxies"]] == ["SYNCED", "SYNCED"]


def test_ui_routes_are_guarded_like_debug_and_ship_their_assets():
    from controlplane.debug.handlers import DebugAccess, protect
    from controlplane.debug.monitoring import Request
    from controlplane.debug.ui.routes import ui_routes

    class Ads:
        mesh = None

        def connections(self):
            return []

    routes = protect(ui_routes(Ads(), TelemetryStore()), DebugAccess("localhost"))
    local = Request("GET", "/ui/", {}, {}, peer="127.0.0.1")
    page = routes["/ui/"](local)
    assert page.status == 200 and b"/ui/app.js" in page.body and b"http" not in page.body.replace(b"http-equiv", b"")
    assert routes["/ui/app.js"](local).status == 200 and routes["/ui/style.css"](local).status == 200
    model = json.loads(routes["/ui/model.json"](local).body)
    assert model["telemetry"]["enabled"] and model["nodes"] == []
    assert routes["/ui/model.json"](Request("GET", "/ui/model.json", {}, {}, peer="10.1.2.3")).status == 403


def test_metrics_service_refuses_a_node_of_another_identity():
    from controlplane.telemetry.service import MetricsService

    class Identity:
        namespace, service_account, spiffe_uri = NS, "webapp", "spiffe://cluster.local/ns/istioinaction/sa/webapp"

    class Authn:
        name = "test"

        def authenticate(self, metadata, peer):
            return Identity()

    class Aborted(Exception):
        pass

    class Context:
        code = None

        def __init__(self, *messages):
            self.messages = list(messages)

        async def read(self):
            return self.messages.pop(0) if self.messages else grpc.aio.EOF

        def peer(self):
            return "ipv4:127.0.0.1:1"

        def invocation_metadata(self):
            return ()

        async def abort(self, code, details):
            self.code, self.details = code, details
            raise Aborted(details)

    from envoy.config.core.v3 import base_pb2

    def first(node_id: str, sa: str) -> bytes:
        node = base_pb2.Node(id=node_id)
        node.metadata.update({"NAMESPACE": NS, "SERVICE_ACCOUNT": sa})
        msg = pb.StreamMetricsMessage(envoy_metrics=report(rq2=1, cx=1, tls=1))
        msg.identifier.node = node.SerializeToString()
        return msg.SerializeToString()

    store = TelemetryStore()
    svc = MetricsService(store, [Authn()])
    ctx = Context(first(f"sidecar~10.0.0.2~catalog-0.{NS}~{NS}.svc.cluster.local", "catalog"))
    with pytest.raises(Aborted, match="service account 'catalog'"):
        asyncio.run(svc.StreamMetrics(None, ctx))
    assert len(store) == 0

    seen = []

    class Watching(Context):
        async def read(self):
            seen.append(len(store))
            return await super().read()

    webapp = first(f"sidecar~10.0.0.1~webapp-0.{NS}~{NS}.svc.cluster.local", "webapp")
    asyncio.run(svc.StreamMetrics(None, Watching(webapp, webapp)))
    assert seen == [0, 1, 1]  # held while the stream lasted
    assert len(store) == 0  # the stream ended: the proxy went away


def test_long_names_and_families_not_in_envoys_field_order_are_read():
    host = "a" * 150 + f".{NS}.svc.cluster.local"  # a name over 127 bytes: two-byte length
    long_name = family(f"cluster.outbound|80||{host}.upstream_rq_total", 5)
    reordered = family("http.inbound_0.0.0.0_3000.downstream_cx_total", 7)
    reordered = reordered[reordered.index(b"\x22"):] + reordered[:reordered.index(b"\x22")]  # metric before name
    c = read_counters([long_name, reordered])
    assert c.outbound[f"outbound|80||{host}"].requests == 5
    assert c.inbound[3000].connections == 7


def test_families_in_another_shape_are_read_too():
    """Envoy writes `type` even for COUNTER and one unlabelled sample; a family serialized
    otherwise (proto3 omits the zero type; labels) is read all the same."""
    from controlplane.telemetry.counters import report_counters

    labelled = pb.MetricFamily(name=f"cluster.{OUT}.upstream_rq_total", type=0)
    for value in (3, 4):
        m = labelled.metric.add()
        m.label.add(name="worker", value=str(value))
        m.counter.value = value
    raw = pb.StreamMetricsMessage(envoy_metrics=[labelled.SerializeToString()]).SerializeToString()
    assert report_counters(raw).outbound[OUT].requests == 7
