"""WorkloadGroup auto-registration: a proxy joining as a member of a WorkloadGroup is a
WorkloadEntry for as long as it stays connected (istiod's pilot/pkg/autoregistration).

A proxy whose node metadata names `AUTO_REGISTER_GROUP` gets, when its ADS stream opens,
the WorkloadEntry `<group>-<ip>[-<network>]` in its NAMESPACE, made from the group's
`template` (labels, serviceAccount, network, locality, ports, weight) with the proxy's
IP as its address. Labels merge as istiod merges them: template < the group's
`metadata.labels` < the node's LABELS; the node's NETWORK and locality win over the
template's. The entry carries istiod's annotations: `istio.io/autoRegistrationGroup`
(the group), `istio.io/workloadController` (the meshd instance holding the stream),
`istio.io/connectedAt`, and after the stream ends `istio.io/disconnectedAt`. It is
deleted once the proxy stayed away for the grace period (istiod's
PILOT_WORKLOAD_ENTRY_GRACE_PERIOD, 10 s; `meshd serve --workload-entry-grace-period`);
a proxy that comes back in time keeps its entry.

Only a verified identity may register (istiod's ensureProxyCanControlEntry with
VALIDATE_WORKLOAD_ENTRY_IDENTITY on): the stream must come in on the secure port, its
namespace must be the group's, and when the template names a serviceAccount it must be
the one the proxy authenticated as. Otherwise the stream is refused (ProxyRefused) with a
message naming the group, the field and both identities.

Where entries live is the backend's business (`EntryBackend`): in directory mode an
in-memory location of the config store (`StoreEntries`, this module), so the entry is
in the config snapshot like any file's; in Kubernetes mode the API server
(kube/autoregistration.py), whose watch then brings it into the store. The server only
reports connects and disconnects (server/host.py `registrations`); app.py wires it here.
"""
from __future__ import annotations

import asyncio
import copy
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

import structlog
from prometheus_client import CollectorRegistry
from prometheus_client import Counter as PromCounter

from .. import names
from ..config import kinds
from ..config.objects import ConfigObject, Origin
from ..config.parse import parse_document
from ..config.store import ConfigStore
from ..model.proxy import Proxy, ProxyRefused

log = structlog.get_logger("meshd.autoregistration")

DEFAULT_GRACE_PERIOD = 10.0  # seconds (istiod's PILOT_WORKLOAD_ENTRY_GRACE_PERIOD)
MAX_NAME = 253  # a Kubernetes object name; istiod keeps the end of a longer one
LOCATION_PREFIX = "autoregistration"  # the store locations of StoreEntries

GroupLookup = Callable[[str, str], ConfigObject | None]  # (namespace, name) -> the WorkloadGroup


class Identity(Protocol):
    namespace: str
    service_account: str

    @property
    def spiffe_uri(self) -> str: ...


# --- the pure part: names, documents, identity ---------------------------------------
def format_time(t: datetime) -> str:
    """RFC 3339 with nanoseconds, as istiod writes its annotations (time.RFC3339Nano)."""
    return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f000Z")


def parse_time(text: str | None) -> datetime | None:
    """An RFC 3339 time (any number of fractional digits, Go trims zeros); None if not one."""
    if not text:
        return None
    s = text.strip().replace("Z", "+00:00")
    head, dot, rest = s.partition(".")
    if dot:  # Python reads at most microseconds
        digits = "".join(c for c in rest if c.isdigit())
        s = f"{head}.{digits[:6].ljust(6, '0')}{rest[len(digits):]}"
    try:
        t = datetime.fromisoformat(s)
    except ValueError:
        return None
    return t if t.tzinfo else t.replace(tzinfo=UTC)


def group_of(proxy: Proxy) -> str:
    value = proxy.metadata.get(names.META_AUTO_REGISTER_GROUP)
    return value if isinstance(value, str) else ""


def network_of(proxy: Proxy) -> str:
    value = proxy.metadata.get("NETWORK")
    return value if isinstance(value, str) else ""


def entry_name(group: str, ip: str, network: str = "") -> str:
    """istiod's autoregisteredWorkloadEntryName: `<group>-<ip>[-<network>]`, an IPv6
    address's colons as dashes, the end kept when longer than a Kubernetes name."""
    parts = [group, ip.replace(":", "-")] + ([network] if network else [])
    name = "-".join(parts)
    return name[-MAX_NAME:]


def entry_from_group(group: ConfigObject, proxy: Proxy, name: str) -> dict[str, Any]:
    """The WorkloadEntry document (apiVersion, kind, metadata, spec) the group's template
    makes for `proxy` (istiod's workloadEntryFromGroup), without connection annotations.
    Reads the group's typed reading (config/types/workloadentry.py WorkloadGroup)."""
    wg = group.typed
    t = wg.template
    # node LABELS > the group's metadata.labels > the template's labels
    labels = {**t.labels, **wg.labels, **proxy.labels}
    spec: dict[str, Any] = {"address": proxy.ip}
    if labels:
        spec["labels"] = labels
    if t.ports:
        spec["ports"] = dict(t.ports)
    if t.weight:
        spec["weight"] = t.weight
    if t.service_account:
        spec["serviceAccount"] = t.service_account
    network = network_of(proxy) or t.network
    if network:
        spec["network"] = network
    locality = str(proxy.locality) or t.locality
    if locality:
        spec["locality"] = locality
    annotations = {names.AUTO_REGISTRATION_GROUP_ANNOTATION: group.name, **wg.annotations}
    metadata: dict[str, Any] = {"name": name, "namespace": proxy.namespace, "labels": labels,
                                "annotations": annotations}
    return {"apiVersion": f"{kinds.WORKLOAD_ENTRY.group}/v1", "kind": kinds.WORKLOAD_ENTRY.kind,
            "metadata": metadata, "spec": spec}


def identity_problem(identity: Identity | None, what: str, namespace: str, service_account: str) -> str | None:
    """Why a proxy with `identity` may not control `what` (a WorkloadEntry, or the one a
    WorkloadGroup makes) of `namespace` whose serviceAccount is `service_account` ("":
    any), or None. istiod's ensureProxyCanControlEntry."""
    if identity is None:
        return (f"{what}: registration requires a verified identity: connect to meshd's secure xDS port "
                "with the workload's token (the plaintext port proves no identity)")
    if identity.namespace != namespace:
        return f"{what}: namespace {namespace!r} is not the proxy's authenticated namespace " \
               f"{identity.namespace!r} ({identity.spiffe_uri})"
    if service_account and identity.service_account != service_account:
        return f"{what}: serviceAccount {service_account!r} is not the proxy's authenticated service account " \
               f"{identity.service_account!r} ({identity.spiffe_uri})"
    return None


def connected_meta(doc: dict[str, Any], instance: str, at: datetime) -> dict[str, Any]:
    """`doc` marked as connected to `instance` at `at` (istiod's setConnectMeta)."""
    out = copy.deepcopy(doc)
    annotations = out.setdefault("metadata", {}).setdefault("annotations", {})
    annotations[names.WORKLOAD_CONTROLLER_ANNOTATION] = instance
    annotations[names.CONNECTED_AT_ANNOTATION] = format_time(at)
    annotations.pop(names.DISCONNECTED_AT_ANNOTATION, None)
    return out


def disconnected_meta(doc: dict[str, Any], at: datetime) -> dict[str, Any]:
    out = copy.deepcopy(doc)
    annotations = out.setdefault("metadata", {}).setdefault("annotations", {})
    annotations.pop(names.CONNECTED_AT_ANNOTATION, None)
    annotations[names.DISCONNECTED_AT_ANNOTATION] = format_time(at)
    return out


def annotations_of(doc: Mapping[str, Any]) -> Mapping[str, str]:
    md = doc.get("metadata")
    ann = md.get("annotations") if isinstance(md, Mapping) else None
    return ann if isinstance(ann, Mapping) else {}


def expired(doc: Mapping[str, Any], grace_period: float, now: datetime) -> bool:
    """An auto-registered entry whose proxy left more than `grace_period` ago and has not
    come back (istiod's shouldCleanupEntry, without its max-connection-age rule)."""
    ann = annotations_of(doc)
    if not ann.get(names.AUTO_REGISTRATION_GROUP_ANNOTATION) or ann.get(names.CONNECTED_AT_ANNOTATION):
        return False
    left = parse_time(ann.get(names.DISCONNECTED_AT_ANNOTATION))
    return left is not None and (now - left).total_seconds() >= grace_period


# --- where entries live ----------------------------------------------------------------
class EntryBackend(Protocol):
    async def get(self, namespace: str, name: str) -> dict[str, Any] | None: ...

    async def put(self, doc: dict[str, Any]) -> None:
        """Create the entry or replace the one of that name."""

    async def delete(self, namespace: str, name: str, unless: Callable[[dict[str, Any]], bool]) -> bool:
        """Delete the entry unless `unless(current)` says it came back; whether it was deleted."""


class StoreEntries:
    """Directory mode: each entry is a location of its own in the config store (never a
    file: the last good copies and the directory scan leave it alone), so it reaches the
    snapshot, /debug/configz and the generators as any WorkloadEntry does. Gone with the
    process, as the connections it stands for."""

    def __init__(self, store: ConfigStore):
        self.store = store
        self._docs: dict[tuple[str, str], dict[str, Any]] = {}

    @staticmethod
    def location(namespace: str, name: str) -> str:
        return f"{LOCATION_PREFIX}/{namespace}/{name}"

    async def get(self, namespace: str, name: str) -> dict[str, Any] | None:
        doc = self._docs.get((namespace, name))
        return copy.deepcopy(doc) if doc is not None else None

    async def put(self, doc: dict[str, Any]) -> None:
        md = doc["metadata"]
        key = (md["namespace"], md["name"])
        loc = self.location(*key)
        self._docs[key] = copy.deepcopy(doc)
        parsed = parse_document(doc, Origin(LOCATION_PREFIX, loc))
        self.store.replace_location(loc, [parsed] if parsed is not None else [])

    async def delete(self, namespace: str, name: str, unless: Callable[[dict[str, Any]], bool]) -> bool:
        doc = self._docs.get((namespace, name))
        if doc is None or unless(doc):
            return False
        del self._docs[(namespace, name)]
        self.store.remove_location(self.location(namespace, name))
        return True

    def entries(self) -> list[dict[str, Any]]:
        return [copy.deepcopy(d) for _, d in sorted(self._docs.items())]


# --- the lifecycle ----------------------------------------------------------------------
class RegistrationMetrics:
    """istiod's auto-registration counters, under its names (meshd's /metrics)."""

    def __init__(self, registry: CollectorRegistry):
        r = registry
        self.success = PromCounter("auto_registration_success", "Total number of successful auto registrations.",
                                   registry=r)
        self.updates = PromCounter("auto_registration_updates", "Total number of auto registration updates.",
                                   registry=r)
        self.unregistrations = PromCounter("auto_registration_unregister", "Total number of unregistrations.",
                                           registry=r)
        self.deletes = PromCounter("auto_registration_deletes",
                                   "Total number of auto registration cleaned up by periodic timer.", registry=r)
        self.errors = PromCounter("auto_registration_errors", "Total number of auto registration errors.",
                                  registry=r)


@dataclass(frozen=True)
class Registered:
    namespace: str
    name: str
    group: str
    connected_at: datetime


class WorkloadRegistry:
    """Told by the ADS server of every stream that opens (`connected`, which may refuse
    it) and ends (`disconnected`); keeps the WorkloadEntries of the proxies that joined
    through a WorkloadGroup. Runs on the event loop."""

    def __init__(self, backend: EntryBackend, groups: GroupLookup, *, instance: str,
                 grace_period: float = DEFAULT_GRACE_PERIOD, clock: Callable[[], datetime] | None = None,
                 registry: CollectorRegistry | None = None):
        self.backend = backend
        self.metrics = RegistrationMetrics(registry if registry is not None else CollectorRegistry())
        self.groups = groups
        self.instance = instance
        self.grace_period = grace_period
        self._clock = clock or (lambda: datetime.now(UTC))
        # Streams open per entry: a proxy reconnecting opens the new stream before the
        # old one is noticed gone (istiod's adsConnections).
        self._streams: Counter[tuple[str, str]] = Counter()
        self._by_proxy: dict[str, list[Registered]] = {}  # proxy id -> its registrations, oldest first
        self._cleanups: dict[tuple[str, str], asyncio.Task[None]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self.registered = 0  # entries created (metrics of a kind: tests and /debug read them)
        self.deleted = 0

    async def connected(self, proxy: Proxy, identity: Identity | None) -> None:
        """Register `proxy` if it names a WorkloadGroup; ProxyRefused when it may not."""
        group_name = group_of(proxy)
        if not group_name:
            return
        if not proxy.ip:
            raise ProxyRefused(f"auto-registration of {proxy.id} failed: the node has no IP address "
                               "(node id or INSTANCE_IPS)", permission=False)
        ns, now = proxy.namespace, self._clock()
        name = entry_name(group_name, proxy.ip, network_of(proxy))
        what = f"WorkloadEntry {ns}/{name}"
        current = await self.backend.get(ns, name)
        if current is None:
            group = self.groups(ns, group_name)
            if group is None:
                self.metrics.errors.inc()
                raise ProxyRefused(f"auto-registration of {proxy.id} failed: cannot find WorkloadGroup "
                                   f"{ns}/{group_name} (node metadata {names.META_AUTO_REGISTER_GROUP})",
                                   permission=False)
            doc = entry_from_group(group, proxy, name)
            what = f"WorkloadGroup {ns}/{group_name} template"
        else:
            doc = current
        raw_spec = doc.get("spec")
        spec: Mapping[str, Any] = raw_spec if isinstance(raw_spec, Mapping) else {}
        raw_sa = spec.get("serviceAccount")
        sa = raw_sa if isinstance(raw_sa, str) else ""
        problem = identity_problem(identity, what, str(doc["metadata"].get("namespace") or ns), sa)
        if problem is not None:
            log.warning("auto-registration refused", proxy=proxy.id, group=f"{ns}/{group_name}", reason=problem)
            raise ProxyRefused(problem, permission=True)
        last = parse_time(annotations_of(doc).get(names.CONNECTED_AT_ANNOTATION))
        key = (ns, name)
        self._streams[key] += 1
        self._by_proxy.setdefault(proxy.id, []).append(Registered(ns, name, group_name, now))
        cleanup = self._cleanups.pop(key, None)
        if cleanup is not None:
            cleanup.cancel()
        if last is not None and now < last:
            return  # a later connection (here or at another replica) already wrote its time
        try:
            await self.backend.put(connected_meta(doc, self.instance, now))
        except BaseException as e:
            # Not registered after all (the server will report no disconnect); if the
            # write did land (a cancelled stream), the entry is marked disconnected.
            if self._forget(proxy.id, key):
                self._spawn(self._unregister(Registered(ns, name, group_name, now), self._clock()))
            if isinstance(e, Exception):
                self.metrics.errors.inc()
                raise ProxyRefused(f"auto-registration of {proxy.id} failed: writing WorkloadEntry {ns}/{name}: {e}",
                                   permission=False) from e
            raise
        if current is None:
            self.registered += 1
            self.metrics.success.inc()
            log.info("auto-registered WorkloadEntry", entry=f"{ns}/{name}", group=group_name, proxy=proxy.id,
                     address=proxy.ip)
        else:
            self.metrics.updates.inc()
            log.info("updated auto-registered WorkloadEntry", entry=f"{ns}/{name}", proxy=proxy.id)

    def disconnected(self, proxy: Proxy) -> None:
        """A stream of `proxy` ended (synchronous: the server calls it while it forgets the
        stream). The last stream of an entry marks it disconnected; the entry goes after
        the grace period unless the proxy comes back."""
        regs = self._by_proxy.get(proxy.id)
        if not regs:
            return
        reg = regs[0]
        key = (reg.namespace, reg.name)
        if not self._forget(proxy.id, key):
            return  # another stream of this entry is still open
        self._spawn(self._unregister(reg, self._clock()))

    def _forget(self, proxy_id: str, key: tuple[str, str]) -> bool:
        """Drop one stream of `key`; whether it was the last."""
        regs = self._by_proxy.get(proxy_id, [])
        for i, r in enumerate(regs):
            if (r.namespace, r.name) == key:
                del regs[i]
                break
        if not regs:
            self._by_proxy.pop(proxy_id, None)
        self._streams[key] -= 1
        if self._streams[key] > 0:
            return False
        del self._streams[key]
        return True

    def _spawn(self, coro: Any) -> asyncio.Task[None]:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _unregister(self, reg: Registered, at: datetime) -> None:
        key = (reg.namespace, reg.name)
        try:
            doc = await self.backend.get(*key)
            if doc is None or self._streams.get(key):
                return
            ann = annotations_of(doc)
            if ann.get(names.WORKLOAD_CONTROLLER_ANNOTATION) != self.instance:
                return  # reconnected to another meshd, which controls it now
            last = parse_time(ann.get(names.CONNECTED_AT_ANNOTATION))
            if last is not None and last > reg.connected_at:
                return  # a newer connection wrote its time after this one
            await self.backend.put(disconnected_meta(doc, at))
            if ann.get(names.AUTO_REGISTRATION_GROUP_ANNOTATION):
                self.metrics.unregistrations.inc()
            log.info("WorkloadEntry disconnected", entry=f"{reg.namespace}/{reg.name}",
                     grace_period=self.grace_period)
        except Exception as e:  # a backend failure must not reach the server
            self.metrics.errors.inc()
            log.warning("marking WorkloadEntry disconnected failed", entry=f"{reg.namespace}/{reg.name}", error=str(e))
        if key not in self._streams:
            self._cleanups[key] = self._spawn(self._cleanup_later(key))

    async def _cleanup_later(self, key: tuple[str, str]) -> None:
        await asyncio.sleep(self.grace_period)
        self._cleanups.pop(key, None)
        await self.cleanup(*key)

    async def cleanup(self, namespace: str, name: str) -> bool:
        """Delete the entry if it is still disconnected past the grace period."""
        now = self._clock()
        try:
            gone = await self.backend.delete(namespace, name,
                                             unless=lambda doc: not expired(doc, self.grace_period, now))
        except Exception as e:
            self.metrics.errors.inc()
            log.warning("cleaning up auto-registered WorkloadEntry failed", entry=f"{namespace}/{name}", error=str(e))
            return False
        if gone:
            self.deleted += 1
            self.metrics.deletes.inc()
            log.info("cleaned up auto-registered WorkloadEntry", entry=f"{namespace}/{name}")
        return gone

    def status(self) -> dict[str, Any]:
        """For /debug/configz: the entries this meshd holds streams for."""
        return {"instance": self.instance, "gracePeriodSeconds": self.grace_period,
                "connected": sorted(f"{ns}/{name}" for ns, name in self._streams),
                "pendingCleanup": sorted(f"{ns}/{name}" for ns, name in self._cleanups),
                "registered": self.registered, "deleted": self.deleted}

    async def close(self) -> None:
        for t in list(self._tasks):
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
