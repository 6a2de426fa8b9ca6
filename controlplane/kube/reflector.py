"""One list+watch of one kind (in one namespace, or all), in its own thread.

The protocol, as client-go's reflector speaks it:
- list (paged) -> the complete set of objects and the list's resourceVersion;
- watch from that resourceVersion; every event carries the object's new resourceVersion,
  BOOKMARK events only move it forward (the server says "nothing for you up to here");
- the server ends a watch after timeoutSeconds: watch again from the last version seen;
- the connection drops, or the server fails: back off (exponential, jittered, capped)
  and watch again from the last version seen, so nothing is missed or seen twice;
- 410 Gone (an ERROR event with code 410, or an HTTP 410) means the server no longer
  has the history since our version: list again, and let the consumer diff the new
  complete set against what it holds (objects deleted meanwhile disappear).

Why not `kubernetes.watch.Watch().stream`: it turns every event into the typed model
(only to be turned back into dicts; CRDs excepted), retries a 410 once by itself from
the same stale version when no timeout is given, and with deserialize=False it fails on
ERROR events (KeyError 'raw_object', kubernetes 37). Reading the lines ourselves keeps all three decisions here, in one place.

The reflector only reads and parses (off the event loop); it hands what it found to
`emit` as Sync / Put / Delete operations, which the source applies to the store on the
loop, in order.
"""
from __future__ import annotations

import json
import random
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import structlog

from ..config.objects import ConfigKey, Origin, Rejection
from ..config.parse import Parsed, content_hash, parse_document
from ..names import DEFAULT_NAMESPACE
from .http import Http, StatusError, as_http
from .resources import (
    Discovery,
    KubeResource,
    Lister,
    ListStopped,
    ObjectInfo,
    as_document,
    list_pages,
    object_info,
    object_ref,
    served_version,
)

if TYPE_CHECKING:
    from .prefetch import Prefetch

# What a stream hands on per object: the parse gate's verdict, or (a raw stream) the API
# object itself.
Item = Parsed | dict[str, Any]


@dataclass(frozen=True)
class Sync:
    """The complete set of objects of one stream (after a list): anything the stream
    held before and is not in `objects` is gone."""

    stream: str
    objects: dict[str, Item]  # location -> parsed document (raw: the object)
    reason: str
    resource_version: str
    infos: dict[str, ObjectInfo] = field(default_factory=dict)  # Istio kinds: location -> uid, status...
    digests: dict[str, str] = field(default_factory=dict)  # location -> content hash of a rejected document


@dataclass(frozen=True)
class Put:
    stream: str
    location: str
    parsed: Item
    info: ObjectInfo | None = None  # Istio kinds only
    digest: str = ""  # content hash of a rejected document (the same rejection is not reported twice)


@dataclass(frozen=True)
class Delete:
    stream: str
    location: str


Operation = Sync | Put | Delete


class Gone(Exception):
    """Our resourceVersion is older than the server's history: list again."""


class NotServed(Exception):
    """404 on list/watch: the CRD (or version) went away; discover again."""


class Stopped(Exception):
    """The source is stopping: leave the current step."""


class WatchError(Exception):
    """An ERROR event other than 410."""


@dataclass
class ReflectorOptions:
    backoff_initial: float = 0.5
    backoff_max: float = 30.0
    # The server ends each watch after a random 5-10 min (client-go's spread), so a
    # thousand proxies' control planes do not all re-watch at the same instant.
    watch_timeout: tuple[int, int] = (300, 600)
    request_timeout: float = 30.0  # list / discovery; a watch gets watch timeout + this
    page_size: int = 500
    rediscover_interval: float = 60.0  # how often to look again for a CRD not installed
    # Longest wait of the first watch for the source's go (KubernetesSource.start_watching):
    # a start that never gets ready (a kind that cannot be listed) still watches the rest.
    first_watch_hold: float = 10.0


class Reflector:
    def __init__(
        self,
        resource: KubeResource,
        namespace: str | None,
        api: Http,
        emit: Callable[[Operation], None],
        stop: threading.Event,
        log: structlog.typing.FilteringBoundLogger,
        label_selector: str | None = None,
        accept: Callable[[dict[str, Any]], bool] | None = None,
        options: ReflectorOptions | None = None,
        field_selector: str | None = None,
        raw: bool = False,
        discovery: Discovery | None = None,
        prefetch: Prefetch | None = None,
        watch_after: threading.Event | None = None,
    ):
        self.resource = resource
        self.namespace = namespace
        self.stream = f"{resource.ident}/{namespace}" if namespace else resource.ident
        self._api = as_http(api)  # a `kubernetes` ApiClient handed over is wrapped (kube/http.py)
        self._emit = emit
        self._stop = stop
        self._label_selector = label_selector or None
        self._accept = accept
        self._field_selector = field_selector or None
        # raw: hand on the API object itself (a dict) instead of the parse gate's verdict,
        # for what is not config of the store (the mesh config's ConfigMap).
        self._raw = raw
        self._opt = options or ReflectorOptions()
        self._discovery = discovery  # API discovery shared with the source's other reflectors
        self._prefetch = prefetch  # the first list, asked for at start (kube/prefetch.py)
        # The first watch waits for this (at most first_watch_hold): the watch goes on from
        # the list's resourceVersion, so nothing is missed meanwhile (the source's doc).
        self._watch_after = watch_after
        self._log = log.bind(kind=resource.ident, namespace=namespace) if namespace else log.bind(kind=resource.ident)
        self.version: str | None = None  # API version watched, once discovered
        self.resource_version: str | None = None  # None: list before watching
        self._relist_reason = "initial"
        self._resp: Any = None  # the open watch response, so stop can cut it
        self._progress = False  # the current watch delivered at least one event
        self.errors = 0

    # --- thread entry -------------------------------------------------------------
    def run(self) -> None:
        failures = 0  # consecutive failed attempts, for the backoff
        while not self._stop.is_set():
            self._progress = listed = False
            try:
                if self.version is None and not self._discover():
                    continue
                if self.resource_version is None:
                    self._list()
                    listed = True
                if self._watch_after is not None:
                    self._watch_after.wait(self._opt.first_watch_hold)
                    self._watch_after = None
                    if self._stop.is_set():
                        break
                self._watch()
                failures = 0  # the server ended the watch (timeoutSeconds): watch again
            except Gone as e:
                self.resource_version = None
                self._relist_reason = f"resourceVersion expired: {e}"
                if listed and not self._progress:
                    # Expired right after a fresh list: a server in trouble; do not spin.
                    failures += 1
                    self._sleep(self._backoff(failures))
            except Exception as e:  # every failure is logged and retried
                if self._stop.is_set():
                    break
                if self._progress:
                    failures = 0  # the watch worked for a while: start the backoff afresh
                failures += 1
                self.errors += 1
                if isinstance(e, NotServed):
                    self.version, self.resource_version = None, None
                    self._relist_reason = f"rediscovered after {e}"
                delay = self._backoff(failures)
                self._log.warning("k8s watch error", error=_describe(e), backoff=round(delay, 3),
                                  resourceVersion=self.resource_version)
                self._sleep(delay)

    def interrupt(self) -> None:
        """Called from another thread after `stop` is set: unblock a watch read."""
        resp = self._resp
        if resp is None:
            return
        try:
            resp.shutdown()  # urllib3 >= 2.3: shut the socket down under the reader
        except AttributeError:
            sock = getattr(getattr(resp, "connection", None), "sock", None)
            if sock is not None:
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
        except Exception:  # already closed
            pass

    # --- steps --------------------------------------------------------------------
    def _discover(self) -> bool:
        version = served_version(self._api, self.resource, self._opt.request_timeout, self._discovery)
        if version is None:
            # Not installed: an empty set is the truth for now (and counts as synced);
            # look again later, the CRD may be installed after meshd starts.
            report = self._log.debug if self.resource.optional or self.resource.crd_optional else self._log.warning
            report("k8s kind not served", group=self.resource.group, retry_in=self._opt.rediscover_interval)
            self._emit(Sync(self.stream, {}, "kind not served", ""))
            self._sleep(self._opt.rediscover_interval)
            return False
        self.version = version
        if self.resource.needs_discovery:
            self._log.debug("k8s version discovered", apiVersion=self.resource.api_version(version))
        return True

    def _lister(self) -> Lister:
        return self.resource.lister(self._api, self._version(), self.namespace)

    def _version(self) -> str:
        """The API version watched; listing and watching come after its discovery."""
        assert self.version is not None, "list or watch before discovery"
        return self.version

    def prefetch_key(self) -> tuple[str, str, str, str]:
        """This stream's key among the prefetched lists (StreamSpec.key)."""
        return (self.resource.ident, self.namespace or "", self._label_selector or "", self._field_selector or "")

    def adopt(self, version: str, listed: Listed) -> None:
        """Before the thread starts: take the prefetch's parsed first list of this stream
        (at API `version`) as `_list` takes it; the thread then only watches. The caller
        starts the thread when it may watch (KubernetesSource holds it): not held twice."""
        self.version = version
        self._prefetch = None
        self._watch_after = None
        self._listed(listed.replay(self._log), prefetched=True)

    def _list(self) -> None:
        got = None
        if self._prefetch is not None:  # the first list only (kube/prefetch.py)
            got = self._prefetch.take(self.prefetch_key(), self._version(), self._opt.request_timeout,
                                      stop=self._stop)
            self._prefetch = None
        if got is not None:
            listed = got.replay(self._log) if isinstance(got, Listed) else \
                parse_list(self.resource, self._version(), got[0], got[1], self._accept, self._raw, self._log)
        else:
            query = {k: v for k, v in (("label_selector", self._label_selector),
                                       ("field_selector", self._field_selector)) if v}
            try:
                items, rv = list_pages(self._lister(), query, self._opt.page_size, self._opt.request_timeout,
                                       self._stop.is_set)
            except ListStopped:
                raise Stopped() from None
            except StatusError as e:
                raise _classify(e) from e
            listed = parse_list(self.resource, self._version(), items, rv, self._accept, self._raw, self._log)
        self._listed(listed, prefetched=got is not None)

    def _listed(self, listed: Listed, prefetched: bool) -> None:
        objects, rv = listed.objects, listed.resource_version
        # The initial lists at debug: "k8s synced" gives every kind's count once they are in.
        log = self._log.debug if self._relist_reason == "initial" else self._log.info
        log("k8s relist", reason=self._relist_reason, objects=len(objects), resourceVersion=rv, prefetched=prefetched)
        self._emit(Sync(self.stream, objects, self._relist_reason, rv, listed.infos, listed.digests))
        self.resource_version = rv or None
        self._relist_reason = "relist"

    def _watch(self) -> None:
        """One watch request, until the server ends it."""
        timeout = random.randint(*self._opt.watch_timeout)
        query: dict[str, Any] = {
            "watch": True,
            "resource_version": self.resource_version,
            "allow_watch_bookmarks": True,
            "timeout_seconds": timeout,
            # A silent dead connection must not hang us forever: the server sends at
            # least the end of the stream within timeoutSeconds.
            "_request_timeout": (self._opt.request_timeout, timeout + self._opt.request_timeout),
        }
        if self._label_selector:
            query["label_selector"] = self._label_selector
        if self._field_selector:
            query["field_selector"] = self._field_selector
        started = time.monotonic()
        try:
            resp = self._lister()(**query)
        except StatusError as e:
            raise _classify(e) from e
        self._resp = resp
        self._log.debug("k8s watch started", resourceVersion=self.resource_version, timeoutSeconds=timeout)
        try:
            if self._stop.is_set():  # stop came while connecting: interrupt missed us
                return
            for line in _lines(resp):
                if self._stop.is_set():
                    break
                if line.strip():
                    self._event(line)
                    self._progress = True
        finally:
            self._resp = None
            try:
                resp.release_conn()
            except Exception:
                pass
        if not self._progress and time.monotonic() - started < 1.0 and not self._stop.is_set():
            # A server that ends watches at once, without a word, must not make us spin.
            raise WatchError("watch ended immediately without events")

    def _event(self, line: str) -> None:
        try:
            event = json.loads(line)
            typ, obj = event["type"], event["object"]
        except (ValueError, KeyError, TypeError) as e:
            raise WatchError(f"malformed watch event: {e}") from e
        if typ == "ERROR":
            code = obj.get("code") if isinstance(obj, dict) else None
            detail = f"{obj.get('reason', '')}: {obj.get('message', '')}" if isinstance(obj, dict) else str(obj)
            if code == 410:
                raise Gone(detail)
            raise WatchError(f"ERROR event {code} {detail}")
        _, _, rv = object_ref(obj)
        if typ == "BOOKMARK":
            if rv:
                self.resource_version = rv
            return
        if typ in ("ADDED", "MODIFIED"):
            if self._accept is not None and not self._accept(obj):
                # Outside our scope (client-side filter): forget it if we had it.
                self._emit(Delete(self.stream, self._location(obj)))
            else:
                api_version = self.resource.api_version(self._version())
                loc, parsed, digest = self._parse(obj, api_version)
                if loc:
                    info = object_info(obj, api_version) if self.resource.kind.custom else None
                    self._emit(Put(self.stream, loc, parsed, info, digest))
        elif typ == "DELETED":
            self._emit(Delete(self.stream, self._location(obj)))
        else:
            self._log.warning("k8s unknown watch event", type=typ)
        if rv:
            self.resource_version = rv

    # --- helpers ------------------------------------------------------------------
    def _location(self, obj: dict[str, Any]) -> str:
        ns, name, _ = object_ref(obj)
        return self.resource.location(ns, name or "")

    def _parse(self, obj: dict[str, Any], api_version: str) -> tuple[str, Item, str]:
        return parse_object(self.resource, self._raw, obj, api_version, self._log)

    def _backoff(self, failures: int) -> float:
        # Exponential with "equal jitter": between half and all of the capped step.
        step = min(self._opt.backoff_max, self._opt.backoff_initial * 2 ** (failures - 1))
        return random.uniform(step / 2, step)

    def _sleep(self, seconds: float) -> None:
        self._stop.wait(seconds)


@dataclass(frozen=True)
class Listed:
    """A complete list, parsed: what its Sync carries. `logs`: what parsing it had to say
    (kube/prefetch.py parses before logging is set up; the reflector says it later)."""

    objects: dict[str, Item]
    infos: dict[str, ObjectInfo]
    digests: dict[str, str]
    resource_version: str
    logs: tuple[tuple[str, str, dict[str, Any]], ...] = ()

    def replay(self, log: structlog.typing.FilteringBoundLogger) -> Listed:
        for level, event, kw in self.logs:
            getattr(log, level)(event, **kw)
        return self


def parse_list(resource: KubeResource, version: str, items: list[dict[str, Any]], resource_version: str,
               accept: Callable[[dict[str, Any]], bool] | None, raw: bool, log: Any) -> Listed:
    """The items of a complete list through the parse gate (raw: as they are), with the
    info of each custom object (its status is written) and the digest of each rejection."""
    api_version = resource.api_version(version)
    objects: dict[str, Item] = {}
    infos: dict[str, ObjectInfo] = {}
    digests: dict[str, str] = {}
    for item in items:
        if accept is not None and not accept(item):
            continue
        loc, parsed, digest = parse_object(resource, raw, item, api_version, log)
        if loc:
            objects[loc] = parsed
            if digest:
                digests[loc] = digest
            if resource.kind.custom:  # Istio and Gateway API kinds: their status is written
                infos[loc] = object_info(item, api_version)
    return Listed(objects, infos, digests, resource_version)


def parse_object(resource: KubeResource, raw: bool, obj: dict[str, Any], api_version: str,
                 log: Any) -> tuple[str, Item, str]:
    """(location, parse result, digest): the digest (content hash of the document) only
    for a rejection, so that the same rejected content is reported once, not again for
    every status write or relist of it."""
    ns, name, _ = object_ref(obj)
    if not name:
        log.warning("k8s object without a name ignored")
        return "", None, ""
    loc = resource.location(ns, name)
    if raw:
        return loc, obj, ""
    origin = Origin("kubernetes", loc)
    doc = as_document(obj, api_version, resource.name)
    try:
        parsed = parse_document(doc, origin, decoded_json=True)  # the API's JSON: no normalising copy
    except Exception as e:  # a validator bug must not wedge the watch on one event
        log.exception("k8s object could not be parsed", location=loc)
        namespace = (ns or DEFAULT_NAMESPACE) if resource.kind.namespaced else ""
        parsed = Rejection(origin, ConfigKey(resource.name, namespace, name), "", f"internal error while parsing: {e}")
    return loc, parsed, content_hash(doc) if isinstance(parsed, Rejection) else ""


def _classify(e: StatusError) -> Exception:
    if e.status == 410:
        return Gone(f"HTTP 410 {e.reason or ''}".strip())
    if e.status == 404:
        return NotServed(f"HTTP 404 {e.reason or ''}".strip())
    return e


def _describe(e: BaseException) -> str:
    if isinstance(e, StatusError):
        return str(e)
    return f"{type(e).__name__}: {e}"


def _lines(resp: Any) -> Iterator[str]:
    """Watch events, one JSON document per line, as the chunks arrive."""
    buf = bytearray()
    for chunk in resp.stream(amt=None, decode_content=False):
        buf.extend(chunk)
        while True:
            nl = buf.find(b"\n")
            if nl < 0:
                break
            line, buf = bytes(buf[:nl]), buf[nl + 1:]
            yield line.decode("utf-8", errors="replace")
    if buf.strip():
        yield buf.decode("utf-8", errors="replace")
