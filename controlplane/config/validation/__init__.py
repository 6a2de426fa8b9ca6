"""Validation of Istio and Kubernetes documents before they enter the config store.

    errors = validate(doc, kind)   # [] when the document is acceptable

Istio kinds go through the same two gates as on a cluster: the CRD's structural schema
(`schema.py`, with CEL rules from `cel.py`) as the API server applies it, then, only if
that passes, Istio's own semantic checks (`gateway.py`, `virtualservice.py`,
`destinationrule.py`, `authorization.py`, `requestauthentication.py`) as its validating
webhook applies them. Kubernetes kinds get light
hand-written checks (`kubernetes.py`). Every kind gets apiVersion/kind/metadata checks
(`metadata.py`). Errors name the field path and the reason; the caller adds the file and
object name.
"""
from __future__ import annotations

import datetime as _dt
import json
from collections.abc import Callable
from typing import Any

from ...names import GATEWAY_API_GROUP
from ..kinds import Kind, split_api_version
from . import kubernetes
from .authorization import validate_authorization_policy
from .destinationrule import validate_destination_rule
from .envoyfilter import validate_envoy_filter
from .errors import FieldError, type_name
from .gateway import validate_gateway
from .gateway_api import validate_gateway_api
from .metadata import validate_envelope
from .requestauthentication import validate_request_authentication
from .schema import schema_for, validate_document
from .secret import validate_secret
from .serviceentry import validate_service_entry
from .sidecar import validate_sidecar
from .telemetry import validate_telemetry
from .virtualservice import validate_virtual_service
from .workloadentry import validate_workload_entry, validate_workload_group

__all__ = ["FieldError", "as_json", "validate"]

# (spec, metadata) -> errors; run only on documents that passed the structural schema.
_ISTIO_SEMANTICS: dict[str, Callable[[dict, dict], list[FieldError]]] = {
    "Gateway": lambda spec, meta: validate_gateway(spec, meta.get("name")),
    "VirtualService": lambda spec, meta: validate_virtual_service(spec, meta.get("namespace")),
    "DestinationRule": lambda spec, meta: validate_destination_rule(spec, meta.get("namespace")),
    "Sidecar": lambda spec, meta: validate_sidecar(spec, meta.get("namespace")),
    "ServiceEntry": lambda spec, meta: validate_service_entry(spec, meta.get("namespace")),
    "WorkloadEntry": lambda spec, meta: validate_workload_entry(spec),
    "WorkloadGroup": lambda spec, meta: validate_workload_group(spec),
    "EnvoyFilter": lambda spec, meta: validate_envoy_filter(spec),
    "Telemetry": lambda spec, meta: validate_telemetry(spec),
    "AuthorizationPolicy": validate_authorization_policy,
    "RequestAuthentication": validate_request_authentication,
}

_KUBERNETES: dict[tuple[str, str], Callable[[dict], list[FieldError]]] = {
    ("", "Namespace"): kubernetes.validate_namespace,
    ("", "Service"): kubernetes.validate_service,
    ("", "Pod"): kubernetes.validate_pod,
    ("", "Node"): kubernetes.validate_node,
    ("discovery.k8s.io", "EndpointSlice"): kubernetes.validate_endpoint_slice,
    ("", "Secret"): validate_secret,
}


def validate(doc: dict, kind: Kind, *, normalized: bool = False) -> list[FieldError]:
    """Check one parsed YAML document of the given kind; return its errors ([] if valid).
    `normalized`: the caller has already made `doc` JSON-typed (`as_json`, or a JSON decoder)."""
    if not isinstance(doc, dict):
        return [FieldError("", f"Invalid value: document must be an object, got {type_name(doc)}")]
    if not normalized:
        doc = as_json(doc)
    errs = validate_envelope(doc, kind)

    k8s = _KUBERNETES.get((kind.group, kind.kind))
    if k8s is not None:
        return errs + k8s(doc)

    _, version = split_api_version(str(doc.get("apiVersion") or ""))
    if version not in kind.versions:  # already reported; validate against the preferred version
        version = kind.versions[0]
    if kind.group == GATEWAY_API_GROUP:
        return errs + validate_gateway_api(doc, kind, version)
    root = schema_for(kind.group, kind.kind, version)
    if root is None:
        return errs + [FieldError("kind", f"Invalid value: no schema for {kind.group}/{version} {kind.kind}")]
    structural = validate_document(doc, root)
    if structural:
        return errs + structural
    semantics = _ISTIO_SEMANTICS.get(kind.kind)
    if semantics is not None:
        meta = doc.get("metadata")
        if not isinstance(meta, dict):
            meta = {}
        errs += semantics(doc.get("spec") or {}, meta)
    return errs


def as_json(value: Any) -> Any:
    """A copy of a PyYAML value as the API server sees it after its YAML-to-JSON step.

    PyYAML yields int and bool map keys (`portLevelMtls: {8080: ...}`, a header named `on`)
    and datetime objects for unquoted timestamps; Kubernetes turns keys into strings and
    reads timestamps as plain strings. Normalising once keeps every check below on JSON types.
    """
    if isinstance(value, dict):
        return {_json_key(k): as_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [as_json(v) for v in value]
    if isinstance(value, (_dt.datetime, _dt.date)):
        return value.isoformat().replace("+00:00", "Z")
    return value


def _json_key(key: Any) -> str:
    if isinstance(key, str):
        return key
    if isinstance(key, (bool, int, float)) or key is None:
        return json.dumps(key)
    return str(key)
