"""A validator for the OpenAPI v3 structural-schema subset that Istio's CRDs use.

This is what the Kubernetes API server does with a CRD's `openAPIV3Schema` when an object
is applied with strict field validation: types, unknown fields, required fields, enums,
formats, bounds, `oneOf`/`anyOf`/`allOf`/`not`, list uniqueness and the CEL rules in
`x-kubernetes-validations` (evaluated through the table in `cel.py`).

Schemas are compiled once into `Node` trees (slots, pre-built regexes, rule predicates) so
validating a document is a plain walk. Nulls follow the API server: a null on a nullable
field is kept, on any other field it is pruned, i.e. treated as absent.
"""
from __future__ import annotations

import base64
import binascii
import datetime as _dt
import functools
import hashlib
import importlib.resources
import json
import re
from typing import Any

from . import cel
from .errors import FieldError, child, index, invalid, map_key, render, required, type_name, unknown_field

# CRD files shipped in controlplane/config/schemas/, by (group, kind).
CRD_FILES: dict[tuple[str, str], str] = {
    ("networking.istio.io", "Gateway"): "gateways.networking.istio.io.yaml",
    ("networking.istio.io", "VirtualService"): "virtualservices.networking.istio.io.yaml",
    ("networking.istio.io", "DestinationRule"): "destinationrules.networking.istio.io.yaml",
    ("networking.istio.io", "ServiceEntry"): "serviceentries.networking.istio.io.yaml",
    ("networking.istio.io", "Sidecar"): "sidecars.networking.istio.io.yaml",
    ("networking.istio.io", "WorkloadEntry"): "workloadentries.networking.istio.io.yaml",
    ("networking.istio.io", "WorkloadGroup"): "workloadgroups.networking.istio.io.yaml",
    ("networking.istio.io", "EnvoyFilter"): "envoyfilters.networking.istio.io.yaml",
    ("security.istio.io", "PeerAuthentication"): "peerauthentications.security.istio.io.yaml",
    ("telemetry.istio.io", "Telemetry"): "telemetries.telemetry.istio.io.yaml",
    ("security.istio.io", "AuthorizationPolicy"): "authorizationpolicies.security.istio.io.yaml",
    ("security.istio.io", "RequestAuthentication"): "requestauthentications.security.istio.io.yaml",
}

_INT_RANGES = {
    "int32": (-(1 << 31), (1 << 31) - 1),
    "uint32": (0, (1 << 32) - 1),
    "int64": (-(1 << 63), (1 << 63) - 1),
    "uint64": (0, (1 << 64) - 1),
}


class Node:
    """One compiled schema node. Attributes left None mean "no constraint"."""

    __slots__ = (
        "type", "nullable", "int_or_string", "preserve", "properties", "additional", "required",
        "enum", "format", "minimum", "maximum", "excl_min", "excl_max", "min_length", "max_length",
        "pattern", "min_items", "max_items", "min_props", "max_props", "items", "list_type",
        "list_keys", "exclusive", "one_of", "any_of", "all_of", "not_", "rules",
    )

    def __init__(self, s: dict) -> None:
        self.type: str | None = s.get("type")
        self.nullable = bool(s.get("nullable"))
        self.int_or_string = bool(s.get("x-kubernetes-int-or-string"))
        self.preserve = bool(s.get("x-kubernetes-preserve-unknown-fields"))
        props = s.get("properties")
        self.properties = {k: Node(v) for k, v in props.items()} if props else None
        ap = s.get("additionalProperties")
        # additionalProperties: true (or a preserve-unknown map) accepts anything.
        self.additional: Node | bool | None = Node(ap) if isinstance(ap, dict) else ap
        self.required = tuple(s.get("required") or ())
        self.enum = frozenset(s["enum"]) if "enum" in s and all(_hashable(e) for e in s["enum"]) else None
        self.format = s.get("format")
        self.minimum, self.excl_min = _bound(s, "minimum", "exclusiveMinimum")
        self.maximum, self.excl_max = _bound(s, "maximum", "exclusiveMaximum")
        self.min_length = s.get("minLength")
        self.max_length = s.get("maxLength")
        self.pattern = _compile_pattern(s.get("pattern"))
        self.min_items = s.get("minItems")
        self.max_items = s.get("maxItems")
        self.min_props = s.get("minProperties")
        self.max_props = s.get("maxProperties")
        self.items = Node(s["items"]) if isinstance(s.get("items"), dict) else None
        self.list_type = s.get("x-kubernetes-list-type")
        self.list_keys = tuple(s.get("x-kubernetes-list-map-keys") or ())
        one_of = s.get("oneOf")
        self.exclusive = _exclusive_keys(one_of) if one_of else None
        self.one_of = [Node(x) for x in one_of] if one_of and not self.exclusive else None
        # anyOf next to x-kubernetes-int-or-string only restates the two types: skip it.
        any_of = s.get("anyOf") if not self.int_or_string else None
        self.any_of = [Node(x) for x in any_of] if any_of else None
        self.all_of = [Node(x) for x in s["allOf"]] if s.get("allOf") else None
        self.not_ = Node(s["not"]) if isinstance(s.get("not"), dict) else None
        rules = []
        for r in s.get("x-kubernetes-validations") or ():
            predicate = cel.lookup(r.get("rule", ""))
            if predicate is not None:  # unknown rules are skipped, never fatal
                rules.append((predicate, r.get("message") or f"failed rule: {r.get('rule')}"))
        self.rules = tuple(rules)


def _hashable(v: Any) -> bool:
    return not isinstance(v, (dict, list))


def _bound(s: dict, key: str, excl_key: str) -> tuple[float | None, bool]:
    excl = s.get(excl_key)
    if isinstance(excl, (int, float)) and not isinstance(excl, bool):  # OpenAPI 3.1 numeric form
        return excl, True
    return s.get(key), bool(excl)


def _compile_pattern(p: str | None) -> re.Pattern | None:
    if not p:
        return None
    try:
        return re.compile(p)
    except re.error:  # an ECMA/RE2 construct Python lacks: skip rather than fail every document
        return None


def _exclusive_keys(one_of: list) -> tuple[str, ...] | None:
    """Recognise Istio's protobuf-oneof encoding and return the member field names.

    oneOf: [{not: {anyOf: [{required: [a]}, {required: [b]}]}}, {required: [a]}, {required: [b]}]
    means "at most one of a, b"; reporting it as such reads better than the generic oneOf text.
    """
    first = one_of[0]
    if not isinstance(first, dict) or set(first) != {"not"} or set(first["not"]) != {"anyOf"}:
        return None
    keys = []
    for alt in first["not"]["anyOf"]:
        if set(alt) != {"required"} or len(alt["required"]) != 1:
            return None
        keys.append(alt["required"][0])
    rest = one_of[1:]
    if len(rest) != len(keys) or any(set(r) != {"required"} or r["required"] != [k]
                                     for r, k in zip(rest, keys, strict=True)):
        return None
    return tuple(keys)


# --- type checks -------------------------------------------------------------------------

def _is_int(v: Any) -> bool:
    if isinstance(v, bool):
        return False
    return isinstance(v, int) or (isinstance(v, float) and v.is_integer())


def _type_ok(t: str, v: Any) -> bool:
    if t == "object":
        return isinstance(v, dict)
    if t == "string":
        return isinstance(v, str)
    if t == "array":
        return isinstance(v, list)
    if t == "integer":
        return _is_int(v)
    if t == "number":
        return isinstance(v, (int, float)) and not isinstance(v, bool)
    if t == "boolean":
        return isinstance(v, bool)
    return True


# --- the walk ----------------------------------------------------------------------------

def validate_node(node: Node, value: Any, path: str, errs: list[FieldError], strict: bool = True) -> None:
    """Append to `errs` every violation of `node` by `value` found at `path`.

    `strict=False` is used for oneOf/anyOf/not alternatives, which constrain values but do
    not declare fields, so unknown-field checks do not apply there.
    """
    if value is None:
        if not node.nullable:
            errs.append(invalid(path, value, f"must be of type {node.type or 'integer or string'}, got null"))
        return
    if node.int_or_string:
        if not (_is_int(value) or isinstance(value, str)):
            errs.append(invalid(path, value, f"must be an integer or a string, got {type_name(value)}"))
            return
    elif node.type and not _type_ok(node.type, value):
        errs.append(invalid(path, value, f"must be of type {node.type}, got {type_name(value)}"))
        return

    if node.enum is not None and _hashable(value) and value not in node.enum:
        supported = ", ".join(render(e) for e in sorted(node.enum, key=str))
        errs.append(FieldError(path, f"Unsupported value: {render(value)}: supported values: {supported}"))

    if isinstance(value, dict):
        _validate_object(node, value, path, errs, strict)
    elif isinstance(value, list):
        _validate_array(node, value, path, errs, strict)
    elif isinstance(value, str):
        _validate_string(node, value, path, errs)
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        _validate_number(node, value, path, errs)

    if node.exclusive:
        present = [k for k in node.exclusive if isinstance(value, dict) and value.get(k) is not None]
        if len(present) > 1:
            errs.append(FieldError(
                path, f"Forbidden: only one of {', '.join(node.exclusive)} may be set (found {', '.join(present)})"))
    if node.one_of:
        matched = sum(1 for alt in node.one_of if _satisfies(alt, value))
        if matched != 1:
            errs.append(invalid(path, value, f"must validate one and only one schema (oneOf), {matched} matched"))
    if node.any_of and not any(_satisfies(alt, value) for alt in node.any_of):
        errs.append(invalid(path, value, "must validate at least one schema (anyOf)"))
    if node.all_of:
        for alt in node.all_of:
            validate_node(alt, value, path, errs, strict=False)
    if node.not_ is not None and _satisfies(node.not_, value):
        errs.append(invalid(path, value, "must not validate the schema (not)"))

    for predicate, message in node.rules:
        if not cel.holds(predicate, value):
            errs.append(invalid(path, value, message))


def _satisfies(node: Node, value: Any) -> bool:
    errs: list[FieldError] = []
    validate_node(node, value, "", errs, strict=False)
    return not errs


def _validate_object(node: Node, value: dict, path: str, errs: list[FieldError], strict: bool) -> None:
    for name in node.required:
        if value.get(name) is None:
            errs.append(required(child(path, name)))
    props = node.properties
    additional = node.additional
    for key, v in value.items():
        prop = props.get(key) if props else None
        if prop is not None:
            if v is None and not prop.nullable:
                continue  # pruned by the API server; `required` above already spoke if needed
            validate_node(prop, v, child(path, key), errs, strict)
        elif isinstance(additional, Node):
            validate_node(additional, v, map_key(path, key), errs, strict)
        elif strict and not node.preserve and additional is not True:
            errs.append(unknown_field(path, str(key)))
    n = len(value)
    if node.min_props is not None and n < node.min_props:
        errs.append(invalid(path, value, f"must have at least {node.min_props} properties"))
    if node.max_props is not None and n > node.max_props:
        errs.append(FieldError(path, f"Too many: {n}: must have at most {node.max_props} properties"))


def _validate_array(node: Node, value: list, path: str, errs: list[FieldError], strict: bool) -> None:
    n = len(value)
    if node.min_items is not None and n < node.min_items:
        errs.append(invalid(path, value, f"must have at least {node.min_items} items"))
    if node.max_items is not None and n > node.max_items:
        errs.append(FieldError(path, f"Too many: {n}: must have at most {node.max_items} items"))
    if node.items is not None:
        for i, item in enumerate(value):
            validate_node(node.items, item, index(path, i), errs, strict)
    if node.list_type in ("set", "map"):
        seen: set[object] = set()
        for i, item in enumerate(value):
            key: object
            if node.list_type == "map" and isinstance(item, dict):
                key = tuple((k, repr(item.get(k))) for k in node.list_keys)
                shown = ", ".join(f"{k}={render(item.get(k))}" for k in node.list_keys)
            else:
                key, shown = repr(item), render(item)
            if key in seen:
                errs.append(FieldError(index(path, i), f"Duplicate value: {shown}"))
            seen.add(key)


def _validate_string(node: Node, value: str, path: str, errs: list[FieldError]) -> None:
    if node.min_length is not None and len(value) < node.min_length:
        errs.append(invalid(path, value, f"should be at least {node.min_length} chars long"))
    if node.max_length is not None and len(value) > node.max_length:
        errs.append(FieldError(path, f"Too long: may not be longer than {node.max_length} characters"))
    if node.pattern is not None and not node.pattern.search(value):
        errs.append(invalid(path, value, f"should match '{node.pattern.pattern}'"))
    fmt = node.format
    if fmt == "byte":
        try:
            base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            errs.append(invalid(path, value, "must be a base64-encoded string"))
    elif fmt == "date-time":
        try:
            _dt.datetime.fromisoformat(value)
        except ValueError:
            errs.append(invalid(path, value, "must be an RFC 3339 date-time"))


def _validate_number(node: Node, value: float, path: str, errs: list[FieldError]) -> None:
    if node.minimum is not None:
        if node.excl_min and value <= node.minimum:
            errs.append(invalid(path, value, f"must be greater than {render(node.minimum)}"))
        elif value < node.minimum:
            errs.append(invalid(path, value, f"must be greater than or equal to {render(node.minimum)}"))
    if node.maximum is not None:
        if node.excl_max and value >= node.maximum:
            errs.append(invalid(path, value, f"must be less than {render(node.maximum)}"))
        elif value > node.maximum:
            errs.append(invalid(path, value, f"must be less than or equal to {render(node.maximum)}"))
    bounds = _INT_RANGES.get(node.format or "")
    if bounds and not bounds[0] <= value <= bounds[1]:
        errs.append(invalid(path, value, f"does not fit in {node.format}"))


# --- loading -----------------------------------------------------------------------------

@functools.cache
def _crd(filename: str) -> dict:
    return load_crd(filename)


def load_crd(path: str) -> dict:
    """A bundled CRD, `path` under controlplane/config/schemas/ (e.g. `gateway-api/...`)."""
    data = importlib.resources.files("controlplane.config").joinpath("schemas", *path.split("/")).read_bytes()
    copy = _json_copy(path, data)
    if copy is not None:
        return copy
    import yaml  # only without the build's JSON copy (a source tree never built)

    return yaml.load(data.decode("utf-8"), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))


def _json_copy(path: str, data: bytes) -> dict | None:
    """The build's JSON copy of a CRD file (setup.py schemas_as_json: read some forty
    times faster than the YAML, at start-up), if it was made from exactly these bytes."""
    try:
        text = importlib.resources.files("controlplane").joinpath("_gen", "schemas", *f"{path}.json".split("/")).read_text("utf-8")
    except OSError:
        return None
    doc = json.loads(text)
    if not isinstance(doc, dict) or doc.get("sha256") != hashlib.sha256(data).hexdigest():
        return None
    crd = doc.get("crd")
    return crd if isinstance(crd, dict) else None


@functools.cache
def schema_for(group: str, kind: str, version: str) -> Node | None:
    """The compiled `openAPIV3Schema` of a CRD version, or None if we ship no such schema."""
    filename = CRD_FILES.get((group, kind))
    if filename is None:
        return None
    for v in _crd(filename)["spec"]["versions"]:
        if v.get("name") == version:
            return Node(v["schema"]["openAPIV3Schema"])
    return None


def served_versions(group: str, kind: str) -> tuple[str, ...]:
    filename = CRD_FILES.get((group, kind))
    if filename is None:
        return ()
    return tuple(v["name"] for v in _crd(filename)["spec"]["versions"] if v.get("served", True))


# Fields every object carries besides its schema'd body; checked by metadata.py instead.
_OBJECT_FIELDS = ("apiVersion", "kind", "metadata")


def validate_document(doc: dict, root: Node) -> list[FieldError]:
    """Validate a whole custom resource (spec, status, unknown top-level fields)."""
    errs: list[FieldError] = []
    body = {k: v for k, v in doc.items() if k not in _OBJECT_FIELDS}
    validate_node(root, body, "", errs)
    return errs
