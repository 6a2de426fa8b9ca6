"""The mesh config's `defaultConfig` (ProxyConfig) where it reaches a proxy: when it starts.

istiod never sends ProxyConfig over xDS: the injector writes it into the pod and
pilot-agent turns it into Envoy's bootstrap and command line. meshd has no agent, so
`meshd bootstrap --mesh-config FILE` does both parts of that:

- `proxyStatsMatcher` -> the bootstrap's `stats_config.stats_matcher`: Istio's inclusion
  list (the prefixes, suffixes and regexps pilot-agent always keeps) plus the configured
  ones. Without a proxyStatsMatcher meshd leaves Envoy's stats unfiltered (Istio filters
  them to its list: meshd's tests and `proxy-config` read the others);
- `proxyMetadata` -> pilot-agent's environment: `ISTIO_META_<KEY>` entries become node
  metadata `<KEY>` (as pilot-agent reads them); `BOOTSTRAP_XDS_AGENT` true makes
  `meshd bootstrap` and `meshd pod-init` fetch the EnvoyFilter BOOTSTRAP patches (as it
  makes pilot-agent ask istiod for its bootstrap); other entries configure the agent and
  have no effect here (`ignored_metadata` names them);
- `concurrency`, `drainDuration` -> Envoy's command line (`envoy_args`: `--concurrency`,
  `--drain-time-s`, `--drain-strategy immediate`, as pilot-agent starts Envoy);
- the whole setting is in node metadata `PROXY_CONFIG`, as pilot-agent sends it.

`terminationDrainDuration` is how long pilot-agent waits after SIGTERM before it stops
Envoy, and `holdApplicationUntilProxyStarts` makes the injector start the application
container only once the proxy is ready: both belong to what starts the processes. Without
injection, the operator's start-up script does it: start Envoy, wait for its readiness
(`/healthz/ready` on 15021, or admin `/ready`), then the application; on shutdown, drain
Envoy (admin `POST /drain_listeners?graceful`) and stop it after terminationDrainDuration.
"""
from __future__ import annotations

from typing import Any

from .model.meshconfig import ProxyConfig

# What pilot-agent always keeps in its inclusion list, whatever proxyStatsMatcher says.
ISTIO_STATS_PREFIXES = ("reporter=", "cluster_manager", "listener_manager", "server", "cluster.xds-grpc", "wasm",
                        "component", "istio")
ISTIO_STATS_SUFFIXES = ("rbac.allowed", "rbac.denied", "shadow_allowed", "shadow_denied")
META_PREFIX = "ISTIO_META_"


def stats_config(pc: ProxyConfig) -> dict[str, Any]:
    """The bootstrap's `stats_config` for proxyStatsMatcher ({} without one)."""
    m = pc.stats_matcher
    if not m:
        return {}
    patterns: list[dict[str, Any]] = [{"prefix": p} for p in dict.fromkeys(ISTIO_STATS_PREFIXES + m.inclusion_prefixes)]
    patterns += [{"suffix": s} for s in dict.fromkeys(ISTIO_STATS_SUFFIXES + m.inclusion_suffixes)]
    patterns += [{"safe_regex": {"regex": r}} for r in m.inclusion_regexps]
    return {"stats_config": {"stats_matcher": {"inclusion_list": {"patterns": patterns}}}}


def node_metadata(pc: ProxyConfig) -> dict[str, Any]:
    """Node metadata from ProxyConfig: `PROXY_CONFIG`, and the ISTIO_META_ entries of
    proxyMetadata (their key without the prefix)."""
    out: dict[str, Any] = {k[len(META_PREFIX):]: v for k, v in pc.proxy_metadata
                           if k.startswith(META_PREFIX) and len(k) > len(META_PREFIX)}
    config: dict[str, Any] = {
        "concurrency": pc.concurrency,
        "drainDuration": _seconds(pc.drain_duration.total_nanos),
        "terminationDrainDuration": _seconds(pc.termination_drain_duration.total_nanos),
        "holdApplicationUntilProxyStarts": pc.hold_application_until_proxy_starts,
    }
    if pc.proxy_metadata:
        config["proxyMetadata"] = dict(pc.proxy_metadata)
    m = pc.stats_matcher
    if m:
        config["proxyStatsMatcher"] = {k: list(v) for k, v in (("inclusionPrefixes", m.inclusion_prefixes),
                                                              ("inclusionSuffixes", m.inclusion_suffixes),
                                                              ("inclusionRegexps", m.inclusion_regexps)) if v}
    out["PROXY_CONFIG"] = config
    return out


# Istio's switch for a bootstrap with the EnvoyFilter BOOTSTRAP patches in it (pilot-agent
# then asks istiod for the bootstrap; meshd's writers fetch the patches themselves).
BOOTSTRAP_PATCHES_SWITCH = "BOOTSTRAP_XDS_AGENT"


def fetches_bootstrap_patches(pc: ProxyConfig | None) -> bool:
    """proxyMetadata BOOTSTRAP_XDS_AGENT is true (Go's strconv.ParseBool spellings, as
    pilot-agent reads it)."""
    value = dict(pc.proxy_metadata).get(BOOTSTRAP_PATCHES_SWITCH, "") if pc is not None else ""
    return str(value) in ("1", "t", "T", "true", "TRUE", "True")


def ignored_metadata(pc: ProxyConfig) -> list[str]:
    """proxyMetadata entries that configure pilot-agent: no agent here, no effect."""
    return sorted(k for k, _ in pc.proxy_metadata if not k.startswith(META_PREFIX) and k != BOOTSTRAP_PATCHES_SWITCH)


def envoy_args(pc: ProxyConfig) -> list[str]:
    """Envoy's command-line flags for ProxyConfig, as pilot-agent passes them (concurrency
    0 means one worker per core: Envoy's own default, so no flag)."""
    out = ["--drain-time-s", str(round(pc.drain_duration.total_nanos / 1e9)), "--drain-strategy", "immediate"]
    if pc.concurrency:
        out = ["--concurrency", str(pc.concurrency), *out]
    return out


def _seconds(nanos: int) -> str:
    return f"{nanos / 1e9:g}s"
