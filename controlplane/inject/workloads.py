"""The pod templates of Kubernetes workload kinds, for offline injection (`meshd
kube-inject`, as `istioctl kube-inject`): Pods, Deployments, StatefulSets, DaemonSets,
ReplicaSets, ReplicationControllers, Jobs, CronJobs, OpenShift DeploymentConfigs, and
`List`s of them. Other kinds pass through unchanged.
"""
from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .config import InjectionConfig
from .pod import Owner, inject_pod
from .selection import decide

# kind -> path of the pod template under the object
TEMPLATE_PATHS: dict[str, tuple[str, ...]] = {
    "Deployment": ("spec", "template"),
    "StatefulSet": ("spec", "template"),
    "DaemonSet": ("spec", "template"),
    "ReplicaSet": ("spec", "template"),
    "ReplicationController": ("spec", "template"),
    "Job": ("spec", "template"),
    "DeploymentConfig": ("spec", "template"),
    "CronJob": ("spec", "jobTemplate", "spec", "template"),
}


@dataclass(frozen=True)
class Outcome:
    """One object after kube-inject: the object, and one line per decision or warning."""
    obj: Any
    notes: tuple[str, ...] = ()


def _describe(obj: Mapping[str, Any]) -> str:
    meta = obj.get("metadata") or {}
    return f"{obj.get('kind')} {meta.get('namespace') or 'default'}/{meta.get('name') or '<unnamed>'}"


def inject_object(obj: Any, cfg: InjectionConfig) -> Outcome:
    """`obj` with its pod (template) injected when the selection rules say so. Raises
    InjectionError / AnnotationError (ValueError) naming the object and the field."""
    if not isinstance(obj, Mapping):
        return Outcome(obj)
    kind = obj.get("kind")
    if kind == "List":
        results = [inject_object(item, cfg) for item in obj.get("items") or []]
        out = dict(obj)
        out["items"] = [r.obj for r in results]
        return Outcome(out, tuple(n for r in results for n in r.notes))
    if kind == "Pod":
        decision = decide(obj, None, cfg)
        if not decision.inject:
            return Outcome(obj, (f"skipped: {decision.reason}",))
        injected = inject_pod(obj, cfg)
        return Outcome(injected.pod, tuple(f"{_describe(obj)}: {w}" for w in injected.warnings))
    path = TEMPLATE_PATHS.get(str(kind))
    if path is None:
        return Outcome(obj)
    out = copy.deepcopy(dict(obj))
    parent: Any = out
    for part in path[:-1]:
        parent = parent.setdefault(part, {})
    template = parent.get(path[-1]) or {}
    meta = obj.get("metadata") or {}
    namespace = str(meta.get("namespace") or "")
    pod_meta = {**(template.get("metadata") or {})}
    if namespace:
        pod_meta.setdefault("namespace", namespace)
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": pod_meta, "spec": template.get("spec") or {}}
    # A template has no name: the decision names the workload.
    decision = decide({**pod, "metadata": {"name": meta.get("name"), **pod_meta}}, None, cfg)
    if not decision.inject:
        return Outcome(obj, (f"skipped {_describe(obj)}: {decision.reason.split(': ', 1)[-1]}",))
    owner = Owner(str(obj.get("apiVersion") or ""), str(kind), str(meta.get("name") or ""), namespace)
    injected = inject_pod(pod, cfg, owner)
    new_meta = dict(injected.pod["metadata"])
    if not namespace or not (template.get("metadata") or {}).get("namespace"):
        new_meta.pop("namespace", None)
    parent[path[-1]] = {**template, "metadata": new_meta, "spec": injected.pod["spec"]}
    return Outcome(out, tuple(f"{_describe(obj)}: {w}" for w in injected.warnings))
