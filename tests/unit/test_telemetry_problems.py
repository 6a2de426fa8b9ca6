"""Telemetry settings meshd accepts but does not serve are reported, never silently ignored:
the pure list of problems (object, field, reason), one log event per problem when it
appears, /debug/configz `telemetryProblems`, the gauge `meshd_telemetry_problems{reason}`
and `meshd analyze` (MSH0007)."""
from __future__ import annotations

import json

from prometheus_client import CollectorRegistry
from structlog.testing import capture_logs

from controlplane.config.types.telemetry import telemetry
from controlplane.config.validation.telemetry import validate_telemetry
from controlplane.generators.telemetry_problems import (
    METRICS_NOT_APPLIED,
    PROVIDER_NOT_SERVED,
    REQUEST_ID_SAMPLING_NOT_SERVED,
    TARGET_REFS_NOT_SERVED,
    UNKNOWN_PROVIDER,
    problems,
)
from controlplane.model.meshconfig import parse_mesh_config
from controlplane.model.telemetry import NamedTelemetry
from controlplane.telemetry.problem_report import TelemetryReport
from tests.support.configs import build_mesh, snapshot_from_yaml

MESH = parse_mesh_config({"extensionProviders": [
    {"name": "zipkin", "zipkin": {"service": "zipkin.istio-system.svc.cluster.local", "port": 9411}},
    {"name": "dd", "datadog": {"service": "dd.istio-system.svc.cluster.local", "port": 8126}},
    {"name": "otel-noport", "envoyOtelAls": {"service": "otel.istio-system.svc.cluster.local"}},
]})


def _problems(spec: dict, mc=MESH) -> list[tuple[str, str]]:
    assert validate_telemetry(spec) == []
    return [(p.field, p.reason) for p in problems([NamedTelemetry("shop", "t", telemetry(spec))], mc)]


def test_a_telemetry_meshd_serves_in_full_has_no_problem():
    assert _problems({"accessLogging": [{"providers": [{"name": "envoy"}]}],
                      "tracing": [{"providers": [{"name": "zipkin"}], "useRequestIdForTraceSampling": True}]}) == []


def test_each_setting_meshd_does_not_serve_is_listed_with_its_field_and_reason():
    # metrics: meshd's metrics service applies overrides of what it serves; the rest is listed
    assert _problems({"metrics": [{"overrides": [{"disabled": True}]}]}) == []
    assert _problems({"metrics": [{"providers": [{"name": "prometheus"}, {"name": "nope"}, {"name": "zipkin"}],
                                   "reportingInterval": "10s", "overrides": [
                                       {"match": {"customMetric": "my_metric"}, "disabled": False},
                                       {"match": {"metric": "REQUEST_DURATION"}, "tagOverrides": {"x": {"value": "'y'"}}},
                                       {"match": {"metric": "REQUEST_SIZE"}, "disabled": True},  # not there anyway
                                       {"match": {"metric": "REQUEST_COUNT"}, "tagOverrides": {
                                           "host": {"value": "request.host"}, "lit": {"value": "'v'"},
                                           "source_principal": {"operation": "REMOVE"}}}]}]}) == [
        ("spec.metrics[0].providers[1]", UNKNOWN_PROVIDER),
        ("spec.metrics[0].providers[2]", PROVIDER_NOT_SERVED),  # a tracing kind
        ("spec.metrics[0].reportingInterval", METRICS_NOT_APPLIED),
        ("spec.metrics[0].overrides[0].match.customMetric", METRICS_NOT_APPLIED),
        ("spec.metrics[0].overrides[1].match.metric", METRICS_NOT_APPLIED),
        ("spec.metrics[0].overrides[3].tagOverrides.host.value", METRICS_NOT_APPLIED)]
    assert _problems({"targetRefs": [{"kind": "Gateway", "group": "gateway.networking.k8s.io", "name": "gw"},
                                     {"kind": "Service", "group": "", "name": "web"},
                                     {"kind": "Gateway", "group": "gateway.networking.k8s.io", "name": "gw",
                                      "namespace": "other"}]}) == [
        ("spec.targetRefs[1]", TARGET_REFS_NOT_SERVED), ("spec.targetRefs[2]", TARGET_REFS_NOT_SERVED)]
    assert _problems({"accessLogging": [{"providers": [{"name": "envoy"}, {"name": "nope"}, {"name": "otel-noport"},
                                                       {"name": "zipkin"}]}]}) == [
        ("spec.accessLogging[0].providers[1]", UNKNOWN_PROVIDER),
        ("spec.accessLogging[0].providers[2]", PROVIDER_NOT_SERVED),  # no port
        ("spec.accessLogging[0].providers[3]", PROVIDER_NOT_SERVED)]  # a tracing kind
    assert _problems({"tracing": [{"providers": [{"name": "dd"}], "useRequestIdForTraceSampling": False}]}) == [
        ("spec.tracing[0].providers[0]", PROVIDER_NOT_SERVED),
        ("spec.tracing[0].useRequestIdForTraceSampling", REQUEST_ID_SAMPLING_NOT_SERVED)]
    # `envoy` is built in for logs, not a tracer
    assert _problems({"tracing": [{"providers": [{"name": "envoy"}]}]}) == [
        ("spec.tracing[0].providers[0]", UNKNOWN_PROVIDER)]


def test_a_target_ref_to_a_kubernetes_gateway_selects_its_proxies_only():
    from controlplane.model.telemetry import resolve
    gw = {"targetRefs": [{"kind": "Gateway", "group": "gateway.networking.k8s.io", "name": "edge"}],
          "accessLogging": [{"disabled": True}]}
    objs = [NamedTelemetry("shop", "t", telemetry(gw))]
    label = "gateway.networking.k8s.io/gateway-name"

    def sources(namespace: str, labels: dict) -> tuple[str, ...]:
        return resolve(objs, "istio-system", namespace, labels).sources

    assert sources("shop", {label: "edge"}) == ("shop/t@",)
    assert resolve(objs, "istio-system", "shop", {label: "edge"}).logging["CLIENT"].providers == ()  # disabled
    assert sources("shop", {label: "other"}) == ()
    assert sources("web", {label: "edge"}) == ()  # a Gateway of the same name elsewhere
    assert sources("shop", {"app": "edge"}) == ()  # a sidecar
    # a Telemetry with targetRefs never selects by labels, even those of the gateway
    svc = {"targetRefs": [{"kind": "Service", "group": "", "name": "edge"}]}
    assert resolve([NamedTelemetry("shop", "s", telemetry(svc))], "istio-system", "shop", {label: "edge"}).sources == ()


GATEWAY_MESH = """
apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {name: istio}
spec: {controllerName: istio.io/gateway-controller}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec: {selector: {app: web}, ports: [{port: 8080, name: http}], clusterIP: 10.0.0.20}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: edge, namespace: infra}
spec:
  gatewayClassName: istio
  listeners: [{name: http, port: 80, protocol: HTTP, allowedRoutes: {namespaces: {from: All}}}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: web, namespace: shop}
spec:
  parentRefs: [{name: edge, namespace: infra}]
  rules: [{backendRefs: [{name: web, port: 8080}]}]
---
apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {name: edge-logs, namespace: infra}
spec:
  targetRefs: [{group: gateway.networking.k8s.io, kind: Gateway, name: %s}]
  accessLogging: [{providers: [{name: json-file}]}]
"""


def test_a_gateway_api_gateway_proxy_gets_the_logs_of_the_telemetry_targeting_its_gateway():
    import dataclasses

    from envoy.extensions.access_loggers.file.v3 import file_pb2
    from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2

    from controlplane.generators import access_log, listeners
    from controlplane.generators.filters import HTTP_CONNECTION_MANAGER
    from controlplane.model.proxy import Proxy
    from tests.support.configs import mesh_from_yaml
    mc = parse_mesh_config({"extensionProviders": [
        {"name": "json-file", "envoyFileAccessLog": {"path": "/tmp/edge.log", "logFormat": {"labels": {"c": "%RESPONSE_CODE%"}}}}]})
    proxy = Proxy("router~10.1.0.5~edge-1.infra~infra.svc.cluster.local", "router", "10.1.0.5", "edge-1", "infra",
                  labels={"gateway.networking.k8s.io/gateway-name": "edge"})

    def log_paths(target: str) -> set[str]:
        mesh = dataclasses.replace(mesh_from_yaml(GATEWAY_MESH % target), mesh_config=mc)
        out = set()
        for _, lst in listeners.build(mesh, proxy):
            for f in access_log.listener_filters(lst):
                if f.name == HTTP_CONNECTION_MANAGER:
                    hcm = hcm_pb2.HttpConnectionManager()
                    f.typed_config.Unpack(hcm)
                    for log in hcm.access_log:
                        cfg = file_pb2.FileAccessLog()
                        log.typed_config.Unpack(cfg)
                        out.add(cfg.path)
        return out

    assert log_paths("edge") == {"/tmp/edge.log"}
    assert "/tmp/edge.log" not in log_paths("another")


TELEMETRY = """
apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {name: mesh-default, namespace: istio-system}
spec:
  tracing: [{providers: [{name: zipkin}]}]
  metrics: [{overrides: [{match: {metric: REQUEST_COUNT}, tagOverrides: {host: {value: request.host}}}]}]
"""


def _gauge(registry: CollectorRegistry, reason: str) -> float:
    return registry.get_sample_value("meshd_telemetry_problems", {"reason": reason})


def test_report_logs_each_problem_once_and_follows_the_mesh_config():
    registry = CollectorRegistry()
    report = TelemetryReport(registry)
    snap = snapshot_from_yaml(TELEMETRY)
    with capture_logs() as logs:
        report.update(build_mesh(snap))  # no extensionProviders: zipkin is unknown
        report.update(build_mesh(snap))  # same input: no second event
    events = [e for e in logs if e["event"] == "telemetry not served as written"]
    assert sorted((e["object"], e["field"], e["reason"]) for e in events) == [
        ("istio-system/mesh-default", "spec.metrics[0].overrides[0].tagOverrides.host.value", METRICS_NOT_APPLIED),
        ("istio-system/mesh-default", "spec.tracing[0].providers[0]", UNKNOWN_PROVIDER)]
    assert _gauge(registry, UNKNOWN_PROVIDER) == 1 and _gauge(registry, METRICS_NOT_APPLIED) == 1
    assert _gauge(registry, TARGET_REFS_NOT_SERVED) == 0
    # the provider added to the mesh config: only the metrics are left, and nothing new is logged
    with capture_logs() as logs:
        report.update(build_mesh(snap, mesh_config=MESH))
    assert [e for e in logs if e["event"] == "telemetry not served as written"] == []
    assert [(r["name"], r["field"], r["reason"]) for r in report.status()] == [
        ("mesh-default", "spec.metrics[0].overrides[0].tagOverrides.host.value", METRICS_NOT_APPLIED)]
    assert _gauge(registry, UNKNOWN_PROVIDER) == 0


def test_analyze_warns_with_msh0007_at_the_field(tmp_path):
    from controlplane.analysis import analyze, load_paths
    (tmp_path / "t.yaml").write_text(TELEMETRY)
    found = [m for m in analyze(load_paths([str(tmp_path)])[0], mesh_config=MESH) if m.type.code == "MSH0007"]
    assert [(m.type.level, m.resource.name) for m in found] == [("Warning", "mesh-default")]
    assert "spec.metrics[0].overrides[0].tagOverrides.host.value: meshd cannot compute" in str(found[0])
    assert found[0].line == 7  # the metrics entry


def test_a_running_meshd_reports_the_telemetry_in_configz_metrics_and_log(tmp_path):
    from tests.support.harness import http_get, meshd, wait_for

    config = tmp_path / "config"
    config.mkdir()
    (config / "telemetry.yaml").write_text(TELEMETRY)
    with meshd(config, tmp_path) as m:
        def section():
            return json.loads(http_get("127.0.0.1", m.monitoring_port, "/debug/configz")[1]).get("telemetryProblems")

        wait_for(lambda: section(), 10, what="telemetryProblems in /debug/configz")
        assert sorted((r["namespace"], r["name"], r["field"]) for r in section()) == [
            ("istio-system", "mesh-default", "spec.metrics[0].overrides[0].tagOverrides.host.value"),
            ("istio-system", "mesh-default", "spec.tracing[0].providers[0]")]
        assert f'meshd_telemetry_problems{{reason="{METRICS_NOT_APPLIED}"}} 1.0' in m.metrics()
        assert "telemetry not served as written" in m.log()
        (config / "telemetry.yaml").unlink()
        wait_for(lambda: section() == [], 10, what="the problems cleared once the Telemetry is gone")
