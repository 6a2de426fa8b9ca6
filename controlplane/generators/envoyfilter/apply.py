"""Applies the EnvoyFilters selecting a proxy to its generated resources of one type: the
last step of generation (istiod: pilot/pkg/networking/core/envoyfilter).

Patches run in the order of `select.ordered` (priority, the root namespace's first,
creation time, name), each EnvoyFilter's in the order written; for listeners the levels
run outside in as istiod's: LISTENER, FILTER_CHAIN, NETWORK_FILTER, HTTP_FILTER (likewise
ROUTE_CONFIGURATION, VIRTUAL_HOST, HTTP_ROUTE).

Every patch is applied to a copy and the result checked for what Envoy would reject
(checks.py): a patch that fails is left out and returned as a Problem naming its
EnvoyFilter, so the rest of the config is still sent and Envoy rejects nothing.
"""
from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from google.protobuf.message import Message

from ... import names
from ...config.types.envoyfilter import (
    ConfigPatch,
    FilterChainMatch,
    ListenerMatch,
    PatchValueError,
    RouteConfigurationMatch,
    to_message,
)
from ...model.proxy import ROUTER, Proxy
from . import bootstrap, checks, listener_filters
from .merge import merge
from .select import Selected

HCM = "envoy.filters.network.http_connection_manager"
LISTENER_LEVELS = ("LISTENER", "LISTENER_FILTER", "FILTER_CHAIN", "NETWORK_FILTER", "HTTP_FILTER")
ROUTE_LEVELS = ("ROUTE_CONFIGURATION", "VIRTUAL_HOST", "HTTP_ROUTE")
CLUSTER_LEVELS = ("CLUSTER",)
# What meshd does not generate for a proxy, so a patch of it cannot be applied (reported).
# (EXTENSION_CONFIG is served over ECDS: extension_config.py.)
UNSUPPORTED: frozenset[str] = frozenset()


# Why a patch was left out, in few words (the `reason` label of
# meshd_envoy_filter_patches_left_out: bounded); Problem.reason says it for people.
UNSUPPORTED_APPLY_TO = "UnsupportedApplyTo"
INVALID_VALUE = "InvalidValue"
NOT_APPLICABLE = "NotApplicable"
REPLACE_MATCHED_NOTHING = "ReplaceMatchedNothing"
ENVOY_WOULD_REJECT = "EnvoyWouldReject"
CODES = (UNSUPPORTED_APPLY_TO, INVALID_VALUE, NOT_APPLICABLE, REPLACE_MATCHED_NOTHING, ENVOY_WOULD_REJECT)


@dataclass(frozen=True, slots=True)
class Problem:
    envoy_filter: str  # "namespace/name"
    patch: int  # index in configPatches
    apply_to: str
    reason: str
    code: str = ENVOY_WOULD_REJECT  # one of CODES

    def __str__(self) -> str:
        return f"EnvoyFilter {self.envoy_filter} configPatches[{self.patch}] ({self.apply_to}): {self.reason}"


Named = list[tuple[str, Message]]


def apply(kind: str, resources: Iterable[tuple[str, Message]], filters: Sequence[Selected],
          proxy: Proxy) -> tuple[Named, list[Problem]]:
    """`resources` of `kind` ("LISTENER", "ROUTE_CONFIGURATION", "CLUSTER") patched by
    `filters` (ordered), and the patches left out."""
    levels = {"LISTENER": LISTENER_LEVELS, "ROUTE_CONFIGURATION": ROUTE_LEVELS, "CLUSTER": CLUSTER_LEVELS,
              bootstrap.KIND: (bootstrap.KIND,)}[kind]
    out: list[Message] = [m for _, m in resources]
    problems: list[Problem] = []
    if kind == "LISTENER":  # reported once per proxy, with the listeners
        problems += [Problem(sel.key, i, cp.apply_to, f"applyTo {cp.apply_to} is not supported by meshd",
                             UNSUPPORTED_APPLY_TO)
                     for sel in filters for i, cp in enumerate(sel.filter.patches) if cp.apply_to in UNSUPPORTED]
    patches = [(sel, i, cp) for level in levels for sel in filters for i, cp in enumerate(sel.filter.patches)
               if cp.apply_to == level and _proxy_matches(cp, proxy)]
    for sel, i, cp in patches:
        def report(reason: str, code: str, sel: Selected = sel, i: int = i, cp: ConfigPatch = cp) -> None:
            problems.append(Problem(sel.key, i, cp.apply_to, reason, code))
        op = cp.patch.operation if cp.patch else ""
        try:
            value = None if op == "REMOVE" else to_message(cp.apply_to, cp.patch.value if cp.patch else None)
        except PatchValueError as e:
            report(str(e), INVALID_VALUE)
            continue
        trial = [_copy(m) for m in out]
        try:
            hits = _APPLY[cp.apply_to](trial, cp, op, value, proxy)
        except checks.Rejected as e:
            report(str(e), NOT_APPLICABLE)
            continue
        if hits == 0 and op == "REPLACE":
            report("REPLACE matched nothing to replace", REPLACE_MATCHED_NOTHING)
            continue
        if hits == 0:
            continue
        check = bootstrap.check if kind == bootstrap.KIND else lambda items: checks.check(kind, items)
        reason = check(trial)
        if reason and reason != check(out):  # blame a patch only for what it brought
            report(reason, ENVOY_WOULD_REJECT)
            continue
        out = trial
    return [(_name(kind, m), m) for m in out], problems


def _copy(m: Message) -> Message:
    c = type(m)()
    c.CopyFrom(m)
    return c


def _name(kind: str, m: Message) -> str:
    if kind == bootstrap.KIND:
        return names.BOOTSTRAP_RESOURCE  # a Bootstrap has no name field
    name: str = m.name
    return name


# --- proxy and context ----------------------------------------------------------------

def _proxy_matches(cp: ConfigPatch, proxy: Proxy) -> bool:
    m = cp.match
    if m is None:
        return True
    if m.context == "GATEWAY" and proxy.type != ROUTER:
        return False
    if m.context in ("SIDECAR_INBOUND", "SIDECAR_OUTBOUND") and proxy.type == ROUTER:
        return False
    if m.proxy is not None:
        if m.proxy.proxy_version:
            version = str(proxy.metadata.get("ISTIO_VERSION", ""))
            if not re.match(m.proxy.proxy_version, version):
                return False
        for k, v in m.proxy.metadata.items():
            if str(proxy.metadata.get(k, "")) != v:
                return False
    return True


def _context_ok(cp: ConfigPatch, inbound: bool) -> bool:
    context = cp.match.context if cp.match else "ANY"
    if context == "SIDECAR_INBOUND":
        return inbound
    if context == "SIDECAR_OUTBOUND":
        return not inbound
    return True


# --- list operations ------------------------------------------------------------------

def _on_list(items: Any, is_item: Callable[[Message], bool] | None, op: str, value: Message | None,
             *, anchored: bool) -> int:
    """One operation on a repeated field; `is_item`: which entries the match names (None:
    it names none, so every entry for MERGE/REMOVE/REPLACE). `anchored`: INSERT_BEFORE/
    AFTER need a named entry to insert next to. Returns the number of changes."""
    hit = [i for i, m in enumerate(items) if is_item is None or is_item(m)]
    if op == "ADD":
        items.append(value)
        return 1
    if op == "INSERT_FIRST":
        items.insert(0, value)
        return 1
    if op in ("INSERT_BEFORE", "INSERT_AFTER"):
        if not hit:
            if anchored:
                return 0
            hit = [0] if op == "INSERT_BEFORE" else [len(items) - 1]
        at = hit[0] if op == "INSERT_BEFORE" else hit[0] + 1
        items.insert(at, value)
        return 1
    if op == "REMOVE":
        for i in reversed(hit):
            del items[i]
        return len(hit)
    if op == "MERGE":
        for i in hit:
            merge(items[i], value)
        return len(hit)
    if op == "REPLACE":
        for i in hit:
            items[i].CopyFrom(value)
        return len(hit)
    raise checks.Rejected(f"operation {op or '(none)'} is not valid here")


# --- listeners --------------------------------------------------------------------------

def _inbound_listener(listener: Message) -> bool:
    name: str = listener.name
    return name == "virtualInbound" or name.startswith("inbound")


def _port(listener: Message) -> int:
    return int(listener.address.socket_address.port_value)


def _listener_matches(lm: ListenerMatch | None, listener: Message) -> bool:
    if lm is None:
        return True
    if lm.name and lm.name != listener.name:
        return False
    if lm.port_number and lm.port_number != _port(listener):
        # A virtual listener (15006, 15001) holds the port in its filter chains' match.
        if not any(fc.filter_chain_match.destination_port.value == lm.port_number
                   for fc in listener.filter_chains):
            return False
    return True


def _chain_matches(lm: ListenerMatch | None, listener: Message, chain: Message) -> bool:
    if lm is None:
        return True
    if lm.port_number and lm.port_number != _port(listener) \
            and chain.filter_chain_match.destination_port.value != lm.port_number:
        return False
    fcm: FilterChainMatch | None = lm.filter_chain
    if fcm is None:
        return True
    m = chain.filter_chain_match
    if fcm.name and fcm.name != chain.name:
        return False
    if fcm.sni and fcm.sni not in m.server_names:
        return False
    if fcm.transport_protocol and fcm.transport_protocol != m.transport_protocol:
        return False
    if fcm.application_protocols and not set(fcm.application_protocols.split(",")) <= set(m.application_protocols):
        return False
    if fcm.destination_port and fcm.destination_port != m.destination_port.value:
        return False
    if fcm.filter is not None and fcm.filter.name and not any(f.name == fcm.filter.name for f in chain.filters):
        return False
    return True


def _listeners(items: list[Message], cp: ConfigPatch, op: str, value: Message | None, proxy: Proxy) -> int:
    lm = cp.match.listener if cp.match else None
    if op == "ADD":
        if not _context_ok(cp, False) or (cp.match and cp.match.context == "SIDECAR_INBOUND"):
            return 0
        items.append(value)
        return 1
    return _on_list(items, lambda l: _context_ok(cp, _inbound_listener(l)) and _listener_matches(lm, l), op, value,
                    anchored=True)


def _listener_filters(items: list[Message], cp: ConfigPatch, op: str, value: Message | None, proxy: Proxy) -> int:
    lm = cp.match.listener if cp.match else None
    name = lm.listener_filter if lm else ""
    op = listener_filters.operation(name, op)
    return sum(_on_list(lst.listener_filters, listener_filters.named(name, op), op, value, anchored=bool(name))
               for lst in items
               if _context_ok(cp, _inbound_listener(lst)) and listener_filters.listener_matches(lm, lst))


def _chains(listener: Message, cp: ConfigPatch) -> Iterable[Message]:
    lm = cp.match.listener if cp.match else None
    if not _context_ok(cp, _inbound_listener(listener)) or not _listener_matches(lm, listener):
        return ()
    return [c for c in listener.filter_chains if _chain_matches(lm, listener, c)]


def _filter_chains(items: list[Message], cp: ConfigPatch, op: str, value: Message | None, proxy: Proxy) -> int:
    lm = cp.match.listener if cp.match else None
    n = 0
    for listener in items:
        if not _context_ok(cp, _inbound_listener(listener)) or not _listener_matches(lm, listener):
            continue
        if op == "ADD":
            listener.filter_chains.append(value)
            n += 1
            continue
        def is_chain(c: Message, l: Message = listener) -> bool:
            return _chain_matches(lm, l, c)
        n += _on_list(listener.filter_chains, is_chain, op, value, anchored=True)
    return n


def _network_filters(items: list[Message], cp: ConfigPatch, op: str, value: Message | None, proxy: Proxy) -> int:
    lm = cp.match.listener if cp.match else None
    fm = lm.filter_chain.filter if lm and lm.filter_chain else None
    name = fm.name if fm else ""
    n = 0
    for listener in items:
        for chain in _chains(listener, cp):
            n += _on_list(chain.filters, (lambda f: f.name == name) if name else None,
                          op, value, anchored=bool(name))
    return n


def _http_filters(items: list[Message], cp: ConfigPatch, op: str, value: Message | None, proxy: Proxy) -> int:
    from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2

    lm = cp.match.listener if cp.match else None
    fm = lm.filter_chain.filter if lm and lm.filter_chain else None
    if fm is not None and fm.name and fm.name != HCM:
        return 0
    sub = fm.sub_filter if fm else ""
    n = 0
    for listener in items:
        for chain in _chains(listener, cp):
            for f in chain.filters:
                if f.name != HCM:
                    continue
                hcm = hcm_pb2.HttpConnectionManager()
                f.typed_config.Unpack(hcm)
                changed = _on_list(hcm.http_filters, (lambda h: h.name == sub) if sub else None, op, value,
                                   anchored=bool(sub))
                if changed:
                    f.typed_config.Pack(hcm)
                    n += changed
    return n


# --- routes -----------------------------------------------------------------------------

def _route_port(name: str) -> int:
    # sidecar outbound "80" or "host:80", gateway "http.8080", inbound "inbound|80||"
    if name.startswith("inbound|"):
        part = name.split("|")[1]
    else:
        part = name.rpartition(".")[2].rpartition(":")[2]
    return int(part) if part.isdigit() else 0


def _rc_matches(cp: ConfigPatch, rc: Message) -> bool:
    name: str = rc.name
    if not _context_ok(cp, name.startswith("inbound|")):
        return False
    m: RouteConfigurationMatch | None = cp.match.route_configuration if cp.match else None
    if m is None:
        return True
    if m.name and m.name != name:
        return False
    if m.port_number and m.port_number != _route_port(name):
        return False
    if m.port_name or m.gateway:
        raise checks.Rejected("routeConfiguration.portName and .gateway are not supported by meshd")
    return True


def _vhost_matches(cp: ConfigPatch, vh: Message) -> bool:
    m = cp.match.route_configuration.vhost if cp.match and cp.match.route_configuration else None
    if m is None:
        return True
    if m.name and m.name != vh.name:
        return False
    return not (m.domain_name and m.domain_name not in vh.domains)


def _route_matches(cp: ConfigPatch, route: Message) -> bool:
    vm = cp.match.route_configuration.vhost if cp.match and cp.match.route_configuration else None
    m = vm.route if vm else None
    if m is None:
        return True
    if m.name and m.name != route.name:
        return False
    action = route.WhichOneof("action") or ""
    return m.action == "ANY" or m.action.lower() == action


def _route_configurations(items: list[Message], cp: ConfigPatch, op: str, value: Message | None, proxy: Proxy) -> int:
    if op == "ADD":
        items.append(value)
        return 1
    return _on_list(items, lambda rc: _rc_matches(cp, rc), op, value, anchored=True)


def _virtual_hosts(items: list[Message], cp: ConfigPatch, op: str, value: Message | None, proxy: Proxy) -> int:
    n = 0
    for rc in items:
        if not _rc_matches(cp, rc):
            continue
        if op == "ADD":
            rc.virtual_hosts.append(value)
            n += 1
            continue
        n += _on_list(rc.virtual_hosts, lambda v: _vhost_matches(cp, v), op, value, anchored=True)
    return n


def _http_routes(items: list[Message], cp: ConfigPatch, op: str, value: Message | None, proxy: Proxy) -> int:
    named = bool(cp.match and cp.match.route_configuration and cp.match.route_configuration.vhost
                 and cp.match.route_configuration.vhost.route and cp.match.route_configuration.vhost.route.name)
    n = 0
    for rc in items:
        if not _rc_matches(cp, rc):
            continue
        for vh in rc.virtual_hosts:
            if _vhost_matches(cp, vh):
                n += _on_list(vh.routes, lambda r: _route_matches(cp, r), op, value, anchored=named)
    return n


# --- clusters ---------------------------------------------------------------------------

def _cluster_matches(cp: ConfigPatch, cluster: Message) -> bool:
    name: str = cluster.name
    if not _context_ok(cp, name.startswith("inbound|")):
        return False
    m = cp.match.cluster if cp.match else None
    if m is None:
        return True
    if m.name and m.name != name:
        return False
    fields = name.split("|")
    if m.port_number or m.service or m.subset:
        if len(fields) != 4:
            return False
        if m.port_number and str(m.port_number) != fields[1]:
            return False
        if m.subset and m.subset != fields[2]:
            return False
        if m.service and m.service != fields[3]:
            return False
    return True


def _clusters(items: list[Message], cp: ConfigPatch, op: str, value: Message | None, proxy: Proxy) -> int:
    if op == "ADD":
        items.append(value)
        return 1
    return _on_list(items, lambda c: _cluster_matches(cp, c), op, value, anchored=True)


_APPLY: Mapping[str, Callable[[list[Message], ConfigPatch, str, Message | None, Proxy], int]] = {
    "LISTENER": _listeners,
    "LISTENER_FILTER": _listener_filters,
    "FILTER_CHAIN": _filter_chains,
    "NETWORK_FILTER": _network_filters,
    "HTTP_FILTER": _http_filters,
    "ROUTE_CONFIGURATION": _route_configurations,
    "VIRTUAL_HOST": _virtual_hosts,
    "HTTP_ROUTE": _http_routes,
    "CLUSTER": _clusters,
    bootstrap.KIND: bootstrap.merge_patch,
}
