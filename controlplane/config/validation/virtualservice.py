"""VirtualService semantics beyond the schema, after Istio's ValidateVirtualService.

Warnings Istio prints but accepts (unreachable rules, legacy gateway names, IP SNI hosts)
are not reported: validate() returns only what would make Istio reject the object.
"""
from __future__ import annotations

import re
from typing import Any

from . import dns, durations
from .errors import FieldError, child, index, invalid, map_key
from .istio_common import (
    MESH_GATEWAY,
    authority_header,
    check_destination,
    check_duration,
    check_export_to,
    check_gateway_names,
    check_header_operations,
    check_labels,
    check_percent,
    check_percentage,
    check_port,
    check_regex,
    check_string_match_regex,
    get,
    header_name_error,
    host_matches,
    host_subset_of,
    is_jwt_claim,
    is_regex_match,
    is_valid_http_status,
)

# Envoy's x-envoy-retry-on / x-envoy-retry-grpc-on policies.
_RETRY_ON = frozenset({
    "5xx", "gateway-error", "reset", "reset-before-request", "connect-failure", "retriable-4xx",
    "refused-stream", "retriable-status-codes", "retriable-headers", "envoy-ratelimited",
    "http3-post-connect-failure", "cancelled", "deadline-exceeded", "internal",
    "resource-exhausted", "unavailable",
})
_CORS_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "CONNECT", "OPTIONS", "TRACE", "*"})
_GRPC_STATUS = frozenset({
    "OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND",
    "ALREADY_EXISTS", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION", "ABORTED",
    "OUT_OF_RANGE", "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS", "UNAUTHENTICATED",
})
_STRING_MATCH_FIELDS = ("uri", "scheme", "method", "authority")
_MAX_DIRECT_RESPONSE_BODY = 1024 * 1024
_OUTBOUND_SNI = re.compile(r"outbound_.([0-8].*).*")  # Istio's pattern, matched from the start


def validate_virtual_service(spec: dict, namespace: str | None) -> list[FieldError]:
    errs: list[FieldError] = []
    hosts: list = get(spec, "hosts", [])
    gateways: list = get(spec, "gateways", [])
    http: list = get(spec, "http", [])
    tcp: list = get(spec, "tcp", [])
    tls: list = get(spec, "tls", [])

    delegate = not hosts  # a VirtualService without hosts can only be used as a delegate
    if delegate:
        if gateways:
            errs.append(FieldError("spec.gateways", "delegate virtual service must have no gateways specified"))
        if tls:
            errs.append(FieldError("spec.tls", "delegate virtual service must have no tls route specified"))
        if tcp:
            errs.append(FieldError("spec.tcp", "delegate virtual service must have no tcp route specified"))

    # Bound to gateways only when gateways are listed and `mesh` is not among them.
    applies_to_gateway = bool(gateways) and MESH_GATEWAY not in gateways
    if gateways:
        check_gateway_names(gateways, "spec.gateways", errs)
    if not applies_to_gateway:
        _check_no_jwt_claim_routing(http, gateways, errs)

    _check_hosts(hosts, tls, applies_to_gateway, errs)

    if not http and not tcp and not tls:
        errs.append(FieldError("spec", "http, tcp or tls must be provided in virtual service"))
    for i, route in enumerate(http):
        _validate_http_route(route, delegate, index("spec.http", i), errs)
    for i, route in enumerate(tls):
        _validate_tls_route(route, hosts, gateways, index("spec.tls", i), errs)
    for i, route in enumerate(tcp):
        _validate_tcp_route(route, index("spec.tcp", i), errs)
    check_export_to(namespace, get(spec, "exportTo"), "spec.exportTo", errs)
    return errs


def _check_hosts(hosts: list, tls: list, applies_to_gateway: bool, errs: list[FieldError]) -> None:
    sni = any(get(m, "sniHosts") for t in tls for m in get(t, "match", []))
    all_valid = True
    for i, host in enumerate(hosts):
        p = index("spec.hosts", i)
        err = _gateway_bound_host_error(host, sni) if applies_to_gateway else dns.check_wildcard_domain(host)
        if err:
            if not dns.is_ip(host):
                errs.append(invalid(p, host, err))
                all_valid = False
        elif not applies_to_gateway and host == "*":
            errs.append(invalid(p, host, "wildcard host * is not allowed for virtual services bound to the mesh gateway"))
            all_valid = False
    if not all_valid:
        return
    for i in range(len(hosts)):
        for j in range(i + 1, len(hosts)):
            if host_matches(hosts[i], hosts[j]):
                errs.append(invalid(index("spec.hosts", j), hosts[j],
                                    f"duplicate hosts in virtual service: {hosts[i]} & {hosts[j]}"))


def _gateway_bound_host_error(host: str, sni: bool) -> str | None:
    # Auto-generated SNI names (outbound_.80_._.svc.example) are allowed for TLS routes.
    first = host.partition(".")[0]
    if sni and first == "outbound_":
        return None if _OUTBOUND_SNI.match(host) else f'domain name "{host}" invalid (label "{first}" invalid)'
    return dns.check_wildcard_domain(host)


def _check_no_jwt_claim_routing(http: list, gateways: list, errs: list[FieldError]) -> None:
    for i, route in enumerate(http):
        for j, match in enumerate(get(route, "match", [])):
            for field in ("headers", "withoutHeaders"):
                for key in get(match, field, {}):
                    if is_jwt_claim(key):
                        errs.append(FieldError(
                            map_key(child(index(child(index("spec.http", i), "match"), j), field), key),
                            f"JWT claim based routing (key: {key}) is only supported for gateway, "
                            f"found no gateways: {gateways}"))


# --- http ------------------------------------------------------------------------------

def _validate_http_route(r: dict, delegate: bool, path: str, errs: list[FieldError]) -> None:
    route_type = "delegate" if delegate else ("root" if get(r, "delegate") is not None else "independent")
    _check_http_conflicts(r, route_type, path, errs)
    _check_http_matches(r, route_type, path, errs)
    check_header_operations(get(r, "headers"), child(path, "headers"), errs)
    _check_cors(get(r, "corsPolicy"), child(path, "corsPolicy"), errs)
    _check_fault(get(r, "fault"), child(path, "fault"), errs)

    for field in ("mirrorPercent", "mirror_percent"):
        value = get(r, field)
        if value is not None and value > 100:
            errs.append(invalid(child(path, field), value, f"mirror_percent must have a max value of 100 (it has {value})"))
    pct = get(get(r, "mirrorPercentage"), "value")
    if pct is not None and not 0 <= pct <= 100:
        errs.append(invalid(child(child(path, "mirrorPercentage"), "value"), pct,
                            "mirror_percentage must be in range 0..100"))
    check_destination(get(r, "mirror"), child(path, "mirror"), errs)
    for i, mirror in enumerate(get(r, "mirrors", [])):
        mp = index(child(path, "mirrors"), i)
        check_destination(get(mirror, "destination"), child(mp, "destination"), errs)
        value = get(get(mirror, "percentage"), "value")
        if value is not None and not 0 <= value <= 100:
            errs.append(invalid(child(child(mp, "percentage"), "value"), value,
                                "mirror percentage must be in range 0..100"))

    _check_redirect(get(r, "redirect"), child(path, "redirect"), errs)
    _check_direct_response(get(r, "directResponse"), child(path, "directResponse"), errs)
    _check_retries(get(r, "retries"), child(path, "retries"), errs)
    _check_rewrite(get(r, "rewrite"), child(path, "rewrite"), errs)
    _check_authority_rewrite(r, path, errs)
    _check_route_destinations(get(r, "route", []), child(path, "route"), errs, http=True)
    if get(r, "timeout") is not None:
        check_duration(r["timeout"], child(path, "timeout"), errs)


def _check_http_conflicts(r: dict, route_type: str, path: str, errs: list[FieldError]) -> None:
    name = get(r, "name", "")
    route, redirect, direct = get(r, "route"), get(r, "redirect"), get(r, "directResponse")
    if route_type == "root":
        # A root route hands matching requests to the delegate; it cannot route itself.
        if redirect is not None:
            errs.append(FieldError(child(path, "redirect"), f"root HTTP route {name} must not specify redirect"))
        if route is not None:
            errs.append(FieldError(child(path, "route"), f"root HTTP route {name} must not specify route"))
        return
    if route_type == "delegate" and get(r, "delegate") is not None:
        errs.append(FieldError(child(path, "delegate"), "delegate HTTP route cannot contain delegate"))
    fault, rewrite = get(r, "fault"), get(r, "rewrite")
    if redirect is not None:
        for field, value, text in (("route", route, "HTTP route cannot contain both route and redirect"),
                                   ("fault", fault, "HTTP route cannot contain both fault and redirect"),
                                   ("rewrite", rewrite, "HTTP route rule cannot contain both rewrite and redirect"),
                                   ("directResponse", direct,
                                    "HTTP route rule cannot contain both direct_response and redirect")):
            if value:
                errs.append(FieldError(child(path, field), text))
    elif direct is not None:
        for field, value, text in (("route", route, "HTTP route cannot contain both route and direct_response"),
                                   ("fault", fault, "HTTP route cannot contain both fault and direct_response"),
                                   ("rewrite", rewrite,
                                    "HTTP route rule cannot contain both rewrite and direct_response")):
            if value:
                errs.append(FieldError(child(path, field), text))
    elif not route:
        errs.append(FieldError(path, "HTTP route, redirect or direct_response is required"))
    if get(r, "mirror") is not None and get(r, "mirrors"):
        errs.append(FieldError(child(path, "mirrors"), "HTTP route cannot contain both mirror and mirrors"))


def _check_http_matches(r: dict, route_type: str, path: str, errs: list[FieldError]) -> None:
    for j, m in enumerate(get(r, "match", [])):
        mp = index(child(path, "match"), j)
        if route_type == "independent":
            for field in _STRING_MATCH_FIELDS:
                check_string_match_regex(get(m, field), child(mp, field), errs)
            for field in ("headers", "withoutHeaders", "queryParams"):
                for key, sm in get(m, field, {}).items():
                    kp = map_key(child(mp, field), key)
                    if field != "queryParams":
                        err = header_name_error(key, allow_jwt_claims=True)
                        if err:
                            errs.append(FieldError(kp, f"Invalid value: {err}"))
                    check_string_match_regex(sm, kp, errs)
        else:
            # Delegation merges matches by prefix; regexes cannot be combined that way.
            for field in _STRING_MATCH_FIELDS:
                if is_regex_match(get(m, field)):
                    errs.append(FieldError(child(child(mp, field), "regex"),
                                           f"{field} match does not support regex match for delegating"))
            for field in ("headers", "withoutHeaders", "queryParams"):
                for key, sm in get(m, field, {}).items():
                    kp = map_key(child(mp, field), key)
                    if is_regex_match(sm):
                        errs.append(FieldError(child(kp, "regex"),
                                               f"{field} match {key} does not support regex match for delegating"))
                    if field != "queryParams":
                        err = header_name_error(key, allow_jwt_claims=True)
                        if err:
                            errs.append(FieldError(kp, f"Invalid value: {err}"))
        if get(m, "port"):
            check_port(m["port"], child(mp, "port"), errs)
        check_labels(get(m, "sourceLabels"), child(mp, "sourceLabels"), errs)
        check_gateway_names(get(m, "gateways", []), child(mp, "gateways"), errs)
        source_ns = get(m, "sourceNamespace")
        if source_ns and not dns.is_istio_label(source_ns):
            errs.append(invalid(child(mp, "sourceNamespace"), source_ns, f"sourceNamespace match {source_ns} is invalid"))


def _check_cors(cors: Any, path: str, errs: list[FieldError]) -> None:
    if cors is None:
        return
    for i, origin in enumerate(get(cors, "allowOrigins", [])):
        op = index(child(path, "allowOrigins"), i)
        value = next((origin[k] for k in ("exact", "prefix", "regex") if get(origin, k) is not None), "")
        if value == "":
            errs.append(FieldError(op, "'' is not a valid match type for CORS allow origins"))
        else:
            check_string_match_regex(origin, op, errs)
    for i, method in enumerate(get(cors, "allowMethods", [])):
        if method not in _CORS_METHODS:
            errs.append(invalid(index(child(path, "allowMethods"), i), method, f'"{method}" is not a supported HTTP method'))
    for field in ("allowHeaders", "exposeHeaders"):
        for i, name in enumerate(get(cors, field, [])):
            err = header_name_error(name, cors=True)
            if err:
                errs.append(invalid(index(child(path, field), i), name, err))
    max_age = get(cors, "maxAge")
    if max_age is not None:
        before = len(errs)
        check_duration(max_age, child(path, "maxAge"), errs)
        if len(errs) == before and durations.parse_duration(max_age) % durations.SECOND:
            errs.append(invalid(child(path, "maxAge"), max_age, "max_age duration is accurate only to seconds precision"))


def _check_fault(fault: Any, path: str, errs: list[FieldError]) -> None:
    if fault is None:
        return
    abort, delay = get(fault, "abort"), get(fault, "delay")
    if abort is None and delay is None:
        errs.append(FieldError(path, "HTTP fault injection must have an abort and/or a delay"))
    if abort is not None:
        ap = child(path, "abort")
        check_percentage(get(abort, "percentage"), child(ap, "percentage"), errs)
        if get(abort, "grpcStatus") is not None:
            status = abort["grpcStatus"]
            if status not in _GRPC_STATUS:
                errs.append(invalid(child(ap, "grpcStatus"), status,
                                    f'gRPC status "{status}" is not supported. See '
                                    "https://github.com/grpc/grpc/blob/master/doc/statuscodes.md for a list of "
                                    "supported codes, for example 'NOT_FOUND'"))
        elif get(abort, "http2Error") is not None:
            errs.append(FieldError(child(ap, "http2Error"), "HTTP/2 abort fault injection not supported yet"))
        elif get(abort, "httpStatus") is not None:
            status = abort["httpStatus"]
            if not 200 <= status <= 600:
                errs.append(invalid(child(ap, "httpStatus"), status, f"HTTP status {status} is not in range 200-599"))
    if delay is not None:
        dp = child(path, "delay")
        check_percentage(get(delay, "percentage"), child(dp, "percentage"), errs)
        check_percent(get(delay, "percent"), child(dp, "percent"), errs)
        if get(delay, "fixedDelay") is not None:
            check_duration(delay["fixedDelay"], child(dp, "fixedDelay"), errs)
        elif get(delay, "exponentialDelay") is not None:
            errs.append(FieldError(child(dp, "exponentialDelay"), "exponentialDelay not supported yet"))


def _check_redirect(redirect: Any, path: str, errs: list[FieldError]) -> None:
    if redirect is None:
        return
    if not any(get(redirect, k) for k in ("uri", "authority", "port", "derivePort", "scheme", "prefixRewrite")):
        errs.append(FieldError(path, "redirect must specify URI, authority, scheme, or port"))
    code = get(redirect, "redirectCode")
    if code and not 300 <= code <= 399:
        errs.append(invalid(child(path, "redirectCode"), code, f"{code} is not a valid redirect code, must be 3xx"))
    scheme = get(redirect, "scheme")
    if scheme and scheme not in ("http", "https"):
        errs.append(invalid(child(path, "scheme"), scheme, 'invalid redirect scheme, must be "http" or "https"'))
    if get(redirect, "port"):
        check_port(redirect["port"], child(path, "port"), errs)


def _check_direct_response(direct: Any, path: str, errs: list[FieldError]) -> None:
    if direct is None:
        return
    body = get(direct, "body")
    size = len(get(body, "string", "")) + len(get(body, "bytes", ""))
    if size > _MAX_DIRECT_RESPONSE_BODY:
        errs.append(FieldError(child(path, "body"),
                               "large direct_responses may impact control plane performance, must be less than 1MB"))
    status = get(direct, "status", 0)
    if not 200 <= status <= 600:
        errs.append(invalid(child(path, "status"), status, f"HTTP status {status} is not in range 200-599"))


def _check_retries(retries: Any, path: str, errs: list[FieldError]) -> None:
    if retries is None:
        return
    attempts = get(retries, "attempts", 0)
    if attempts < 0:
        errs.append(invalid(child(path, "attempts"), attempts, "attempts cannot be negative"))
    configured = (get(retries, "perTryTimeout") is not None or get(retries, "retryOn", "") != ""
                  or get(retries, "retryRemoteLocalities") is not None)
    if attempts == 0 and configured:
        errs.append(FieldError(path, "http retry policy configured when attempts are set to 0 (disabled)"))
    if get(retries, "perTryTimeout") is not None:
        check_duration(retries["perTryTimeout"], child(path, "perTryTimeout"), errs)
    retry_on = get(retries, "retryOn", "")
    if retry_on:
        for policy in retry_on.split(","):
            valid_status = policy.isdigit() and is_valid_http_status(int(policy))
            if not valid_status and policy not in _RETRY_ON:
                errs.append(invalid(child(path, "retryOn"), retry_on, f'"{policy}" is not a valid retryOn policy'))


def _check_rewrite(rewrite: Any, path: str, errs: list[FieldError]) -> None:
    if rewrite is None:
        return
    uri, regex_rewrite, authority = get(rewrite, "uri", ""), get(rewrite, "uriRegexRewrite"), get(rewrite, "authority", "")
    if uri and regex_rewrite is not None:
        errs.append(FieldError(path, "rewrite may only contain one of URI or UriRegexRewrite"))
        return
    if not uri and regex_rewrite is None and not authority:
        errs.append(FieldError(path, "rewrite must specify at least one of URI, UriRegexRewrite, or authority. "
                                     "Only one of URI or UriRegexRewrite may be specified"))
        return
    if regex_rewrite is not None:
        rp = child(path, "uriRegexRewrite")
        if not get(regex_rewrite, "match") or not get(regex_rewrite, "rewrite"):
            errs.append(FieldError(rp, "UriRegexRewrite requires both Rewrite and Match fields to be specified"))
        else:
            check_regex(regex_rewrite["match"], child(rp, "match"), errs)


def _check_authority_rewrite(r: dict, path: str, errs: list[FieldError]) -> None:
    current = get(get(r, "rewrite"), "authority", "")
    request = get(get(r, "headers"), "request")
    for op in ("set", "add"):
        for name, value in get(request, op, {}).items():
            if not authority_header(name):
                continue
            if current:
                errs.append(FieldError(map_key(child(child(child(path, "headers"), "request"), op), name),
                                       f'authority header cannot be set multiple times: have "{current}", '
                                       f'attempting to set "{value}"'))
                return
            current = value


def _check_route_destinations(routes: list, path: str, errs: list[FieldError], http: bool = False) -> None:
    total = 0
    for i, rd in enumerate(routes):
        rp = index(path, i)
        if http:
            check_header_operations(get(rd, "headers"), child(rp, "headers"), errs)
        check_destination(get(rd, "destination"), child(rp, "destination"), errs)
        weight = get(rd, "weight", 0)
        if weight < 0:
            errs.append(invalid(child(rp, "weight"), weight, f"weight {weight} < 0"))
        total += weight
    # Istio normalises weights that do not sum to 100; only an all-zero split is meaningless.
    if len(routes) > 1 and total == 0:
        errs.append(FieldError(path, "total destination weight = 0"))


# --- tls and tcp -------------------------------------------------------------------------

def _validate_tls_route(r: dict, hosts: list, gateways: list, path: str, errs: list[FieldError]) -> None:
    matches = get(r, "match", [])
    if not matches:
        errs.append(FieldError(child(path, "match"), "TLS route must have at least one match condition"))
    # Istio's isGateway(): true unless `mesh` is listed (so also when no gateways are given).
    gateway_bound = MESH_GATEWAY not in gateways
    for j, m in enumerate(matches):
        mp = index(child(path, "match"), j)
        sni_hosts = get(m, "sniHosts", [])
        if not sni_hosts:
            errs.append(FieldError(child(mp, "sniHosts"), "TLS match must have at least one SNI host"))
        for k, sni in enumerate(sni_hosts):
            _check_sni_host(sni, hosts, gateway_bound, index(child(mp, "sniHosts"), k), errs)
        _check_l4_match(m, mp, errs)
    if not get(r, "route"):
        errs.append(FieldError(child(path, "route"), "TLS route is required"))
    _check_route_destinations(get(r, "route", []), child(path, "route"), errs)


def _check_sni_host(sni: str, hosts: list, gateway_bound: bool, path: str, errs: list[FieldError]) -> None:
    err = _gateway_bound_host_error(sni, True) if gateway_bound else dns.check_wildcard_domain(sni)
    if err:
        if not dns.is_ip(sni):  # an IP SNI is only a warning in Istio
            errs.append(invalid(path, sni, err))
        return
    if not any(host_subset_of(sni, h) for h in hosts):
        errs.append(invalid(path, sni, f'SNI host "{sni}" is not a compatible subset of any of the virtual '
                                       f"service hosts: [{', '.join(hosts)}]"))


def _validate_tcp_route(r: dict, path: str, errs: list[FieldError]) -> None:
    for j, m in enumerate(get(r, "match", [])):
        _check_l4_match(m, index(child(path, "match"), j), errs)
    if not get(r, "route"):
        errs.append(FieldError(child(path, "route"), "TCP route is required"))
    _check_route_destinations(get(r, "route", []), child(path, "route"), errs)


def _check_l4_match(m: dict, path: str, errs: list[FieldError]) -> None:
    for i, subnet in enumerate(get(m, "destinationSubnets", [])):
        err = dns.check_ip_subnet(subnet)
        if err:
            errs.append(invalid(index(child(path, "destinationSubnets"), i), subnet, err))
    if get(m, "port"):
        check_port(m["port"], child(path, "port"), errs)
    check_labels(get(m, "sourceLabels"), child(path, "sourceLabels"), errs)
    check_gateway_names(get(m, "gateways", []), child(path, "gateways"), errs)
