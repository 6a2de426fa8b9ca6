"""Gateway API route rules as Istio VirtualService rules (documents), as istiod writes
them (pilot/pkg/config/kube/gateway/conversion.go, read not copied).

HTTPRoute and GRPCRoute rules become `http` rules named `<namespace>.<route>.<rule
index>` (or the rule's own `name`), each match an Istio match; filters become headers,
redirect, rewrite, mirrors; `timeouts.request` the rule timeout. Backends become weighted
destinations; a backend that does not resolve is left out and reported (the caller puts
the reason in the route's ResolvedRefs condition); a rule without any backend that
resolves answers 500 (`directResponse`), as the spec asks.
"""
from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from ...config.types.gateway_api import (
    CORS,
    BackendRef,
    GRPCRouteMatch,
    GRPCRouteRule,
    HeaderModifier,
    HTTPRouteFilter,
    HTTPRouteMatch,
    HTTPRouteRule,
    ObjectRef,
    ValueMatch,
)
from ...config.validation import durations
from ...names import fqdn

# A backend's host (and whether it exists) by (namespace, ref); None: no such backend.
# The caller decides kinds, ReferenceGrants and existence: see conversion.py.
Resolve = Callable[[ObjectRef], "Backend"]


@dataclass(frozen=True)
class Backend:
    host: str = ""
    port: int | None = None
    # "" when it resolves; else the route condition's reason (BackendNotFound,
    # InvalidKind, RefNotPermitted, UnsupportedValue) and why
    reason: str = ""
    message: str = ""


def service_host(ref: ObjectRef, namespace: str, domain: str) -> str:
    return fqdn(ref.name, ref.namespace or namespace, domain)


def _string_match(m: ValueMatch) -> dict[str, str]:
    return {"regex": m.value} if m.type == "RegularExpression" else {"exact": m.value}


def _path(m: ValueMatch | None) -> dict[str, str] | None:
    if m is None:
        return None
    if m.type == "Exact":
        return {"exact": m.value}
    if m.type == "RegularExpression":
        return {"regex": m.value}
    return {"prefix": m.value}


def http_match(m: HTTPRouteMatch) -> dict[str, Any]:
    out: dict[str, Any] = {}
    path = _path(m.path)
    if path is not None:
        out["uri"] = path
    if m.headers:
        out["headers"] = {h.name.lower(): _string_match(h) for h in m.headers}
    if m.query_params:
        out["queryParams"] = {q.name: _string_match(q) for q in m.query_params}
    if m.method:
        out["method"] = {"exact": m.method}
    return out


def grpc_match(m: GRPCRouteMatch) -> dict[str, Any]:
    out: dict[str, Any] = {}
    method = m.method
    if method is not None and (method.service or method.method):
        if method.type == "RegularExpression":
            out["uri"] = {"regex": f"/{method.service or '[^/]+'}/{method.method or '.+'}"}
        elif method.service and method.method:
            out["uri"] = {"exact": f"/{method.service}/{method.method}"}
        elif method.service:
            out["uri"] = {"prefix": f"/{method.service}/"}
        else:
            out["uri"] = {"regex": f"/[^/]+/{method.method}"}
    if m.headers:
        out["headers"] = {h.name.lower(): _string_match(h) for h in m.headers}
    return out


def _header_ops(h: HeaderModifier) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if h.set:
        out["set"] = dict(h.set)
    if h.add:
        out["add"] = dict(h.add)
    if h.remove:
        out["remove"] = list(h.remove)
    return out


def _duration(text: str) -> str | None:
    """A Gateway API duration as protobuf's (`1ms` -> `0.001s`); None for `0s` (no timeout)."""
    try:
        ns = durations.parse_duration(text)
    except ValueError:
        return None
    seconds, rest = divmod(ns, 1_000_000_000)
    if not rest:
        return f"{seconds}s"
    return f"{seconds}.{rest:09d}".rstrip("0") + "s"


@dataclass
class RuleProblems:
    """What a route's rules could not resolve: the first reason wins (ResolvedRefs)."""

    reason: str = ""
    message: str = ""

    def add(self, reason: str, message: str) -> None:
        if not self.reason:
            self.reason, self.message = reason, message


def _filters(rule: dict[str, Any], filters: tuple[HTTPRouteFilter, ...], resolve: Resolve, problems: RuleProblems,
             match_prefix: str | None) -> None:
    mirrors = []
    for f in filters:
        if f.type == "RequestHeaderModifier" and f.request_header_modifier is not None:
            ops = _header_ops(f.request_header_modifier)
            if ops:
                rule.setdefault("headers", {})["request"] = ops
        elif f.type == "ResponseHeaderModifier" and f.response_header_modifier is not None:
            ops = _header_ops(f.response_header_modifier)
            if ops:
                rule.setdefault("headers", {})["response"] = ops
        elif f.type == "RequestRedirect" and f.request_redirect is not None:
            r = f.request_redirect
            redirect: dict[str, Any] = {}
            if r.path is not None:
                if r.path.type == "ReplaceFullPath":
                    redirect["uri"] = r.path.value
                else:
                    redirect["prefixRewrite"] = r.path.value
            if r.port is not None:
                redirect["port"] = r.port
            else:  # the scheme's well-known port, else the port the request came to
                redirect["derivePort"] = "FROM_PROTOCOL_DEFAULT" if r.scheme else "FROM_REQUEST_PORT"
            if r.status_code:
                redirect["redirectCode"] = r.status_code
            if r.scheme:
                redirect["scheme"] = r.scheme
            if r.hostname:
                redirect["authority"] = r.hostname
            rule["redirect"] = redirect
        elif f.type == "URLRewrite" and f.url_rewrite is not None:
            w = f.url_rewrite
            rewrite: dict[str, Any] = {}
            if w.hostname:
                rewrite["authority"] = w.hostname
            if w.path is not None:
                if w.path.type == "ReplaceFullPath":
                    # the whole path: a regex over the full path
                    rewrite["uriRegexRewrite"] = {"match": "/.*", "rewrite": w.path.value}
                else:
                    rewrite["uri"] = w.path.value or "/"
            rule["rewrite"] = rewrite
        elif f.type == "CORS" and f.cors is not None:
            rule["corsPolicy"] = _cors_policy(f.cors)
        elif f.type == "RequestMirror" and f.request_mirror is not None:
            m = f.request_mirror
            backend = resolve(m.backend_ref)
            if backend.reason:
                problems.add(backend.reason, backend.message)
                continue
            mirror: dict[str, Any] = {"destination": _destination(backend)}
            if m.percent is not None:
                mirror["percentage"] = {"value": m.percent}
            mirrors.append(mirror)
        else:
            problems.add("UnsupportedValue", f"unsupported filter type {f.type!r}")
    if mirrors:
        rule["mirrors"] = mirrors


# An origin `*`: any scheme://host[:port] (the Gateway API's wildcard origin).
ANY_ORIGIN = r"^[a-zA-Z][a-zA-Z0-9+.-]*://[^/\s?#]+$"


def _origin(origin: str) -> dict[str, str]:
    if origin == "*":
        return {"regex": ANY_ORIGIN}
    if "*" in origin:  # `https://*.example.com`: a wildcard label
        return {"regex": "^" + ".*".join(re.escape(part) for part in origin.split("*")) + "$"}
    return {"exact": origin}


def _cors_policy(c: CORS) -> dict[str, Any]:
    """A CORS filter as Istio's corsPolicy; preflights it does not match go on to the
    backend (`unmatchedPreflights: IGNORE`), as istiod sets it."""
    out: dict[str, Any] = {}
    if c.allow_credentials:
        out["allowCredentials"] = True
    if c.allow_headers:
        out["allowHeaders"] = list(c.allow_headers)
    if c.allow_methods:
        out["allowMethods"] = list(c.allow_methods)
    if c.allow_origins:
        out["allowOrigins"] = [_origin(o) for o in c.allow_origins]
    if c.expose_headers:
        out["exposeHeaders"] = list(c.expose_headers)
    if c.max_age is not None:
        out["maxAge"] = f"{c.max_age}s"
    out["unmatchedPreflights"] = "IGNORE"
    return out


def _destination(b: Backend) -> dict[str, Any]:
    d: dict[str, Any] = {"host": b.host}
    if b.port is not None:
        d["port"] = {"number": b.port}
    return d


def _routes(backends: tuple[BackendRef, ...], resolve: Resolve, problems: RuleProblems
            ) -> tuple[list[dict[str, Any]], bool]:
    """The weighted destinations of a rule's backends, and whether some backend had a
    weight above zero but did not resolve (its share of requests answers 500)."""
    out, lost = [], False
    resolved = []
    for b in backends:
        backend = resolve(b.ref)
        if backend.reason:
            problems.add(backend.reason, backend.message)
            lost = lost or b.ref.weight > 0
            continue
        resolved.append((b, backend))
    weighted = len(resolved) > 1 or any(b.ref.weight != 1 for b, _ in resolved)
    for b, backend in resolved:
        if weighted and b.ref.weight == 0:
            continue
        dest: dict[str, Any] = {"destination": _destination(backend)}
        if weighted:
            dest["weight"] = b.ref.weight
        header_filters = [f for f in b.filters if f.type in ("RequestHeaderModifier", "ResponseHeaderModifier")]
        for f in header_filters:
            ops = _header_ops(f.request_header_modifier or f.response_header_modifier or HeaderModifier())
            if ops:
                dest.setdefault("headers", {})["request" if f.type == "RequestHeaderModifier" else "response"] = ops
        for f in b.filters:
            if f not in header_filters:
                problems.add("UnsupportedValue", f"backendRef filter {f.type!r} is not supported")
        out.append(dest)
    if len(out) == 1:
        out[0].pop("weight", None)  # one destination takes everything
    return out, lost


def http_rule(name: str, matches: list[dict[str, Any]], filters: tuple[HTTPRouteFilter, ...],
              backends: tuple[BackendRef, ...], resolve: Resolve, problems: RuleProblems,
              timeout: str = "") -> dict[str, Any]:
    """One Istio `http` rule of a Gateway API rule."""
    rule: dict[str, Any] = {}
    if matches and any(matches):
        rule["match"] = matches
    rule["name"] = name
    prefix = next((m["uri"]["prefix"] for m in matches if "prefix" in m.get("uri", {})), None)
    _filters(rule, filters, resolve, problems, prefix)
    if "redirect" not in rule:
        routes, lost = _routes(backends, resolve, problems)
        if routes and not lost:
            rule["route"] = routes
        elif routes:
            rule["route"] = routes  # the invalid share: reported; the rest still served
        else:
            rule.pop("mirrors", None)
            rule["directResponse"] = {"status": 500}
    if timeout:
        t = _duration(timeout)
        if t is not None:
            rule["timeout"] = t
    return rule


def http_rules(namespace: str, route: str, rules: tuple[HTTPRouteRule, ...], resolve: Resolve,
               problems: RuleProblems) -> list[dict[str, Any]]:
    out = []
    for i, r in enumerate(rules):
        # the time Envoy waits for the backend: backendRequest when given, else request
        timeout = (r.timeouts.backend_request or r.timeouts.request) if r.timeouts is not None else ""
        # one Istio rule per match: precedence orders matches, not rules
        for m in r.matches:
            out.append(http_rule(r.name or f"{namespace}.{route}.{i}", [http_match(m)], r.filters, r.backend_refs,
                                 resolve, problems, timeout))
    return out


def grpc_rules(namespace: str, route: str, rules: tuple[GRPCRouteRule, ...], resolve: Resolve,
               problems: RuleProblems) -> list[dict[str, Any]]:
    return [http_rule(r.name or f"{namespace}.{route}.{i}", [grpc_match(m)], r.filters, r.backend_refs, resolve, problems)
            for i, r in enumerate(rules) for m in (r.matches or (GRPCRouteMatch(),))]


def l4_routes(backends: tuple[ObjectRef, ...], resolve: Resolve, problems: RuleProblems) -> list[dict[str, Any]]:
    return _routes(tuple(BackendRef(b) for b in backends), resolve, problems)[0]


def _uri_length(rule: Mapping[str, Any]) -> tuple[int, int]:
    """(rank, length) of a rule's path: exact above prefix above a regex (which the
    Gateway API leaves unordered; istiod puts it after the prefixes)."""
    uri = (rule.get("match") or [{}])[0].get("uri") or {}
    if "exact" in uri:
        return 2, len(uri["exact"])
    if "prefix" in uri:
        return 1, len(uri["prefix"])
    # no path: the CRD's default, PathPrefix `/`
    return (0, len(uri["regex"])) if "regex" in uri else (1, 1)


def precedence(rule: Mapping[str, Any]) -> tuple[int, ...]:
    """The Gateway API's order of rules for one host (smaller first): an exact path, then
    the longest path, then a method, then most headers, then most query parameters; the
    caller's order (routes by creation time, then name; rules in order) breaks ties."""
    m = (rule.get("match") or [{}])[0]
    exact, length = _uri_length(rule)
    return (-exact, -length, 0 if "method" in m else 1, -len(m.get("headers") or {}), -len(m.get("queryParams") or {}))
