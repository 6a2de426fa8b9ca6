"""File source durability with the real polling loop running: every snapshot the store
ever publishes holds a file's objects all from one complete version of it.

- a file written in pieces (each piece ending on a document boundary, so a half-written
  file would even parse) is never read half-written;
- files replaced by rename over and over are always read whole;
- a file deleted and written again is never read half-written;
- a file that becomes invalid keeps its last good objects, over many scans, until fixed.
"""
from __future__ import annotations

import asyncio
import os
import threading
import time
from pathlib import Path

from controlplane.config.store import ConfigStore
from controlplane.sources.directory import DirectorySource

INTERVAL = 0.05
N = 30


def doc(i: int, version: str) -> str:
    return f"""---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: vs-{i}, namespace: ns}}
spec:
  hosts: [h{i}.example.com]
  gateways: [gw]
  http:
  - route:
    - destination: {{host: svc-{version}, port: {{number: 80}}}}
"""


def text(version: str) -> str:
    return "".join(doc(i, version) for i in range(N))


class Recorder:
    """Runs DirectorySource.run on its own loop; records every published snapshot as
    {object name: destination host}."""

    def __init__(self, root: Path):
        self.store = ConfigStore()
        self.seen: list[dict[str, str]] = []
        self.store.subscribe(lambda snap, _keys: self.seen.append(
            {o.key.name: o.spec["http"][0]["route"][0]["destination"]["host"]
             for o in snap if o.kind == "VirtualService"}))
        self.source = DirectorySource(root, self.store, interval=INTERVAL)
        self.source.load()
        self._loop = asyncio.new_event_loop()
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        asyncio.set_event_loop(self._loop)
        self._stop = asyncio.Event()
        self._loop.run_until_complete(self.source.run(self._stop))

    def __enter__(self):
        self._thread.start()
        while self._stop is None:
            time.sleep(0.01)
        return self

    def __exit__(self, *exc):
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(5)

    def current(self) -> dict[str, str]:
        return {o.key.name: o.spec["http"][0]["route"][0]["destination"]["host"]
                for o in self.store.snapshot() if o.kind == "VirtualService"}

    def wait(self, predicate, timeout=5.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate(self.current()):
                return
            time.sleep(0.01)
        raise AssertionError(f"timed out; store holds {self.current()}")


def whole(view: dict[str, str]) -> bool:
    """Either nothing, or all N objects from one version."""
    return not view or (len(view) == N and len(set(view.values())) == 1)


def write_in_pieces(path: Path, data: str, pause: float) -> None:
    pieces = data.split("---\n")
    with open(path, "w") as f:
        for i, piece in enumerate(pieces):
            if i:
                f.write("---\n")
            f.write(piece)
            f.flush()
            os.fsync(f.fileno())
            time.sleep(pause)


def test_partial_write_is_never_read(tmp_path: Path):
    with Recorder(tmp_path) as r:
        for version in ("a", "b", "c"):
            # pauses shorter than the scan interval: the file's size keeps changing
            write_in_pieces(tmp_path / "vs.yaml", text(version), pause=INTERVAL / 6)
            r.wait(lambda v, version=version: set(v.values()) == {f"svc-{version}"} and len(v) == N)
    assert r.seen and all(whole(v) for v in r.seen), [len(v) for v in r.seen]


def test_replace_by_rename_is_always_read_whole(tmp_path: Path):
    path = tmp_path / "vs.yaml"
    path.write_text(text("v0"))
    with Recorder(tmp_path) as r:
        for i in range(1, 25):
            tmp = tmp_path / ".vs.yaml.tmp"  # dot files are not read
            tmp.write_text(text(f"v{i}"))
            os.replace(tmp, path)
            time.sleep(INTERVAL * 4 if i % 4 == 0 else INTERVAL / 5)  # bursts, and pauses that let versions in
        r.wait(lambda v: set(v.values()) == {"svc-v24"})
    assert len(r.seen) >= 3
    assert all(len(v) == N and len(set(v.values())) == 1 for v in r.seen), r.seen[:3]


def test_delete_and_recreate_is_never_read_half_written(tmp_path: Path):
    path = tmp_path / "vs.yaml"
    path.write_text(text("old"))
    with Recorder(tmp_path) as r:
        r.wait(lambda v: len(v) == N)
        for version in ("new1", "new2"):
            path.unlink()
            time.sleep(INTERVAL * 3)  # long enough for the deletion to be seen
            r.wait(lambda v: not v)
            write_in_pieces(path, text(version), pause=INTERVAL / 6)
            r.wait(lambda v, version=version: set(v.values()) == {f"svc-{version}"} and len(v) == N)
    assert all(whole(v) for v in r.seen), [len(v) for v in r.seen]


def test_invalid_file_keeps_last_good_version_until_fixed(tmp_path: Path):
    path = tmp_path / "vs.yaml"
    path.write_text(text("good"))
    with Recorder(tmp_path) as r:
        r.wait(lambda v: len(v) == N)
        for broken in (text("bad").replace("number: 80", "number: eighty"),  # one invalid object...
                       "{{{ not yaml",  # ...a file that stops parsing...
                       b"\x00\xff binary"):  # ...binary junk
            if isinstance(broken, bytes):
                path.write_bytes(broken)
            else:
                path.write_text(broken)
            time.sleep(INTERVAL * 8)  # many scans
            view = r.current()
            # every object of the file stays at its last good version
            assert view == {f"vs-{i}": "svc-good" for i in range(N)}, (broken[:40], view)
        path.write_text(text("fixed"))
        r.wait(lambda v: set(v.values()) == {"svc-fixed"} and len(v) == N)
