"""`meshd serve`: wires sources -> store -> model -> generators -> server.

Data flows one way. The directory source fills the store; each store change schedules a
rebuild of the mesh snapshot after a short quiet period (debounce), and the new snapshot
is handed to the ADS server, which pushes to the proxies it affects. A failure to build
keeps the last good snapshot in force.
"""
from __future__ import annotations

import asyncio
import signal
import time
from dataclasses import dataclass
from pathlib import Path

import structlog

from .config.objects import Rejection
from .config.store import ConfigStore
from .debug.monitoring import start_monitoring
from .generators import Generator
from .model.mesh import MeshSnapshot, build_mesh
from .server.ads import AdsServer
from .server.grpc_server import start_xds_server
from .server.metrics import Metrics
from .sources.directory import DirectorySource

log = structlog.get_logger("meshd")


@dataclass
class ServeOptions:
    config_dir: Path
    xds_port: int = 15010
    monitoring_port: int = 15014
    listen_address: str = "0.0.0.0"
    poll_interval: float = 0.2
    debounce_after: float = 0.1


class MeshBuilder:
    """Turns store changes into mesh snapshots for the ADS server, debounced."""

    def __init__(self, store: ConfigStore, ads: AdsServer, debounce_after: float):
        self.store = store
        self.ads = ads
        self.debounce_after = debounce_after
        self.mesh: MeshSnapshot | None = None
        self._dirty = asyncio.Event()
        self._changed: set = set()
        store.subscribe(self._on_change)

    def _on_change(self, _snapshot, changed) -> None:
        self._changed |= set(changed)
        self._dirty.set()

    def rebuild(self, reason: str) -> None:
        snap = self.store.snapshot()
        if self.mesh is not None and snap.version == self.mesh.version:
            return
        started = time.perf_counter()
        try:
            mesh = build_mesh(snap)
        except Exception as e:  # keep serving the last good mesh
            log.exception("mesh build failed", config_version=snap.version, error=str(e))
            return
        self.mesh = mesh
        log.info(
            "mesh snapshot built",
            version=mesh.version,
            reason=reason,
            objects=len(snap),
            services=len(mesh.services),
            ms=round((time.perf_counter() - started) * 1000, 2),
        )
        self.ads.update(mesh, reason=reason)

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            await self._dirty.wait()
            # Debounce: wait until no change arrived for `debounce_after` seconds.
            while True:
                self._dirty.clear()
                await asyncio.sleep(self.debounce_after)
                if not self._dirty.is_set():
                    break
            changed, self._changed = self._changed, set()
            kinds = sorted({k.kind for k in changed})
            self.rebuild(reason="config change: " + ",".join(kinds))


async def serve(opts: ServeOptions, stop: asyncio.Event | None = None) -> None:
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        try:
            loop.add_signal_handler(sig, stop.set)
        except (NotImplementedError, RuntimeError):  # not the main thread (tests)
            pass

    metrics = Metrics()

    def on_reject(rej: Rejection) -> None:
        metrics.config_rejected(rej.key.kind if rej.key else "unknown")

    store = ConfigStore(on_reject=on_reject)
    ads = AdsServer(Generator(), metrics)
    builder = MeshBuilder(store, ads, opts.debounce_after)
    source = DirectorySource(opts.config_dir, store, interval=opts.poll_interval)
    source.load()
    builder.rebuild(reason="initial load")

    xds = await start_xds_server(ads, opts.listen_address, opts.xds_port)
    monitoring = await start_monitoring(opts.listen_address, opts.monitoring_port, lambda: ads.ready, metrics)
    log.info("meshd serving", xds_port=opts.xds_port, monitoring_port=opts.monitoring_port, config_dir=str(opts.config_dir))
    tasks = [asyncio.create_task(source.run(stop)), asyncio.create_task(builder.run(stop))]
    try:
        await stop.wait()
    finally:
        log.info("meshd stopping")
        for t in tasks:
            t.cancel()
        await xds.stop(grace=2)
        monitoring.close()
