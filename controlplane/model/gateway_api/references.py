"""ReferenceGrants: which cross-namespace references the Gateway API allows.

A Gateway's `certificateRefs` to a Secret of another namespace, and a route's
`backendRefs` (and mirror backends) to a Service of another namespace, hold only when a
ReferenceGrant in the *target's* namespace lets objects of that kind in the referring
namespace refer to it (all objects of the target kind, or the one named).
"""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from ...config.objects import ConfigObject

_CORE = ("", "core")


def _group(group: str) -> str:
    return "" if group in _CORE else group


@dataclass(frozen=True)
class Grants:
    # (from group, from kind, from namespace, to group, to kind, to namespace) -> names ("" every name)
    _allowed: frozenset[tuple[str, str, str, str, str, str, str]]

    def allows(self, from_group: str, from_kind: str, from_namespace: str,
               to_group: str, to_kind: str, to_namespace: str, to_name: str) -> bool:
        """Whether an object of (from_group, from_kind) in `from_namespace` may refer to
        `to_name` of (to_group, to_kind) in `to_namespace`: always in its own namespace."""
        if from_namespace == to_namespace:
            return True
        base = (_group(from_group), from_kind, from_namespace, _group(to_group), to_kind, to_namespace)
        return base + ("",) in self._allowed or base + (to_name,) in self._allowed


def grants_of(reference_grants: Iterable[ConfigObject]) -> Grants:
    allowed = set()
    for obj in reference_grants:
        grant = obj.typed
        for f in grant.from_:
            for t in grant.to:
                allowed.add((_group(f.group), f.kind, f.namespace, _group(t.group), t.kind, obj.namespace, t.name))
    return Grants(frozenset(allowed))
