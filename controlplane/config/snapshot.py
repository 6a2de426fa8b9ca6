"""An immutable view of the store at one moment."""
from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

from .objects import ConfigKey, ConfigObject


@dataclass(frozen=True)
class ConfigSnapshot:
    objects: Mapping[ConfigKey, ConfigObject]
    version: str = ""  # content hash of every object's generation
    # of_kind lists, filled lazily; the store hands a new snapshot the previous one's
    # lists for the kinds a change left alone (store._carried_over).
    _by_kind: dict = field(default_factory=dict, compare=False, repr=False)

    def of_kind(self, kind: str) -> list[ConfigObject]:
        """Objects of one kind, in a stable order (namespace, name)."""
        cached = self._by_kind.get(kind)
        if cached is None:
            cached = sorted((o for o in self.objects.values() if o.kind == kind), key=lambda o: (o.namespace, o.name))
            self._by_kind[kind] = cached
        return cached

    def get(self, kind: str, namespace: str, name: str) -> ConfigObject | None:
        return self.objects.get(ConfigKey(kind, namespace, name))

    def __iter__(self) -> Iterator[ConfigObject]:
        return iter(self.objects.values())

    def __len__(self) -> int:
        return len(self.objects)
