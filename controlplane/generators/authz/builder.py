"""A workload's AuthorizationPolicies -> Envoy HTTP and network filters, as istiod's
pilot/pkg/security/authz/builder (read, not copied).

Filters, in the order Envoy runs them (and istiod emits them):

- CUSTOM, per provider (by name): an RBAC filter whose *shadow* rules are the provider's
  CUSTOM rules (action DENY, stat prefix `istio_ext_authz_`; it never rejects), then the
  provider's ext_authz filter, which runs only when a shadow rule matched. A provider that
  cannot serve (undefined, invalid, service not found) gives instead an RBAC filter that
  DENIES what its rules select (`...-deny-due-to-bad-CUSTOM-action`): fail closed.
- AUDIT: RBAC action LOG. DENY: RBAC action DENY. ALLOW: RBAC action ALLOW — once any
  ALLOW policy selects the workload, requests no ALLOW rule matches are refused.

Each policy rule is an RBAC policy named `ns[<ns>]-policy[<name>]-rule[<i>]`; a policy
without rules is one that never matches (an ALLOW policy with no rules denies everything);
a policy annotated `istio.io/dry-run: "true"` goes to the filter's shadow rules (stat prefix
`istio_dry_run_allow_`/`istio_dry_run_deny_`) and is only counted. On TCP chains HTTP-only
attributes make an ALLOW rule match nothing and a DENY rule match more (rules.py).

A policy meshd cannot read at all (errors from model/authorization.py, or an unknown action)
fails closed too: DENY, CUSTOM and unknown actions deny everything; ALLOW allows nothing.
problems() reports all of these with the object and the reason.

The functions are pure: the same policies and mesh config give the same filters.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, TypeAlias

from envoy.config.listener.v3 import listener_components_pb2 as lc_pb2
from envoy.config.rbac.v3 import rbac_pb2
from envoy.extensions.filters.http.rbac.v3 import rbac_pb2 as http_rbac_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2
from envoy.extensions.filters.network.rbac.v3 import rbac_pb2 as network_rbac_pb2
from google.protobuf import any_pb2
from google.protobuf.message import Message

from ...model.authorization import ALLOW, AUDIT, CUSTOM, DENY, AuthzPolicy, WorkloadPolicies
from ...model.meshconfig import MeshConfig
from ...names import GATEWAY_API_GROUP
from . import extauthz
from . import matchers as m
from .problem import ERROR, WARNING, Problem
from .rules import rule_policy
from .trust_domains import Bundle

HTTP_RBAC = extauthz.HTTP_RBAC
NETWORK_RBAC = extauthz.NETWORK_RBAC
HTTP_EXT_AUTHZ = "envoy.filters.http.ext_authz"
NETWORK_EXT_AUTHZ = "envoy.filters.network.ext_authz"
TCP_STAT_PREFIX = extauthz.TCP_STAT_PREFIX
DRY_RUN_ALLOW_PREFIX = "istio_dry_run_allow_"
DRY_RUN_DENY_PREFIX = "istio_dry_run_deny_"
BAD_CUSTOM_SUFFIX = "-deny-due-to-bad-CUSTOM-action"

RBAC: TypeAlias = rbac_pb2.RBAC
_ACTIONS = {ALLOW: RBAC.ALLOW, DENY: RBAC.DENY, AUDIT: RBAC.LOG, CUSTOM: RBAC.DENY}


def _match_never() -> rbac_pb2.Policy:
    return rbac_pb2.Policy(permissions=[m.permission_not(m.permission_any())],
                           principals=[m.principal_not(m.principal_any())])


def _match_all() -> rbac_pb2.Policy:
    return rbac_pb2.Policy(permissions=[m.permission_any()], principals=[m.principal_any()])


def policy_name(namespace: str, name: str, rule: int, prefix: str = "") -> str:
    """Istio's RBAC policy name; CUSTOM names start with `istio-ext-authz-<provider>-`."""
    return f"{prefix}ns[{namespace}]-policy[{name}]-rule[{rule}]"


def _typed(msg: Message) -> any_pb2.Any:
    a = any_pb2.Any()
    a.Pack(msg, deterministic=True)
    return a


def _bundle(mesh_config: MeshConfig) -> Bundle:
    return Bundle.of(mesh_config.trust_domain, tuple(mesh_config.trust_domain_aliases))


def _policies_of(p: AuthzPolicy, action: str, for_tcp: bool, bundle: Bundle, prefix: str = ""
                 ) -> dict[str, rbac_pb2.Policy]:
    """The RBAC policies of one AuthorizationPolicy, by name."""
    if p.errors or p.action not in _ACTIONS:
        # Unreadable: ALLOW allows nothing; anything else denies everything (builder caller
        # puts it in a DENY filter).
        return {policy_name(p.namespace, p.name, 0, prefix): _match_never() if action == ALLOW else _match_all()}
    if not p.rules:
        return {policy_name(p.namespace, p.name, 0, prefix): _match_never()}
    out = {}
    for i, rule in enumerate(p.rules):
        built, _notes = rule_policy(rule, policy_namespace=p.namespace, action=action, for_tcp=for_tcp, bundle=bundle)
        if built is not None:
            out[policy_name(p.namespace, p.name, i, prefix)] = built
    return out


@dataclass
class _Rules:
    enforce: RBAC | None = None
    shadow: RBAC | None = None


def _rules(policies: Iterable[AuthzPolicy], action: str, for_tcp: bool, bundle: Bundle) -> _Rules:
    out = _Rules()
    for p in policies:
        target = "shadow" if p.dry_run else "enforce"
        if getattr(out, target) is None:
            setattr(out, target, RBAC(action=_ACTIONS[action]))
        for name, pol in _policies_of(p, action, for_tcp, bundle).items():
            getattr(out, target).policies[name].CopyFrom(pol)
    return out


def _shadow_stat_prefix(shadow: RBAC | None) -> str:
    action = shadow.action if shadow is not None else RBAC.ALLOW  # istiod reads the action of a nil message
    return {RBAC.ALLOW: DRY_RUN_ALLOW_PREFIX, RBAC.DENY: DRY_RUN_DENY_PREFIX}.get(action, "")


def _http_rbac(config: http_rbac_pb2.RBAC) -> hcm_pb2.HttpFilter:
    return hcm_pb2.HttpFilter(name=HTTP_RBAC, typed_config=_typed(config))


def _network_rbac(config: network_rbac_pb2.RBAC) -> lc_pb2.Filter:
    return lc_pb2.Filter(name=NETWORK_RBAC, typed_config=_typed(config))


def _rbac_filter(r: _Rules, for_tcp: bool) -> Message:
    kwargs: dict[str, Any] = {"shadow_rules_stat_prefix": _shadow_stat_prefix(r.shadow)}
    if r.enforce is not None:
        kwargs["rules"] = r.enforce
    if r.shadow is not None:
        kwargs["shadow_rules"] = r.shadow
    if for_tcp:
        return _network_rbac(network_rbac_pb2.RBAC(stat_prefix=TCP_STAT_PREFIX, **kwargs))
    return _http_rbac(http_rbac_pb2.RBAC(**kwargs))


def _action_filters(wp: WorkloadPolicies, mesh_config: MeshConfig, for_tcp: bool) -> list[Any]:
    bundle = _bundle(mesh_config)
    filters = []
    for action, policies in ((AUDIT, wp.audit), (DENY, wp.deny + wp.invalid), (ALLOW, wp.allow)):
        if policies:
            filters.append(_rbac_filter(_rules(policies, action, for_tcp, bundle), for_tcp))
    return filters


# --- CUSTOM ------------------------------------------------------------------------------------

def _by_provider(wp: WorkloadPolicies) -> dict[str, list[AuthzPolicy]]:
    groups: dict[str, list[AuthzPolicy]] = {}
    for p in wp.custom:
        if not p.dry_run:  # istiod never sends dry-run CUSTOM policies to the provider
            groups.setdefault(p.provider, []).append(p)
    return {name: groups[name] for name in sorted(groups)}


def _custom_filters(wp: WorkloadPolicies, mesh_config: MeshConfig, services: Mapping[str, Any] | None,
                    for_tcp: bool) -> list[Any]:
    bundle = _bundle(mesh_config)
    out: list[Any] = []
    for provider, policies in _by_provider(wp).items():
        prefix = extauthz.policy_prefix(provider) + "-"
        try:
            built = extauthz.build(provider, mesh_config.provider(provider), services)
        except extauthz.ProviderError:
            built = None
        deny = RBAC(action=RBAC.DENY)
        shadow = RBAC(action=RBAC.DENY)
        for p in policies:
            bad = built is None or bool(p.errors)
            for name, pol in _policies_of(p, DENY if bad else CUSTOM, for_tcp, bundle, prefix).items():
                if bad:
                    deny.policies[name + BAD_CUSTOM_SUFFIX].CopyFrom(pol)
                else:
                    shadow.policies[name].CopyFrom(pol)
        if deny.policies:
            out.append(_network_rbac(network_rbac_pb2.RBAC(rules=deny, stat_prefix=TCP_STAT_PREFIX)) if for_tcp
                       else _http_rbac(http_rbac_pb2.RBAC(rules=deny)))
        if built is None or not shadow.policies:
            continue
        if for_tcp:
            if built.tcp is None:
                continue  # an HTTP provider does nothing on TCP chains (istiod ignores it there)
            out.append(_network_rbac(network_rbac_pb2.RBAC(
                shadow_rules=shadow, stat_prefix=TCP_STAT_PREFIX,
                shadow_rules_stat_prefix=extauthz.EXT_AUTHZ_SHADOW_PREFIX)))
            out.append(lc_pb2.Filter(name=NETWORK_EXT_AUTHZ, typed_config=_typed(built.tcp)))
        else:
            out.append(_http_rbac(http_rbac_pb2.RBAC(
                shadow_rules=shadow, shadow_rules_stat_prefix=extauthz.EXT_AUTHZ_SHADOW_PREFIX)))
            out.append(hcm_pb2.HttpFilter(name=HTTP_EXT_AUTHZ, typed_config=_typed(built.http)))
    return out


# --- the contract ------------------------------------------------------------------------------

def custom_http_filters(wp: WorkloadPolicies, mesh_config: MeshConfig, *,
                        services: Mapping[str, Any] | None = None) -> list[hcm_pb2.HttpFilter]:
    """The CUSTOM part of http_filters(): istiod places it before the JWT filters."""
    return _custom_filters(wp, mesh_config, services, for_tcp=False)


def rbac_http_filters(wp: WorkloadPolicies, mesh_config: MeshConfig) -> list[hcm_pb2.HttpFilter]:
    """The AUDIT, DENY and ALLOW part of http_filters(): istiod places it after the JWT filters."""
    return _action_filters(wp, mesh_config, for_tcp=False)


def http_filters(wp: WorkloadPolicies, mesh_config: MeshConfig, *, is_gateway: bool = False,
                 services: Mapping[str, Any] | None = None) -> list[hcm_pb2.HttpFilter]:
    """The authorization filters of an HTTP connection manager, in order.

    `services`: the mesh's Services by hostname (MeshSnapshot.services), to resolve the
    `service` of CUSTOM providers as istiod does; None trusts the hostname as written.
    `is_gateway` changes nothing (istiod builds the same filters for gateways); it is
    accepted so callers need not know that."""
    del is_gateway
    return custom_http_filters(wp, mesh_config, services=services) + rbac_http_filters(wp, mesh_config)


def network_filters(wp: WorkloadPolicies, mesh_config: MeshConfig, *, is_gateway: bool = False,
                    services: Mapping[str, Any] | None = None) -> list[lc_pb2.Filter]:
    """The authorization filters of a TCP filter chain (before tcp_proxy), in order."""
    del is_gateway
    return _custom_filters(wp, mesh_config, services, for_tcp=True) + _action_filters(wp, mesh_config, for_tcp=True)


# --- problems ------------------------------------------------------------------------------------

def _split(text: str) -> tuple[str, str]:
    field, sep, reason = text.partition(": ")
    return (field, reason) if sep else ("", text)


def problems(policies: WorkloadPolicies | Iterable[AuthzPolicy], mesh_config: MeshConfig, *,
             services: Mapping[str, Any] | None = None) -> tuple[Problem, ...]:
    """What in `policies` cannot be enforced as written, with what is done instead."""
    items = policies.all() if isinstance(policies, WorkloadPolicies) else tuple(policies)
    bundle = _bundle(mesh_config)
    out: list[Problem] = []
    checked: dict[str, str | None] = {}
    for p in items:
        def add(field: str, reason: str, severity: str = ERROR, p: AuthzPolicy = p) -> None:
            out.append(Problem(p.namespace, p.name, field, reason, severity))

        for e in p.errors:
            field, reason = _split(e)
            effect = {ALLOW: "allows nothing", AUDIT: "logs every request"}.get(p.action, "is enforced as deny-all")
            add(field, f"{reason}; the policy {effect} (fail closed)")
        for w in p.warnings:
            add(*_split(w), severity=WARNING)
        for ref in p.target_refs:
            if ref.kind == "Service" and ref.group in ("", "core"):
                add("spec.targetRef", f"targetRef Service {ref.name!r} binds only to waypoint proxies (ambient), "
                    "which meshd does not run: the policy applies to no workload", WARNING)
            elif ref.kind == "Gateway" and ref.group != GATEWAY_API_GROUP:
                add("spec.targetRef", f"targetRef kind Gateway needs group {GATEWAY_API_GROUP!r}: "
                    "the policy applies to no workload", WARNING)
            elif ref.kind not in ("Service", "Gateway"):
                add("spec.targetRef", f"targetRef kind {ref.kind!r} is not supported: the policy applies to "
                    "no workload", WARNING)
        if p.errors:
            continue
        if p.action == CUSTOM:
            if p.dry_run:
                add("metadata.annotations", "dry-run has no effect on a CUSTOM policy: it is not enforced", WARNING)
            if p.provider not in checked:
                try:
                    extauthz.build(p.provider, mesh_config.provider(p.provider), services)
                    checked[p.provider] = None
                except extauthz.ProviderError as e:
                    checked[p.provider] = str(e)
            if checked[p.provider]:
                add("spec.provider.name", f"{checked[p.provider]}; requests the policy's rules select are denied "
                    "(fail closed)")
        action = p.action if p.action in _ACTIONS else DENY
        for i, rule in enumerate(p.rules):
            _built, notes = rule_policy(rule, policy_namespace=p.namespace, action=action, for_tcp=False,
                                        bundle=bundle)
            for note in notes:
                add(f"spec.rules[{i}]", note)
    return tuple(out)
