"""What Envoy would reject in patched output, checked before it is sent (a patch that
fails is left out, apply.py). Not all of Envoy's validation: the mistakes a patch
typically makes (a name twice, a filter after the terminal one, a filter without a
typed config, a type Envoy's API does not have)."""
from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

from google.protobuf import descriptor_pool
from google.protobuf.message import Message

TERMINAL_HTTP = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
TERMINAL_NETWORK = frozenset({
    "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
    "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
})


class Rejected(Exception):
    """A patch meshd cannot apply (the message says why)."""


def check(kind: str, items: Sequence[Message]) -> str:
    """Why Envoy would reject `items` of `kind`; "" when nothing was found."""
    reason = _twice("name", [m.name for m in items])
    if reason:
        return reason
    for m in items:
        reason = {"LISTENER": _listener, "ROUTE_CONFIGURATION": _route_config, "CLUSTER": _cluster}[kind](m)
        if reason:
            return f"{m.name}: {reason}"
    return ""


def _twice(what: str, names: Sequence[str]) -> str:
    dup = [n for n, c in Counter(names).items() if c > 1]
    return f"{what} {dup[0]!r} would appear twice" if dup else ""


def _known(type_url: str) -> bool:
    try:
        descriptor_pool.Default().FindMessageTypeByName(type_url.rpartition("/")[2])
        return True
    except KeyError:
        return False


def _filters(kind: str, filters: Sequence[Message], terminal: frozenset[str]) -> str:
    for i, f in enumerate(filters):
        if not f.HasField("typed_config") and not f.HasField("config_discovery"):
            return f"{kind} filter {f.name!r} has no typed_config"
        url = f.typed_config.type_url
        if url and not _known(url):
            return f"{kind} filter {f.name!r}: unknown type {url}"
        if url in terminal and i != len(filters) - 1:
            return f"{kind} filter {f.name!r} is terminal but not the last filter"
    if filters and terminal and filters[-1].typed_config.type_url not in terminal:
        return f"the last {kind} filter {filters[-1].name!r} is not a terminal filter"
    return ""


def _listener(listener: Message) -> str:
    from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2

    reason = _listener_filters(listener.listener_filters)
    if reason:
        return reason
    chains = list(listener.filter_chains)
    matches = [c.filter_chain_match.SerializeToString(deterministic=True) for c in chains]
    if len(set(matches)) != len(matches):
        return "two filter chains would have the same filter_chain_match"
    for c in chains:
        reason = _filters("network", c.filters, TERMINAL_NETWORK)
        if reason:
            return reason
        for f in c.filters:
            if f.typed_config.type_url.endswith(".HttpConnectionManager"):
                hcm = hcm_pb2.HttpConnectionManager()
                f.typed_config.Unpack(hcm)
                reason = _filters("HTTP", hcm.http_filters, frozenset({TERMINAL_HTTP}))
                if reason:
                    return reason
    return ""


def _listener_filters(filters: Sequence[Message]) -> str:
    for f in filters:
        if not f.HasField("typed_config") and not f.HasField("config_discovery"):
            return f"listener filter {f.name!r} has no typed_config"
        if f.typed_config.type_url and not _known(f.typed_config.type_url):
            return f"listener filter {f.name!r}: unknown type {f.typed_config.type_url}"
    return ""


def _route_config(rc: Message) -> str:
    vhosts = list(rc.virtual_hosts)
    return (_twice("virtual host", [v.name for v in vhosts])
            or _twice("domain", [d for v in vhosts for d in v.domains]))


def _cluster(cluster: Message) -> str:
    return "" if cluster.name else "a cluster has no name"
