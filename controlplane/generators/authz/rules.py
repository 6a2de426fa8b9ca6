"""One AuthorizationPolicy rule -> one Envoy RBAC Policy, as istiod's
pilot/pkg/security/authz/model (read, not copied).

A rule becomes a Policy whose `permissions` (one per `to`, what is asked) and `principals`
(one per `from`, who asks) are each an AND of terms; `when` conditions join the side they
describe (destination.*, connection.sni and experimental metadata are permissions, the rest
principals) and are added to every `to`/`from`. A term is an OR of its values, and its
`not*` values become NOT(OR(...)). Istio's term order is kept: hosts, methods, paths,
ports, then `when`; principals, requestPrincipals, serviceAccounts, namespaces,
remoteIpBlocks, ipBlocks (then trustDomains), then `when`.

What cannot be expressed (an HTTP-only attribute on a TCP filter chain, a malformed value)
follows Istio's rule, which keeps errors on the safe side: for ALLOW the whole rule is
dropped (the policy allows less); for DENY, AUDIT and CUSTOM only that value is dropped (the
rule matches more). meshd applies the same rule to an unknown `when` key, which istiod
would drop the rule for whatever the action (for DENY, that would fail open).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeAlias

from envoy.config.rbac.v3 import rbac_pb2

from ...model.authorization import ALLOW, Operation, Rule, Source
from . import matchers as m
from .trust_domains import Bundle

Principal: TypeAlias = rbac_pb2.Principal
Permission: TypeAlias = rbac_pb2.Permission


class HttpOnly(ValueError):
    """The attribute needs an HTTP request; the filter is on a TCP chain."""


# --- the generators: one value -> one matcher (or all values at once: "extended") -------

def _http_only(key: str, for_tcp: bool) -> None:
    if for_tcp:
        raise HttpOnly(f"{key!r} is HTTP only")


def _bracketed(rest: str) -> str:
    if not (rest.startswith("[") and rest.endswith("]")):
        raise ValueError(f"expecting format [<NAME>], but found {rest!r}")
    return rest[1:-1]


def _nested_brackets(rest: str) -> list[str]:
    """`[a][b]` -> ["a", "b"]; `[a]` -> ["a"] (istiod's extractNameInNestedBrackets)."""
    names, begin = [], 0
    while begin < len(rest):
        end = -1
        if rest[begin] == "[":
            for i in range(begin + 1, len(rest)):
                if rest[i] == "[":
                    break
                if rest[i] == "]":
                    end = i
                    break
        if end == -1:
            return [_bracketed(rest)]
        names.append(rest[begin + 1:end])
        begin = end + 1
    if not names:
        raise ValueError(f"expecting format [<NAME>], but found {rest!r}")
    return names


def _authenticated(v: str, fixed_prefix: str = "") -> Principal:
    return m.principal_authenticated(m.string_matcher(v, fixed_prefix))


def _source_principal(_key: str, v: str, _tcp: bool) -> Principal:
    return _authenticated(v, m.SPIFFE_PREFIX)


def _source_namespace(_key: str, v: str, _tcp: bool) -> Principal:
    return m.principal_authenticated(m.regex(f".*/ns/{m.wildcard_regex(v)}/.*"))


def _service_account(policy_namespace: str) -> Callable[[str, str, bool], Principal]:
    def make(_key: str, v: str, _tcp: bool) -> Principal:
        # `<namespace>/<name>` or `<name>` (the policy's namespace); the SPIFFE ID may carry
        # extra segments between the namespace and `sa`, or after the name.
        ns, sep, sa = v.partition("/")
        if not sep:
            ns, sa = policy_namespace, v
        return m.principal_authenticated(
            m.regex(f"spiffe://.+/ns/{m.quote_meta(ns)}/(.+/|)sa/{m.quote_meta(sa)}(/.+)?"))
    return make


def _trust_domain(_key: str, v: str, _tcp: bool) -> Principal:
    if "*" in v:
        return m.principal_authenticated(m.regex(f"spiffe://{m.wildcard_regex(v, '[^/]*')}/.*"))
    return m.principal_authenticated(m.prefix(f"{m.SPIFFE_PREFIX}{v}/"))


def _direct_remote_ip(_key: str, v: str, _tcp: bool) -> Principal:
    return Principal(direct_remote_ip=m.cidr(v))


def _remote_ip(_key: str, v: str, _tcp: bool) -> Principal:
    return Principal(remote_ip=m.cidr(v))


def _request_header(key: str, v: str, tcp: bool) -> Principal:
    _http_only(key, tcp)
    return Principal(header=m.header(_bracketed(key[len("request.headers"):]), v))


def _inline_header(key: str, v: str, tcp: bool) -> Principal:
    _http_only(key, tcp)
    return Principal(header=m.inline_header(_bracketed(key[len("request.experimental.inline.headers"):]), v))


def _request_principals(key: str, values: tuple[str, ...], tcp: bool) -> Principal:
    """`<iss>/<sub>` against the JWT payload's `iss` and `sub` (split at the last `/`,
    since issuers are URLs), with `*` at either end as Istio reads it."""
    _http_only(key, tcp)
    ors = []
    for v in values:
        idx = v.rfind("/")
        found = idx >= 0
        iss, sub = (v[:idx], v[idx + 1:]) if found else (v, "")
        any_ = m.regex(m.MATCH_ANY)
        if v == "*":
            match_iss, match_sub = any_, any_
        elif v.startswith("*"):
            if found:
                match_iss = any_ if iss == "*" else m.suffix(iss[1:])
                match_sub = m.exact(sub)
            else:
                match_iss, match_sub = any_, m.suffix(v[1:])
        elif v.endswith("*"):
            if found:
                match_iss = m.exact(iss)
                match_sub = any_ if sub == "*" else m.prefix(sub[:-1])
            else:
                match_iss, match_sub = m.prefix(v[:-1]), any_
        else:
            match_iss, match_sub = m.exact(iss), m.exact(sub)
        ors.append(m.principal_and([Principal(metadata=m.jwt_claim("iss", match_iss)),
                                    Principal(metadata=m.jwt_claim("sub", match_sub))]))
    return ors[0] if len(ors) == 1 else m.principal_or(ors)


def _jwt_claim(claims: list[str]) -> Callable[[str, tuple[str, ...], bool], Principal]:
    def make(key: str, values: tuple[str, ...], tcp: bool) -> Principal:
        _http_only(key, tcp)
        return Principal(metadata=m.jwt_claims_any_of(claims, values))
    return make


def _request_claims(key: str, values: tuple[str, ...], tcp: bool) -> Principal:
    _http_only(key, tcp)
    return Principal(metadata=m.jwt_claims_any_of(_nested_brackets(key[len("request.auth.claims"):]), values))


def _host(key: str, v: str, tcp: bool) -> Permission:
    _http_only(key, tcp)
    return Permission(header=m.header(":authority", v, ignore_case=True))


def _method(key: str, v: str, tcp: bool) -> Permission:
    _http_only(key, tcp)
    return Permission(header=m.header(":method", v))


def _path(key: str, v: str, tcp: bool) -> Permission:
    _http_only(key, tcp)
    if m.has_path_template(v):
        return Permission(uri_template=m.path_template(v))
    return Permission(url_path=m.path(v))


def _dest_port(_key: str, v: str, _tcp: bool) -> Permission:
    return Permission(destination_port=m.port(v))


def _dest_ip(_key: str, v: str, _tcp: bool) -> Permission:
    return Permission(destination_ip=m.cidr(v))


def _sni(_key: str, v: str, _tcp: bool) -> Permission:
    return Permission(requested_server_name=m.string_matcher(v))


def _envoy_filter(key: str, values: tuple[str, ...], _tcp: bool) -> Permission:
    """`experimental.envoy.filters.a.b[c]`: dynamic metadata `c` of filter `envoy.filters.a.b`;
    a value `[v]` matches a list holding `v`."""
    name, sep, rest = key[len("experimental."):].removesuffix("]").partition("[")
    if not sep:
        raise ValueError(f"invalid key {key!r}: expecting experimental.envoy.filters.<filter>[<key>]")
    ors = []
    for v in values:
        if v.startswith("[") and v.endswith("]"):
            ors.append(m.value_list_one_of(m.value_string(m.string_matcher(v.strip("[]")))))
        else:
            ors.append(m.value_string(m.string_matcher(v)))
    return Permission(metadata=m.metadata(name, [rest], m.value_or(ors)))


# --- terms ---------------------------------------------------------------------------------

SOURCE_PRINCIPAL = "source.principal"


@dataclass(frozen=True)
class _Term:
    key: str
    values: tuple[str, ...]
    not_values: tuple[str, ...]
    make: Callable[..., Any]  # (key, value, for_tcp) -> message; or (key, values, for_tcp) when `extended`
    extended: bool = False


class RuleError(ValueError):
    """The rule cannot be built for this action (ALLOW): the whole rule is dropped."""


def _when_term(key: str, values: tuple[str, ...], not_values: tuple[str, ...], policy_namespace: str
               ) -> tuple[str, _Term] | None:
    """("permission" | "principal", term) for a `when` key, None for an unknown key."""
    table: list[tuple[bool, str, Callable[..., Any], bool, str]] = [
        # (prefix?, key, make, extended, side)
        (False, "destination.ip", _dest_ip, False, "permission"),
        (False, "destination.port", _dest_port, False, "permission"),
        (False, "connection.sni", _sni, False, "permission"),
        (True, "experimental.envoy.filters.", _envoy_filter, True, "permission"),
        (False, "source.ip", _direct_remote_ip, False, "principal"),
        (False, "remote.ip", _remote_ip, False, "principal"),
        (False, "source.namespace", _source_namespace, False, "principal"),
        (False, "source.serviceAccount", _service_account(policy_namespace), False, "principal"),
        (False, SOURCE_PRINCIPAL, _source_principal, False, "principal"),
        (False, "request.auth.principal", _request_principals, True, "principal"),
        (False, "request.auth.audiences", _jwt_claim(["aud"]), True, "principal"),
        (False, "request.auth.presenter", _jwt_claim(["azp"]), True, "principal"),
        (True, "request.headers", _request_header, False, "principal"),
        (True, "request.experimental.inline.headers", _inline_header, False, "principal"),
        (True, "request.auth.claims", _request_claims, True, "principal"),
    ]
    for is_prefix, name, make, extended, side in table:
        if key == name or (is_prefix and key.startswith(name)):
            return side, _Term(key, values, not_values, make, extended)
    return None


def _source_terms(s: Source, policy_namespace: str) -> list[_Term]:
    terms = [
        _Term(SOURCE_PRINCIPAL, s.principals, s.not_principals, _source_principal),
        _Term("request.auth.principal", s.request_principals, s.not_request_principals, _request_principals, True),
        _Term("source.serviceAccount", s.service_accounts, s.not_service_accounts, _service_account(policy_namespace)),
        _Term("source.namespace", s.namespaces, s.not_namespaces, _source_namespace),
        _Term("remote.ip", s.remote_ip_blocks, s.not_remote_ip_blocks, _remote_ip),
        _Term("source.ip", s.ip_blocks, s.not_ip_blocks, _direct_remote_ip),
        _Term("source.trustDomain", s.trust_domains, s.not_trust_domains, _trust_domain),
    ]
    return [t for t in terms if t.values or t.not_values]


def _operation_terms(o: Operation) -> list[_Term]:
    terms = [
        _Term("host", o.hosts, o.not_hosts, _host),
        _Term("method", o.methods, o.not_methods, _method),
        _Term("path", o.paths, o.not_paths, _path),
        _Term("destination.port", o.ports, o.not_ports, _dest_port),
    ]
    return [t for t in terms if t.values or t.not_values]


# --- generation ------------------------------------------------------------------------------

class _Generation:
    def __init__(self, for_tcp: bool, strict: bool, bundle: Bundle | None):
        self.for_tcp = for_tcp
        self.strict = strict  # ALLOW: any error drops the rule
        self.bundle = bundle
        self.dropped: list[str] = []  # values left out (non-ALLOW), for problems()

    def _guard(self, key: str, what: Callable[..., Any]) -> Any:
        try:
            return what()
        except ValueError as e:
            if self.strict:
                raise RuleError(str(e)) from e
            if not isinstance(e, HttpOnly):
                self.dropped.append(f"{key}: {e}")
            return None

    def _values(self, term: _Term, values: tuple[str, ...]) -> list[str]:
        if self.bundle is None:
            return list(values)
        if term.key == SOURCE_PRINCIPAL:
            return list(self.bundle.principals(values))
        if term.key == "source.trustDomain":
            return list(self.bundle.trust_domain_values(values))
        return list(values)

    def term(self, term: _Term, negate: Callable[..., Any], any_of: Callable[..., Any]) -> list[Any]:
        out = []
        for written, is_not in ((term.values, False), (term.not_values, True)):
            if not written:
                continue
            values = self._values(term, written)
            if term.extended:
                got = self._guard(term.key, lambda values=values: term.make(term.key, tuple(values), self.for_tcp))
            else:
                ors = [g for v in values
                       if (g := self._guard(term.key, lambda v=v: term.make(term.key, v, self.for_tcp))) is not None]
                got = any_of(ors) if ors else None
            if got is not None:
                out.append(negate(got) if is_not else got)
        return out


def rule_policy(rule: Rule, *, policy_namespace: str, action: str, for_tcp: bool, bundle: Bundle | None
                ) -> tuple[rbac_pb2.Policy | None, tuple[str, ...]]:
    """The Envoy Policy for `rule`, or None when the rule is dropped; with the reasons for
    what was dropped or left out (empty when everything translated)."""
    gen = _Generation(for_tcp, strict=(action == ALLOW), bundle=bundle)
    base_permissions: list[_Term] = []
    base_principals: list[_Term] = []
    notes: list[str] = []
    for c in rule.conditions:
        found = _when_term(c.key, c.values, c.not_values, policy_namespace)
        if found is None:
            reason = f"when key {c.key!r}: unknown attribute"
            if gen.strict:
                return None, (f"{reason}: rule dropped (ALLOW matches less)",)
            notes.append(f"{reason}: condition ignored ({action} matches more)")
            continue
        side, term = found
        if term.values or term.not_values:
            (base_permissions if side == "permission" else base_principals).append(term)
    permission_lists = [_operation_terms(o) + base_permissions for o in rule.operations] or [base_permissions]
    principal_lists = [_source_terms(s, policy_namespace) + base_principals for s in rule.sources] or [base_principals]
    try:
        permissions = []
        for terms in permission_lists:
            parts = [p for t in terms for p in gen.term(t, m.permission_not, m.permission_or)]
            permissions.append(m.permission_and(parts or [m.permission_any()]))
        principals = []
        for terms in principal_lists:
            parts = [p for t in terms for p in gen.term(t, m.principal_not, m.principal_or)]
            principals.append(m.principal_and(parts or [m.principal_any()]))
    except RuleError as e:
        where = " on a TCP filter chain" if for_tcp else ""
        return None, (f"{e}: rule dropped{where} (ALLOW matches less)",)
    notes += [f"{d}: value ignored ({action} matches more)" for d in gen.dropped]
    return rbac_pb2.Policy(permissions=permissions, principals=principals), tuple(notes)
