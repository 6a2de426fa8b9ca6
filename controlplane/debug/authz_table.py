"""`meshd x authz check`'s tables, from an Envoy config dump (pure: dump in, text out).

Two views of the authorization (and mTLS) filters on a proxy's listeners:

- `policy_table`: istioctl's `ACTION  AuthorizationPolicy  RULES` (istioctl/pkg/authz,
  read not copied). Every RBAC filter of every filter chain of the dynamic listeners
  counts: HTTP ones inside the HTTP connection managers, network ones on the chain.
  A policy named `ns[<ns>]-policy[<name>]-rule[<i>]` is shown as `<name>.<ns>` with the
  number of distinct rule indexes seen; an RBAC filter without policies is
  `_anonymous_match_nothing_` (an ALLOW that matches nothing: Istio's deny-all). The
  shadow rules of the RBAC filter Istio puts in front of ext_authz (stat prefix
  `istio_ext_authz_`) are the CUSTOM policies; other shadow rules are dry-run and not
  enforced, so they are not shown. Rows go DENY, ALLOW, LOG (AUDIT), CUSTOM, each
  sorted by name, through Go's tabwriter (padding 3).
- `chain_table`: the older per-filter-chain form (`--listeners`): for each chain the
  certificate it presents, whether it requires a client certificate, the
  PeerAuthentication mode behind it, and the authorization rules on it.

A filter whose config cannot be read (another type than its name says) is skipped and
reported in `Listeners.warnings`, as istioctl logs and skips it.
"""
from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from envoy.config.core.v3 import base_pb2

from .configdump import LISTENERS, ConfigDump, unpack
from .tabwriter import render

HCM_NAMES = ("envoy.filters.network.http_connection_manager", "envoy.http_connection_manager")
HTTP_RBAC = "envoy.filters.http.rbac"
NETWORK_RBAC = "envoy.filters.network.rbac"
RBAC_TYPES = ("envoy.extensions.filters.http.rbac.v3.RBAC", "envoy.extensions.filters.network.rbac.v3.RBAC")
HCM_TYPE = "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
TLS_TYPE = "envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext"
# The shadow rules of the RBAC filter in front of ext_authz mark what CUSTOM policies send
# to the provider (pilot/pkg/security/authz/model: RBACExtAuthzShadowRulesStatPrefix).
EXT_AUTHZ_SHADOW_PREFIX = "istio_ext_authz_"

ANONYMOUS = "_anonymous_match_nothing_"
CUSTOM = "CUSTOM"
ACTION_ORDER = ("DENY", "ALLOW", "LOG", CUSTOM)
_ACTIONS = {0: "ALLOW", 1: "DENY", 2: "LOG"}  # envoy.config.rbac.v3.RBAC.Action
POLICY_NAME = re.compile(r"ns\[(.+)\]-policy\[(.+)\]-rule\[(.+)\]")
NO_MODE = "none"


@dataclass(frozen=True)
class AuthzFilter:
    """One RBAC filter: the action and policy names of its enforced rules (None when it
    has no `rules`), and the CUSTOM policy names when it guards ext_authz."""

    action: str | None
    policies: tuple[str, ...] = ()
    custom: tuple[str, ...] = ()


@dataclass(frozen=True)
class Chain:
    index: int
    name: str
    port: int  # filter_chain_match.destination_port, 0 when the chain matches any port
    certificate: str  # what the chain presents: "none", "SDS: default", file names, "<inline>"
    mtls: bool  # TLS with a required, validated client certificate
    authz: tuple[AuthzFilter, ...] = ()


@dataclass(frozen=True)
class Listener:
    name: str
    port: int
    inbound: bool  # INBOUND on a socket address: a sidecar's virtualInbound (not an internal listener)
    direction: int
    chains: tuple[Chain, ...]


@dataclass(frozen=True)
class Listeners:
    listeners: tuple[Listener, ...]
    warnings: tuple[str, ...] = field(default=())


# --- reading the dump ----------------------------------------------------------------------

def read_listeners(dump: ConfigDump) -> Listeners:
    """The dynamic (active) listeners of a dump, as istioctl reads them."""
    section = dump.section(LISTENERS)
    warnings: list[str] = []
    out = []
    for dl in getattr(section, "dynamic_listeners", ()):
        if not (dl.HasField("active_state") and dl.active_state.HasField("listener")):
            continue
        lis = unpack(dl.active_state.listener)
        if lis is None:
            warnings.append(f"listener {dl.name}: unreadable configuration, skipped")
            continue
        chains = tuple(_chain(lis.name, i, fc, warnings) for i, fc in enumerate(lis.filter_chains))
        inbound = lis.traffic_direction == base_pb2.INBOUND and lis.address.HasField("socket_address")
        out.append(Listener(lis.name, lis.address.socket_address.port_value, inbound, lis.traffic_direction, chains))
    return Listeners(tuple(out), tuple(warnings))


def _typed(any_msg, type_name: str, what: str, warnings: list[str]):
    msg = unpack(any_msg)
    if msg is None or msg.DESCRIPTOR.full_name != type_name:
        warnings.append(f"{what}: config is {any_msg.type_url or 'missing'}, not {type_name}; skipped")
        return None
    return msg


def _chain(listener: str, index: int, fc, warnings: list[str]) -> Chain:
    where = f"listener {listener} chain {index}"
    authz: list[AuthzFilter] = []
    for f in fc.filters:
        if f.name in HCM_NAMES:
            hcm = _typed(f.typed_config, HCM_TYPE, f"{where} {f.name}", warnings)
            for hf in hcm.http_filters if hcm is not None else ():
                if hf.name == HTTP_RBAC:
                    rbac = _typed(hf.typed_config, RBAC_TYPES[0], f"{where} {hf.name}", warnings)
                    if rbac is not None:
                        authz.append(_authz(rbac))
        elif f.name == NETWORK_RBAC:
            rbac = _typed(f.typed_config, RBAC_TYPES[1], f"{where} {f.name}", warnings)
            if rbac is not None:
                authz.append(_authz(rbac))
    certificate, mtls = "none", False
    if fc.HasField("transport_socket"):
        ctx = _typed(fc.transport_socket.typed_config, TLS_TYPE, f"{where} transport socket", warnings)
        if ctx is not None:
            certificate, mtls = _certificate(ctx.common_tls_context), _requires_client_cert(ctx)
    port = fc.filter_chain_match.destination_port.value if fc.HasField("filter_chain_match") else 0
    return Chain(index, fc.name, port, certificate, mtls, tuple(authz))


def _authz(rbac) -> AuthzFilter:
    action = _ACTIONS.get(rbac.rules.action, str(rbac.rules.action)) if rbac.HasField("rules") else None
    custom: tuple[str, ...] = ()
    if rbac.shadow_rules_stat_prefix == EXT_AUTHZ_SHADOW_PREFIX:
        custom = tuple(sorted(rbac.shadow_rules.policies))
    return AuthzFilter(action, tuple(sorted(rbac.rules.policies)), custom)


def _certificate(common) -> str:
    """The certificates a chain presents: files (or `<inline>`), then `SDS: <names>`."""
    static = [c.certificate_chain.filename or "<inline>" for c in common.tls_certificates]
    sds = [s.name for s in common.tls_certificate_sds_secret_configs]
    parts = [",".join(static)] if static else []
    if sds:
        parts.append("SDS: " + ",".join(sds))
    if common.HasField("tls_certificate_provider_instance"):
        parts.append("provider: " + common.tls_certificate_provider_instance.instance_name)
    return "; ".join(parts) or "none"


def _requires_client_cert(ctx) -> bool:
    common = ctx.common_tls_context
    validates = common.WhichOneof("validation_context_type") is not None
    return ctx.require_client_certificate.value and validates


# --- istioctl's policy table ---------------------------------------------------------------

def policy_name(name: str) -> tuple[str, str]:
    """`ns[foo]-policy[bar]-rule[0]` -> (`bar.foo`, `0`); ("", "") when it is not Istio's."""
    m = POLICY_NAME.search(name)
    if m is None:
        return "", ""
    return f"{m.group(2)}.{m.group(1)}", m.group(3)


def _entries(f: AuthzFilter) -> list[tuple[str, str]]:
    """(action, RBAC policy name) pairs a filter enforces; ANONYMOUS stands for a filter
    with no policy. A filter without `rules` reads as an empty ALLOW (istioctl reads the
    unset message so), except the one in front of ext_authz, which only carries CUSTOM."""
    out: list[tuple[str, str]] = []
    if f.action is not None or not f.custom:
        action = f.action or "ALLOW"
        out += [(action, p) for p in f.policies] or [(action, ANONYMOUS)]
    out += [(CUSTOM, p) for p in f.custom]
    return out


def policy_rows(listeners: Listeners) -> list[tuple[str, str, int]]:
    """(action, policy, rules) in istioctl's order. Rule indexes are counted per policy
    name across every chain and action, as istioctl does."""
    by_action: dict[str, set[str]] = {}
    rules: dict[str, set[str]] = {}
    for lis in listeners.listeners:
        for chain in lis.chains:
            for f in chain.authz:
                for action, raw in _entries(f):
                    name, rule = (ANONYMOUS, "0") if raw == ANONYMOUS else policy_name(raw)
                    by_action.setdefault(action, set()).add(name)
                    rules.setdefault(name, set()).add(rule)
    out = []
    for action in ACTION_ORDER:
        for name in sorted(by_action.get(action, ())):
            out.append((action, name, len(rules[name])))
    return out


def policy_table(listeners: Listeners) -> str:
    """istioctl x authz check's output; empty when the dump has no dynamic listener."""
    if not listeners.listeners:
        return ""
    rows = [["ACTION", "AuthorizationPolicy", "RULES"]]
    rows += [[a, n, str(c)] for a, n, c in policy_rows(listeners)]
    return render(rows, 0, 8, 3)


# --- the per-filter-chain table ------------------------------------------------------------

ModeOf = Callable[[Listener, Chain], str]


def shown_listeners(listeners: Listeners) -> list[Listener]:
    """A sidecar's inbound listeners (where PeerAuthentication and authorization apply);
    every listener when none is inbound (a gateway: its listeners are marked OUTBOUND)."""
    inbound = [lis for lis in listeners.listeners if lis.direction != base_pb2.OUTBOUND]
    return inbound or list(listeners.listeners)


def _governed(lis: Listener, chain: Chain) -> bool:
    """Chains PeerAuthentication decides: an inbound listener's, except the one matching
    the listener's own port (the blackhole chain: nothing reaches an application)."""
    return lis.inbound and chain.port != lis.port


def inferred_modes(listeners: Listeners) -> ModeOf:
    """The mode read back from the chains of each inbound port (0: the catch-all ones):
    only mTLS chains STRICT, mTLS and others PERMISSIVE, no mTLS chain DISABLE."""
    kinds: dict[tuple[str, int], set[bool]] = {}
    for lis in listeners.listeners:
        for chain in lis.chains:
            if _governed(lis, chain):
                kinds.setdefault((lis.name, chain.port), set()).add(chain.mtls)

    def mode(lis: Listener, chain: Chain) -> str:
        if not _governed(lis, chain):
            return NO_MODE
        seen = kinds[(lis.name, chain.port)]
        if seen == {True}:
            return "STRICT"
        return "PERMISSIVE" if True in seen else "DISABLE"

    return mode


def known_modes(mode: str | None, port_modes: Mapping[int, str]) -> ModeOf:
    """The modes meshd computed for the workload (its effective PeerAuthentication)."""

    def of(lis: Listener, chain: Chain) -> str:
        if mode is None or not _governed(lis, chain):
            return NO_MODE
        return port_modes.get(chain.port, mode) if chain.port else mode

    return of


def _authz_cell(chain: Chain) -> str:
    if not chain.authz:
        return "no (none)"
    names = sorted({raw for f in chain.authz for _, raw in _entries(f)})
    return f"yes ({len(names)}: {', '.join(names)})"


def chain_rows(listeners: Listeners, mode_of: ModeOf) -> list[list[str]]:
    rows = []
    for lis in shown_listeners(listeners):
        for chain in lis.chains:
            label = f"{lis.name}[{chain.index}]" if len(lis.chains) > 1 else lis.name
            mtls = f"{'yes' if chain.mtls else 'no'} ({mode_of(lis, chain)})"
            rows.append([label, chain.certificate, mtls, _authz_cell(chain)])
    return rows


def chain_table(listeners: Listeners, mode_of: ModeOf) -> str:
    header = ["LISTENER[FilterChain]", "CERTIFICATE", "mTLS (MODE)", "AuthZ (RULES)"]
    return render([header] + chain_rows(listeners, mode_of), 0, 8, 5)


__all__ = ["ANONYMOUS", "AuthzFilter", "Chain", "Listener", "Listeners", "chain_rows", "chain_table",
           "inferred_modes", "known_modes", "policy_name", "policy_rows", "policy_table",
           "read_listeners", "shown_listeners"]
