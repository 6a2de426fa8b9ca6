"""VirtualService, typed: hosts, the gateways it binds to, `exportTo`, and its `http`,
`tcp` and `tls` rules as meshd reads them (generators/http_routes.py, listeners.py,
sidecar_outbound.py). Delegation (`http[].delegate`) is resolved by the model
(model/delegates.py), which merges these objects.

A block that is absent is None; one written empty is present (an empty `retries: {}`
turns retries off, an empty `redirect: {}` is a 301 to the same place), except where an
empty block asks for nothing and is read as absent (`fault`, `corsPolicy`).
"""
from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .common import (
    Duration,
    StringMatch,
    duration,
    each,
    integer,
    integer_percent,
    labels,
    mapping,
    nonempty_strings,
    optional,
    percent,
    string_match,
    string_matches,
    strings,
    text,
)

# --- destinations and header operations ------------------------------------------------


@dataclass(frozen=True, slots=True)
class Destination:
    host: str = ""  # as written (a short name resolves in the VirtualService's namespace)
    subset: str = ""
    port: int | None = None  # `port.number`


def destination(raw: Mapping[str, Any]) -> Destination:
    return Destination(text(raw.get("host")), text(raw.get("subset")), integer(mapping(raw.get("port")).get("number")))


@dataclass(frozen=True, slots=True)
class HeaderOperations:
    set: Mapping[str, str] = field(default_factory=dict)
    add: Mapping[str, str] = field(default_factory=dict)
    remove: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Headers:
    request: HeaderOperations = HeaderOperations()
    response: HeaderOperations = HeaderOperations()


def _header_operations(raw: Mapping[str, Any]) -> HeaderOperations:
    return HeaderOperations({str(k): str(v) for k, v in mapping(raw.get("set")).items()},
                            {str(k): str(v) for k, v in mapping(raw.get("add")).items()},
                            strings(raw.get("remove")))


def headers(raw: Mapping[str, Any]) -> Headers:
    return Headers(_header_operations(mapping(raw.get("request"))), _header_operations(mapping(raw.get("response"))))


@dataclass(frozen=True, slots=True)
class RouteDestination:
    """A `route` entry of an http, tcp or tls rule (only http ones carry `headers`)."""

    destination: Destination = Destination()
    weight: int = 0
    headers: Headers | None = None


def route_destination(raw: Mapping[str, Any]) -> RouteDestination:
    return RouteDestination(destination(mapping(raw.get("destination"))), integer(raw.get("weight"), 0) or 0,
                            optional(raw.get("headers"), headers))


# --- http rules ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class HTTPMatchRequest:
    name: str = ""
    uri: StringMatch | None = None
    scheme: StringMatch | None = None
    method: StringMatch | None = None
    authority: StringMatch | None = None
    headers: Mapping[str, StringMatch] = field(default_factory=dict)
    without_headers: Mapping[str, StringMatch] = field(default_factory=dict)
    query_params: Mapping[str, StringMatch] = field(default_factory=dict)
    ignore_uri_case: bool | None = None
    port: int = 0  # 0: any port
    source_labels: Mapping[str, str] = field(default_factory=dict)
    source_namespace: str = ""
    gateways: tuple[str, ...] = ()  # as written (short names resolve in the VirtualService's namespace)


def _match_string(raw: Any) -> StringMatch | None:
    return None if raw is None else string_match(raw)


def http_match(raw: Mapping[str, Any]) -> HTTPMatchRequest:
    ignore = raw.get("ignoreUriCase")
    return HTTPMatchRequest(
        name=text(raw.get("name")),
        uri=_match_string(raw.get("uri")),
        scheme=_match_string(raw.get("scheme")),
        method=_match_string(raw.get("method")),
        authority=_match_string(raw.get("authority")),
        headers=string_matches(raw.get("headers")),
        without_headers=string_matches(raw.get("withoutHeaders")),
        query_params=string_matches(raw.get("queryParams")),
        ignore_uri_case=None if ignore is None else bool(ignore),
        port=integer(raw.get("port"), 0) or 0,
        source_labels=labels(raw.get("sourceLabels")),
        source_namespace=text(raw.get("sourceNamespace")),
        gateways=strings(raw.get("gateways")),
    )


@dataclass(frozen=True, slots=True)
class HTTPRedirect:
    uri: str = ""
    authority: str = ""
    scheme: str = ""
    port: int | None = None
    derive_port: str = ""
    redirect_code: int = 0  # 0: not given (301)
    prefix_rewrite: str = ""  # replaces the matched prefix (the Gateway API's ReplacePrefixMatch)


def _redirect(raw: Mapping[str, Any]) -> HTTPRedirect:
    return HTTPRedirect(text(raw.get("uri")), text(raw.get("authority")), text(raw.get("scheme")),
                        integer(raw.get("port")), text(raw.get("derivePort")), integer(raw.get("redirectCode"), 0) or 0,
                        text(raw.get("prefixRewrite")))


@dataclass(frozen=True, slots=True)
class HTTPDirectResponse:
    status: int = 200
    body_string: str | None = None
    body_bytes: bytes | None = None  # decoded from the document's base64


def _direct_response(raw: Mapping[str, Any]) -> HTTPDirectResponse:
    body = mapping(raw.get("body"))
    data = None
    if "string" not in body and "bytes" in body:
        try:
            data = base64.b64decode(str(body["bytes"]), validate=True)
        except (ValueError, binascii.Error):
            data = None  # validation rejects undecodable bytes
    return HTTPDirectResponse(integer(raw.get("status"), 200) or 200,
                              str(body["string"]) if "string" in body else None, data)


@dataclass(frozen=True, slots=True)
class Delegate:
    name: str = ""
    namespace: str = ""  # "": the root VirtualService's


@dataclass(frozen=True, slots=True)
class RegexRewrite:
    match: str
    rewrite: str = ""


@dataclass(frozen=True, slots=True)
class HTTPRewrite:
    uri: str = ""
    authority: str = ""
    uri_regex_rewrite: RegexRewrite | None = None


def _rewrite(raw: Mapping[str, Any]) -> HTTPRewrite:
    regex = mapping(raw.get("uriRegexRewrite"))
    return HTTPRewrite(text(raw.get("uri")), text(raw.get("authority")),
                       RegexRewrite(str(regex["match"]), text(regex.get("rewrite")))
                       if regex.get("match") is not None else None)


@dataclass(frozen=True, slots=True)
class HTTPRetry:
    attempts: int = 0  # 0 (or not given, in a `retries` block): no retries
    per_try_timeout: Duration | None = None
    retry_on: str = ""
    retry_remote_localities: bool = False
    retry_ignore_previous_hosts: bool | None = None
    backoff: Duration | None = None


def _retries(raw: Mapping[str, Any]) -> HTTPRetry:
    ignore = raw.get("retryIgnorePreviousHosts")
    return HTTPRetry(
        attempts=integer(raw.get("attempts"), 0) or 0,
        per_try_timeout=duration(raw.get("perTryTimeout")),
        retry_on=text(raw.get("retryOn")),
        retry_remote_localities=bool(raw.get("retryRemoteLocalities")),
        retry_ignore_previous_hosts=None if ignore is None else bool(ignore),
        backoff=duration(raw.get("backoff")),
    )


@dataclass(frozen=True, slots=True)
class FaultDelay:
    fixed_delay: Duration | None = None
    percentage: float | None = None
    percent: int = 0  # the deprecated integer form, read when `percentage` is absent


@dataclass(frozen=True, slots=True)
class FaultAbort:
    http_status: int | None = None
    grpc_status: str = ""
    percentage: float | None = None


@dataclass(frozen=True, slots=True)
class HTTPFaultInjection:
    delay: FaultDelay | None = None
    abort: FaultAbort | None = None


def _fault(raw: Any) -> HTTPFaultInjection | None:
    f = mapping(raw)
    if not f:
        return None
    delay, abort = mapping(f.get("delay")), mapping(f.get("abort"))
    return HTTPFaultInjection(
        FaultDelay(duration(delay.get("fixedDelay")), percent(delay.get("percentage")),
                   integer_percent(delay.get("percent"))) if delay else None,
        FaultAbort(integer(abort.get("httpStatus")), text(abort.get("grpcStatus")).upper(),
                   percent(abort.get("percentage"))) if abort else None,
    )


@dataclass(frozen=True, slots=True)
class HTTPMirrorPolicy:
    destination: Destination = Destination()
    percentage: float | None = None  # None: 100 %


def _mirror_policy(raw: Mapping[str, Any]) -> HTTPMirrorPolicy:
    return HTTPMirrorPolicy(destination(mapping(raw.get("destination"))), percent(raw.get("percentage")))


@dataclass(frozen=True, slots=True)
class CorsPolicy:
    allow_origins: tuple[StringMatch, ...] = ()
    allow_origin: tuple[str, ...] = ()  # the deprecated exact-match list
    allow_methods: tuple[str, ...] = ()
    allow_headers: tuple[str, ...] = ()
    expose_headers: tuple[str, ...] = ()
    max_age: Duration | None = None
    allow_credentials: bool | None = None
    unmatched_preflights: str = ""


def _cors(raw: Any) -> CorsPolicy | None:
    c = mapping(raw)
    if not c:
        return None
    credentials = c.get("allowCredentials")
    return CorsPolicy(
        allow_origins=each(c.get("allowOrigins"), string_match),
        allow_origin=strings(c.get("allowOrigin")),
        allow_methods=strings(c.get("allowMethods")),
        allow_headers=strings(c.get("allowHeaders")),
        expose_headers=strings(c.get("exposeHeaders")),
        max_age=duration(c.get("maxAge")),
        allow_credentials=None if credentials is None else bool(credentials),
        unmatched_preflights=text(c.get("unmatchedPreflights")),
    )


@dataclass(frozen=True, slots=True)
class HTTPRoute:
    name: str = ""
    match: tuple[HTTPMatchRequest, ...] = ()
    route: tuple[RouteDestination, ...] = ()
    redirect: HTTPRedirect | None = None
    direct_response: HTTPDirectResponse | None = None
    delegate: Delegate | None = None
    rewrite: HTTPRewrite | None = None
    timeout: Duration | None = None
    retries: HTTPRetry | None = None
    fault: HTTPFaultInjection | None = None
    mirror: Destination | None = None
    mirror_percent: int | None = None  # deprecated integer form
    mirror_percentage: float | None = None
    mirrors: tuple[HTTPMirrorPolicy, ...] = ()
    cors_policy: CorsPolicy | None = None
    headers: Headers | None = None


def http_route(raw: Mapping[str, Any]) -> HTTPRoute:
    ref = raw.get("delegate")
    return HTTPRoute(
        name=text(raw.get("name")),
        match=each(raw.get("match"), http_match),
        route=each(raw.get("route"), route_destination),
        redirect=optional(raw.get("redirect"), _redirect),
        direct_response=optional(raw.get("directResponse"), _direct_response),
        delegate=Delegate(text(ref.get("name")), text(ref.get("namespace"))) if isinstance(ref, Mapping) else None,
        rewrite=optional(raw.get("rewrite"), _rewrite),
        timeout=duration(raw.get("timeout")),
        retries=optional(raw.get("retries"), _retries),
        fault=_fault(raw.get("fault")),
        mirror=optional(raw.get("mirror"), destination),
        mirror_percent=None if raw.get("mirrorPercent") is None else integer_percent(raw.get("mirrorPercent")),
        mirror_percentage=percent(raw.get("mirrorPercentage")),
        mirrors=each(raw.get("mirrors"), _mirror_policy),
        cors_policy=_cors(raw.get("corsPolicy")),
        headers=optional(raw.get("headers"), headers),
    )


# --- tcp and tls rules -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class L4Match:
    """A `tcp` rule's match (L4MatchAttributes), or a `tls` rule's (with `sniHosts`)."""

    port: int = 0  # 0: any port
    destination_subnets: tuple[str, ...] = ()
    source_labels: Mapping[str, str] = field(default_factory=dict)
    source_namespace: str = ""
    gateways: tuple[str, ...] = ()
    sni_hosts: tuple[str, ...] = ()


def l4_match(raw: Mapping[str, Any]) -> L4Match:
    return L4Match(
        port=integer(raw.get("port"), 0) or 0,
        destination_subnets=strings(raw.get("destinationSubnets")),
        source_labels=labels(raw.get("sourceLabels")),
        source_namespace=text(raw.get("sourceNamespace")),
        gateways=strings(raw.get("gateways")),
        sni_hosts=nonempty_strings(raw.get("sniHosts")),
    )


@dataclass(frozen=True, slots=True)
class L4Route:
    """A `tcp` or `tls` rule."""

    match: tuple[L4Match, ...] = ()
    route: tuple[RouteDestination, ...] = ()


def l4_route(raw: Mapping[str, Any]) -> L4Route:
    return L4Route(each(raw.get("match"), l4_match), each(raw.get("route"), route_destination))


# --- the kind --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class VirtualService:
    hosts: tuple[str, ...] = ()  # as written; none: a delegate
    gateways: tuple[str, ...] = ()  # as written; none: `mesh`
    http: tuple[HTTPRoute, ...] = ()
    tcp: tuple[L4Route, ...] = ()
    tls: tuple[L4Route, ...] = ()
    export_to: tuple[str, ...] = ()

    def uses_source_labels(self) -> bool:
        """Whether some match of the VirtualService names `sourceLabels` (routes then
        depend on the labels of the proxy)."""
        return (any(m.source_labels for r in self.http for m in r.match)
                or any(m.source_labels for r in self.tcp + self.tls for m in r.match))


def virtual_service(spec: Mapping[str, Any]) -> VirtualService:
    return VirtualService(
        hosts=nonempty_strings(spec.get("hosts")),
        gateways=nonempty_strings(spec.get("gateways")),
        http=each(spec.get("http"), http_route),
        tcp=each(spec.get("tcp"), l4_route),
        tls=each(spec.get("tls"), l4_route),
        export_to=strings(spec.get("exportTo")),
    )

