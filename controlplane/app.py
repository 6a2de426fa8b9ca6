"""`meshd serve`: wires sources -> store -> model -> generators -> server.

Data flows one way. The directory source fills the store; each store change schedules a
rebuild of the mesh snapshot after a short quiet period (debounce), and the new snapshot
is handed to the ADS server, which pushes to the proxies it affects. A failure to build
keeps the last good snapshot in force.

With a CA directory, meshd is also the mesh's certificate authority: the root is loaded
(or created on first start) from it, the ADS server answers SDS `ROOTCA` on both ports
and `default` (the workload key) only on the secure port (TLS + bearer token), where
each stream is authenticated before it is served.
"""
from __future__ import annotations

import asyncio
import signal
import time
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import structlog

from .config.objects import Rejection
from .config.store import ConfigStore
from .debug.certs import certs_handler
from .debug.monitoring import start_monitoring
from .generators import Generator
from .model.mesh import MeshSnapshot, build_mesh
from . import names
from .security.authn import JwtAuthenticator
from .security.cadir import open_ca
from .security.sds import WorkloadSecrets
from .security.serving import ServingCertificate
from .server.ads import AdsServer
from .server.grpc_server import start_secure_xds_server, start_xds_server
from .server.metrics import Metrics
from .server.secure import SecureAdsServicer
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
    # The CA: None serves no SDS and no secure port (in-process tests); the CLI always
    # passes one (default ~/.meshd/ca, see security/cadir.py).
    ca_dir: Path | None = None
    trust_domain: str = names.TRUST_DOMAIN
    workload_cert_ttl: timedelta = timedelta(hours=24)
    secure_xds_port: int = names.PORT_XDS_SECURE  # 0: no secure port
    root_namespace: str = names.ROOT_NAMESPACE  # where mesh-wide policies live
    # Kubernetes source (issue: operators apply CRDs with kubectl): a kubeconfig path,
    # or in-cluster config when running in a pod.
    kubeconfig: str | None = None
    in_cluster: bool = False
    namespaces: list[str] | None = None
    label_selector: str | None = None
    watch_secrets: bool = False


class MeshBuilder:
    """Turns store changes into mesh snapshots for the ADS server, debounced."""

    def __init__(self, store: ConfigStore, ads: AdsServer, debounce_after: float, root_namespace: str = names.ROOT_NAMESPACE):
        self.store = store
        self.root_namespace = root_namespace
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
            mesh = build_mesh(snap, root_namespace=self.root_namespace)
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
    secrets = serving = authenticators = None
    debug_routes = {}
    if opts.ca_dir is not None:
        # Raises CAStateError on unsafe or inconsistent CA files: better not to start
        # than to mint a second root or use a key others could read.
        opened = open_ca(opts.ca_dir, opts.trust_domain)
        metrics.set_root_expiry(opened.root.cert.not_valid_after_utc.timestamp())
        secrets = WorkloadSecrets(opened.ca, opts.trust_domain, opts.workload_cert_ttl, metrics=metrics)
        authenticators = [JwtAuthenticator(opened.tokens, opts.trust_domain)]
        debug_routes["/debug/certs"] = certs_handler(opened.root, secrets)
        if opts.secure_xds_port:
            serving = ServingCertificate(opened.ca, metrics=metrics)
    ads = AdsServer(Generator(), metrics, secrets=secrets, trust_domain=opts.trust_domain)
    builder = MeshBuilder(store, ads, opts.debounce_after, opts.root_namespace)
    source = DirectorySource(opts.config_dir, store, interval=opts.poll_interval) if opts.config_dir else None
    if source is not None:
        source.load()
    k8s = k8s_api = None
    if opts.kubeconfig or opts.in_cluster:
        from .sources.kube_client import kube_api_client
        from .sources.kubernetes import KubernetesSource

        k8s_api = kube_api_client(opts.kubeconfig)  # None: in-cluster config inside a pod
        k8s = KubernetesSource(
            k8s_api, store, namespaces=opts.namespaces, label_selector=opts.label_selector,
            watch_secrets=opts.watch_secrets,
        )
    else:
        builder.rebuild(reason="initial load")

    servers: list = []
    monitoring = None
    tasks: list[asyncio.Task] = []
    try:
        # Inside the try: if a later port cannot be bound, the ones already up are closed.
        servers.append(await start_xds_server(ads, opts.listen_address, opts.xds_port))
        if serving is not None and authenticators:
            secure = SecureAdsServicer(ads, authenticators, metrics)
            servers.append(
                await start_secure_xds_server(secure, serving.credentials(), opts.listen_address, opts.secure_xds_port)
            )
        monitoring = await start_monitoring(
            opts.listen_address, opts.monitoring_port, lambda: ads.ready and (k8s is None or k8s.synced), metrics,
            routes=debug_routes,
        )
        log.info(
            "meshd serving", xds_port=opts.xds_port, secure_xds_port=opts.secure_xds_port if serving else None,
            monitoring_port=opts.monitoring_port, config_dir=str(opts.config_dir) if opts.config_dir else None,
            kubernetes=bool(k8s),
            ca_dir=str(opts.ca_dir) if opts.ca_dir else None, trust_domain=opts.trust_domain,
        )
        if source is not None:
            tasks.append(asyncio.create_task(source.run(stop)))
        if k8s is not None:
            # No push before the initial lists are in: a partial picture (a route before its
            # Service, a workload before its STRICT policy) must never reach a proxy.
            tasks.append(asyncio.create_task(k8s.run(stop)))
            while not await k8s.wait_synced(5):
                if stop.is_set():
                    break
                log.info("waiting for the initial kubernetes lists")
            builder.rebuild(reason="initial kubernetes sync")
        tasks.append(asyncio.create_task(builder.run(stop)))
        await stop.wait()
    finally:
        log.info("meshd stopping")
        for t in tasks:
            t.cancel()
        await asyncio.gather(*(s.stop(grace=2) for s in servers))
        if k8s_api is not None:
            k8s_api.close()
        if monitoring is not None:
            monitoring.close()
