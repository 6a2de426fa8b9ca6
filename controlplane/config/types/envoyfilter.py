"""EnvoyFilter (networking.istio.io/v1alpha3), typed: which proxies it selects
(`workloadSelector` / `targetRefs`), its `priority` and its config patches: where each
applies (`applyTo`, `match`) and what it does (`patch.operation`, `patch.value`).

A patch's `value` stays the document's mapping; `to_message` converts it to the Envoy
proto of its `applyTo` as istiod's `xds.BuildXDSObjectFromStruct` does (proto3 JSON in
either field spelling, `typed_config` and other `Any` fields resolved by their `@type`).
Unlike istiod, unknown fields are an error: meshd never drops what it does not understand.
Validation and the generator (generators/envoyfilter/) both call it.
"""
from __future__ import annotations

import functools
import importlib
import pkgutil
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .common import each, integer, labels, mapping, optional, text

if TYPE_CHECKING:
    from google.protobuf.message import Message

APPLY_TO = ("LISTENER", "FILTER_CHAIN", "NETWORK_FILTER", "HTTP_FILTER", "ROUTE_CONFIGURATION", "VIRTUAL_HOST",
            "HTTP_ROUTE", "CLUSTER", "EXTENSION_CONFIG", "BOOTSTRAP", "LISTENER_FILTER")
OPERATIONS = ("MERGE", "ADD", "REMOVE", "INSERT_BEFORE", "INSERT_AFTER", "INSERT_FIRST", "REPLACE")
CONTEXTS = ("ANY", "SIDECAR_INBOUND", "SIDECAR_OUTBOUND", "GATEWAY")
ROUTE_ACTIONS = ("ANY", "ROUTE", "REDIRECT", "DIRECT_RESPONSE")
FILTER_CLASSES = ("UNSPECIFIED", "AUTHN", "AUTHZ", "STATS")


@dataclass(frozen=True, slots=True)
class ProxyMatch:
    proxy_version: str = ""  # a regular expression on the proxy's ISTIO_VERSION
    metadata: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class FilterMatch:
    name: str = ""
    sub_filter: str = ""  # an HTTP filter's name inside the http_connection_manager


@dataclass(frozen=True, slots=True)
class FilterChainMatch:
    name: str = ""
    sni: str = ""
    transport_protocol: str = ""
    application_protocols: str = ""
    destination_port: int = 0
    filter: FilterMatch | None = None


@dataclass(frozen=True, slots=True)
class ListenerMatch:
    port_number: int = 0
    name: str = ""
    filter_chain: FilterChainMatch | None = None
    listener_filter: str = ""


@dataclass(frozen=True, slots=True)
class RouteMatch:
    name: str = ""
    action: str = "ANY"


@dataclass(frozen=True, slots=True)
class VirtualHostMatch:
    name: str = ""
    domain_name: str = ""
    route: RouteMatch | None = None


@dataclass(frozen=True, slots=True)
class RouteConfigurationMatch:
    port_number: int = 0
    port_name: str = ""
    gateway: str = ""
    name: str = ""
    vhost: VirtualHostMatch | None = None


@dataclass(frozen=True, slots=True)
class ClusterMatch:
    port_number: int = 0
    service: str = ""
    subset: str = ""
    name: str = ""


@dataclass(frozen=True, slots=True)
class Match:
    context: str = "ANY"
    proxy: ProxyMatch | None = None
    listener: ListenerMatch | None = None
    route_configuration: RouteConfigurationMatch | None = None
    cluster: ClusterMatch | None = None


@dataclass(frozen=True, slots=True)
class Patch:
    operation: str = ""
    value: Mapping[str, Any] | None = None
    filter_class: str = "UNSPECIFIED"


@dataclass(frozen=True, slots=True)
class ConfigPatch:
    apply_to: str = ""
    match: Match | None = None
    patch: Patch | None = None


@dataclass(frozen=True, slots=True)
class TargetRef:
    group: str = ""
    kind: str = ""
    name: str = ""
    namespace: str = ""


@dataclass(frozen=True, slots=True)
class EnvoyFilter:
    selector: Mapping[str, str] | None = None  # `workloadSelector.labels`; None: every workload
    target_refs: tuple[TargetRef, ...] = ()
    patches: tuple[ConfigPatch, ...] = ()
    priority: int = 0


def _filter_chain(m: Mapping[str, Any]) -> FilterChainMatch:
    return FilterChainMatch(
        name=text(m.get("name")), sni=text(m.get("sni")), transport_protocol=text(m.get("transportProtocol")),
        application_protocols=text(m.get("applicationProtocols")),
        destination_port=integer(m.get("destinationPort"), 0) or 0,
        filter=optional(m.get("filter"), lambda f: FilterMatch(
            text(f.get("name")), text(mapping(f.get("subFilter")).get("name")))))


def _listener(m: Mapping[str, Any]) -> ListenerMatch:
    return ListenerMatch(port_number=integer(m.get("portNumber"), 0) or 0, name=text(m.get("name")),
                         filter_chain=optional(m.get("filterChain"), _filter_chain),
                         listener_filter=text(m.get("listenerFilter")))


def _route_configuration(m: Mapping[str, Any]) -> RouteConfigurationMatch:
    return RouteConfigurationMatch(
        port_number=integer(m.get("portNumber"), 0) or 0, port_name=text(m.get("portName")),
        gateway=text(m.get("gateway")), name=text(m.get("name")),
        vhost=optional(m.get("vhost"), lambda v: VirtualHostMatch(
            text(v.get("name")), text(v.get("domainName")),
            optional(v.get("route"), lambda r: RouteMatch(text(r.get("name")), text(r.get("action")) or "ANY")))))


def _match(m: Mapping[str, Any]) -> Match:
    return Match(
        context=text(m.get("context")) or "ANY",
        proxy=optional(m.get("proxy"), lambda p: ProxyMatch(text(p.get("proxyVersion")), labels(p.get("metadata")))),
        listener=optional(m.get("listener"), _listener),
        route_configuration=optional(m.get("routeConfiguration"), _route_configuration),
        cluster=optional(m.get("cluster"), lambda c: ClusterMatch(
            integer(c.get("portNumber"), 0) or 0, text(c.get("service")), text(c.get("subset")), text(c.get("name")))))


def _config_patch(m: Mapping[str, Any]) -> ConfigPatch:
    return ConfigPatch(
        apply_to=text(m.get("applyTo")),
        match=optional(m.get("match"), _match),
        patch=optional(m.get("patch"), lambda p: Patch(
            text(p.get("operation")), p.get("value") if isinstance(p.get("value"), Mapping) else None,
            text(p.get("filterClass")) or "UNSPECIFIED")))


def envoy_filter(spec: Mapping[str, Any]) -> EnvoyFilter:
    selector = spec.get("workloadSelector")
    return EnvoyFilter(
        selector=labels(mapping(selector).get("labels")) if selector is not None else None,
        target_refs=each(spec.get("targetRefs"), lambda r: TargetRef(
            text(r.get("group")), text(r.get("kind")), text(r.get("name")), text(r.get("namespace")))),
        patches=each(spec.get("configPatches"), _config_patch),
        priority=integer(spec.get("priority"), 0) or 0,
    )


# --- patch values as Envoy protos ------------------------------------------------------

@functools.cache
def message_of() -> dict[str, type[Message]]:
    """The Envoy type of each applyTo's value. Envoy's protobuf modules are imported here,
    when a patch is first converted, not with the config types: meshd parses its initial
    lists, and reaches ready, without them."""
    from envoy.config.bootstrap.v3 import bootstrap_pb2
    from envoy.config.cluster.v3 import cluster_pb2
    from envoy.config.core.v3 import extension_pb2
    from envoy.config.listener.v3 import listener_components_pb2, listener_pb2
    from envoy.config.route.v3 import route_components_pb2, route_pb2
    from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2

    return {
        "LISTENER": listener_pb2.Listener,
        "FILTER_CHAIN": listener_components_pb2.FilterChain,
        "NETWORK_FILTER": listener_components_pb2.Filter,
        "HTTP_FILTER": hcm_pb2.HttpFilter,
        "ROUTE_CONFIGURATION": route_pb2.RouteConfiguration,
        "VIRTUAL_HOST": route_components_pb2.VirtualHost,
        "HTTP_ROUTE": route_components_pb2.Route,
        "CLUSTER": cluster_pb2.Cluster,
        "LISTENER_FILTER": listener_components_pb2.ListenerFilter,
        "EXTENSION_CONFIG": extension_pb2.TypedExtensionConfig,
        "BOOTSTRAP": bootstrap_pb2.Bootstrap,
    }


class PatchValueError(Exception):
    """A patch value that does not convert to its Envoy type (the message says why)."""


def to_message(apply_to: str, value: Mapping[str, Any] | None) -> Message:
    from google.protobuf import json_format

    cls = message_of().get(apply_to)
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
    from google.protobuf import descriptor_pool

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


__all__ = ["EnvoyFilter", "ConfigPatch", "Match", "Patch", "envoy_filter", "APPLY_TO", "OPERATIONS", "CONTEXTS",
           "PatchValueError", "to_message"]
