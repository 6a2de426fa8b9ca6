"""A patch's `value` as the Envoy proto its `applyTo` patches, as istiod's
`xds.BuildXDSObjectFromStruct`: proto3 JSON (either field spelling), `typed_config` and
other `Any` fields resolved by their `@type`. Unlike istiod, unknown fields are an error:
meshd never drops what it does not understand.
"""
from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Mapping
from typing import Any

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.listener.v3 import listener_components_pb2, listener_pb2
from envoy.config.route.v3 import route_components_pb2, route_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2
from google.protobuf import descriptor_pool, json_format
from google.protobuf.message import Message

MESSAGE_OF: dict[str, type[Message]] = {
    "LISTENER": listener_pb2.Listener,
    "FILTER_CHAIN": listener_components_pb2.FilterChain,
    "NETWORK_FILTER": listener_components_pb2.Filter,
    "HTTP_FILTER": hcm_pb2.HttpFilter,
    "ROUTE_CONFIGURATION": route_pb2.RouteConfiguration,
    "VIRTUAL_HOST": route_components_pb2.VirtualHost,
    "HTTP_ROUTE": route_components_pb2.Route,
    "CLUSTER": cluster_pb2.Cluster,
    "LISTENER_FILTER": listener_components_pb2.ListenerFilter,
}


class PatchValueError(Exception):
    """A patch value that does not convert to its Envoy type (the message says why)."""


def to_message(apply_to: str, value: Mapping[str, Any] | None) -> Message:
    cls = MESSAGE_OF.get(apply_to)
    if cls is None:
        raise PatchValueError(f"applyTo {apply_to} is not supported by meshd")
    msg = cls()
    if value:
        _load_types(value)
        try:
            json_format.ParseDict(dict(value), msg)
        except json_format.ParseError as e:
            raise PatchValueError(f"value is no {cls.DESCRIPTOR.full_name}: {e}") from None
    return msg


def _load_types(value: Any) -> None:
    """Imports the modules of every `@type` the value names, so json_format finds them in
    the descriptor pool (xds-protos registers a type when its module is imported)."""
    if isinstance(value, Mapping):
        url = value.get("@type")
        if isinstance(url, str):
            _import_type(url.rpartition("/")[2])
        for v in value.values():
            _load_types(v)
    elif isinstance(value, list):
        for v in value:
            _load_types(v)


_TRIED: set[str] = set()


def _import_type(full_name: str) -> None:
    pool = descriptor_pool.Default()
    try:
        pool.FindMessageTypeByName(full_name)
        return
    except KeyError:
        pass
    package = full_name.rpartition(".")[0]
    if package in _TRIED:
        return
    _TRIED.add(package)
    try:
        pkg = importlib.import_module(package)
    except ImportError:
        return  # json_format names the unknown type
    for info in pkgutil.iter_modules(getattr(pkg, "__path__", [])):
        if info.name.endswith("_pb2"):
            try:
                importlib.import_module(f"{package}.{info.name}")
            except ImportError:
                continue
