"""AuthorizationPolicy semantics beyond the schema, after Istio's ValidateAuthorizationPolicy
(pkg/config/validation) and the value checks of pkg/config/security.

Istio's checks, each error on the field it is about: the policy's target (selector or
targetRef(s) to a kind Istio accepts), CUSTOM needs rules and a provider and cannot use
identity fields, a provider needs CUSTOM, DENY needs rules, `from`/`to` entries must not be
empty, IP blocks must be addresses or CIDRs, ports numbers, values non-empty, path
templates supported, `when` keys known with valid values, the `istio.io/dry-run`
annotation a boolean on ALLOW/DENY policies.

meshd adds checks for values Istio accepts but that can never match anything, so a policy
an operator believes in would silently do nothing (docs/policy-validation.md):
- `*` is a wildcard only as the whole value, its first or its last character (Istio
  builds exact, prefix or suffix matchers; a `*` elsewhere is a literal);
- a principal is written without `spiffe://` (Istio adds it: `spiffe://spiffe://...`);
- principals and namespaces hold no whitespace.
"""
from __future__ import annotations

import ipaddress
import re

from .errors import FieldError, child, index, invalid
from .istio_common import get

DRY_RUN_ANNOTATION = "istio.io/dry-run"

# Source fields, by the name Istio's CUSTOM check uses for them.
_IDENTITY_FIELDS = ("namespaces", "notNamespaces", "serviceAccounts", "notServiceAccounts", "principals",
                    "notPrincipals", "requestPrincipals", "notRequestPrincipals")
_SOURCE_FIELDS = _IDENTITY_FIELDS + ("ipBlocks", "notIpBlocks", "remoteIpBlocks", "notRemoteIpBlocks", "trustDomains",
                                     "notTrustDomains")
_IP_FIELDS = ("ipBlocks", "notIpBlocks", "remoteIpBlocks", "notRemoteIpBlocks")
_PRINCIPAL_FIELDS = ("principals", "notPrincipals")
_WILDCARD_SOURCE_FIELDS = ("principals", "notPrincipals", "requestPrincipals", "notRequestPrincipals", "namespaces",
                           "notNamespaces", "trustDomains", "notTrustDomains")
_OPERATION_FIELDS = ("hosts", "notHosts", "ports", "notPorts", "methods", "notMethods", "paths", "notPaths")
_PORT_FIELDS = ("ports", "notPorts")
_PATH_FIELDS = ("paths", "notPaths")

# Istio's policy targets (pkg/config/validation allowedTargetRefs): (group, kind).
ALLOWED_TARGET_REFS = (
    ("", "Service"),
    ("networking.istio.io", "ServiceEntry"),
    ("gateway.networking.k8s.io", "Gateway"),
    ("gateway.networking.k8s.io", "GatewayClass"),
)

# Path templates: `{*}` and `{**}` only; named variables, `{}` and bare `*`/`**` segments
# next to a template are not supported (security.CheckValidPathTemplate).
_UNSUPPORTED_PATH_TEMPLATE = re.compile(r"/\{\w+=\*\*?\}|\{\w*\}|/\*\*?|\*\*?/")
_WHITESPACE = re.compile(r"\s")

# Go's strconv.ParseBool.
_BOOLS = frozenset({"1", "t", "T", "TRUE", "true", "True", "0", "f", "F", "FALSE", "false", "False"})


def validate_authorization_policy(spec: dict, metadata: dict) -> list[FieldError]:
    errs: list[FieldError] = []
    action = get(spec, "action", "ALLOW")
    rules = get(spec, "rules")
    check_policy_target(spec, errs)
    _check_dry_run(metadata, action, errs)

    provider = get(spec, "provider")
    if action == "CUSTOM":
        if not rules:
            errs.append(FieldError("spec.rules", "Required value: CUSTOM action without `rules` is meaningless as it "
                                                 "will never be triggered, add an empty rule `{}` if you want it be "
                                                 "triggered for every request"))
        elif not get(provider, "name"):
            errs.append(FieldError("spec.provider.name", "Required value: `provider.name` must not be empty with "
                                                         "action CUSTOM"))
        _check_custom_rules(rules or [], errs)
    elif provider is not None:
        errs.append(FieldError("spec.provider", f"Forbidden: `provider` must not be with non CUSTOM action, found {action}"))
    if action == "DENY" and not rules:
        errs.append(FieldError("spec.rules", "Required value: DENY action without `rules` is meaningless as it will "
                                             "never be triggered, add an empty rule `{}` if you want it be triggered "
                                             "for every request"))

    for i, rule in enumerate(rules or []):
        _check_rule(rule or {}, index("spec.rules", i), errs)
    return errs


def check_policy_target(spec: dict, errs: list[FieldError]) -> None:
    """`targetRef` / `targetRefs` (the schema already allows only one of them and selector)."""
    target = get(spec, "targetRef")
    if target is not None:
        _check_target_ref(target, "spec.targetRef", errs)
    for i, ref in enumerate(get(spec, "targetRefs", [])):
        _check_target_ref(ref, index("spec.targetRefs", i), errs)


def _check_target_ref(ref: dict, path: str, errs: list[FieldError]) -> None:
    group, kind = get(ref, "group", ""), get(ref, "kind", "")
    if (group, kind) not in ALLOWED_TARGET_REFS:
        allowed = ", ".join(f"{g or 'core'}/{k}" for g, k in ALLOWED_TARGET_REFS)
        errs.append(FieldError(path, f"Unsupported value: {group or 'core'}/{kind}: targetRef must be to one of "
                                     f"{allowed}"))


def _check_dry_run(metadata: dict, action: str, errs: list[FieldError]) -> None:
    annotations = metadata.get("annotations")
    if not isinstance(annotations, dict):
        annotations = {}
    if DRY_RUN_ANNOTATION not in annotations:
        return
    path = f"metadata.annotations[{DRY_RUN_ANNOTATION}]"
    value = annotations[DRY_RUN_ANNOTATION]
    if action not in ("ALLOW", "DENY"):
        errs.append(FieldError(path, f"Forbidden: the annotation {DRY_RUN_ANNOTATION} currently only supports "
                                     f"action ALLOW/DENY, found action {action}"))
    elif str(value) not in _BOOLS:
        errs.append(invalid(path, value, "must be a boolean (true or false)"))


def _check_custom_rules(rules: list, errs: list[FieldError]) -> None:
    for i, rule in enumerate(rules):
        rpath = index("spec.rules", i)
        for j, frm in enumerate(get(rule, "from", [])):
            source = get(frm, "source", {})
            for name in _IDENTITY_FIELDS:
                if get(source, name):
                    errs.append(FieldError(child(child(index(child(rpath, "from"), j), "source"), name),
                                           "Forbidden: currently not supported with CUSTOM action"))
        for j, cond in enumerate(get(rule, "when", [])):
            key = get(cond, "key", "")
            if key in ("source.namespace", "source.serviceAccount", "source.principal") or key.startswith("request.auth."):
                errs.append(FieldError(child(index(child(rpath, "when"), j), "key"),
                                       f"Forbidden: {key} is currently not supported with CUSTOM action"))


def _check_rule(rule: dict, path: str, errs: list[FieldError]) -> None:
    froms = get(rule, "from")
    if froms is not None and len(froms) == 0:
        errs.append(FieldError(child(path, "from"), "Invalid value: `from` must not be empty; leave it out to match "
                                                    "any source"))
    for j, frm in enumerate(froms or []):
        fpath = index(child(path, "from"), j)
        source = get(frm, "source")
        if source is None:
            errs.append(FieldError(child(fpath, "source"), "Required value: `from.source` must not be nil"))
            continue
        _check_source(source, child(fpath, "source"), errs)

    tos = get(rule, "to")
    if tos is not None and len(tos) == 0:
        errs.append(FieldError(child(path, "to"), "Invalid value: `to` must not be empty; leave it out to match any "
                                                  "operation"))
    for j, to in enumerate(tos or []):
        tpath = index(child(path, "to"), j)
        operation = get(to, "operation")
        if operation is None:
            errs.append(FieldError(child(tpath, "operation"), "Required value: `to.operation` must not be nil"))
            continue
        _check_operation(operation, child(tpath, "operation"), errs)

    for j, cond in enumerate(get(rule, "when", [])):
        check_condition(cond or {}, index(child(path, "when"), j), errs)


def _check_source(source: dict, path: str, errs: list[FieldError]) -> None:
    if not any(get(source, name) for name in _SOURCE_FIELDS):
        errs.append(FieldError(path, "Required value: `from.source` must not be empty"))
    for name in _SOURCE_FIELDS:
        values = get(source, name, [])
        fpath = child(path, name)
        for k, value in enumerate(values):
            vpath = index(fpath, k)
            if value == "":
                errs.append(FieldError(vpath, f"Invalid value: \"\": empty value not allowed, found in {name}"))
                continue
            if name in _IP_FIELDS:
                err = ip_error(value)
                if err:
                    errs.append(invalid(vpath, value, err))
            elif name in ("serviceAccounts", "notServiceAccounts"):
                err = _service_account_error(value)
                if err:
                    errs.append(invalid(vpath, value, err))
            else:
                err = _principal_error(value) if name in _PRINCIPAL_FIELDS else None
                err = err or (wildcard_error(value) if name in _WILDCARD_SOURCE_FIELDS else None)
                if err is None and name in ("namespaces", "notNamespaces", "requestPrincipals",
                                            "notRequestPrincipals") and _WHITESPACE.search(value):
                    err = "must not contain whitespace"
                if err:
                    errs.append(invalid(vpath, value, err))


def _check_operation(op: dict, path: str, errs: list[FieldError]) -> None:
    if not any(get(op, name) for name in _OPERATION_FIELDS):
        errs.append(FieldError(path, "Required value: `to.operation` must not be empty"))
    for name in _OPERATION_FIELDS:
        for k, value in enumerate(get(op, name, [])):
            vpath = index(child(path, name), k)
            if value == "":
                errs.append(FieldError(vpath, f"Invalid value: \"\": empty value not allowed, found in {name}"))
                continue
            if name in _PORT_FIELDS:
                err = port_error(value)
            elif name in _PATH_FIELDS and is_path_template(value):
                err = None if not _UNSUPPORTED_PATH_TEMPLATE.search(value) else (
                    f"invalid or unsupported path template, found in {name}: only {{*}} (one segment) and {{**}} "
                    "(any segments) are supported")
            else:
                err = wildcard_error(value)
            if err:
                errs.append(invalid(vpath, value, err))


def check_condition(cond: dict, path: str, errs: list[FieldError]) -> None:
    """One `when` condition: a key Istio documents, and values valid for it."""
    key = get(cond, "key", "")
    if not key:
        errs.append(FieldError(child(path, "key"), "Required value: `key` must not be empty"))
        return
    values, not_values = get(cond, "values", []), get(cond, "notValues", [])
    if not values and not not_values:
        errs.append(FieldError(path, f"Required value: at least one of `values` or `notValues` must be set for key {key}"))
        return
    key_err = attribute_key_error(key)
    if key_err:
        errs.append(invalid(child(path, "key"), key, key_err))
        return
    for field_name, items in (("values", values), ("notValues", not_values)):
        for k, value in enumerate(items):
            err = attribute_value_error(key, value)
            if err:
                errs.append(invalid(index(child(path, field_name), k), value, err))


# --- values (pkg/config/security) ---------------------------------------------------------

_MAP_KEYS = ("request.headers", "request.auth.claims", "experimental.envoy.filters.")
_PLAIN_KEYS = frozenset({"source.namespace", "source.principal", "request.auth.principal", "request.auth.audiences",
                         "request.auth.presenter", "connection.sni", "source.serviceAccount", "source.trustDomain"})
_IP_KEYS = frozenset({"source.ip", "remote.ip", "destination.ip"})


def attribute_key_error(key: str) -> str | None:
    if key.startswith(_MAP_KEYS):
        open_ = key.find("[")
        if key.endswith("]") and 0 < open_ < len(key) - 2:
            return None
        return f"bad key ({key}): should have format a[b]"
    if key in _PLAIN_KEYS or key in _IP_KEYS or key == "destination.port":
        return None
    if key == "destination.namespace":
        return f"attribute {key} is replaced by the metadata.namespace"
    if key.startswith("destination.labels"):
        return f"attribute {key} is replaced by the workload selector"
    if key in ("destination.name", "destination.user"):
        return f"deprecated attribute {key}: only supported in v1alpha1"
    return f"unknown attribute: {key}"


def attribute_value_error(key: str, value: str) -> str | None:
    if value == "":
        return f"empty value not allowed, found in {key}"
    if key in _IP_KEYS:
        return ip_error(value)
    if key == "destination.port":
        return port_error(value)
    if key == "source.principal":
        return _principal_error(value) or wildcard_error(value)
    if key in ("source.namespace", "request.auth.principal"):
        return wildcard_error(value)
    return None


def ip_error(value: str) -> str | None:
    """An IP address or a CIDR block (Go's netip.ParseAddr / ParsePrefix)."""
    if "/" in value:
        address, _, bits = value.partition("/")
        try:
            ipaddress.ip_network(value, strict=False)
        except ValueError:
            return f"bad CIDR range ({value}): want an IPv4 or IPv6 address and a prefix length, e.g. 10.0.0.0/8"
        if not bits.isdigit() or (len(bits) > 1 and bits[0] == "0") or "%" in address:
            return f"bad CIDR range ({value}): prefix length must be a plain decimal number"
        return None
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return f"bad IP address ({value})"
    return None


def port_error(value: str) -> str | None:
    if value.isascii() and value.isdigit() and int(value) <= 65535:
        return None
    return f"bad port ({value}): must be a number in 0..65535"


def is_path_template(value: str) -> bool:
    return "{*}" in value or "{**}" in value


def wildcard_error(value: str) -> str | None:
    """Istio matches `*` (anything), `*suffix` and `prefix*`; a `*` anywhere else is a
    literal character, so the value matches nothing anyone meant."""
    if value == "*" or "*" not in value:
        return None
    inner = value[1:] if value.startswith("*") else value[:-1] if value.endswith("*") else value
    if "*" in inner:
        return ("wildcard * is supported only as the whole value, its first or its last character "
                "(a * elsewhere is matched literally and matches nothing)")
    return None


def _principal_error(value: str) -> str | None:
    if value.lower().startswith("spiffe://"):
        return ("a principal is written without the spiffe:// prefix (e.g. cluster.local/ns/default/sa/sleep); "
                "Istio adds it, so this value would never match")
    if _WHITESPACE.search(value):
        return "a principal must not contain whitespace"
    return None


def _service_account_error(value: str) -> str | None:
    """`name` (the policy's namespace) or `namespace/name`, no wildcards."""
    parts = value.split("/")
    if len(parts) > 2 or any(not p for p in parts):
        return "must be a service account name or namespace/name"
    if "*" in value or _WHITESPACE.search(value):
        return "wildcards and whitespace are not supported in serviceAccounts"
    return None
