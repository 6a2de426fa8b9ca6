"""Validation of the Kubernetes Gateway API kinds (standard channel).

Two gates, as on a cluster: the CRD's structural schema (the upstream standard-channel
CRDs, bundled in controlplane/config/schemas/gateway-api/, Apache-2.0) walked by
schema.py, then the CRDs' CEL rules (`x-kubernetes-validations`) that matter to what meshd
builds, written out here in Python (schema.py skips rules cel.py does not know; the
Gateway API's are checked here instead, each naming the field the API server would).
"""
from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from ..kinds import Kind
from . import durations
from .errors import FieldError, child, index
from .schema import Node, load_crd, validate_document

# The bundled CRD of each kind, by kind name (every one is of gateway.networking.k8s.io).
CRD_FILES: dict[str, str] = {
    "GatewayClass": "gateway.networking.k8s.io_gatewayclasses.yaml",
    "Gateway": "gateway.networking.k8s.io_gateways.yaml",
    "HTTPRoute": "gateway.networking.k8s.io_httproutes.yaml",
    "GRPCRoute": "gateway.networking.k8s.io_grpcroutes.yaml",
    "TCPRoute": "gateway.networking.k8s.io_tcproutes.yaml",
    "TLSRoute": "gateway.networking.k8s.io_tlsroutes.yaml",
    "ReferenceGrant": "gateway.networking.k8s.io_referencegrants.yaml",
    # Standard channel, not served: printed by `meshd crds --gateway-api` only.
    "UDPRoute": "gateway.networking.k8s.io_udproutes.yaml",
    "BackendTLSPolicy": "gateway.networking.k8s.io_backendtlspolicies.yaml",
    "ListenerSet": "gateway.networking.k8s.io_listenersets.yaml",
}


@functools.cache
def crd(kind: str) -> dict:
    """The bundled upstream CRD of `kind`."""
    return load_crd(f"gateway-api/{CRD_FILES[kind]}")  # the build's JSON copy when there is one


@functools.cache
def schema(kind: str, version: str) -> Node | None:
    for v in crd(kind)["spec"]["versions"]:
        if v.get("name") == version:
            return Node(v["schema"]["openAPIV3Schema"])
    return None


def validate_gateway_api(doc: dict, kind: Kind, version: str) -> list[FieldError]:
    """Errors of a Gateway API document (apiVersion and metadata are checked by the caller)."""
    root = schema(kind.kind, version) or schema(kind.kind, kind.versions[0])
    if root is None:
        return [FieldError("kind", f"Invalid value: no schema for {kind.group}/{version} {kind.kind}")]
    errs = validate_document(_defaulted(doc, kind.kind), root)
    if errs:
        return errs
    spec = _dict(doc.get("spec"))
    check = _SEMANTICS.get(kind.kind)
    return check(spec, "spec") if check else []


def _defaulted(doc: dict, kind: str) -> dict:
    """The document with the schema defaults the API server fills in before it checks a
    `oneOf` that depends on them: a Gateway address's `type` (IPAddress)."""
    spec = _dict(doc.get("spec"))
    if kind != "Gateway" or not any(isinstance(a, dict) and "type" not in a for a in _list(spec.get("addresses"))):
        return doc
    addresses = [{"type": "IPAddress", **a} if isinstance(a, dict) else a for a in _list(spec.get("addresses"))]
    return {**doc, "spec": {**spec, "addresses": addresses}}


# --- the CEL rules, by kind ------------------------------------------------------------

_HTTP_FILTER_FIELDS = {
    "RequestHeaderModifier": "requestHeaderModifier",
    "ResponseHeaderModifier": "responseHeaderModifier",
    "RequestRedirect": "requestRedirect",
    "URLRewrite": "urlRewrite",
    "RequestMirror": "requestMirror",
    "ExtensionRef": "extensionRef",
    "CORS": "cors",
    "ExternalAuth": "externalAuth",
}


def _list(value: Any) -> list:
    return value if isinstance(value, list) else []


def _dict(value: Any) -> dict:
    return value if isinstance(value, dict) else {}


def _filters(filters: Any, path: str, matches: list) -> list[FieldError]:
    errs: list[FieldError] = []
    types = [_dict(f).get("type") for f in _list(filters)]
    for i, f in enumerate(_list(filters)):
        f = _dict(f)
        at = index(path, i)
        kind = f.get("type")
        for t, fld in _HTTP_FILTER_FIELDS.items():
            if kind == t and fld not in f:
                errs.append(FieldError(at, f"Invalid value: filter.{fld} must be specified for {t} filter.type"))
            elif kind != t and fld in f:
                errs.append(FieldError(at, f"Invalid value: filter.{fld} must be nil if the filter.type is not {t}"))
        mirror = _dict(f.get("requestMirror"))
        if "percent" in mirror and "fraction" in mirror:
            errs.append(FieldError(child(at, "requestMirror"), "Invalid value: Only one of percent or fraction may be "
                                                               "specified in HTTPRequestMirrorFilter"))
        fraction = _dict(mirror.get("fraction"))
        if fraction and fraction.get("numerator", 0) > fraction.get("denominator", 100):
            errs.append(FieldError(child(child(at, "requestMirror"), "fraction"),
                                   "Invalid value: numerator must be less than or equal to denominator"))
        for block in ("requestRedirect", "urlRewrite"):
            p = _dict(_dict(f.get(block)).get("path"))
            if p.get("type") == "ReplacePrefixMatch" and any(
                    _dict(_dict(m).get("path")).get("type", "PathPrefix") != "PathPrefix" for m in matches):
                errs.append(FieldError(child(child(at, block), "path"),
                                       "Invalid value: When using ReplacePrefixMatch, path match type must be PathPrefix"))
    if "RequestRedirect" in types and "URLRewrite" in types:
        errs.append(FieldError(path, "Invalid value: May specify either httpRouteFilterRequestRedirect or "
                                     "httpRouteFilterRequestRewrite, but not both"))
    for once in ("RequestHeaderModifier", "ResponseHeaderModifier", "RequestRedirect", "URLRewrite", "CORS"):
        if types.count(once) > 1:
            errs.append(FieldError(path, f"Invalid value: {once} filter cannot be repeated"))
    return errs


def _path_value(match: dict, path: str) -> list[FieldError]:
    p = _dict(match.get("path"))
    if not p:
        return []
    kind, value = p.get("type", "PathPrefix"), p.get("value", "/")
    at = child(path, "path")
    if kind in ("Exact", "PathPrefix") and isinstance(value, str):
        if not value.startswith("/"):
            return [FieldError(at, "Invalid value: value must be an absolute path and start with '/' when type one of "
                                   "['Exact', 'PathPrefix']")]
        for bad in ("//", "/./", "/../", "%2f", "%2F", "#"):
            if bad in value:
                return [FieldError(at, f"Invalid value: must not contain {bad!r} when type one of ['Exact', 'PathPrefix']")]
        if value.endswith("/..") or value.endswith("/."):
            return [FieldError(at, "Invalid value: must not end with '/..' or '/.' when type one of ['Exact', 'PathPrefix']")]
    return []


def _timeouts(t: Any, path: str) -> list[FieldError]:
    t = _dict(t)
    try:
        request = durations.parse_duration(t["request"]) if "request" in t else None
        backend = durations.parse_duration(t["backendRequest"]) if "backendRequest" in t else None
    except ValueError as e:
        return [FieldError(path, f"Invalid value: {e}")]
    if request and backend and backend > request:
        return [FieldError(path, "Invalid value: backendRequest timeout cannot be longer than request timeout")]
    return []


def _http_route(spec: dict, path: str) -> list[FieldError]:
    errs: list[FieldError] = []
    for i, rule in enumerate(_list(spec.get("rules"))):
        rule = _dict(rule)
        at = index(child(path, "rules"), i)
        matches = _list(rule.get("matches"))
        for j, m in enumerate(matches):
            errs += _path_value(_dict(m), index(child(at, "matches"), j))
        errs += _filters(rule.get("filters"), child(at, "filters"), matches)
        for j, b in enumerate(_list(rule.get("backendRefs"))):
            errs += _filters(_dict(b).get("filters"), child(index(child(at, "backendRefs"), j), "filters"), matches)
        if rule.get("backendRefs") and any(_dict(f).get("type") == "RequestRedirect" for f in _list(rule.get("filters"))):
            errs.append(FieldError(at, "Invalid value: RequestRedirect filter must not be used together with backendRefs"))
        if "timeouts" in rule:
            errs += _timeouts(rule["timeouts"], child(at, "timeouts"))
    return errs + _backend_ports(spec, path)


def _backend_ports(spec: dict, path: str) -> list[FieldError]:
    """`port` is required when a backendRef names a Service (the CRDs' CEL rule)."""
    errs = []
    for i, rule in enumerate(_list(spec.get("rules"))):
        for j, b in enumerate(_list(_dict(rule).get("backendRefs"))):
            b = _dict(b)
            if b.get("group", "") in ("", "core") and b.get("kind", "Service") == "Service" and "port" not in b:
                errs.append(FieldError(index(child(index(child(path, "rules"), i), "backendRefs"), j),
                                       "Invalid value: Must have port for Service reference"))
    return errs


def _grpc_route(spec: dict, path: str) -> list[FieldError]:
    errs: list[FieldError] = []
    for i, rule in enumerate(_list(spec.get("rules"))):
        at = index(child(path, "rules"), i)
        for j, m in enumerate(_list(_dict(rule).get("matches"))):
            method = _dict(_dict(m).get("method"))
            if method and not method.get("service") and not method.get("method"):
                errs.append(FieldError(child(index(child(at, "matches"), j), "method"),
                                       "Invalid value: One or both of 'service' or 'method' must be specified"))
        errs += _filters(_dict(rule).get("filters"), child(at, "filters"), [])
    return errs + _backend_ports(spec, path)


def _gateway(spec: dict, path: str) -> list[FieldError]:
    errs: list[FieldError] = []
    seen: dict[tuple, int] = {}
    for i, ln in enumerate(_list(spec.get("listeners"))):
        ln = _dict(ln)
        at = index(child(path, "listeners"), i)
        protocol = ln.get("protocol")
        if protocol in ("HTTP", "TCP", "UDP") and "tls" in ln:
            errs.append(FieldError(at, "Invalid value: tls must not be specified for protocols ['HTTP', 'TCP', 'UDP']"))
        if protocol == "TLS" and not _dict(ln.get("tls")).get("mode", "Terminate"):
            errs.append(FieldError(at, "Invalid value: tls mode must be set for protocol TLS"))
        if protocol in ("TCP", "UDP") and ln.get("hostname"):
            errs.append(FieldError(at, "Invalid value: hostname must not be specified for protocols ['TCP', 'UDP']"))
        tls = _dict(ln.get("tls"))
        if protocol == "HTTPS" and tls.get("mode", "Terminate") != "Terminate":
            errs.append(FieldError(child(at, "tls"), "Invalid value: tls mode must be Terminate for protocol HTTPS"))
        if tls.get("mode", "Terminate") == "Terminate" and protocol in ("HTTPS", "TLS") and not tls.get("certificateRefs") \
                and not tls.get("options"):
            errs.append(FieldError(child(at, "tls"), "Invalid value: certificateRefs or options must be specified "
                                                     "when mode is Terminate"))
        key = (ln.get("port"), protocol, ln.get("hostname", ""))
        if key in seen:
            errs.append(FieldError(at, "Invalid value: Combination of port, protocol and hostname must be unique for "
                                       f"each listener (the same as listener {seen[key]})"))
        seen.setdefault(key, i)
    return errs


_SEMANTICS: dict[str, Callable[[dict, str], list[FieldError]]] = {
    "HTTPRoute": _http_route,
    "GRPCRoute": _grpc_route,
    "Gateway": _gateway,
}
