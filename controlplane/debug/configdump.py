"""Envoy config dumps (`envoy.admin.v3.ConfigDump`): read them, build them, pick sections.

Three producers, one shape:
- Envoy's admin `/config_dump` (what the proxy holds),
- meshd's `/debug/config_dump?proxyID=` (what meshd sent, built by `from_sent` below
  from the resources each subscription last sent: istiod's endpoint has the same shape),
- a file (`meshd proxy-config ... --file dump.json`, istioctl's golden inputs).

Parsing accepts both proto field spellings (snake_case as Envoy prints, camelCase as
jsonpb prints). An `Any` whose type this process cannot decode (an Istio-only filter, for
example) is kept verbatim as JSON, so printing the dump back loses nothing.
"""
from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from envoy.admin.v3 import config_dump_pb2
from envoy.admin.v3 import config_dump_shared_pb2 as shared
from envoy.config.core.v3 import base_pb2
from google.protobuf import any_pb2, json_format, timestamp_pb2
from google.protobuf.message import Message

from .. import names
from .gojson import OPAQUE_PREFIX, UnknownType, message_class, preload_types
from .times import rfc3339

ADMIN = "type.googleapis.com/envoy.admin.v3."
BOOTSTRAP = ADMIN + "BootstrapConfigDump"
CLUSTERS = ADMIN + "ClustersConfigDump"
ENDPOINTS = ADMIN + "EndpointsConfigDump"
LISTENERS = ADMIN + "ListenersConfigDump"
SCOPED_ROUTES = ADMIN + "ScopedRoutesConfigDump"
ROUTES = ADMIN + "RoutesConfigDump"
SECRETS = ADMIN + "SecretsConfigDump"
ECDS = ADMIN + "EcdsConfigDump"

REDACTED = b"[redacted]"  # what Envoy's admin prints instead of private keys


class DumpError(ValueError):
    """The input is not a usable config dump."""


_OPAQUE_CARRIER = "type.googleapis.com/google.protobuf.BytesValue"


def _collect_types(node: Any, out: set[str]) -> None:
    if isinstance(node, dict):
        t = node.get("@type")
        if isinstance(t, str):
            out.add(t)
        for v in node.values():
            _collect_types(v, out)
    elif isinstance(node, list):
        for v in node:
            _collect_types(v, out)


def _wrap_unknown(node: Any) -> Any:
    """Replace every Any of an undecodable type by a BytesValue carrying its JSON."""
    if isinstance(node, dict):
        t = node.get("@type")
        if isinstance(t, str):
            try:
                message_class(t)
            except UnknownType:
                import base64

                raw = OPAQUE_PREFIX + json.dumps(node).encode()
                return {"@type": _OPAQUE_CARRIER, "value": base64.b64encode(raw).decode()}
        return {k: _wrap_unknown(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_wrap_unknown(v) for v in node]
    return node


def _unwrap_unknown(msg: Message) -> None:
    """Turn the carriers of `_wrap_unknown` back into Anys with their original type URL."""
    for fd, value in msg.ListFields():
        if fd.message_type is None:
            continue
        if fd.message_type.GetOptions().map_entry:
            if fd.message_type.fields_by_name["value"].message_type is not None:
                for v in value.values():
                    _unwrap_unknown(v)
            continue
        items = value if fd.is_repeated else [value]
        for item in items:
            if fd.message_type.full_name == "google.protobuf.Any":
                _unwrap_any(item)
            else:
                _unwrap_unknown(item)


def _unwrap_any(a: any_pb2.Any) -> None:
    if a.type_url == _OPAQUE_CARRIER:
        from google.protobuf import wrappers_pb2

        carrier = wrappers_pb2.BytesValue()
        carrier.ParseFromString(a.value)
        if carrier.value.startswith(OPAQUE_PREFIX):
            body = json.loads(carrier.value[len(OPAQUE_PREFIX):])
            url = body.pop("@type")
            a.type_url = url
            a.value = OPAQUE_PREFIX + json.dumps(body).encode()
        return
    if a.value.startswith(OPAQUE_PREFIX):
        return
    try:
        inner = message_class(a.type_url)()
    except UnknownType:
        return
    inner.ParseFromString(a.value)
    before = inner.SerializeToString()
    _unwrap_unknown(inner)
    after = inner.SerializeToString()
    if after != before:
        a.value = after


def parse_message(data: Any, msg: Message) -> Message:
    """JSON (text or already decoded) into `msg`, keeping undecodable Anys."""
    doc = json.loads(data) if isinstance(data, (str, bytes)) else data
    types: set[str] = set()
    _collect_types(doc, types)
    preload_types(types)
    try:
        json_format.ParseDict(_wrap_unknown(doc), msg, ignore_unknown_fields=True)
    except json_format.ParseError as e:
        raise DumpError(f"not an Envoy config dump: {e}") from None
    _unwrap_unknown(msg)
    return msg


def unpack(a: any_pb2.Any) -> Message | None:
    """The message inside an Any, or None if its type is unknown here."""
    if a.value.startswith(OPAQUE_PREFIX):
        return None
    try:
        m = message_class(a.type_url)()
    except UnknownType:
        return None
    m.ParseFromString(a.value)
    return m


@dataclass
class ConfigDump:
    """An `envoy.admin.v3.ConfigDump` with istioctl's section accessors."""

    proto: config_dump_pb2.ConfigDump

    @classmethod
    def from_json(cls, data: str | bytes | Mapping) -> ConfigDump:
        doc = json.loads(data) if isinstance(data, (str, bytes)) else data
        if not isinstance(doc, dict) or not isinstance(doc.get("configs"), list):
            raise DumpError("not an Envoy config dump: no \"configs\" list")
        return cls(parse_message(doc, config_dump_pb2.ConfigDump()))

    def section(self, type_url: str) -> Message | None:
        for a in self.proto.configs:
            if a.type_url.rsplit("/", 1)[-1] == type_url.rsplit("/", 1)[-1]:
                return unpack(a)
        return None

    def require(self, type_url: str) -> Message:
        s = self.section(type_url)
        if s is None:
            raise DumpError(f"config dump has no configuration type {type_url}")
        return s

    # istioctl's getters -------------------------------------------------------------
    def bootstrap(self) -> config_dump_pb2.BootstrapConfigDump:
        return self.require(BOOTSTRAP)

    def clusters(self) -> list[Message]:
        """Dynamic active then static clusters (istioctl's order before sorting)."""
        dump = self.require(CLUSTERS)
        out = [unpack(c.cluster) for c in dump.dynamic_active_clusters if c.HasField("cluster")]
        out += [unpack(c.cluster) for c in dump.static_clusters if c.HasField("cluster")]
        return [c for c in out if c is not None]

    def listeners(self) -> list[Message]:
        dump = self.require(LISTENERS)
        out = [unpack(l.active_state.listener) for l in dump.dynamic_listeners
               if l.HasField("active_state") and l.active_state.HasField("listener")]
        out += [unpack(l.listener) for l in dump.static_listeners if l.HasField("listener")]
        return [l for l in out if l is not None]

    def routes(self) -> list[Message]:
        dump = self.require(ROUTES)
        out = [unpack(r.route_config) for r in dump.dynamic_route_configs if r.HasField("route_config")]
        out += [unpack(r.route_config) for r in dump.static_route_configs if r.HasField("route_config")]
        return [r for r in out if r is not None]

    def endpoints(self) -> list[Message]:
        dump = self.require(ENDPOINTS)
        out = [unpack(e.endpoint_config) for e in dump.dynamic_endpoint_configs]
        out += [unpack(e.endpoint_config) for e in dump.static_endpoint_configs]
        return [e for e in out if e is not None]

    def secrets(self) -> config_dump_pb2.SecretsConfigDump:
        return self.require(SECRETS)

    def ecds(self) -> shared.EcdsConfigDump:
        """The ECDS section (empty when the proxy was sent, or holds, no extension config)."""
        return self.section(ECDS) or shared.EcdsConfigDump()

    def extension_configs(self) -> list[Message]:
        """The TypedExtensionConfigs of the ECDS section, by name."""
        out = [unpack(f.ecds_filter) for f in self.ecds().ecds_filters]
        return sorted((c for c in out if c is not None), key=lambda c: c.name)

    def to_json(self, indent: str = "  ") -> str:
        from .gojson import jsonpb

        return jsonpb(self.proto, indent)


# --- building a dump from what meshd sent ------------------------------------------------

def _timestamp(t: float) -> timestamp_pb2.Timestamp:
    ts = timestamp_pb2.Timestamp()
    if t:
        ts.FromNanoseconds(int(t * 1e9))
    return ts


def _pack(msg: Message, type_url: str) -> any_pb2.Any:
    return any_pb2.Any(type_url=type_url, value=msg.SerializeToString(deterministic=True))


def redact_secret(a: any_pb2.Any) -> any_pb2.Any:
    """A Secret with its private key replaced as Envoy's admin does ([redacted])."""
    from envoy.extensions.transport_sockets.tls.v3 import secret_pb2

    s = secret_pb2.Secret()
    s.ParseFromString(a.value)
    if s.HasField("tls_certificate") and s.tls_certificate.HasField("private_key"):
        s.tls_certificate.private_key.Clear()
        s.tls_certificate.private_key.inline_bytes = REDACTED
    return _pack(s, a.type_url)


@dataclass(frozen=True)
class Sent:
    """One type's last response on a stream: what `from_sent` needs."""

    type_url: str
    version: str
    sent_at: float
    resources: tuple  # generators.resources.Resource (name, any)


def from_sent(node: base_pb2.Node | None, sent: Iterable[Sent]) -> ConfigDump:
    """An Envoy-style config dump of exactly what one proxy was sent (istiod's
    /debug/config_dump?proxyID= shape): bootstrap node, then clusters, endpoints,
    listeners, routes and secrets as the dynamic sections Envoy would show."""
    by_type = {s.type_url: s for s in sent}
    out = config_dump_pb2.ConfigDump()

    boot = config_dump_pb2.BootstrapConfigDump()
    if node is not None:
        n = base_pb2.Node()
        n.CopyFrom(node)
        n.ClearField("extensions")  # 60 KB of Envoy's extension list helps nobody here
        boot.bootstrap.node.CopyFrom(n)
    out.configs.append(_pack(boot, BOOTSTRAP))

    clusters = shared.ClustersConfigDump()
    if (s := by_type.get(names.CLUSTER)) is not None:
        clusters.version_info = s.version
        for r in s.resources:
            clusters.dynamic_active_clusters.append(shared.ClustersConfigDump.DynamicCluster(
                version_info=s.version, cluster=r.any, last_updated=_timestamp(s.sent_at)))
    out.configs.append(_pack(clusters, CLUSTERS))

    eps = shared.EndpointsConfigDump()
    if (s := by_type.get(names.ENDPOINT)) is not None:
        for r in s.resources:
            eps.dynamic_endpoint_configs.append(shared.EndpointsConfigDump.DynamicEndpointConfig(
                version_info=s.version, endpoint_config=r.any, last_updated=_timestamp(s.sent_at)))
    out.configs.append(_pack(eps, ENDPOINTS))

    listeners = shared.ListenersConfigDump()
    if (s := by_type.get(names.LISTENER)) is not None:
        listeners.version_info = s.version
        for r in s.resources:
            dl = listeners.dynamic_listeners.add(name=r.name)
            dl.active_state.version_info = s.version
            dl.active_state.listener.CopyFrom(r.any)
            dl.active_state.last_updated.CopyFrom(_timestamp(s.sent_at))
    out.configs.append(_pack(listeners, LISTENERS))

    routes = shared.RoutesConfigDump()
    if (s := by_type.get(names.ROUTE)) is not None:
        for r in s.resources:
            routes.dynamic_route_configs.append(shared.RoutesConfigDump.DynamicRouteConfig(
                version_info=s.version, route_config=r.any, last_updated=_timestamp(s.sent_at)))
    out.configs.append(_pack(routes, ROUTES))

    secrets = config_dump_pb2.SecretsConfigDump()
    if (s := by_type.get(names.SECRET)) is not None:
        # `default` first, as Envoy (and istioctl's output) usually lists it.
        for r in sorted(s.resources, key=lambda r: (r.name != names.SDS_DEFAULT, r.name)):
            secrets.dynamic_active_secrets.append(config_dump_pb2.SecretsConfigDump.DynamicSecret(
                name=r.name, version_info=s.version, last_updated=_timestamp(s.sent_at),
                secret=redact_secret(r.any)))
    out.configs.append(_pack(secrets, SECRETS))
    if (s := by_type.get(names.EXTENSION_CONFIG)) is not None and s.resources:  # only for proxies using ECDS
        ecds = shared.EcdsConfigDump()
        for r in s.resources:
            ecds.ecds_filters.append(shared.EcdsConfigDump.EcdsFilterConfig(
                version_info=s.version, ecds_filter=r.any, last_updated=_timestamp(s.sent_at)))
        out.configs.append(_pack(ecds, ECDS))
    return ConfigDump(out)


__all__ = [
    "ConfigDump", "DumpError", "Sent", "from_sent", "parse_message", "unpack", "redact_secret", "rfc3339",
    "BOOTSTRAP", "CLUSTERS", "ENDPOINTS", "LISTENERS", "ROUTES", "SECRETS", "SCOPED_ROUTES", "ECDS",
]
