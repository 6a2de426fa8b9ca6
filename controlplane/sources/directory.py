"""The directory source: every *.yaml / *.yml file below a directory, kept in sync.

A scan (stat of every file) decides what changed, so it works on bind mounts, network
file systems and ConfigMap volumes alike. A file is read once its size and mtime are the
same on two scans in a row, so an editor's half-written file is not parsed; with the
default interval a change is in the store well within a second. On Linux, inotify
(sources/inotify.py) wakes the scan as soon as something changes and marks files whose
writer has closed them (or renamed them into place): those are read at once, and the
scan runs only every IDLE_INTERVAL while nothing happens. When the events name every
change (completed writes of files, nothing deleted, renamed away or made a directory),
only those files are read, without the scan: stat-ing 2,000 files costs 20 ms of every
change's way to the proxies, and the idle interval's scan still checks the events' word.
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
from .inotify import Watcher
from .yamlfile import YamlError, load_located

SUFFIXES = (".yaml", ".yml")
# At most this many scans (1 s at the default interval) hold settled files back while
# others are still being written, so a burst of edits is applied together.
MAX_HELD_SCANS = 5
# With inotify, the scan that catches what events cannot report (writes over NFS, a
# watch limit reached) runs this often while nothing happens.
IDLE_INTERVAL = 2.0
# Events arrive in bursts (an editor's save, kubectl apply -f dir/): gather them briefly.
# Short, as every change waits this long; what one gathering misses of a burst reaches
# the store a few milliseconds later and the push engine's debounce merges it.
EVENT_GATHER = 0.005


@dataclass(frozen=True)
class FileStat:
    mtime_ns: int
    size: int
    inode: int

    @classmethod
    def of(cls, st: os.stat_result) -> FileStat:
        return cls(st.st_mtime_ns, st.st_size, st.st_ino)


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
        docs = load_located(data)
    except (OSError, YamlError) as e:
        return FileResult(path, None, str(e) if isinstance(e, YamlError) else f"cannot read file: {e.strerror or e}")
    parsed = [parse_document(d.data, Origin("file", path, i, d.line)) for i, d in enumerate(docs)]
    return FileResult(path, parsed)


# The initial load of a large directory (2,000 files take 3 s to parse and validate in one
# process) is spread over forked processes; pickled results cost a fraction of parsing.
PARALLEL_MIN_FILES = 256


def _read_parallel(paths: list[str]) -> dict[str, FileResult]:
    """Read and parse `paths` in forked worker processes. Empty (read them here instead)
    when the directory is small, there is one CPU, or the process already has threads
    (forking those is unsafe)."""
    import threading

    workers = min(os.cpu_count() or 1, 4)
    if len(paths) < PARALLEL_MIN_FILES or workers < 2 or threading.active_count() > 1:
        return {}
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    try:
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork")) as pool:
            chunk = max(16, len(paths) // (workers * 4))
            return {r.location: r for r in pool.map(read_file, paths, chunksize=chunk)}
    except Exception:  # no fork, no semaphores (some sandboxes): read them here
        return {}


def _stat(path: str) -> FileStat | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return FileStat.of(st)


class DirectorySource:
    def __init__(self, root: str | os.PathLike, store: ConfigStore, interval: float = 0.2, logger=None):
        self.root = Path(root)
        self.store = store
        self.interval = interval
        self._log = logger or structlog.get_logger("meshd.source.directory")
        self._applied: dict[str, FileStat] = {}  # what the store holds, by file
        self._pending: dict[str, FileStat] = {}  # seen changed once, waiting to settle
        self._held = 0  # scans that held settled files back while others were still changing
        self._dirs: list[str] = []  # directories seen by the last scan (for inotify watches)
        self._consumed: set[str] = set()  # finished files the last _changes read or saw gone

    def scan(self) -> dict[str, FileStat]:
        """Every config file below the root with its stat, in os.walk's top-down order
        with sorted names (the order files are applied in). One scandir per directory and
        the stat through its entries: this runs every interval over thousands of files,
        in a thread that shares the interpreter lock with the push path."""
        found: dict[str, FileStat] = {}
        dirs: list[str] = []
        self._scan_dir(str(self.root), found, dirs)
        self._dirs = dirs
        return found

    def _scan_dir(self, path: str, found: dict[str, FileStat], seen: list[str]) -> None:
        seen.append(path)
        files, dirs = [], []
        try:
            with os.scandir(path) as it:
                for e in it:
                    name = e.name
                    if name.startswith("."):  # skip .git, ..data tmp dirs, editors' dot-files
                        continue
                    try:
                        if e.is_dir():  # follows symlinks, as os.walk(followlinks=True)
                            dirs.append((name, e.path))
                        elif name.endswith(SUFFIXES):
                            st = e.stat()
                            files.append((name, e.path, FileStat.of(st)))
                    except OSError:
                        continue
        except OSError:
            return
        for _, p, fs in sorted(files):
            found[p] = fs
        for _, p in sorted(dirs):
            self._scan_dir(p, found, seen)

    def _changes(self, settle: bool, finished: frozenset[str] = frozenset()) -> tuple[list[FileResult], list[str]]:
        """Files to (re)read and files gone. Blocking; called in a worker thread.
        `finished`: files inotify saw closed after writing (or renamed into place), which
        need no second scan to prove them complete."""
        current = self.scan()
        removed = [p for p in self._applied if p not in current]
        self._consumed = {p for p in finished if p not in current}
        settled, settling = [], False
        for path, st in current.items():
            if self._applied.get(path) == st:
                self._pending.pop(path, None)
                if path in finished:
                    self._consumed.add(path)
                continue
            if settle and path not in finished and self._pending.get(path) != st:
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
        prefetched = _read_parallel([p for p, _ in settled]) if not settle else {}
        for path, st in settled:
            result = prefetched.get(path) or read_file(path)
            if path in finished:
                self._consumed.add(path)
                if _stat(path) != st:  # written again while it was read: wait for that write
                    continue
            self._pending.pop(path, None)
            results.append(result)
            self._applied[path] = st
        for p in removed:
            self._applied.pop(p, None)
            self._pending.pop(p, None)
        return results, removed

    def _finished_files(self, paths: frozenset[str]) -> list[FileResult]:
        """The files of `paths` (written and closed, or renamed into place, says inotify,
        and nothing else changed) whose stat differs from what the store holds, read, in
        the scan's order. Blocking; called in a worker thread."""
        results = []
        self._consumed = set(paths)
        for path in sorted(paths, key=self._order):
            if not path.endswith(SUFFIXES):
                continue
            st = _stat(path)
            if st is None or self._applied.get(path) == st:
                continue  # gone again (the scan will see it) or unchanged
            result = read_file(path)
            if _stat(path) != st:  # written again while it was read: wait for that write
                continue
            self._pending.pop(path, None)
            results.append(result)
            self._applied[path] = st
        return results

    def _order(self, path: str) -> tuple[tuple[int, str], ...]:
        """The scan's order (top-down, each directory's files before its subdirectories,
        by name) as a sort key."""
        *dirs, name = Path(path).relative_to(self.root).parts
        return (*((1, d) for d in dirs), (0, name))

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

    async def run(self, stop: asyncio.Event, use_inotify: bool = True) -> None:
        """Scan until `stop` is set: every `interval`, or (with inotify) when something
        changed, every `interval` while files are settling, else every IDLE_INTERVAL.
        Reading happens in a thread; the store is only touched from the event loop."""
        loop = asyncio.get_running_loop()
        wake = asyncio.Event()
        watcher = Watcher.open(wake.set) if use_inotify else None
        if watcher is not None:
            loop.add_reader(watcher.fd, watcher.read)
        scanned = -IDLE_INTERVAL  # when the last scan ran: the first round scans
        try:
            while not stop.is_set():
                wake.clear()
                try:
                    quick = None
                    if watcher is not None:
                        watcher.watch([str(self.root), *self._dirs])
                        finished = frozenset(watcher.finished)
                        quick = watcher.look()
                        if self._pending or self._held or loop.time() - scanned >= IDLE_INTERVAL:
                            quick = None  # files are settling, or the scan is due: it decides
                    else:
                        finished = frozenset()
                    removed: list[str] = []
                    if quick is not None:
                        results = await asyncio.to_thread(self._finished_files, quick)
                    else:
                        scanned = loop.time()
                        results, removed = await asyncio.to_thread(self._changes, True, finished)
                    if watcher is not None:
                        watcher.finished -= self._consumed
                        watcher.watch(self._dirs)
                    self._apply(results, removed)
                except Exception as e:  # a source must never take the server down
                    self._log.exception("config directory scan failed", dir=str(self.root), error=str(e))
                busy = watcher is None or self._pending or self._held or watcher.overflowed
                if watcher is not None:
                    watcher.overflowed = False
                waits = [asyncio.ensure_future(stop.wait()), asyncio.ensure_future(wake.wait())]
                try:
                    await asyncio.wait(waits, timeout=self.interval if busy else
                                       max(0.0, scanned + IDLE_INTERVAL - loop.time()),
                                       return_when=asyncio.FIRST_COMPLETED)
                finally:
                    for w in waits:
                        w.cancel()
                if wake.is_set() and not stop.is_set():
                    # The scan that confirms a settling file must come a full interval
                    # after the one that saw it change (the durability rule), events or not.
                    # (A file whose writer closed it needs no confirmation.)
                    unsure = self._pending.keys() - watcher.finished if watcher is not None else self._pending
                    gap = self.interval - (loop.time() - scanned) if unsure else 0.0
                    await asyncio.sleep(max(EVENT_GATHER, gap))
        finally:
            if watcher is not None:
                loop.remove_reader(watcher.fd)
                watcher.close()
