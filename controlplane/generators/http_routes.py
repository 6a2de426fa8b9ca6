"""VirtualService `http` rules as Envoy routes (istiod's route.BuildHTTPRoutesForVirtualService).

Used by gateways now and by sidecars later: the caller says which port the routes are
for and which gateway names (`ns/name`, or `mesh` for sidecars) the proxy answers to.
Each entry of a rule's `match` list becomes its own Envoy route (the list is an OR);
a rule without `match` is a catch-all `/` prefix and ends the VirtualService.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from envoy.config.core.v3 import base_pb2
from envoy.config.route.v3 import route_components_pb2 as rc
from envoy.type.matcher.v3 import regex_pb2
from envoy.type.v3 import percent_pb2
from google.protobuf import duration_pb2, wrappers_pb2

from .. import names
from ..config.objects import ConfigObject
from ..config.types.common import StringMatch
from ..config.types.virtualservice import (
    Destination,
    Headers,
    HTTPDirectResponse,
    HTTPMatchRequest,
    HTTPRedirect,
    HTTPRoute,
    RouteDestination,
)
from ..model.delegates import resolve_gateway_name
from ..model.gateway_api.mesh import gateway_semantics
from ..model.mesh import MeshSnapshot
from ..model.proxy import Proxy
from ..model.services import labels_match
from .convert import fractional_percent, integer_percent, proto_duration, string_matcher, struct, typed
from .filters import CORS, FAULT
from .route_policies import cors, fault, retry_policy

NO_TIMEOUT = duration_pb2.Duration()


_REDIRECT_CODES = {
    301: rc.RedirectAction.MOVED_PERMANENTLY,
    302: rc.RedirectAction.FOUND,
    303: rc.RedirectAction.SEE_OTHER,
    307: rc.RedirectAction.TEMPORARY_REDIRECT,
    308: rc.RedirectAction.PERMANENT_REDIRECT,
}


@dataclass(frozen=True)
class RouteContext:
    mesh: MeshSnapshot
    proxy: Proxy
    port: int  # the port routes are built for (a Gateway server port; a service port for sidecars)
    gateway_names: frozenset[str]  # {"ns/name"} on a gateway, {"mesh"} on a sidecar
    is_tls: bool = False  # the server terminates TLS (redirect scheme defaults to https)


def virtual_service_routes(vs: ConfigObject, ctx: RouteContext) -> list[rc.Route]:
    """All Envoy routes of one VirtualService, in rule order, stopping after a catch-all."""
    out: list[rc.Route] = []
    for rule in vs.typed.http:
        matches = rule.match
        if not matches:
            r = translate_route(vs, rule, None, ctx)
            if r is not None:
                out.append(r)
            break  # no match conditions: everything after is unreachable
        catch_all = False
        for m in matches:
            r = translate_route(vs, rule, m, ctx)
            if r is None:
                continue
            out.append(r)
            if is_catch_all(r):
                catch_all = True
                break
        if catch_all:
            break
    return out


def is_catch_all(r: rc.Route) -> bool:
    """Matches every request: path `/` (or regex `.*`) and no other condition."""
    m = r.match
    which = m.WhichOneof("path_specifier")
    path = {"prefix": m.prefix, "path_separated_prefix": m.path_separated_prefix}.get(which or "")
    path_all = path == "/" or (which == "safe_regex" and m.safe_regex.regex == ".*")
    return path_all and not m.headers and not m.query_parameters and not m.dynamic_metadata


def catch_all_last(routes: list[rc.Route]) -> list[rc.Route]:
    """Several VirtualServices share a virtual host: their catch-alls go last so they do
    not shadow the others' specific routes (istiod's SortVHostRoutes)."""
    return [r for r in routes if not is_catch_all(r)] + [r for r in routes if is_catch_all(r)]


# --- one rule, one match -------------------------------------------------------------


def _source_matches(match: HTTPMatchRequest | None, vs_namespace: str, ctx: RouteContext) -> bool:
    """A match applies to this proxy: its `gateways` (short names resolved in the
    VirtualService's namespace, as istiod does when it reads the object), or else its
    source labels and namespace."""
    if match is None:
        return True
    if match.gateways:
        return any(resolve_gateway_name(g, vs_namespace) in ctx.gateway_names for g in match.gateways)
    if not labels_match(match.source_labels, ctx.proxy.labels):
        return False
    ns = match.source_namespace
    return not ns or ns == ctx.proxy.namespace


def translate_route(vs: ConfigObject, rule: HTTPRoute, match: HTTPMatchRequest | None, ctx: RouteContext) -> rc.Route | None:
    """One Envoy route for one entry of a rule's match list (None: it does not apply here)."""
    if match is not None and match.port and match.port != ctx.port:
        return None
    if not _source_matches(match, vs.namespace, ctx):
        return None
    out = rc.Route(match=route_match(match, gateway_semantics(vs)))
    route_name = rule.name
    if match is not None and match.name:
        route_name = f"{route_name}.{match.name}"
    if route_name:
        out.name = route_name
    out.metadata.filter_metadata["istio"].CopyFrom(
        struct({"config": names.virtual_service_path(vs.namespace, vs.name, vs.version)})
    )
    authority = _apply_headers(out, rule.headers)
    if rule.redirect is not None:
        _apply_redirect(out, rule.redirect, ctx)
    elif rule.direct_response is not None:
        _apply_direct_response(out, rule.direct_response)
    else:
        _apply_route_action(out, vs, rule, authority, ctx)
    out.decorator.operation = route_operation(out, vs.name, ctx.port)
    if (f := fault(rule.fault)) is not None:
        out.typed_per_filter_config[FAULT].CopyFrom(typed(f))
    if (c := cors(rule.cors_policy)) is not None:
        out.typed_per_filter_config[CORS].CopyFrom(typed(c))
    return out


def route_match(match: HTTPMatchRequest | None, gateway_api: bool = False) -> rc.RouteMatch:
    out = rc.RouteMatch(prefix="/")
    if match is None:
        return out
    headers = [header_matcher(k, v) for k, v in match.headers.items()]
    headers += [header_matcher(k, v, invert=True) for k, v in match.without_headers.items()]
    headers.sort(key=lambda h: h.name)  # YAML map order must not change the output
    uri = match.uri
    if uri is not None and uri.exact is not None:
        out.path = uri.exact
    elif uri is not None and uri.prefix is not None and gateway_api and uri.prefix.rstrip("/"):
        # a Gateway API PathPrefix matches whole segments: /v2 takes /v2 and /v2/x, not /v2x (istiod)
        out.path_separated_prefix = uri.prefix.rstrip("/")
    elif uri is not None and uri.prefix is not None:
        out.prefix = uri.prefix
    elif uri is not None and uri.regex is not None:
        out.safe_regex.CopyFrom(regex_pb2.RegexMatcher(regex=uri.regex))
    out.case_sensitive.CopyFrom(wrappers_pb2.BoolValue(value=not match.ignore_uri_case))
    for pseudo, sm in ((":method", match.method), (":authority", match.authority), (":scheme", match.scheme)):
        if sm is not None:
            headers.append(header_matcher(pseudo, sm))
    out.headers.extend(headers)
    for name in sorted(match.query_params):
        out.query_parameters.append(_query_matcher(name, match.query_params[name]))
    return out


def header_matcher(name: str, sm: StringMatch, invert: bool = False) -> rc.HeaderMatcher:
    out = rc.HeaderMatcher(name=name)
    if sm.presence:
        out.present_match = True
    elif (m := string_matcher(sm)) is not None:
        out.string_match.CopyFrom(m)
    if invert:
        out.invert_match = True
        # A missing header must count as "not equal" for withoutHeaders, except for
        # presence checks where Envoy forbids the flag.
        if not sm.presence:
            out.treat_missing_header_as_empty = True
    return out


def _query_matcher(name: str, sm: StringMatch) -> rc.QueryParameterMatcher:
    out = rc.QueryParameterMatcher(name=name)
    if sm.presence:
        out.present_match = True
    elif (m := string_matcher(sm)) is not None:
        out.string_match.CopyFrom(m)
    return out


# --- header operations ---------------------------------------------------------------


def _is_authority(key: str) -> bool:
    return key.lower() in (":authority", "host")


def _is_internal(key: str) -> bool:
    """Pseudo headers and Host cannot be changed as plain headers (host becomes a rewrite)."""
    return key.startswith(":") or key.lower() == "host"


def _header_options(values: Mapping[str, str], append: bool) -> tuple[list[base_pb2.HeaderValueOption], str]:
    opt = base_pb2.HeaderValueOption
    action = opt.APPEND_IF_EXISTS_OR_ADD if append else opt.OVERWRITE_IF_EXISTS_OR_ADD
    authority, out = "", []
    for key in sorted(values):
        value = values[key]
        if _is_authority(key):
            authority = value
        if _is_internal(key):
            continue
        out.append(base_pb2.HeaderValueOption(header=base_pb2.HeaderValue(key=key, value=value), append_action=action))
    return out, authority


def header_operations(headers: Headers) -> tuple[list[Any], list[str], list[Any], list[str], str]:
    """Istio `headers` -> (request add, request remove, response add, response remove, authority)."""
    req, resp = headers.request, headers.response
    req_set, set_auth = _header_options(req.set, append=False)
    req_add, add_auth = _header_options(req.add, append=True)
    resp_set, _ = _header_options(resp.set, append=False)
    resp_add, _ = _header_options(resp.add, append=True)
    req_remove = [k for k in req.remove if not _is_internal(k)]
    resp_remove = [k for k in resp.remove if not _is_internal(k)]
    return req_set + req_add, req_remove, resp_set + resp_add, resp_remove, set_auth or add_auth


def _apply_headers(out: rc.Route, headers: Headers | None) -> str:
    if headers is None:
        return ""
    req_add, req_remove, resp_add, resp_remove, authority = header_operations(headers)
    out.request_headers_to_add.extend(req_add)
    out.request_headers_to_remove.extend(req_remove)
    out.response_headers_to_add.extend(resp_add)
    out.response_headers_to_remove.extend(resp_remove)
    return authority


# --- actions -------------------------------------------------------------------------


def _apply_redirect(out: rc.Route, redirect: HTTPRedirect, ctx: RouteContext) -> None:
    code = redirect.redirect_code or 301
    if code not in _REDIRECT_CODES:
        # istiod drops the action and Envoy would reject a route without one: answer 500.
        out.direct_response.status = 500
        return
    action = rc.RedirectAction(response_code=_REDIRECT_CODES[code])
    if redirect.uri:
        action.path_redirect = redirect.uri
    elif redirect.prefix_rewrite:
        action.prefix_rewrite = redirect.prefix_rewrite
    if redirect.authority:
        action.host_redirect = redirect.authority
    scheme = redirect.scheme
    if scheme:
        action.scheme_redirect = scheme
    port = None
    if redirect.derive_port == "FROM_REQUEST_PORT":
        # Envoy cannot derive it; routes are built per port, so that port is the request's.
        port = ctx.port
    elif redirect.port is not None:
        port = redirect.port
    if port:
        effective_scheme = scheme or ("https" if ctx.is_tls else "http")
        # No explicit :80 for http or :443 for https.
        if not ((port == 80 and effective_scheme == "http") or (port == 443 and effective_scheme == "https")):
            action.port_redirect = port
    out.redirect.CopyFrom(action)


def _apply_direct_response(out: rc.Route, dr: HTTPDirectResponse) -> None:
    action = rc.DirectResponseAction(status=dr.status)
    if dr.body_string is not None:
        action.body.inline_string = dr.body_string
    elif dr.body_bytes is not None:
        action.body.inline_bytes = dr.body_bytes
    out.direct_response.CopyFrom(action)


def _apply_route_action(out: rc.Route, vs: ConfigObject, rule: HTTPRoute, authority: str, ctx: RouteContext) -> None:
    action = out.route
    timeout = proto_duration(rule.timeout)
    action.timeout.CopyFrom(timeout if timeout is not None else NO_TIMEOUT)
    # gRPC requests time out like others unless the VS sets a timeout (istiod sets the
    # deprecated max_grpc_timeout because max_stream_duration regressed for it).
    action.max_grpc_timeout.CopyFrom(action.timeout)
    rewrite = rule.rewrite
    if rewrite is not None and rewrite.uri_regex_rewrite is not None:
        action.regex_rewrite.pattern.regex = rewrite.uri_regex_rewrite.match
        action.regex_rewrite.substitution = rewrite.uri_regex_rewrite.rewrite
    elif rewrite is not None and rewrite.uri:
        action.prefix_rewrite = rewrite.uri
    if rewrite is not None and rewrite.authority:
        authority = rewrite.authority
    if authority:
        action.host_rewrite_literal = authority
    _apply_mirrors(action, vs, rule, ctx)
    consistent = _apply_destinations(out, action, vs, rule.route, ctx)
    policy = retry_policy(rule.retries, consistent_hash=consistent,
                          mesh_default=ctx.mesh.mesh_config.default_http_retry_policy)
    if policy is not None:
        action.retry_policy.CopyFrom(policy)


def destination_cluster(dest: Destination, vs_namespace: str, ctx: RouteContext) -> str:
    """Cluster for a `destination`: the port defaults to the service's only port, else to
    the port the routes are built for (istiod's GetDestinationCluster)."""
    host = names.resolve_host(dest.host, vs_namespace)
    port = dest.port
    if port is None:
        svc = ctx.mesh.sidecar_scope(ctx.proxy).service(host)  # the proxy's view, as istiod's ServiceForHostname
        port = svc.ports[0].port if svc is not None and len(svc.ports) == 1 else ctx.port
    return names.outbound_cluster(port, host, dest.subset)


def _apply_destinations(
    out: rc.Route, action: rc.RouteAction, vs: ConfigObject, destinations: tuple[RouteDestination, ...],
    ctx: RouteContext,
) -> bool:
    """Set the cluster(s); returns whether a consistent-hash policy applies (no retry host predicate then)."""
    if not destinations:
        # Validation requires a destination; Envoy requires an action. Nothing to route to.
        action.cluster = names.BLACKHOLE_CLUSTER
        return False
    weighted = [d for d in destinations if d.weight > 0] if len(destinations) > 1 else []
    if len(destinations) == 1 or not weighted:
        # One destination (or no usable weights): route to the first one outright.
        dest = destinations[0]
        action.cluster = destination_cluster(dest.destination, vs.namespace, ctx)
        _apply_destination_headers(out, action, dest.headers)
        hp = hash_policy(dest.destination, vs.namespace, ctx)
        if hp is not None:
            action.hash_policy.append(hp)
        return hp is not None
    for dest in weighted:
        cw = action.weighted_clusters.clusters.add(name=destination_cluster(dest.destination, vs.namespace, ctx))
        cw.weight.value = dest.weight
        if dest.headers is not None:
            req_add, req_remove, resp_add, resp_remove, authority = header_operations(dest.headers)
            cw.request_headers_to_add.extend(req_add)
            cw.request_headers_to_remove.extend(req_remove)
            cw.response_headers_to_add.extend(resp_add)
            cw.response_headers_to_remove.extend(resp_remove)
            if authority:
                cw.host_rewrite_literal = authority
        hp = hash_policy(dest.destination, vs.namespace, ctx)
        if hp is not None:
            action.hash_policy.append(hp)
    return False


def _apply_destination_headers(out: rc.Route, action: rc.RouteAction, headers: Headers | None) -> None:
    if headers is None:
        return
    req_add, req_remove, resp_add, resp_remove, authority = header_operations(headers)
    out.request_headers_to_add.extend(req_add)
    out.request_headers_to_remove.extend(req_remove)
    out.response_headers_to_add.extend(resp_add)
    out.response_headers_to_remove.extend(resp_remove)
    if authority and not action.host_rewrite_literal:
        action.host_rewrite_literal = authority


def _apply_mirrors(action: rc.RouteAction, vs: ConfigObject, rule: HTTPRoute, ctx: RouteContext) -> None:
    mirrors: list[tuple[Destination, percent_pb2.FractionalPercent]] = []
    if rule.mirror is not None:
        if rule.mirror_percentage is not None:
            pct = fractional_percent(rule.mirror_percentage)
        elif rule.mirror_percent is not None:
            pct = integer_percent(rule.mirror_percent)
        else:
            pct = integer_percent(100)
        mirrors.append((rule.mirror, pct))
    for m in rule.mirrors:
        pct = fractional_percent(m.percentage) if m.percentage is not None else integer_percent(100)
        mirrors.append((m.destination, pct))
    for dest, pct in mirrors:
        if not dest.host or pct.numerator == 0:
            continue  # an explicit 0% means no mirroring
        policy = action.request_mirror_policies.add(cluster=destination_cluster(dest, vs.namespace, ctx))
        policy.runtime_fraction.default_value.CopyFrom(pct)
        policy.trace_sampled.value = False


def hash_policy(dest: Destination, vs_namespace: str, ctx: RouteContext) -> rc.RouteAction.HashPolicy | None:
    """The consistent-hash key a DestinationRule asks for on this destination."""
    host = names.resolve_host(dest.host, vs_namespace)
    dr = ctx.mesh.destination_rule(host, ctx.proxy.namespace, ctx.proxy.labels)
    if dr is None:
        return None
    lb = dr.typed.policy_for(dest.port or 0, dest.subset).load_balancer
    ch = lb.consistent_hash if lb is not None else None
    if ch is None:
        return None
    if ch.http_header_name:
        return rc.RouteAction.HashPolicy(header=rc.RouteAction.HashPolicy.Header(header_name=ch.http_header_name))
    if ch.http_cookie is not None:
        cookie = ch.http_cookie
        c = rc.RouteAction.HashPolicy.Cookie(name=cookie.name, path=cookie.path)
        if (ttl := proto_duration(cookie.ttl)) is not None:
            c.ttl.CopyFrom(ttl)
        return rc.RouteAction.HashPolicy(cookie=c)
    if ch.use_source_ip:
        props = rc.RouteAction.HashPolicy.ConnectionProperties(source_ip=True)
        return rc.RouteAction.HashPolicy(connection_properties=props)
    if ch.http_query_parameter_name:
        return rc.RouteAction.HashPolicy(
            query_parameter=rc.RouteAction.HashPolicy.QueryParameter(name=ch.http_query_parameter_name)
        )
    return None


def route_operation(r: rc.Route, vs_name: str, port: int) -> str:
    """Tracing operation: `host:port/path` for one cluster, `vsname:port/path` otherwise."""
    m = r.match
    which = m.WhichOneof("path_specifier")
    path = {"prefix": m.prefix + "*", "path": m.path, "safe_regex": m.safe_regex.regex}.get(which or "", "/*")
    if r.WhichOneof("action") == "route" and r.route.WhichOneof("cluster_specifier") == "cluster":
        parsed = names.parse_cluster_name(r.route.cluster)
        if parsed is not None:
            _, c_port, _, host = parsed
            return f"{host}:{c_port}{path}"
    return f"{vs_name}:{port}{path}"
