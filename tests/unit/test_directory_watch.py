"""The directory source notices added, changed and deleted files within a second."""
from __future__ import annotations

import asyncio
import time

from controlplane.config.store import ConfigStore
from controlplane.sources.directory import DirectorySource

SVC = """
apiVersion: v1
kind: Service
metadata: {{name: {name}, namespace: shop}}
spec:
  ports: [{{port: {port}}}]
"""


def test_changes_are_picked_up_within_a_second(tmp_path):
    async def scenario():
        store = ConfigStore()
        src = DirectorySource(tmp_path, store, interval=0.2)
        src.load()
        stop = asyncio.Event()
        task = asyncio.create_task(src.run(stop))

        async def until(pred, what):
            t0 = time.monotonic()
            while time.monotonic() - t0 < 1.0:
                if pred(store.snapshot()):
                    return time.monotonic() - t0
                await asyncio.sleep(0.02)
            raise AssertionError(f"{what} not seen within 1s")

        try:
            sub = tmp_path / "nested" / "dir"
            sub.mkdir(parents=True)
            (sub / "svc.yaml").write_text(SVC.format(name="cart", port=80))
            await until(lambda s: s.get("Service", "shop", "cart"), "added file")
            (sub / "svc.yaml").write_text(SVC.format(name="cart", port=8080))
            await until(lambda s: s.get("Service", "shop", "cart").spec["spec"]["ports"][0]["port"] == 8080, "changed file")
            (sub / "svc.yaml").unlink()
            await until(lambda s: s.get("Service", "shop", "cart") is None, "deleted file")
            (tmp_path / "ignored.txt").write_text(SVC.format(name="nope", port=1))
            await asyncio.sleep(0.5)
            assert store.snapshot().get("Service", "shop", "nope") is None
        finally:
            stop.set()
            await task

    asyncio.run(scenario())
