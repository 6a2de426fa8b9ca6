"""The directory source: every *.yaml / *.yml file below a directory, kept in sync.

Polling (not inotify) keeps it portable and works on bind mounts and ConfigMap volumes
(whose symlink swaps inotify misses). A file is read once its size and mtime are the
same on two scans in a row, so an editor's half-written file is not parsed; with the
default interval a change is in the store well within a second.
"""
from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass
from pathlib import Path

import structlog

from ..config.objects import Origin
from ..config.parse import Parsed, parse_document
from ..config.store import ConfigStore
from .yamlfile import YamlError, load_documents

SUFFIXES = (".yaml", ".yml")
# At most this many scans (1 s at the default interval) hold settled files back while
# others are still being written, so a burst of edits is applied together.
MAX_HELD_SCANS = 5


@dataclass(frozen=True)
class FileStat:
    mtime_ns: int
    size: int
    inode: int


@dataclass
class FileResult:
    location: str
    parsed: list[Parsed] | None  # None when the file could not be read as YAML
    error: str = ""


def read_file(path: str) -> FileResult:
    """Read and parse one file (blocking: run it off the event loop)."""
    try:
        with open(path, "rb") as f:
            data = f.read()
        docs = load_documents(data)
    except (OSError, YamlError) as e:
        return FileResult(path, None, str(e) if isinstance(e, YamlError) else f"cannot read file: {e.strerror or e}")
    parsed = [parse_document(doc, Origin("file", path, i)) for i, doc in enumerate(docs)]
    return FileResult(path, parsed)


class DirectorySource:
    def __init__(self, root: str | os.PathLike, store: ConfigStore, interval: float = 0.2, logger=None):
        self.root = Path(root)
        self.store = store
        self.interval = interval
        self._log = logger or structlog.get_logger("meshd.source.directory")
        self._applied: dict[str, FileStat] = {}  # what the store holds, by file
        self._pending: dict[str, FileStat] = {}  # seen changed once, waiting to settle
        self._held = 0  # scans that held settled files back while others were still changing

    def scan(self) -> dict[str, FileStat]:
        found: dict[str, FileStat] = {}
        for dirpath, dirnames, filenames in os.walk(self.root, followlinks=True):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))  # skip .git, ..data tmp dirs
            for fn in sorted(filenames):
                if fn.startswith(".") or not fn.endswith(SUFFIXES):
                    continue
                p = os.path.join(dirpath, fn)
                try:
                    st = os.stat(p)
                except OSError:
                    continue
                found[p] = FileStat(st.st_mtime_ns, st.st_size, st.st_ino)
        return found

    def _changes(self, settle: bool) -> tuple[list[FileResult], list[str]]:
        """Files to (re)read and files gone. Blocking; called in a worker thread."""
        current = self.scan()
        removed = [p for p in self._applied if p not in current]
        settled, settling = [], False
        for path, st in current.items():
            if self._applied.get(path) == st:
                self._pending.pop(path, None)
                continue
            if settle and self._pending.get(path) != st:
                self._pending[path] = st  # changed since last look: wait one more scan
                settling = True
                continue
            settled.append((path, st))
        if settle and settling and (settled or removed) and self._held < MAX_HELD_SCANS:
            # A burst of edits (kubectl apply -f dir/, a git checkout) is still being
            # written: hold what settled so the burst lands in the store as one change,
            # one push, rather than one per scan. Bounded, so churn cannot starve it.
            self._held += 1
            return [], []
        self._held = 0
        results = []
        for path, st in settled:
            self._pending.pop(path, None)
            results.append(read_file(path))
            self._applied[path] = st
        for p in removed:
            self._applied.pop(p, None)
            self._pending.pop(p, None)
        return results, removed

    def _apply(self, results: list[FileResult], removed: list[str]) -> None:
        for path in removed:
            self._log.info("config file removed", file=path)
            self.store.remove_location(path)
        for r in results:
            if r.parsed is None:
                self.store.location_unreadable(r.location, r.error)
            else:
                self.store.replace_location(r.location, [p for p in r.parsed if p is not None])

    def load(self) -> int:
        """Initial synchronous load of everything; returns the number of files read."""
        if not self.root.is_dir():
            raise FileNotFoundError(f"config directory {self.root} does not exist")
        results, removed = self._changes(settle=False)
        self._apply(results, removed)
        self._log.info("config directory loaded", dir=str(self.root), files=len(results))
        return len(results)

    async def run(self, stop: asyncio.Event) -> None:
        """Poll until `stop` is set. Reading happens in a thread; the store is only
        touched from the event loop."""
        while not stop.is_set():
            try:
                results, removed = await asyncio.to_thread(self._changes, True)
                self._apply(results, removed)
            except Exception as e:  # a source must never take the server down
                self._log.exception("config directory scan failed", dir=str(self.root), error=str(e))
            try:
                await asyncio.wait_for(stop.wait(), self.interval)
            except asyncio.TimeoutError:
                pass
