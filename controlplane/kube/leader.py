"""Leader election on a `coordination.k8s.io/v1` Lease, as client-go's leaderelection does.

Every meshd replica serves xDS. Work that must happen once per cluster (writing status
and events, publishing the trust bundle ConfigMaps) runs only on the replica holding
the Lease `<namespace>/<name>` (default `istio-system/meshd-leader`):

    elector = LeaderElector(kube_api, LeaderElectionConfig(namespace="istio-system", identity=me))
    elector.add_task("status", status_writer.run)      # started on election, cancelled on loss
    await elector.run(stop)                             # releases the Lease when `stop` is set

The protocol (client-go tryAcquireOrRenew):
- GET the Lease. Absent: CREATE it with us as holder (409 AlreadyExists: another replica
  was faster; it leads).
- Held by another replica: it leads until the record stops changing for its
  `leaseDurationSeconds`, measured on *our* clock from when *we* saw it change (holders'
  and followers' clocks are never compared). Then, or when `holderIdentity` is empty (a
  graceful release), we take it over.
- Taking over or renewing is a PUT of the record read, with its metadata.resourceVersion:
  when two replicas race, the API server accepts one PUT and answers 409 Conflict to the
  other (optimistic concurrency), so there is never more than one holder.
- The leader renews every `retry_period`. A renewal that fails is retried; when none has
  succeeded for `renew_deadline` (shorter than the lease duration), the leader stops its
  leader work *before* its Lease can expire and another replica can take it; when the
  Lease turns out to be held by someone else, it stops at once.
- Followers retry every `retry_period` (jittered): when the leader dies (SIGKILL, node
  loss), one of them takes over within lease duration + about two retry periods.
- On graceful shutdown the leader stops its work, then releases the Lease (empty holder,
  1 s duration), so a follower takes over at its next retry instead of waiting out
  the lease.

Defaults are client-go's: 15 s lease, 10 s renew deadline, 2 s retry.
"""
from __future__ import annotations

import asyncio
import math
import os
import random
import socket
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import structlog

from .api import ApiError, KubeApi, path
from .options import DEFAULT_LEASE_NAME

LEASE_GROUP, LEASE_VERSION, LEASE_PLURAL = "coordination.k8s.io", "v1", "leases"
DEFAULT_NAME = DEFAULT_LEASE_NAME
JITTER = 1.2  # client-go's JitterFactor for the acquire retry


def default_identity() -> str:
    """`<pod name>_<random>`: the pod name ($POD_NAME, else the host name) tells operators
    which pod leads; the suffix keeps a restarted process apart from its predecessor."""
    base = os.environ.get("POD_NAME") or socket.gethostname() or "meshd"
    return f"{base}_{uuid.uuid4().hex[:8]}"


def micro_time(t: datetime) -> str:
    """A Kubernetes MicroTime: RFC 3339 in UTC with exactly six fractional digits."""
    return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass
class LeaderElectionConfig:
    namespace: str
    identity: str
    name: str = DEFAULT_NAME
    lease_duration: float = 15.0
    renew_deadline: float = 10.0
    retry_period: float = 2.0

    def __post_init__(self) -> None:
        if not self.identity:
            raise ValueError("leader election needs an identity")
        if not 0 < self.retry_period < self.renew_deadline < self.lease_duration:
            raise ValueError("leader election wants 0 < retry period < renew deadline < lease duration "
                             f"(got {self.retry_period}, {self.renew_deadline}, {self.lease_duration})")

    @property
    def request_timeout(self) -> float:
        return max(0.5, min(self.renew_deadline / 2, 5.0))


LeaderTask = Callable[[], Awaitable[None]]

# Outcomes of one attempt to acquire or renew.
_HELD, _FAILED, _OTHER = "held", "failed", "other"


class LeaderElector:
    def __init__(self, api: KubeApi, config: LeaderElectionConfig, logger: Any = None,
                 monotonic: Callable[[], float] = time.monotonic,
                 wall: Callable[[], datetime] = lambda: datetime.now(UTC)):
        self.api = api
        self.config = config
        self._log = (logger or structlog.get_logger("meshd.leader")).bind(lease=f"{config.namespace}/{config.name}")
        self._monotonic = monotonic
        self._wall = wall
        self._leader = False
        self._leading = asyncio.Event()
        self._observed_rv: str | None = None
        self._observed_at = 0.0
        self._observed_spec: dict[str, Any] = {}
        self._tasks: dict[str, LeaderTask] = {}
        self._running: dict[str, asyncio.Task[None]] = {}
        self._listeners: list[Callable[[bool], None]] = []
        self.transitions = 0  # times this replica became leader

    # --- state ----------------------------------------------------------------------
    @property
    def is_leader(self) -> bool:
        return self._leader

    @property
    def identity(self) -> str:
        return self.config.identity

    @property
    def holder(self) -> str:
        """The holder of the Lease as last observed ("" when none)."""
        return str(self._observed_spec.get("holderIdentity") or "")

    async def wait_leader(self, timeout: float | None = None) -> bool:
        try:
            await asyncio.wait_for(self._leading.wait(), timeout)
        except TimeoutError:
            return False
        return True

    def add_task(self, name: str, task: LeaderTask) -> None:
        """Run `task()` whenever this replica leads; it is cancelled when leadership ends
        and restarted (after a retry period) if it fails while leading."""
        self._tasks[name] = task
        if self._leader:
            self._start_task(name)

    def on_change(self, fn: Callable[[bool], None]) -> None:
        self._listeners.append(fn)

    # --- paths ----------------------------------------------------------------------
    @property
    def _collection(self) -> str:
        return path(LEASE_GROUP, LEASE_VERSION, LEASE_PLURAL, self.config.namespace)

    @property
    def _object(self) -> str:
        return path(LEASE_GROUP, LEASE_VERSION, LEASE_PLURAL, self.config.namespace, self.config.name)

    # --- the loop -------------------------------------------------------------------
    async def run(self, stop: asyncio.Event) -> None:
        cfg = self.config
        self._log.info("leader election starting", identity=cfg.identity, lease_duration=cfg.lease_duration,
                       renew_deadline=cfg.renew_deadline, retry_period=cfg.retry_period)
        try:
            while not stop.is_set():
                # Follower: try every retry period (jittered) until we hold the Lease.
                while not stop.is_set():
                    if await self._attempt() == _HELD:
                        break
                    await _sleep(stop, cfg.retry_period * (1 + random.random() * JITTER))
                if stop.is_set():
                    break
                self._become(True)
                last_renew = self._monotonic()
                # Leader: renew every retry period until stopped, displaced or out of time.
                while not stop.is_set():
                    await _sleep(stop, cfg.retry_period)
                    if stop.is_set():
                        break
                    # A renewal may not outlast the renew deadline (client-go: RenewDeadline
                    # bounds the whole renew), or a hung API call would keep us "leading"
                    # past the point where a follower may take over.
                    left = last_renew + cfg.renew_deadline - self._monotonic()
                    outcome = await self._attempt(timeout=left) if left > 0 else _FAILED
                    if outcome == _HELD:
                        last_renew = self._monotonic()
                        continue
                    if outcome == _OTHER:
                        self._log.warning("leader lost", reason="the lease is held by another replica", holder=self.holder)
                        break
                    if self._monotonic() - last_renew >= cfg.renew_deadline:
                        self._log.warning("leader lost", reason=f"no renewal for {cfg.renew_deadline}s")
                        break
                if self._leader:
                    await self._step_down()
        finally:
            if self._leader:
                await self._step_down()
            await self.release()  # a no-op unless the Lease we last saw names us

    async def release(self) -> bool:
        """Give the Lease up (graceful shutdown): the next replica need not wait it out."""
        if self._observed_spec.get("holderIdentity") != self.config.identity or self._observed_rv is None:
            return False
        now = micro_time(self._wall())
        body = {"apiVersion": f"{LEASE_GROUP}/{LEASE_VERSION}", "kind": "Lease",
                "metadata": {"name": self.config.name, "namespace": self.config.namespace,
                             "resourceVersion": self._observed_rv},
                "spec": {"holderIdentity": "", "leaseDurationSeconds": 1, "acquireTime": now, "renewTime": now,
                         "leaseTransitions": int(self._observed_spec.get("leaseTransitions") or 0)}}
        try:
            lease = await asyncio.wait_for(self.api.call("PUT", self._object, body, timeout=self.config.request_timeout),
                                           self.config.request_timeout + 1)
        except (TimeoutError, ApiError) as e:
            self._log.warning("leader release failed", error=str(e))
            return False
        self._observe(lease)
        self._log.info("leader released", identity=self.config.identity)
        return True

    # --- one attempt ----------------------------------------------------------------
    async def _attempt(self, timeout: float | None = None) -> str:
        limit = self.config.request_timeout * 2 + 1
        try:
            return await asyncio.wait_for(self._try_acquire_or_renew(), min(limit, timeout) if timeout else limit)
        except TimeoutError:
            self._log.warning("leader election request timed out")
            return _FAILED
        except ApiError as e:
            self._log.warning("leader election request failed", status=e.status, reason=e.reason, error=e.message[:200])
            return _FAILED

    async def _try_acquire_or_renew(self) -> str:
        cfg = self.config
        timeout = cfg.request_timeout
        now = micro_time(self._wall())
        duration = int(math.ceil(cfg.lease_duration))
        try:
            lease = await self.api.call("GET", self._object, timeout=timeout)
        except ApiError as e:
            if not e.not_found:
                raise
            body = {"apiVersion": f"{LEASE_GROUP}/{LEASE_VERSION}", "kind": "Lease",
                    "metadata": {"name": cfg.name, "namespace": cfg.namespace},
                    "spec": {"holderIdentity": cfg.identity, "leaseDurationSeconds": duration,
                             "acquireTime": now, "renewTime": now, "leaseTransitions": 0}}
            try:
                created = await self.api.call("POST", self._collection, body, timeout=timeout)
            except ApiError as e2:
                if e2.conflict:
                    return _OTHER if not self._leader else _FAILED  # another replica created it first
                raise
            self._observe(created)
            return _HELD
        self._observe(lease)
        spec = lease.get("spec") or {}
        holder = str(spec.get("holderIdentity") or "")
        mine = holder == cfg.identity
        if holder and not mine and not self._expired(spec):
            return _OTHER
        transitions = int(spec.get("leaseTransitions") or 0)
        new_spec = {
            "holderIdentity": cfg.identity,
            "leaseDurationSeconds": duration,
            "acquireTime": spec.get("acquireTime") if mine and spec.get("acquireTime") else now,
            "renewTime": now,
            "leaseTransitions": transitions if mine else transitions + 1,
        }
        body = {**lease, "spec": new_spec}
        try:
            updated = await self.api.call("PUT", self._object, body, timeout=timeout)
        except ApiError as e:
            if e.conflict:  # someone wrote the Lease since we read it: look again next time
                return _FAILED if mine else _OTHER
            raise
        if not mine:
            self._log.info("leader lease acquired", previous_holder=holder or None, transitions=new_spec["leaseTransitions"])
        self._observe(updated)
        return _HELD

    def _observe(self, lease: dict[str, Any]) -> None:
        rv = str((lease.get("metadata") or {}).get("resourceVersion") or "")
        spec = lease.get("spec") or {}
        if rv != self._observed_rv:
            before = self.holder
            self._observed_rv = rv
            self._observed_at = self._monotonic()
            self._observed_spec = dict(spec)
            if self.holder != before and self.holder != self.config.identity:
                self._log.info("leader observed", holder=self.holder or None)

    def _expired(self, spec: dict[str, Any]) -> bool:
        seconds = spec.get("leaseDurationSeconds")
        duration = float(seconds) if isinstance(seconds, (int, float)) and seconds > 0 else self.config.lease_duration
        return self._monotonic() >= self._observed_at + duration

    # --- leader work ----------------------------------------------------------------
    def _become(self, leader: bool) -> None:
        self._leader = leader
        if leader:
            self.transitions += 1
            self._leading.set()
            self._log.info("leader elected", identity=self.config.identity)
            for name in self._tasks:
                self._start_task(name)
        else:
            self._leading.clear()
        for fn in self._listeners:
            try:
                fn(leader)
            except Exception:  # a listener must not break the election
                self._log.exception("leader listener failed")

    async def _step_down(self) -> None:
        """Stop leader work first, then count as a follower."""
        running, self._running = self._running, {}
        for t in running.values():
            t.cancel()
        if running:
            await asyncio.wait(running.values(), timeout=max(1.0, self.config.renew_deadline / 2))
        self._become(False)
        self._log.info("leader stepped down", identity=self.config.identity)

    def _start_task(self, name: str) -> None:
        old = self._running.get(name)
        if old is not None and not old.done():
            return
        self._running[name] = asyncio.create_task(self._supervise(name), name=f"leader-{name}")

    async def _supervise(self, name: str) -> None:
        while self._leader:
            try:
                await self._tasks[name]()
                return
            except asyncio.CancelledError:
                raise
            except Exception:  # restart leader work that failed
                self._log.exception("leader task failed", task=name)
                await asyncio.sleep(self.config.retry_period)


async def _sleep(stop: asyncio.Event, seconds: float) -> None:
    try:
        await asyncio.wait_for(stop.wait(), seconds)
    except TimeoutError:
        pass
