"""The leader's webhook configuration patcher (controlplane/admission/patcher.py): the
JSONPatch it computes, and on the real API server (the session's, tests/support/kube.py)
the caBundle set on configurations installed with none, kept while the validating
webhook is not proven reachable (failurePolicy stays Ignore), and put back when a
manifest is re-applied with an empty caBundle. The configurations here match no
namespace (a label nobody has), so no request of any other test reaches them; they are
deleted however the test ends."""
from __future__ import annotations

import asyncio
import base64
import contextlib

import pytest

from controlplane.admission.patcher import MUTATING, VALIDATING, Target, WebhookPatcher, patch_ops, trusts
from controlplane.kube.api import ApiError, KubeApi
from tests.support.harness import wait_for

ROOT = b"-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"
B64 = base64.b64encode(ROOT).decode()


def hook(name: str, policy: str, ca: str | None = None) -> dict:
    client: dict = {"url": "https://127.0.0.1:1/validate"}
    if ca is not None:
        client["caBundle"] = ca
    return {"name": name, "clientConfig": client, "failurePolicy": policy, "sideEffects": "None",
            "admissionReviewVersions": ["v1"],
            "namespaceSelector": {"matchLabels": {"meshd-test-never": "x"}},
            "rules": [{"operations": ["CREATE"], "apiGroups": ["networking.istio.io"], "apiVersions": ["*"],
                       "resources": ["gateways"]}]}


def test_patch_ops_set_the_bundle_and_the_policy_after_a_resource_version_test():
    obj = {"metadata": {"resourceVersion": "7"}, "webhooks": [hook("a.x.io", "Ignore"), hook("b.x.io", "Fail", B64)]}
    assert patch_ops(obj, B64, None) == [
        {"op": "test", "path": "/metadata/resourceVersion", "value": "7"},
        {"op": "add", "path": "/webhooks/0/clientConfig/caBundle", "value": B64}]
    assert patch_ops(obj, B64, True)[1:] == [
        {"op": "add", "path": "/webhooks/0/clientConfig/caBundle", "value": B64},
        {"op": "add", "path": "/webhooks/0/failurePolicy", "value": "Fail"}]
    assert patch_ops(obj, B64, False)[2:] == [{"op": "add", "path": "/webhooks/1/failurePolicy", "value": "Ignore"}]
    done = {"metadata": {"resourceVersion": "8"}, "webhooks": [hook("a.x.io", "Fail", B64)]}
    assert patch_ops(done, B64, True) == [] and trusts(done, B64) and not trusts(obj, B64)


@pytest.fixture
def configs(kube):
    """A mutating and a validating configuration of this test's own, without caBundle."""
    api = KubeApi(kube.api_client())
    base = "/apis/admissionregistration.k8s.io/v1"
    targets = (Target(MUTATING, f"meshd-test-injector-{kube.tag}"), Target(VALIDATING, f"meshd-test-validator-{kube.tag}"))
    api.request("POST", f"{base}/mutatingwebhookconfigurations", {
        "apiVersion": "admissionregistration.k8s.io/v1", "kind": "MutatingWebhookConfiguration",
        "metadata": {"name": targets[0].name}, "webhooks": [hook("inject.meshd.test", "Fail")]})
    api.request("POST", f"{base}/validatingwebhookconfigurations", {
        "apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingWebhookConfiguration",
        "metadata": {"name": targets[1].name}, "webhooks": [hook("validate.meshd.test", "Ignore")]})
    try:
        yield api, targets
    finally:
        for t in targets:
            with contextlib.suppress(ApiError):
                api.request("DELETE", t.path)
        api.close()


def test_the_ca_bundle_is_patched_and_validation_stays_open_until_proven(kube, configs):
    api, targets = configs
    ns = kube.ns("meshd")
    patcher = WebhookPatcher(api, lambda: ROOT, ns, targets=targets, watch=False)
    retry = asyncio.run(patcher.reconcile())
    mutating, validating = (api.request("GET", t.path) for t in targets)
    assert trusts(mutating, B64) and trusts(validating, B64)
    assert mutating["webhooks"][0]["failurePolicy"] == "Fail"  # the mutating one keeps the manifest's
    # the webhook matches no namespace: the dry-run invalid Gateway is admitted, so not ready
    assert validating["webhooks"][0]["failurePolicy"] == "Ignore" and retry and not patcher.ready
    assert asyncio.run(patcher.reconcile()) and patcher.patches == 2  # nothing more to patch


def test_a_reapplied_manifest_with_an_empty_ca_bundle_is_fixed_again(kube, configs):
    api, targets = configs
    ns = kube.ns("meshd")
    # the mutating configuration only: nothing to retry, so only the watch can bring the fix
    patcher = WebhookPatcher(api, lambda: ROOT, ns, targets=targets[:1], retry_after=0.2, resync=600)

    async def main():
        task = asyncio.create_task(patcher.run())
        try:
            await asyncio.to_thread(wait_for, lambda: trusts(api.request("GET", targets[0].path), B64), 10,
                                    what="caBundle patched")
            current = api.request("GET", targets[0].path)
            current["webhooks"][0]["clientConfig"].pop("caBundle")  # kubectl apply of the manifest again
            api.request("PUT", targets[0].path, current)
            assert not trusts(api.request("GET", targets[0].path), B64)
            await asyncio.to_thread(wait_for, lambda: trusts(api.request("GET", targets[0].path), B64), 10,
                                    what="caBundle patched again after the re-apply")
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    asyncio.run(main())
