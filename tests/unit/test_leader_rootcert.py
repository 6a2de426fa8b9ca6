"""Leader work: the trust bundle as ConfigMap istio-ca-root-cert in every namespace meshd
serves (controlplane/kube/rootcert.py), against the stand-in API server."""
from __future__ import annotations

import asyncio
import contextlib
import functools
import time

from kubernetes import client

from controlplane.kube.api import KubeApi
from controlplane.kube.rootcert import CONFIGMAP, RootCertPublisher
from tests.support.kubeapi import FakeApiServer

ROOT_A = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"
ROOT_B = "-----BEGIN CERTIFICATE-----\nBBBB\n-----END CERTIFICATE-----\n"


def aio(fn):
    @functools.wraps(fn)
    def run(*args, **kwargs):
        return asyncio.run(fn(*args, **kwargs))
    return run


KUBEAPI_BOOKMARKS = None  # the stand-in API server's default interval (conftest.kubeapi)


class World:
    def __init__(self, api: FakeApiServer, namespaces, resync=60.0):
        self.api_client = client.ApiClient(api.configuration())
        self.kube = KubeApi(self.api_client)
        self.bundle = ROOT_A
        self.namespaces = list(namespaces)
        self.pub = RootCertPublisher(self.kube, lambda: self.bundle.encode(), lambda: self.namespaces,
                                     resync=resync, retry_after=0.1)
        self.task: asyncio.Task | None = None

    def lead(self):
        self.task = asyncio.create_task(self.pub.run())

    async def close(self):
        if self.task:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task
        self.kube.close()
        self.api_client.close()


def published(api: FakeApiServer, ns: str) -> str | None:
    cm = api.get("v1", "ConfigMap", CONFIGMAP, ns)
    return (cm or {}).get("data", {}).get("root-cert.pem")


async def until(pred, what: str, timeout: float = 5.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"{what}: not within {timeout}s")


@aio
async def test_every_served_namespace_gets_the_bundle_and_follows_it(kubeapi):
    w = World(kubeapi, ["istio-system", "istioinaction", "kube-system", "default"])
    try:
        w.lead()
        await until(lambda: all(published(kubeapi, ns) == ROOT_A for ns in ("istio-system", "istioinaction", "default")),
                    "published")
        cm = kubeapi.get("v1", "ConfigMap", CONFIGMAP, "istioinaction")
        assert cm["metadata"]["labels"] == {"istio.io/config": "true"}
        assert published(kubeapi, "kube-system") is None  # Kubernetes' own namespaces are left alone
        # a new namespace gets it when the store says so
        w.namespaces.append("late")
        w.pub.changed()
        await until(lambda: published(kubeapi, "late") == ROOT_A, "new namespace")
        # a root rotation: the bundle (both roots) replaces the old content everywhere
        w.bundle = ROOT_A + ROOT_B
        w.pub.changed()
        await until(lambda: all(published(kubeapi, ns) == ROOT_A + ROOT_B
                                for ns in ("istio-system", "istioinaction", "default", "late")), "rotated")
        assert {r.status for r in kubeapi.writes("configmaps", "PUT")} == {200}
        assert len(kubeapi.writes("configmaps", "POST")) == 4  # one create per namespace, ever
        # nothing to do: no writes, no reads
        before = len(kubeapi.requests)
        w.pub.changed()
        await asyncio.sleep(0.3)
        assert len(kubeapi.requests) == before
    finally:
        await w.close()


@aio
async def test_deleted_or_edited_configmaps_are_put_back_on_resync(kubeapi):
    w = World(kubeapi, ["shop"], resync=0.5)
    try:
        w.lead()
        await until(lambda: published(kubeapi, "shop") == ROOT_A, "published")
        cm = kubeapi.get("v1", "ConfigMap", CONFIGMAP, "shop")
        cm["data"] = {"root-cert.pem": "tampered", "extra": "kept"}
        kubeapi.apply(cm)
        await until(lambda: published(kubeapi, "shop") == ROOT_A, "repaired")
        assert kubeapi.get("v1", "ConfigMap", CONFIGMAP, "shop")["data"]["extra"] == "kept"
        kubeapi.delete("v1", "ConfigMap", CONFIGMAP, "shop")
        await until(lambda: published(kubeapi, "shop") == ROOT_A, "re-created")
    finally:
        await w.close()


@aio
async def test_failures_are_retried_and_a_concurrent_writer_is_not_overwritten_blindly(kubeapi):
    w = World(kubeapi, ["shop"])
    try:
        kubeapi.fail_next(1, 500)
        w.lead()
        await until(lambda: published(kubeapi, "shop") == ROOT_A, "published after a retry")
        # updates carry the resourceVersion read: a write in between is a 409, read again
        w.bundle = ROOT_B
        real = w.kube.call

        async def racing(method, target, *a, **kw):
            result = await real(method, target, *a, **kw)
            if method == "GET" and target.endswith(CONFIGMAP) and not racing.done:
                racing.done = True
                other = kubeapi.get("v1", "ConfigMap", CONFIGMAP, "shop")
                other["metadata"].setdefault("annotations", {})["touched"] = "by someone else"
                kubeapi.apply(other)
            return result
        racing.done = False
        w.kube.call = racing
        w.pub.changed()
        await until(lambda: published(kubeapi, "shop") == ROOT_B, "updated after the conflict")
        assert [r.status for r in kubeapi.writes("configmaps", "PUT")] == [409, 200]
        assert kubeapi.get("v1", "ConfigMap", CONFIGMAP, "shop")["metadata"]["annotations"] == {"touched": "by someone else"}
    finally:
        await w.close()
