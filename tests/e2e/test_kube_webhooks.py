"""meshd as the cluster's admission webhooks, on the real API server (../shared/k8s):
meshd serves /inject and /validate on its webhook port; the test registers the webhook
configurations under meshd's names with `clientConfig.url` and no caBundle, scoped to
this test's namespaces; meshd (the leader) patches in its root and, once the API server
is seen calling it, fails validation closed. Then the API server itself stores injected
pods, stores pods of an unlabelled namespace as sent, and refuses a VirtualService whose
regex does not compile with meshd's message. The configurations are deleted however the
test ends (a left-over failing webhook would break later tests on this server)."""
from __future__ import annotations

import base64
from pathlib import Path

import pytest
import yaml

from controlplane.admission.patcher import INJECTOR, validator_name
from tests.support.harness import free_port, meshd, wait_for
from tests.support.kube import RecordingProxy, _raw
from tests.support.paths import REPO
from tests.support.rbac import Use, grants_for, load_manifests, uses
from tests.support.webhooks import BASE, configurations, get, pod, registered

pytestmark = pytest.mark.e2e

def virtual_service(ns: str, regex: str) -> str:
    return yaml.safe_dump({"apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
                           "metadata": {"name": "reviews", "namespace": ns},
                           "spec": {"hosts": ["reviews"], "http": [{"match": [{"uri": {"regex": regex}}],
                                                                    "route": [{"destination": {"host": "reviews"}}]}]}})


def test_meshd_injects_validates_and_keeps_its_ca_bundle(kube, tmp_path: Path):
    scope_label = {"meshd-webhook-test": kube.tag}
    system = kube.ns("istio-system", **scope_label)
    shop = kube.ns("shop", **scope_label, **{"istio-injection": "enabled"})
    plain = kube.ns("plain", **scope_label)
    port = free_port("127.0.0.1")
    validator = validator_name(system)
    admin = kube.api_client(record=False)
    configs = configurations(port, validator, {"matchLabels": scope_label})
    with registered(admin, configs), RecordingProxy(kube.cluster) as proxy, \
            meshd(None, tmp_path, extra=["--kubeconfig", str(proxy.kubeconfig(tmp_path / "kubeconfig")),
                                         "--leader-election-namespace", system, "--root-namespace", system,
                                         "--webhook-port", str(port)]) as cp:
        # --- the caBundle: meshd's root, patched by the leader ---------------------------------------
        def root() -> str | None:
            cm = kube.get("v1", "ConfigMap", "istio-ca-root-cert", system)
            return (cm or {}).get("data", {}).get("root-cert.pem")

        wait_for(lambda: root() is not None, 20, what="meshd's root published")
        want = base64.b64encode(root().encode()).decode()
        assert want == base64.b64encode(cp.root_cert.read_bytes()).decode()  # the CA directory's root

        def hooks(plural: str, name: str) -> list[dict]:
            return get(admin, f"{BASE}/{plural}/{name}")["webhooks"]

        wait_for(lambda: all(h["clientConfig"].get("caBundle") == want
                             for p, b in configs for h in hooks(p, b["metadata"]["name"])),
                 20, what="caBundle set by meshd on both configurations")
        # validation fails closed once the API server is seen calling meshd (istiod's dry run)
        wait_for(lambda: hooks("validatingwebhookconfigurations", validator)[0]["failurePolicy"] == "Fail",
                 30, what="validation switched to failurePolicy Fail")
        assert hooks("mutatingwebhookconfigurations", INJECTOR)[0]["failurePolicy"] == "Fail"

        # --- injection: the API server stores what meshd's patch made ---------------------------------
        stored = kube.apply(pod("web-1", shop))
        spec = stored["spec"]
        init = [c["name"] for c in spec.get("initContainers", [])]
        assert init == ["istio-init", "istio-proxy"], init  # istio-proxy: a native sidecar
        assert [c["name"] for c in spec["containers"]] == ["web"]
        assert {"istio-envoy", "istio-podinfo", "istio-token", "istiod-ca-cert"} <= {v["name"] for v in spec["volumes"]}
        token = next(v for v in spec["volumes"] if v["name"] == "istio-token")
        assert token["projected"]["sources"][0]["serviceAccountToken"]["audience"] == "istio-ca"
        assert "sidecar.istio.io/status" in stored["metadata"]["annotations"]
        wait_for(lambda: "pod injected" in cp.log(), 5, what="the injection logged")

        # --- a pod of an unlabelled namespace: reviewed, not injected, stored as sent -----------------------
        sent = pod("web-2", plain)
        stored = kube.apply(sent)
        assert "initContainers" not in stored["spec"]
        assert [c["name"] for c in stored["spec"]["containers"]] == ["web"]
        assert "sidecar.istio.io/status" not in (stored["metadata"].get("annotations") or {})
        wait_for(lambda: "pod not injected" in cp.log() and f"{plain}/web-2" in cp.log(), 5,
                 what="the reason the pod was not injected, logged")

        # --- validation: kubectl apply of a regex the CRD schema cannot check -------------------------------
        bad = kube.cluster.kubectl("apply", "-f", "-", input=virtual_service(shop, "(["), check=False)
        assert bad.returncode != 0, bad.stdout
        assert 'admission webhook "rev.validation.istio.io" denied the request: configuration is invalid: ' \
               f'VirtualService {shop}/reviews: spec.http[0].match[0].uri.regex: Invalid value: "(["' in bad.stderr, \
            bad.stderr
        assert kube.get("networking.istio.io/v1", "VirtualService", "reviews", shop) is None
        good = kube.cluster.kubectl("apply", "-f", "-", input=virtual_service(shop, "/api/v[0-9]+/.*"), check=False)
        assert good.returncode == 0, good.stderr
        assert kube.get("networking.istio.io/v1", "VirtualService", "reviews", shop) is not None

        # --- a re-applied configuration without caBundle is fixed again -------------------------------------
        current = get(admin, f"{BASE}/mutatingwebhookconfigurations/{INJECTOR}")
        current["webhooks"][0]["clientConfig"].pop("caBundle")
        _raw(admin, "PUT", f"{BASE}/mutatingwebhookconfigurations/{INJECTOR}", current)
        wait_for(lambda: hooks("mutatingwebhookconfigurations", INJECTOR)[0]["clientConfig"].get("caBundle") == want,
                 10, what="caBundle patched again")

        # --- RBAC: what meshd did to webhooks is what deploy/kubernetes grants (names mapped to istio-system) -
        grants = grants_for(load_manifests(REPO / "deploy" / "kubernetes"), "istio-system", "meshd")
        rename = {validator: validator_name("istio-system")}
        webhook_uses = {Use(None if u.namespace is None else "istio-system", u.group, u.resource, u.verb,
                            rename.get(u.name or "", u.name))
                        for u in uses(proxy) if u.group == "admissionregistration.k8s.io"
                        or (u.resource == "gateways" and u.verb == "create")}
        assert {(u.resource, u.verb) for u in webhook_uses} >= {
            ("mutatingwebhookconfigurations", v) for v in ("get", "list", "watch", "patch")} | {
            ("validatingwebhookconfigurations", v) for v in ("get", "list", "watch", "patch")} | {("gateways", "create")}
        forbidden = [u for u in webhook_uses if not any(g.allows(u) for g in grants)]
        assert forbidden == []
