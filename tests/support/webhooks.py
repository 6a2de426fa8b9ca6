"""meshd's admission webhooks registered on the real API server for one test: its
configurations as istiod's charts shape them, but called by URL (no Service) and scoped to
the test's namespaces, and removed however the test ends (a left-over failing webhook
would break later tests on this server)."""
from __future__ import annotations

import contextlib
import json

from controlplane.admission.patcher import INJECTOR
from tests.support.kube import _raw

BASE = "/apis/admissionregistration.k8s.io/v1"
RULES_ISTIO = [{"operations": ["CREATE", "UPDATE"], "apiVersions": ["*"], "resources": ["*"],
                "apiGroups": ["security.istio.io", "networking.istio.io", "telemetry.istio.io", "extensions.istio.io"]}]
RULES_PODS = [{"operations": ["CREATE"], "apiGroups": [""], "apiVersions": ["v1"], "resources": ["pods"]}]


def configurations(port: int, validator: str, scope: dict) -> list[tuple[str, dict]]:
    """meshd's two webhook configurations as istiod's charts shape them, but called by URL
    and only for this test's namespaces (`scope`)."""
    url = f"https://127.0.0.1:{port}"
    mutating = {"apiVersion": "admissionregistration.k8s.io/v1", "kind": "MutatingWebhookConfiguration",
                "metadata": {"name": INJECTOR},
                "webhooks": [{"name": "namespace.sidecar-injector.istio.io",
                              "clientConfig": {"url": f"{url}/inject/cluster/Kubernetes/net/"},
                              "rules": RULES_PODS, "failurePolicy": "Fail", "sideEffects": "None",
                              "reinvocationPolicy": "Never", "admissionReviewVersions": ["v1beta1", "v1"],
                              "namespaceSelector": scope, "timeoutSeconds": 10}]}
    validating = {"apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingWebhookConfiguration",
                  "metadata": {"name": validator},
                  "webhooks": [{"name": "rev.validation.istio.io", "clientConfig": {"url": f"{url}/validate"},
                                "rules": RULES_ISTIO, "failurePolicy": "Ignore", "sideEffects": "None",
                                "admissionReviewVersions": ["v1"], "namespaceSelector": scope,
                                "timeoutSeconds": 10}]}
    return [("mutatingwebhookconfigurations", mutating), ("validatingwebhookconfigurations", validating)]


@contextlib.contextmanager
def registered(api_client, configs: list[tuple[str, dict]]):
    try:
        for plural, body in configs:
            _raw(api_client, "POST", f"{BASE}/{plural}", body)
        yield
    finally:
        for plural, body in configs:
            with contextlib.suppress(Exception):
                _raw(api_client, "DELETE", f"{BASE}/{plural}/{body['metadata']['name']}")


def get(api_client, path: str) -> dict:
    return json.loads(_raw(api_client, "GET", path))


def pod(name: str, ns: str) -> dict:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": ns, "labels": {"app": "web"}},
            "spec": {"containers": [{"name": "web", "image": "nginx", "ports": [{"containerPort": 8080}]}]}}
