"""From a parsed YAML document to a ConfigObject, or a Rejection saying why not.

This is the single gate every document passes, whichever source it came from, so the
file and Kubernetes sources reject the same objects with the same messages.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from ..names import DEFAULT_NAMESPACE, TOPOLOGY_LABELS
from . import kinds
from .objects import ConfigKey, ConfigObject, Origin, Rejection
from .validation import as_json, validate
from .validation.secret import is_credential, secret_body


@dataclass(frozen=True)
class Unsupported:
    """An object of a mesh config kind meshd does not serve (kinds.unsupported_reason):
    not an error of the document, but never silently ignored. The store keeps it, by
    location, for /debug/configz, the `meshd_config_unsupported` gauge and `analyze`."""

    origin: Origin
    key: ConfigKey
    api_version: str
    reason: str

    @property
    def group(self) -> str:
        return kinds.split_api_version(self.api_version)[0]

    @property
    def security(self) -> bool:
        """An access-control kind: what it asks for is not enforced (reported as an error)."""
        return kinds.is_security_group(self.group)

    def message(self) -> str:
        return f"{self.origin}: {self.key}: {self.reason}"


Parsed = ConfigObject | Rejection | Unsupported | None  # None: skipped quietly


def content_hash(doc: Any) -> str:
    data = json.dumps(doc, sort_keys=True, separators=(",", ":"), default=str).encode()
    return hashlib.sha256(data).hexdigest()[:16]


def node_essentials(doc: dict) -> dict:
    """What meshd keeps of a Node: its name and topology labels (names.TOPOLOGY_LABELS). The
    rest (status heartbeats, conditions, images, annotations, resourceVersion) would cost
    memory and, worse, turn every kubelet status update into a change of the object."""
    md = doc.get("metadata")
    if not isinstance(md, dict):
        md = {}
    labels = md.get("labels")
    if not isinstance(labels, dict):
        labels = {}
    meta: dict[str, Any] = {"name": md.get("name")}
    kept = {k: labels[k] for k in TOPOLOGY_LABELS if k in labels}
    if kept:
        meta["labels"] = kept
    return {"apiVersion": doc.get("apiVersion"), "kind": doc.get("kind"), "metadata": meta}


def _key_of(doc: dict, kind: kinds.Kind | None) -> ConfigKey | None:
    md = doc.get("metadata")
    if not isinstance(md, dict) or not isinstance(md.get("name"), str):
        return None
    ns = md.get("namespace")
    namespaced = kind.namespaced if kind else True
    namespace = (ns if isinstance(ns, str) and ns else DEFAULT_NAMESPACE) if namespaced else ""
    return ConfigKey(kind.key_kind if kind else str(doc.get("kind")), namespace, md["name"])


def parse_document(doc: Any, origin: Origin, *, decoded_json: bool = False) -> Parsed:
    """`decoded_json`: `doc` is fresh from a JSON decoder (an API server's response) and
    the caller keeps no reference into it: it already has JSON's types, so the
    normalising copy below is skipped (a sixth of the parse gate's CPU on a
    1,000-service cluster's initial lists; every check still runs)."""
    if doc is None:
        return None  # empty document (e.g. trailing ---)
    if not isinstance(doc, dict):
        return Rejection(origin, None, "", f"document is a {type(doc).__name__}, not a mapping with apiVersion and kind")
    if not decoded_json:
        # The API server's YAML-to-JSON view: string map keys, timestamps as strings.
        doc = as_json(doc)
    api_version, kind_name = doc.get("apiVersion"), doc.get("kind")
    missing = [f for f, v in (("apiVersion", api_version), ("kind", kind_name)) if not v]
    if missing:
        return Rejection(origin, _key_of(doc, None), missing[0], "Required value: every document needs apiVersion and kind")
    if not isinstance(api_version, str) or not isinstance(kind_name, str):
        bad = "apiVersion" if not isinstance(api_version, str) else "kind"
        return Rejection(origin, None, bad, "must be a string")

    group, version = kinds.split_api_version(api_version)
    kind = kinds.SERVED.get((group, kind_name))
    if kind is None:
        reason = kinds.unsupported_reason(group, kind_name)
        if reason is not None:
            key = _key_of(doc, None)
            if key is None:
                return Rejection(origin, None, "metadata.name", "Required value")
            if (group, kind_name) in kinds.CLUSTER_SCOPED_UNSERVED:
                key = ConfigKey(key.kind, "", key.name)
            return Unsupported(origin, key, api_version, reason)
        return None  # a Kubernetes kind meshd has no use for
    if kind is kinds.SECRET and not is_credential(doc):
        return None  # service account tokens, registry credentials, ...: not meshd's business
    key = _key_of(doc, kind)
    if version not in kind.versions:
        # Every error at once (checked against the preferred version), not one round per fix.
        return Rejection(origin, key, "apiVersion", f"{api_version} is not a served version of {kind_name} (want one of {', '.join(group + '/' + v if group else v for v in kind.versions)})",
                         errors=tuple(validate(doc, kind, normalized=True)))

    errors = validate(doc, kind, normalized=True)
    if errors:
        first = errors[0]
        reason = first.reason if len(errors) == 1 else f"{first.reason} (and {len(errors) - 1} more: " + "; ".join(f"{e.field}: {e.reason}" for e in errors[1:4]) + ")"
        return Rejection(origin, key, first.field, reason, errors=tuple(errors))
    assert key is not None  # validate() requires metadata.name
    if kind is kinds.NODE:
        # Only name and topology labels from here on: the content hash (generation) of a
        # Node moves with its labels, never with its status.
        doc = node_essentials(doc)

    md = doc.get("metadata") or {}
    extra: dict[str, Any] = {"creationTimestamp": str(md.get("creationTimestamp") or "")}
    if kind is kinds.SECRET:
        # Key material stays out of `spec` (debug views dump specs): see validation/secret.py.
        body, extra["credential"] = secret_body(doc)
    elif kind.custom:
        body = doc.get("spec") or {}
    else:  # Kubernetes kinds: keep spec and status (and EndpointSlice's top-level fields)
        body = {k: v for k, v in doc.items() if k not in ("apiVersion", "kind", "metadata")}
    return ConfigObject(
        kind=kind.key_kind,
        group=group,
        version=version,
        namespace=key.namespace,
        name=key.name,
        labels=dict(md.get("labels") or {}),
        annotations=dict(md.get("annotations") or {}),
        spec=body,
        origin=origin,
        generation=content_hash(doc),
        # Istio breaks ties between equal policies by age; files carry it if they have it.
        extra=extra,
    )
