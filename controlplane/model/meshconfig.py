"""Istio's MeshConfig, as far as meshd reads it: typed and frozen.

Read from `meshd serve --mesh-config FILE` (the `mesh` key of the `istio` ConfigMap, as
YAML) or, in Kubernetes mode, from that ConfigMap in the root namespace. Fields meshd does
not read yet are kept in `unread` so they can be reported, never silently dropped.
"""
from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ..config.types.common import Duration, duration
from ..config.types.trafficpolicy import LocalityLbSetting, locality_lb_setting
from ..config.types.virtualservice import HTTPRetry
from ..names import ROOT_NAMESPACE, TRUST_DOMAIN

# The extension provider kinds meshd serves (CUSTOM authorization); others are reported.
EXT_AUTHZ_HTTP = "envoyExtAuthzHttp"
EXT_AUTHZ_GRPC = "envoyExtAuthzGrpc"
EXT_AUTHZ_KINDS = (EXT_AUTHZ_HTTP, EXT_AUTHZ_GRPC)

# Top-level MeshConfig fields meshd acts on.
READ_FIELDS = frozenset({"rootNamespace", "trustDomain", "trustDomainAliases", "extensionProviders",
                         "outboundTrafficPolicy", "defaultServiceExportTo", "defaultVirtualServiceExportTo",
                         "defaultDestinationRuleExportTo", "defaultConfig", "enableAutoMtls", "localityLbSetting",
                         "accessLogFile", "accessLogEncoding", "accessLogFormat", "defaultHttpRetryPolicy",
                         "protocolDetectionTimeout", "inboundTrafficPolicy", "defaultProviders"})
# ProxyConfig (defaultConfig) fields meshd acts on: in the bootstrap (`meshd bootstrap
# --mesh-config`) or the Envoy command line it prints (`--envoy-args`).
PROXY_CONFIG_FIELDS = frozenset({"concurrency", "drainDuration", "proxyStatsMatcher", "proxyMetadata",
                                 "holdApplicationUntilProxyStarts"})

ALLOW_ANY = "ALLOW_ANY"
REGISTRY_ONLY = "REGISTRY_ONLY"
OUTBOUND_MODES = (ALLOW_ANY, REGISTRY_ONLY)
PASSTHROUGH = "PASSTHROUGH"  # inbound traffic goes to the address the client dialled (the pod IP)
LOCALHOST = "LOCALHOST"  # inbound traffic goes to 127.0.0.1 (applications bound to localhost only)
INBOUND_MODES = (PASSTHROUGH, LOCALHOST)
TEXT = "TEXT"
JSON = "JSON"
ACCESS_LOG_ENCODINGS = (TEXT, JSON)


@dataclass(frozen=True)
class StatsMatcher:
    """ProxyConfig.proxyStatsMatcher: the stats Envoy keeps besides Istio's defaults."""
    inclusion_prefixes: tuple[str, ...] = ()
    inclusion_suffixes: tuple[str, ...] = ()
    inclusion_regexps: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.inclusion_prefixes or self.inclusion_suffixes or self.inclusion_regexps)


@dataclass(frozen=True)
class ProxyConfig:
    """MeshConfig.defaultConfig, with Istio's defaults. It reaches a proxy when it starts
    (the bootstrap and Envoy's command line), never over xDS: a change applies to
    proxies started after it, as with istiod (whose injector bakes it into the pod)."""
    concurrency: int = 2  # worker threads; 0: one per core
    drain_duration: Duration = Duration(45_000_000_000)
    termination_drain_duration: Duration = Duration(5_000_000_000)
    stats_matcher: StatsMatcher = StatsMatcher()
    hold_application_until_proxy_starts: bool = False
    proxy_metadata: tuple[tuple[str, str], ...] = ()  # sorted (key, value): the config stays hashable
    unread: tuple[str, ...] = ()  # ProxyConfig fields present that meshd does not act on


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
    default_config: ProxyConfig = ProxyConfig()
    # false: clients send Istio mTLS only where a DestinationRule says ISTIO_MUTUAL.
    enable_auto_mtls: bool = True
    # The locality load balancing of clusters whose DestinationRule sets none.
    locality_lb_setting: LocalityLbSetting = LocalityLbSetting(enabled=True)
    access_log_file: str = ""  # "": no access log
    access_log_encoding: str = TEXT
    access_log_format: str = ""  # "": Istio's default format for the encoding
    # The retries of HTTP routes without a VirtualService `retries` (None: istiod's default).
    default_http_retry_policy: HTTPRetry | None = None
    protocol_detection_timeout: Duration = Duration(0)  # 0: wait for the client's first bytes
    inbound_traffic_policy: str = PASSTHROUGH
    # `defaultProviders`: sorted ("accessLogging" / "tracing" / "metrics", provider names),
    # used where no Telemetry names providers (model/telemetry.py); pairs keep it hashable.
    default_providers: tuple[tuple[str, tuple[str, ...]], ...] = ()
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
    inbound = data.get("inboundTrafficPolicy") or {}
    if not isinstance(inbound, Mapping):
        raise MeshConfigError("inboundTrafficPolicy", "must be a mapping with `mode`")
    inbound_mode = inbound.get("mode", PASSTHROUGH)
    if inbound_mode not in INBOUND_MODES:
        raise MeshConfigError("inboundTrafficPolicy.mode",
                              f"must be one of {', '.join(INBOUND_MODES)}, got {inbound_mode!r}")
    auto_mtls = data.get("enableAutoMtls", True)
    if not isinstance(auto_mtls, bool):
        raise MeshConfigError("enableAutoMtls", f"must be true or false, got {auto_mtls!r}")
    default_config = _proxy_config(data.get("defaultConfig"))
    unread = tuple(sorted(k for k in data if k not in READ_FIELDS))
    unread += tuple(f"defaultConfig.{k}" for k in default_config.unread)
    return MeshConfig(root, td, tuple(aliases), tuple(providers), outbound_traffic_policy=str(mode),
                      default_service_export_to=exports["defaultServiceExportTo"],
                      default_virtual_service_export_to=exports["defaultVirtualServiceExportTo"],
                      default_destination_rule_export_to=exports["defaultDestinationRuleExportTo"],
                      default_config=default_config, enable_auto_mtls=auto_mtls,
                      locality_lb_setting=_locality(data.get("localityLbSetting")),
                      **_access_log(data), default_http_retry_policy=_retry(data.get("defaultHttpRetryPolicy")),
                      protocol_detection_timeout=_duration(data, "protocolDetectionTimeout", Duration(0)),
                      inbound_traffic_policy=str(inbound_mode), default_providers=_default_providers(data),
                      unread=unread)


def _default_providers(data: Mapping[str, Any]) -> tuple[tuple[str, tuple[str, ...]], ...]:
    raw = data.get("defaultProviders") or {}
    if not isinstance(raw, Mapping):
        raise MeshConfigError("defaultProviders", "must be a mapping")
    out = {}
    for key, names in raw.items():
        if key not in ("accessLogging", "tracing", "metrics"):
            raise MeshConfigError(f"defaultProviders.{key}", "must be one of accessLogging, tracing, metrics")
        if not isinstance(names, list) or not all(isinstance(n, str) and n for n in names):
            raise MeshConfigError(f"defaultProviders.{key}", "must be a list of provider names")
        out[str(key)] = tuple(names)
    return tuple(sorted(out.items()))


def _duration(data: Mapping[str, Any], name: str, default: Duration, where: str = "") -> Duration:
    raw = data.get(name)
    if raw is None:
        return default
    got = duration(raw) if isinstance(raw, str) else None
    if got is None:
        raise MeshConfigError(where + name, f"must be a duration such as \"1s\" or \"100ms\", got {raw!r}")
    return got


def _strings(value: Any, where: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise MeshConfigError(where, "must be a list of non-empty strings")
    return tuple(value)


def _proxy_config(raw: Any) -> ProxyConfig:
    """defaultConfig (ProxyConfig): what meshd applies, the rest reported."""
    if raw is None:
        return ProxyConfig()
    if not isinstance(raw, Mapping):
        raise MeshConfigError("defaultConfig", "must be a mapping (ProxyConfig)")
    where = "defaultConfig."
    concurrency = raw.get("concurrency", 2)
    if isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 0:
        raise MeshConfigError(where + "concurrency", f"must be a non-negative integer, got {concurrency!r}")
    matcher = raw.get("proxyStatsMatcher") or {}
    if not isinstance(matcher, Mapping):
        raise MeshConfigError(where + "proxyStatsMatcher", "must be a mapping")
    for key in matcher:
        if key not in ("inclusionPrefixes", "inclusionSuffixes", "inclusionRegexps"):
            raise MeshConfigError(f"{where}proxyStatsMatcher.{key}",
                                  "unknown field (inclusionPrefixes, inclusionSuffixes, inclusionRegexps)")
    regexps = _strings(matcher.get("inclusionRegexps"), where + "proxyStatsMatcher.inclusionRegexps")
    for i, r in enumerate(regexps):
        try:
            re.compile(r)
        except re.error as e:
            raise MeshConfigError(f"{where}proxyStatsMatcher.inclusionRegexps[{i}]", f"not a regular expression: {e}") from None
    hold = raw.get("holdApplicationUntilProxyStarts", False)
    if not isinstance(hold, bool):
        raise MeshConfigError(where + "holdApplicationUntilProxyStarts", f"must be true or false, got {hold!r}")
    metadata = raw.get("proxyMetadata") or {}
    if not isinstance(metadata, Mapping) or not all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
        raise MeshConfigError(where + "proxyMetadata", "must be a mapping of strings to strings")
    return ProxyConfig(
        concurrency=concurrency,
        drain_duration=_duration(raw, "drainDuration", ProxyConfig.drain_duration, where),
        termination_drain_duration=_duration(raw, "terminationDrainDuration", ProxyConfig.termination_drain_duration, where),
        stats_matcher=StatsMatcher(
            _strings(matcher.get("inclusionPrefixes"), where + "proxyStatsMatcher.inclusionPrefixes"),
            _strings(matcher.get("inclusionSuffixes"), where + "proxyStatsMatcher.inclusionSuffixes"), regexps),
        hold_application_until_proxy_starts=hold,
        proxy_metadata=tuple(sorted(metadata.items())),
        unread=tuple(sorted(k for k in raw if k not in PROXY_CONFIG_FIELDS)),
    )


def _locality(raw: Any) -> LocalityLbSetting:
    if raw is None:
        return LocalityLbSetting(enabled=True)
    if not isinstance(raw, Mapping):
        raise MeshConfigError("localityLbSetting", "must be a mapping (LocalityLoadBalancerSetting)")
    for key in ("distribute", "failover", "failoverPriority"):
        if raw.get(key) is not None and not isinstance(raw.get(key), list):
            raise MeshConfigError(f"localityLbSetting.{key}", "must be a list")
    for i, d in enumerate(raw.get("distribute") or []):
        to = d.get("to") if isinstance(d, Mapping) else None
        if not isinstance(d, Mapping) or not isinstance(d.get("from"), str) or not isinstance(to, Mapping):
            raise MeshConfigError(f"localityLbSetting.distribute[{i}]", "must have `from` (a locality) and `to` (locality: weight)")
        if sum(v for v in to.values() if isinstance(v, int)) != 100 or not all(isinstance(v, int) for v in to.values()):
            raise MeshConfigError(f"localityLbSetting.distribute[{i}].to", "weights must be integers summing to 100")
    for i, f in enumerate(raw.get("failover") or []):
        if not isinstance(f, Mapping) or not isinstance(f.get("from"), str) or not isinstance(f.get("to"), str):
            raise MeshConfigError(f"localityLbSetting.failover[{i}]", "must have `from` and `to` (regions)")
    if raw.get("distribute") and raw.get("failover"):
        raise MeshConfigError("localityLbSetting", "can not simultaneously specify 'distribute' and 'failover'")
    return locality_lb_setting(raw)


def _access_log(data: Mapping[str, Any]) -> dict[str, str]:
    path = data.get("accessLogFile", "")
    if not isinstance(path, str):
        raise MeshConfigError("accessLogFile", "must be a file path (e.g. /dev/stdout)")
    encoding = data.get("accessLogEncoding", TEXT)
    if encoding not in ACCESS_LOG_ENCODINGS:
        raise MeshConfigError("accessLogEncoding", f"must be one of {', '.join(ACCESS_LOG_ENCODINGS)}, got {encoding!r}")
    fmt = data.get("accessLogFormat", "")
    if not isinstance(fmt, str):
        raise MeshConfigError("accessLogFormat", "must be a string (a format string, or a JSON object for JSON)")
    if encoding == JSON and fmt.strip():
        try:
            parsed = json.loads(fmt)
        except ValueError as e:
            raise MeshConfigError("accessLogFormat", f"with accessLogEncoding JSON must be a JSON object: {e}") from None
        if not isinstance(parsed, dict):
            raise MeshConfigError("accessLogFormat", "with accessLogEncoding JSON must be a JSON object")
    return {"access_log_file": path, "access_log_encoding": str(encoding), "access_log_format": fmt}


def _retry(raw: Any) -> HTTPRetry | None:
    """defaultHttpRetryPolicy, read as a VirtualService `retries` block."""
    if raw is None:
        return None
    if not isinstance(raw, Mapping):
        raise MeshConfigError("defaultHttpRetryPolicy", "must be a mapping (HTTPRetry)")
    attempts = raw.get("attempts", 0)
    if isinstance(attempts, bool) or not isinstance(attempts, int) or attempts < 0:
        raise MeshConfigError("defaultHttpRetryPolicy.attempts", f"must be a non-negative integer, got {attempts!r}")
    retry_on = raw.get("retryOn", "")
    if not isinstance(retry_on, str):
        raise MeshConfigError("defaultHttpRetryPolicy.retryOn", "must be a string of comma-separated conditions")
    timeouts = {k: _duration(raw, k, Duration(0), "defaultHttpRetryPolicy.") if raw.get(k) is not None else None
                for k in ("perTryTimeout", "backoff")}
    for flag in ("retryRemoteLocalities", "retryIgnorePreviousHosts"):
        if raw.get(flag) is not None and not isinstance(raw.get(flag), bool):
            raise MeshConfigError(f"defaultHttpRetryPolicy.{flag}", "must be true or false")
    ignore = raw.get("retryIgnorePreviousHosts")
    return HTTPRetry(attempts=attempts, per_try_timeout=timeouts["perTryTimeout"], retry_on=retry_on,
                     retry_remote_localities=bool(raw.get("retryRemoteLocalities")),
                     retry_ignore_previous_hosts=ignore, backoff=timeouts["backoff"])


def _export_list(data: Mapping[str, Any], name: str) -> tuple[str, ...]:
    """An exportTo default: `*`, `.`, `~` or namespace names; absent is `*`."""
    value = data.get(name)
    if value is None:
        return ("*",)
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise MeshConfigError(name, "must be a list of namespaces, '.', '*' or '~'")
    return tuple(value) or ("*",)
