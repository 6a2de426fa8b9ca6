"""The Telemetry API (telemetry.istio.io): validation, precedence per proxy, and the Envoy
config it becomes (access logs on the listeners of a direction, HCM tracing)."""
from __future__ import annotations

from envoy.config.core.v3 import base_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.config.trace.v3 import zipkin_pb2
from envoy.extensions.access_loggers.file.v3 import file_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2

from controlplane.config.types.telemetry import telemetry
from controlplane.config.validation.telemetry import validate_telemetry
from controlplane.generators import access_log
from controlplane.generators.convert import typed
from controlplane.generators.filters import HTTP_CONNECTION_MANAGER
from controlplane.generators.tracing import hcm_tracing
from controlplane.model.meshconfig import parse_mesh_config
from controlplane.model.telemetry import NamedTelemetry, resolve

MESH = parse_mesh_config({"extensionProviders": [
    {"name": "zipkin", "zipkin": {"service": "zipkin.istio-system.svc.cluster.local", "port": 9411}},
    {"name": "json-file", "envoyFileAccessLog": {"path": "/tmp/access.log",
                                                 "logFormat": {"labels": {"code": "%RESPONSE_CODE%"}}}},
]})


def _t(ns: str, name: str, spec: dict) -> NamedTelemetry:
    assert validate_telemetry(spec) == []
    return NamedTelemetry(ns, name, telemetry(spec))


def _errors(spec: dict) -> list[str]:
    return [str(e) for e in validate_telemetry(spec)]


def test_validation_rejects_what_istio_rejects():
    assert any("randomSamplingPercentage" in e for e in _errors({"tracing": [{"randomSamplingPercentage": 101}]}))
    assert any("multiple tracing" in e for e in _errors({"tracing": [{}, {}]}))
    assert any("exactly one of literal" in e for e in _errors({"tracing": [{"customTags": {"a": {}}}]}))
    assert any("literal.value" in e for e in _errors({"tracing": [{"customTags": {"a": {"literal": {}}}}]}))
    assert any("mutually" in e or "only one of targetRefs" in e for e in _errors(
        {"selector": {"matchLabels": {"app": "a"}}, "targetRefs": [{"kind": "Service", "name": "a"}]}))
    assert any("expression" in e for e in _errors({"accessLogging": [{"filter": {"expression": "response.code >= (400"}}]}))
    assert any("match.mode" in e for e in _errors({"accessLogging": [{"match": {"mode": "BOTH"}}]}))
    assert any("value" in e for e in _errors({"metrics": [{"overrides": [{"tagOverrides": {"x": {"operation": "UPSERT"}}}]}]}))
    assert _errors({"accessLogging": [{"providers": [{"name": "envoy"}], "filter": {"expression": "response.code >= 400"}}],
                    "tracing": [{"randomSamplingPercentage": 50, "customTags": {"a": {"header": {"name": "x-a"}}}}]}) == []


def test_workload_overrides_namespace_overrides_root():
    root = _t("istio-system", "mesh-default", {"accessLogging": [{"providers": [{"name": "envoy"}]}],
                                               "tracing": [{"providers": [{"name": "zipkin"}], "randomSamplingPercentage": 10}]})
    ns = _t("shop", "ns", {"tracing": [{"randomSamplingPercentage": 50}]})
    wl = _t("shop", "web", {"selector": {"matchLabels": {"app": "web"}}, "accessLogging": [{"disabled": True}]})
    web = resolve([wl, ns, root], "istio-system", "shop", {"app": "web"})
    other = resolve([wl, ns, root], "istio-system", "shop", {"app": "db"})
    elsewhere = resolve([wl, ns, root], "istio-system", "billing", {"app": "web"})
    assert web.sources == ("istio-system/mesh-default@", "shop/ns@", "shop/web@")
    assert web.logging["CLIENT"].providers == () and other.logging["CLIENT"].providers == ("envoy",)
    assert web.tracing["SERVER"].random_sampling_percentage == 50
    assert elsewhere.tracing["SERVER"].random_sampling_percentage == 10
    assert resolve([], "istio-system", "shop", {}).logging["CLIENT"] is None  # mesh config applies


def test_match_mode_and_default_providers():
    server_only = _t("shop", "ns", {"accessLogging": [{"match": {"mode": "SERVER"}, "providers": [{"name": "json-file"}]}]})
    got = resolve([server_only], "istio-system", "shop", {})
    assert got.logging["SERVER"].providers == ("json-file",) and got.logging["CLIENT"] is None
    defaults = resolve([], "istio-system", "shop", {}, {"tracing": ("zipkin",)})
    assert defaults.tracing["CLIENT"].provider == "zipkin"


def _listener(direction: int) -> listener_pb2.Listener:
    lst = listener_pb2.Listener(name="l", traffic_direction=direction)
    lst.filter_chains.add().filters.add(name=HTTP_CONNECTION_MANAGER, typed_config=typed(hcm_pb2.HttpConnectionManager()))
    return lst


def _hcm(lst: listener_pb2.Listener) -> hcm_pb2.HttpConnectionManager:
    out = hcm_pb2.HttpConnectionManager()
    lst.filter_chains[0].filters[0].typed_config.Unpack(out)
    return out


def test_access_logs_in_the_configured_format_only_on_the_selected_direction():
    inbound, outbound = _listener(base_pb2.INBOUND), _listener(base_pb2.OUTBOUND)
    logs = access_log.telemetry_logs(["json-file"], "response.code >= 400", MESH)
    access_log.apply([inbound, outbound], MESH, {base_pb2.INBOUND: logs})
    (log,) = _hcm(inbound).access_log
    cfg = file_pb2.FileAccessLog()
    log.typed_config.Unpack(cfg)
    assert cfg.path == "/tmp/access.log" and dict(cfg.log_format.json_format) == {"code": "%RESPONSE_CODE%"}
    assert log.filter.extension_filter.name == "envoy.access_loggers.extension_filters.cel"
    assert list(_hcm(outbound).access_log) == []  # no accessLogFile in the mesh config


def test_zipkin_tracing_resolves_the_provider_cluster():
    t = resolve([_t("istio-system", "d", {"tracing": [{"providers": [{"name": "zipkin"}], "randomSamplingPercentage": 100,
                                                       "customTags": {"env": {"literal": {"value": "prod"}}}}]})],
                "istio-system", "shop", {})
    tracing = hcm_tracing(t.tracing["CLIENT"], MESH, "web.shop")
    cfg = zipkin_pb2.ZipkinConfig()
    tracing.provider.typed_config.Unpack(cfg)
    assert cfg.collector_cluster == "outbound|9411||zipkin.istio-system.svc.cluster.local"
    assert cfg.collector_endpoint == "/api/v2/spans" and tracing.random_sampling.value == 100
    assert [(c.tag, c.literal.value) for c in tracing.custom_tags] == [("env", "prod")]


def _inbound_logs(mesh, proxy) -> list:
    from controlplane.generators import listeners as listener_builder
    (inbound,) = [lst for _, lst in listener_builder.build(mesh, proxy) if lst.name == "virtualInbound"]
    return [log for f in access_log.listener_filters(inbound) if f.name == HTTP_CONNECTION_MANAGER
            for log in _hcm_of(f).access_log]


def _hcm_of(f) -> hcm_pb2.HttpConnectionManager:
    out = hcm_pb2.HttpConnectionManager()
    f.typed_config.Unpack(out)
    return out


def test_a_workload_telemetry_logs_and_rekeys_only_the_proxies_it_selects():
    from controlplane.generators.tracing import telemetry_key
    from tests.support.mesh_changes import ADMIN_1, FRONT_1, Change, World
    world = World({"service/web/front": 0})
    before = {p.pod: telemetry_key(world.mesh, p) for p in (FRONT_1, ADMIN_1)}
    assert _inbound_logs(world.mesh, FRONT_1) == []
    mesh = world.apply([Change("telemetry/web/front", 0)])
    logs = _inbound_logs(mesh, FRONT_1)
    assert logs and all(log.filter.extension_filter.name.endswith(".cel") for log in logs)
    assert _inbound_logs(mesh, ADMIN_1) == []
    assert telemetry_key(mesh, FRONT_1) != before["front-1"]
    assert telemetry_key(mesh, ADMIN_1) == before["admin-1"]
    mesh = world.apply([Change("telemetry/web/front", None)])
    assert _inbound_logs(mesh, FRONT_1) == []


def test_telemetry_objects_are_served_and_validated():
    from controlplane.config.kinds import ISTIO_UNSUPPORTED, TELEMETRY, lookup
    from controlplane.config.validation import validate
    assert lookup("telemetry.istio.io/v1alpha1", "Telemetry") is TELEMETRY and "Telemetry" not in ISTIO_UNSUPPORTED
    doc = {"apiVersion": "telemetry.istio.io/v1", "kind": "Telemetry", "metadata": {"name": "t", "namespace": "a"},
           "spec": {"tracing": [{"randomSamplingPercentage": 150}]}}
    assert any("randomSamplingPercentage" in str(e) for e in validate(doc, TELEMETRY))
    doc["spec"] = {"metrics": [{"overrides": [{"tagOverrides": {"x": {"operation": "REMOVE", "value": "v"}}}]}]}
    assert validate(doc, TELEMETRY)


ZIPKIN_SERVICE = """
apiVersion: v1
kind: Service
metadata: {name: zipkin, namespace: istio-system}
spec: {ports: [{name: http-query, port: 9411}], selector: {app: zipkin}}
"""


def test_envoy_accepts_a_sidecar_with_telemetry_logs_cel_filter_and_zipkin_tracing(tmp_path):
    """`envoy --mode validate` of everything the webapp sidecar gets with a mesh-wide
    Telemetry: JSON file logs filtered by CEL, OpenTelemetry logs, zipkin tracing with tags."""
    import dataclasses

    from tests.support import chapter9, static_xds
    from tests.support.envoy import envoy_validate
    mc = parse_mesh_config({"extensionProviders": [
        {"name": "zipkin", "zipkin": {"service": "zipkin.istio-system.svc.cluster.local", "port": 9411}},
        {"name": "otel-logs", "envoyOtelAls": {"service": "zipkin.istio-system.svc.cluster.local", "port": 9411}},
        {"name": "json-file", "envoyFileAccessLog": {"path": "/dev/stdout", "logFormat": {"labels": {"code": "%RESPONSE_CODE%"}}}},
    ]})
    tele = """
apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {name: mesh-default, namespace: istio-system}
spec:
  accessLogging: [{providers: [{name: json-file}, {name: otel-logs}], filter: {expression: "response.code >= 400"}}]
  tracing: [{providers: [{name: zipkin}], randomSamplingPercentage: 100,
             customTags: {env: {literal: {value: prod}}, user: {header: {name: x-user, defaultValue: none}}}}]
"""
    mesh = dataclasses.replace(chapter9.mesh(ZIPKIN_SERVICE, tele), mesh_config=mc)
    config = static_xds.sidecar_config(mesh, chapter9.WEBAPP_PROXY, tmp_path)
    text = str(config)
    assert "envoy.tracers.zipkin" in text and "extension_filters.cel" in text and "open_telemetry" in text
    envoy_validate(config, tmp_path / "bootstrap.json")


def test_analyzers_report_conflicting_and_unselective_telemetries(tmp_path):
    from controlplane.analysis import analyze, load_paths
    doc = """
apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {name: %s, namespace: shop}
spec: %s
"""
    pod = "apiVersion: v1\nkind: Pod\nmetadata: {name: web-1, namespace: shop, labels: {app: web}}\nspec: {containers: [{name: a}]}\n"
    (tmp_path / "t.yaml").write_text("---".join([pod, doc % ("a", "{}"), doc % ("b", "{}"),
                                                 doc % ("w1", "{selector: {matchLabels: {app: web}}}"),
                                                 doc % ("w2", "{selector: {matchLabels: {app: web}}}"),
                                                 doc % ("none", "{selector: {matchLabels: {app: gone}}}")]))
    codes = sorted((m.type.code, m.resource.name) for m in analyze(load_paths([str(tmp_path)])[0]) if m.resource
                   and m.resource.kind == "Telemetry")
    assert codes == [("IST0101", "none"), ("IST0159", "w1"), ("IST0159", "w2"), ("IST0160", "a"), ("IST0160", "b")]
