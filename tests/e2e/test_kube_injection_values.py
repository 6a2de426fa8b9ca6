"""The injection values on the real API server (../shared/k8s): meshd, registered as the
mutating webhook for this test's namespaces only (tests/support/webhooks.py's
configuration, removed however the test ends), reads ConfigMap istio-sidecar-injector of its
root namespace. Its `values.global.proxy.image` and `resources` decide what a new pod of a
labelled namespace is stored with; a change of the ConfigMap decides the next pod; a key meshd
does not honour and a bad ConfigMap show in /debug/configz, the bad one leaving the last good
values in force. meshd's reads of it are ones deploy/kubernetes' RBAC allows."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from controlplane.admission.patcher import INJECTOR
from tests.support.harness import free_port, http_get, meshd, wait_for
from tests.support.kube import RecordingProxy
from tests.support.paths import REPO
from tests.support.rbac import Use, grants_for, load_manifests, uses
from tests.support.webhooks import BASE, configurations, get, pod, registered

pytestmark = pytest.mark.e2e


def injector_configmap(ns: str, values: dict, config: dict | None = None) -> dict:
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "istio-sidecar-injector", "namespace": ns},
            "data": {"values": yaml.safe_dump(values), "config": yaml.safe_dump(config or {"policy": "enabled"})}}


def proxy_values(image: str, cpu: str, memory: str) -> dict:
    return {"global": {"proxy": {"image": image, "resources": {"requests": {"cpu": cpu, "memory": memory},
                                                                "limits": {"memory": "512Mi"}}},
                       "compliancePolicy": "fips-140-3"}}  # not honoured by meshd: reported


def stored_proxy(stored: dict) -> dict:
    spec = stored["spec"]
    return next(c for c in spec.get("initContainers", []) + spec["containers"] if c["name"] == "istio-proxy")


def test_the_sidecar_injector_configmap_decides_what_new_pods_are_stored_with(kube, tmp_path: Path):
    scope_label = {"meshd-injection-values-test": kube.tag}
    system = kube.ns("istio-system", **scope_label)
    shop = kube.ns("shop", **scope_label, **{"istio-injection": "enabled"})
    kube.apply(injector_configmap(system, proxy_values("registry.example/envoy:v1", "250m", "96Mi")))
    port = free_port("127.0.0.1")
    admin = kube.api_client(record=False)
    mutating = [c for c in configurations(port, "unused", {"matchLabels": scope_label})
                if c[0] == "mutatingwebhookconfigurations"]
    with registered(admin, mutating), RecordingProxy(kube.cluster) as proxy, \
            meshd(None, tmp_path, extra=["--kubeconfig", str(proxy.kubeconfig(tmp_path / "kubeconfig")),
                                         "--leader-election-namespace", system, "--root-namespace", system,
                                         "--webhook-port", str(port)]) as cp:
        def injection() -> dict:
            return json.loads(http_get("127.0.0.1", cp.monitoring_port, "/debug/configz")[1])["injection"]

        wait_for(lambda: get(admin, f"{BASE}/mutatingwebhookconfigurations/{INJECTOR}")["webhooks"][0]
                 ["clientConfig"].get("caBundle"), 20, what="caBundle set by meshd")
        # /ready waited for the initial lists, the ConfigMap's among them: in force from the first pod
        section = injection()
        assert section["injectorSource"] == f"ConfigMap {system}/istio-sidecar-injector", section
        assert section["unread"] == ["values.global.compliancePolicy"] and section["error"] is None
        assert "injection config keys not honoured" in cp.log()

        first = stored_proxy(kube.apply(pod("web-1", shop)))
        assert first["image"] == "registry.example/envoy:v1"
        assert first["resources"] == {"requests": {"cpu": "250m", "memory": "96Mi"}, "limits": {"memory": "512Mi"}}

        # --- the ConfigMap changes: the next pod gets the new values, the stored one keeps its own ---
        kube.apply(injector_configmap(system, proxy_values("registry.example/envoy:v2", "500m", "128Mi")))
        wait_for(lambda: injection()["values"]["proxyImage"] == "registry.example/envoy:v2", 10,
                 what="the changed ConfigMap in force")
        second = stored_proxy(kube.apply(pod("web-2", shop)))
        assert second["image"] == "registry.example/envoy:v2"
        assert second["resources"]["requests"] == {"cpu": "500m", "memory": "128Mi"}
        assert stored_proxy(kube.get("v1", "Pod", "web-1", shop))["image"] == "registry.example/envoy:v1"

        # --- a bad ConfigMap: reported naming the key, the last good values stay in force --------------
        kube.apply(injector_configmap(system, {"global": {"proxy": {"image": "registry.example/envoy:v3",
                                                                    "statusPort": [15020]}}}))
        wait_for(lambda: injection()["error"] is not None, 10, what="the bad ConfigMap reported")
        assert injection()["error"] == (f"ConfigMap {system}/istio-sidecar-injector: values.global.proxy.statusPort: "
                                        "must be a string, got [15020]")
        assert stored_proxy(kube.apply(pod("web-3", shop)))["image"] == "registry.example/envoy:v2"
        assert "injection config rejected" in cp.log()

        # --- RBAC: meshd read the ConfigMap by name, as deploy/kubernetes grants it (in istio-system) ---
        grants = grants_for(load_manifests(REPO / "deploy" / "kubernetes"), "istio-system", "meshd")
        reads = {Use("istio-system" if u.namespace == system else u.namespace, u.group, u.resource, u.verb, u.name)
                 for u in uses(proxy) if u.resource == "configmaps" and u.verb in ("list", "watch")}
        assert {(u.verb, u.name) for u in reads} >= {(v, "istio-sidecar-injector") for v in ("list", "watch")}
        assert [u for u in reads if not any(g.allows(u) for g in grants)] == []


def concurrency(stored: dict) -> str:
    args = stored_proxy(stored)["args"]
    return args[args.index("--concurrency") + 1]


def test_a_change_of_the_mesh_config_file_reaches_the_next_pod(kube, tmp_path: Path):
    """`--mesh-config FILE` (followed by meshd): its defaultConfig is what the injector hands the
    proxy (here Envoy's --concurrency); a change of the file decides the next pod."""
    scope_label = {"meshd-injection-values-test": kube.tag}
    system = kube.ns("istio-system", **scope_label)
    shop = kube.ns("shop", **scope_label, **{"istio-injection": "enabled"})
    mesh = tmp_path / "mesh.yaml"
    mesh.write_text("defaultConfig:\n  concurrency: 2\n")
    port = free_port("127.0.0.1")
    admin = kube.api_client(record=False)
    mutating = [c for c in configurations(port, "unused", {"matchLabels": scope_label})
                if c[0] == "mutatingwebhookconfigurations"]
    with registered(admin, mutating), \
            meshd(None, tmp_path, extra=["--kubeconfig", str(kube.cluster.kubeconfig),
                                         "--leader-election-namespace", system, "--root-namespace", system,
                                         "--webhook-port", str(port), "--mesh-config", str(mesh)]) as cp:
        def injection() -> dict:
            return json.loads(http_get("127.0.0.1", cp.monitoring_port, "/debug/configz")[1])["injection"]

        wait_for(lambda: get(admin, f"{BASE}/mutatingwebhookconfigurations/{INJECTOR}")["webhooks"][0]
                 ["clientConfig"].get("caBundle"), 20, what="caBundle set by meshd")
        assert injection()["meshConfigSource"] == f"file {mesh}"
        assert concurrency(kube.apply(pod("web-1", shop))) == "2"
        tmp = mesh.with_suffix(".tmp")
        tmp.write_text("defaultConfig:\n  concurrency: 3\n")
        tmp.replace(mesh)
        wait_for(lambda: injection()["values"]["defaultProxyConfig"] == {"concurrency": 3}, 10,
                 what="the changed mesh config file in force for injection")
        assert concurrency(kube.apply(pod("web-2", shop))) == "3"
