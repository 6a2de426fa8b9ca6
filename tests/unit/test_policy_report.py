"""Policies meshd enforces differently from what they say (it fails closed, as istiod)
are reported: one log event per problem, the configz section, the gauge."""
from __future__ import annotations

from prometheus_client import CollectorRegistry
from structlog.testing import capture_logs

from controlplane.model.meshconfig import parse_mesh_config
from controlplane.security.policy_report import PolicyReport
from tests.support.configs import build_mesh, snapshot_from_yaml

CUSTOM = """
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: ext, namespace: foo}
spec:
  action: CUSTOM
  provider: {name: my-ext-authz}
  rules: [{to: [{operation: {paths: ["/admin"]}}]}]
"""
SERVICE = """
---
apiVersion: v1
kind: Service
metadata: {name: ext-authz, namespace: foo}
spec:
  selector: {app: ext-authz}
  ports: [{name: http, port: 8000}]
"""
PROVIDERS = parse_mesh_config({"extensionProviders": [
    {"name": "my-ext-authz", "envoyExtAuthzHttp": {"service": "ext-authz.foo.svc.cluster.local", "port": 8000}}]})


def _gauge(registry: CollectorRegistry, severity: str) -> float:
    return registry.get_sample_value("meshd_policy_problems", {"kind": "AuthorizationPolicy", "severity": severity})


def test_custom_policy_with_unknown_provider_is_reported_once_and_cleared_when_fixed():
    registry = CollectorRegistry()
    report = PolicyReport(registry)
    snap = snapshot_from_yaml(CUSTOM)
    with capture_logs() as logs:
        report.update(build_mesh(snap))
        report.update(build_mesh(snap))  # same input: no second event
    events = [e for e in logs if e["event"] == "policy not enforced as written"]
    assert len(events) == 1
    assert events[0]["object"] == "foo/ext" and events[0]["field"] == "spec.provider.name"
    assert "my-ext-authz" in events[0]["reason"] and "fail closed" in events[0]["reason"]
    assert _gauge(registry, "error") == 1
    [row] = report.status()
    assert row["name"] == "ext" and row["severity"] == "error"
    # the provider in the mesh config, but its service is not in the mesh: still denied, still reported
    report.update(build_mesh(snap, mesh_config=PROVIDERS))
    assert "could not find service" in report.status()[0]["reason"]
    # both there: nothing left to report
    report.update(build_mesh(snapshot_from_yaml(CUSTOM + SERVICE), mesh_config=PROVIDERS))
    assert report.status() == [] and _gauge(registry, "error") == 0


def test_a_running_meshd_reports_the_policy_in_configz_metrics_and_log(tmp_path):
    import json

    from tests.support.harness import http_get, meshd, wait_for

    config = tmp_path / "config"
    config.mkdir()
    (config / "policy.yaml").write_text(CUSTOM)
    with meshd(config, tmp_path) as m:
        def section():
            return json.loads(http_get("127.0.0.1", m.monitoring_port, "/debug/configz")[1]).get("policyProblems")

        wait_for(lambda: section(), 10, what="policyProblems in /debug/configz")
        [row] = section()
        assert (row["namespace"], row["name"], row["field"]) == ("foo", "ext", "spec.provider.name")
        assert 'meshd_policy_problems{kind="AuthorizationPolicy",severity="error"} 1.0' in m.metrics()
        assert "policy not enforced as written" in m.log()
        (config / "policy.yaml").unlink()
        wait_for(lambda: section() == [], 10, what="the problem cleared once the policy is gone")
