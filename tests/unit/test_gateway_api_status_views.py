"""The Gateway API status in directory mode: `meshd analyze` reports each condition that is
not as it should be with the spec's reason (analysis/analyzers/gateway_api.py), and
/debug/configz's `gatewayAPI` section shows the status meshd computed
(debug/gateway_api.py), both from the model's conversion."""
from __future__ import annotations

from pathlib import Path

from controlplane.analysis import analyze, load_paths
from controlplane.config.objects import Origin
from controlplane.config.parse import parse_document
from controlplane.config.snapshot import ConfigSnapshot
from controlplane.debug.gateway_api import gateway_api_section
from controlplane.model.mesh import build_mesh
from tests.support.paths import shared

SAMPLE = ("corpus", "istio", "samples", "bookinfo", "gateway-api", "bookinfo-gateway.yaml")

EXTRA = """
apiVersion: v1
kind: Service
metadata: {name: productpage, namespace: default}
spec:
  selector: {app: productpage}
  ports: [{name: http, port: 9080}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: clash, namespace: default}
spec:
  gatewayClassName: istio
  listeners:
  - {name: web, port: 9000, protocol: HTTP}
  - {name: raw, port: 9000, protocol: TCP}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: broken, namespace: default}
spec:
  parentRefs: [{name: bookinfo-gateway, sectionName: nope}, {name: bookinfo-gateway}]
  rules: [{backendRefs: [{name: nothere, port: 80}]}]
"""


def config(tmp_path: Path) -> Path:
    (tmp_path / "bookinfo-gateway.yaml").write_text(shared(*SAMPLE).read_text())
    (tmp_path / "extra.yaml").write_text(EXTRA)
    return tmp_path


def test_analyze_reports_each_condition_not_met_with_the_specs_reason(tmp_path):
    resources, errors = load_paths([str(config(tmp_path))])
    assert errors == []
    found = [(m.type.code, m.resource.kind, m.resource.name, str(m)) for m in analyze(resources)
             if m.type.code in ("MSH0020", "MSH0021")]
    texts = {(code, name, text.split(") ", 1)[1]) for code, _, name, text in found}
    assert ("MSH0020", "broken", "parent Gateway bookinfo-gateway (sectionName nope): Accepted is False: "
            "NoMatchingParent: no listener of default/bookinfo-gateway matches sectionName 'nope' and port None") in texts
    assert any(code == "MSH0021" and name == "broken" and text.startswith("parent Gateway bookinfo-gateway: ResolvedRefs "
               "is False: BackendNotFound") for code, name, text in texts), texts
    for listener in ("web", "raw"):
        assert any(name == "clash" and text.startswith(f"listener {listener}: Conflicted is True: ProtocolConflict")
                   for _, name, text in texts), texts
    # the sample's own route is accepted and resolved: nothing said about it
    assert not [f for f in found if f[2] == "bookinfo"]


def test_the_sample_alone_is_clean(tmp_path):
    (tmp_path / "bookinfo-gateway.yaml").write_text(shared(*SAMPLE).read_text())
    (tmp_path / "svc.yaml").write_text(EXTRA.split("---")[0])
    resources, _ = load_paths([str(tmp_path)])
    assert [str(m) for m in analyze(resources) if m.type.code.startswith("MSH002")] == []


def test_configz_section_shows_the_computed_status(tmp_path):
    resources, _ = load_paths([str(config(tmp_path))])
    objects = {}
    for r in resources:
        parsed = parse_document(dict(r.doc), Origin("file", str(r.location)))
        objects[parsed.key] = parsed
    section = gateway_api_section(build_mesh(ConfigSnapshot(objects)))
    by_name = {(e["kind"], e["name"]): e for e in section}
    gw = by_name[("Gateway", "bookinfo-gateway")]
    assert gw["group"] == "gateway.networking.k8s.io" and gw["namespace"] == "default"
    conditions = {c["type"]: c["status"] for c in gw["status"]["conditions"]}
    assert conditions["Accepted"] == conditions["Programmed"] == "True" and set(conditions.values()) == {"True"}
    assert gw["status"]["listeners"][0]["attachedRoutes"] == 2  # bookinfo, and broken's second parentRef
    route = by_name[("HTTPRoute", "bookinfo")]["status"]["parents"][0]
    assert route["controllerName"] == "istio.io/gateway-controller"
    assert {c["type"]: c["reason"] for c in route["conditions"]} == {"Accepted": "Accepted", "ResolvedRefs": "ResolvedRefs"}
    assert gateway_api_section(None) == []
