"""EnvoyFilter applyTo EXTENSION_CONFIG: filter configs served by name over ECDS
(`type.googleapis.com/envoy.config.core.v3.TypedExtensionConfig`), as istiod's
InsertedExtensionConfigurations and EcdsGenerator (pilot/pkg/networking/core/envoyfilter/
extension_configuration_patch.go, pilot/pkg/xds/ecds.go).

An HTTP or network filter (or a listener filter) that names a config in its
`config_discovery` (config_source `ads: {}`, `type_urls`) makes Envoy ask for it over the
ADS stream; a proxy is served the `ADD` patches of the EnvoyFilters selecting it, in their
order. As istiod, only the proxy match (`match.proxy`: version and metadata) applies, not
`match.context`: an EXTENSION_CONFIG patch is served to every proxy its EnvoyFilter
selects. (The parse gate refuses other operations and listener, route or cluster matches.)

Each value is converted as every patch value is (`@type` Struct -> proto) and checked for
what Envoy would reject (no name, no typed_config, a type its API does not have, a name
twice, a type that a filter naming it does not take: its `config_discovery.type_urls`,
from the filter patches of the same EnvoyFilters for that proxy): such a patch is left
out and reported as the other patches are (apply.Problem).
"""
from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from google.protobuf import descriptor_pool, message_factory
from google.protobuf.message import Message

from ...config.types.envoyfilter import ConfigPatch, PatchValueError, to_message
from ...model.proxy import Proxy
from . import checks
from .apply import ENVOY_WOULD_REJECT, INVALID_VALUE, NOT_APPLICABLE, Problem
from .apply import _proxy_matches as proxy_matches
from .select import Selected

APPLY_TO = "EXTENSION_CONFIG"


REFERRING = ("HTTP_FILTER", "NETWORK_FILTER", "LISTENER_FILTER")  # a filter with `config_discovery`


def bears(sel: Selected) -> bool:
    """Whether `sel` can change a proxy's ECDS: it has an EXTENSION_CONFIG patch, or a
    filter patch naming one (`config_discovery`: its `type_urls` are checked)."""
    return any(cp.apply_to == APPLY_TO or _refers(cp) for cp in sel.filter.patches)


def _refers(cp: ConfigPatch) -> bool:
    value = (cp.patch.value if cp.patch else None) or {}
    return cp.apply_to in REFERRING and ("config_discovery" in value or "configDiscovery" in value)


def serves_only(sel: Selected) -> bool:
    """Whether every patch of `sel` is an EXTENSION_CONFIG one (it changes ECDS only)."""
    return all(cp.apply_to == APPLY_TO for cp in sel.filter.patches)


def build(filters: Sequence[Selected], proxy: Proxy) -> tuple[list[tuple[str, Message]], list[Problem]]:
    """The extension configs of the EnvoyFilters `filters` (ordered) for `proxy`, and the
    patches left out."""
    out: dict[str, Message] = {}
    problems: list[Problem] = []
    wanted = _wanted_types(filters, proxy)
    for sel in filters:
        for i, cp in enumerate(sel.filter.patches):
            if cp.apply_to != APPLY_TO or not _selects(cp, proxy):
                continue
            op = cp.patch.operation if cp.patch else ""
            if op != "ADD":
                problems.append(Problem(sel.key, i, APPLY_TO, f"operation {op or '(none)'} is not served (ADD only)",
                                        NOT_APPLICABLE))
                continue
            try:
                value = to_message(APPLY_TO, cp.patch.value if cp.patch else None)
            except PatchValueError as e:
                problems.append(Problem(sel.key, i, APPLY_TO, str(e), INVALID_VALUE))
                continue
            reason = _rejected(value, out) or _mistyped(value, wanted.get(value.name, ()))
            if reason:
                problems.append(Problem(sel.key, i, APPLY_TO, reason, ENVOY_WOULD_REJECT))
                continue
            out[value.name] = value
    return list(out.items()), problems


def _selects(cp: ConfigPatch, proxy: Proxy) -> bool:
    if cp.match is None:
        return True
    return proxy_matches(dataclasses.replace(cp, match=dataclasses.replace(cp.match, context="ANY")), proxy)


def _rejected(value: Message, served: dict[str, Message]) -> str:
    if not value.name:
        return "an extension config needs a name"
    if value.name in served:
        return f"extension config {value.name!r} would appear twice (an earlier patch adds it)"
    if not value.HasField("typed_config"):
        return f"extension config {value.name!r} has no typed_config"
    url = value.typed_config.type_url
    if not checks._known(url):
        return f"extension config {value.name!r}: unknown type {url}"
    return ""


def _wanted_types(filters: Sequence[Selected], proxy: Proxy) -> dict[str, list[frozenset[str]]]:
    """Per extension config name, the `type_urls` of each filter patch for `proxy` that
    names it in its `config_discovery`: Envoy rejects an ECDS update whose config is of a
    type one of them does not take."""
    out: dict[str, list[frozenset[str]]] = {}
    for sel in filters:
        for cp in sel.filter.patches:
            if not _refers(cp) or not proxy_matches(cp, proxy) or (cp.patch and cp.patch.operation == "REMOVE"):
                continue
            try:
                msg = to_message(cp.apply_to, cp.patch.value if cp.patch else None)
            except PatchValueError:
                continue  # reported with the listeners
            if msg.HasField("config_discovery") and msg.config_discovery.type_urls:
                out.setdefault(msg.name, []).append(frozenset(msg.config_discovery.type_urls))
    return out


_TYPED_STRUCTS = frozenset({"type.googleapis.com/udpa.type.v1.TypedStruct", "type.googleapis.com/xds.type.v3.TypedStruct"})


def _config_type(value: Message) -> str:
    """The type of the config: for a TypedStruct, the type it carries (as Envoy reads it)."""
    url: str = value.typed_config.type_url
    if url in _TYPED_STRUCTS:  # in the pool: _rejected found it there
        cls = message_factory.GetMessageClass(descriptor_pool.Default().FindMessageTypeByName(url.rpartition("/")[2]))
        inner = cls.FromString(value.typed_config.value)
        return str(inner.type_url)
    return url


def _mistyped(value: Message, wanted: Sequence[frozenset[str]]) -> str:
    url = _config_type(value)
    for urls in wanted:
        if url not in urls:
            return (f"extension config {value.name!r} is a {url.rpartition('/')[2]}, but a filter naming it takes "
                    f"only {', '.join(sorted(u.rpartition('/')[2] for u in urls))} (config_discovery.type_urls)")
    return ""
