"""The initial lists, asked for at the very start of `meshd serve`: the API server
answers (and the answers' JSON is decoded) while meshd imports its config types,
generators, gRPC and CA, instead of after (bench/README.md "Start-up").

    prefetch = Prefetch.start(PrefetchSettings(kubeconfig="~/.kube/config", namespaces=None, ...))
    ...                                   # the heavy imports, the CA, the servers
    source = KubernetesSource(prefetch.client, store, prefetch=prefetch, ...)

Only an optimisation, and never a source of truth of its own: each reflector takes the
prefetched list whose collection path and selectors are exactly its own, for its first
list only, and then watches from that list's resourceVersion (client-go's protocol:
nothing between the list and the watch is missed). A list the prefetch did not make,
could not make (an error, a kind not served) or made for other settings is made by the
reflector as always, which also reports every error; the prefetch itself reports
nothing but, once the source is synced, how many of its lists were used. This module
imports no more than the HTTP client, the kubeconfig reader and the kinds table, so
the requests leave early.
"""
from __future__ import annotations

import dataclasses
import queue
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .http import Http
from .resources import (
    RESOURCES,
    SECRETS,
    Discovery,
    KubeResource,
    StreamSpec,
    list_pages,
    named_in,
    served_version,
    stream_specs,
)

if TYPE_CHECKING:
    from .reflector import Listed

Key = tuple[str, str, str, str]  # StreamSpec.key: kind, namespace, label selector, field selector
# Threads making the lists: enough for the big lists to be in flight at once, few enough
# that starting them (each Thread.start waits until the new thread runs) costs little.
WORKERS = 8
# A prefetched list older than this is not handed out: its reflector lists afresh rather
# than watch from far behind (meshd's start takes seconds at most).
MAX_AGE = 60.0


@dataclass(frozen=True)
class PrefetchSettings:
    """What `meshd serve`'s Kubernetes source will watch, as far as the command line says."""

    kubeconfig: str | None  # None: in-cluster, else the default kubeconfig
    namespaces: list[str] | None = None
    label_selector: str | None = None
    watch_secrets: bool = False
    raw_namespace: str = "istio-system"
    raw_maps: tuple[str, ...] = ()
    page_size: int = 500
    request_timeout: float = 30.0


class _Entry:
    def __init__(self) -> None:
        self.done = threading.Event()
        self.version = ""  # the API version listed
        # None: failed, or not served; (items, resourceVersion) as listed, or Listed once parsed
        self.result: tuple[list[dict[str, Any]], str] | Listed | None = None
        self.finished_at = 0.0

    def stale(self, max_age: float) -> bool:
        return time.monotonic() - self.finished_at > max_age


class Prefetch:
    """The prefetched lists of one start, each taken once."""

    def __init__(self, settings: PrefetchSettings, client: Http | None):
        self.settings = settings
        self.client = client
        self.discovery = Discovery(client) if client is not None else None
        self._lock = threading.Lock()
        self._entries: dict[Key, _Entry] = {}
        self.taken = 0
        self.closed = False
        self._will_parse = False
        self._parse = threading.Event()  # set once the parse gate is imported (by the main thread)
        self.child: int | None = None  # start_in_child: the child's pid (reaped once its results are in)

    @classmethod
    def start(cls, settings: PrefetchSettings, make_client: Callable[[str | None], Http] | None = None,
              parse: bool = False) -> Prefetch:
        """Build the client and start WORKERS threads listing the streams; never raises (a
        kubeconfig meshd cannot use is reported by `meshd serve` itself, a moment later).
        `parse`: the threads also parse what they listed, once `enable_parsing` was called."""
        client = _client(settings, make_client)
        pre = cls(settings, client)
        pre._will_parse = parse
        if client is None:
            return pre
        specs = _specs(settings)
        work: queue.SimpleQueue[tuple[StreamSpec, _Entry]] = queue.SimpleQueue()
        for spec in specs:  # the big kinds (Services, EndpointSlices) come first in RESOURCES
            entry = _Entry()
            pre._entries[spec.key()] = entry
            work.put((spec, entry))
        for i in range(min(WORKERS, len(specs))):
            threading.Thread(target=pre._work, args=(work,), name=f"k8s-prefetch-{i}", daemon=True).start()
        return pre

    def _work(self, work: queue.SimpleQueue[tuple[StreamSpec, _Entry]]) -> None:
        while True:
            try:
                spec, entry = work.get_nowait()
            except queue.Empty:
                return
            self._fetch(spec, entry)

    @classmethod
    def start_in_child(cls, settings: PrefetchSettings, make_client: Callable[[str | None], Http] | None = None,
                       ) -> Prefetch:
        """As `start(settings, parse=True)`, but the lists are made, decoded and parsed in a
        child process forked now, on the machine's other core, while this process imports
        the rest of meshd; each parsed list comes back pickled. Call before any thread is
        started (fork copies only the calling thread) and then `enable_parsing`, which
        here lets the results be unpickled (their types imported by this thread first).
        Falls back to `start` if the fork fails."""
        import os

        client = _client(settings, make_client)  # before the fork: no connection is open yet
        if client is None:  # nothing to list with: the reflectors list (and report why)
            return cls(settings, None)
        try:
            read_fd, write_fd = os.pipe()
            pid = os.fork()
        except OSError:
            return cls.start(settings, lambda _: client, parse=True)
        if pid == 0:  # the child: list, parse, send, exit
            os.close(read_fd)
            _child(settings, lambda _: client, write_fd)
        os.close(write_fd)
        pre = cls(settings, client)
        pre._will_parse = True
        pre.child = pid
        for spec in _specs(settings):
            pre._entries[spec.key()] = _Entry()
        threading.Thread(target=pre._receive, args=(read_fd, pid), name="k8s-prefetch-child", daemon=True).start()
        return pre

    def _receive(self, read_fd: int, pid: int) -> None:
        """The child's results, one message per list, unpickled once `enable_parsing` has
        imported their types; at the end (or if the child fails) every list not received
        is done with none (its reflector lists itself), and the child is reaped."""
        import os
        import pickle

        entries = dict(self._entries)
        try:
            with os.fdopen(read_fd, "rb") as pipe:
                self._parse.wait(self.settings.request_timeout)
                while True:
                    head = pipe.read(8)
                    if len(head) < 8:
                        break
                    body = pipe.read(int.from_bytes(head, "big"))
                    what, payload = pickle.loads(body)
                    if what == "discovery" and self.discovery is not None:
                        self.discovery.seed(payload)
                    elif what == "list" and payload[0] in entries:
                        key, version, result, finished_at = payload
                        entry = entries.pop(key)
                        entry.version, entry.result, entry.finished_at = version, result, finished_at
                        entry.done.set()
        except Exception:  # whatever is missing is listed by its reflector
            pass
        finally:
            for entry in entries.values():
                entry.finished_at = time.monotonic()
                entry.done.set()
            try:
                os.waitpid(pid, 0)
            except OSError:
                pass

    def _fetch(self, spec: StreamSpec, entry: _Entry) -> None:
        try:
            assert self.client is not None and self.discovery is not None
            version = served_version(self.client, spec.resource, self.settings.request_timeout, self.discovery)
            if version is None or self.closed:
                return
            entry.version = version
            lister = spec.resource.lister(self.client, version, spec.namespace)
            query = {k: v for k, v in (("label_selector", spec.label_selector),
                                       ("field_selector", spec.field_selector)) if v}
            # resourceVersion "0": served from the API server's watch cache, in one answer
            # (it ignores `limit` then), as client-go's reflectors (istiod's informers)
            # make their first list; the watch goes on from the list's resourceVersion.
            query["resource_version"] = "0"
            items, rv = entry.result = list_pages(lister, query, self.settings.page_size,
                                                  self.settings.request_timeout, lambda: self.closed)
            if self._will_parse and self._parse.wait(self.settings.request_timeout) and not self.closed:
                entry.result = self._parsed(spec, version, items, rv)
        except Exception:  # the reflector lists again, and reports what goes wrong then
            entry.result = None
        finally:
            entry.finished_at = time.monotonic()
            entry.done.set()

    def enable_parsing(self) -> None:
        """Import the parse gate (in the calling thread: the threads never import meshd's
        modules themselves, which two threads importing at once could deadlock on) and let
        the threads parse what they listed: the parse gate's CPU spent while the main
        thread imports and waits, not after the source starts."""
        from . import reflector  # noqa: F401  (the parse gate with it)

        self._parse.set()

    def _parsed(self, spec: StreamSpec, version: str, items: list[dict[str, Any]], rv: str) -> Listed:
        from .reflector import parse_list

        said = _Said()
        listed = parse_list(spec.resource, version, items, rv,
                            named_in(spec.allowed_names) if spec.allowed_names is not None else None,
                            bool(spec.raw_name), said)
        return dataclasses.replace(listed, logs=tuple(said.logs))

    def take(self, key: Key, version: str, timeout: float, max_age: float = MAX_AGE,
             stop: threading.Event | None = None) -> tuple[list[dict[str, Any]], str] | Listed | None:
        """The prefetched list (items and resourceVersion, or already parsed) of exactly
        this stream at this API version, waiting for it while it is being fetched; None
        if there is none (the caller lists itself). Each list is handed out once; `stop`
        (the source stopping) ends the wait."""
        with self._lock:
            entry = self._entries.pop(key, None)
        if entry is None or not _wait(entry.done, timeout, stop):
            return None
        if entry.result is None or entry.version != version or entry.stale(max_age):
            return None
        with self._lock:
            self.taken += 1
        return entry.result

    def take_parsed(self, key: Key, max_age: float = MAX_AGE) -> tuple[str, Listed] | None:
        """(API version, parsed list) of exactly this stream if it is here already, else
        None; never waits. Handed out once, as by `take`."""
        from .reflector import Listed

        with self._lock:
            entry = self._entries.get(key)
            if entry is None or not entry.done.is_set() or not isinstance(entry.result, Listed) \
                    or entry.stale(max_age):
                return None
            del self._entries[key]
            self.taken += 1
        return entry.version, entry.result

    def close(self) -> dict[str, int]:
        """Drop what was not taken; (taken, unused) counts for the log."""
        with self._lock:
            self.closed = True
            unused = len(self._entries)
            self._entries.clear()
            return {"taken": self.taken, "unused": unused}


def _client(settings: PrefetchSettings, make_client: Callable[[str | None], Http] | None) -> Http | None:
    """The API client of the settings' kubeconfig (or in-cluster), None if meshd cannot
    make one: the reflectors then try, and report why."""
    if make_client is None:
        from .client import kube_api_client

        make_client = kube_api_client
    try:
        return make_client(settings.kubeconfig)
    except Exception:
        return None


def _specs(settings: PrefetchSettings) -> list[StreamSpec]:
    """The streams `meshd serve`'s source will watch, as far as the settings say."""
    resources: tuple[KubeResource, ...] = RESOURCES + ((SECRETS,) if settings.watch_secrets else ())
    return stream_specs(resources, settings.namespaces, settings.label_selector, settings.raw_maps,
                        settings.raw_namespace)


def _child(settings: PrefetchSettings, make_client: Callable[[str | None], Http] | None, write_fd: int) -> None:
    """The forked child of start_in_child: the threaded prefetch with parsing; the
    discovery documents sent once every stream has its version, each list as soon as it
    is parsed; it never returns."""
    import os
    import pickle

    status = 1
    try:
        try:  # gone with its parent, whatever happens to that (Linux)
            import ctypes
            import signal

            ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        except Exception:
            pass
        with os.fdopen(write_fd, "wb") as pipe:
            def send(what: str, payload: Any) -> None:
                body = pickle.dumps((what, payload), protocol=pickle.HIGHEST_PROTOCOL)
                pipe.write(len(body).to_bytes(8, "big") + body)
                pipe.flush()

            pre = Prefetch.start(settings, make_client, parse=True)
            pre.enable_parsing()
            pending = dict(pre._entries)
            discovery = pre.discovery
            while pending:
                if discovery is not None and all(e.version or e.done.is_set() for e in pending.values()):
                    # As soon as every stream knows its version: meshd's reflectors start
                    # with these documents instead of asking the API server again.
                    send("discovery", discovery.documents())
                    discovery = None
                for key, entry in list(pending.items()):
                    if entry.done.is_set():
                        del pending[key]
                        if isinstance(entry.result, tuple) or entry.result is None:
                            continue  # not parsed (failed): the reflector lists it
                        send("list", (key, entry.version, entry.result, entry.finished_at))
                time.sleep(0.002)
            if discovery is not None:
                send("discovery", discovery.documents())
        status = 0
    except BaseException:
        pass
    finally:
        os._exit(status)


def _wait(done: threading.Event, timeout: float, stop: threading.Event | None) -> bool:
    deadline = time.monotonic() + timeout
    while not done.wait(min(0.1, max(0.0, deadline - time.monotonic()))):
        if time.monotonic() >= deadline or (stop is not None and stop.is_set()):
            return False
    return True


class _Said:
    """A logger that keeps what it is told, for the reflector to say later (parsing here
    may come before `meshd serve` has set up logging)."""

    def __init__(self) -> None:
        self.logs: list[tuple[str, str, dict[str, Any]]] = []

    def warning(self, event: str, **kw: Any) -> None:
        self.logs.append(("warning", event, kw))

    def exception(self, event: str, **kw: Any) -> None:
        self.logs.append(("error", event, {**kw, "error": traceback.format_exc(limit=-3)}))
