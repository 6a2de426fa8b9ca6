"""`/inject` (controlplane/admission/inject.py): the pod as the API server sends it, the
namespace's labels from meshd's store, controlplane/inject's decision and mutation; the
JSONPatch in the response turns the pod as sent into the injected pod."""
from __future__ import annotations

import base64
import json

import structlog

from controlplane.admission import review as rv
from controlplane.admission.inject import InjectionInputs, review
from controlplane.inject import apply_patch

NAMESPACES = {"shop": {"metadata": {"name": "shop", "labels": {"istio-injection": "enabled"}}},
              "plain": {"metadata": {"name": "plain", "labels": {}}}}


def pod(**labels: str) -> dict:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "web-1", "labels": {"app": "web", **labels}},
            "spec": {"containers": [{"name": "web", "image": "nginx", "ports": [{"containerPort": 8080}]}]}}


def request(obj: dict, namespace: str, operation: str = "CREATE") -> rv.AdmissionRequest:
    body = json.dumps({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": {
        "uid": "u", "kind": {"group": "", "version": "v1", "kind": "Pod"}, "namespace": namespace,
        "operation": operation, "object": obj}}).encode()
    req = rv.parse(body)
    assert isinstance(req, rv.AdmissionRequest)
    return req


def run(obj: dict, namespace: str, inputs: InjectionInputs | None = None) -> dict:
    req = request(obj, namespace)
    verdict = review(req, inputs or InjectionInputs(), NAMESPACES.get)
    return rv.respond(req.api_version, req.uid, verdict)["response"]


def test_a_pod_in_a_labelled_namespace_gets_the_sidecar_by_patch():
    sent = pod()
    out = run(sent, "shop")
    assert out["allowed"] is True and out["patchType"] == "JSONPatch"
    injected = apply_patch(sent, json.loads(base64.b64decode(out["patch"])))
    spec = injected["spec"]
    # Istio's default: the proxy as a native sidecar (an init container that keeps running)
    assert [(c["name"], c.get("restartPolicy")) for c in spec["initContainers"]] == [
        ("istio-init", None), ("istio-proxy", "Always")]
    assert [c["name"] for c in spec["containers"]] == ["web"]
    assert {v["name"] for v in spec["volumes"]} == {"istio-envoy", "istio-podinfo", "istio-token", "istiod-ca-cert"}
    # the namespace came from the request (the object has none yet) and is not written into it
    assert "namespace" not in injected["metadata"]


def test_a_pod_not_injected_is_admitted_as_sent_and_the_reason_logged():
    with structlog.testing.capture_logs() as logs:
        out = run(pod(), "plain")
        opted_out = run(pod(**{"sidecar.istio.io/inject": "false"}), "shop")
    assert out == {"uid": "u", "allowed": True} and opted_out == {"uid": "u", "allowed": True}
    reasons = [e for e in logs if e["event"] == "pod not injected"]
    assert len(reasons) == 2 and all(e["reason"] and e["pod"].endswith("/web-1") for e in reasons)


def test_a_namespace_meshd_does_not_know_refuses_the_pod():
    out = run(pod(), "elsewhere")
    assert out["allowed"] is False and "namespace elsewhere is not known to meshd" in out["status"]["message"]


def test_only_pod_creations_are_mutated():
    req = request(pod(), "shop", operation="UPDATE")
    assert review(req, InjectionInputs(), NAMESPACES.get) == rv.Verdict(True)


def test_an_invalid_injection_annotation_denies_the_pod_naming_it():
    bad = pod()
    bad["metadata"]["annotations"] = {"traffic.sidecar.istio.io/includeInboundPorts": "eighty"}
    out = run(bad, "shop")
    assert out["allowed"] is False
    assert "sidecar injection failed for pod shop/web-1" in out["status"]["message"]
    assert "includeInboundPorts" in out["status"]["message"]


def test_the_mesh_config_reaches_the_injection_config():
    inputs = InjectionInputs()
    first = inputs.config()
    assert inputs.config() is first  # built once per change
    inputs.set_mesh_config({"defaultConfig": {"image": {"imageType": "distroless"}},
                            "defaultProviders": {}, "trustDomain": "example.org"})
    second = inputs.config()
    assert second is not first and second.trust_domain == "example.org"
