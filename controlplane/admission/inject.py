"""`/inject`: sidecar injection at pod creation, as istiod's mutating webhook.

The decision and the mutation are controlplane/inject's (`decide`, `inject_pod`,
`json_patch`, shared with `meshd kube-inject`); this module feeds them what the cluster
says: the pod as the API server has it (its namespace from the request when the object
has none yet), the namespace's labels from the config store, and the injection config
built from the mesh config and the injection values meshd has (`InjectionInputs`).

Every pod not injected is logged with the reason (`pod not injected`), every injected
one with the containers added; the injector's warnings (annotations it does not honour)
go back to the API server as admission warnings, which kubectl prints. An injection that
fails denies the pod with the reason (istiod does the same): a pod that should have a
sidecar never starts without one.
"""
from __future__ import annotations

import copy
import threading
from collections.abc import Callable
from typing import Any

import structlog

from .review import AdmissionRequest, Verdict

log = structlog.get_logger("meshd.admission")

NamespaceLookup = Callable[[str], "dict[str, Any] | None"]


class InjectionInputs:
    """The mesh config (its raw MeshConfig mapping) and the injection values, as they
    change; the InjectionConfig built from them, once per change (read from the
    webhook's threads, set from the event loop)."""

    def __init__(self, mesh_config: dict[str, Any] | None = None, values: dict[str, Any] | None = None):
        self._lock = threading.Lock()
        self._mesh_config, self._values = mesh_config, values
        self._built: Any = None

    def set_mesh_config(self, mesh_config: dict[str, Any] | None) -> None:
        with self._lock:
            if mesh_config != self._mesh_config:
                self._mesh_config, self._built = mesh_config, None

    def set_values(self, values: dict[str, Any] | None) -> None:
        with self._lock:
            if values != self._values:
                self._values, self._built = values, None

    def config(self) -> Any:
        """The InjectionConfig in force (controlplane/inject's)."""
        from ..inject import InjectionConfig

        with self._lock:
            if self._built is None:
                self._built = InjectionConfig.from_sources(self._mesh_config, self._values)
            return self._built


def review(req: AdmissionRequest, inputs: InjectionInputs, namespace: NamespaceLookup) -> Verdict:
    from ..inject import decide, inject_pod, json_patch

    if req.operation != "CREATE" or req.kind != "Pod" or req.sub_resource:
        return Verdict(True)  # the webhook's rules send pod creations only; anything else passes as it is
    if req.object is None:
        return Verdict.deny("sidecar injection: request.object: Required value")
    pod = copy.deepcopy(req.object)
    md = pod.setdefault("metadata", {})
    if req.namespace and isinstance(md, dict) and not md.get("namespace"):
        md["namespace"] = req.namespace
    ns_name = req.namespace or str(md.get("namespace") or "default")
    what = f"{ns_name}/{md.get('name') or md.get('generateName') or req.name or '?'}"
    ns = namespace(ns_name)
    if ns is None:
        # The API server sent the pod because the namespace's labels matched a webhook;
        # meshd cannot check them: refuse rather than start the pod without its sidecar
        # (its controller retries).
        log.warning("pod injection refused", pod=what, reason=f"namespace {ns_name} is not known to meshd")
        return Verdict.deny(f"sidecar injection: namespace {ns_name} is not known to meshd (not watched, or not "
                            "seen yet): try again", 503)
    try:
        cfg = inputs.config()
        decision = decide(pod, ns, cfg)
        if not decision.inject:
            log.info("pod not injected", pod=what, reason=decision.reason, dry_run=req.dry_run)
            return Verdict(True)
        injected = inject_pod(pod, cfg)
        patch = json_patch(pod, injected.pod)
    except Exception as e:  # an injector error denies the pod: it must not start without its sidecar
        log.warning("pod injection failed", pod=what, error=str(e), exc_info=not isinstance(e, ValueError))
        return Verdict.deny(f"sidecar injection failed for pod {what}: {e}", 500 if not isinstance(e, ValueError) else 400)
    warnings = tuple(str(w) for w in injected.warnings)
    added = [c.get("name") for c in (injected.pod.get("spec") or {}).get("initContainers", []) +
             (injected.pod.get("spec") or {}).get("containers", []) if isinstance(c, dict)]
    log.info("pod injected", pod=what, reason=decision.reason, containers=added, patch_ops=len(patch),
             warnings=list(warnings) or None, dry_run=req.dry_run)
    return Verdict(True, patch=patch, warnings=warnings)
