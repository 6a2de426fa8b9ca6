"""The mesh config source: Istio's MeshConfig from a file (the `mesh` key, or the whole
ConfigMap) or from ConfigMap istio in Kubernetes mode; errors naming the file and field;
the last good config kept; fields meshd does not read reported, never dropped silently;
and what reaches the snapshot (mesh config, JWT key sets) through the MeshBuilder."""
from __future__ import annotations

import asyncio

import pytest
from structlog.testing import capture_logs

from controlplane.app import MeshBuilder
from controlplane.config.store import ConfigStore
from controlplane.kube.source import KubernetesSource, ReflectorOptions
from controlplane.model.request_authentication import JwksView, KeySetRef
from controlplane.sources.meshconfig import MeshConfigSource, MeshConfigSourceError, read_file
from tests.support.ads import run
from tests.support.configs import objects_from_yaml

MESH = """
rootNamespace: mesh-root
trustDomain: cluster.local
defaultConfig: {holdApplicationUntilProxyStarts: true, tracing: {zipkin: {}}}
enableTracing: true
extensionProviders:
- name: ext-authz
  envoyExtAuthzHttp: {service: authz.foo.svc.cluster.local, port: 8000}
- name: zipkin
  zipkin: {service: zipkin.istio-system.svc.cluster.local, port: 9411}
"""


def configmap(mesh: str, **more_data: str) -> str:
    body = "\n".join("    " + line for line in mesh.strip().splitlines())
    extra = "".join(f"  {k}: {v!r}\n" for k, v in more_data.items())
    return f"apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: istio, namespace: istio-system}}\ndata:\n  mesh: |-\n{body}\n{extra}"


@pytest.mark.parametrize("form", ["mesh key", "whole ConfigMap"])
def test_both_file_forms_give_the_same_config(tmp_path, form):
    path = tmp_path / "mesh.yaml"
    path.write_text(MESH if form == "mesh key" else configmap(MESH))
    mc, extra = read_file(str(path), "istio-system")
    assert mc.root_namespace == "mesh-root"
    assert [(p.name, p.kind) for p in mc.extension_providers] == [("ext-authz", "envoyExtAuthzHttp"), ("zipkin", "zipkin")]
    assert mc.provider("ext-authz").settings == {"service": "authz.foo.svc.cluster.local", "port": 8000}
    assert extra == ()


def test_absent_fields_take_meshds_defaults(tmp_path):
    path = tmp_path / "mesh.yaml"
    path.write_text("extensionProviders: []\n")
    assert read_file(str(path), "my-root")[0].root_namespace == "my-root"  # --root-namespace
    path.write_text("")
    assert read_file(str(path), "my-root")[0].root_namespace == "my-root"


@pytest.mark.parametrize("text, where", [
    ("extensionProviders:\n- envoyExtAuthzHttp: {service: a}\n", "extensionProviders[0].name: Required value"),
    ("rootNamespace: 7\n", "rootNamespace: must be a non-empty string"),
    ("rootNamespace: [\n", "not YAML"),
    ("- a list\n", "must be a mapping"),
    (configmap("trustDomainAliases: nope"), "data.mesh: trustDomainAliases: must be a list of strings"),
    ("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: istio}\ndata: {meshNetworks: x}\n", "data.mesh: Required value"),
])
def test_invalid_mesh_config_names_the_file_and_field(tmp_path, text, where):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(MeshConfigSourceError) as e:
        read_file(str(path), "istio-system")
    assert str(e.value).startswith(f"{path}: ") and where in str(e.value)


def test_unread_fields_are_reported_once_and_listed(tmp_path):
    path = tmp_path / "mesh.yaml"
    path.write_text(configmap(MESH, meshNetworks="networks: {}"))
    src = MeshConfigSource(root_namespace="istio-system")
    with capture_logs() as logs:
        src.load_file(str(path))
        src.check_file(str(path))  # unchanged: nothing new to say
    reports = [e for e in logs if e["event"] == "mesh config fields not read"]
    assert len(reports) == 1
    expected = ["enableTracing", "defaultConfig.tracing", "extensionProviders[1] zipkin (zipkin)", "data.meshNetworks"]
    assert reports[0]["fields"] == expected and reports[0]["source"] == f"file {path}"
    status = src.status()
    assert status["unread"] == expected and status["source"] == f"file {path}"
    assert [p["served"] for p in status["extensionProviders"]] == [True, False]


def test_the_file_is_watched_and_a_bad_version_keeps_the_last_good(tmp_path):
    path = tmp_path / "mesh.yaml"
    path.write_text("extensionProviders: [{name: a, envoyExtAuthzGrpc: {service: a.svc, port: 9000}}]\n")

    async def main():
        seen = []
        src = MeshConfigSource(seen.append, root_namespace="istio-system")
        src.load_file(str(path))
        stop = asyncio.Event()
        task = asyncio.create_task(src.watch_file(str(path), stop, interval=0.02))

        async def until(pred):
            for _ in range(300):
                if pred():
                    return
                await asyncio.sleep(0.01)
            raise AssertionError("timed out")

        path.write_text("extensionProviders: [{name: b, envoyExtAuthzHttp: {service: b.svc, port: 80}}]\n")
        await until(lambda: len(seen) == 2)
        assert [p.name for p in seen[-1].extension_providers] == ["b"]
        with capture_logs() as logs:
            path.write_text("extensionProviders: [{name: c}]\n")
            await until(lambda: src.error)
        assert "extensionProviders[0]" in src.error and str(path) in src.error
        assert [p.name for p in src.current.extension_providers] == ["b"] and len(seen) == 2  # last good in force
        assert [e["event"] for e in logs if e["event"].startswith("mesh config")] == ["mesh config rejected"]
        assert src.status()["error"] == src.error
        path.write_text("extensionProviders: []\n")
        await until(lambda: src.error is None)
        assert seen[-1].extension_providers == ()
        path.unlink()
        await until(lambda: src.error and "gone" in src.error)
        assert seen[-1].extension_providers == ()  # still the last good one
        stop.set()
        await task

    run(main())


def test_root_namespace_is_fixed_once_serving(tmp_path):
    path = tmp_path / "mesh.yaml"
    path.write_text("rootNamespace: first\n")
    src = MeshConfigSource(root_namespace="istio-system")
    src.load_file(str(path))
    src.pin_root_namespace()
    path.write_text("rootNamespace: second\nextensionProviders: [{name: a, envoyExtAuthzHttp: {service: s, port: 1}}]\n")
    assert src.check_file(str(path))
    assert src.current.root_namespace == "first" and src.current.provider("a") is not None
    assert src.status()["pendingRestart"] == ["rootNamespace 'second': applies when meshd restarts (in force: 'first')"]


# --- into the snapshot --------------------------------------------------------------------

class RecordingAds:
    def __init__(self):
        self.meshes = []

    def update(self, mesh, reason="config") -> int:
        self.meshes.append((mesh, reason))
        return 0


class RecordingKeySets:
    def __init__(self):
        self.wanted = []

    def want(self, needed):
        self.wanted.append(dict(needed))


REQUEST_AUTHN = """
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {name: jwt, namespace: shop}
spec:
  jwtRules:
  - issuer: https://issuer.example
    jwksUri: https://issuer.example/jwks
"""


def test_mesh_config_and_key_sets_reach_the_snapshot_and_push():
    store = ConfigStore()
    ads = RecordingAds()
    builder = MeshBuilder(store, ads, debounce_after=0.01)
    key_sets = builder.key_sets = RecordingKeySets()
    store.replace_location("ra.yaml", objects_from_yaml(REQUEST_AUTHN))
    builder.rebuild("initial")
    first = ads.meshes[-1][0]
    assert first.mesh_config.root_namespace == first.root_namespace == "istio-system"
    if first.config.of_kind("RequestAuthentication"):  # the kind is served by the parse gate
        assert list(key_sets.wanted[-1]) == [KeySetRef("https://issuer.example/jwks")]

    async def main():
        task = asyncio.create_task(builder.run(asyncio.Event()))
        src = MeshConfigSource(builder.set_mesh_config, root_namespace="istio-system")
        src.apply_configmap({"data": {"mesh": "extensionProviders: [{name: a, envoyExtAuthzHttp: {service: s, port: 1}}]"}})
        for _ in range(200):
            if len(ads.meshes) == 2:
                break
            await asyncio.sleep(0.01)
        mesh, reason = ads.meshes[-1]
        assert mesh.mesh_config.provider("a") is not None and "MeshConfig" in reason.split(": ")[1].split(",")
        assert mesh.version != first.version and mesh.config is first.config
        view = JwksView({KeySetRef("https://issuer.example/jwks"): '{"keys":[]}'})
        builder.set_jwks(view)
        for _ in range(200):
            if len(ads.meshes) == 3:
                break
            await asyncio.sleep(0.01)
        mesh, reason = ads.meshes[-1]
        assert mesh.jwks is view and mesh.jwks_view() is view and reason == "config change: JWKS"
        builder.set_jwks(view)  # the same key sets again: no new snapshot
        await asyncio.sleep(0.1)
        assert len(ads.meshes) == 3
        task.cancel()  # the builder waits for changes, not for stop

    run(main())


# --- Kubernetes: ConfigMap istio of the root namespace -----------------------------------------

def test_configmap_istio_is_watched_in_the_root_namespace(kube):
    system, shop = kube.ns("istio-system"), kube.ns("shop")
    kube.apply({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "istio", "namespace": system},
                "data": {"mesh": "extensionProviders: [{name: a, envoyExtAuthzHttp: {service: s, port: 1}}]\n"}})
    kube.apply({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "other", "namespace": system},
                "data": {"mesh": "rootNamespace: wrong"}})
    kube.apply({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "istio", "namespace": shop},
                "data": {"mesh": "rootNamespace: wrong"}})

    async def main():
        src = MeshConfigSource(root_namespace=system)
        api = kube.api_client()
        k8s = KubernetesSource(api, ConfigStore(), namespaces=[shop], mesh_config=src.apply_configmap,
                               mesh_config_namespace=system, options=ReflectorOptions(backoff_initial=0.05))
        stop = asyncio.Event()
        task = asyncio.create_task(k8s.run(stop))
        assert await k8s.wait_synced(10)
        # Synced means the mesh config is in: the first snapshot has it.
        assert src.origin == f"ConfigMap {system}/istio" and src.current.provider("a") is not None
        assert src.current.root_namespace == system

        async def until(pred):
            for _ in range(500):
                if pred():
                    return
                await asyncio.sleep(0.01)
            raise AssertionError(f"timed out: {src.status()}")

        kube.apply({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "istio", "namespace": system},
                    "data": {"mesh": "extensionProviders: [{name: b}]"}})
        await until(lambda: src.error)
        assert src.error.startswith(f"ConfigMap {system}/istio: data.mesh: extensionProviders[0]")
        assert src.current.provider("a") is not None  # the last good one
        kube.delete("v1", "ConfigMap", "istio", system)
        await until(lambda: src.origin == "defaults")
        assert src.current.extension_providers == ()
        # Only the one ConfigMap was ever asked for, in the root namespace.
        reqs = kube.requests_for("configmaps")
        assert reqs and all(r.namespace == system and r.query.get("fieldSelector") == "metadata.name=istio" for r in reqs)
        stop.set()
        await task
        api.close()

    run(main())
