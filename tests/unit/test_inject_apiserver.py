"""The real API server (../shared/k8s) accepts what meshd injects: every workload of Istio's
injection inputs, after `meshd kube-inject`'s code, is created with server-side dry run
(the API server's whole validation and admission, nothing stored), as are pods injected as
plain containers with holdApplicationUntilProxyStarts and with the pod's own overrides."""
from __future__ import annotations

import copy
from typing import Any

from controlplane.inject import InjectionConfig, inject_pod
from controlplane.inject.workloads import inject_object
from tests.support.inject_cases import cases, config_of, documents
from tests.support.kube import KubeError

# kind -> (API path prefix, apiVersion, plural)
PATHS = {
    "Pod": ("/api/v1", "v1", "pods"),
    "ReplicationController": ("/api/v1", "v1", "replicationcontrollers"),
    "Deployment": ("/apis/apps/v1", "apps/v1", "deployments"),
    "StatefulSet": ("/apis/apps/v1", "apps/v1", "statefulsets"),
    "DaemonSet": ("/apis/apps/v1", "apps/v1", "daemonsets"),
    "ReplicaSet": ("/apis/apps/v1", "apps/v1", "replicasets"),
    "Job": ("/apis/batch/v1", "batch/v1", "jobs"),
    "CronJob": ("/apis/batch/v1", "batch/v1", "cronjobs"),
}


# Istio's inputs the API server refuses whatever the injector does (Istio's goldens too):
# the refusal must be this one.
INVALID_INPUTS = {
    "user-volume.yaml": "must be a relative path",  # its userVolume's configMap item path is /some-path
    "only-proxy-container.yaml": "spec.template.spec.containers: Required value",  # no application container
}


def _objects(obj):
    if isinstance(obj, dict) and obj.get("kind") == "List":
        return [o for item in obj.get("items") or [] for o in _objects(item)]
    return [obj] if isinstance(obj, dict) and obj.get("kind") in PATHS else []


def _dry_run_create(kube, namespace: str, obj: dict) -> str | None:
    """None if the API server accepts `obj`, else its answer."""
    prefix, api_version, plural = PATHS[obj["kind"]]
    body = copy.deepcopy(obj)
    body["apiVersion"] = api_version
    body["metadata"] = {**body.get("metadata", {}), "namespace": namespace}
    body["metadata"]["name"] = str(body["metadata"].get("name") or "injected").lower()  # Istio's "statusPort"
    if obj["kind"] == "Pod":
        kube._ensure_service_account(namespace, (body.get("spec") or {}).get("serviceAccountName") or "default")
    try:
        kube._request("POST", f"{prefix}/namespaces/{namespace}/{plural}", body, {"dryRun": "All"})
    except KubeError as e:
        return str(e)
    return None


def test_the_api_server_accepts_every_injected_workload(kube):
    namespace = kube.ns("inject")
    refused, tried = [], 0
    for case in cases():
        if case.error:
            continue
        try:
            cfg = config_of(case)
            outcomes = [inject_object(d, cfg) for d in documents(case.input)]
        except ValueError:
            continue  # refused by meshd (TPROXY, NONE): test_inject_golden says why
        for outcome in outcomes:
            for obj in _objects(outcome.obj):
                if "sidecar.istio.io/status" not in str(obj):
                    continue
                tried += 1
                answer = _dry_run_create(kube, namespace, obj)
                expected = INVALID_INPUTS.get(case.input)
                if expected and not (answer and expected in answer):
                    refused.append(f"{case.input} ({case.golden}) {obj['kind']}: expected refusal {expected!r}, "
                                   f"got {answer}")
                elif answer and not expected:
                    refused.append(f"{case.input} ({case.golden}) {obj['kind']}: {answer}")
    assert tried > 80
    assert not refused, "\n".join(refused)


def test_the_api_server_accepts_plain_container_variants(kube):
    namespace = kube.ns("inject-plain")
    base: dict[str, Any] = {
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "web", "annotations": {}},
        "spec": {"containers": [{"name": "web", "image": "web:1", "ports": [{"containerPort": 8080}]}]}}
    hold = copy.deepcopy(base)
    hold["metadata"]["annotations"] = {"sidecar.istio.io/nativeSidecar": "false",
                                       "proxy.istio.io/config": "holdApplicationUntilProxyStarts: true",
                                       "sidecar.istio.io/userVolume": '{"extra": {"emptyDir": {}}}',
                                       "sidecar.istio.io/userVolumeMount": '{"extra": {"mountPath": "/extra"}}'}
    own = copy.deepcopy(base)
    own["spec"]["containers"].append({"name": "istio-proxy", "image": "auto", "securityContext": {"runAsUser": 1234},
                                      "env": [{"name": "X", "value": "1"}]})
    cfg = InjectionConfig.from_sources(None, {"global": {"imagePullSecrets": ["pull"], "imagePullPolicy": "IfNotPresent"}})
    for name, pod in (("hold", hold), ("own", own)):
        pod["metadata"]["name"] = name
        answer = _dry_run_create(kube, namespace, inject_pod(pod, cfg).pod)
        assert answer is None, f"{name}: {answer}"
