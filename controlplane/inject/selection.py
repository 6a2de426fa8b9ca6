"""Does a pod get the sidecar? istiod's answer, with the reason for every decision.

Two stages, as in a cluster running istiod:
1. Which pods reach the injector at all: the webhook configuration's namespaceSelector and
   objectSelector (istiod's chart): namespace label `istio-injection=enabled`, or
   `istio.io/rev=<revision>` on the namespace or the pod, or the pod label
   `sidecar.istio.io/inject=true`; with `enableNamespacesByDefault` every namespace without
   `istio-injection=disabled`. `istio-injection` wins over `istio.io/rev`.
   `meshd kube-inject` has no namespace (None): this stage is skipped, as istioctl does.
2. What the injector itself decides (istio's injectRequired): host-network pods and
   already-injected pods are skipped; the pod's `sidecar.istio.io/inject` label (or the
   legacy annotation) decides; without it the never/always selectors, then the policy.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .config import InjectionConfig

INJECT = "sidecar.istio.io/inject"
STATUS = "sidecar.istio.io/status"
NAMESPACE_INJECTION = "istio-injection"
REVISION = "istio.io/rev"
TEMPLATES = "inject.istio.io/templates"
# The namespaces istiod never injects into (IgnoredNamespaces).
IGNORED_NAMESPACES = frozenset({"kube-system", "kube-public"})
_YES = ("y", "yes", "true", "on")


@dataclass(frozen=True)
class Decision:
    inject: bool
    reason: str


def _meta(obj: Mapping[str, Any] | None, key: str) -> Mapping[str, str]:
    return ((obj or {}).get("metadata") or {}).get(key) or {}


def _pod_name(pod: Mapping[str, Any], namespace: Mapping[str, Any] | None) -> str:
    meta = pod.get("metadata") or {}
    ns = meta.get("namespace") or _ns_name(namespace) or "default"
    return f"{ns}/{meta.get('name') or meta.get('generateName') or '<unnamed>'}"


def _ns_name(namespace: Mapping[str, Any] | None) -> str:
    return str(((namespace or {}).get("metadata") or {}).get("name") or "")


def _webhook_selects(pod: Mapping[str, Any], namespace: Mapping[str, Any], cfg: InjectionConfig) -> Decision:
    """Stage 1: would the API server call the injection webhook for this pod?"""
    ns_labels, pod_labels = _meta(namespace, "labels"), _meta(pod, "labels")
    name = _ns_name(namespace)
    if name in IGNORED_NAMESPACES:
        return Decision(False, f"namespace {name} is never injected")
    injection = ns_labels.get(NAMESPACE_INJECTION)
    if injection is not None:
        if injection == "enabled":
            return Decision(True, f"namespace {name} has {NAMESPACE_INJECTION}=enabled")
        return Decision(False, f"namespace {name} has {NAMESPACE_INJECTION}={injection}")
    ns_rev = ns_labels.get(REVISION)
    if ns_rev is not None:
        if ns_rev == cfg.revision:
            return Decision(True, f"namespace {name} has {REVISION}={ns_rev}")
        return Decision(False, f"namespace {name} has {REVISION}={ns_rev}, meshd injects revision {cfg.revision}")
    pod_rev = pod_labels.get(REVISION)
    if pod_rev is not None:
        if pod_rev == cfg.revision:
            return Decision(True, f"pod label {REVISION}={pod_rev}")
        return Decision(False, f"pod label {REVISION}={pod_rev}, meshd injects revision {cfg.revision}")
    if pod_labels.get(INJECT) == "true":
        return Decision(True, f"pod label {INJECT}=true")
    if cfg.enable_namespaces_by_default:
        return Decision(True, "enableNamespacesByDefault")
    return Decision(False, f"namespace {name} has no {NAMESPACE_INJECTION}=enabled or {REVISION} label "
                           f"and the pod no {INJECT}=true label")


def decide(pod: Mapping[str, Any], namespace: Mapping[str, Any] | None, cfg: InjectionConfig) -> Decision:
    """Whether `pod` gets the sidecar, and why. `namespace` is the Namespace object (its
    labels are read), or None for offline injection (`meshd kube-inject`)."""
    who = _pod_name(pod, namespace)
    spec = pod.get("spec") or {}
    if spec.get("hostNetwork"):
        return Decision(False, f"pod {who} has host networking enabled")
    annotations, labels = _meta(pod, "annotations"), _meta(pod, "labels")
    if STATUS in annotations:
        return Decision(False, f"pod {who} is already injected ({STATUS} present)")
    templates = [t.strip() for t in str(annotations.get(TEMPLATES, "sidecar")).split(",") if t.strip()]
    if "sidecar" not in templates:
        return Decision(False, f"pod {who}: {TEMPLATES}={','.join(templates)}: meshd injects only the sidecar "
                               "template (a gateway runs Envoy with `meshd bootstrap --type router`)")
    selected = None
    if namespace is not None:
        selected = _webhook_selects(pod, namespace, cfg)
        if not selected.inject:
            return Decision(False, f"pod {who}: {selected.reason}")
    explicit = labels.get(INJECT, annotations.get(INJECT))
    source = "label" if INJECT in labels else "annotation"
    if explicit not in (None, ""):
        wanted = str(explicit).lower() in _YES
        return Decision(wanted, f"pod {who}: {source} {INJECT}={explicit}")
    for selector in cfg.never_inject_selector:
        if not selector.empty() and selector.matches(labels):
            return Decision(False, f"pod {who}: labels match neverInjectSelector")
    for selector in cfg.always_inject_selector:
        if not selector.empty() and selector.matches(labels):
            return Decision(True, f"pod {who}: labels match alwaysInjectSelector")
    if cfg.policy == "disabled":
        return Decision(False, f"pod {who}: injection policy is disabled and the pod does not ask for it")
    why = selected.reason if selected is not None else "injection policy is enabled"
    return Decision(True, f"pod {who}: {why}")
