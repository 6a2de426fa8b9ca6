"""The config store: every accepted object, keyed by (kind, namespace, name), with the
source location it came from.

Sources hand the store whole locations (a file's documents, or a Kubernetes object);
the store decides what is in force:
- an object rejected now keeps its last good version in force (nothing is lost);
- a location that cannot be read at all keeps everything it held before;
- with `last_good` (config/lastgood.py) set, both survive a restart: at start, what an
  invalid file cannot give is restored from the state directory's copy;
- two locations defining the same object: the one that defined it first keeps it and
  the other is rejected as a conflict, until the first lets go.
Every decision that drops input is logged once, as one event. Objects of kinds meshd
does not serve (parse.Unsupported) are kept by location too, beside the rejections, so a
running server can show them (/debug/configz) and count them (`on_unsupported`) until
their file or API object goes away.
"""
from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

import structlog

from .lastgood import LastGood
from .objects import ConfigKey, ConfigObject, Origin, Rejection
from .parse import Unsupported
from .snapshot import ConfigSnapshot

ChangeListener = Callable[[ConfigSnapshot, frozenset[ConfigKey]], None]
# (group, kind) -> objects held of that unsupported kind; called whenever a count changes.
UnsupportedListener = Callable[[Mapping[tuple[str, str], int]], None]


@dataclass
class LocationState:
    objects: dict[ConfigKey, ConfigObject] = field(default_factory=dict)
    rejections: list[Rejection] = field(default_factory=list)
    unsupported: list[Unsupported] = field(default_factory=list)
    unreadable: str = ""  # why the whole location failed, if it did


class ConfigStore:
    def __init__(self, logger=None, on_reject: Callable[[Rejection], None] | None = None,
                 on_unsupported: UnsupportedListener | None = None):
        self._log = logger or structlog.get_logger("meshd.config")
        self._locations: dict[str, LocationState] = {}
        self._owner: dict[ConfigKey, str] = {}  # which location an object in force comes from
        self._claims: dict[ConfigKey, set[str]] = {}  # every location defining the key
        self._version_sum = 0
        self._listeners: list[ChangeListener] = []
        self._on_reject = on_reject
        self._on_unsupported = on_unsupported
        self._unsupported_counts: Counter[tuple[str, str]] = Counter()
        self._snapshot = ConfigSnapshot({}, _version({}))
        self.last_good: LastGood | None = None  # the copy on disk (app.py sets it for a config directory)

    # --- reading ------------------------------------------------------------------
    def snapshot(self) -> ConfigSnapshot:
        return self._snapshot

    def rejections(self) -> list[Rejection]:
        out: list[Rejection] = []
        for loc in sorted(self._locations):
            out.extend(self._locations[loc].rejections)
        return out

    def unsupported(self) -> list[Unsupported]:
        """Objects of kinds meshd does not serve, held now (sorted by location)."""
        out: list[Unsupported] = []
        for loc in sorted(self._locations):
            out.extend(self._locations[loc].unsupported)
        return out

    def unsupported_counts(self) -> dict[tuple[str, str], int]:
        """(group, kind) -> how many unsupported objects of that kind are held."""
        return {k: n for k, n in self._unsupported_counts.items() if n}

    def subscribe(self, listener: ChangeListener) -> None:
        self._listeners.append(listener)

    def restored(self) -> dict[ConfigKey, float]:
        """Objects in force from the state directory's last good copy because their file is
        invalid since start: key -> when the copy was written (epoch seconds)."""
        return self.last_good.restored() if self.last_good is not None else {}

    # --- writing ------------------------------------------------------------------
    def replace_location(
        self,
        location: str,
        parsed: Iterable[ConfigObject | Rejection | Unsupported],
    ) -> None:
        """Replace everything `location` holds with its newly parsed documents."""
        self.replace_locations({location: parsed})

    def replace_locations(self, batch: Mapping[str, Iterable[ConfigObject | Rejection | Unsupported]]) -> None:
        """replace_location for each location of `batch`, with one new snapshot and one
        notification for them all: a relist's objects, each a location of its own, cost
        one copy of the store's index, not one per object."""
        states = {location: self._parsed_state(location, parsed) for location, parsed in batch.items()}
        self._install_many({location: new for location, (new, _) in states.items()})
        if self.last_good is not None:
            for location, (new, defined) in states.items():
                self.last_good.held(location, new.objects, defined)

    def _parsed_state(self, location: str, parsed: Iterable[ConfigObject | Rejection | Unsupported],
                      ) -> tuple[LocationState, set[ConfigKey]]:
        """The location's new state, and the keys its documents define (the rest of its
        objects are last good versions kept in force)."""
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
                if all(u.key != item.key for u in new.unsupported):
                    new.unsupported.append(item)
        self._report_unsupported(old, new)
        defined = set(new.objects)
        # The last good version of a rejected object stays in force.
        for key in rejected_keys:
            if key not in new.objects and key in old.objects:
                new.objects[key] = old.objects[key]
                self._log.info("config kept last good version", object=str(key), file=location)
        if self.last_good is not None and location not in self._locations:  # first seen since start
            new.objects.update(self.last_good.restore(location, rejected_keys - new.objects.keys()))
        return new, defined

    def location_unreadable(self, location: str, reason: str, origin: Origin | None = None) -> None:
        """The whole location failed (not YAML, unreadable...): keep what it held."""
        old = self._locations.get(location, LocationState())
        new = LocationState(objects=dict(old.objects), unsupported=list(old.unsupported))
        new.unreadable = reason
        self._reject(new, Rejection(origin or Origin("file", location), None, "", reason))
        if old.objects:
            self._log.info("config kept last good version", file=location, objects=len(old.objects))
        elif self.last_good is not None and location not in self._locations:  # first seen since start
            new.objects.update(self.last_good.restore(location, None))
        self._install(location, new)
        if self.last_good is not None:
            self.last_good.held(location, new.objects, ())

    def remove_location(self, location: str) -> None:
        if location in self._locations:
            self._install(location, None)
        if self.last_good is not None:
            self.last_good.removed(location)

    # --- internals ----------------------------------------------------------------
    def _reject(self, state: LocationState, rej: Rejection) -> None:
        state.rejections.append(rej)
        self._log.warning(
            "config rejected",
            file=rej.origin.location,
            line=rej.origin.line or None,  # where the document starts (the message says file:line)
            object=str(rej.key) if rej.key else None,
            field=rej.field or None,
            reason=rej.reason,
            message=rej.message(),
        )
        if self._on_reject:
            self._on_reject(rej)

    def _report_unsupported(self, old: LocationState, new: LocationState) -> None:
        """Log each unsupported object once while its location holds it (again only after
        it went away and came back, or changed apiVersion)."""
        before = {(u.key, u.api_version) for u in old.unsupported}
        for u in new.unsupported:
            if (u.key, u.api_version) in before:
                continue
            log = self._log.error if u.security else self._log.warning
            log("config unsupported", file=u.origin.location, document=u.origin.index, object=str(u.key),
                api_version=u.api_version, reason=u.reason, message=u.message())

    def _count_unsupported(self, old: LocationState | None, new: LocationState | None) -> None:
        delta: Counter[tuple[str, str]] = Counter()
        for u in new.unsupported if new is not None else ():
            delta[(u.group, u.key.kind)] += 1
        for u in old.unsupported if old is not None else ():
            delta[(u.group, u.key.kind)] -= 1
        changed = {k: n for k, n in delta.items() if n}
        if not changed:
            return
        for k, n in changed.items():
            self._unsupported_counts[k] += n
        if self._on_unsupported is not None:
            # Every kind ever seen, zeros included: a gauge must fall back to 0, not vanish.
            self._on_unsupported(dict(self._unsupported_counts))

    def _install(self, location: str, state: LocationState | None) -> None:
        self._install_many({location: state})

    def _install_many(self, states: Mapping[str, LocationState | None]) -> None:
        # Incremental: only the keys the locations held before or hold now can change
        # owner or content, so a change costs O(size of the locations), not O(store).
        # (Recomputing everything made loading N files O(N^2): minutes for a large mesh.)
        before = self._snapshot.objects
        affected: set[ConfigKey] = set()
        for location, state in states.items():
            old = self._locations.get(location)
            self._count_unsupported(old, state)
            keys = set(old.objects) if old is not None else set()
            if state is None:
                self._locations.pop(location, None)
            else:
                self._locations[location] = state
                keys |= set(state.objects)
            self._recompute_owners(location, keys)
            affected |= keys
        objects = dict(before)
        changed = set()
        replaced: dict[ConfigKey, ConfigObject | None] = {}  # keys whose object is not the one before
        for k in affected:
            loc = self._owner.get(k)
            new_obj = self._locations[loc].objects[k] if loc is not None else None
            old_obj = before.get(k)
            if new_obj is None:
                objects.pop(k, None)
            else:
                objects[k] = new_obj
            if old_obj is not new_obj:
                replaced[k] = new_obj
            if old_obj is not new_obj and (
                old_obj is None or new_obj is None or old_obj.generation != new_obj.generation
                or old_obj.origin != new_obj.origin
            ):
                changed.add(k)
                self._version_sum = (self._version_sum - _object_hash(k, old_obj) + _object_hash(k, new_obj)) % _MOD
        if not changed:
            return
        self._snapshot = ConfigSnapshot(objects, _version_text(self._version_sum),
                                        _by_kind=_carried_over(self._snapshot._by_kind, replaced))
        for listener in self._listeners:
            listener(self._snapshot, frozenset(changed))

    def _recompute_owners(self, changed_location: str, keys: set[ConfigKey]) -> None:
        """Owners of `keys` after `changed_location` changed: ownership that no longer
        holds is dropped; an unowned key goes to the first location (sorted) defining it."""
        for key in keys:
            loc = self._owner.get(key)
            claimants = self._claims.setdefault(key, set())
            st = self._locations.get(changed_location)
            if st is not None and key in st.objects:
                claimants.add(changed_location)
            else:
                claimants.discard(changed_location)
            if loc is not None and (loc not in self._locations or key not in self._locations[loc].objects):
                del self._owner[key]
            if key not in self._owner and claimants:
                self._owner[key] = min(claimants)
            if not claimants:
                self._claims.pop(key, None)
        st = self._locations.get(changed_location)
        if st is None:
            return
        for key, obj in st.objects.items():
            owner = self._owner.get(key)
            if owner is not None and owner != changed_location:
                # Only report the conflict when the newcomer's location changes.
                if not any(r.key == key and "conflict" in r.reason for r in st.rejections):
                    self._reject(st, Rejection(obj.origin, key, "metadata.name", f"conflict: {key} is already defined in {owner}; this definition is ignored"))


def _carried_over(by_kind: dict[str, list[ConfigObject]], replaced: dict[ConfigKey, ConfigObject | None]) -> dict:
    """The previous snapshot's of_kind lists, valid for the new one: untouched kinds as
    they are, touched ones patched (O(objects of the kind), not a scan of the store)."""
    touched: dict[str, dict[ConfigKey, ConfigObject | None]] = {}
    for k, obj in replaced.items():
        touched.setdefault(k.kind, {})[k] = obj
    out = {}
    for kind, objs in by_kind.items():
        keys = touched.get(kind)
        if keys is None:
            out[kind] = objs  # never mutated: shared between snapshots
            continue
        gone = {(k.namespace, k.name) for k in keys}
        kept = [o for o in objs if (o.namespace, o.name) not in gone]
        kept.extend(o for o in keys.values() if o is not None)
        # (namespace, name) is unique within a kind: the order is the one a fresh scan gives.
        out[kind] = sorted(kept, key=lambda o: (o.namespace, o.name))
    return out


# The store's version is a content hash of every object's (kind, namespace, name,
# generation), combined by addition modulo 2**128 so one change updates it in O(1).
_MOD = 1 << 128


def _object_hash(key: ConfigKey, obj: ConfigObject | None) -> int:
    if obj is None:
        return 0
    h = hashlib.sha256(f"{key.kind}/{key.namespace}/{key.name}={obj.generation}".encode()).digest()
    return int.from_bytes(h[:16], "big")


def _version_text(total: int) -> str:
    return hashlib.sha256(total.to_bytes(16, "big")).hexdigest()[:16]


def _version(objects: dict[ConfigKey, ConfigObject]) -> str:
    return _version_text(sum(_object_hash(k, o) for k, o in objects.items()) % _MOD)
