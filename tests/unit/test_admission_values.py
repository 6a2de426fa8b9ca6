"""The injection values in Kubernetes mode (controlplane/admission/inject.py InjectionInputs,
wiring.py, the Kubernetes source's istio-sidecar-injector stream): ConfigMap
istio-sidecar-injector and the mesh config rebuild the injection config on every change;
keys meshd does not honour are logged once per change and listed in /debug/configz; a bad
ConfigMap keeps the last good config, with an error naming the key."""
from __future__ import annotations

import asyncio
import base64
import json
from pathlib import Path

import yaml
from structlog.testing import capture_logs

from controlplane.admission import review as rv
from controlplane.admission.inject import InjectionInputs, review
from controlplane.admission.wiring import Webhooks
from controlplane.config.store import ConfigStore
from controlplane.inject import apply_patch
from controlplane.kube.source import KubernetesSource, ReflectorOptions
from tests.support.ads import run

WHERE = "istio-system/istio-sidecar-injector"
NAMESPACES = {"shop": {"metadata": {"name": "shop", "labels": {"istio-injection": "enabled"}}}}


def injector(values: dict | None = None, config: dict | None = None, **extra: str) -> dict:
    data = {"values": json.dumps(values or {}), "config": yaml.safe_dump(config or {"policy": "enabled"}), **extra}
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "istio-sidecar-injector"}, "data": data}


def proxy_values(image: str, cpu: str = "100m") -> dict:
    return {"global": {"proxy": {"image": image, "resources": {"requests": {"cpu": cpu, "memory": "64Mi"}}}}}


def injected(inputs: InjectionInputs) -> tuple[dict, dict]:
    """(the injected pod, the review's response) for a new pod in namespace shop."""
    sent = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "web-1", "labels": {"app": "web"}},
            "spec": {"containers": [{"name": "web", "image": "nginx"}]}}
    body = json.dumps({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": {
        "uid": "u", "kind": {"group": "", "version": "v1", "kind": "Pod"}, "namespace": "shop",
        "operation": "CREATE", "object": sent}}).encode()
    req = rv.parse(body)
    assert isinstance(req, rv.AdmissionRequest)
    out = rv.respond(req.api_version, req.uid, review(req, inputs, NAMESPACES.get))["response"]
    if not out["allowed"] or "patch" not in out:
        return {}, out
    return apply_patch(sent, json.loads(base64.b64decode(out["patch"]))), out


def proxy(pod: dict) -> dict:
    spec = pod["spec"]
    return next(c for c in spec.get("initContainers", []) + spec["containers"] if c["name"] == "istio-proxy")


def test_the_configmap_sets_what_the_next_pod_is_injected_with_and_a_change_the_one_after():
    inputs = InjectionInputs()
    assert proxy(injected(inputs)[0])["image"] == "envoyproxy/envoy:v1.40.0"  # meshd's default
    inputs.set_injector_configmap(injector(proxy_values("registry.example/envoy:one", cpu="250m")), WHERE)
    first = proxy(injected(inputs)[0])
    assert first["image"] == "registry.example/envoy:one"
    assert first["resources"] == {"requests": {"cpu": "250m", "memory": "64Mi"}}
    inputs.set_injector_configmap(injector(proxy_values("registry.example/envoy:two")), WHERE)
    assert proxy(injected(inputs)[0])["image"] == "registry.example/envoy:two"
    status = inputs.status()
    assert status["injectorSource"] == f"ConfigMap {WHERE}" and status["error"] is None
    assert status["values"]["proxyImage"] == "registry.example/envoy:two"
    assert status["values"]["proxyResources"] == {"requests": {"cpu": "100m", "memory": "64Mi"}}
    inputs.set_injector_configmap(None, WHERE)  # deleted: meshd's defaults again, as istiod's
    assert proxy(injected(inputs)[0])["image"] == "envoyproxy/envoy:v1.40.0"
    assert inputs.status()["injectorSource"] == "defaults"


def test_the_config_key_selects_pods():
    inputs = InjectionInputs()
    inputs.set_injector_configmap(injector(config={"policy": "disabled"}), WHERE)
    pod, out = injected(inputs)
    assert out == {"uid": "u", "allowed": True} and pod == {}  # admitted as sent: the policy asks for opt-in


def test_keys_not_honoured_are_logged_once_per_change_and_listed_in_configz():
    inputs = InjectionInputs()
    cm = injector({"global": {"proxy": {"image": "a/envoy:1"}, "compliancePolicy": "fips-140-3"}},
                  {"policy": "enabled", "templates": {"custom": "..."}}, note="hello")
    with capture_logs() as logs:
        inputs.set_injector_configmap(cm, WHERE)
        inputs.set_injector_configmap(cm, WHERE)  # the same again (a relist): not logged again
        inputs.set_mesh_config({"trustDomain": "example.org"}, "ConfigMap istio-system/istio")  # another change
        inputs.set_injector_configmap(injector({"global": {"proxy": {"image": "a/envoy:1"}}}), WHERE)  # all read
    unread = ["values.global.compliancePolicy", "config.templates", "data.note"]
    events = [e for e in logs if e["event"] == "injection config keys not honoured"]
    assert [e["keys"] for e in events] == [unread, unread]
    assert events[0]["injector"] == f"ConfigMap {WHERE}" and events[1]["mesh_config"] == "ConfigMap istio-system/istio"
    assert inputs.status()["unread"] == []
    inputs.set_injector_configmap(cm, WHERE)
    status = inputs.status()
    assert status["unread"] == unread and status["values"]["trustDomain"] == "example.org"
    assert status["meshConfigSource"] == "ConfigMap istio-system/istio"


def test_a_bad_configmap_keeps_the_last_good_config_with_an_error_naming_the_key():
    inputs = InjectionInputs()
    inputs.set_injector_configmap(injector(proxy_values("registry.example/envoy:good")), WHERE)
    with capture_logs() as logs:
        inputs.set_injector_configmap(injector({"global": {"proxy": {"statusPort": [15020]}}}), WHERE)
    error = inputs.status()["error"]
    assert error == f"ConfigMap {WHERE}: values.global.proxy.statusPort: must be a string, got [15020]"
    rejected = [e for e in logs if e["event"] == "injection config rejected"]
    assert len(rejected) == 1 and rejected[0]["field"] == "values.global.proxy.statusPort"
    assert proxy(injected(inputs)[0])["image"] == "registry.example/envoy:good"  # the last good one
    assert inputs.status()["values"]["proxyImage"] == "registry.example/envoy:good"
    # a key holding no YAML mapping, and YAML that does not parse, are named too
    inputs.set_injector_configmap({"data": {"values": 7}}, WHERE)
    assert inputs.status()["error"] == f"ConfigMap {WHERE}: data.values: must be a string of YAML"
    inputs.set_injector_configmap({"data": {"values": "[1, 2]"}}, WHERE)
    assert inputs.status()["error"] == f"ConfigMap {WHERE}: data.values: must be a YAML mapping, got list"
    inputs.set_injector_configmap({"data": {"config": "policy: [enabled"}}, WHERE)
    assert inputs.status()["error"].startswith(f"ConfigMap {WHERE}: data.config: not YAML")
    inputs.set_injector_configmap(injector(proxy_values("registry.example/envoy:fixed")), WHERE)
    assert inputs.status()["error"] is None and proxy(injected(inputs)[0])["image"] == "registry.example/envoy:fixed"


def test_a_mesh_config_the_injector_cannot_use_keeps_the_last_good_config_naming_its_source():
    inputs = InjectionInputs()
    inputs.set_mesh_config({"trustDomain": "example.org"}, "ConfigMap istio-system/istio")
    inputs.set_mesh_config({"defaultConfig": {"concurrency": "many"}}, "ConfigMap istio-system/istio")
    assert inputs.status()["error"].startswith("ConfigMap istio-system/istio: meshConfig.defaultConfig")
    assert inputs.config().trust_domain == "example.org"


def test_with_no_good_config_ever_pods_are_refused_naming_the_error():
    inputs = InjectionInputs()
    inputs.set_injector_configmap(injector({"global": {"jwtPolicy": "first-party-jwt"}}), WHERE)
    # the defaults were in force before the ConfigMap came: they stay (last good)
    assert inputs.status()["error"].endswith("values.global.jwtPolicy: meshd supports only 'third-party-jwt', "
                                             "got 'first-party-jwt'")
    assert injected(inputs)[1]["allowed"] is True
    # meshd started with a mesh config the injector refuses: nothing was ever good
    broken = InjectionInputs({"defaultConfig": {"concurrency": "many"}}, mesh_origin="file mesh.yaml")
    pod, out = injected(broken)
    assert out["allowed"] is False and out["status"]["code"] == 503
    assert out["status"]["message"].startswith("sidecar injection: no injection config in force: file mesh.yaml: "
                                               "meshConfig.defaultConfig")


class _Ca:
    trust_bundle_pem = ""

    def on_bundle_change(self, _fn) -> None:
        pass


def webhooks(**kw) -> Webhooks:
    return Webhooks(_Ca(), ConfigStore(), None, "istio-system", **kw)  # type: ignore[arg-type]


def test_the_mesh_config_stream_feeds_injection_only_what_the_mesh_config_source_accepts():
    hooks = webhooks()
    told: list = []
    follow = hooks.follow_mesh_config(told.append)
    follow({"metadata": {"name": "istio"}, "data": {"mesh": "trustDomain: example.org"}})
    assert hooks.inputs.config().trust_domain == "example.org"
    assert hooks.inputs.status()["meshConfigSource"] == "ConfigMap istio-system/istio"
    follow({"metadata": {"name": "istio"}, "data": {"mesh": "trustDomain: [x"}})  # not YAML
    assert len(told) == 2  # the mesh config source hears it (and reports it)
    assert hooks.inputs.config().trust_domain == "example.org"  # injection keeps the last good
    follow(None)
    assert hooks.inputs.config().trust_domain == "cluster.local"
    assert hooks.inputs.status()["meshConfigSource"] == "defaults"


def test_a_mesh_config_file_change_reaches_injection(tmp_path: Path):
    mesh = tmp_path / "mesh.yaml"
    mesh.write_text("trustDomain: one.example\n")
    hooks = webhooks(mesh_config=yaml.safe_load(mesh.read_text()), mesh_config_origin=f"file {mesh}")
    assert hooks.inputs.config().trust_domain == "one.example"
    mesh.write_text("trustDomain: two.example\n")
    hooks.mesh_config_file_changed(str(mesh))
    assert hooks.inputs.config().trust_domain == "two.example"
    assert hooks.inputs.status()["meshConfigSource"] == f"file {mesh}"


def test_configmap_istio_sidecar_injector_is_watched_by_name_in_the_root_namespace(kube):
    system, shop = kube.ns("istio-system"), kube.ns("shop")
    cm = injector(proxy_values("registry.example/envoy:one"))
    kube.apply({**cm, "metadata": {"name": "istio-sidecar-injector", "namespace": system}})
    kube.apply({**injector(proxy_values("wrong.example/envoy:1")),
                "metadata": {"name": "istio-sidecar-injector", "namespace": shop}})
    kube.apply({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "istio", "namespace": system},
                "data": {"mesh": "trustDomain: example.org\n"}})

    async def main():
        hooks = webhooks(root_namespace=system)
        meshes: list = []
        api = kube.api_client()
        k8s = KubernetesSource(api, ConfigStore(), namespaces=[shop], mesh_config=hooks.follow_mesh_config(meshes.append),
                               mesh_config_namespace=system, injector_config=hooks.follow_injector_config,
                               options=ReflectorOptions(backoff_initial=0.05))
        stop = asyncio.Event()
        task = asyncio.create_task(k8s.run(stop))
        assert await k8s.wait_synced(10)
        # synced means both ConfigMaps are in: the first pod is injected with them
        assert hooks.inputs.config().proxy_image == "registry.example/envoy:one"
        assert hooks.inputs.config().trust_domain == "example.org" and len(meshes) == 1

        async def until(pred):
            for _ in range(1000):
                if pred():
                    return
                await asyncio.sleep(0.01)
            raise AssertionError(f"timed out: {hooks.inputs.status()}")

        kube.apply({**injector(proxy_values("registry.example/envoy:two")),
                    "metadata": {"name": "istio-sidecar-injector", "namespace": system}})
        await until(lambda: hooks.inputs.config().proxy_image == "registry.example/envoy:two")
        kube.delete("v1", "ConfigMap", "istio-sidecar-injector", system)
        await until(lambda: hooks.inputs.status()["injectorSource"] == "defaults")
        assert len(meshes) == 1  # the mesh config's callback heard nothing of the injector's ConfigMap
        reqs = kube.requests_for("configmaps")
        assert {r.query.get("fieldSelector") for r in reqs} == {
            "metadata.name=istio", "metadata.name=istio-sidecar-injector"}
        assert all(r.namespace == system for r in reqs)
        stop.set()
        await task
        api.close()

    run(main())
