"""Leader work: the trust bundle as ConfigMap istio-ca-root-cert in every namespace meshd
serves (controlplane/kube/rootcert.py), against the real API server (namespaces of each
test's own, and the cluster's default and kube-system)."""
from __future__ import annotations

import asyncio
import contextlib
import functools
import time

from controlplane.kube.api import ApiError, KubeApi
from controlplane.kube.rootcert import CONFIGMAP, RootCertPublisher

ROOT_A = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"
ROOT_B = "-----BEGIN CERTIFICATE-----\nBBBB\n-----END CERTIFICATE-----\n"


def aio(fn):
    @functools.wraps(fn)
    def run(*args, **kwargs):
        return asyncio.run(fn(*args, **kwargs))
    return run


class World:
    def __init__(self, api, namespaces, resync=60.0):
        self.api_client = api.api_client()
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


def published(api, ns: str) -> str | None:
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
async def test_every_served_namespace_gets_the_bundle_and_follows_it(kube):
    system, shop, late = kube.ns("istio-system"), kube.ns("istioinaction"), kube.name("late")
    w = World(kube, [system, shop, "kube-system", "default"])
    try:
        w.lead()
        await until(lambda: all(published(kube, ns) == ROOT_A for ns in (system, shop, "default")), "published")
        cm = kube.get("v1", "ConfigMap", CONFIGMAP, shop)
        assert cm["metadata"]["labels"] == {"istio.io/config": "true"}
        assert published(kube, "kube-system") is None  # Kubernetes' own namespaces are left alone
        # a new namespace gets it when the store says so
        kube.ns("late")
        w.namespaces.append(late)
        w.pub.changed()
        await until(lambda: published(kube, late) == ROOT_A, "new namespace")
        # a root rotation: the bundle (both roots) replaces the old content everywhere
        w.bundle = ROOT_A + ROOT_B
        w.pub.changed()
        await until(lambda: all(published(kube, ns) == ROOT_A + ROOT_B for ns in (system, shop, "default", late)),
                    "rotated")
        assert {r.status for r in kube.writes("configmaps", "PUT")} == {200}
        assert len(kube.writes("configmaps", "POST")) == 4  # one create per namespace, ever
        # nothing to do: no writes, no reads
        before = len(kube.requests)
        w.pub.changed()
        await asyncio.sleep(0.3)
        assert len(kube.requests) == before
    finally:
        await w.close()


@aio
async def test_deleted_or_edited_configmaps_are_put_back_on_resync(kube):
    shop = kube.ns("shop")
    w = World(kube, [shop], resync=0.5)
    try:
        w.lead()
        await until(lambda: published(kube, shop) == ROOT_A, "published")
        cm = kube.get("v1", "ConfigMap", CONFIGMAP, shop)
        cm["data"] = {"root-cert.pem": "tampered", "extra": "kept"}
        kube.apply(cm)
        await until(lambda: published(kube, shop) == ROOT_A, "repaired")
        assert kube.get("v1", "ConfigMap", CONFIGMAP, shop)["data"]["extra"] == "kept"
        kube.delete("v1", "ConfigMap", CONFIGMAP, shop)
        await until(lambda: published(kube, shop) == ROOT_A, "re-created")
    finally:
        await w.close()


@aio
async def test_failures_are_retried_and_a_concurrent_writer_is_not_overwritten_blindly(kube):
    shop = kube.ns("shop")
    w = World(kube, [shop])
    try:
        real = w.kube.call

        async def failing_once(method, target, *a, **kw):  # the API server's 500, once
            if not failing_once.done:
                failing_once.done = True
                raise ApiError(500, "InternalError", "injected")
            return await real(method, target, *a, **kw)
        failing_once.done = False
        w.kube.call = failing_once
        w.lead()
        await until(lambda: published(kube, shop) == ROOT_A, "published after a retry")
        assert failing_once.done
        # updates carry the resourceVersion read: a write in between is a 409, read again
        w.bundle = ROOT_B

        async def racing(method, target, *a, **kw):
            result = await real(method, target, *a, **kw)
            if method == "GET" and target.endswith(CONFIGMAP) and not racing.done:
                racing.done = True
                other = kube.get("v1", "ConfigMap", CONFIGMAP, shop)
                other["metadata"].setdefault("annotations", {})["touched"] = "by someone else"
                kube.apply(other)
            return result
        racing.done = False
        w.kube.call = racing
        w.pub.changed()
        await until(lambda: published(kube, shop) == ROOT_B, "updated after the conflict")
        # The client records a response's status after the server has applied the write:
        # wait for the record too.
        await until(lambda: [r.status for r in kube.writes("configmaps", "PUT")] == [409, 200],
                    "a 409 then a 200 recorded for the PUTs")
        assert kube.get("v1", "ConfigMap", CONFIGMAP, shop)["metadata"]["annotations"] == {"touched": "by someone else"}
    finally:
        await w.close()
