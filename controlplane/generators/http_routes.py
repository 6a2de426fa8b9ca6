"""VirtualService `http` rules as Envoy routes (istiod's route.BuildHTTPRoutesForVirtualService).

Used by gateways now and by sidecars later: the caller says which port the routes are
for and which gateway names (`ns/name`, or `mesh` for sidecars) the proxy answers to.
Each entry of a rule's `match` list becomes its own Envoy route (the list is an OR);
a rule without `match` is a catch-all `/` prefix and ends the VirtualService.
"""
from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Any, Mapping

from google.protobuf import duration_pb2, wrappers_pb2

from envoy.config.core.v3 import base_pb2
from envoy.config.route.v3 import route_components_pb2 as rc
from envoy.extensions.filters.common.fault.v3 import fault_pb2 as common_fault_pb2
from envoy.extensions.filters.http.cors.v3 import cors_pb2
from envoy.extensions.filters.http.fault.v3 import fault_pb2
from envoy.extensions.retry.host.previous_hosts.v3 import previous_hosts_pb2
from envoy.extensions.retry.priority.previous_priorities.v3 import previous_priorities_config_pb2
from envoy.type.matcher.v3 import regex_pb2

from .. import names
from ..config.objects import ConfigObject
from ..model.mesh import MeshSnapshot
from ..model.proxy import Proxy
from ..model.services import labels_match
from . import traffic_policy
from .convert import (
    as_int,
    as_list,
    as_map,
    duration,
    fractional_percent,
    integer_percent,
    is_presence_match,
    string_matcher,
    struct,
    typed,
)
from .filters import CORS, FAULT
from .virtual_services import resolve_gateway_name

DEFAULT_RETRY_ON = "connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes"
NO_TIMEOUT = duration_pb2.Duration()

# gRPC status names Istio accepts in `fault.abort.grpcStatus`.
GRPC_STATUS = {
    "OK": 0, "CANCELLED": 1, "UNKNOWN": 2, "INVALID_ARGUMENT": 3, "DEADLINE_EXCEEDED": 4,
    "NOT_FOUND": 5, "ALREADY_EXISTS": 6, "PERMISSION_DENIED": 7, "RESOURCE_EXHAUSTED": 8,
    "FAILED_PRECONDITION": 9, "ABORTED": 10, "OUT_OF_RANGE": 11, "UNIMPLEMENTED": 12,
    "INTERNAL": 13, "UNAVAILABLE": 14, "DATA_LOSS": 15, "UNAUTHENTICATED": 16,
}

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
    for rule in as_list(vs.spec.get("http")):
        rule = as_map(rule)
        matches = [as_map(m) for m in as_list(rule.get("match"))]
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


def _source_matches(match: Mapping[str, Any] | None, ctx: RouteContext) -> bool:
    """A match applies to this proxy: its `gateways` (already resolved to "ns/name"), or
    else its source labels and namespace."""
    if match is None:
        return True
    gateways = [str(g) for g in as_list(match.get("gateways"))]
    if gateways:
        return any(g in ctx.gateway_names for g in gateways)
    if not labels_match(as_map(match.get("sourceLabels")), ctx.proxy.labels):
        return False
    ns = match.get("sourceNamespace")
    return not ns or ns == ctx.proxy.namespace


def translate_route(
    vs: ConfigObject, rule: Mapping[str, Any], match: Mapping[str, Any] | None, ctx: RouteContext
) -> rc.Route | None:
    """One Envoy route for one entry of a rule's match list (None: it does not apply here)."""
    if match is not None:
        port = as_int(match.get("port"), 0)
        if port and port != ctx.port:
            return None
    if not _source_matches(_with_vs_namespace(match, vs), ctx):
        return None
    out = rc.Route(match=route_match(match))
    route_name = str(rule.get("name") or "")
    if match is not None and match.get("name"):
        route_name = f"{route_name}.{match['name']}"
    if route_name:
        out.name = route_name
    out.metadata.filter_metadata["istio"].CopyFrom(
        struct({"config": names.virtual_service_path(vs.namespace, vs.name, vs.version)})
    )
    authority = _apply_headers(out, as_map(rule.get("headers")))
    if rule.get("redirect") is not None:
        _apply_redirect(out, as_map(rule.get("redirect")), ctx)
    elif rule.get("directResponse") is not None:
        _apply_direct_response(out, as_map(rule.get("directResponse")))
    else:
        _apply_route_action(out, vs, rule, authority, ctx)
    out.decorator.operation = route_operation(out, vs.name, ctx.port)
    if (f := fault(as_map(rule.get("fault")))) is not None:
        out.typed_per_filter_config[FAULT].CopyFrom(typed(f))
    if (c := cors(as_map(rule.get("corsPolicy")))) is not None:
        out.typed_per_filter_config[CORS].CopyFrom(typed(c))
    return out


def _with_vs_namespace(match: Mapping[str, Any] | None, vs: ConfigObject) -> Mapping[str, Any] | None:
    """Resolve `match.gateways` short names in the VirtualService namespace, as istiod does
    when it reads the object."""
    if match is None or not as_list(match.get("gateways")):
        return match
    resolved = [resolve_gateway_name(str(g), vs.namespace) for g in as_list(match.get("gateways"))]
    return {**match, "gateways": resolved}


def route_match(match: Mapping[str, Any] | None) -> rc.RouteMatch:
    out = rc.RouteMatch(prefix="/")
    if match is None:
        return out
    headers = [header_matcher(str(k), v) for k, v in as_map(match.get("headers")).items()]
    headers += [header_matcher(str(k), v, invert=True) for k, v in as_map(match.get("withoutHeaders")).items()]
    headers.sort(key=lambda h: h.name)  # YAML map order must not change the output
    uri = as_map(match.get("uri"))
    if "exact" in uri:
        out.path = str(uri["exact"])
    elif "prefix" in uri:
        out.prefix = str(uri["prefix"])
    elif "regex" in uri:
        out.safe_regex.CopyFrom(regex_pb2.RegexMatcher(regex=str(uri["regex"])))
    out.case_sensitive.CopyFrom(wrappers_pb2.BoolValue(value=not bool(match.get("ignoreUriCase"))))
    for pseudo, key in ((":method", "method"), (":authority", "authority"), (":scheme", "scheme")):
        if match.get(key) is not None:
            headers.append(header_matcher(pseudo, match.get(key)))
    out.headers.extend(headers)
    for name in sorted(as_map(match.get("queryParams"))):
        out.query_parameters.append(_query_matcher(str(name), match["queryParams"][name]))
    return out


def header_matcher(name: str, sm: Any, invert: bool = False) -> rc.HeaderMatcher:
    out = rc.HeaderMatcher(name=name)
    if is_presence_match(sm):
        out.present_match = True
    elif (m := string_matcher(sm)) is not None:
        out.string_match.CopyFrom(m)
    if invert:
        out.invert_match = True
        # A missing header must count as "not equal" for withoutHeaders, except for
        # presence checks where Envoy forbids the flag.
        if not is_presence_match(sm):
            out.treat_missing_header_as_empty = True
    return out


def _query_matcher(name: str, sm: Any) -> rc.QueryParameterMatcher:
    out = rc.QueryParameterMatcher(name=name)
    if is_presence_match(sm):
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


def _header_options(values: Mapping[str, Any], append: bool) -> tuple[list[base_pb2.HeaderValueOption], str]:
    opt = base_pb2.HeaderValueOption
    action = opt.APPEND_IF_EXISTS_OR_ADD if append else opt.OVERWRITE_IF_EXISTS_OR_ADD
    authority, out = "", []
    for key in sorted(values):
        value = str(values[key])
        if _is_authority(key):
            authority = value
        if _is_internal(key):
            continue
        out.append(base_pb2.HeaderValueOption(header=base_pb2.HeaderValue(key=key, value=value), append_action=action))
    return out, authority


def header_operations(headers: Mapping[str, Any]) -> tuple[list, list[str], list, list[str], str]:
    """Istio `headers` -> (request add, request remove, response add, response remove, authority)."""
    req, resp = as_map(headers.get("request")), as_map(headers.get("response"))
    req_set, set_auth = _header_options(as_map(req.get("set")), append=False)
    req_add, add_auth = _header_options(as_map(req.get("add")), append=True)
    resp_set, _ = _header_options(as_map(resp.get("set")), append=False)
    resp_add, _ = _header_options(as_map(resp.get("add")), append=True)
    req_remove = [str(k) for k in as_list(req.get("remove")) if not _is_internal(str(k))]
    resp_remove = [str(k) for k in as_list(resp.get("remove")) if not _is_internal(str(k))]
    return req_set + req_add, req_remove, resp_set + resp_add, resp_remove, set_auth or add_auth


def _apply_headers(out: rc.Route, headers: Mapping[str, Any]) -> str:
    if not headers:
        return ""
    req_add, req_remove, resp_add, resp_remove, authority = header_operations(headers)
    out.request_headers_to_add.extend(req_add)
    out.request_headers_to_remove.extend(req_remove)
    out.response_headers_to_add.extend(resp_add)
    out.response_headers_to_remove.extend(resp_remove)
    return authority


# --- actions -------------------------------------------------------------------------


def _apply_redirect(out: rc.Route, redirect: Mapping[str, Any], ctx: RouteContext) -> None:
    code = as_int(redirect.get("redirectCode"), 0) or 301
    if code not in _REDIRECT_CODES:
        # istiod drops the action and Envoy would reject a route without one: answer 500.
        out.direct_response.status = 500
        return
    action = rc.RedirectAction(response_code=_REDIRECT_CODES[code])
    if redirect.get("uri"):
        action.path_redirect = str(redirect["uri"])
    if redirect.get("authority"):
        action.host_redirect = str(redirect["authority"])
    scheme = str(redirect.get("scheme") or "")
    if scheme:
        action.scheme_redirect = scheme
    port = None
    if redirect.get("derivePort") == "FROM_REQUEST_PORT":
        # Envoy cannot derive it; routes are built per port, so that port is the request's.
        port = ctx.port
    elif as_int(redirect.get("port")) is not None:
        port = as_int(redirect.get("port"))
    if port:
        effective_scheme = scheme or ("https" if ctx.is_tls else "http")
        # No explicit :80 for http or :443 for https.
        if not ((port == 80 and effective_scheme == "http") or (port == 443 and effective_scheme == "https")):
            action.port_redirect = port
    out.redirect.CopyFrom(action)


def _apply_direct_response(out: rc.Route, dr: Mapping[str, Any]) -> None:
    action = rc.DirectResponseAction(status=as_int(dr.get("status"), 200) or 200)
    body = as_map(dr.get("body"))
    if "string" in body:
        action.body.inline_string = str(body["string"])
    elif "bytes" in body:
        try:
            action.body.inline_bytes = base64.b64decode(str(body["bytes"]), validate=True)
        except ValueError:
            pass  # validation rejects undecodable bytes; keep the status at least
    out.direct_response.CopyFrom(action)


def _apply_route_action(
    out: rc.Route, vs: ConfigObject, rule: Mapping[str, Any], authority: str, ctx: RouteContext
) -> None:
    action = out.route
    timeout = duration(rule.get("timeout"))
    action.timeout.CopyFrom(timeout if timeout is not None else NO_TIMEOUT)
    # gRPC requests time out like others unless the VS sets a timeout (istiod sets the
    # deprecated max_grpc_timeout because max_stream_duration regressed for it).
    action.max_grpc_timeout.CopyFrom(action.timeout)
    rewrite = as_map(rule.get("rewrite"))
    regex_rewrite = as_map(rewrite.get("uriRegexRewrite"))
    if regex_rewrite.get("match") is not None:
        action.regex_rewrite.pattern.regex = str(regex_rewrite["match"])
        action.regex_rewrite.substitution = str(regex_rewrite.get("rewrite") or "")
    elif rewrite.get("uri"):
        action.prefix_rewrite = str(rewrite["uri"])
    if rewrite.get("authority"):
        authority = str(rewrite["authority"])
    if authority:
        action.host_rewrite_literal = authority
    _apply_mirrors(action, vs, rule, ctx)
    destinations = [as_map(d) for d in as_list(rule.get("route"))]
    consistent = _apply_destinations(out, action, vs, destinations, ctx)
    policy = retry_policy(rule.get("retries"), consistent_hash=consistent)
    if policy is not None:
        action.retry_policy.CopyFrom(policy)


def destination_cluster(dest: Mapping[str, Any], vs_namespace: str, ctx: RouteContext) -> str:
    """Cluster for a `destination`: the port defaults to the service's only port, else to
    the port the routes are built for (istiod's GetDestinationCluster)."""
    host = names.resolve_host(str(dest.get("host") or ""), vs_namespace)
    port = as_int(as_map(dest.get("port")).get("number"))
    if port is None:
        svc = ctx.mesh.service(host)
        port = svc.ports[0].port if svc is not None and len(svc.ports) == 1 else ctx.port
    return names.outbound_cluster(port, host, str(dest.get("subset") or ""))


def _apply_destinations(
    out: rc.Route, action: rc.RouteAction, vs: ConfigObject, destinations: list, ctx: RouteContext
) -> bool:
    """Set the cluster(s); returns whether a consistent-hash policy applies (no retry host predicate then)."""
    if not destinations:
        # Validation requires a destination; Envoy requires an action. Nothing to route to.
        action.cluster = names.BLACKHOLE_CLUSTER
        return False
    weighted = [d for d in destinations if as_int(d.get("weight"), 0) > 0] if len(destinations) > 1 else []
    if len(destinations) == 1 or not weighted:
        # One destination (or no usable weights): route to the first one outright.
        dest = destinations[0]
        action.cluster = destination_cluster(as_map(dest.get("destination")), vs.namespace, ctx)
        _apply_destination_headers(out, action, as_map(dest.get("headers")))
        hp = hash_policy(as_map(dest.get("destination")), vs.namespace, ctx)
        if hp is not None:
            action.hash_policy.append(hp)
        return hp is not None
    for dest in weighted:
        cw = action.weighted_clusters.clusters.add(
            name=destination_cluster(as_map(dest.get("destination")), vs.namespace, ctx),
        )
        cw.weight.value = as_int(dest.get("weight"), 0)
        req_add, req_remove, resp_add, resp_remove, authority = header_operations(as_map(dest.get("headers")))
        cw.request_headers_to_add.extend(req_add)
        cw.request_headers_to_remove.extend(req_remove)
        cw.response_headers_to_add.extend(resp_add)
        cw.response_headers_to_remove.extend(resp_remove)
        if authority:
            cw.host_rewrite_literal = authority
        hp = hash_policy(as_map(dest.get("destination")), vs.namespace, ctx)
        if hp is not None:
            action.hash_policy.append(hp)
    return False


def _apply_destination_headers(out: rc.Route, action: rc.RouteAction, headers: Mapping[str, Any]) -> None:
    if not headers:
        return
    req_add, req_remove, resp_add, resp_remove, authority = header_operations(headers)
    out.request_headers_to_add.extend(req_add)
    out.request_headers_to_remove.extend(req_remove)
    out.response_headers_to_add.extend(resp_add)
    out.response_headers_to_remove.extend(resp_remove)
    if authority and not action.host_rewrite_literal:
        action.host_rewrite_literal = authority


def _apply_mirrors(action: rc.RouteAction, vs: ConfigObject, rule: Mapping[str, Any], ctx: RouteContext) -> None:
    mirrors: list[tuple[Mapping[str, Any], Any]] = []
    if rule.get("mirror") is not None:
        if rule.get("mirrorPercentage") is not None:
            pct = fractional_percent(rule.get("mirrorPercentage"))
        elif rule.get("mirrorPercent") is not None:
            pct = integer_percent(rule.get("mirrorPercent"))
        else:
            pct = integer_percent(100)
        mirrors.append((as_map(rule.get("mirror")), pct))
    for m in as_list(rule.get("mirrors")):
        m = as_map(m)
        pct = fractional_percent(m.get("percentage")) if m.get("percentage") is not None else integer_percent(100)
        mirrors.append((as_map(m.get("destination")), pct))
    for dest, pct in mirrors:
        if not dest.get("host") or pct is None or pct.numerator == 0:
            continue  # an explicit 0% means no mirroring
        policy = action.request_mirror_policies.add(cluster=destination_cluster(dest, vs.namespace, ctx))
        policy.runtime_fraction.default_value.CopyFrom(pct)
        policy.trace_sampled.value = False


def hash_policy(dest: Mapping[str, Any], vs_namespace: str, ctx: RouteContext) -> rc.RouteAction.HashPolicy | None:
    """The consistent-hash key a DestinationRule asks for on this destination."""
    host = names.resolve_host(str(dest.get("host") or ""), vs_namespace)
    dr = ctx.mesh.destination_rule(host, ctx.proxy.namespace, ctx.proxy.labels)
    if dr is None:
        return None
    port = as_int(as_map(dest.get("port")).get("number"), 0) or 0
    ch = traffic_policy.consistent_hash(traffic_policy.effective_policy(dr.spec, port, str(dest.get("subset") or "")))
    if not ch:
        return None
    if ch.get("httpHeaderName"):
        return rc.RouteAction.HashPolicy(header=rc.RouteAction.HashPolicy.Header(header_name=str(ch["httpHeaderName"])))
    if isinstance(ch.get("httpCookie"), Mapping):
        cookie = ch["httpCookie"]
        c = rc.RouteAction.HashPolicy.Cookie(name=str(cookie.get("name") or ""), path=str(cookie.get("path") or ""))
        if (ttl := duration(cookie.get("ttl"))) is not None:
            c.ttl.CopyFrom(ttl)
        return rc.RouteAction.HashPolicy(cookie=c)
    if ch.get("useSourceIp"):
        props = rc.RouteAction.HashPolicy.ConnectionProperties(source_ip=True)
        return rc.RouteAction.HashPolicy(connection_properties=props)
    if ch.get("httpQueryParameterName"):
        return rc.RouteAction.HashPolicy(
            query_parameter=rc.RouteAction.HashPolicy.QueryParameter(name=str(ch["httpQueryParameterName"]))
        )
    return None


# --- retries, faults, CORS -----------------------------------------------------------


def retry_policy(retries: Any, consistent_hash: bool = False) -> rc.RetryPolicy | None:
    """Istio's default retry policy, overridden by the VirtualService `retries`; attempts 0
    (or `retries` without attempts) turns retries off."""
    out = rc.RetryPolicy(
        retry_on=DEFAULT_RETRY_ON,
        num_retries=wrappers_pb2.UInt32Value(value=2),
        host_selection_retry_max_attempts=5,
        retriable_status_codes=[503],
    )
    if not consistent_hash:
        # Retry on another host; not with consistent hashing, which must stick to its host.
        out.retry_host_predicate.append(_previous_hosts())
    if retries is None:
        return out
    retries = as_map(retries)
    attempts = as_int(retries.get("attempts"), 0) or 0
    if attempts <= 0:
        return None
    out.num_retries.value = attempts
    if retries.get("retryOn"):
        on, codes = _parse_retry_on(str(retries["retryOn"]))
        if codes and "retriable-status-codes" not in on:
            on = f"{on},retriable-status-codes" if on else "retriable-status-codes"
        out.retry_on = on
        del out.retriable_status_codes[:]
        out.retriable_status_codes.extend(codes)
    if (d := duration(retries.get("perTryTimeout"))) is not None:
        out.per_try_timeout.CopyFrom(d)
    if retries.get("retryIgnorePreviousHosts") is not None:
        del out.retry_host_predicate[:]
        if retries.get("retryIgnorePreviousHosts"):
            out.retry_host_predicate.append(_previous_hosts())
    if retries.get("retryRemoteLocalities"):
        out.retry_priority.name = "envoy.retry_priorities.previous_priorities"
        out.retry_priority.typed_config.CopyFrom(
            typed(previous_priorities_config_pb2.PreviousPrioritiesConfig(update_frequency=2))
        )
    if (d := duration(retries.get("backoff"))) is not None:
        out.retry_back_off.base_interval.CopyFrom(d)
    return out


def _previous_hosts() -> rc.RetryPolicy.RetryHostPredicate:
    return rc.RetryPolicy.RetryHostPredicate(
        name="envoy.retry_host_predicates.previous_hosts",
        typed_config=typed(previous_hosts_pb2.PreviousHostsPredicate()),
    )


def _parse_retry_on(text: str) -> tuple[str, list[int]]:
    """Numbers among `retryOn` are status codes to retry on (istiod's parseRetryOn)."""
    conditions, codes = [], []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        if part.isdigit() and 100 <= int(part) <= 599:
            codes.append(int(part))
        else:
            conditions.append(part)
    return ",".join(conditions), codes


def fault(f: Mapping[str, Any]) -> fault_pb2.HTTPFault | None:
    if not f:
        return None
    out = fault_pb2.HTTPFault()
    delay = as_map(f.get("delay"))
    fixed = duration(delay.get("fixedDelay")) if delay else None
    if fixed is not None:  # exponential delays are not supported by istiod either
        d = common_fault_pb2.FaultDelay(fixed_delay=fixed)
        if delay.get("percentage") is not None:
            pct = fractional_percent(delay.get("percentage"))
        else:
            pct = integer_percent(delay.get("percent"))  # deprecated; absent means 0%
        if pct is not None:
            d.percentage.CopyFrom(pct)
        out.delay.CopyFrom(d)
    abort = as_map(f.get("abort"))
    if abort:
        a = fault_pb2.FaultAbort()
        if abort.get("percentage") is not None and (pct := fractional_percent(abort.get("percentage"))) is not None:
            a.percentage.CopyFrom(pct)
        if as_int(abort.get("httpStatus")) is not None:
            a.http_status = as_int(abort.get("httpStatus"))
            out.abort.CopyFrom(a)
        elif str(abort.get("grpcStatus") or "").upper() in GRPC_STATUS:
            a.grpc_status = GRPC_STATUS[str(abort["grpcStatus"]).upper()]
            out.abort.CopyFrom(a)
    if not out.HasField("delay") and not out.HasField("abort"):
        return None
    return out


def cors(policy: Mapping[str, Any]) -> cors_pb2.CorsPolicy | None:
    if not policy:
        return None
    out = cors_pb2.CorsPolicy()
    out.forward_not_matching_preflights.value = policy.get("unmatchedPreflights") != "IGNORE"
    origins = as_list(policy.get("allowOrigins"))
    if origins:
        for o in origins:
            if (m := string_matcher(o)) is not None:
                out.allow_origin_string_match.append(m)
    else:
        for o in as_list(policy.get("allowOrigin")):  # deprecated exact-match list
            out.allow_origin_string_match.add(exact=str(o))
    out.filter_enabled.default_value.numerator = 100
    if policy.get("allowCredentials") is not None:
        out.allow_credentials.value = bool(policy.get("allowCredentials"))
    out.allow_headers = ",".join(str(h) for h in as_list(policy.get("allowHeaders")))
    out.allow_methods = ",".join(str(m) for m in as_list(policy.get("allowMethods")))
    out.expose_headers = ",".join(str(h) for h in as_list(policy.get("exposeHeaders")))
    if (d := duration(policy.get("maxAge"))) is not None:
        out.max_age = str(d.seconds)
    return out


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
