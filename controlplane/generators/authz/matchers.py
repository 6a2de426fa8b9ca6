"""Envoy matchers for AuthorizationPolicy values, with Istio's wildcard rules.

A policy value is exact, `*` (anything non-empty), `prefix*` or `*suffix`; istiod turns
each into a StringMatcher (pilot/pkg/security/authz/matcher, read, not copied): `*` is the
regex `.+` (or a `present_match` for headers), the others prefix/suffix/exact. Values
carrying a fixed prefix (SPIFFE principals) use a regex for `*suffix`, with the suffix
escaped as Go's regexp.QuoteMeta does. Functions raise ValueError for values Envoy cannot
take (a bad IP or port); the rule builder decides what that means for the policy.
"""
from __future__ import annotations

import ipaddress
import re
from typing import TypeAlias

from envoy.config.core.v3 import address_pb2, extension_pb2
from envoy.config.rbac.v3 import rbac_pb2
from envoy.config.route.v3 import route_components_pb2 as route_pb2
from envoy.extensions.path.match.uri_template.v3 import uri_template_match_pb2
from envoy.type.matcher.v3 import metadata_pb2, path_pb2, regex_pb2, string_pb2, value_pb2
from google.protobuf import any_pb2, wrappers_pb2

SPIFFE_PREFIX = "spiffe://"
JWT_FILTER = "envoy.filters.http.jwt_authn"  # the JWT filter's dynamic metadata namespace
JWT_PAYLOAD = "payload"  # where it puts the verified payload (payload_in_metadata)
URI_TEMPLATE = "uri-template"

Principal: TypeAlias = rbac_pb2.Principal
Permission: TypeAlias = rbac_pb2.Permission

# Go's regexp.QuoteMeta escapes exactly these; Python's re.escape escapes more (`-`, ` `).
_META = re.compile(r"([\\.+*?()|\[\]{}^$])")


def quote_meta(s: str) -> str:
    return _META.sub(r"\\\1", s)


# --- string matchers ------------------------------------------------------------------

def exact(v: str, ignore_case: bool = False) -> string_pb2.StringMatcher:
    return string_pb2.StringMatcher(exact=v, ignore_case=ignore_case)


def prefix(v: str, ignore_case: bool = False) -> string_pb2.StringMatcher:
    return string_pb2.StringMatcher(prefix=v, ignore_case=ignore_case)


def suffix(v: str, ignore_case: bool = False) -> string_pb2.StringMatcher:
    return string_pb2.StringMatcher(suffix=v, ignore_case=ignore_case)


def regex(r: str) -> string_pb2.StringMatcher:
    return string_pb2.StringMatcher(safe_regex=regex_pb2.RegexMatcher(regex=r))


MATCH_ANY = ".+"


def string_matcher(v: str, fixed_prefix: str = "") -> string_pb2.StringMatcher:
    """Istio's StringMatcherWithPrefix: `*` -> `.+`; `*x` -> suffix (a regex when a fixed
    prefix must also match); `x*` -> prefix; else exact, all behind `fixed_prefix`."""
    if v == "*":
        return regex(MATCH_ANY)
    if v.startswith("*"):
        if not fixed_prefix:
            return suffix(v[1:])
        return regex(quote_meta(fixed_prefix) + ".*" + quote_meta(v[1:]))
    if v.endswith("*"):
        return prefix(fixed_prefix + v[:-1])
    return exact(fixed_prefix + v)


def wildcard_regex(v: str, any_part: str = ".*") -> str:
    """`v` as a regex where each `*` stands for `any_part` and the rest is literal."""
    return any_part.join(quote_meta(part) for part in v.split("*"))


def header(name: str, v: str, ignore_case: bool = False) -> route_pb2.HeaderMatcher:
    """`*` -> present; `*x` suffix; `x*` prefix; else exact (Istio's HeaderMatcher /
    HostMatcher; hosts are compared ignoring case)."""
    if v == "*":
        return route_pb2.HeaderMatcher(name=name, present_match=True)
    if v.startswith("*"):
        return route_pb2.HeaderMatcher(name=name, string_match=suffix(v[1:], ignore_case))
    if v.endswith("*"):
        return route_pb2.HeaderMatcher(name=name, string_match=prefix(v[:-1], ignore_case))
    return route_pb2.HeaderMatcher(name=name, string_match=exact(v, ignore_case))


def inline_header(name: str, v: str) -> route_pb2.HeaderMatcher:
    """`request.experimental.inline.headers[...]`: the value may be one of several
    comma-separated values of the header (RFC 7230), as Istio's HeaderMatcherWithRegex."""
    if v == "*":
        return route_pb2.HeaderMatcher(name=name, present_match=True)
    if v.startswith("*"):
        r = ".*" + quote_meta(v[1:])
    elif v.endswith("*"):
        r = quote_meta(v[:-1]) + ".*"
    else:
        r = quote_meta(v)
    pattern = f"^{r}$|^{r},.*|.*,{r},.*|.*,{r}$"
    return route_pb2.HeaderMatcher(name=name, safe_regex_match=regex_pb2.RegexMatcher(regex=pattern))


def path(v: str) -> path_pb2.PathMatcher:
    return path_pb2.PathMatcher(path=string_matcher(v))


def has_path_template(v: str) -> bool:
    return "{*}" in v or "{**}" in v


def path_template(v: str) -> extension_pb2.TypedExtensionConfig:
    """`/a/{*}/b/{**}` -> Envoy's uri_template `/a/*/b/**` (the extension Istio uses)."""
    template = v.replace("{**}", "**").replace("{*}", "*")
    cfg = any_pb2.Any()
    cfg.Pack(uri_template_match_pb2.UriTemplateMatchConfig(path_template=template))
    return extension_pb2.TypedExtensionConfig(name=URI_TEMPLATE, typed_config=cfg)


# --- values Envoy must parse ------------------------------------------------------------

_DIGITS = re.compile(r"[0-9]+")


def port(v: str) -> int:
    """Go's strconv.ParseUint(v, 10, 32) limited to 65535, as istiod's convertToPort."""
    if not _DIGITS.fullmatch(v) or int(v) > 65535:
        raise ValueError(f"invalid port {v!r}: must be a number in [0, 65535]")
    return int(v)


def cidr(v: str) -> address_pb2.CidrRange:
    """`1.2.3.4` (a /32 or /128) or `10.0.0.0/8`, keeping the address as written (not
    masked), as istiod's AddrStrToCidrRange."""
    try:
        if "/" in v:
            iface = ipaddress.ip_interface(v)
            addr, bits = iface.ip, iface.network.prefixlen
            if not v.split("/", 1)[1].isdigit():
                raise ValueError(v)
        else:
            addr = ipaddress.ip_address(v)
            bits = addr.max_prefixlen
    except ValueError:
        raise ValueError(f"invalid IP address or CIDR block {v!r}") from None
    return address_pb2.CidrRange(address_prefix=str(addr), prefix_len=wrappers_pb2.UInt32Value(value=bits))


# --- metadata ----------------------------------------------------------------------------

def value_string(m: string_pb2.StringMatcher) -> value_pb2.ValueMatcher:
    return value_pb2.ValueMatcher(string_match=m)


def value_or(matchers: list[value_pb2.ValueMatcher]) -> value_pb2.ValueMatcher:
    """OR of `matchers`; a single matcher stands alone (as Istio's OrMatcher)."""
    if len(matchers) == 1:
        return matchers[0]
    return value_pb2.ValueMatcher(or_match=value_pb2.OrMatcher(value_matchers=matchers))


def value_list_one_of(m: value_pb2.ValueMatcher) -> value_pb2.ValueMatcher:
    return value_pb2.ValueMatcher(list_match=value_pb2.ListMatcher(one_of=m))


def metadata(filter_name: str, keys: list[str], value: value_pb2.ValueMatcher) -> metadata_pb2.MetadataMatcher:
    return metadata_pb2.MetadataMatcher(
        filter=filter_name, path=[metadata_pb2.MetadataMatcher.PathSegment(key=k) for k in keys], value=value)


def jwt_claim(claim: str, m: string_pb2.StringMatcher) -> metadata_pb2.MetadataMatcher:
    """One top-level claim of the verified JWT payload equals `m`."""
    return metadata(JWT_FILTER, [JWT_PAYLOAD, claim], value_string(m))


def jwt_claims_any_of(claims: list[str], values: tuple[str, ...]) -> metadata_pb2.MetadataMatcher:
    """The (nested) claim is one of `values`, or a list holding one of them (audiences,
    groups): Istio's MetadataListValueMatcher for the JWT payload."""
    one_of = value_or([value_string(string_matcher(v)) for v in values])
    return metadata(JWT_FILTER, [JWT_PAYLOAD, *claims], value_or([value_list_one_of(one_of), one_of]))


# --- RBAC principals and permissions ------------------------------------------------------

def principal_any() -> Principal:
    return Principal(any=True)


def principal_and(ids: list[Principal]) -> Principal:
    return Principal(and_ids=Principal.Set(ids=ids))


def principal_or(ids: list[Principal]) -> Principal:
    return Principal(or_ids=Principal.Set(ids=ids))


def principal_not(p: Principal) -> Principal:
    return Principal(not_id=p)


def principal_authenticated(m: string_pb2.StringMatcher) -> Principal:
    return Principal(authenticated=Principal.Authenticated(principal_name=m))


def permission_any() -> Permission:
    return Permission(any=True)


def permission_and(rules: list[Permission]) -> Permission:
    return Permission(and_rules=Permission.Set(rules=rules))


def permission_or(rules: list[Permission]) -> Permission:
    return Permission(or_rules=Permission.Set(rules=rules))


def permission_not(p: Permission) -> Permission:
    return Permission(not_rule=p)
