"""The directory source notices added, changed and deleted files within a second."""
from __future__ import annotations

import asyncio
import os
import sys
import time

import pytest

from controlplane.config.store import ConfigStore
from controlplane.sources.directory import DirectorySource

SVC = """
apiVersion: v1
kind: Service
metadata: {{name: {name}, namespace: shop}}
spec:
  ports: [{{port: {port}}}]
"""


async def until(store: ConfigStore, pred, what: str, within: float = 1.0) -> None:
    """Wait until `pred(store.snapshot())` holds, at most `within` seconds."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < within:
        if pred(store.snapshot()):
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"{what} not seen within {within}s")


@pytest.mark.parametrize("use_inotify", [True, False], ids=["inotify", "polling"])
def test_changes_are_picked_up_within_a_second(tmp_path, use_inotify):
    async def scenario():
        store = ConfigStore()
        src = DirectorySource(tmp_path, store, interval=0.2)
        src.load()
        stop = asyncio.Event()
        task = asyncio.create_task(src.run(stop, use_inotify=use_inotify))

        try:
            sub = tmp_path / "nested" / "dir"
            sub.mkdir(parents=True)
            (sub / "svc.yaml").write_text(SVC.format(name="cart", port=80))
            await until(store, lambda s: s.get("Service", "shop", "cart"), "added file")
            (sub / "svc.yaml").write_text(SVC.format(name="cart", port=8080))
            await until(store, lambda s: s.get("Service", "shop", "cart").spec["spec"]["ports"][0]["port"] == 8080, "changed file")
            (sub / "svc.yaml").unlink()
            await until(store, lambda s: s.get("Service", "shop", "cart") is None, "deleted file")
            (tmp_path / "ignored.txt").write_text(SVC.format(name="nope", port=1))
            await asyncio.sleep(0.5)
            assert store.snapshot().get("Service", "shop", "nope") is None
        finally:
            stop.set()
            await task

    asyncio.run(scenario())


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="inotify is Linux's")
def test_inotify_wakes_the_scan_and_a_file_still_open_is_not_read(tmp_path):
    """With scans 10 s apart, only inotify can make changes visible within a second: a
    closed file, a file renamed into place, and a file in a new directory are read at
    once; a file still open for writing (half written) is not, until its writer closes it."""
    async def scenario():
        store = ConfigStore()
        (tmp_path / "a").mkdir()
        src = DirectorySource(tmp_path, store, interval=10)
        src.load()
        stop = asyncio.Event()
        task = asyncio.create_task(src.run(stop))

        try:
            await asyncio.sleep(0.1)
            (tmp_path / "a" / "cart.yaml").write_text(SVC.format(name="cart", port=80))
            await until(store, lambda s: s.get("Service", "shop", "cart"), "closed file")
            tmp = tmp_path / "a" / ".pay.yaml.tmp"
            tmp.write_text(SVC.format(name="pay", port=81))
            os.rename(tmp, tmp_path / "a" / "pay.yaml")
            await until(store, lambda s: s.get("Service", "shop", "pay"), "file renamed into place")
            (tmp_path / "b" / "c").mkdir(parents=True)
            await asyncio.sleep(0.2)  # the new directories are watched after the scan they wake
            (tmp_path / "b" / "c" / "ship.yaml").write_text(SVC.format(name="ship", port=82))
            await until(store, lambda s: s.get("Service", "shop", "ship"), "file in a new directory")

            text = SVC.format(name="half", port=83)
            with open(tmp_path / "a" / "half.yaml", "w") as f:
                f.write(text[: text.index("spec:")])  # a valid prefix: metadata only
                f.flush()
                await asyncio.sleep(1.0)
                assert store.snapshot().get("Service", "shop", "half") is None, "read while still being written"
                f.write(text[text.index("spec:"):])
            await until(store, lambda s: s.get("Service", "shop", "half") is not None
                        and s.get("Service", "shop", "half").spec["spec"]["ports"][0]["port"] == 83, "closed writer")
        finally:
            stop.set()
            await task

    asyncio.run(scenario())


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="inotify is Linux's")
def test_completed_writes_are_read_without_scanning_the_tree(tmp_path):
    """When inotify names every change (files closed after writing, or renamed into
    place), only those files are read; a deletion, a new directory or a ConfigMap
    volume's `..data` swap still takes a scan of the tree, which notices them."""
    async def scenario():
        store = ConfigStore()
        (tmp_path / "a").mkdir()
        (tmp_path / "a" / "cart.yaml").write_text(SVC.format(name="cart", port=80))
        # A ConfigMap volume's layout: ship.yaml -> ..data/ship.yaml, ..data -> ..v1.
        (tmp_path / "..v1").mkdir()
        (tmp_path / "..v1" / "ship.yaml").write_text(SVC.format(name="ship", port=82))
        os.symlink("..v1", tmp_path / "..data")
        os.symlink("..data/ship.yaml", tmp_path / "ship.yaml")
        src = DirectorySource(tmp_path, store, interval=0.2)
        src.load()
        scans = []
        scan = src.scan
        src.scan = lambda: (scans.append(1), scan())[1]
        stop = asyncio.Event()
        task = asyncio.create_task(src.run(stop))

        def port(s, name):
            svc = s.get("Service", "shop", name)
            return svc.spec["spec"]["ports"][0]["port"] if svc is not None else None

        try:
            await until(store, lambda s: scans, "the first round's scan")
            await asyncio.sleep(0.1)
            before = len(scans)
            (tmp_path / "a" / "cart.yaml").write_text(SVC.format(name="cart", port=8080))
            await until(store, lambda s: port(s, "cart") == 8080, "changed file")
            tmp = tmp_path / "a" / ".pay.yaml.tmp"
            tmp.write_text(SVC.format(name="pay", port=81))
            os.rename(tmp, tmp_path / "a" / "pay.yaml")
            await until(store, lambda s: port(s, "pay") == 81, "file renamed into place")
            assert len(scans) == before, "a completed write took a scan of the tree"

            (tmp_path / "a" / "cart.yaml").unlink()
            await until(store, lambda s: port(s, "cart") is None, "deleted file")
            assert len(scans) > before

            # The ConfigMap volume: kubelet writes ..v2 and renames a new symlink over
            # ..data: no event names ship.yaml.
            assert port(store.snapshot(), "ship") == 82
            (tmp_path / "..v2").mkdir()
            (tmp_path / "..v2" / "ship.yaml").write_text(SVC.format(name="ship", port=83))
            os.symlink("..v2", tmp_path / "..data_tmp")
            os.rename(tmp_path / "..data_tmp", tmp_path / "..data")
            await until(store, lambda s: port(s, "ship") == 83, "ConfigMap update")
        finally:
            stop.set()
            await task

    asyncio.run(scenario())
