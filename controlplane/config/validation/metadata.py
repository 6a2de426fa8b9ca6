"""apiVersion, kind and metadata: the part every Kubernetes object shares.

Follows apimachinery's ValidateObjectMeta: a name is required and must be a DNS name of the
flavour the kind asks for; labels and annotations are maps of strings; unknown metadata
fields are rejected as strict decoding would.
"""
from __future__ import annotations

from collections.abc import Callable

from ..kinds import Kind, split_api_version
from . import dns
from .errors import FieldError, child, invalid, map_key, required, type_name, unknown_field

_OBJECT_META_FIELDS = frozenset({
    "name", "generateName", "namespace", "selfLink", "uid", "resourceVersion", "generation",
    "creationTimestamp", "deletionTimestamp", "deletionGracePeriodSeconds", "labels",
    "annotations", "ownerReferences", "finalizers", "managedFields",
})

NameCheck = Callable[[str], bool]

# How each kind's name is checked (apimachinery's NameIsDNSSubdomain / Label / 1035Label).
_NAME_CHECKS: dict[str, tuple[NameCheck, str]] = {
    "Service": (dns.is_k8s_1035_label,
                "a DNS-1035 label must consist of lower case alphanumeric characters or '-', "
                "start with a letter, end with an alphanumeric character and be at most 63 characters"),
    "Namespace": (dns.is_k8s_label,
                  "a DNS-1123 label must consist of lower case alphanumeric characters or '-', "
                  "start and end with an alphanumeric character and be at most 63 characters"),
}
_SUBDOMAIN = (dns.is_k8s_subdomain,
              "a DNS-1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', "
              "start and end with an alphanumeric character and be at most 253 characters")


def validate_envelope(doc: dict, kind: Kind) -> list[FieldError]:
    errs: list[FieldError] = []
    api_version = doc.get("apiVersion")
    if not isinstance(api_version, str) or not api_version:
        errs.append(required("apiVersion") if api_version is None else
                    invalid("apiVersion", api_version, f"must be of type string, got {type_name(api_version)}"))
    else:
        group, version = split_api_version(api_version)
        expected = [f"{kind.group}/{v}" if kind.group else v for v in kind.versions]
        if group != kind.group or version not in kind.versions:
            errs.append(invalid("apiVersion", api_version, f"{kind.kind} is served as {', '.join(expected)}"))
    if doc.get("kind") != kind.kind:
        errs.append(required("kind") if doc.get("kind") is None else
                    invalid("kind", doc.get("kind"), f"expected {kind.kind}"))
    errs.extend(validate_metadata(doc.get("metadata"), kind))
    return errs


def validate_metadata(meta: object, kind: Kind) -> list[FieldError]:
    path = "metadata"
    if meta is None:
        return [required(child(path, "name"))]
    if not isinstance(meta, dict):
        return [invalid(path, meta, f"must be of type object, got {type_name(meta)}")]
    errs: list[FieldError] = []
    for key in meta:
        if key not in _OBJECT_META_FIELDS:
            errs.append(unknown_field(path, str(key)))

    name = meta.get("name")
    if name is None or name == "":
        errs.append(required(child(path, "name")))
    elif not isinstance(name, str):
        errs.append(invalid(child(path, "name"), name, f"must be of type string, got {type_name(name)}"))
    else:
        check, detail = _NAME_CHECKS.get(kind.kind, _SUBDOMAIN)
        if not check(name):
            errs.append(invalid(child(path, "name"), name, detail))

    namespace = meta.get("namespace")
    if namespace is not None:
        npath = child(path, "namespace")
        if not kind.namespaced:
            errs.append(FieldError(npath, "Forbidden: not allowed on this type"))
        elif not isinstance(namespace, str):
            errs.append(invalid(npath, namespace, f"must be of type string, got {type_name(namespace)}"))
        elif namespace and not dns.is_k8s_label(namespace):
            errs.append(invalid(npath, namespace, _NAME_CHECKS["Namespace"][1]))

    for field in ("labels", "annotations"):
        errs.extend(_string_map(meta.get(field), child(path, field)))
    labels = meta.get("labels")
    if isinstance(labels, dict):
        for key, message in dns.check_label_map({k: v for k, v in labels.items() if isinstance(v, str)}):
            errs.append(FieldError(map_key(child(path, "labels"), key), f"Invalid value: {message}"))
    return errs


def _string_map(value: object, path: str) -> list[FieldError]:
    if value is None:
        return []
    if not isinstance(value, dict):
        return [invalid(path, value, f"must be a map of strings, got {type_name(value)}")]
    return [
        invalid(map_key(path, k), v, f"must be of type string, got {type_name(v)}")
        for k, v in value.items()
        if not isinstance(v, str)
    ]
