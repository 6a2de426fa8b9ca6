"""PeerAuthentication: which mTLS mode a workload's inbound ports get, with Istio's
precedence (pilot/pkg/model/authentication.go, read not copied):

- a policy in the root namespace without a selector is mesh-wide;
- a policy in the workload's namespace without a selector is namespace-wide;
- a policy in the workload's namespace whose selector matches the workload's labels is
  workload-specific; `portLevelMtls` counts only on such a policy;
- among policies of the same level the oldest wins (creationTimestamp, then name);
- `UNSET` (or no mode) inherits from the level above; with nothing set the mode is
  PERMISSIVE.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from ..config.objects import ConfigObject
from ..config.types.peerauthentication import UNSET, PeerAuthentication
from .services import labels_match

STRICT, PERMISSIVE, DISABLE = "STRICT", "PERMISSIVE", "DISABLE"


@dataclass(frozen=True)
class MtlsPolicy:
    mode: str = PERMISSIVE  # STRICT | PERMISSIVE | DISABLE
    port_modes: Mapping[int, str] = field(default_factory=dict)  # workload port -> mode
    sources: tuple[str, ...] = ()  # "ns/name" of the policies that decided, for debugging

    def for_port(self, port: int) -> str:
        return self.port_modes.get(port, self.mode)


def _age_key(obj: ConfigObject) -> tuple[bool, str, str]:
    ts = str(obj.extra.get("creationTimestamp") or "")
    # Objects without a timestamp (plain files) sort after those with one, by name.
    return (ts == "", ts, obj.name)


def _mode(obj: ConfigObject | None) -> str:
    return UNSET if obj is None else obj.typed.mode


def selector_labels(obj: ConfigObject) -> Mapping[str, str]:
    """A PeerAuthentication's `selector.matchLabels` (empty: namespace- or mesh-wide)."""
    policy: PeerAuthentication = obj.typed
    return policy.selector


def _oldest(objs: Iterable[ConfigObject]) -> ConfigObject | None:
    return min(objs, key=_age_key, default=None)


def effective_policy(
    policies: Iterable[ConfigObject], namespace: str, labels: Mapping[str, str], root_namespace: str
) -> MtlsPolicy:
    mesh, ns_wide, workload = [], [], []
    for pa in policies:
        sel = selector_labels(pa)
        if pa.namespace == namespace and sel:
            if labels_match(sel, labels):
                workload.append(pa)
        elif pa.namespace == namespace and not sel:
            ns_wide.append(pa)
        elif pa.namespace == root_namespace and not sel:
            mesh.append(pa)
    chosen = [_oldest(mesh), _oldest(ns_wide), _oldest(workload)]
    mode = PERMISSIVE
    for one in chosen:
        m = _mode(one)
        if m != UNSET:
            mode = m
    port_modes: dict[int, str] = {}
    wl = chosen[2]
    if wl is not None:
        for port, m in wl.typed.port_level_mtls.items():
            port_modes[port] = mode if m == UNSET else m
    sources = tuple(f"{p.namespace}/{p.name}" for p in chosen if p is not None)
    return MtlsPolicy(mode=mode, port_modes=port_modes, sources=sources)
