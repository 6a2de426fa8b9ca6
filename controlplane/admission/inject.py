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
import dataclasses
import threading
from collections.abc import Callable, Mapping
from typing import Any

import structlog

from .review import AdmissionRequest, Verdict

log = structlog.get_logger("meshd.admission")

NamespaceLookup = Callable[[str], "dict[str, Any] | None"]


class InjectionUnavailable(RuntimeError):
    """No injection config is in force: the one given at start was invalid."""


class InjectionInputs:
    """The injection config in force, rebuilt from its two inputs on every change of
    either: the mesh config (its raw MeshConfig mapping) and ConfigMap
    `istio-sidecar-injector` (its `values` and `config` keys), as istiod's injector
    reads them. Changes arrive on the event loop, the webhook's threads read `config()`.

    An input that does not build (InjectionConfigError naming the key) keeps the last
    good config in force and is reported (a log event, `error` in /debug/configz) until a
    later change builds; with no good config yet, injection is refused naming the error
    rather than done with settings the operator did not ask for. Keys meshd does not
    honour (`cfg.unread`) are logged once per change and listed in /debug/configz."""

    def __init__(self, mesh_config: dict[str, Any] | None = None, values: dict[str, Any] | None = None, *,
                 mesh_origin: str = "defaults"):
        self._lock = threading.Lock()
        self._mesh_config, self._mesh_origin = mesh_config, mesh_origin
        self._values = values  # chart values given directly (no ConfigMap)
        self._data: Mapping[str, Any] | None = None  # istio-sidecar-injector's data
        self._injector_origin = "defaults"
        self._built: Any = None  # the InjectionConfig in force
        self._from: tuple[str, str] = (mesh_origin, "defaults")  # the origins it was built from
        self._error: str | None = None
        self._rebuild()

    def set_mesh_config(self, mesh_config: dict[str, Any] | None, origin: str = "mesh config") -> None:
        with self._lock:
            if (mesh_config, origin) == (self._mesh_config, self._mesh_origin):
                return
            self._mesh_config, self._mesh_origin = mesh_config, origin
        self._rebuild()

    def set_values(self, values: dict[str, Any] | None) -> None:
        with self._lock:
            if values == self._values:
                return
            self._values = values
        self._rebuild()

    def set_injector_configmap(self, obj: Mapping[str, Any] | None, where: str) -> None:
        """ConfigMap istio-sidecar-injector as the API server has it (None: there is none,
        and meshd's defaults apply, as istiod's without one). `where`: ns/name."""
        if obj is None:
            data, origin = None, "defaults"
        else:
            data, origin = obj.get("data") or {}, f"ConfigMap {where}"
        with self._lock:
            if (data, origin) == (self._data, self._injector_origin):
                return
            self._data, self._injector_origin = data, origin
        self._rebuild()

    def _rebuild(self) -> None:
        from ..inject import InjectionConfig, InjectionConfigError

        with self._lock:
            mesh, values, data = self._mesh_config, self._values, self._data
            origins = (self._mesh_origin, self._injector_origin)
        try:
            if data is not None:
                extra = _check_injector_data(data)
                cfg = InjectionConfig.from_configmap(mesh, data)
                cfg = dataclasses.replace(cfg, unread=cfg.unread + extra)
            else:
                cfg = InjectionConfig.from_sources(mesh, values)
        except InjectionConfigError as e:
            where = origins[0] if e.path.startswith("meshConfig") else origins[1]
            error = f"{where}: {e}"
            with self._lock:
                changed, self._error = self._error != error, error
                in_force = "last good" if self._built is not None else "none: injection is refused"
            if changed:
                log.warning("injection config rejected", source=where, field=e.path, reason=e.reason, message=error,
                            in_force=in_force)
            return
        with self._lock:
            changed = cfg != self._built or origins != self._from
            self._built, self._from, self._error = cfg, origins, None
        if not changed:
            return
        log.info("injection config applied", mesh_config=origins[0], injector=origins[1],
                 proxy_image=cfg.proxy_image, meshd_image=cfg.meshd_image)
        if cfg.unread:
            log.warning("injection config keys not honoured", mesh_config=origins[0], injector=origins[1],
                        keys=list(cfg.unread), reason="meshd's injector does not read these keys; they have no effect")

    def config(self) -> Any:
        """The InjectionConfig in force (controlplane/inject's); InjectionUnavailable when
        none ever built."""
        with self._lock:
            if self._built is None:
                raise InjectionUnavailable(f"no injection config in force: {self._error}")
            return self._built

    def status(self) -> dict[str, Any]:
        """The /debug/configz `injection` section."""
        with self._lock:
            cfg, (mesh, injector), error = self._built, self._from, self._error
        return {"meshConfigSource": mesh, "injectorSource": injector,
                "values": describe(cfg) if cfg is not None else None,
                "unread": list(cfg.unread) if cfg is not None else [], "error": error}


def _check_injector_data(data: Mapping[str, Any]) -> tuple[str, ...]:
    """What InjectionConfig.from_configmap takes for granted: `values` and `config`, each
    a string of YAML holding a mapping. Other keys are returned, to be reported (istiod
    reads only these two: a typo such as `value` must not pass unnoticed)."""
    import yaml

    from ..inject import InjectionConfigError

    if not isinstance(data, Mapping):
        raise InjectionConfigError("data", "must be a mapping of keys to strings")
    extra = []
    for key, text in data.items():
        if key not in ("values", "config"):
            extra.append(f"data.{key}")
            continue
        if not isinstance(text, str):
            raise InjectionConfigError(f"data.{key}", "must be a string of YAML")
        try:
            doc = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise InjectionConfigError(f"data.{key}", f"not YAML: {' '.join(str(e).split())}") from None
        if doc is not None and not isinstance(doc, Mapping):
            raise InjectionConfigError(f"data.{key}", f"must be a YAML mapping, got {type(doc).__name__}")
    return tuple(sorted(extra))


def describe(cfg: Any) -> dict[str, Any]:
    """An InjectionConfig as an operator reads it (camelCase; resources, annotations
    and label selectors as Kubernetes writes them)."""
    from ..inject.config import Resources

    def plain(value: Any) -> Any:
        if isinstance(value, Resources):
            return value.to_dict()
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            return {_camel(f.name): plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
        if isinstance(value, Mapping):
            return {str(k): plain(v) for k, v in value.items()}
        if isinstance(value, (tuple, list)):
            return [plain(v) for v in value]
        return value

    out = plain(cfg)
    out.pop("unread", None)  # listed beside the values
    out["injectedAnnotations"] = dict(cfg.injected_annotations)
    for key in ("neverInjectSelector", "alwaysInjectSelector"):
        out[key] = [{"matchLabels": dict(s.match_labels),
                     "matchExpressions": [{"key": k, "operator": op, "values": list(v)}
                                          for k, op, v in s.match_expressions]}
                    for s in getattr(cfg, _snake(key))]
    return out


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(p[:1].upper() + p[1:] for p in rest)


def _snake(name: str) -> str:
    return "".join(f"_{c.lower()}" if c.isupper() else c for c in name)


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
    except InjectionUnavailable as e:  # never inject with settings the operator did not give
        log.warning("pod injection refused", pod=what, reason=str(e))
        return Verdict.deny(f"sidecar injection: {e}", 503)
    try:
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
