"""Sidecar injection, the pure part: which pods get the sidecar (`decide`), the injected
pod (`inject_pod`), the JSON Patch the mutating webhook answers (`json_patch`), from a
typed InjectionConfig (`InjectionConfig.from_sources`). Used by `meshd kube-inject` and by
the admission webhook; docs/injection.md says what is kept of Istio's injection.
"""
from .config import InjectionConfig, InjectionConfigError
from .patch import apply_patch, json_patch
from .pod import Injected, InjectionError, Owner, inject_pod, owner_of
from .selection import Decision, decide
from .traffic import AnnotationError

__all__ = ["AnnotationError", "Decision", "Injected", "InjectionConfig", "InjectionConfigError", "InjectionError",
           "Owner", "apply_patch", "decide", "inject_pod", "json_patch", "owner_of"]
