"""Auto-registered WorkloadEntries in the API server (sources/autoregistration.py's
EntryBackend for Kubernetes mode).

As istiod, the replica holding a proxy's ADS stream writes that proxy's entry: it
creates it (or takes it over, `istio.io/workloadController` naming the replica),
marks it disconnected when the stream ends, and deletes it after the grace period. An
update replaces the object at the resourceVersion it read, a delete carries that
resourceVersion as its precondition: an entry another replica changed meanwhile (the
proxy reconnected there) is left alone. The entry reaches meshd's own store through the
watch, like any WorkloadEntry.

The leader alone sweeps (`sweep`): every ten grace periods (istiod's
periodicWorkloadEntryCleanup) it deletes auto-registered entries disconnected for longer
than the grace period, which catches the ones whose replica went away before its timer
fired.
"""
from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import structlog

from ..config import kinds
from .api import ApiError, KubeApi, path

if TYPE_CHECKING:
    from ..sources.autoregistration import WorkloadRegistry

log = structlog.get_logger("meshd.autoregistration")

PLURAL = "workloadentries"
VERSION = "v1"  # Istio's CRDs serve v1 since 1.22 (v1alpha3 and v1beta1 are the same schema)
MIN_SWEEP_INTERVAL = 10.0


class KubeEntries:
    def __init__(self, kube: KubeApi, version: str = VERSION):
        self.kube = kube
        self.version = version

    def _path(self, namespace: str | None = None, name: str | None = None) -> str:
        return path(kinds.WORKLOAD_ENTRY.group, self.version, PLURAL, namespace, name)

    async def get(self, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            return await self.kube.call("GET", self._path(namespace, name))
        except ApiError as e:
            if e.not_found:
                return None
            raise

    async def put(self, doc: dict[str, Any]) -> None:
        md = doc["metadata"]
        body = {**doc, "apiVersion": f"{kinds.WORKLOAD_ENTRY.group}/{self.version}"}
        if md.get("resourceVersion"):  # read from the server: replace exactly that version
            await self.kube.call("PUT", self._path(md["namespace"], md["name"]), body)
        else:
            await self.kube.call("POST", self._path(md["namespace"]), body)

    async def delete(self, namespace: str, name: str, unless: Callable[[dict[str, Any]], bool]) -> bool:
        doc = await self.get(namespace, name)
        if doc is None or unless(doc):
            return False
        rv = str(doc.get("metadata", {}).get("resourceVersion") or "")
        body = {"kind": "DeleteOptions", "apiVersion": "v1", "preconditions": {"resourceVersion": rv}}
        try:
            await self.kube.call("DELETE", self._path(namespace, name), body)
        except ApiError as e:
            if e.not_found or e.conflict:  # gone already, or changed since (reconnected)
                return False
            raise
        return True

    async def list_all(self) -> list[dict[str, Any]]:
        items = (await self.kube.call("GET", self._path())).get("items")
        return [i for i in items if isinstance(i, dict)] if isinstance(items, list) else []

    async def sweep(self, registry: WorkloadRegistry) -> None:
        """Leader work until cancelled: delete auto-registered entries whose proxy stayed
        away longer than the grace period, at start and then every ten grace periods."""
        from ..sources.autoregistration import expired

        interval = max(MIN_SWEEP_INTERVAL, 10 * registry.grace_period)
        while True:
            try:
                now = datetime.now(UTC)
                for doc in await self.list_all():
                    if expired(doc, registry.grace_period, now):
                        md = doc.get("metadata", {})
                        await registry.cleanup(str(md.get("namespace")), str(md.get("name")))
            except ApiError as e:
                log.warning("WorkloadEntry sweep failed", error=str(e), status=e.status)
            await asyncio.sleep(interval)
