"""The last good version of each config object, kept in meshd's state directory, so that
"nothing lost" holds across restarts too (docs/state.md).

While meshd runs, the store keeps the last good version of an object whose file turned
invalid (config/store.py). This module keeps the same objects on disk: per config file,
one JSON document with every object the store holds in force from that file
(`$MESHD_HOME/lastgood/<config directory>/<file>.json`, each name a hash of the absolute
path; 0600, written atomically: a temporary file, fsync, rename). When meshd starts and a file is invalid (a document
rejected, or the file not YAML at all), the store asks here for the objects it cannot
take from the file (`restore`). They are served as they were, generation included, so
versions come out the same: an Envoy that kept its configuration while meshd was down
is sent nothing new. They are reported as restored (log event `config restored last
good version`, /debug/configz status, metric meshd_config_restored) until the file
defines them validly again or lets them go.

Objects are restored only if they still pass validation (a newer meshd may be
stricter). Only files are kept: in Kubernetes mode the API server holds the objects.
Writes happen off the event loop (`run`), batched; what changed in the last moments
before a crash may be missing, never half written. Saved files of paths that no longer
exist at start are deleted (`prune`), so a file created later at the same path never
inherits objects of one deleted long ago; so are the folders of config directories that
are gone.
"""
from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import hashlib
import json
import os
import shutil
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import structlog

from . import kinds
from .objects import ConfigKey, ConfigObject, Origin
from .validation import validate

FORMAT = 1
SUFFIX = ".json"
CONFIG_DIR_FILE = "config-dir"  # in each folder: the config directory it holds copies for
FLUSH_DELAY = 0.2  # seconds changes are gathered before they are written

RestoredListener = Callable[[Mapping[str, int]], None]  # kind -> objects restored now (0 when none)


def _digest(path: str, size: int) -> str:
    return hashlib.sha256(os.path.abspath(path).encode()).hexdigest()[:size]


def _file_name(location: str) -> str:
    return _digest(location, 32) + SUFFIX


def _plain(value: Any) -> Any:
    if isinstance(value, bytes):
        return {"$bytes": base64.b64encode(value).decode("ascii")}
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _unplain(value: Any) -> Any:
    if isinstance(value, dict):
        if set(value) == {"$bytes"}:
            return base64.b64decode(value["$bytes"])
        return {k: _unplain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_unplain(v) for v in value]
    return value


def encode(location: str, objects: Iterable[ConfigObject]) -> bytes:
    records = []
    for o in sorted(objects, key=lambda o: o.key):
        rec = {f.name: _plain(getattr(o, f.name)) for f in dataclasses.fields(o) if f.name != "origin"}
        rec["origin"] = dataclasses.asdict(o.origin)
        records.append(rec)
    doc = {"format": FORMAT, "location": os.path.abspath(location), "objects": records}
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


def decode(data: bytes) -> tuple[str, list[ConfigObject]]:
    doc = json.loads(data)
    if doc.get("format") != FORMAT:
        raise ValueError(f"format {doc.get('format')!r}, not {FORMAT}")
    out = []
    for rec in doc["objects"]:
        fields = {k: _unplain(v) for k, v in rec.items() if k != "origin"}
        out.append(ConfigObject(origin=Origin(**rec["origin"]), **fields))
    return doc["location"], out


def still_valid(obj: ConfigObject) -> bool:
    """Whether the saved object passes today's validation. A Secret's key material is not
    in its spec (it was checked when accepted): its envelope is all there is to check."""
    kind = kinds.SERVED.get((obj.group, obj.kind))
    if kind is None:
        return False
    if kind is kinds.SECRET:
        return True
    md = {"name": obj.name, "labels": dict(obj.labels), "annotations": dict(obj.annotations)}
    if kind.namespaced:
        md["namespace"] = obj.namespace
    doc: dict[str, Any] = {"apiVersion": obj.api_version, "kind": obj.kind, "metadata": md}
    if kind.istio:
        doc["spec"] = obj.spec
    else:
        doc.update(obj.spec)
    try:
        return not validate(doc, kind)
    except Exception:  # a validator that cannot read it: not valid
        return False


def _write_atomically(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


class LastGood:
    """The state directory's copy of the store's objects, by file. Called by the store on
    the event loop; `run` writes in a thread."""

    def __init__(self, base: Path, config_dir: Path, on_restored: RestoredListener | None = None, logger: Any = None):
        # One folder per config directory: meshd processes serving different directories
        # with one $MESHD_HOME never prune each other's copies.
        self.dir = Path(base) / _digest(str(config_dir), 16)
        self._root = os.path.join(os.path.abspath(config_dir), "")
        self._log = logger or structlog.get_logger("meshd.config")
        self._on_restored = on_restored
        self._lock = threading.Lock()
        self._pending: dict[str, tuple[ConfigObject, ...]] = {}  # location -> to save (empty: delete)
        self._seen: set[str] = set()  # locations held since start (prune keeps their files)
        self._restored: dict[ConfigKey, tuple[str, float]] = {}  # key -> (location, saved at)
        self._dirty = threading.Event()
        self._wake: asyncio.Event | None = None
        self._reported: Counter[str] = Counter()

    # --- the store's hooks ----------------------------------------------------------
    def restore(self, location: str, keys: Iterable[ConfigKey] | None) -> dict[ConfigKey, ConfigObject]:
        """For a location the store sees for the first time since start: the saved last
        good versions of `keys` (None: every object the location held) that still pass
        validation."""
        wanted = None if keys is None else set(keys)
        if (wanted is not None and not wanted) or not self._covers(location):
            return {}
        path = self.dir / _file_name(location)
        try:
            data = path.read_bytes()
            saved_at = path.stat().st_mtime
            stored_location, objects = decode(data)
        except FileNotFoundError:
            return {}
        except (OSError, ValueError, KeyError, TypeError) as e:
            self._log.warning("last good copy unreadable", file=location, copy=str(path), error=str(e))
            return {}
        if stored_location != os.path.abspath(location):
            return {}
        out = {}
        for obj in objects:
            if wanted is not None and obj.key not in wanted:
                continue
            if not still_valid(obj):
                self._log.warning("last good version not restored: it is not valid any more", object=str(obj.key),
                                  file=location)
                continue
            out[obj.key] = obj
            self._restored[obj.key] = (location, saved_at)
            self._log.warning("config restored last good version", object=str(obj.key), file=location,
                              saved_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(saved_at)),
                              reason="the file is invalid; this version was in force before meshd restarted")
        if out:
            self._report()
        return out

    def held(self, location: str, objects: Mapping[ConfigKey, ConfigObject], defined: Iterable[ConfigKey]) -> None:
        """The store now holds `objects` in force from `location`; `defined` are the keys
        the location itself defines validly now (no longer restored)."""
        if not self._covers(location):
            return  # an API object: the API server keeps it
        self._seen.add(location)
        for key in defined:
            self._unrestore(key, location)
        for key in [k for k, (loc, _) in self._restored.items() if loc == location and k not in objects]:
            self._unrestore(key, location)
        self._save(location, tuple(objects.values()))

    def removed(self, location: str) -> None:
        if not self._covers(location):
            return
        for key in [k for k, (loc, _) in self._restored.items() if loc == location]:
            self._unrestore(key, location)
        self._save(location, ())

    def restored(self) -> dict[ConfigKey, float]:
        """Objects in force from a saved copy: key -> when the copy was written (epoch)."""
        return {k: at for k, (_, at) in self._restored.items()}

    # --- writing --------------------------------------------------------------------
    def prune(self) -> int:
        """After the initial load: delete saved copies of files not held since start, and
        the folders of config directories that no longer exist (a temporary one, say)."""
        keep = {_file_name(loc) for loc in self._seen}
        with self._lock:
            keep |= {_file_name(loc) for loc in self._pending}
        removed = 0
        for p in self.dir.glob("*" + SUFFIX) if self.dir.is_dir() else ():
            if p.name not in keep:
                with contextlib.suppress(OSError):
                    p.unlink()
                    removed += 1
        for d in self.dir.parent.iterdir() if self.dir.parent.is_dir() else ():
            try:
                gone = d != self.dir and not Path((d / CONFIG_DIR_FILE).read_text()).is_dir()
            except OSError:
                continue  # not a folder of ours
            if gone:
                shutil.rmtree(d, ignore_errors=True)
                removed += 1
        return removed

    def flush(self) -> None:
        """Write what changed (blocking; any thread). Failures are logged, never raised:
        the copy is a safety net, serving goes on without it."""
        with self._lock:
            pending, self._pending = self._pending, {}
            self._dirty.clear()
        if not pending:
            return
        try:
            self.dir.parent.parent.mkdir(parents=True, exist_ok=True)  # $MESHD_HOME
            for d in (self.dir.parent, self.dir):  # ours: private (copies may hold Secrets)
                d.mkdir(mode=0o700, exist_ok=True)
        except OSError as e:
            self._log.warning("last good copies not written", dir=str(self.dir), error=str(e))
            return
        marker = self.dir / CONFIG_DIR_FILE
        if not marker.exists():
            with contextlib.suppress(OSError):
                _write_atomically(marker, self._root.encode())
        for location, objects in pending.items():
            path = self.dir / _file_name(location)
            try:
                if not objects:
                    path.unlink(missing_ok=True)
                    continue
                data = encode(location, objects)
                with contextlib.suppress(OSError):
                    if path.read_bytes() == data:
                        continue  # unchanged (a restart reads the same files): no write
                _write_atomically(path, data)
            except (OSError, TypeError, ValueError) as e:
                self._log.warning("last good copy not written", file=location, copy=str(path), error=str(e))

    async def run(self, stop: asyncio.Event) -> None:
        """Write changes in a thread, FLUSH_DELAY after they come, until `stop`; then once more."""
        self._wake = asyncio.Event()
        if self._dirty.is_set():
            self._wake.set()
        try:
            while not stop.is_set():
                waits = [asyncio.ensure_future(stop.wait()), asyncio.ensure_future(self._wake.wait())]
                try:
                    await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    for w in waits:
                        w.cancel()
                self._wake.clear()
                if not stop.is_set():
                    await asyncio.sleep(FLUSH_DELAY)
                await asyncio.to_thread(self.flush)
        finally:
            self.flush()

    # --- internals ------------------------------------------------------------------
    def _covers(self, location: str) -> bool:
        return os.path.abspath(location).startswith(self._root)

    def _save(self, location: str, objects: tuple[ConfigObject, ...]) -> None:
        with self._lock:
            self._pending[location] = objects
            self._dirty.set()
        if self._wake is not None:
            self._wake.set()

    def _unrestore(self, key: ConfigKey, location: str) -> None:
        entry = self._restored.get(key)
        if entry is not None and entry[0] == location:
            del self._restored[key]
            self._log.info("config restored version replaced", object=str(key), file=location)
            self._report()

    def _report(self) -> None:
        counts = Counter(k.kind for k in self._restored)
        for kind in self._reported:
            counts.setdefault(kind, 0)  # a gauge falls back to 0, it does not vanish
        self._reported = Counter({k: 1 for k in counts})
        if self._on_restored is not None:
            self._on_restored(dict(counts))
