"""Typed config objects as the store holds them.

A ConfigObject is one accepted document: its identity (kind, namespace, name), where it
came from, its content as plain (JSON-like) data (`spec`: what debug views dump and the
last good copies keep), and, for the Istio kinds meshd serves, the typed, frozen reading
of that content (`typed`, config/types/), which is all the model and generators read.
Objects are treated as immutable once in the store; generators read them but never
change them.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from . import types
from .validation.errors import FieldError


@dataclass(frozen=True, order=True)
class ConfigKey:
    kind: str
    namespace: str
    name: str

    def __str__(self) -> str:  # "VirtualService default/webapp"
        return f"{self.kind} {self.namespace}/{self.name}" if self.namespace else f"{self.kind} {self.name}"


@dataclass(frozen=True)
class Origin:
    """Where an object came from: a file (document index and the line it starts on) or a
    Kubernetes API. Shown as `file:line`, the form editors and terminals jump to."""

    source: str  # "file" | "kubernetes"
    location: str  # file path, or API path
    index: int = 0  # document number inside a multi-document file (identity, not for people)
    line: int = 0  # 1-based line where the document starts; 0 when unknown or the whole file

    def __str__(self) -> str:
        if self.source != "file":
            return self.location
        if self.line:
            return f"{self.location}:{self.line}"
        return f"{self.location}#{self.index}" if self.index else self.location


@dataclass(frozen=True)
class ConfigObject:
    kind: str  # "VirtualService", "Service", ...
    group: str  # "networking.istio.io", "" (core), "discovery.k8s.io"
    version: str  # "v1", "v1beta1", ...
    namespace: str
    name: str
    labels: Mapping[str, str]
    annotations: Mapping[str, str]
    spec: Mapping[str, Any]  # `spec` for Istio kinds; the whole body minus metadata for k8s kinds
    origin: Origin
    generation: str = ""  # content hash: changes exactly when the object changes
    extra: Mapping[str, Any] = field(default_factory=dict)  # kind-specific extras (k8s status, ...)

    def __post_init__(self) -> None:
        # Typed wherever the object is made (the parse gate, the last good copies, tests),
        # and again by dataclasses.replace: `typed` never lags behind `spec`. It is no
        # field, so equality, the content hash and the last good copies see the document.
        typed = types.build(self.group, self.kind, self.spec)
        if typed is not None:
            object.__setattr__(self, "_typed", typed)

    @property
    def typed(self) -> Any:
        """The typed reading of `spec` (config/types/: VirtualService, DestinationRule, ...);
        None for kinds without one. For an object the model derived by merging several
        (model/destination_rules.py, model/delegates.py) it is the merged reading, while
        `spec` stays the document of the object it was derived from."""
        return self.__dict__.get("_typed")

    def derived(self, typed: Any, **changes: Any) -> ConfigObject:
        """A copy with `changes` whose typed reading is `typed`: what the model merged."""
        out = dataclasses.replace(self, **changes)
        object.__setattr__(out, "_typed", typed)
        return out

    @property
    def key(self) -> ConfigKey:
        return ConfigKey(self.kind, self.namespace, self.name)

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version


@dataclass(frozen=True)
class Rejection:
    """One document the store refused, with a message naming the object, field and reason."""

    origin: Origin
    key: ConfigKey | None  # None when the document could not be identified
    field: str  # dotted path, e.g. "spec.http[0].route"; "" for whole-document problems
    reason: str  # the first error (with a count of the others)
    # Every error of the document, when validation found them (`meshd validate` prints all).
    errors: tuple[FieldError, ...] = ()

    def message(self) -> str:
        # A whole-file or whole-document problem reads on its own ("a.yaml: invalid YAML: ...").
        what = f"{self.key}: " if self.key else ("document: " if self.field else "")
        where = f"{self.field}: " if self.field else ""
        return f"{self.origin}: {what}{where}{self.reason}"
