"""Where operators look: meshd's verdict on each Istio object, written into the cluster.

An Istio object meshd rejects (`kubectl apply` accepted it: no validating webhook runs in
front of meshd, so meshd's parse gate plays Istio's webhook and analyzers) gets

- in `.status` (the Istio CRDs have a status subresource, Istio's `IstioStatus`):
  a condition `{type: Reconciled, status: "False", reason: Rejected, message: <why>}`,
  an analysis message `{type: {code: IST0106, name: SchemaValidationError}, level: ERROR}`
  in `validationMessages` (the message Istio's analyzers give a resource that fails
  validation), and `observedGeneration`; `kubectl get` shows the reason through the
  printer columns `meshd crds` adds (STATUS; MESSAGE with `-o wide`);
- a Warning Event `Rejected` with the same message on the object (`kubectl describe`,
  `kubectl get events`), once per new rejection.

When the object is accepted again, meshd removes its condition and message (other
writers' conditions are left alone). Only the leader writes (leader.py):
every replica keeps the picture (the Kubernetes source tells it about every Istio object
with its verdict and current status), and a newly elected leader reconciles all of it,
so a verdict found while another replica led is still written, and a leader change
neither loses nor repeats an Event (the status in the cluster says what was reported).

The Gateway API kinds get the status their spec defines instead (gateway_status.py):
the model computes it after every build (`gateway_api_status`: conditions with the
spec's reasons on GatewayClass, Gateway and its listeners, a route's parents with
controllerName istio.io/gateway-controller), and the leader writes what differs from
the cluster's; a rejected Gateway API object's `Accepted` condition says why (and gets
the same Warning Event).

Writes are JSON merge patches of `<plural>/status` carrying the resourceVersion they were
computed from (409 Conflict: a newer version is on its way through the watch, and the
verdict is computed again from it); the watch event caused by meshd's own write leaves
nothing to do, so writing converges.
"""
from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

import structlog

from ..config.objects import ConfigKey, Rejection
from ..config.parse import Parsed
from ..names import GATEWAY_API_GROUP
from . import gateway_status
from .api import MERGE_PATCH, ApiError, KubeApi, path
from .resources import KubeResource, ObjectInfo

CONDITION_TYPE = "Reconciled"
REASON_REJECTED = "Rejected"
EVENT_REASON = "Rejected"
ANALYSIS_CODE = "IST0106"
ANALYSIS_NAME = "SchemaValidationError"
ANALYSIS_URL = "https://istio.io/latest/docs/reference/config/analysis/ist0106/"
COMPONENT = "meshd"
MAX_MESSAGE = 1024  # keep the status and the Event readable


def rejection_message(rej: Rejection) -> str:
    """The reason as the object's owner wants it: field and reason (the object is implied)."""
    text = f"{rej.field}: {rej.reason}" if rej.field else rej.reason
    return text if len(text) <= MAX_MESSAGE else text[: MAX_MESSAGE - 3] + "..."


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _ours(condition: Any) -> bool:
    return isinstance(condition, dict) and condition.get("type") == CONDITION_TYPE \
        and condition.get("reason") == REASON_REJECTED


def _our_message(msg: Any) -> bool:
    return isinstance(msg, dict) and isinstance(msg.get("type"), dict) and msg["type"].get("code") == ANALYSIS_CODE


def rejected_message(status: dict[str, Any]) -> str | None:
    """The rejection message meshd wrote into this status, if any."""
    for c in status.get("conditions") or []:
        if _ours(c):
            return str(c.get("message") or "")
    return None


def desired_status(status: dict[str, Any], rejection: str | None, generation: int | None,
                   now: Callable[[], str] = _now) -> dict[str, Any] | None:
    """The merge patch turning `status` into what it should say (None: it already does).
    Only meshd's own entries change; conditions and messages of other writers stay."""
    conditions = [c for c in (status.get("conditions") or []) if not _ours(c)]
    messages = [m for m in (status.get("validationMessages") or []) if not _our_message(m)]
    new = dict(status)
    if rejection is not None:
        old = next((c for c in status.get("conditions") or [] if _ours(c)), None)
        same = old is not None and old.get("message") == rejection and old.get("status") == "False"
        since = old.get("lastTransitionTime") if same and old is not None else None
        cond = {"type": CONDITION_TYPE, "status": "False", "reason": REASON_REJECTED, "message": rejection,
                "lastTransitionTime": since or now()}
        if generation is not None:
            cond["observedGeneration"] = generation
            new["observedGeneration"] = generation
        conditions.append(cond)
        messages.append({"type": {"code": ANALYSIS_CODE, "name": ANALYSIS_NAME}, "level": "ERROR",
                         "documentationUrl": ANALYSIS_URL})
    for key, value in (("conditions", conditions), ("validationMessages", messages)):
        if value:
            new[key] = value
        else:
            new.pop(key, None)
    if _comparable(new) == _comparable(status):
        return None
    return {k: new.get(k) for k in set(status) | set(new)}  # absent keys -> null: removed by the merge patch


def _comparable(status: dict[str, Any]) -> dict[str, Any]:
    out = dict(status)
    out["conditions"] = [{k: v for k, v in c.items() if k != "lastTransitionTime"} if isinstance(c, dict) else c
                         for c in status.get("conditions") or []]
    if not out["conditions"]:
        out.pop("conditions")
    return out


@dataclass(frozen=True)
class _Tracked:
    resource: KubeResource
    info: ObjectInfo
    rejection: str | None  # the message, None when accepted

    @property
    def gateway_api(self) -> bool:
        return self.resource.group == GATEWAY_API_GROUP

    @property
    def key(self) -> ConfigKey:
        return ConfigKey(self.resource.kind.key_kind, self.info.namespace, self.info.name)


class StatusWriter:
    """An ObjectObserver for the Kubernetes source, and the leader task writing status."""

    def __init__(self, api: KubeApi, *, instance: str = "", retry_after: float = 2.0, logger: Any = None):
        self.api = api
        self.instance = instance  # reportingInstance of Events: the pod / leader identity
        self.retry_after = retry_after
        self._log = logger if logger is not None else structlog.get_logger("meshd.status")
        self._objects: dict[str, _Tracked] = {}
        self._streams: dict[str, set[str]] = {}
        self._dirty: set[str] = set()
        self._wake: asyncio.Event | None = None
        self._leading = False
        # ConfigKey -> status the model computed for each Gateway API object meshd controls
        # (None until the first mesh snapshot: nothing is written before it).
        self._gateway_api: Mapping[ConfigKey, dict[str, Any]] | None = None
        self.writes = 0
        self.events = 0

    # --- ObjectObserver (every replica) --------------------------------------------
    def synced(self, stream: str, resource: KubeResource, objects: dict[str, tuple[Parsed, ObjectInfo]]) -> None:
        for loc in self._streams.get(stream, set()) - objects.keys():
            self._objects.pop(loc, None)
        self._streams[stream] = set(objects)
        for loc, (parsed, info) in objects.items():
            self._track(loc, resource, parsed, info)

    def put(self, stream: str, resource: KubeResource, location: str, parsed: Parsed, info: ObjectInfo) -> None:
        self._streams.setdefault(stream, set()).add(location)
        self._track(location, resource, parsed, info)

    def deleted(self, stream: str, resource: KubeResource, location: str) -> None:
        self._streams.get(stream, set()).discard(location)
        self._objects.pop(location, None)

    def _track(self, loc: str, resource: KubeResource, parsed: Parsed, info: ObjectInfo) -> None:
        rejection = rejection_message(parsed) if isinstance(parsed, Rejection) else None
        before = self._objects.get(loc)
        tracked = self._objects[loc] = _Tracked(resource, info, rejection)
        if tracked.gateway_api and before is not None and before.rejection == rejection \
                and before.info.generation != info.generation:
            # A new generation is judged by the model's next snapshot (gateway_api_status):
            # writing the last one's verdict with the new observedGeneration would claim a
            # verdict on a spec nobody judged yet. (A status changed by someone else, same
            # generation, is put right at once.)
            return
        if self._patch(tracked) is not None:
            self._mark(loc)

    def gateway_api_status(self, statuses: Mapping[ConfigKey, dict[str, Any]]) -> None:
        """The Gateway API status the model computed from its latest snapshot (every
        replica keeps it; the leader writes it): ConfigKey -> `status` as the CRD has it."""
        self._gateway_api = statuses
        for loc, tracked in self._objects.items():
            if tracked.gateway_api and self._patch(tracked) is not None:
                self._mark(loc)

    def _patch(self, t: _Tracked) -> dict[str, Any] | None:
        """The merge patch of the object's status (None: nothing to write)."""
        info = t.info
        if not t.gateway_api:
            return desired_status(info.status, t.rejection, info.generation)
        if self._gateway_api is None:  # not computed yet
            return None
        ours = self._gateway_api.get(t.key)
        if ours is None and t.resource.name in gateway_status.ROUTE_KINDS:
            ours = {"parents": []}  # no parent of meshd's (any left from before are removed)
        if ours is None:  # not meshd's (a class of another controller, a Gateway of such a class)
            return None
        return gateway_status.status_patch(t.resource.name, info.status, ours, info.generation, t.rejection, _now)

    def _previous_rejection(self, t: _Tracked) -> str | None:
        if t.gateway_api:
            return gateway_status.rejected_message(t.resource.name, t.info.status)
        return rejected_message(t.info.status)

    def _mark(self, loc: str) -> None:
        self._dirty.add(loc)
        if self._wake is not None:
            self._wake.set()

    def rejected(self) -> dict[str, str]:
        """location -> message of every object rejected now (all replicas know it)."""
        return {loc: t.rejection for loc, t in self._objects.items() if t.rejection is not None}

    # --- the leader's work ----------------------------------------------------------
    async def run(self) -> None:
        """Until cancelled (leadership lost): bring every tracked object's status in line."""
        self._wake = asyncio.Event()
        self._leading = True
        self._dirty |= set(self._objects)  # newly elected: look at everything once
        self._wake.set()
        try:
            while True:
                await self._wake.wait()
                self._wake.clear()
                batch, self._dirty = sorted(self._dirty), set()
                for loc in batch:
                    tracked = self._objects.get(loc)
                    if tracked is not None:
                        await self._reconcile(loc, tracked)
        finally:
            self._leading = False
            self._wake = None

    async def _reconcile(self, loc: str, t: _Tracked) -> None:
        info = t.info
        patch = self._patch(t)
        if patch is None:
            return
        group, _, version = info.api_version.rpartition("/")
        target = path(group, version, t.resource.plural, info.namespace or None, info.name, "status")
        body = {"metadata": {"resourceVersion": info.resource_version}, "status": patch}
        previously = self._previous_rejection(t)
        try:
            obj = await self.api.call("PATCH", target, body, content_type=MERGE_PATCH)
        except ApiError as e:
            if e.conflict or e.not_found:
                # Changed or gone since we read it: the watch brings the news, and the
                # verdict is computed again from it.
                self._log.debug("status write superseded", object=f"{t.resource.name} {info.namespace}/{info.name}",
                                status=e.status)
                return
            self._log.warning("status write failed", object=f"{t.resource.name} {info.namespace}/{info.name}",
                              status=e.status, reason=e.reason, error=e.message[:200])
            self._retry(loc)
            return
        self.writes += 1
        md = obj.get("metadata") or {}
        current = self._objects.get(loc)
        if current is not None and current.info.resource_version == info.resource_version:
            # What we wrote is now the latest state (until the watch says otherwise).
            written = obj.get("status")
            self._objects[loc] = replace(current, info=replace(
                current.info, status=written if isinstance(written, dict) else {},
                resource_version=str(md.get("resourceVersion") or info.resource_version)))
        self._log.info("status written", object=f"{t.resource.name} {info.namespace}/{info.name}",
                       verdict="rejected" if t.rejection else "accepted")
        if t.rejection is not None and t.rejection != previously:
            await self._event(t, md)

    async def _event(self, t: _Tracked, md: dict[str, Any]) -> None:
        info = t.info
        now = _now()
        body = {
            "apiVersion": "v1", "kind": "Event",
            "metadata": {"name": f"{info.name}.{time.time_ns():x}", "namespace": info.namespace},
            "involvedObject": {"apiVersion": info.api_version, "kind": t.resource.name, "name": info.name,
                               "namespace": info.namespace, "uid": info.uid,
                               "resourceVersion": str(md.get("resourceVersion") or info.resource_version)},
            "reason": EVENT_REASON, "message": t.rejection, "type": "Warning",
            "source": {"component": COMPONENT},
            "reportingComponent": COMPONENT, "reportingInstance": self.instance[:128],
            "firstTimestamp": now, "lastTimestamp": now, "count": 1,
        }
        try:
            await self.api.call("POST", path("", "v1", "events", info.namespace), body)
            self.events += 1
        except ApiError as e:  # an Event is best effort; the status already says it
            self._log.warning("event write failed", object=f"{t.resource.name} {info.namespace}/{info.name}",
                              status=e.status, reason=e.reason, error=e.message[:200])

    def _retry(self, loc: str) -> None:
        loop = asyncio.get_running_loop()
        def again() -> None:
            if self._leading:
                self._mark(loc)

        loop.call_later(self.retry_after, again)
