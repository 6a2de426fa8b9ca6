"""Istio's MeshConfig, as far as meshd reads it: typed and frozen.

Read from `meshd serve --mesh-config FILE` (the `mesh` key of the `istio` ConfigMap, as
YAML) or, in Kubernetes mode, from that ConfigMap in the root namespace. Fields meshd does
not read yet are kept in `unread` so they can be reported, never silently dropped.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ..names import ROOT_NAMESPACE, TRUST_DOMAIN

# The extension provider kinds meshd serves (CUSTOM authorization); others are reported.
EXT_AUTHZ_HTTP = "envoyExtAuthzHttp"
EXT_AUTHZ_GRPC = "envoyExtAuthzGrpc"
EXT_AUTHZ_KINDS = (EXT_AUTHZ_HTTP, EXT_AUTHZ_GRPC)

# Top-level MeshConfig fields meshd acts on.
READ_FIELDS = frozenset({"rootNamespace", "trustDomain", "trustDomainAliases", "extensionProviders",
                         "outboundTrafficPolicy", "defaultServiceExportTo", "defaultVirtualServiceExportTo",
                         "defaultDestinationRuleExportTo"})

ALLOW_ANY = "ALLOW_ANY"
REGISTRY_ONLY = "REGISTRY_ONLY"
OUTBOUND_MODES = (ALLOW_ANY, REGISTRY_ONLY)


@dataclass(frozen=True)
class ExtensionProvider:
    name: str
    kind: str  # "envoyExtAuthzHttp", "envoyExtAuthzGrpc", or another MeshConfig provider kind
    settings: Mapping[str, Any] = field(default_factory=dict)  # the provider's own block, as written


@dataclass(frozen=True)
class MeshConfig:
    root_namespace: str = ROOT_NAMESPACE
    trust_domain: str = TRUST_DOMAIN
    trust_domain_aliases: tuple[str, ...] = ()
    extension_providers: tuple[ExtensionProvider, ...] = ()
    # Where a sidecar sends traffic to hosts outside its registry (a Sidecar's own
    # outboundTrafficPolicy wins over it).
    outbound_traffic_policy: str = ALLOW_ANY
    # Who sees a Service, VirtualService or DestinationRule without exportTo of its own.
    default_service_export_to: tuple[str, ...] = ("*",)
    default_virtual_service_export_to: tuple[str, ...] = ("*",)
    default_destination_rule_export_to: tuple[str, ...] = ("*",)
    unread: tuple[str, ...] = ()  # top-level fields present but not acted on by meshd

    def provider(self, name: str) -> ExtensionProvider | None:
        for p in self.extension_providers:
            if p.name == name:
                return p
        return None


DEFAULT = MeshConfig()


class MeshConfigError(ValueError):
    """Invalid mesh config: `field` names the offending path."""

    def __init__(self, field_path: str, reason: str):
        super().__init__(f"{field_path}: {reason}")
        self.field = field_path
        self.reason = reason


def parse_mesh_config(data: Any) -> MeshConfig:
    """A MeshConfig from its YAML/JSON form (the `mesh` key's content). Raises
    MeshConfigError naming the field on bad input."""
    if data is None:
        return DEFAULT
    if not isinstance(data, Mapping):
        raise MeshConfigError("", f"must be a mapping, got {type(data).__name__}")
    root = data.get("rootNamespace", ROOT_NAMESPACE)
    if not isinstance(root, str) or not root:
        raise MeshConfigError("rootNamespace", "must be a non-empty string")
    td = data.get("trustDomain", TRUST_DOMAIN)
    if not isinstance(td, str) or not td:
        raise MeshConfigError("trustDomain", "must be a non-empty string")
    aliases = data.get("trustDomainAliases") or []
    if not isinstance(aliases, list) or not all(isinstance(a, str) for a in aliases):
        raise MeshConfigError("trustDomainAliases", "must be a list of strings")
    providers = []
    seen: set[str] = set()
    for i, raw in enumerate(data.get("extensionProviders") or []):
        where = f"extensionProviders[{i}]"
        if not isinstance(raw, Mapping):
            raise MeshConfigError(where, "must be a mapping")
        name = raw.get("name")
        if not isinstance(name, str) or not name:
            raise MeshConfigError(f"{where}.name", "Required value")
        if name in seen:
            raise MeshConfigError(f"{where}.name", f"duplicate provider name {name!r}")
        seen.add(name)
        kinds = [k for k in raw if k != "name"]
        if len(kinds) != 1:
            raise MeshConfigError(where, "exactly one provider block is required (e.g. envoyExtAuthzHttp)")
        block = raw[kinds[0]]
        if not isinstance(block, Mapping):
            raise MeshConfigError(f"{where}.{kinds[0]}", "must be a mapping")
        providers.append(ExtensionProvider(name, kinds[0], dict(block)))
    outbound = data.get("outboundTrafficPolicy") or {}
    if not isinstance(outbound, Mapping):
        raise MeshConfigError("outboundTrafficPolicy", "must be a mapping with `mode`")
    mode = outbound.get("mode", ALLOW_ANY)
    if mode not in OUTBOUND_MODES:
        raise MeshConfigError("outboundTrafficPolicy.mode", f"must be one of {', '.join(OUTBOUND_MODES)}, got {mode!r}")
    exports = {f: _export_list(data, f) for f in ("defaultServiceExportTo", "defaultVirtualServiceExportTo",
                                                   "defaultDestinationRuleExportTo")}
    unread = tuple(sorted(k for k in data if k not in READ_FIELDS))
    return MeshConfig(root, td, tuple(aliases), tuple(providers), outbound_traffic_policy=str(mode),
                      default_service_export_to=exports["defaultServiceExportTo"],
                      default_virtual_service_export_to=exports["defaultVirtualServiceExportTo"],
                      default_destination_rule_export_to=exports["defaultDestinationRuleExportTo"],
                      unread=unread)


def _export_list(data: Mapping[str, Any], name: str) -> tuple[str, ...]:
    """An exportTo default: `*`, `.`, `~` or namespace names; absent is `*`."""
    value = data.get(name)
    if value is None:
        return ("*",)
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise MeshConfigError(name, "must be a list of namespaces, '.', '*' or '~'")
    return tuple(value) or ("*",)
