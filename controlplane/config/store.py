"""The config store: every accepted object, keyed by (kind, namespace, name), with the
source location it came from.

Sources hand the store whole locations (a file's documents, or a Kubernetes object);
the store decides what is in force:
- an object rejected now keeps its last good version in force (nothing is lost);
- a location that cannot be read at all keeps everything it held before;
- two locations defining the same object: the one that defined it first keeps it and
  the other is rejected as a conflict, until the first lets go.
Every decision that drops input is logged once, as one event.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Callable, Iterable

import structlog

from .objects import ConfigKey, ConfigObject, Origin, Rejection
from .parse import Unsupported
from .snapshot import ConfigSnapshot

ChangeListener = Callable[[ConfigSnapshot, frozenset[ConfigKey]], None]


@dataclass
class LocationState:
    objects: dict[ConfigKey, ConfigObject] = field(default_factory=dict)
    rejections: list[Rejection] = field(default_factory=list)
    unreadable: str = ""  # why the whole location failed, if it did


class ConfigStore:
    def __init__(self, logger=None, on_reject: Callable[[Rejection], None] | None = None):
        self._log = logger or structlog.get_logger("meshd.config")
        self._locations: dict[str, LocationState] = {}
        self._owner: dict[ConfigKey, str] = {}  # which location an object in force comes from
        self._listeners: list[ChangeListener] = []
        self._on_reject = on_reject
        self._unsupported_seen: set[tuple[str, ConfigKey]] = set()
        self._snapshot = ConfigSnapshot({}, _version({}))

    # --- reading ------------------------------------------------------------------
    def snapshot(self) -> ConfigSnapshot:
        return self._snapshot

    def rejections(self) -> list[Rejection]:
        out: list[Rejection] = []
        for loc in sorted(self._locations):
            out.extend(self._locations[loc].rejections)
        return out

    def subscribe(self, listener: ChangeListener) -> None:
        self._listeners.append(listener)

    # --- writing ------------------------------------------------------------------
    def replace_location(
        self,
        location: str,
        parsed: Iterable[ConfigObject | Rejection | Unsupported],
    ) -> None:
        """Replace everything `location` holds with its newly parsed documents."""
        old = self._locations.get(location, LocationState())
        new = LocationState()
        rejected_keys: set[ConfigKey] = set()
        for item in parsed:
            if isinstance(item, ConfigObject):
                if item.key in new.objects:
                    self._reject(new, Rejection(item.origin, item.key, "metadata.name", "defined twice in the same file; the first definition is used"))
                    continue
                new.objects[item.key] = item
            elif isinstance(item, Rejection):
                self._reject(new, item)
                if item.key is not None:
                    rejected_keys.add(item.key)
            elif isinstance(item, Unsupported):
                self._unsupported(item)
        # The last good version of a rejected object stays in force.
        for key in rejected_keys:
            if key not in new.objects and key in old.objects:
                new.objects[key] = old.objects[key]
                self._log.info("config kept last good version", object=str(key), file=location)
        self._install(location, new)

    def location_unreadable(self, location: str, reason: str, origin: Origin | None = None) -> None:
        """The whole location failed (not YAML, unreadable...): keep what it held."""
        old = self._locations.get(location, LocationState())
        new = LocationState(objects=dict(old.objects))
        new.unreadable = reason
        self._reject(new, Rejection(origin or Origin("file", location), None, "", reason))
        if old.objects:
            self._log.info("config kept last good version", file=location, objects=len(old.objects))
        self._install(location, new)

    def remove_location(self, location: str) -> None:
        if location in self._locations:
            self._install(location, None)

    # --- internals ----------------------------------------------------------------
    def _reject(self, state: LocationState, rej: Rejection) -> None:
        state.rejections.append(rej)
        self._log.warning(
            "config rejected",
            file=rej.origin.location,
            document=rej.origin.index,
            object=str(rej.key) if rej.key else None,
            field=rej.field or None,
            reason=rej.reason,
            message=rej.message(),
        )
        if self._on_reject:
            self._on_reject(rej)

    def _unsupported(self, item: Unsupported) -> None:
        mark = (item.origin.location, item.key)
        if mark in self._unsupported_seen:
            return
        self._unsupported_seen.add(mark)
        self._log.warning(
            "config unsupported",
            file=item.origin.location,
            object=str(item.key),
            api_version=item.api_version,
            reason=f"{item.key.kind} is not served by meshd yet; it has no effect",
        )

    def _install(self, location: str, state: LocationState | None) -> None:
        before = self._snapshot.objects
        if state is None:
            self._locations.pop(location, None)
        else:
            self._locations[location] = state
        self._recompute_owners(location)
        objects: dict[ConfigKey, ConfigObject] = {}
        for key, loc in self._owner.items():
            objects[key] = self._locations[loc].objects[key]
        changed = frozenset(
            k for k in set(before) | set(objects) if before.get(k) is not objects.get(k) and (
                before.get(k) is None or objects.get(k) is None or before[k].generation != objects[k].generation or before[k].origin != objects[k].origin)
        )
        if not changed:
            return
        self._snapshot = ConfigSnapshot(objects, _version(objects))
        for listener in self._listeners:
            listener(self._snapshot, changed)

    def _recompute_owners(self, changed_location: str) -> None:
        # Drop ownership that no longer holds, then let remaining claimants take over.
        for key, loc in list(self._owner.items()):
            st = self._locations.get(loc)
            if st is None or key not in st.objects:
                del self._owner[key]
        for loc in sorted(self._locations):
            st = self._locations[loc]
            for key, obj in st.objects.items():
                owner = self._owner.get(key)
                if owner is None:
                    self._owner[key] = loc
                elif owner != loc and loc == changed_location:
                    # Only report the conflict when the newcomer's location changes.
                    if not any(r.key == key and "conflict" in r.reason for r in st.rejections):
                        self._reject(st, Rejection(obj.origin, key, "metadata.name", f"conflict: {key} is already defined in {owner}; this definition is ignored"))


def _version(objects: dict[ConfigKey, ConfigObject]) -> str:
    h = hashlib.sha256()
    for key in sorted(objects):
        h.update(f"{key.kind}/{key.namespace}/{key.name}={objects[key].generation}\n".encode())
    return h.hexdigest()[:16]
