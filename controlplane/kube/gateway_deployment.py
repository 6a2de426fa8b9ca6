"""The leader deploys a gateway for every Kubernetes Gateway meshd controls, as istiod's
deployment controller does (docs/gateway-deployment.md):

    deployer = GatewayDeployer(member.kube, settings_from_env(member.namespace))
    builder.observers.append(deployer.observe)            # every replica: the latest config
    member.add_leader_task("gateway-deployment", deployer.run)

For each Gateway of one of meshd's classes without a Service address of its own
(model/gateway_api/deployment.py `is_managed`), the leader writes the ServiceAccount,
Service and Deployment `model/gateway_api/deployment.objects` describes, by server-side
apply (field manager `meshd`, at the resourceVersion read, as istiod): when absent, when
the cluster does not say what meshd wants, and once per object after each election (what
meshd stopped setting is then removed: a label, an overlay's replicas). An object of that
name without the `gateway.istio.io/managed` label was not made by meshd: it is never
changed, and the leader says so in its log.

Deletion does not wait for Kubernetes' garbage collector (the objects carry owner
references, but a cluster may run none): after every pass the leader lists the objects
labelled managed whose owner is a Gateway and deletes those no Gateway wants any more (the
Gateway deleted, given addresses, moved to another class, renamed by its annotations),
with the object's uid as precondition.

A parametersRef to a ConfigMap is read from the cluster on every pass; a missing ConfigMap,
or one meshd cannot apply, leaves the objects as they are and makes the Gateway
`Accepted: False` reason InvalidParameters (`with_status`, on the model's status before the
status writer gets it). A parametersRef of another kind is judged by the model itself.

Passes run on a change of the Gateways, their classes or the managed Services in the
latest snapshot, and every `resync` seconds (ConfigMaps and the objects themselves are
not watched: a deleted or edited Deployment is put back at the next resync).
"""
from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Mapping
from typing import Any

import structlog

from ..config import kinds
from ..config.objects import ConfigKey, ConfigObject
from ..config.parse import content_hash
from ..config.snapshot import ConfigSnapshot
from ..model.gateway_api import deployment as model
from ..model.gateway_api.conversion import our_classes
from ..names import GATEWAY_API_GROUP, PORT_XDS_SECURE
from ..version import meshd_version
from .api import ApiError, KubeApi, path

log = structlog.get_logger("meshd.gateway_deployment")

Status = dict[str, Any]
# kind -> (group, version, plural) of what the controller writes
RESOURCES = {"ServiceAccount": ("", "v1", "serviceaccounts"), "Service": ("", "v1", "services"),
             "Deployment": ("apps", "v1", "deployments")}
APPLY_PATCH = "application/apply-patch+yaml"  # server-side apply (JSON is YAML)
FIELD_MANAGER = "meshd"
ENVOY_IMAGE_ENV, INIT_IMAGE_ENV, PULL_POLICY_ENV = ("MESHD_GATEWAY_ENVOY_IMAGE", "MESHD_GATEWAY_INIT_IMAGE",
                                                    "MESHD_GATEWAY_IMAGE_PULL_POLICY")


def settings_from_env(namespace: str, environ: Mapping[str, str] = os.environ) -> model.Settings:
    """The images from the environment of meshd's container (the Deployment in
    deploy/kubernetes sets them), meshd's own Service for xDS."""
    default = model.Settings()
    return model.Settings(envoy_image=environ.get(ENVOY_IMAGE_ENV) or default.envoy_image,
                          init_image=environ.get(INIT_IMAGE_ENV) or f"meshd:{meshd_version()}",
                          xds_address=f"istiod.{namespace}.svc:{PORT_XDS_SECURE}",
                          image_pull_policy=environ.get(PULL_POLICY_ENV, ""))


def difference(current: Any, wanted: Any, where: str = "") -> str | None:
    """The first field where `current` (as the API server has it, with its defaults) does
    not say what `wanted` says (None: it says all of it): maps may hold more keys, lists
    must match item by item, an absent field is its zero value (the API server omits empty
    maps and lists, 0 and false)."""
    if isinstance(wanted, dict):
        if not isinstance(current, dict):
            return where or "."
        for k, v in wanted.items():
            if k not in current:
                if v in ({}, [], "", 0):  # False == 0
                    continue
                return f"{where}.{k}"
            found = difference(current[k], v, f"{where}.{k}")
            if found is not None:
                return found
        return None
    if isinstance(wanted, list):
        if not isinstance(current, list) or len(current) != len(wanted):
            return where
        return next((d for i, (c, w) in enumerate(zip(current, wanted, strict=True))
                     if (d := difference(c, w, f"{where}[{i}]")) is not None), None)
    return None if current == wanted else where


def covers(current: Any, wanted: Any) -> bool:
    return difference(current, wanted) is None


def with_problems(statuses: Mapping[ConfigKey, Status], problems: Mapping[ConfigKey, str]) -> dict[ConfigKey, Status]:
    """The model's statuses with Accepted False InvalidParameters on the Gateways whose
    parametersRef the cluster cannot satisfy."""
    out = dict(statuses)
    for key, problem in problems.items():
        status = out.get(key)
        if status is None:
            continue
        refused = {"type": "Accepted", "status": "False", "reason": "InvalidParameters", "message": problem}
        out[key] = {**status, "conditions": [refused if c.get("type") == "Accepted" else c
                                             for c in status.get("conditions") or []]}
    return out


def _owner(doc: Mapping[str, Any]) -> str | None:
    """The name of the Gateway owning an object, if a Gateway does."""
    for ref in (doc.get("metadata") or {}).get("ownerReferences") or []:
        if ref.get("kind") == "Gateway" and str(ref.get("apiVersion", "")).startswith(GATEWAY_API_GROUP + "/"):
            return str(ref.get("name"))
    return None


class GatewayDeployer:
    def __init__(self, kube: KubeApi, settings: model.Settings, *, namespaces: list[str] | None = None,
                 resync: float = 30.0, retry_after: float = 5.0):
        self.kube = kube
        self.settings = settings
        self.namespaces = set(namespaces) if namespaces else None  # None: every namespace
        self.resync = resync
        self.retry_after = retry_after
        self._config: ConfigSnapshot | None = None
        self._digest = ""
        self._wake: asyncio.Event | None = None
        self._problems: dict[ConfigKey, str] = {}  # parametersRef problems found in the cluster
        self._statuses: Mapping[ConfigKey, Status] | None = None  # the model's, last seen
        self._refused: set[tuple[str, str, str]] = set()  # objects not meshd's (logged once)
        self._applied: dict[tuple[str, str, str], str] = {}  # object -> digest of what this leader applied
        self.on_status: Callable[[Mapping[ConfigKey, Status]], None] | None = None
        self.passes = self.writes = self.deletes = 0

    # --- every replica ---------------------------------------------------------------------
    def observe(self, mesh: Any) -> None:
        """A mesh snapshot was built: a pass when what the controller reads of it changed."""
        config: ConfigSnapshot = mesh.config
        self._config = config
        digest = content_hash([[o.key, o.generation] for k in (kinds.K8S_GATEWAY.key_kind, kinds.GATEWAY_CLASS.key_kind)
                               for o in config.of_kind(k)] +
                              [[o.key, o.generation] for o in config.of_kind(kinds.SERVICE.kind)
                               if o.labels.get(model.MANAGED_LABEL)])
        if digest != self._digest:
            self._digest = digest
            if self._wake is not None:
                self._wake.set()

    def with_status(self, statuses: Mapping[ConfigKey, Status]) -> dict[ConfigKey, Status]:
        """The model's Gateway API status with what the cluster showed about parametersRefs."""
        self._statuses = statuses
        return with_problems(statuses, self._problems)

    # --- the leader ------------------------------------------------------------------------
    async def run(self) -> None:
        """Until cancelled (leadership lost): a pass on every change and every `resync`."""
        self._wake = wake = asyncio.Event()
        self._applied.clear()  # another leader may have written since: apply everything once
        try:
            while True:
                wake.clear()  # before the pass: a change during it brings another one
                config = self._config
                ok = config is None or await self.reconcile(config)  # none before the first snapshot
                try:
                    await asyncio.wait_for(wake.wait(), self.resync if ok else min(self.resync, self.retry_after))
                except TimeoutError:
                    pass
        finally:
            self._wake = None

    def _serves(self, namespace: str) -> bool:
        return self.namespaces is None or namespace in self.namespaces

    def managed(self, config: ConfigSnapshot) -> list[ConfigObject]:
        """The Gateways whose deployment is meshd's."""
        classes, _ = our_classes(config)
        return [g for g in config.of_kind(kinds.K8S_GATEWAY.key_kind)
                if g.typed.gateway_class_name in classes and model.is_managed(g) and self._serves(g.namespace)]

    async def reconcile(self, config: ConfigSnapshot) -> bool:
        """One pass over every Gateway, then the sweep. False when a write failed (retried soon)."""
        self.passes += 1
        ok = True
        problems: dict[ConfigKey, str] = {}
        keep: set[tuple[str, str, str]] = set()
        for gw in self.managed(config):
            want = model.wanted(gw)
            keep |= {(kind, gw.namespace, name) for kind, name in want.names}
            try:
                problem = await self._deploy(gw, want)
            except ApiError as e:
                log.warning("gateway deployment failed", gateway=f"{gw.namespace}/{gw.name}", status=e.status,
                            error=str(e)[:300])
                ok = False
                continue
            if problem:
                problems[gw.key] = problem
        try:
            await self._sweep(keep)
        except ApiError as e:
            log.warning("gateway deployment sweep failed", status=e.status, error=str(e)[:300])
            ok = False
        if problems != self._problems:
            self._problems = problems
            for key, problem in problems.items():
                log.warning("gateway not deployed", gateway=f"{key.namespace}/{key.name}", reason=problem)
            if self.on_status is not None and self._statuses is not None:
                self.on_status(self.with_status(self._statuses))
        return ok

    async def _get(self, resource_path: str) -> dict[str, Any] | None:
        try:
            return await self.kube.call("GET", resource_path)
        except ApiError as e:
            if e.not_found:
                return None
            raise

    async def _deploy(self, gw: ConfigObject, want: model.Wanted) -> str:
        """Write one Gateway's objects; the parametersRef problem that stopped it ("": none)."""
        if model.parameters_problem(gw):
            return ""  # the model reports it (Accepted False InvalidParameters); nothing to deploy
        live = await self._get(path(GATEWAY_API_GROUP, gw.version, "gateways", gw.namespace, gw.name))
        if live is None:
            return ""  # deleted since the snapshot: the next one drops it, the sweep its objects
        docs = model.objects(gw, str((live.get("metadata") or {}).get("uid") or ""), self.settings)
        if want.configmap is not None:
            ns, name = want.configmap
            cm = await self._get(path("", "v1", "configmaps", ns, name))
            if cm is None:
                return f"parametersRef ConfigMap {ns}/{name} does not exist"
            raw = cm.get("data")
            data = {str(k): str(v) for k, v in raw.items()} if isinstance(raw, dict) else {}
            docs, problem = model.with_parameters(docs, data)
            if problem:
                return problem
        for doc in docs:
            await self._apply(doc)
        return ""

    async def _apply(self, doc: dict[str, Any]) -> None:
        """Server-side apply of one object, unless the cluster already says it all and this
        leader applied exactly this before (so a field meshd stops setting -- a label, an
        overlay's replicas -- is removed by the next apply, as the field manager's)."""
        group, version, plural = RESOURCES[doc["kind"]]
        md = doc["metadata"]
        where = (doc["kind"], md["namespace"], md["name"])
        target = path(group, version, plural, md["namespace"], md["name"])
        current = await self._get(target)
        cur_md = (current or {}).get("metadata") or {}
        if current is not None and (cur_md.get("labels") or {}).get(model.MANAGED_LABEL) is None:
            if where not in self._refused:
                self._refused.add(where)
                log.warning("gateway object exists and is not meshd's: left alone", kind=doc["kind"],
                            object=f"{md['namespace']}/{md['name']}", label=model.MANAGED_LABEL)
            return
        self._refused.discard(where)
        digest = content_hash(doc)
        changed = "(absent)" if current is None else difference(current, doc)
        if changed is None and self._applied.get(where) == digest:
            return
        # at the version read: one made by someone else meanwhile is not taken over (409, next pass)
        body = {**doc, "metadata": {**md, **({"resourceVersion": cur_md["resourceVersion"]}
                                             if cur_md.get("resourceVersion") else {})}}
        await self.kube.call("PATCH", target, body, content_type=APPLY_PATCH,
                             query={"fieldManager": FIELD_MANAGER, "force": "true"})
        self._applied[where] = digest
        if changed is not None:
            self.writes += 1
            log.info("gateway object created" if current is None else "gateway object updated", kind=doc["kind"],
                     object=f"{md['namespace']}/{md['name']}", field=changed)

    async def _sweep(self, keep: set[tuple[str, str, str]]) -> None:
        """Delete the managed objects of Gateways that no longer want them."""
        selector = {"labelSelector": f"{model.MANAGED_LABEL}={model.MANAGED_VALUE}"}
        for kind in ("Deployment", "Service", "ServiceAccount"):
            group, version, plural = RESOURCES[kind]
            items = (await self.kube.call("GET", path(group, version, plural), query=selector)).get("items") or []
            for item in items:
                md = item.get("metadata") or {}
                ns, name = str(md.get("namespace") or ""), str(md.get("name") or "")
                if _owner(item) is None or not self._serves(ns) or (kind, ns, name) in keep:
                    continue
                body = {"kind": "DeleteOptions", "apiVersion": "v1", "preconditions": {"uid": md.get("uid")},
                        "propagationPolicy": "Background"}
                try:
                    await self.kube.call("DELETE", path(group, version, plural, ns, name), body)
                except ApiError as e:
                    if not (e.not_found or e.conflict):
                        raise
                    continue
                self.deletes += 1
                log.info("gateway object deleted", kind=kind, object=f"{ns}/{name}", gateway=_owner(item))
