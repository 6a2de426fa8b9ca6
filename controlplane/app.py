"""`meshd serve`: wires sources -> store -> model -> generators -> server.

Data flows one way. The directory source fills the store; each store change schedules a
rebuild of the mesh snapshot after a short quiet period (debounce), and the new snapshot
is handed to the ADS server, which pushes to the proxies it affects. A failure to build
keeps the last good snapshot in force.

With a CA directory, meshd is also the mesh's certificate authority: the root is loaded
(or created on first start) from it, the ADS server answers SDS `ROOTCA` on both ports
and `default` (the workload key) only on the secure port (TLS + bearer token), where
each stream is authenticated before it is served. Certificates are renewed ahead of
expiry and pushed, the CA directory is watched for root rotations, and the Istio CA
API is served on the secure port (security/plane.py).
"""
from __future__ import annotations

import asyncio
import dataclasses
import signal
import threading
import time
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import structlog

from ca.keys import KeyType

from . import gcpolicy, names, startup
from .config.objects import ConfigKey, Rejection
from .config.store import ConfigStore
from .debug.bootstrap_patches import BootstrapPatchReport
from .debug.certs import certs_handler
from .debug.gateway_api import gateway_api_section
from .debug.monitoring import start_monitoring
from .debug.operator import operator_view
from .debug.ui.routes import ui_routes
from .generators.deferred import DeferredGenerator
from .generators.left_out_patches import LeftOutPatches
from .model.gateway_api.status import gateway_api_status
from .model.mesh import MeshSnapshot, build_mesh, mesh_version
from .model.meshconfig import DEFAULT as DEFAULT_MESH_CONFIG
from .model.request_authentication import EMPTY_JWKS, key_sets_needed
from .model.request_authentication import KIND as REQUEST_AUTHENTICATION
from .model.sidecar_problems import SidecarReport
from .ports import ServePort, StartupError, bind_error, check_free
from .security.plane import DEFAULT_KEY_TYPE, SecurityOptions, SecurityPlane
from .security.policy_report import PolicyReport
from .server.grpc_server import address, server_options, start_secure_xds_server, start_xds_server
from .server.host import AdsOptions, AdsServer
from .server.metrics import Metrics
from .server.secure import SecureAdsServicer
from .server.view import missing_extension_configs
from .sources.autoregistration import StoreEntries, WorkloadRegistry
from .sources.directory import DirectorySource
from .sources.jwks import JwksSource
from .sources.meshconfig import MeshConfigSource, MeshConfigSourceError
from .telemetry.problem_report import TelemetryReport
from .telemetry.wiring import Telemetry

if TYPE_CHECKING:
    from .kube.options import ClusterOptions
    from .kube.prefetch import Prefetch

log = structlog.get_logger("meshd")

# How long the snapshot observers (reports, status) wait for the push to be written.
OBSERVE_WAIT_MAX = 2.0


@dataclass
class ServeOptions:
    config_dir: Path | None  # None: Kubernetes only
    xds_port: int = 15010
    monitoring_port: int = 15014
    listen_address: str = "0.0.0.0"
    poll_interval: float = 0.2
    debounce_after: float = 0.1
    debounce_max: float = 10.0  # a push goes out at the latest this long after the first change
    # The quiet time of a window holding endpoint changes only (EndpointSlices, Pods,
    # Nodes): shorter, as their push is small (istiod: PILOT_ENABLE_EDS_DEBOUNCE=false).
    eds_debounce_after: float = 0.01
    # The quiet time of an isolated change (the first after `debounce_after` of quiet,
    # with no second one behind it): MeshBuilder.
    debounce_isolated: float = 0.01
    max_pushes_in_flight: int = 100  # responses being written at once (istiod's PILOT_PUSH_THROTTLE)
    write_timeout: float = 30.0  # a proxy that stops reading longer than this is disconnected
    share_ports: bool = False  # --workers: the gRPC ports are bound with SO_REUSEPORT (server/workers.py)
    # The CA: None serves no SDS and no secure port (in-process tests); the CLI always
    # passes one (default ~/.meshd/ca, see security/cadir.py).
    ca_dir: Path | None = None
    # ca_dir is the default, not named by the operator: Kubernetes mode then keeps the CA
    # in the cluster and never reads it (kube/ca_secrets.py, docs/kubernetes.md).
    ca_dir_default: bool = False
    # meshd's state directory ($MESHD_HOME, docs/state.md): the last good version of each
    # config object survives restarts there. None (in-process tests): kept in memory only.
    state_dir: Path | None = None
    trust_domain: str = names.TRUST_DOMAIN
    workload_cert_ttl: timedelta = timedelta(hours=24)
    rotation_ratio: float = 0.5  # renew once this share of a workload cert's lifetime has passed
    workload_key_type: KeyType = DEFAULT_KEY_TYPE
    ca_mtls_port: int = 0  # the CA API for client-certificate callers; 0: off
    ca_poll_interval: float = 1.0  # seconds between checks of the CA directory (root rotation)
    secure_xds_port: int = names.PORT_XDS_SECURE  # 0: no secure port
    root_namespace: str = names.ROOT_NAMESPACE  # where mesh-wide policies live
    # Istio's MeshConfig (the `mesh` key of ConfigMap istio, or the whole ConfigMap),
    # watched; in Kubernetes mode without it, ConfigMap istio of the root namespace.
    mesh_config_file: str | None = None
    mesh_config_poll_interval: float = 1.0
    jwks_refresh_interval: float = 20 * 60.0  # istiod's PILOT_JWT_PUB_KEY_REFRESH_INTERVAL
    # How long an auto-registered WorkloadEntry outlives its proxy's connection (istiod's
    # PILOT_WORKLOAD_ENTRY_GRACE_PERIOD; sources/autoregistration.py).
    workload_entry_grace_period: float = 10.0
    debug_access: str = "localhost"  # who may read /debug: localhost | authenticated | open
    # Kubernetes source (issue: operators apply CRDs with kubectl): a kubeconfig path,
    # or in-cluster config when running in a pod.
    kubeconfig: str | None = None
    in_cluster: bool = False
    namespaces: list[str] | None = None
    label_selector: str | None = None
    watch_secrets: bool = False
    # The initial lists asked for at the start of `meshd serve` (kube/prefetch.py), if any.
    kube_prefetch: Prefetch | None = None
    # The admission webhooks (/inject, /validate; docs/webhooks.md): served in Kubernetes
    # mode with a CA only; 0: none (the CLI's default is istiod's 15017).
    webhook_port: int = 0
    # With a Kubernetes source: leader election (the leader writes status/events) and
    # TokenReview authentication on the secure port (controlplane/kube/member.py).
    cluster: ClusterOptions | None = None


class MeshBuilder:
    """Turns store changes into mesh snapshots for the ADS server, debounced.

    Changes are merged until none arrived for `debounce_after` seconds, but never held
    longer than `debounce_max` after the first one (under constant churn a push still
    goes out every `debounce_max`), as istiod's PILOT_DEBOUNCE_AFTER/_MAX. One merged
    change is one snapshot and one push.

    An isolated change (a store change that arrives after at least `debounce_after` of
    quiet) waits only `debounce_isolated` for a second one; if none comes it is pushed
    then, else the window is an ordinary one (quiet for `debounce_after` from the last
    change). istiod waits the full quiet time for every change; this costs at most one
    extra push per burst (its first change, when the rest came later than
    `debounce_isolated`) and takes 90 ms off the common case, one object changed.

    Which proxies a push reaches, and what it sends them, is decided by the ADS server
    from the generator's dependency keys (a Gateway change reaches routers only; an
    endpoint change sends only the changed ClusterLoadAssignments to the proxies
    subscribed to them). The builder only classifies the change for logs and metrics:
    `endpoint` when every changed object is an EndpointSlice, a Pod or a Node (read for
    locality only, by EDS only), else `config`.

    Two inputs come from other sources than the store: the mesh config
    (`set_mesh_config`) and the JWT key sets meshd fetched (`set_jwks`); a change of
    either is a change like any other (a new snapshot, a push). After each snapshot the
    builder tells `key_sets` (sources/jwks.py) which key sets the RequestAuthentications
    need.
    """

    ENDPOINT_KINDS = frozenset({"EndpointSlice", "Pod", "Node"})

    def __init__(self, store: ConfigStore, ads: AdsServer, debounce_after: float, root_namespace: str = names.ROOT_NAMESPACE,
                 debounce_max: float = 10.0, eds_debounce_after: float | None = None,
                 debounce_isolated: float | None = None):
        self.store = store
        self.root_namespace = root_namespace
        self.ads = ads
        self.debounce_after = debounce_after
        # A window of endpoint changes only waits this long for quiet (None: debounce_after).
        self.eds_debounce_after = debounce_after if eds_debounce_after is None else eds_debounce_after
        # An isolated change's quiet time (None: debounce_after, istiod's trailing-only shape).
        self.debounce_isolated = debounce_after if debounce_isolated is None else min(debounce_isolated, debounce_after)
        self._events = 0  # store notifications in this window
        self._last_event = -float("inf")  # monotonic time of the latest notification
        self._quiet_before = float("inf")  # quiet time before this window's first notification
        self._debounced_at = 0.0  # when the last window closed (logged with the snapshot)
        self.debounce_max = max(debounce_max, debounce_after)
        self.mesh: MeshSnapshot | None = None
        self.pushes = 0  # snapshots handed to the server (one per merged change)
        self._dirty = asyncio.Event()
        self._changed: set = set()  # keys changed in this debounce window (for the reason)
        # Keys changed since self.mesh was built: with them, an EndpointSlice-only change
        # is built from self.mesh (build_mesh's fast path). After a failed build the next
        # one is full.
        self._unbuilt: set = set()
        self._full_next = False
        self._first_change = 0.0
        self.mesh_config = dataclasses.replace(DEFAULT_MESH_CONFIG, root_namespace=root_namespace)
        self.jwks = EMPTY_JWKS
        self.key_sets: JwksSource | None = None  # the JwksSource to tell which key sets are needed
        # Told of each new snapshot (e.g. the report of policies not enforced as written),
        # after its push (_observe).
        self.observers: list = []
        # Awaited before the observers are first told (app.py: the warm-up after ready, so
        # that they do not import the generators on the event loop). None: no wait.
        self.observe_after: asyncio.Future | None = None
        self._observed_next: MeshSnapshot | None = None
        self._observer_task: asyncio.Task | None = None
        store.subscribe(self._on_change)

    def set_mesh_config(self, mesh_config) -> None:
        self.mesh_config = mesh_config
        self._input_changed("MeshConfig")

    def set_jwks(self, view) -> None:
        self.jwks = view
        self._input_changed("JWKS")

    def _input_changed(self, what: str) -> None:
        self._event()
        self._changed.add(ConfigKey(what, "", ""))  # names the change in the push reason
        self._dirty.set()

    def _event(self) -> None:
        now = time.monotonic()
        if not self._changed:
            self._first_change = time.time()  # logged with the snapshot: change-to-push latency
            self._quiet_before = now - self._last_event
            self._events = 0
        self._events += 1
        self._last_event = now

    def _on_change(self, _snapshot, changed) -> None:
        self._event()
        self._changed |= set(changed)
        self._unbuilt |= changed
        self._dirty.set()

    def rebuild(self, reason: str) -> None:
        snap = self.store.snapshot()
        if self.mesh is not None and mesh_version(snap.version, self.mesh_config, self.jwks) == self.mesh.version:
            return
        started = time.perf_counter()
        previous = None if self._full_next else self.mesh
        try:
            mesh = build_mesh(snap, root_namespace=self.root_namespace, previous=previous, changed=frozenset(self._unbuilt),
                              mesh_config=self.mesh_config, jwks=self.jwks)
        except Exception as e:  # keep serving the last good mesh
            log.exception("mesh build failed", config_version=snap.version, error=str(e))
            self._full_next = True
            return
        # The store only changes on this thread: `snap` has every change in _unbuilt.
        self._unbuilt.clear()
        self._full_next = False
        self.mesh = mesh
        if self.key_sets is not None:
            self.key_sets.want(key_sets_needed(snap.of_kind(REQUEST_AUTHENTICATION)))
        built = time.perf_counter()
        queued = self.ads.update(mesh, reason=reason)
        self.pushes += 1
        self._observe(mesh)
        log.info(
            "mesh snapshot built",
            version=mesh.version,
            reason=reason,
            objects=len(snap),
            services=len(mesh.services),
            ms=round((built - started) * 1000, 2),
            proxies_queued=queued,
            queue_ms=round((time.perf_counter() - built) * 1000, 2),
            express=getattr(self.ads, "express", False),
            at=time.time(),
            changed_at=self._first_change or None,
            debounced_at=self._debounced_at or None,
        )
        self._first_change = 0.0

    def _observe(self, mesh: MeshSnapshot) -> None:
        """Tell the observers of `mesh` once its push is written (ads.busy false), at
        most OBSERVE_WAIT_MAX later: they are reports and status writers, and on the
        event loop during the push their work (tens of ms at 2,000 proxies) would
        delay every proxy's response. Only the newest snapshot is observed."""
        self._observed_next = mesh
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # called outside the loop (tests): now
            self._tell_observers()
            return
        if self._observer_task is None or self._observer_task.done():
            self._observer_task = loop.create_task(self._observe_when_written())

    async def _observe_when_written(self) -> None:
        if self.observe_after is not None:
            await self.observe_after
        deadline = time.monotonic() + OBSERVE_WAIT_MAX
        while getattr(self.ads, "busy", False) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)  # busy looks at every connection: not too often
        self._tell_observers()

    def _tell_observers(self) -> None:
        mesh, self._observed_next = self._observed_next, None
        if mesh is None:
            return
        for observe in self.observers:
            try:
                observe(mesh)
            except Exception as e:  # a report must not stop the others, or the pushes
                log.exception("mesh snapshot observer failed", observer=repr(observe), error=str(e))

    @property
    def pending(self) -> bool:
        """Changes wait to be built and pushed."""
        return self._dirty.is_set() or bool(self._changed)

    @classmethod
    def classify(cls, changed) -> str:
        kinds = {k.kind for k in changed}
        return "endpoint" if kinds and kinds <= cls.ENDPOINT_KINDS else "config"

    async def run(self, stop: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        while not stop.is_set():
            await self._dirty.wait()
            first = loop.time()
            # Debounce: until no change for `debounce_after` (`eds_debounce_after` while the
            # window holds endpoint changes only, `debounce_isolated` while it holds one
            # change that followed a quiet period), at most `debounce_max`.
            while True:
                self._dirty.clear()
                quiet = self.eds_debounce_after if self.classify(self._changed) == "endpoint" else self.debounce_after
                if self._events == 1 and self._quiet_before >= self.debounce_after:
                    quiet = min(quiet, self.debounce_isolated)
                wait = min(quiet, first + self.debounce_max - loop.time())
                if wait <= 0:
                    break
                try:
                    await asyncio.wait_for(self._dirty.wait(), wait)
                except TimeoutError:
                    break
            changed, self._changed = self._changed, set()
            self._debounced_at = time.time()
            kinds = sorted({k.kind for k in changed})
            self.rebuild(reason=f"{self.classify(changed)} change: " + ",".join(kinds))


def serve_ports(opts: ServeOptions) -> list[ServePort]:
    """The ports this serve listens on, with their flags (0: an ephemeral port)."""
    shared = opts.share_ports  # --workers
    ports = [ServePort("--xds-port", opts.xds_port, shared)]
    if opts.ca_dir is not None:
        ports += [ServePort("--secure-xds-port", opts.secure_xds_port, shared),
                  ServePort("--ca-mtls-port", opts.ca_mtls_port, shared)]
    ports.append(ServePort("--monitoring-port", opts.monitoring_port))
    if _serves_webhooks(opts):
        ports.append(ServePort("--webhook-port", opts.webhook_port))
    return ports


def _serves_webhooks(opts: ServeOptions) -> bool:
    return bool(opts.webhook_port) and opts.ca_dir is not None and bool(opts.kubeconfig or opts.in_cluster)


async def _listening(host: str, port: ServePort, starting):
    """Await a server's start; a failed bind (another process was faster than the check)
    is the same one line as check_free's."""
    try:
        return await starting
    except (RuntimeError, OSError) as e:
        check_free(host, [port])  # the server library's error names no reason: ask the port
        raise StartupError(bind_error(host, port, e)) from None


async def _set_when(stop: asyncio.Event, halt: threading.Event) -> None:
    await stop.wait()
    halt.set()


async def _unless_stopped(stop: asyncio.Event, step) -> bool:
    """Await a start-up step unless `stop` (a signal) comes first, which cancels it: no
    step keeps a stopping meshd waiting. Whether the step completed."""
    task, stopped = asyncio.ensure_future(step), asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({task, stopped}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopped.cancel()
        if not task.done():
            task.cancel()
    if task.cancelled() or not task.done():
        return False
    task.result()  # its exception, if it failed
    return True


# Imported by the warm-up after ready, beside the generator itself: what the observers
# (reports) and the debug views need that the first snapshot did not.
WARM_MODULES = (
    "controlplane.generators.authz.builder",
    "controlplane.generators.telemetry_problems",
    "controlplane.generators.envoyfilter.stage",
    "controlplane.debug.configdump",
)


def _import_for_serving(generator: DeferredGenerator, webhooks) -> None:
    import importlib

    generator.warm()
    if webhooks is not None and webhooks.server is not None:
        try:  # the webhook port's first certificate (a new key: not on the way to ready)
            webhooks.server.prepare()
        except Exception as e:  # each caller asks again (admission/server.py)
            log.error("webhook certificate unavailable", error=str(e))
    for name in WARM_MODULES:
        importlib.import_module(name)
    from . import dataclass_cache

    dataclass_cache.save()  # the methods of every dataclass of a start, for the next start


async def _warm_up(generator: DeferredGenerator, warmed: asyncio.Future, webhooks=None, k8s=None) -> None:
    """After ready: the generators and Envoy's protobuf modules, imported in a thread so
    that the event loop keeps answering (/ready, a proxy's first request, which waits for
    the generator if it comes first), and the webhook port's certificate. Then the
    Kubernetes watches start (held since the initial lists) and the snapshot observers
    run (MeshBuilder)."""
    started = time.perf_counter()
    try:
        await asyncio.to_thread(_import_for_serving, generator, webhooks)
        log.info("generators ready", ms=round((time.perf_counter() - started) * 1000, 1))
    except Exception as e:  # a bug here must not keep the observers waiting
        log.exception("generator warm-up failed", error=str(e))
    finally:
        startup.end()  # the collector and the switch interval as they were (startup.py)
        if k8s is not None:
            k8s.start_watching()
        if not warmed.done():
            warmed.set_result(None)


async def _initial_lists(k8s) -> None:
    while not await k8s.wait_synced(5):
        log.info("waiting for the initial kubernetes lists")


def _mesh_config_file(path: str | None):
    """The --mesh-config file as parsed YAML (for injection; sources/meshconfig.py has
    checked it already), None without one."""
    if not path:
        return None
    import yaml

    with open(path, encoding="utf-8") as f:
        return yaml.safe_load(f)


def _json_view(view):
    """A /debug handler answering `view()` as JSON."""
    import json

    from .debug.monitoring import Response

    def handler(_request):
        return Response(200, (json.dumps(view(), indent=1) + "\n").encode(), "application/json")

    return handler


def _workload_registry(opts: ServeOptions, store: ConfigStore, member, metrics: Metrics) -> WorkloadRegistry:
    """WorkloadGroup auto-registration: entries in the store (directory mode), or in the
    API server written by the replica holding the proxy's stream (Kubernetes mode), where
    the leader also sweeps entries whose proxy left while their meshd was gone."""
    def groups(namespace: str, name: str):
        return store.snapshot().get("WorkloadGroup", namespace, name)

    grace = opts.workload_entry_grace_period
    if member is None:
        import socket

        return WorkloadRegistry(StoreEntries(store), groups, instance=socket.gethostname(), grace_period=grace,
                                registry=metrics.registry)
    from .kube.autoregistration import KubeEntries

    backend = KubeEntries(member.kube)
    registry = WorkloadRegistry(backend, groups, instance=member.identity, grace_period=grace,
                                registry=metrics.registry)
    member.add_leader_task("workload-entry-cleanup", lambda: backend.sweep(registry))
    return registry


async def serve(opts: ServeOptions, stop: asyncio.Event | None = None) -> None:
    """Serve until `stop` (or SIGTERM/SIGINT) is set. StartupError when a port is taken."""
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        try:
            loop.add_signal_handler(sig, stop.set)
        except (NotImplementedError, RuntimeError):  # not the main thread (tests)
            pass
    loop.call_later(startup.HOLD_MAX, startup.end)  # if ready and warm take that long
    ports = {p.flag: p for p in serve_ports(opts)}
    check_free(opts.listen_address, ports.values())  # before a CA or a cluster is touched
    # Start-up work in threads (the cluster's CA while its namespace does not exist yet)
    # watches `halt`: a SIGTERM then ends it at once, not after its retries.
    halt = threading.Event()
    halt_task = asyncio.create_task(_set_when(stop, halt))

    metrics = Metrics()

    def on_reject(rej: Rejection) -> None:
        metrics.config_rejected(rej.key.kind if rej.key else "unknown")

    store = ConfigStore(on_reject=on_reject, on_unsupported=metrics.set_config_unsupported)
    secrets = serving = authenticators = plane = None
    debug_routes = {}
    k8s = k8s_api = member = member_task = None
    webhooks = None
    ca_dir = opts.ca_dir
    if opts.kubeconfig or opts.in_cluster:
        from .kube.client import kube_api_client
        from .kube.member import ClusterMember, ClusterOptions

        pre = opts.kube_prefetch  # its client, when made from the same kubeconfig (None: in-cluster)
        k8s_api = pre.client if pre is not None and pre.client is not None and pre.settings.kubeconfig == opts.kubeconfig \
            else kube_api_client(opts.kubeconfig)
        member = ClusterMember(k8s_api, opts.cluster or ClusterOptions(), opts.trust_domain)
        if ca_dir is not None:  # the CA lives in the cluster's Secrets; a directory mirrors it
            from .kube.ca_secrets import cluster_ca_dirs, own_mirror_dir
            from .state import meshd_home

            dirs = cluster_ca_dirs(None if opts.ca_dir_default else ca_dir,
                                   own_mirror_dir(opts.state_dir or meshd_home(), k8s_api.host,
                                                  member.namespace))
            ca_dir = dirs.mirror
            prepared = await asyncio.to_thread(member.prepare_ca, dirs.mirror, opts.workload_cert_ttl,
                                               offered=dirs.offered, stop=halt)
            if not prepared:  # stopped while waiting for the cluster
                log.info("meshd stopped before it started")
                member.close()
                k8s_api.close()
                return
    if ca_dir is not None:
        # The CA, SDS, rotation and the CA API (security/plane.py). Raises CAStateError on
        # unsafe or inconsistent CA files: better not to start than to mint a second root.
        plane = SecurityPlane(SecurityOptions(
            ca_dir=ca_dir, trust_domain=opts.trust_domain, workload_cert_ttl=opts.workload_cert_ttl,
            rotation_ratio=opts.rotation_ratio, workload_key_type=opts.workload_key_type,
            secure_xds_port=opts.secure_xds_port, ca_mtls_port=opts.ca_mtls_port,
            listen_address=opts.listen_address, ca_poll_interval=opts.ca_poll_interval,
            authenticators=member.authenticators if member is not None else None,  # + TokenReview
        ), metrics)
        secrets, serving, authenticators = plane.secrets, plane.serving, plane.authenticators
        debug_routes.update({"/debug/certs": certs_handler(plane.live_root, plane.secrets),
                             "/debug/ca": _json_view(plane.describe)})
        if member is not None:
            member.attach_ca(plane.ca, store)  # follow the CA Secrets; istio-ca-root-cert ConfigMaps
            if _serves_webhooks(opts):  # admission webhooks; the leader keeps their caBundle (docs/webhooks.md)
                from .admission.wiring import Webhooks

                webhooks = Webhooks(plane.ca, store, member.kube, member.namespace,
                                    mesh_config=_mesh_config_file(opts.mesh_config_file),
                                    mesh_config_origin=f"file {opts.mesh_config_file}" if opts.mesh_config_file
                                    else "defaults", root_namespace=opts.root_namespace)
                member.add_leader_task("webhooks", webhooks.patcher.run)
    generator = DeferredGenerator()  # made by the warm-up after ready, or by the first proxy
    ads = AdsServer(generator, metrics, secrets=secrets, options=AdsOptions(
        trust_domain=opts.trust_domain, max_pushes_in_flight=opts.max_pushes_in_flight,
        write_timeout=opts.write_timeout))
    if plane is not None:
        plane.attach(ads)
    # The mesh config and the JWT key sets: inputs of the snapshot from outside the store.
    mesh_source = MeshConfigSource(root_namespace=opts.root_namespace, trust_domain=opts.trust_domain)
    if opts.mesh_config_file:
        mesh_source.load_file(opts.mesh_config_file)  # MeshConfigSourceError: meshd does not start
    key_sets = JwksSource(refresh_interval=opts.jwks_refresh_interval, registry=metrics.registry)
    debug_routes["/debug/jwksz"] = _json_view(key_sets.status)
    policy_report = PolicyReport(metrics.registry)
    telemetry_report = TelemetryReport(metrics.registry)
    # Rows only from a generator made (one not yet made has left nothing out): a scrape or a
    # configz read does not make it on the event loop.
    def left_out() -> list:
        return generator.envoy_filter_problems() if generator.made else []
    metrics.registry.register(LeftOutPatches(left_out))  # beside configz envoyFilterProblems
    sidecar_report = SidecarReport(metrics.registry)
    bootstrap_report = BootstrapPatchReport(generator, lambda: [c.proxy for c in ads.connections()])
    registry = _workload_registry(opts, store, member, metrics)  # WorkloadGroup auto-registration (docs/vm.md)
    ads.registrations = registry
    # Envoy's metrics service on the secure port, its Istio metrics, and /ui/ (docs/ui.md).
    telemetry = Telemetry.attach(metrics.registry, authenticators if serving is not None else None,
                                 mesh=lambda: ads.mesh, trust_domain=opts.trust_domain)
    debug_routes.update(ui_routes(ads, telemetry.store if telemetry.service is not None else None, opts.trust_domain))
    debug_routes = operator_view(ads, store, metrics, debug_routes, access=opts.debug_access,
                                 configz_sections={"meshConfig": mesh_source.status, "jwks": key_sets.status,
                                                   "policyProblems": policy_report.status,
                                                   "autoRegistration": registry.status,
                                                   "gatewayAPI": lambda: gateway_api_section(ads.mesh),
                                                   "envoyFilterProblems": left_out,
                                                   "bootstrapPatches": lambda: bootstrap_report.rows(ads.mesh),
                                                   "extensionConfigsMissing":
                                                       lambda: missing_extension_configs(ads.connections()),
                                                   "telemetryProblems": telemetry_report.status,
                                                   "sidecarProblems": sidecar_report.status,
                                                   **({"injection": webhooks.inputs.status} if webhooks else {})},
                                 # /debug checks tokens synchronously: not with TokenReview (it awaits I/O)
                                 authenticators=[a for a in authenticators or () if not getattr(a, "awaits_io", False)],
                                 root_namespace=opts.root_namespace)
    builder = MeshBuilder(store, ads, opts.debounce_after, opts.root_namespace, debounce_max=opts.debounce_max,
                          eds_debounce_after=opts.eds_debounce_after, debounce_isolated=opts.debounce_isolated)
    builder.mesh_config, builder.key_sets = mesh_source.current, key_sets
    warmed = builder.observe_after = loop.create_future()
    mesh_source.on_change, key_sets.on_change = builder.set_mesh_config, builder.set_jwks
    if webhooks is not None and opts.mesh_config_file:  # injection follows the file too
        mesh_file, follow_mesh = opts.mesh_config_file, webhooks.mesh_config_file_changed

        def mesh_changed(mc) -> None:
            builder.set_mesh_config(mc)
            follow_mesh(mesh_file)
        mesh_source.on_change = mesh_changed
    builder.observers.append(policy_report.update)
    builder.observers.append(telemetry_report.update)
    builder.observers.append(sidecar_report.update)
    builder.observers.append(bootstrap_report.observe)  # BOOTSTRAP patches changed under running proxies
    if member is not None:  # the Gateway API's status, written by the leader (kube/status.py)
        writer = member.status
        # and the gateway of each Gateway of meshd's classes (kube/gateway_deployment.py)
        from .kube.gateway_deployment import GatewayDeployer, settings_from_env

        deployer = GatewayDeployer(member.kube, settings_from_env(member.namespace),
                                   namespaces=opts.namespaces)
        deployer.on_status = writer.gateway_api_status
        builder.observers.append(lambda mesh: writer.gateway_api_status(
            deployer.with_status(gateway_api_status(mesh.gateway_api))))
        builder.observers.append(deployer.observe)
        member.add_leader_task("gateway-deployment", deployer.run)
    source = DirectorySource(opts.config_dir, store, interval=opts.poll_interval) if opts.config_dir else None
    if source is not None:
        if opts.state_dir is not None:  # an invalid file at start gets its last good objects back
            from .config.lastgood import LastGood

            store.last_good = LastGood(opts.state_dir / "lastgood", source.root,
                                       on_restored=metrics.set_config_restored)
        source.load()
        if store.last_good is not None:
            store.last_good.prune()  # copies of files that are gone
    if member is not None and k8s_api is not None:  # set together
        from .kube.source import KubernetesSource

        k8s = KubernetesSource(
            k8s_api, store, namespaces=opts.namespaces, label_selector=opts.label_selector,
            watch_secrets=opts.watch_secrets, observer=member.status,
            mesh_config=None if opts.mesh_config_file else (
                webhooks.follow_mesh_config(mesh_source.apply_configmap) if webhooks is not None
                else mesh_source.apply_configmap),
            mesh_config_namespace=opts.root_namespace,
            injector_config=webhooks.follow_injector_config if webhooks is not None else None,
            prefetch=opts.kube_prefetch,
            hold_watches=True,  # until the warm-up after ready (_warm_up)
        )
    else:
        await _unless_stopped(stop, key_sets.prime(key_sets_needed(store.snapshot().of_kind(REQUEST_AUTHENTICATION))))
        builder.rebuild(reason="initial load")
        mesh_source.pin_root_namespace()

    servers: list = []
    monitoring = None
    tasks: list[asyncio.Task] = []
    try:
        # Inside the try: if a later port cannot be bound, the ones already up are closed.
        host = opts.listen_address
        servers.append(await _listening(host, ports["--xds-port"], start_xds_server(
            ads, host, opts.xds_port, share_ports=opts.share_ports)))
        if serving is not None and authenticators:
            secure = SecureAdsServicer(ads, authenticators, metrics)
            servers.append(await _listening(host, ports["--secure-xds-port"], start_secure_xds_server(
                secure, serving.credentials(), host, opts.secure_xds_port,
                extra=(*(plane.secure_servicers() if plane is not None else ()), telemetry.add_to),
                share_ports=opts.share_ports)))
        if plane is not None:
            servers += await _listening(host, ports["--ca-mtls-port"], plane.start_servers(
                server_options(opts.share_ports), address))
        if webhooks is not None:
            try:
                webhooks.start(host, opts.webhook_port)
            except OSError as e:
                check_free(host, [ports["--webhook-port"]])
                raise StartupError(bind_error(host, ports["--webhook-port"], e)) from None
        monitoring = await _listening(host, ports["--monitoring-port"], start_monitoring(
            host, opts.monitoring_port, lambda: ads.ready and (k8s is None or k8s.synced), metrics,
            routes=debug_routes,
        ))
        log.info(
            "meshd serving", xds_port=opts.xds_port, secure_xds_port=opts.secure_xds_port if serving else None,
            monitoring_port=opts.monitoring_port, config_dir=str(opts.config_dir) if opts.config_dir else None,
            kubernetes=bool(k8s),
            ca_dir=str(ca_dir) if ca_dir else None, trust_domain=opts.trust_domain,
        )
        if source is not None:
            tasks.append(asyncio.create_task(source.run(stop)))
        if store.last_good is not None:
            tasks.append(asyncio.create_task(store.last_good.run(stop)))
        if k8s is not None and member is not None:  # set together
            # No push before the initial lists are in: a partial picture (a route before its
            # Service, a workload before its STRICT policy) must never reach a proxy.
            tasks.append(asyncio.create_task(k8s.run(stop)))
            if await _unless_stopped(stop, _initial_lists(k8s)):
                if mesh_source.error and mesh_source.origin == "defaults":  # the ConfigMap was never valid
                    raise MeshConfigSourceError(f"ConfigMap {opts.root_namespace}/istio", "", mesh_source.error)
                await _unless_stopped(stop, key_sets.prime(key_sets_needed(store.snapshot().of_kind(REQUEST_AUTHENTICATION))))
                builder.rebuild(reason="initial kubernetes sync")
                mesh_source.pin_root_namespace()
            # The election and the leader's work (status of every object, webhooks, trust
            # bundles) after the first snapshot: at start they took its CPU (bench/README.md "Start-up").
            member_task = asyncio.create_task(member.run(stop), name="meshd-cluster")
        tasks.append(asyncio.create_task(_warm_up(generator, warmed, webhooks, k8s)))
        tasks.append(asyncio.create_task(builder.run(stop)))
        tasks.append(asyncio.create_task(key_sets.run(stop)))
        if opts.mesh_config_file:
            tasks.append(asyncio.create_task(
                mesh_source.watch_file(opts.mesh_config_file, stop, opts.mesh_config_poll_interval)))
        # The collector's thresholds and full collections, for as long as serving lasts.
        tasks.append(asyncio.create_task(gcpolicy.collect_when_idle(lambda: ads.busy or builder.pending, stop)))
        if plane is not None:
            tasks += plane.tasks(stop)
        await stop.wait()
        await registry.close()
    finally:
        log.info("meshd stopping")
        halt_task.cancel()
        if member_task is not None:  # the leader stops its work and releases the Lease first
            stop.set()
            await asyncio.wait([member_task], timeout=5)
            member_task.cancel()
        for t in tasks:
            t.cancel()
        # End the ADS streams now (UNAVAILABLE, "meshd shutting down") rather than after
        # the grace period: proxies reconnect at once, and meshd exits without waiting.
        log.info("ads streams closed", streams=ads.close_all())
        await asyncio.gather(*(s.stop(grace=2) for s in servers))
        if store.last_good is not None:
            store.last_good.flush()  # what changed since the last write
        if plane is not None:
            plane.close()
        if member is not None:
            member.close()
        if k8s_api is not None:
            k8s_api.close()
        if webhooks is not None:
            webhooks.stop()
        if monitoring is not None:
            monitoring.close()
