"""EnvoyFilter applyTo LISTENER_FILTER: a listener's `listener_filters` (tls_inspector,
http_inspector, original_dst, ...) patched as istiod's patchListenerFilters does
(pilot/pkg/networking/core/envoyfilter/listener_patch.go).

Matched by the listener (`listener.name`, `listener.portNumber`: on the virtual listeners
virtualInbound/virtualOutbound the port is not checked, as istiod) and by
`listener.listenerFilter`, the filter's name. Without that name, INSERT_BEFORE inserts
first and INSERT_AFTER last; MERGE, REPLACE and REMOVE need it (the parse gate refuses
them without). MERGE is Istio's filter merge: the patch's `name` replaces the filter's,
a `typed_config` of the same type merges into it; a filter without `typed_config`
(`config_discovery`) is left as it is. Unlike istiod, whose MERGE merges into every
listener filter of the listener, meshd merges into the named one only.
"""
from __future__ import annotations

from collections.abc import Callable

from google.protobuf.message import Message

from ...config.types.envoyfilter import ListenerMatch

VIRTUAL_LISTENERS = frozenset({"virtualInbound", "virtualOutbound"})


def listener_matches(lm: ListenerMatch | None, listener: Message) -> bool:
    if lm is None:
        return True
    if lm.name and lm.name != listener.name:
        return False
    if lm.port_number and listener.name not in VIRTUAL_LISTENERS:
        return bool(lm.port_number == listener.address.socket_address.port_value)
    return True


def named(name: str, op: str) -> Callable[[Message], bool] | None:
    """Which listener filters the patch names (None: it names none). MERGE passes over a
    filter without typed_config, as istiod."""
    if not name:
        return None
    return lambda f: bool(f.name == name and (op != "MERGE" or f.HasField("typed_config")))


def operation(name: str, op: str) -> str:
    """istiod: INSERT_AFTER without a listener filter to insert after is ADD (last)."""
    return "ADD" if op == "INSERT_AFTER" and not name else op
