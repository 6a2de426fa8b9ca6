"""deploy/kubernetes/07-webhooks.yaml against what meshd does: the configurations are the
ones the leader patches (names), registered as istiod's charts register them (Service
istiod:443 -> 15017, paths, selectors, failure policies, no caBundle), and the RBAC rules
name exactly them."""
from __future__ import annotations

import pytest

from controlplane import names
from controlplane.admission.patcher import VALIDATING, default_targets
from tests.support.paths import REPO
from tests.support.rbac import grants_for, load_manifests

NS = "istio-system"


@pytest.fixture(scope="module")
def docs() -> list[dict]:
    return load_manifests(REPO / "deploy" / "kubernetes")


def webhook_configs(docs) -> list[dict]:
    return [d for d in docs if d["kind"] in ("MutatingWebhookConfiguration", "ValidatingWebhookConfiguration")]


def test_the_configurations_are_the_ones_meshd_patches(docs):
    shipped = {(d["kind"], d["metadata"]["name"]) for d in webhook_configs(docs)}
    assert shipped == {(t.kind.kind, t.name) for t in default_targets(NS)}


def test_each_webhook_calls_the_istiod_service_with_no_ca_bundle(docs):
    svc = next(d for d in docs if d["kind"] == "Service" and d["metadata"]["name"] == "istiod")
    port = next(p for p in svc["spec"]["ports"] if p["port"] == 443)
    assert port["targetPort"] == names.PORT_WEBHOOK
    for cfg in webhook_configs(docs):
        validating = cfg["kind"] == VALIDATING.kind
        for hook in cfg["webhooks"]:
            client = hook["clientConfig"]
            assert "caBundle" not in client, hook["name"]  # meshd patches it in
            assert client["service"]["name"] == "istiod" and client["service"]["namespace"] == NS
            assert client["service"]["port"] == 443
            assert client["service"]["path"] == ("/validate" if validating else "/inject/cluster/Kubernetes/net/")
            assert hook["sideEffects"] == "None"  # dry runs (and meshd's readiness probe) reach it
            # validation fails open until meshd has proven the API server reaches it; injection never
            assert hook["failurePolicy"] == ("Ignore" if validating else "Fail")


def test_injection_selects_namespaces_and_pods_as_istiods_default_revision(docs):
    injector = next(d for d in webhook_configs(docs) if d["kind"] == "MutatingWebhookConfiguration")
    by_name = {h["name"]: h for h in injector["webhooks"]}
    assert set(by_name) == {"rev.namespace.sidecar-injector.istio.io", "rev.object.sidecar-injector.istio.io",
                            "namespace.sidecar-injector.istio.io", "object.sidecar-injector.istio.io"}
    ns = by_name["namespace.sidecar-injector.istio.io"]
    assert ns["namespaceSelector"]["matchExpressions"] == [
        {"key": "istio-injection", "operator": "In", "values": ["enabled"]}]
    assert ns["objectSelector"]["matchExpressions"] == [
        {"key": "sidecar.istio.io/inject", "operator": "NotIn", "values": ["false"]}]
    for hook in injector["webhooks"]:
        assert hook["rules"] == [{"operations": ["CREATE"], "apiGroups": [""], "apiVersions": ["v1"],
                                  "resources": ["pods"]}]


def test_rbac_names_exactly_the_configurations(docs):
    grants = grants_for(docs, NS, "meshd")
    targets = default_targets(NS)
    for plural in ("mutatingwebhookconfigurations", "validatingwebhookconfigurations"):
        mine = [g for g in grants if g.resource == plural]
        assert {g.verb for g in mine} == {"get", "list", "watch", "patch"}
        assert all(g.names == {t.name for t in targets if t.kind.plural == plural} for g in mine)
    # the readiness dry run: create Gateways in meshd's namespace only
    assert [(g.namespace, g.names) for g in grants if g.resource == "gateways" and g.verb == "create"] == [
        (NS, frozenset())]
