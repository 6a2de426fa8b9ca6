"""The trust bundle as ConfigMap `istio-ca-root-cert` (key `root-cert.pem`) in every
namespace meshd serves, as istiod's namespace controller publishes it: pods mount it
(istio-proxy verifies istiod with it; applications use it to trust mesh certificates).

Leader work (leader.py). The ConfigMaps follow
- the namespaces in the store (the Kubernetes source's Namespaces: all of them, or those
  of --namespaces), except Kubernetes' own (kube-system, kube-public, kube-node-lease)
  and namespaces being deleted;
- the CA's trust bundle: every trusted root, so during a root rotation both roots are
  published before the new one signs (MeshCA.on_bundle_change);
- and what others do to them: every `resync` seconds each one is read again, and a
  deleted or edited ConfigMap is put back.

Each namespace costs a GET, then a CREATE (absent) or an UPDATE with the resourceVersion
read (changed; 409 Conflict: read again next round); an unchanged one costs nothing
until the next resync. RBAC: get/update restricted to the name istio-ca-root-cert,
create (which cannot be restricted by name).
"""
from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Callable, Iterable
from typing import Any

import structlog

from .api import ApiError, KubeApi, path

CONFIGMAP = "istio-ca-root-cert"
KEY = "root-cert.pem"
LABELS = {"istio.io/config": "true"}
SKIPPED_NAMESPACES = frozenset({"kube-system", "kube-public", "kube-node-lease"})
DEFAULT_RESYNC = 300.0


class RootCertPublisher:
    def __init__(self, api: KubeApi, bundle: Callable[[], bytes], namespaces: Callable[[], Iterable[str]], *,
                 resync: float = DEFAULT_RESYNC, retry_after: float = 2.0, logger: Any = None):
        self.api = api
        self._bundle = bundle
        self._namespaces = namespaces
        self.resync = resync
        self.retry_after = retry_after
        self._log = logger if logger is not None else structlog.get_logger("meshd.rootcert")
        self._published: dict[str, str] = {}  # namespace -> digest of the bundle it holds
        self._wake: asyncio.Event | None = None
        self.writes = 0

    def changed(self) -> None:
        """The bundle or the set of namespaces changed (any thread-safe caller on the loop)."""
        if self._wake is not None:
            self._wake.set()

    async def run(self) -> None:
        """Leader task: until cancelled."""
        self._wake = asyncio.Event()
        self._published.clear()  # newly elected: read everything once
        loop = asyncio.get_running_loop()
        next_resync = loop.time() + self.resync
        try:
            while True:
                self._wake.clear()  # before reading: a change during the pass wakes the next one
                failed = await self.reconcile()
                if loop.time() >= next_resync:
                    self._published.clear()
                    next_resync = loop.time() + self.resync
                    continue
                timeout = min(next_resync - loop.time(), self.retry_after if failed else self.resync)
                try:
                    await asyncio.wait_for(self._wake.wait(), max(0.0, timeout))
                except TimeoutError:
                    pass
        finally:
            self._wake = None

    async def reconcile(self) -> bool:
        """One pass over the namespaces; True if some namespace must be tried again."""
        bundle = self._bundle()
        if not bundle:
            return False
        digest = hashlib.sha256(bundle).hexdigest()
        wanted = sorted({ns for ns in self._namespaces() if ns not in SKIPPED_NAMESPACES})
        for ns in list(self._published):
            if ns not in wanted:
                del self._published[ns]
        failed = False
        for ns in wanted:
            if self._published.get(ns) == digest:
                continue
            try:
                await self._publish(ns, bundle.decode())
                self._published[ns] = digest
            except ApiError as e:
                if e.status in (403, 404):
                    # Namespace being deleted (403 Forbidden on create) or gone: nothing to do.
                    self._log.debug("root cert not published", namespace=ns, status=e.status, reason=e.reason)
                    self._published[ns] = digest
                    continue
                failed = True
                self._log.warning("root cert not published", namespace=ns, status=e.status, reason=e.reason,
                                  error=e.message[:200])
        return failed

    async def _publish(self, ns: str, pem: str) -> None:
        target = path("", "v1", "configmaps", ns, CONFIGMAP)
        try:
            current = await self.api.call("GET", target)
        except ApiError as e:
            if not e.not_found:
                raise
            body = {"apiVersion": "v1", "kind": "ConfigMap",
                    "metadata": {"name": CONFIGMAP, "namespace": ns, "labels": dict(LABELS)},
                    "data": {KEY: pem}}
            try:
                await self.api.call("POST", path("", "v1", "configmaps", ns), body)
            except ApiError as e2:
                if e2.conflict:  # created meanwhile: compare next round
                    raise ApiError(409, "Conflict", "created by someone else meanwhile") from None
                raise
            self.writes += 1
            self._log.info("root cert published", namespace=ns, configmap=CONFIGMAP, created=True)
            return
        if (current.get("data") or {}).get(KEY) == pem:
            return
        updated = dict(current)
        updated["data"] = {**(current.get("data") or {}), KEY: pem}
        md = dict(current.get("metadata") or {})
        md["labels"] = {**(md.get("labels") or {}), **LABELS}
        updated["metadata"] = md  # carries the resourceVersion read: a concurrent write is a 409
        await self.api.call("PUT", target, updated)
        self.writes += 1
        self._log.info("root cert published", namespace=ns, configmap=CONFIGMAP, created=False)
