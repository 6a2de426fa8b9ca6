"""Checks shared by the Istio kinds, after istio/pkg/config/validation (validation.go, agent/).

These run only on documents that passed the structural schema, so field types are known to
be right; a None still means "absent" (the API server prunes nulls). Messages keep Istio's
wording so they can be searched for in Istio's docs and issues.
"""
from __future__ import annotations

import re
import warnings
from http import HTTPStatus
from typing import Any

from . import dns, durations
from .errors import FieldError, child, index, invalid, map_key

MESH_GATEWAY = "mesh"


def get(obj: Any, key: str, default: Any = None) -> Any:
    """obj[key] for a dict that may be None, with nulls read as absent."""
    if not isinstance(obj, dict):
        return default
    value = obj.get(key)
    return default if value is None else value


def check_port(number: Any, path: str, errs: list[FieldError]) -> bool:
    if isinstance(number, (int, float)) and not isinstance(number, bool) and 1 <= number <= 65535:
        return True
    errs.append(invalid(path, number, f"port number {number} must be in the range 1..65535"))
    return False


def check_duration(value: Any, path: str, errs: list[FieldError]) -> None:
    """Istio's ValidateDuration: at least 1ms, and no finer than milliseconds."""
    try:
        nanos = durations.parse_duration(value)
    except ValueError as e:
        errs.append(invalid(path, value, str(e)))
        return
    if nanos < durations.MILLISECOND:
        errs.append(invalid(path, value, "duration must be greater than 1ms"))
    elif nanos % durations.MILLISECOND:
        errs.append(invalid(path, value, "only durations to ms precision are supported"))


def check_percent(value: Any, path: str, errs: list[FieldError]) -> None:
    if value is not None and not 0 <= value <= 100:
        errs.append(invalid(path, value, f"percentage {value} is not in range 0..100"))


def check_percentage(pct: Any, path: str, errs: list[FieldError]) -> None:
    """A networking.Percent message: 0, or 0.0001..100."""
    value = get(pct, "value")
    if value is None:
        return
    if value < 0 or value > 100 or 0 < value < 0.0001:
        errs.append(invalid(child(path, "value"), value, f"percentage {value} is neither 0.0, nor in range [0.0001, 100.0]"))


def check_labels(labels: Any, path: str, errs: list[FieldError]) -> None:
    for key, message in dns.check_label_map(labels or {}, max_value_length=None):
        errs.append(FieldError(map_key(path, key), f"Invalid value: {message}"))


def check_subset_name(name: Any, path: str, errs: list[FieldError]) -> None:
    if not name:
        errs.append(FieldError(path, "Required value: subset name cannot be empty"))
    elif not dns.is_istio_label(name):
        errs.append(invalid(path, name, f"subset name is invalid: {name}"))


def check_destination(dest: Any, path: str, errs: list[FieldError]) -> None:
    """A route's Destination: host (a wildcard domain, not `*`), subset name and port."""
    if not isinstance(dest, dict):
        return
    host = get(dest, "host", "")
    if host == "*":
        errs.append(invalid(child(path, "host"), host, "invalid destination host *"))
    else:
        err = dns.check_wildcard_domain(host)
        if err:
            errs.append(invalid(child(path, "host"), host, err))
    if get(dest, "subset"):
        check_subset_name(dest["subset"], child(path, "subset"), errs)
    port = get(dest, "port")
    if port is not None:
        check_port(get(port, "number", 0), child(child(path, "port"), "number"), errs)


def check_gateway_names(names: list, path: str, errs: list[FieldError]) -> None:
    """`gateways` entries: `name`, `namespace/name`, or the reserved `mesh`."""
    for i, name in enumerate(names):
        p = index(path, i)
        ns, slash, gw = name.partition("/")
        if not slash:
            # Legacy `name.namespace` FQDN form is only a warning in Istio; `mesh` passes here too.
            err = dns.check_fqdn(name)
            if err:
                errs.append(invalid(p, name, err))
            continue
        if not ns or not gw:
            errs.append(invalid(p, name, "config namespace and gateway name cannot be empty"))
            continue
        if not dns.is_istio_label(ns):
            errs.append(invalid(p, name, f"invalid value for namespace: \"{ns}\""))
        if not dns.is_istio_label(gw):
            errs.append(invalid(p, name, f"invalid value for gateway name: \"{gw}\""))


def check_export_to(namespace: str | None, export_to: list | None, path: str, errs: list[FieldError],
                    service_entry: bool = False, dr_with_selector: bool = False) -> None:
    if not export_to:
        return
    seen: set[str] = set()
    for i, entry in enumerate(export_to):
        p = index(path, i)
        key = (namespace or ".") if entry == "." else entry
        if key in seen:
            errs.append(invalid(p, entry, f"duplicate entries in exportTo for entry {entry}"))
            continue
        if entry == "~" and service_entry:
            seen.add(key)
            continue
        err = _check_visibility(key)
        if err:
            errs.append(invalid(p, entry, err))
        else:
            seen.add(key)
    if dr_with_selector and seen:
        own = namespace or "."
        if own not in seen:
            errs.append(FieldError(path, "destination rule with workload selector cannot have exportTo beyond current namespace"))
        elif len(seen) > 1:
            errs.append(FieldError(path, "destination rule with workload selector cannot have multiple entries in exportTo"))
    if "*" in seen and len(export_to) > 1:
        errs.append(FieldError(path, "cannot have both public (*) and non-public exportTo values for a resource"))
    if "~" in seen and len(export_to) > 1:
        errs.append(FieldError(path, "cannot export service entry to no one (~) and someone"))


def _check_visibility(value: str) -> str | None:
    if value in (".", "*"):
        return None
    if value == "~":
        return "exportTo ~ (none) is not allowed for Istio configuration objects"
    if not dns.is_istio_label(value):
        return "only .,*, or a valid DNS 1123 label is allowed as exportTo entry"
    return None


# --- regular expressions -----------------------------------------------------------------

# Envoy compiles these with RE2. Python's `re` is the approximation: constructs RE2 rejects
# but Python accepts (look-around, back-references) are refused explicitly, and RE2-only
# syntax Python lacks (\p{..} classes, [[:alpha:]]) is accepted without compiling.
_RE2_UNSUPPORTED = re.compile(r"\(\?<?[=!]|\\[1-9]")
_RE2_ONLY = re.compile(r"\\[pP]|\[\[:|\\[zC]")
MAX_REGEX_LENGTH = 1024


def check_regex(pattern: str, path: str, errs: list[FieldError]) -> None:
    if len(pattern) > MAX_REGEX_LENGTH:
        errs.append(invalid(path, pattern, f"regex is too large, max length allowed is {MAX_REGEX_LENGTH}"))
        return
    if _RE2_UNSUPPORTED.search(pattern):
        errs.append(invalid(path, pattern, "look-around and back-references are not supported; "
                                           "Istio uses RE2 style regex-based match (https://github.com/google/re2/wiki/Syntax)"))
        return
    if _RE2_ONLY.search(pattern):
        return
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # FutureWarning on nested sets etc.
            re.compile(pattern)
    except re.error as e:
        errs.append(invalid(path, pattern, f"{e}; Istio uses RE2 style regex-based match "
                                           "(https://github.com/google/re2/wiki/Syntax)"))


def check_string_match_regex(match: Any, path: str, errs: list[FieldError]) -> None:
    """A StringMatch whose `regex` member must be a non-empty, compilable RE2 pattern."""
    if not isinstance(match, dict) or "regex" not in match or match["regex"] is None:
        return
    regex = match["regex"]
    if regex == "":
        errs.append(invalid(child(path, "regex"), regex, "regex string match should not be empty"))
    else:
        check_regex(regex, child(path, "regex"), errs)


def is_regex_match(match: Any) -> bool:
    return isinstance(match, dict) and match.get("regex") is not None


# --- HTTP headers --------------------------------------------------------------------------

_TCHARS = re.compile(r"^[!#$%&'*+\-.^_`|~A-Za-z0-9]+$")
_PSEUDO_HEADERS = frozenset({":method", ":scheme", ":authority", ":path", ":status"})
_HEADER_VALUE_FORBIDDEN = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
JWT_CLAIM_PREFIX = "@request.auth.claims"


def is_jwt_claim(name: str) -> bool:
    return name.startswith(JWT_CLAIM_PREFIX + ".") or name.startswith(JWT_CLAIM_PREFIX + "[")


def header_name_error(name: str, *, allow_jwt_claims: bool = False, cors: bool = False) -> str | None:
    if name == "":
        return "header name cannot be empty"
    if (allow_jwt_claims and is_jwt_claim(name)) or (allow_jwt_claims and name in _PSEUDO_HEADERS):
        return None
    if cors and name == "*":
        return None
    if not _TCHARS.match(name):
        return f"header name {name} is not a valid header name"
    return None


def _is_internal(name: str) -> bool:
    return name.startswith(":") or name.lower() == "host"


def _is_authority(name: str) -> bool:
    return name.lower() in (":authority", "host")


def header_value_error(value: str) -> str | None:
    """Envoy's header value formatting: control characters and unbalanced `%VAR%` are rejected."""
    if _HEADER_VALUE_FORBIDDEN.search(value):
        return f"header value configuration {value} is invalid"
    i = 0
    while i < len(value):
        if value[i] != "%":
            i += 1
            continue
        if value[i + 1:i + 2] == "%":  # `%%` is an escaped percent sign
            i += 2
            continue
        end = value.find("%", i + 1)
        if end < 0:
            return f"header value configuration: unterminated variable expression at \"{value[i:]}\""
        i = end + 1
    return None


def check_header_operations(headers: Any, path: str, errs: list[FieldError]) -> None:
    """Headers{request,response}{set,add,remove}, as validateHTTPRoute checks them."""
    for direction in ("request", "response"):
        ops = get(headers, direction)
        if ops is None:
            continue
        dpath = child(path, direction)
        for op in ("add", "set"):
            for name, value in get(ops, op, {}).items():
                p = map_key(child(dpath, op), name)
                err = _operation_name_error(name, request=direction == "request")
                if err:
                    errs.append(FieldError(p, f"Invalid value: {err}"))
                verr = header_value_error(value) if isinstance(value, str) else None
                if verr:
                    errs.append(invalid(p, value, verr))
        for i, name in enumerate(get(ops, "remove", [])):
            err = _operation_name_error(name, request=False)
            if err:
                errs.append(invalid(index(child(dpath, "remove"), i), name, err))


def _operation_name_error(name: str, request: bool) -> str | None:
    if name == "":
        return "header name cannot be empty"
    if request:  # add/set on requests may target the authority (validated separately)
        if _is_internal(name) and not _is_authority(name):
            return f'invalid header "{name}": header cannot have ":" prefix'
        return None
    if name.lower() == "host":
        return f'invalid header "{name}": cannot set Host header'
    if _is_internal(name):
        return f'invalid header "{name}": header cannot have ":" prefix'
    return None


def authority_header(name: str) -> bool:
    return _is_authority(name)


# --- hosts -------------------------------------------------------------------------------

def host_matches(a: str, b: str) -> bool:
    """Istio's host.Name.Matches: do two (possibly wildcard) hostnames overlap?"""
    if a == b:
        return True
    aw, bw = a.startswith("*"), b.startswith("*")
    if aw and bw:
        return b.endswith(a[1:]) if len(a) < len(b) else a.endswith(b[1:])
    if aw:
        return b.endswith(a[1:])
    if bw:
        return a.endswith(b[1:])
    return False


def host_subset_of(a: str, b: str) -> bool:
    """Istio's host.Name.SubsetOf: is every name `a` matches also matched by `b`?"""
    if a == b:
        return True
    if not b.startswith("*"):
        return False
    if a.startswith("*"):
        return len(a) >= len(b) and a[1:].endswith(b[1:])
    return a.endswith(b[1:])


def is_valid_http_status(code: int) -> bool:
    try:
        HTTPStatus(code)
    except ValueError:
        return False
    return True
