"""The indexes a mesh snapshot owns (compare istiod's PushContext, which owns its indexes).

A snapshot is immutable, so whatever is derived from it stays true for its lifetime:
readers declare what they keep, next to the code that computes it (e.g.
generators/dependencies.py: the fingerprints cache keys are made of), as an `Index` (a
table, `mesh.indexes[INDEX]`, filled entry by entry) or a `Value` (one value,
`mesh.indexes.get(VALUE)`, else `mesh.indexes.value(VALUE, compute)`), and compute it
lazily.
This layer does not know what they mean, only how long they stay true (`Lifetime`):

- CONFIG: reads neither endpoints nor service instances (Services, rules, policies,
  Secrets, Pods, Nodes, the mesh config, fetched key sets);
- HOST: an Index keyed by service host, whose entries read that host's endpoints;
- ADDRESS: an Index keyed by workload IP, whose entries read the instances at that IP;
- SNAPSHOT: reads endpoints across hosts.

A snapshot that build_mesh derives from the previous one when only EndpointSlices changed
(model/mesh.py `_with_changed_slices`) knows which hosts' endpoints and which addresses'
instances it recomputed, and takes the previous snapshot's indexes by lifetime
(`after_endpoint_change`): what is CONFIG is shared (the very same tables and values,
whichever snapshot of the chain computed them first), the HOST and ADDRESS tables are
copied without the changed keys, and the SNAPSHOT ones start empty.

A snapshot that differs from the previous one in DestinationRules only (the generator
finds it so: generators/express.py `rules_only`) takes over what the previous one keeps
that reads no DestinationRule (declared `reads_rules=False`), whatever its lifetime: the
endpoints are the same too (`carry_past_rule_change`).
"""
from __future__ import annotations

import enum
from collections.abc import Callable, Hashable
from collections.abc import Set as AbstractSet
from typing import TYPE_CHECKING, Any, Generic, TypeVar, overload

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class Lifetime(enum.Enum):
    CONFIG = "config"
    HOST = "host"
    ADDRESS = "address"
    SNAPSHOT = "snapshot"


class _Declared:
    __slots__ = ("name", "lifetime", "shared", "reads_rules")

    def __init__(self, name: str, lifetime: Lifetime, *, reads_rules: bool = True):
        self.name = name
        self.lifetime = lifetime
        self.shared = lifetime is Lifetime.CONFIG
        # False: what it holds reads no DestinationRule, so it stays true past a change
        # of DestinationRules only.
        self.reads_rules = reads_rules

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r}, {self.lifetime.name})"


class Index(_Declared, Generic[K, V]):
    """A table of derived values, `K` -> `V`: a HOST index is keyed by host, an ADDRESS
    index by IP. Declared once, at module level, by its reader."""

    __slots__ = ()


class Value(_Declared, Generic[V]):
    """One derived value (never None). CONFIG or SNAPSHOT."""

    __slots__ = ()

    def __init__(self, name: str, lifetime: Lifetime, *, reads_rules: bool = True):
        assert lifetime in (Lifetime.CONFIG, Lifetime.SNAPSHOT), f"{name}: a Value is CONFIG or SNAPSHOT"
        super().__init__(name, lifetime, reads_rules=reads_rules)


class MeshIndexes(dict[_Declared, Any]):
    """What one snapshot keeps, by declaration. Reading is a plain dict lookup once the
    table or value exists: the push path reads these for every proxy."""

    __slots__ = ("_config",)

    def __init__(self, config: dict[_Declared, Any] | None = None):
        super().__init__()
        # The CONFIG tables and values, shared by the snapshots derived from each other
        # by endpoint changes: one copy, whichever of them made it first.
        self._config: dict[_Declared, Any] = {} if config is None else config

    if TYPE_CHECKING:
        def __getitem__(self, index: Index[K, V]) -> dict[K, V]: ...  # type: ignore[override]

        @overload  # type: ignore[override]
        def get(self, value: Value[V]) -> V | None: ...
        @overload
        def get(self, value: Index[K, V]) -> dict[K, V] | None: ...
        def get(self, value: _Declared) -> Any: ...

    def __missing__(self, index: Index[Any, Any]) -> dict[Any, Any]:
        table = self._config.setdefault(index, {}) if index.shared else {}
        self[index] = table
        return table

    def value(self, value: Value[V], compute: Callable[..., V], *args: Any) -> V:
        """`value` of this snapshot: `compute(*args)` once (the slow path of `get`; a
        CONFIG value is computed once for the whole chain of derived snapshots)."""
        if value.shared:
            got = self._config.get(value)
            if got is None:
                got = self._config[value] = compute(*args)
        else:
            got = compute(*args)
        self[value] = got
        return got

    def after_endpoint_change(self, hosts: AbstractSet[str], addresses: AbstractSet[str]) -> MeshIndexes:
        """The indexes of a snapshot that differs from this one's in the endpoints of
        `hosts` and the instances at `addresses` only."""
        out = MeshIndexes(self._config)
        out.update((k, v) for k, v in list(self._config.items()) if isinstance(k, Value))
        for key, table in list(self.items()):
            if key.lifetime is Lifetime.HOST:
                out[key] = {k: v for k, v in list(table.items()) if k not in hosts}
            elif key.lifetime is Lifetime.ADDRESS:
                out[key] = {k: v for k, v in list(table.items()) if k not in addresses}
        return out

    def carry_past_rule_change(self, previous: MeshIndexes) -> None:
        """These are the indexes of a snapshot that differs from `previous`'s in
        DestinationRules only: take over, as they are, its tables and values that read
        none (what this one computed already stays)."""
        for key, got in list(previous._config.items()):
            if not key.reads_rules:
                self.setdefault(key, self._config.setdefault(key, got))
        for key, got in list(previous.items()):
            if not key.reads_rules and not key.shared:
                self.setdefault(key, got)

    def shares_config_with(self, other: MeshIndexes) -> bool:
        """Whether `other` holds the very CONFIG tables of this one (a derived snapshot's)."""
        return self._config is other._config

    def __repr__(self) -> str:
        return f"MeshIndexes({ {k.name: len(v) if isinstance(v, dict) else v for k, v in self.items()} })"
