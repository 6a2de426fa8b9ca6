"""The Kubernetes source: Istio config and the workloads it applies to, from the API
server, into the same store the directory source feeds.

One list+watch per kind (and per namespace when the namespaces are limited; Nodes,
kept as name + topology labels for endpoint locality, always cluster-wide), each in its
own thread because the client is synchronous (reflector.py). The threads only read
and parse; every change reaches the store on the event loop, in the order it happened,
through one queue, so the store is never touched from two threads. Each API object is
one store location (resources.py names it), so an object rejected by the parse gate
keeps its last good version, exactly as a file does.

    source = KubernetesSource(api_client, store, namespaces=["shop"])
    task = asyncio.create_task(source.run(stop))
    await source.wait_synced(30)   # every kind's initial list is in the store

An `observer` (e.g. the status writer, status.py) also hears about
every Istio object, with its uid, generation, resourceVersion and current status and the
parse gate's verdict, on the loop and in the same order as the store.

The same rejected content is applied once: a status write or a relist that does not
change a rejected object does not log (and count) its rejection again.

With `mesh_config`, the source also watches the ConfigMap `istio` of the root namespace
(whatever --namespaces says) and hands it, as the API server has it (None once it is
gone), to that callback on the loop; it is not config of the store. Its initial list is
part of being synced, so the first snapshot has the mesh config. `injector_config` does
the same for ConfigMap `istio-sidecar-injector` of that namespace (the injection values,
admission/inject.py).
"""
from __future__ import annotations

import asyncio
import sys
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from types import FrameType
from typing import TYPE_CHECKING, Any, Protocol

import structlog

from ..config.objects import Rejection
from ..config.parse import Parsed
from ..config.store import ConfigStore
from ..names import ROOT_NAMESPACE
from .http import as_http
from .reflector import Delete, Item, Operation, Put, Reflector, ReflectorOptions, Sync
from .resources import (
    INJECTOR_CONFIGMAP_NAME,
    MESH_CONFIG_MAP,
    MESH_CONFIGMAP_NAME,
    RESOURCES,
    SECRETS,
    Discovery,
    KubeResource,
    ObjectInfo,
    named_in,
    stream_specs,
)

if TYPE_CHECKING:
    from .prefetch import Prefetch

__all__ = ["KubernetesSource", "ObjectObserver", "ReflectorOptions"]


class ObjectObserver(Protocol):
    """Told about Istio objects (only) as the source applies them, on the event loop."""

    def synced(self, stream: str, resource: KubeResource, objects: dict[str, tuple[Parsed, ObjectInfo]]) -> None:
        """The complete set of `stream`'s objects (location -> verdict, info)."""

    def put(self, stream: str, resource: KubeResource, location: str, parsed: Parsed, info: ObjectInfo) -> None: ...

    def deleted(self, stream: str, resource: KubeResource, location: str) -> None: ...

# While applying a relist, give the loop back this often (seconds): each store call costs
# time proportional to the whole store, so a count of calls would not bound the stall.
_APPLY_SLICE = 0.01
# Objects of a relist given to the store at once (one snapshot each batch; config/store.py
# replace_locations): large enough that a relist is a few store updates, small enough
# that one stays within a slice or so.
_APPLY_BATCH = 256


@dataclass
class KindStats:
    objects: int = 0
    events: int = 0
    relists: int = 0


@dataclass
class _StreamState:
    reflector: Reflector
    locations: set[str] = field(default_factory=set)  # what this stream put in the store
    synced: bool = False
    rejected: dict[str, str] = field(default_factory=dict)  # location -> digest of the rejected content applied


class _Slicer:
    def __init__(self) -> None:
        self._since = time.monotonic()

    async def pause(self) -> None:
        if time.monotonic() - self._since >= _APPLY_SLICE:
            await asyncio.sleep(0)
            self._since = time.monotonic()


class KubernetesSource:
    def __init__(
        self,
        api_client: Any,  # kube/http.py's KubeHttp, or a `kubernetes` ApiClient
        store: ConfigStore,
        namespaces: list[str] | None = None,
        label_selector: str | None = None,
        logger: structlog.typing.FilteringBoundLogger | None = None,
        *,
        watch_secrets: bool = False,
        options: ReflectorOptions | None = None,
        observer: ObjectObserver | None = None,
        mesh_config: Callable[[dict[str, Any] | None], None] | None = None,
        mesh_config_namespace: str = ROOT_NAMESPACE,
        injector_config: Callable[[dict[str, Any] | None], None] | None = None,
        prefetch: Prefetch | None = None,
        hold_watches: bool = False,
    ):
        self.api_client = api_client
        self._http = as_http(api_client)
        self.store = store
        self.namespaces = sorted(set(namespaces)) if namespaces else None
        self.label_selector = label_selector or None
        self._log = logger or structlog.get_logger("meshd.source.kubernetes")
        self._options = options or ReflectorOptions()
        self.observer = observer
        self.mesh_config = mesh_config
        self.mesh_config_namespace = mesh_config_namespace
        # ConfigMaps of that namespace read raw, by name -> who is told (on the loop).
        self._raw_maps = {name: fn for name, fn in ((MESH_CONFIGMAP_NAME, mesh_config),
                                                    (INJECTOR_CONFIGMAP_NAME, injector_config)) if fn is not None}
        self._raw_told: dict[str, Callable[[dict[str, Any] | None], None]] = {}  # stream -> callback
        self.resources: tuple[KubeResource, ...] = RESOURCES + ((SECRETS,) if watch_secrets else ())
        self._threads_stop = threading.Event()
        self._streams: dict[str, _StreamState] = {}
        self._threads: list[threading.Thread] = []
        self._starter: threading.Thread | None = None  # starts _threads (_start)
        self._synced = asyncio.Event()
        # The initial lists asked for at start (kube/prefetch.py), used when made with this client.
        self._prefetch = prefetch
        self._stats: dict[str, KindStats] = {r.ident: KindStats() for r in self.resources}
        # hold_watches: each stream lists, and watches only once start_watching() is called
        # (or ReflectorOptions.first_watch_hold passed). meshd's start: the initial lists are
        # applied and the first snapshot built without 31 watch requests (connections, TLS
        # handshakes, the API server's work) competing for the same two cores. A watch goes on
        # from its list's resourceVersion: what changed in between is delivered, not missed.
        self._watching: threading.Event | None = threading.Event() if hold_watches else None

    def start_watching(self) -> None:
        """Let the streams held by hold_watches watch (they all do after the hold's maximum)."""
        if self._watching is not None:
            self._watching.set()

    # --- state for /ready and metrics ---------------------------------------------
    @property
    def synced(self) -> bool:
        """True once every kind's initial list is in the store (and from then on)."""
        return self._synced.is_set()

    async def wait_synced(self, timeout: float | None = None) -> bool:
        try:
            await asyncio.wait_for(self._synced.wait(), timeout)
        except TimeoutError:
            return False
        return True

    def stats(self) -> dict[str, KindStats]:
        """Per kind: objects held, watch events applied, lists applied; plus errors."""
        return {k: KindStats(v.objects, v.events, v.relists) for k, v in self._stats.items()}

    def errors(self) -> int:
        return sum(s.reflector.errors for s in self._streams.values())

    # --- running ------------------------------------------------------------------
    async def run(self, stop: asyncio.Event) -> None:
        """Watch until `stop` is set (or the task is cancelled); never raises for API
        trouble: the reflectors log it and retry."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[Operation | None] = asyncio.Queue()

        def emit(op: Operation) -> None:  # called from reflector threads
            try:
                loop.call_soon_threadsafe(queue.put_nowait, op)
            except RuntimeError:  # loop closed: we are shutting down
                self._threads_stop.set()

        self._threads_stop.clear()
        self._start(emit)
        stopper = asyncio.create_task(self._stop_when(stop, queue))
        try:
            while True:
                op = await queue.get()
                if op is None:
                    break
                try:
                    await self._apply(op)
                except Exception as e:  # one bad operation must not stop the source
                    self._log.exception("k8s apply failed", stream=op.stream, error=str(e))
        finally:
            stopper.cancel()
            self._shutdown()
            try:
                await asyncio.to_thread(self._join, 5.0)
            except asyncio.CancelledError:
                pass

    def close(self) -> None:
        """Stop the watch threads (also done when run() ends)."""
        self._shutdown()
        self._join(5.0)

    @staticmethod
    async def _stop_when(stop: asyncio.Event, queue: asyncio.Queue[Operation | None]) -> None:
        await stop.wait()
        queue.put_nowait(None)

    def _start(self, emit: Callable[[Operation], None]) -> None:
        self._streams.clear()
        # The initial lists asked for at start, when made with this source's client.
        pre = self._prefetch if self._prefetch is not None and self._prefetch.client is self.api_client else None
        # One /apis for every kind that needs discovery: the prefetch's, when it asked the same server.
        discovery = pre.discovery if pre is not None and pre.discovery else Discovery(self._http)
        self._raw_told.clear()
        for spec in stream_specs(self.resources, self.namespaces, self.label_selector, tuple(self._raw_maps),
                                 self.mesh_config_namespace):
            r = Reflector(spec.resource, spec.namespace, self._http, emit, self._threads_stop, self._log,
                          label_selector=spec.label_selector, field_selector=spec.field_selector,
                          accept=named_in(spec.allowed_names) if spec.allowed_names is not None else None,
                          raw=bool(spec.raw_name), options=self._options, discovery=discovery,
                          prefetch=pre,
                          watch_after=self._watching)
            if spec.raw_name:
                r.stream = f"{r.stream}/{spec.raw_name}"  # one stream per ConfigMap of the same namespace
                self._raw_told[r.stream] = self._raw_maps[spec.raw_name]
            self._streams[r.stream] = _StreamState(r)
        self._log.info("k8s source starting", streams=len(self._streams), namespaces=self.namespaces,
                       labelSelector=self.label_selector)
        now: list[threading.Thread] = []
        held: list[threading.Thread] = []  # listed already: started when watching starts
        for name, s in self._streams.items():
            t = threading.Thread(target=s.reflector.run, name=f"k8s-{name}", daemon=True)
            # Held watches: a list the prefetch has parsed already is applied from here, and
            # its thread (which would only watch) is not started before it may watch.
            got = pre.take_parsed(s.reflector.prefetch_key()) if self._watching is not None and pre is not None \
                else None
            if got is not None:
                s.reflector.adopt(*got)
                held.append(t)
            else:
                now.append(t)
        self._threads = now + held
        watching, hold = self._watching, self._options.first_watch_hold

        def start_all() -> None:
            for t in now:
                t.start()
            if held and watching is not None:
                watching.wait(hold)
                for t in held:
                    if self._threads_stop.is_set():
                        return
                    t.start()

        # Started from a thread of their own: each Thread.start waits until the new thread
        # runs, and meanwhile the event loop applies the lists of those already started
        # (the big kinds come first).
        self._starter = threading.Thread(target=start_all, name="k8s-start", daemon=True)
        self._starter.start()

    def _shutdown(self) -> None:
        self._threads_stop.set()
        self.start_watching()  # a stream held before its first watch ends now
        for s in self._streams.values():
            s.reflector.interrupt()

    def _join(self, timeout: float) -> None:
        if self._starter is not None:
            self._starter.join(timeout)
        for t in self._threads:
            if t.ident is not None:  # started
                t.join(timeout)
        alive = [t for t in self._threads if t.is_alive()]
        if alive:
            # Where each is blocked (a request the interrupt cannot reach), so a slow stop
            # can be explained from the log alone.
            frames = sys._current_frames()
            where = {t.name: _innermost(frames.get(t.ident or -1)) for t in alive}
            self._log.warning("k8s watch threads still running at stop", threads=where)

    # --- applying operations (on the loop) ----------------------------------------
    async def _apply(self, op: Operation) -> None:
        state = self._streams.get(op.stream)
        if state is None:
            return
        if state.reflector.resource is MESH_CONFIG_MAP:
            self._apply_mesh_config(state, op)
            return
        stats = self._stats[state.reflector.resource.ident]
        if isinstance(op, Sync):
            slice_ = _Slicer()
            for loc in state.locations - op.objects.keys():
                self.store.remove_location(loc)
                await slice_.pause()
            # Unchanged objects cost nothing: the store sees the same content hash and
            # origin and notifies no one; only real differences become change events.
            # In batches: one store snapshot per batch, not per object.
            batch: dict[str, list[Any]] = {}
            for loc, parsed in op.objects.items():
                if not (isinstance(parsed, Rejection) and state.rejected.get(loc) == op.digests.get(loc)):
                    batch[loc] = self._documents(loc, parsed)
                if len(batch) >= _APPLY_BATCH:
                    self.store.replace_locations(batch)
                    batch = {}
                    await slice_.pause()
            if batch:
                self.store.replace_locations(batch)
            stats.objects += len(op.objects) - len(state.locations)
            state.locations = set(op.objects)
            state.rejected = {loc: op.digests[loc] for loc, p in op.objects.items()
                              if isinstance(p, Rejection) and loc in op.digests}
            stats.relists += 1
            if self.observer is not None and state.reflector.resource.kind.custom:
                res = state.reflector.resource
                self._notify(self.observer.synced, op.stream, res,
                             {loc: (p, op.infos[loc]) for loc, p in op.objects.items() if loc in op.infos})
            if not state.synced:
                state.synced = True
                self._check_synced()
        elif isinstance(op, Put):
            if op.location not in state.locations:
                state.locations.add(op.location)
                stats.objects += 1
            if isinstance(op.parsed, Rejection):
                if state.rejected.get(op.location) != op.digest:  # new rejected content: report it
                    self._put(op.location, op.parsed)
                state.rejected[op.location] = op.digest
            else:
                state.rejected.pop(op.location, None)
                self._put(op.location, op.parsed)
            stats.events += 1
            if self.observer is not None and op.info is not None:
                self._notify(self.observer.put, op.stream, state.reflector.resource, op.location, op.parsed, op.info)
        elif isinstance(op, Delete):
            state.rejected.pop(op.location, None)
            if op.location in state.locations:
                state.locations.discard(op.location)
                stats.objects -= 1
                self.store.remove_location(op.location)
            stats.events += 1
            if self.observer is not None and state.reflector.resource.kind.custom:
                self._notify(self.observer.deleted, op.stream, state.reflector.resource, op.location)

    def _apply_mesh_config(self, state: _StreamState, op: Operation) -> None:
        if isinstance(op, Sync):
            obj = next(iter(op.objects.values()), None)
            state.locations = set(op.objects)
        elif isinstance(op, Put):
            obj = op.parsed
            state.locations.add(op.location)
        else:
            obj = None
            state.locations.discard(op.location)
        told = self._raw_told.get(op.stream)
        if told is not None:
            self._notify(told, obj)
        if isinstance(op, Sync) and not state.synced:
            state.synced = True
            self._check_synced()

    def _notify(self, fn: Callable[..., object], *args: Any) -> None:
        try:
            fn(*args)
        except Exception:  # an observer must never stop the source
            self._log.exception("k8s observer failed")

    def _put(self, location: str, parsed: Item) -> None:
        self.store.replace_location(location, self._documents(location, parsed))

    @staticmethod
    def _documents(location: str, parsed: Item) -> list[Any]:
        if isinstance(parsed, dict):  # only the mesh config's raw stream carries objects
            raise TypeError(f"{location}: a raw API object is not config for the store")
        return [parsed] if parsed is not None else []

    def _check_synced(self) -> None:
        if self._synced.is_set() or not all(s.synced for s in self._streams.values()):
            return
        self._synced.set()
        prefetched = self._prefetch.close() if self._prefetch is not None else None
        self._log.info("k8s synced", objects={k: v.objects for k, v in self._stats.items()}, prefetched=prefetched)


def _innermost(frame: FrameType | None) -> str:
    """`file:line function` of the deepest meshd frame and of the deepest frame overall."""
    if frame is None:
        return "?"
    stack = traceback.extract_stack(frame)
    ours = [f for f in stack if "controlplane" in f.filename]
    picks = ([ours[-1]] if ours else []) + [stack[-1]]
    return " <- ".join(f"{f.filename.rsplit('/', 1)[-1]}:{f.lineno} {f.name}" for f in reversed(picks))
