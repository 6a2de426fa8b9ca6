"""The Kubernetes Gateway API kinds (standard channel), typed: GatewayClass, Gateway,
HTTPRoute, GRPCRoute, TCPRoute, TLSRoute and ReferenceGrant as meshd reads them. The
model translates them into Istio Gateways and VirtualServices (model/gateway_api/).

Defaults the CRD schemas apply on the API server (a path match `PathPrefix /`, a header
match `Exact`, a backend weight 1, `allowedRoutes.namespaces.from: Same`) are applied here
too, so a document from a file reads as the same object from a cluster.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ...names import GATEWAY_API_GROUP
from .common import each, integer, labels, mapping, nonempty_strings, text

# --- references ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ParentRef:
    """A route's `parentRefs` entry: a Gateway (and listener), or a Service (GAMMA)."""

    name: str = ""
    namespace: str = ""  # "": the route's
    group: str = GATEWAY_API_GROUP
    kind: str = "Gateway"
    section_name: str = ""
    port: int | None = None

    @property
    def is_gateway(self) -> bool:
        return self.group == GATEWAY_API_GROUP and self.kind == "Gateway"

    @property
    def is_service(self) -> bool:
        return self.group in ("", "core") and self.kind == "Service"


def parent_ref(raw: Mapping[str, Any]) -> ParentRef:
    group = raw.get("group")
    return ParentRef(text(raw.get("name")), text(raw.get("namespace")),
                     GATEWAY_API_GROUP if group is None else text(group), text(raw.get("kind")) or "Gateway",
                     text(raw.get("sectionName")), integer(raw.get("port")))


@dataclass(frozen=True, slots=True)
class ObjectRef:
    """A `backendRef`, `certificateRef` or mirror `backendRef`: core Service (or Secret) by default."""

    name: str = ""
    namespace: str = ""  # "": the referring object's
    group: str = ""
    kind: str = "Service"
    port: int | None = None
    weight: int = 1

    @property
    def is_core(self) -> bool:
        return self.group in ("", "core")


def object_ref(raw: Mapping[str, Any], default_kind: str = "Service") -> ObjectRef:
    weight = integer(raw.get("weight"))
    return ObjectRef(text(raw.get("name")), text(raw.get("namespace")), text(raw.get("group")),
                     text(raw.get("kind")) or default_kind, integer(raw.get("port")), 1 if weight is None else weight)


# --- HTTPRoute -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ValueMatch:
    """A path, header or query parameter match: `type` Exact, PathPrefix, RegularExpression."""

    type: str = "Exact"
    value: str = ""
    name: str = ""  # headers and query parameters


@dataclass(frozen=True, slots=True)
class HTTPRouteMatch:
    path: ValueMatch | None = None
    headers: tuple[ValueMatch, ...] = ()
    query_params: tuple[ValueMatch, ...] = ()
    method: str = ""


def _value_match(raw: Mapping[str, Any], default: str = "Exact") -> ValueMatch:
    return ValueMatch(text(raw.get("type")) or default, str(raw.get("value", "")), text(raw.get("name")))


def http_route_match(raw: Mapping[str, Any]) -> HTTPRouteMatch:
    path = raw.get("path")
    return HTTPRouteMatch(
        # the CRD defaults a match's path to PathPrefix / (the API server applies it; directory mode here)
        path=_value_match(mapping(path), "PathPrefix") if path is not None else ValueMatch("PathPrefix", "/"),
        headers=each(raw.get("headers"), _value_match),
        query_params=each(raw.get("queryParams"), _value_match),
        method=text(raw.get("method")),
    )


@dataclass(frozen=True, slots=True)
class HeaderModifier:
    set: tuple[tuple[str, str], ...] = ()
    add: tuple[tuple[str, str], ...] = ()
    remove: tuple[str, ...] = ()


def _pairs(value: Any) -> tuple[tuple[str, str], ...]:
    return tuple((text(h.get("name")), str(h.get("value", ""))) for h in map(mapping, value or ()) if h.get("name"))


def header_modifier(raw: Mapping[str, Any]) -> HeaderModifier:
    return HeaderModifier(_pairs(raw.get("set")), _pairs(raw.get("add")), nonempty_strings(raw.get("remove")))


@dataclass(frozen=True, slots=True)
class PathModifier:
    type: str = ""  # ReplaceFullPath | ReplacePrefixMatch
    value: str = ""


def _path_modifier(raw: Any) -> PathModifier | None:
    p = mapping(raw)
    if not p:
        return None
    kind = text(p.get("type"))
    value = p.get("replaceFullPath") if kind == "ReplaceFullPath" else p.get("replacePrefixMatch")
    return PathModifier(kind, "" if value is None else str(value))


@dataclass(frozen=True, slots=True)
class RequestRedirect:
    scheme: str = ""
    hostname: str = ""
    path: PathModifier | None = None
    port: int | None = None
    status_code: int = 302


@dataclass(frozen=True, slots=True)
class URLRewrite:
    hostname: str = ""
    path: PathModifier | None = None


@dataclass(frozen=True, slots=True)
class RequestMirror:
    backend_ref: ObjectRef = ObjectRef()
    percent: float | None = None  # `percent`, or `fraction` as a percentage; None: 100


def _mirror(raw: Mapping[str, Any]) -> RequestMirror:
    percent: float | None = None
    if raw.get("percent") is not None:
        percent = float(integer(raw.get("percent"), 100) or 0)
    elif isinstance(raw.get("fraction"), Mapping):
        f = raw["fraction"]
        numerator, denominator = integer(f.get("numerator"), 0) or 0, integer(f.get("denominator"), 100) or 100
        percent = 100.0 * numerator / denominator
    return RequestMirror(object_ref(mapping(raw.get("backendRef"))), percent)


@dataclass(frozen=True, slots=True)
class CORS:
    allow_origins: tuple[str, ...] = ()
    allow_methods: tuple[str, ...] = ()
    allow_headers: tuple[str, ...] = ()
    expose_headers: tuple[str, ...] = ()
    max_age: int | None = None  # seconds
    allow_credentials: bool | None = None


def _cors(raw: Mapping[str, Any]) -> CORS:
    credentials = raw.get("allowCredentials")
    return CORS(nonempty_strings(raw.get("allowOrigins")), nonempty_strings(raw.get("allowMethods")),
                nonempty_strings(raw.get("allowHeaders")), nonempty_strings(raw.get("exposeHeaders")),
                integer(raw.get("maxAge")), None if credentials is None else bool(credentials))


@dataclass(frozen=True, slots=True)
class HTTPRouteFilter:
    """One filter; `type` names which of the blocks is set (validation checks they agree)."""

    type: str = ""
    request_header_modifier: HeaderModifier | None = None
    response_header_modifier: HeaderModifier | None = None
    request_redirect: RequestRedirect | None = None
    url_rewrite: URLRewrite | None = None
    request_mirror: RequestMirror | None = None
    extension_ref: ObjectRef | None = None
    cors: CORS | None = None


def http_route_filter(raw: Mapping[str, Any]) -> HTTPRouteFilter:
    redirect, rewrite = raw.get("requestRedirect"), raw.get("urlRewrite")
    ext = raw.get("extensionRef")
    return HTTPRouteFilter(
        type=text(raw.get("type")),
        request_header_modifier=header_modifier(mapping(raw["requestHeaderModifier"]))
        if raw.get("requestHeaderModifier") is not None else None,
        response_header_modifier=header_modifier(mapping(raw["responseHeaderModifier"]))
        if raw.get("responseHeaderModifier") is not None else None,
        request_redirect=RequestRedirect(text(mapping(redirect).get("scheme")), text(mapping(redirect).get("hostname")),
                                         _path_modifier(mapping(redirect).get("path")),
                                         integer(mapping(redirect).get("port")),
                                         integer(mapping(redirect).get("statusCode"), 302) or 302)
        if redirect is not None else None,
        url_rewrite=URLRewrite(text(mapping(rewrite).get("hostname")), _path_modifier(mapping(rewrite).get("path")))
        if rewrite is not None else None,
        request_mirror=_mirror(mapping(raw["requestMirror"])) if raw.get("requestMirror") is not None else None,
        extension_ref=object_ref(mapping(ext), "") if ext is not None else None,
        cors=_cors(mapping(raw["cors"])) if raw.get("cors") is not None else None,
    )


@dataclass(frozen=True, slots=True)
class BackendRef:
    ref: ObjectRef = ObjectRef()
    filters: tuple[HTTPRouteFilter, ...] = ()


def backend_ref(raw: Mapping[str, Any]) -> BackendRef:
    return BackendRef(object_ref(raw), each(raw.get("filters"), http_route_filter))


@dataclass(frozen=True, slots=True)
class Timeouts:
    request: str = ""  # a Gateway API duration ("10s", "1h30m"); "" not set
    backend_request: str = ""


@dataclass(frozen=True, slots=True)
class HTTPRouteRule:
    name: str = ""
    matches: tuple[HTTPRouteMatch, ...] = ()
    filters: tuple[HTTPRouteFilter, ...] = ()
    backend_refs: tuple[BackendRef, ...] = ()
    timeouts: Timeouts | None = None


def http_route_rule(raw: Mapping[str, Any]) -> HTTPRouteRule:
    t = raw.get("timeouts")
    matches = each(raw.get("matches"), http_route_match) if raw.get("matches") else (HTTPRouteMatch(),)
    return HTTPRouteRule(
        name=text(raw.get("name")),
        matches=matches,
        filters=each(raw.get("filters"), http_route_filter),
        backend_refs=each(raw.get("backendRefs"), backend_ref),
        timeouts=Timeouts(text(mapping(t).get("request")), text(mapping(t).get("backendRequest"))) if t is not None else None,
    )


@dataclass(frozen=True, slots=True)
class HTTPRoute:
    parent_refs: tuple[ParentRef, ...] = ()
    hostnames: tuple[str, ...] = ()
    rules: tuple[HTTPRouteRule, ...] = ()


def http_route(spec: Mapping[str, Any]) -> HTTPRoute:
    return HTTPRoute(each(spec.get("parentRefs"), parent_ref), nonempty_strings(spec.get("hostnames")),
                     each(spec.get("rules"), http_route_rule))


# --- GRPCRoute -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class GRPCMethodMatch:
    type: str = "Exact"
    service: str = ""
    method: str = ""


@dataclass(frozen=True, slots=True)
class GRPCRouteMatch:
    method: GRPCMethodMatch | None = None
    headers: tuple[ValueMatch, ...] = ()


def grpc_route_match(raw: Mapping[str, Any]) -> GRPCRouteMatch:
    m = raw.get("method")
    method = None
    if isinstance(m, Mapping):
        method = GRPCMethodMatch(text(m.get("type")) or "Exact", text(m.get("service")), text(m.get("method")))
    return GRPCRouteMatch(method, each(raw.get("headers"), _value_match))


@dataclass(frozen=True, slots=True)
class GRPCRouteRule:
    name: str = ""
    matches: tuple[GRPCRouteMatch, ...] = ()
    filters: tuple[HTTPRouteFilter, ...] = ()
    backend_refs: tuple[BackendRef, ...] = ()


def grpc_route_rule(raw: Mapping[str, Any]) -> GRPCRouteRule:
    return GRPCRouteRule(text(raw.get("name")), each(raw.get("matches"), grpc_route_match),
                         each(raw.get("filters"), http_route_filter), each(raw.get("backendRefs"), backend_ref))


@dataclass(frozen=True, slots=True)
class GRPCRoute:
    parent_refs: tuple[ParentRef, ...] = ()
    hostnames: tuple[str, ...] = ()
    rules: tuple[GRPCRouteRule, ...] = ()


def grpc_route(spec: Mapping[str, Any]) -> GRPCRoute:
    return GRPCRoute(each(spec.get("parentRefs"), parent_ref), nonempty_strings(spec.get("hostnames")),
                     each(spec.get("rules"), grpc_route_rule))


# --- TCPRoute and TLSRoute -------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class L4RouteRule:
    name: str = ""
    backend_refs: tuple[ObjectRef, ...] = ()


def _l4_rule(raw: Mapping[str, Any]) -> L4RouteRule:
    return L4RouteRule(text(raw.get("name")), each(raw.get("backendRefs"), object_ref))


@dataclass(frozen=True, slots=True)
class L4Route:
    """A TCPRoute, or a TLSRoute (which has `hostnames`: the SNI names it matches)."""

    parent_refs: tuple[ParentRef, ...] = ()
    hostnames: tuple[str, ...] = ()
    rules: tuple[L4RouteRule, ...] = ()


def l4_route(spec: Mapping[str, Any]) -> L4Route:
    return L4Route(each(spec.get("parentRefs"), parent_ref), nonempty_strings(spec.get("hostnames")),
                   each(spec.get("rules"), _l4_rule))


# --- GatewayClass, Gateway, ReferenceGrant ---------------------------------------------


@dataclass(frozen=True, slots=True)
class GatewayClass:
    controller_name: str = ""


def gateway_class(spec: Mapping[str, Any]) -> GatewayClass:
    return GatewayClass(text(spec.get("controllerName")))


@dataclass(frozen=True, slots=True)
class RouteKind:
    kind: str
    group: str = GATEWAY_API_GROUP


@dataclass(frozen=True, slots=True)
class LabelSelector:
    match_labels: Mapping[str, str] = field(default_factory=dict)
    # (key, operator, values) of `matchExpressions`
    match_expressions: tuple[tuple[str, str, tuple[str, ...]], ...] = ()

    def matches(self, got: Mapping[str, str]) -> bool:
        if any(got.get(k) != v for k, v in self.match_labels.items()):
            return False
        for key, op, values in self.match_expressions:
            if op == "In" and got.get(key) not in values:
                return False
            if op == "NotIn" and key in got and got[key] in values:
                return False
            if op == "Exists" and key not in got:
                return False
            if op == "DoesNotExist" and key in got:
                return False
        return True


def label_selector(raw: Mapping[str, Any]) -> LabelSelector:
    return LabelSelector(labels(raw.get("matchLabels")),
                         tuple((text(e.get("key")), text(e.get("operator")), nonempty_strings(e.get("values")))
                               for e in map(mapping, raw.get("matchExpressions") or ())))


@dataclass(frozen=True, slots=True)
class AllowedRoutes:
    namespaces_from: str = "Same"  # Same | All | Selector
    selector: LabelSelector | None = None
    kinds: tuple[RouteKind, ...] = ()  # none: the listener protocol's kinds


def _allowed_routes(raw: Mapping[str, Any]) -> AllowedRoutes:
    ns = mapping(raw.get("namespaces"))
    sel = ns.get("selector")
    return AllowedRoutes(text(ns.get("from")) or "Same", label_selector(mapping(sel)) if sel is not None else None,
                         tuple(RouteKind(text(k.get("kind")), GATEWAY_API_GROUP if k.get("group") is None else text(k.get("group")))
                               for k in map(mapping, raw.get("kinds") or ())))


@dataclass(frozen=True, slots=True)
class ListenerTLS:
    mode: str = "Terminate"  # Terminate | Passthrough
    certificate_refs: tuple[ObjectRef, ...] = ()
    options: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Listener:
    name: str = ""
    hostname: str = ""  # "": any
    port: int = 0
    protocol: str = ""  # HTTP | HTTPS | TLS | TCP | UDP | a domain-prefixed one
    tls: ListenerTLS | None = None
    allowed_routes: AllowedRoutes = AllowedRoutes()


def listener(raw: Mapping[str, Any]) -> Listener:
    tls = raw.get("tls")
    t = mapping(tls)
    return Listener(
        name=text(raw.get("name")),
        hostname=text(raw.get("hostname")),
        port=integer(raw.get("port"), 0) or 0,
        protocol=text(raw.get("protocol")),
        tls=ListenerTLS(text(t.get("mode")) or "Terminate",
                        tuple(object_ref(mapping(r), "Secret") for r in t.get("certificateRefs") or ()),
                        labels(t.get("options"))) if tls is not None else None,
        allowed_routes=_allowed_routes(mapping(raw.get("allowedRoutes"))),
    )


@dataclass(frozen=True, slots=True)
class GatewayAddress:
    type: str = "IPAddress"  # IPAddress | Hostname | a domain-prefixed one
    value: str = ""


@dataclass(frozen=True, slots=True)
class Gateway:
    gateway_class_name: str = ""
    listeners: tuple[Listener, ...] = ()
    addresses: tuple[GatewayAddress, ...] = ()
    infrastructure_labels: Mapping[str, str] = field(default_factory=dict)
    # `spec.tls.frontend`: client certificate validation, which meshd does not implement
    # (its HTTPS listeners are then not served: conversion.py)
    frontend_validation: bool = False


def gateway(spec: Mapping[str, Any]) -> Gateway:
    return Gateway(
        gateway_class_name=text(spec.get("gatewayClassName")),
        listeners=each(spec.get("listeners"), listener),
        addresses=tuple(GatewayAddress(text(a.get("type")) or "IPAddress", text(a.get("value")))
                        for a in map(mapping, spec.get("addresses") or ())),
        infrastructure_labels=labels(mapping(spec.get("infrastructure")).get("labels")),
        frontend_validation=bool(mapping(spec.get("tls")).get("frontend")),
    )


@dataclass(frozen=True, slots=True)
class GrantFrom:
    group: str
    kind: str
    namespace: str


@dataclass(frozen=True, slots=True)
class GrantTo:
    group: str
    kind: str
    name: str = ""  # "": every object of the kind


@dataclass(frozen=True, slots=True)
class ReferenceGrant:
    from_: tuple[GrantFrom, ...] = ()
    to: tuple[GrantTo, ...] = ()


def reference_grant(spec: Mapping[str, Any]) -> ReferenceGrant:
    return ReferenceGrant(
        tuple(GrantFrom(text(f.get("group")), text(f.get("kind")), text(f.get("namespace")))
              for f in map(mapping, spec.get("from") or ())),
        tuple(GrantTo(text(t.get("group")), text(t.get("kind")), text(t.get("name")))
              for t in map(mapping, spec.get("to") or ())),
    )


def _builders() -> dict:
    from ..kinds import GATEWAY_CLASS, GRPC_ROUTE, HTTP_ROUTE, K8S_GATEWAY, REFERENCE_GRANT, TCP_ROUTE, TLS_ROUTE
    return {(k.group, k.key_kind): build for k, build in (
        (GATEWAY_CLASS, gateway_class), (K8S_GATEWAY, gateway), (HTTP_ROUTE, http_route), (GRPC_ROUTE, grpc_route),
        (TCP_ROUTE, l4_route), (TLS_ROUTE, l4_route), (REFERENCE_GRANT, reference_grant))}


# By (group, ConfigObject.kind): the Gateway API's Gateway is stored as "KubernetesGateway".
GATEWAY_API_BUILDERS = _builders()
