"""Kubernetes mode against the real kube-apiserver of ../shared/k8s (the session's, with
Istio's CRDs installed): AuthorizationPolicies applied
to the cluster are served, an invalid one is refused with its status saying why, and an
object of a kind meshd does not serve (a WasmPlugin) is reported, never dropped:
/debug/configz, the `meshd_config_unsupported` gauge, and back to 0 once it is deleted.
"""
from __future__ import annotations

import json

import pytest
from kubernetes import client

from tests.support.harness import http_get, meshd, wait_for

pytestmark = pytest.mark.e2e

NS = "istioinaction"
SEC = ("security.istio.io", "v1")


@pytest.fixture
def cluster(kube):
    """This test's part of the session's real API server (Istio's CRDs installed): its namespaces for meshd (istio-system's part) and the workloads."""
    system, ns = kube.ns("istio-system"), kube.ns(NS)
    return kube.cluster, client.CustomObjectsApi(kube.api_client()), system, ns


def policy(name: str, principals: list[str], ns: str) -> dict:
    return {"apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
            "metadata": {"name": name, "namespace": ns},
            "spec": {"selector": {"matchLabels": {"app": "catalog"}},
                     "rules": [{"from": [{"source": {"principals": principals}}]}]}}


WASM = ("extensions.istio.io", "v1alpha1")


def wasm_plugin(ns: str) -> dict:
    return {"apiVersion": "extensions.istio.io/v1alpha1", "kind": "WasmPlugin",
            "metadata": {"name": "catalog", "namespace": ns},
            "spec": {"selector": {"matchLabels": {"app": "catalog"}}, "url": "oci://example.com/filter:1"}}


def test_policies_are_served_refused_with_status_and_unserved_kinds_reported(cluster, tmp_path):
    c, custom, system, ns = cluster
    custom.create_namespaced_custom_object(*SEC, ns, "authorizationpolicies",
                                           policy("catalog-viewer", [f"cluster.local/ns/{ns}/sa/webapp"], ns))
    # the CRD's schema accepts it; Istio's validation does not (a wildcard inside a principal)
    custom.create_namespaced_custom_object(*SEC, ns, "authorizationpolicies",
                                           policy("broken", ["cluster.local/ns/*/sa/webapp"], ns))
    custom.create_namespaced_custom_object(*WASM, ns, "wasmplugins", wasm_plugin(ns))
    with meshd(None, tmp_path, extra=["--kubeconfig", str(c.kubeconfig), "--leader-election-namespace", system,
                                      "--root-namespace", system]) as m:
        def configz() -> dict:
            return json.loads(http_get("127.0.0.1", m.monitoring_port, "/debug/configz")[1])

        def served() -> set[str]:
            return {o["name"] for o in configz()["objects"] if o["kind"] == "AuthorizationPolicy"}

        wait_for(lambda: "catalog-viewer" in served(), 30,
                 what=lambda: "the AuthorizationPolicy served; meshd log:\n" + m.log()[-3000:])
        assert "broken" not in served()
        rejection = next(r for r in configz()["rejections"] if r["object"] == f"AuthorizationPolicy {ns}/broken")
        assert "principals" in rejection["field"], rejection

        def status_reason() -> str | None:
            got = custom.get_namespaced_custom_object(*SEC, ns, "authorizationpolicies", "broken")
            conds = (got.get("status") or {}).get("conditions") or []
            return next((x.get("reason") for x in conds if x.get("type") == "Reconciled"), None)

        wait_for(lambda: status_reason() == "Rejected", 30, what="the invalid policy's status says Rejected")

        [plugin] = [u for u in configz()["unsupported"] if u["kind"] == "WasmPlugin"]
        assert (plugin["namespace"], plugin["name"], plugin["level"]) == (ns, "catalog", "Warning")
        gauge = 'meshd_config_unsupported{group="extensions.istio.io",kind="WasmPlugin"}'
        assert f"{gauge} 1.0" in m.metrics()
        custom.delete_namespaced_custom_object(*WASM, ns, "wasmplugins", "catalog")
        wait_for(lambda: f"{gauge} 0.0" in m.metrics(), 30, what="the gauge back to 0 once the plugin is gone")
        assert not [u for u in configz()["unsupported"] if u["kind"] == "WasmPlugin"]
