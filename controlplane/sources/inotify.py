"""Linux inotify for the directory source: a wake-up, not the source of truth.

The directory source still scans (the scan decides what changed); inotify only says
*when* to scan, and which files a writer has finished (closed after writing, or renamed
into place), so those are read at once instead of after a second scan proves them
stable. When every event since the last look was such a completed write of a file
(`quick`), the source reads just those files and leaves the scan of the whole tree to
its idle interval. Without it (not Linux, no watches left, a network file system that
reports nothing) the source polls as before.

ctypes rather than a dependency: four libc calls, and the asyncio loop reads the fd.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import struct
from collections.abc import Callable

IN_MODIFY = 0x2
IN_ATTRIB = 0x4
IN_CLOSE_WRITE = 0x8
IN_MOVED_FROM = 0x40
IN_MOVED_TO = 0x80
IN_CREATE = 0x100
IN_DELETE = 0x200
IN_DELETE_SELF = 0x400
IN_MOVE_SELF = 0x800
IN_Q_OVERFLOW = 0x4000
IN_ONLYDIR = 0x01000000
IN_ISDIR = 0x40000000
IN_NONBLOCK = 0o4000
IN_CLOEXEC = 0o2000000

WATCH_MASK = (IN_MODIFY | IN_ATTRIB | IN_CLOSE_WRITE | IN_MOVED_FROM | IN_MOVED_TO | IN_CREATE | IN_DELETE
              | IN_DELETE_SELF | IN_MOVE_SELF | IN_ONLYDIR)
_HEADER = struct.Struct("iIII")  # wd, mask, cookie, len (then len bytes of name)


class Watcher:
    """Watches directories; `on_event()` is called (on the event loop) after every batch
    of events. `finished` holds the paths whose last event was a completed write."""

    def __init__(self, fd: int, libc, on_event: Callable[[], None]):
        self._fd, self._libc, self._on_event = fd, libc, on_event
        self._dirs: dict[int, str] = {}  # wd -> directory path
        self._watched: set[str] = set()
        self.finished: set[str] = set()
        self.overflowed = False
        # Since the last `look`: the paths with events, and whether any event was one only
        # a scan can settle (a deletion, a rename away, a directory, a lost event).
        self._touched: set[str] = set()
        self._unsure = False

    @classmethod
    def open(cls, on_event: Callable[[], None]) -> Watcher | None:
        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
            fd = libc.inotify_init1(IN_NONBLOCK | IN_CLOEXEC)
        except (OSError, AttributeError):
            return None
        return cls(fd, libc, on_event) if fd >= 0 else None

    @property
    def fd(self) -> int:
        return self._fd

    def watch(self, directories) -> None:
        """Make sure every directory in `directories` is watched (new ones from a scan)."""
        for d in directories:
            if d in self._watched:
                continue
            wd = self._libc.inotify_add_watch(self._fd, os.fsencode(d), WATCH_MASK)
            if wd >= 0:  # out of watches, or gone already: the polling covers it
                self._dirs[wd] = d
                self._watched.add(d)

    def read(self) -> None:
        """Drain the fd (called when it is readable)."""
        try:
            while True:
                data = os.read(self._fd, 65536)
                if not data:
                    break
                self._parse(data)
        except BlockingIOError:
            pass
        self._on_event()

    def _parse(self, data: bytes) -> None:
        pos = 0
        while pos + _HEADER.size <= len(data):
            wd, mask, _cookie, size = _HEADER.unpack_from(data, pos)
            name = data[pos + _HEADER.size:pos + _HEADER.size + size].rstrip(b"\0")
            pos += _HEADER.size + size
            if mask & IN_Q_OVERFLOW:
                self.overflowed = True  # events lost: nothing counts as finished
                self.finished.clear()
                self._unsure = True
                continue
            d = self._dirs.get(wd)
            if d is None:
                self._unsure = True
                continue
            if mask & (IN_DELETE_SELF | IN_MOVE_SELF):
                self._dirs.pop(wd, None)
                self._watched.discard(d)
                self._unsure = True
                continue
            if not name:
                self._unsure |= not mask & IN_ATTRIB  # a directory's own metadata: nothing to read
                continue
            path = os.path.join(d, os.fsdecode(name))
            if name.startswith(b"."):
                # Not config (the scan skips dot-names): an editor's or write_atomic's
                # temporary file. Only a rename into a dot-name (a ConfigMap volume's
                # `..data` swap: the files behind the symlinks changed) or a directory
                # needs the scan.
                self._unsure |= bool(mask & (IN_MOVED_TO | IN_ISDIR))
                continue
            self._touched.add(path)
            if mask & (IN_ISDIR | IN_DELETE | IN_MOVED_FROM):
                self._unsure = True
            if mask & (IN_CLOSE_WRITE | IN_MOVED_TO):
                self.finished.add(path)
            elif mask & (IN_MODIFY | IN_CREATE | IN_DELETE | IN_MOVED_FROM):
                self.finished.discard(path)  # being written again, or gone

    def look(self) -> frozenset[str] | None:
        """The files to read when every event since the last look was a completed write
        of a file (none else changed); None when only a scan can tell what changed. Either
        way the events so far count as looked at."""
        quick = None if self._unsure or not self._touched <= self.finished else frozenset(self._touched)
        self._touched, self._unsure = set(), False
        return quick

    def take_finished(self) -> set[str]:
        got, self.finished = self.finished, set()
        return got

    def close(self) -> None:
        try:
            os.close(self._fd)
        except OSError:
            pass
