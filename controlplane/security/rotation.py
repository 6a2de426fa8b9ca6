"""Workload certificate rotation: renew before expiry, push over SDS, no request needed.

Every certificate WorkloadSecrets issues is scheduled for renewal when `ratio` of its
lifetime has passed (`--rotation-ratio`, default 0.5), moved by a random jitter of up
to +/- `jitter` of the lifetime (default 5%) so that identities issued together do not
renew together. (istio-agent says it the other way round: SECRET_ROTATION_GRACE_PERIOD_
RATIO is the share of the lifetime LEFT at renewal, with a 1% jitter; 0.5 is the same
moment either way.)

When it is due, and some proxy of that identity is still connected, the scheduler
issues a new certificate on the CA's worker thread and queues an SDS push to exactly
those connections (`AdsServer.push_secrets`). Identities nobody holds any more are not
renewed: their certificate is forgotten, and the next request issues a fresh one.

Renewals run one at a time, in due order: a fleet's renewals are spread over time by
the jitter and never occupy more than the CA's one worker thread, so config pushes on
the event loop are never blocked behind them (bench/ca_issue.py measures the event loop
lag during a burst of renewals).

When the CA's signer changes (root rotation, see authority.py), every certificate from
another signer becomes due within `reissue_window` (spread at random inside it), so
workloads move to the new root quickly but not all in the same instant.

A failed renewal is retried with a backoff; the current certificate stays in use while
it is valid.
"""
from __future__ import annotations

import asyncio
import heapq
import random
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

import structlog

from ca import Identity
from ca.clock import Clock, utc_now

from .sds import IssuedCert, WorkloadSecrets

DEFAULT_RATIO = 0.5
DEFAULT_JITTER = 0.05
MAX_REISSUE_WINDOW = timedelta(seconds=60)
MAX_TICK = 1.0  # seconds: re-read the clock at least this often (injectable clocks in tests)


def check_ratio(ratio: float) -> float:
    if not 0.0 < ratio < 1.0:
        raise ValueError(f"rotation ratio must be between 0 and 1 (exclusive), got {ratio}")
    return ratio


class RotationScheduler:
    def __init__(
        self,
        secrets: WorkloadSecrets,
        *,
        push: Callable[[Identity], Any],
        holders: Callable[[Identity], bool],
        ratio: float = DEFAULT_RATIO,
        jitter: float = DEFAULT_JITTER,
        clock: Clock = utc_now,
        rng: random.Random | None = None,
        metrics: Any = None,
        logger: Any = None,
    ) -> None:
        self._secrets = secrets
        self._push = push
        self._holders = holders
        self._ratio = check_ratio(ratio)
        self._jitter = max(0.0, min(jitter, min(ratio, 1 - ratio) / 2))
        self._clock = clock
        self._rng = rng or random.Random()
        self._metrics = metrics
        self._log = logger if logger is not None else structlog.get_logger("meshd.ca")
        self._heap: list[tuple[datetime, int, Identity]] = []
        self._due: dict[Identity, tuple[datetime, int, str]] = {}  # identity -> (when, serial, reason)
        self._wake = asyncio.Event()
        secrets.renew_on_request = False
        secrets.on_issued(self.schedule)

    # --- scheduling -------------------------------------------------------------------
    def renewal_time(self, cert: IssuedCert) -> datetime:
        fraction = self._ratio + self._rng.uniform(-self._jitter, self._jitter)
        return cert.issued_at + cert.lifetime * fraction

    def schedule(self, cert: IssuedCert, when: datetime | None = None, reason: str = "rotation") -> None:
        when = when or self.renewal_time(cert)
        self._due[cert.identity] = (when, cert.serial, reason)
        heapq.heappush(self._heap, (when, cert.serial, cert.identity))
        self._wake.set()

    def due_at(self, identity: Identity) -> datetime | None:
        entry = self._due.get(identity)
        return entry[0] if entry else None

    def reissue_from_other_signers(self, window: timedelta | None = None) -> int:
        """The signer changed: every cached certificate from another signer becomes due
        at a random moment within `window` (default: a tenth of the lifetime, at most a
        minute). Returns how many were rescheduled."""
        signer = self._secrets.current_signer()
        now = self._clock()
        n = 0
        for cert in self._secrets.certificates():
            if signer is None or cert.signer_fingerprint == signer:
                continue
            w = window if window is not None else min(MAX_REISSUE_WINDOW, cert.lifetime / 10)
            when = now + w * self._rng.random()
            current = self._due.get(cert.identity)
            if current is None or current[0] > when:
                self.schedule(cert, when, reason="new signer")
                n += 1
        if n:
            self._log.info("workload certificates scheduled for re-issue from the new signer", certificates=n)
        return n

    # --- the loop -------------------------------------------------------------------------
    def _pop_due(self, now: datetime) -> list[tuple[Identity, str]]:
        out = []
        while self._heap and self._heap[0][0] <= now:
            when, serial, identity = heapq.heappop(self._heap)
            entry = self._due.get(identity)
            if entry is None or entry[0] != when or entry[1] != serial:
                continue  # superseded by a newer schedule
            del self._due[identity]
            out.append((identity, entry[2]))
        return out

    def _next_wait(self, now: datetime) -> float:
        while self._heap:
            when, serial, identity = self._heap[0]
            entry = self._due.get(identity)
            if entry is None or entry[0] != when or entry[1] != serial:
                heapq.heappop(self._heap)
                continue
            return max(0.0, min(MAX_TICK, (when - now).total_seconds()))
        return MAX_TICK

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            now = self._clock()
            for identity, reason in self._pop_due(now):
                if stop.is_set():
                    return
                await self._renew(identity, reason)
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), timeout=self._next_wait(self._clock()))
            except TimeoutError:
                pass

    async def _renew(self, identity: Identity, reason: str) -> None:
        current = self._secrets.cached(identity)
        if current is None:
            return
        if not self._holders(identity):
            self._secrets.forget(identity)
            self._log.debug("cert not renewed: no proxy holds it", identity=identity.spiffe_uri)
            return
        try:
            cert = await self._secrets.renew(identity, reason=reason)
        except Exception as e:
            remaining = current.not_after - self._clock()
            retry = max(timedelta(seconds=1), min(timedelta(seconds=30), remaining / 10))
            self._log.warning("cert renewal failed, will retry", identity=identity.spiffe_uri, error=repr(e),
                              retry_in_seconds=retry.total_seconds(), serial=f"{current.serial:x}")
            self.schedule(current, self._clock() + retry, reason=reason)
            return
        if self._metrics is not None:
            self._metrics.cert_rotated(reason)
        queued = self._push(identity)
        self._log.info("cert rotated", identity=identity.spiffe_uri, serial=f"{cert.serial:x}",
                       previous_serial=f"{current.serial:x}", not_after=cert.not_after.isoformat(),
                       reason=reason, connections=queued)
