"""Filter chain matches: keys, de-duplication, and the listener filters they need.

Envoy rejects a whole listener when two of its filter chains have equal matches, so every
listener built here goes through `dedupe` (the first chain with a match wins, as in
istiod's conflict resolution) and tests check `duplicate_matches` stays empty.
"""
from __future__ import annotations

from collections.abc import Iterable

from envoy.config.listener.v3 import listener_components_pb2 as lc

from . import filters, tls

HTTP_INSPECTED_ALPN = frozenset(tls.ALPN_PLAINTEXT_HTTP)


def match_key(chain: lc.FilterChain) -> bytes:
    """Two chains with equal keys have equal matches (an absent match equals an empty one)."""
    return bytes(chain.filter_chain_match.SerializeToString(deterministic=True))  # the same object: typed


def dedupe(chains: Iterable[lc.FilterChain]) -> list[lc.FilterChain]:
    seen: set[bytes] = set()
    out = []
    for c in chains:
        k = match_key(c)
        if k not in seen:
            seen.add(k)
            out.append(c)
    return out


def duplicate_matches(chains: Iterable[lc.FilterChain]) -> list[lc.FilterChainMatch]:
    seen: set[bytes] = set()
    dups = []
    for c in chains:
        k = match_key(c)
        if k in seen:
            dups.append(c.filter_chain_match)
        seen.add(k)
    return dups


def _port_range(port: int) -> lc.ListenerFilterChainMatchPredicate:
    p = lc.ListenerFilterChainMatchPredicate()
    p.destination_port_range.start = port
    p.destination_port_range.end = port + 1
    return p


def _any_port(ports: list[int]) -> lc.ListenerFilterChainMatchPredicate:
    if len(ports) == 1:
        return _port_range(ports[0])
    p = lc.ListenerFilterChainMatchPredicate()
    p.or_match.rules.extend(_port_range(port) for port in ports)
    return p


def _limited(f: lc.ListenerFilter, needed: dict[int, bool]) -> lc.ListenerFilter:
    """Run the inspector only where some chain needs it (port 0: chains without a port).
    Inspecting ports that do not need it would stall server-first protocols."""
    if needed.get(0, False):
        off = sorted(p for p, need in needed.items() if p and not need)
        if off:
            f.filter_disabled.CopyFrom(_any_port(off))
    else:
        on = sorted(p for p, need in needed.items() if p and need)
        f.filter_disabled.not_match.CopyFrom(_any_port(on))
    return f


def inspectors(chains: Iterable[lc.FilterChain]) -> list[lc.ListenerFilter]:
    """tls_inspector where a chain matches on `transport_protocol: tls`, then (after it, so
    TLS is never sniffed as HTTP) http_inspector where a chain matches plaintext HTTP ALPN;
    istiod's populateListenerFilters."""
    need_tls: dict[int, bool] = {}
    need_http: dict[int, bool] = {}
    for c in chains:
        m = c.filter_chain_match
        port = m.destination_port.value if m.HasField("destination_port") else 0
        need_tls[port] = need_tls.get(port, False) or m.transport_protocol == tls.TLS_TRANSPORT
        need_http[port] = need_http.get(port, False) or any(a in HTTP_INSPECTED_ALPN for a in m.application_protocols)
    out = []
    if any(need_tls.values()):
        out.append(_limited(filters.tls_inspector_filter(), need_tls))
    if any(need_http.values()):
        out.append(_limited(filters.http_inspector_filter(), need_http))
    return out
