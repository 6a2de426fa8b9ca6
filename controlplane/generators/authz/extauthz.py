"""MeshConfig `extensionProviders` (envoyExtAuthzHttp, envoyExtAuthzGrpc) -> Envoy ext_authz
filters for CUSTOM policies, as istiod's pilot/pkg/security/authz/builder/extauthz.go
(read, not copied).

The filter runs only for requests a CUSTOM policy selected: the RBAC filter before it
evaluates the CUSTOM rules as shadow rules and records the first matching policy's name in
its dynamic metadata (`istio_ext_authz_shadow_effective_policy_id`); ext_authz's
`filter_enabled_metadata` fires when that name starts with `istio-ext-authz-<provider>`.

A provider that cannot be built (unknown, invalid, or its service not found) raises
ProviderError; the builder then denies what the CUSTOM rules would have sent to it.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from envoy.config.core.v3 import base_pb2, config_source_pb2, grpc_service_pb2, http_uri_pb2
from envoy.extensions.filters.http.ext_authz.v3 import ext_authz_pb2 as http_ext_authz_pb2
from envoy.extensions.filters.network.ext_authz.v3 import ext_authz_pb2 as network_ext_authz_pb2
from envoy.type.matcher.v3 import metadata_pb2, string_pb2
from envoy.type.v3 import http_status_pb2
from google.protobuf import duration_pb2

from ...model.meshconfig import EXT_AUTHZ_GRPC, EXT_AUTHZ_HTTP, ExtensionProvider
from ...names import outbound_cluster
from ..convert import duration
from . import matchers as m

HTTP_RBAC = "envoy.filters.http.rbac"
NETWORK_RBAC = "envoy.filters.network.rbac"
EXT_AUTHZ_SHADOW_PREFIX = "istio_ext_authz_"  # the CUSTOM RBAC filter's shadow stat (and metadata) prefix
SHADOW_EFFECTIVE_POLICY_ID = "shadow_effective_policy_id"
MATCH_PREFIX = "istio-ext-authz"  # CUSTOM policy names start with `istio-ext-authz-<provider>-`
TCP_STAT_PREFIX = "tcp."
DEFAULT_TIMEOUT = duration_pb2.Duration(seconds=600)

_BODY = ("maxRequestBytes", "allowPartialMessage", "packAsBytes")
_COMMON = ("service", "port", "timeout", "failOpen", "clearRouteCache", "statusOnError", "includeRequestBodyInCheck")
HTTP_SETTINGS = frozenset(_COMMON + (
    "pathPrefix", "includeRequestHeadersInCheck", "includeHeadersInCheck", "includeAdditionalHeadersInCheck",
    "headersToUpstreamOnAllow", "headersToDownstreamOnDeny", "headersToDownstreamOnAllow"))
GRPC_SETTINGS = frozenset(_COMMON)
_STATUS_CODES = frozenset(http_status_pb2.StatusCode.values())


class ProviderError(ValueError):
    """The provider cannot serve CUSTOM policies; the message says why."""


@dataclass(frozen=True)
class BuiltExtAuthz:
    http: http_ext_authz_pb2.ExtAuthz
    tcp: network_ext_authz_pb2.ExtAuthz | None  # None: an HTTP provider, not usable on TCP chains


def policy_prefix(provider: str) -> str:
    return f"{MATCH_PREFIX}-{provider}"


def filter_enabled_metadata(rbac_filter: str, provider: str) -> metadata_pb2.MetadataMatcher:
    return m.metadata(rbac_filter, [EXT_AUTHZ_SHADOW_PREFIX + SHADOW_EFFECTIVE_POLICY_ID],
                      m.value_string(m.prefix(policy_prefix(provider))))


class _Settings:
    """Reads a provider block, collecting every problem before failing."""

    def __init__(self, provider: ExtensionProvider, known: frozenset[str]):
        self.s: Mapping[str, Any] = provider.settings
        self.where = f"extensionProviders[{provider.name}].{provider.kind}"
        self.errors = [f"{self.where}.{k}: unknown field" for k in self.s if k not in known]

    def fail(self, key: str, reason: str) -> None:
        self.errors.append(f"{self.where}.{key}: {reason}")

    def bool(self, key: str) -> bool:
        v = self.s.get(key, False)
        if not isinstance(v, bool):
            self.fail(key, "must be true or false")
            return False
        return v

    def text(self, key: str) -> str:
        v = self.s.get(key, "")
        if not isinstance(v, str):
            self.fail(key, "must be a string")
            return ""
        return v

    def headers(self, key: str) -> string_pb2.ListStringMatcher | None:
        v = self.s.get(key)
        if v is None:
            return None
        if not isinstance(v, list) or not all(isinstance(h, str) and h for h in v):
            self.fail(key, "must be a list of header names")
            return None
        if "*" in v:
            self.fail(key, 'a single wildcard ("*") is not supported, use a prefix or suffix match')
            return None
        return header_patterns(v) if v else None


def header_patterns(names: list[str]) -> string_pb2.ListStringMatcher:
    """Header names, `x-prefix-*` or `*-suffix`, case-insensitive."""
    patterns = []
    for h in names:
        if h.startswith("*"):
            patterns.append(m.suffix(h[1:], ignore_case=True))
        elif h.endswith("*"):
            patterns.append(m.prefix(h[:-1], ignore_case=True))
        else:
            patterns.append(m.exact(h, ignore_case=True))
    return string_pb2.ListStringMatcher(patterns=patterns)


def _service(st: _Settings, services: Mapping[str, Any] | None) -> str:
    """The provider's `service` as a hostname: `[<namespace>/]<hostname>`, looked up in
    `services` (hostname -> Service) when given, as istiod's LookupCluster."""
    raw = st.text("service")
    if not raw:
        st.fail("service", "Required value")
        return ""
    namespace, sep, hostname = raw.partition("/")
    if not sep:
        namespace, hostname = "", raw
    if "/" in hostname or not hostname:
        st.fail("service", f"must be <hostname> or <namespace>/<hostname>, got {raw!r}")
        return ""
    if services is not None:
        svc = services.get(hostname)
        if svc is None or (namespace and getattr(svc, "namespace", namespace) != namespace):
            st.fail("service", f"could not find service {raw!r} in the mesh")
            return ""
    return hostname


@dataclass(frozen=True)
class _Common:
    """What HTTP and gRPC providers share."""

    hostname: str
    cluster: str
    timeout: duration_pb2.Duration
    status: http_status_pb2.HttpStatus | None
    body: http_ext_authz_pb2.BufferSettings | None
    fail_open: bool
    clear_route_cache: bool

    def http_filter(self, provider: str, **service: Any) -> http_ext_authz_pb2.ExtAuthz:
        """The HTTP ext_authz filter around `service` (http_service= or grpc_service=)."""
        http = http_ext_authz_pb2.ExtAuthz(
            failure_mode_allow=self.fail_open, clear_route_cache=self.clear_route_cache,
            transport_api_version=config_source_pb2.V3,
            filter_enabled_metadata=filter_enabled_metadata(HTTP_RBAC, provider), **service)
        if self.status is not None:
            http.status_on_error.CopyFrom(self.status)
        if self.body is not None:
            http.with_request_body.CopyFrom(self.body)
        return http


def _common(st: _Settings, services: Mapping[str, Any] | None) -> _Common:
    hostname = _service(st, services)
    port = st.s.get("port")
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        st.fail("port", f"must be in the range [1, 65535], got {port!r}")
        port = 0
    timeout = DEFAULT_TIMEOUT
    if st.s.get("timeout") is not None:
        timeout = duration(st.s["timeout"])
        if timeout is None:
            st.fail("timeout", f"invalid duration {st.s['timeout']!r}")
    status = None
    raw_status = st.s.get("statusOnError")
    if raw_status not in (None, ""):
        code = str(raw_status)
        if not code.isdigit() or int(code) not in _STATUS_CODES:
            st.fail("statusOnError", f"unsupported HTTP status {raw_status!r}")
        else:
            status = http_status_pb2.HttpStatus(code=int(code))
    body = None
    raw_body = st.s.get("includeRequestBodyInCheck")
    if raw_body is not None:
        if not isinstance(raw_body, Mapping) or any(k not in _BODY for k in raw_body):
            st.fail("includeRequestBodyInCheck", f"must be a mapping of {', '.join(_BODY)}")
        else:
            max_bytes = raw_body.get("maxRequestBytes", 0)
            if isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes < 0:
                st.fail("includeRequestBodyInCheck.maxRequestBytes", "must be a non-negative integer")
                max_bytes = 0
            body = http_ext_authz_pb2.BufferSettings(
                max_request_bytes=max_bytes, allow_partial_message=bool(raw_body.get("allowPartialMessage", False)),
                pack_as_bytes=bool(raw_body.get("packAsBytes", False)))
    return _Common(hostname, outbound_cluster(port, hostname), timeout or DEFAULT_TIMEOUT, status, body,
                   st.bool("failOpen"), st.bool("clearRouteCache"))


def _http(provider: ExtensionProvider, services: Mapping[str, Any] | None) -> BuiltExtAuthz:
    st = _Settings(provider, HTTP_SETTINGS)
    c = _common(st, services)
    path_prefix = st.text("pathPrefix")
    if path_prefix and not path_prefix.startswith("/"):
        st.fail("pathPrefix", f"must begin with '/', got {path_prefix!r}")
    # includeHeadersInCheck is the deprecated name, read only without the new one.
    allowed = st.headers("includeRequestHeadersInCheck")
    if allowed is None:
        allowed = st.headers("includeHeadersInCheck")
    extra = st.s.get("includeAdditionalHeadersInCheck") or {}
    if not isinstance(extra, Mapping) or not all(isinstance(v, str) for v in extra.values()):
        st.fail("includeAdditionalHeadersInCheck", "must be a mapping of header names to values")
        extra = {}
    upstream = st.headers("headersToUpstreamOnAllow")
    client_on_deny = st.headers("headersToDownstreamOnDeny")
    client_on_allow = st.headers("headersToDownstreamOnAllow")
    if st.errors:
        raise ProviderError("; ".join(st.errors))
    service = http_ext_authz_pb2.HttpService(
        path_prefix=path_prefix,
        server_uri=http_uri_pb2.HttpUri(uri=f"http://{c.hostname}", cluster=c.cluster, timeout=c.timeout))
    if extra:
        service.authorization_request.CopyFrom(http_ext_authz_pb2.AuthorizationRequest(
            headers_to_add=[base_pb2.HeaderValue(key=k, value=extra[k]) for k in sorted(extra)]))
    if upstream or client_on_deny or client_on_allow:
        response = service.authorization_response
        for target, value in ((response.allowed_upstream_headers, upstream),
                              (response.allowed_client_headers, client_on_deny),
                              (response.allowed_client_headers_on_success, client_on_allow)):
            if value is not None:
                target.CopyFrom(value)
    http = c.http_filter(provider.name, http_service=service)
    if allowed is not None:
        http.allowed_headers.CopyFrom(allowed)
    return BuiltExtAuthz(http=http, tcp=None)


def _grpc(provider: ExtensionProvider, services: Mapping[str, Any] | None) -> BuiltExtAuthz:
    st = _Settings(provider, GRPC_SETTINGS)
    c = _common(st, services)
    if st.errors:
        raise ProviderError("; ".join(st.errors))
    grpc = grpc_service_pb2.GrpcService(
        envoy_grpc=grpc_service_pb2.GrpcService.EnvoyGrpc(cluster_name=c.cluster, authority=c.hostname),
        timeout=c.timeout)
    tcp = network_ext_authz_pb2.ExtAuthz(
        stat_prefix=TCP_STAT_PREFIX, grpc_service=grpc, failure_mode_allow=c.fail_open,
        transport_api_version=config_source_pb2.V3,
        filter_enabled_metadata=filter_enabled_metadata(NETWORK_RBAC, provider.name))
    return BuiltExtAuthz(http=c.http_filter(provider.name, grpc_service=grpc), tcp=tcp)


def build(name: str, provider: ExtensionProvider | None, services: Mapping[str, Any] | None) -> BuiltExtAuthz:
    """The ext_authz filters of provider `name`; ProviderError when it cannot serve."""
    if provider is None:
        raise ProviderError(f"extension provider {name!r} is not defined in the mesh config's extensionProviders")
    if provider.kind == EXT_AUTHZ_HTTP:
        return _http(provider, services)
    if provider.kind == EXT_AUTHZ_GRPC:
        return _grpc(provider, services)
    raise ProviderError(f"extension provider {name!r} is a {provider.kind}, not an envoyExtAuthzHttp "
                        f"or envoyExtAuthzGrpc provider")
