"""The running meshd's CA: which signer issues, which roots are trusted, and how both
change while proxies keep serving traffic.

The CA directory (ca/store.py) is watched: polled every `poll_interval` seconds (and
at once on SIGHUP, see app.py). When its active signer changes (`meshd ca rotate-root`,
or Istio cacerts files replaced in place), meshd goes through three phases, so that no
proxy ever meets a peer certificate it cannot verify:

1. trust: the new root joins the trust bundle (SDS `ROOTCA`, `trust-bundle.pem`) and is
   pushed to every proxy, while certificates keep being signed by the old signer.
   The phase ends once every connected proxy subscribed to `ROOTCA` has ACKed an SDS
   response sent after the change (`AdsServer.secret_unsynced`), or after
   `propagation_timeout` (logged with the laggards). A new signer under a root that is
   already trusted skips this phase.
2. sign: the new signer issues; every workload certificate from the old one is re-issued
   (spread over a short window by the rotation scheduler) and pushed.
3. drop: an old root leaves the bundle once no certificate chaining to it can still be
   alive: the ledger's `issued_until` for every signer under it has passed (this covers
   certificates handed out through the CA API too, whose holders meshd cannot see).
   Its archived signer (and key) is deleted and the smaller bundle pushed.

meshd's own serving certificate (port 15012) is signed by the OLDEST signer still
trusted: proxies bootstrapped before a rotation verify meshd with the old root only
(their bootstrap holds it), so they keep reconnecting until that root is dropped.
Bootstraps written during a rotation (`meshd bootstrap --ca-dir`) carry the whole
bundle and work throughout.

A directory that changes into something unusable (a half-copied cacerts set, a key that
does not match, an unsafe key mode) is refused with a log event `ca dir change
rejected` and a metric; the current signer stays in force.
"""
from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import structlog
from cryptography import x509

from ca import CertificateAuthority, Identity, KeyAndChain
from ca.clock import Clock, utc_now
from ca.errors import CAError
from ca.issuer import DEFAULT_WORKLOAD_TTL, ISTIOD_DNS_NAMES, MAX_WORKLOAD_TTL
from ca.keys import KeyType
from ca.root import fingerprint
from ca.signer import Signer
from ca.store import MAX_LEDGER_HEADROOM, CADirectory, CAState, PreviousSigner, bundle_pem

DEFAULT_POLL_INTERVAL = 1.0
DEFAULT_PROPAGATION_TIMEOUT = timedelta(seconds=60)


class MeshCA:
    """Thread-safe for issuance (called from the CA worker thread); the watcher runs on
    the event loop. Listeners are called on the event loop."""

    def __init__(
        self,
        directory: CADirectory,
        state: CAState,
        *,
        trust_domain: str,
        clock: Clock = utc_now,
        max_ttl: timedelta = MAX_WORKLOAD_TTL,
        metrics: Any = None,
        logger: Any = None,
        key_type: KeyType = "ec-p256",
    ) -> None:
        self.directory = directory
        self.trust_domain = trust_domain
        self._clock = clock
        self._max_ttl = max_ttl
        self._metrics = metrics
        self._key_type = key_type
        self._log = logger if logger is not None else structlog.get_logger("meshd.ca")
        self._lock = threading.Lock()
        self._previous: list[PreviousSigner] = list(state.previous)
        self._pending: Signer | None = None
        self._pending_since = 0.0
        self._synced_checks = 0
        self._signature: tuple[tuple[object, ...], ...] | None = directory.stat_signature()
        self._rejected_signature: tuple[tuple[object, ...], ...] | None = None
        self._bundle_listeners: list[Callable[[], None]] = []
        self._signer_listeners: list[Callable[[Signer], object]] = []
        self.propagation_check: Callable[[float], list[str]] | None = None
        self._set_active(state.active)
        self._bundle: list[x509.Certificate] = []
        self._refresh_bundle(initial=True)

    @classmethod
    def open(cls, ca_dir: Path, trust_domain: str, **kw: Any) -> MeshCA:
        directory = CADirectory(Path(ca_dir), clock=kw.get("clock", utc_now))
        state = directory.load(trust_domain)
        ca = cls(directory, state, trust_domain=trust_domain, **kw)
        ca._log.info(state.event, ca_dir=str(ca_dir), **state.active.describe(),
                     previous=len(state.previous), trust_bundle_roots=len(ca._bundle))
        return ca

    # --- what issuance sees ------------------------------------------------------------
    def _set_active(self, signer: Signer) -> None:
        self._active = signer
        self._authority = CertificateAuthority(signer, clock=self._clock, max_ttl=self._max_ttl, logger=self._log,
                                               record=self._record)
        if self._metrics is not None:
            self._metrics.set_ca_expiry(signer.root.not_valid_after_utc.timestamp(),
                                        signer.not_after.timestamp())

    def _record(self, signer: Signer, not_after: datetime) -> None:
        # Headroom: at most a minute, at most the certificate's own lifetime (short test TTLs).
        lifetime = max(not_after - self._clock(), timedelta(0))
        self.directory.record_issue(signer, not_after, headroom=min(MAX_LEDGER_HEADROOM, lifetime))

    @property
    def active(self) -> Signer:
        return self._active

    @property
    def pending(self) -> Signer | None:
        return self._pending

    @property
    def authority(self) -> CertificateAuthority:
        return self._authority

    @property
    def signer_fingerprint(self) -> str:
        return self._active.fingerprint

    @property
    def max_ttl(self) -> timedelta:
        return self._max_ttl

    @property
    def root_cert_pem(self) -> bytes:
        """The trust bundle (every trusted root), as SDS ROOTCA serves it."""
        return self._bundle_pem

    @property
    def trust_bundle_pem(self) -> bytes:
        return self._bundle_pem

    def trusted_roots(self) -> list[x509.Certificate]:
        return list(self._bundle)

    def previous(self) -> list[PreviousSigner]:
        return list(self._previous)

    def issue_workload(self, identity: Identity, ttl: timedelta = DEFAULT_WORKLOAD_TTL,
                       key_type: KeyType = "ec-p256") -> KeyAndChain:
        return self._authority.issue_workload(identity, ttl, key_type)

    def sign_csr(self, csr_pem: bytes, identity: Identity, ttl: timedelta = DEFAULT_WORKLOAD_TTL) -> bytes:
        return self._authority.sign_csr(csr_pem, identity, ttl)

    def sign_workload(self, public_key: Any, identity: Identity, ttl: timedelta = DEFAULT_WORKLOAD_TTL) -> bytes:
        return self._authority.sign_workload(public_key, identity, ttl)

    # --- meshd's serving certificate ---------------------------------------------------------
    def serving_signer(self) -> Signer:
        """The oldest signer whose root is still trusted (see module docstring)."""
        trusted = {fingerprint(r) for r in self._bundle}
        for p in self._previous:
            if p.signer.root_fingerprint in trusted and p.signer.root_fingerprint != self._active.root_fingerprint:
                return p.signer
        return self._active

    def issue_server_cert(self, dns_names: Iterable[str] = ISTIOD_DNS_NAMES, ttl: timedelta = DEFAULT_WORKLOAD_TTL,
                          key_type: KeyType | None = None) -> KeyAndChain:
        signer = self.serving_signer()
        authority = self._authority if signer is self._active else CertificateAuthority(
            signer, clock=self._clock, max_ttl=self._max_ttl, logger=self._log)
        return authority.issue_server_cert(dns_names, ttl, key_type)

    def serving_generation(self) -> str:
        return self.serving_signer().fingerprint

    # --- listeners --------------------------------------------------------------------------
    def on_bundle_change(self, fn: Callable[[], None]) -> None:
        self._bundle_listeners.append(fn)

    def on_signer_change(self, fn: Callable[[Signer], object]) -> None:
        self._signer_listeners.append(fn)

    def _notify(self, listeners: list[Any], *args: Any) -> None:
        for fn in listeners:
            try:
                fn(*args)
            except Exception:
                self._log.exception("ca listener failed")

    # --- the bundle --------------------------------------------------------------------------
    def _needed(self, p: PreviousSigner, now: datetime) -> bool:
        if self._pending is not None and p.signer.fingerprint == self._active.fingerprint:
            return True  # still signing with it (phase 1)
        until = self.directory.issued_until(p.signer.fingerprint)
        return until is not None and until > now

    def _refresh_bundle(self, initial: bool = False) -> bool:
        """Recompute the bundle (dropping roots no live certificate chains to); True if it
        changed. Writes trust-bundle.pem and deletes dropped archives."""
        now = self._clock()
        roots: list[x509.Certificate] = []
        if self._pending is not None:
            roots.append(self._pending.root)
        roots.append(self._active.root)
        keep: list[PreviousSigner] = []
        dropped: list[PreviousSigner] = []
        for p in self._previous:
            if p.signer.fingerprint == self._active.fingerprint and self._pending is None:
                continue  # the active signer archived by a CLI run that meshd then reloaded
            (keep if self._needed(p, now) else dropped).append(p)
        roots += [p.signer.root for p in keep]
        for p in dropped:
            still_trusted = any(fingerprint(r) == p.signer.root_fingerprint for r in roots)
            self._log.info("previous signer retired", signer_fingerprint=p.signer.fingerprint,
                           root_fingerprint=p.signer.root_fingerprint, path=str(p.path),
                           root_still_trusted=still_trusted)
            try:
                self.directory.drop(p)
            except OSError as e:
                self._log.warning("previous signer could not be deleted", path=str(p.path), error=str(e))
        self._previous = keep
        seen, bundle = set(), []
        for r in roots:
            if fingerprint(r) not in seen:
                seen.add(fingerprint(r))
                bundle.append(r)
        old = [fingerprint(r) for r in getattr(self, "_bundle", [])]
        changed = [fingerprint(r) for r in bundle] != old
        self._bundle = bundle
        self._bundle_pem = bundle_pem(bundle)
        try:
            self.directory.write_trust_bundle(bundle)
        except OSError as e:
            self._log.warning("trust bundle file not written", error=str(e))
        if self._metrics is not None:
            self._metrics.set_trust_bundle_roots(len(bundle))
        if changed and not initial:
            gone = [fp for fp in old if fp not in seen]
            added = [fingerprint(r) for r in bundle if fingerprint(r) not in old]
            for fp in gone:
                self._log.info("root dropped from trust bundle", root_fingerprint=fp, trust_bundle_roots=len(bundle))
            for fp in added:
                self._log.info("root added to trust bundle", root_fingerprint=fp, trust_bundle_roots=len(bundle))
        return changed

    # --- watching the directory --------------------------------------------------------------
    async def run(self, stop: asyncio.Event, *, poll_interval: float = DEFAULT_POLL_INTERVAL,
                  propagation_timeout: timedelta = DEFAULT_PROPAGATION_TIMEOUT,
                  wake: asyncio.Event | None = None) -> None:
        wake = wake or asyncio.Event()
        while not stop.is_set():
            try:
                await self.check(propagation_timeout=propagation_timeout)
            except Exception:
                self._log.exception("ca watch failed")
            sleeper = asyncio.ensure_future(wake.wait())
            stopper = asyncio.ensure_future(stop.wait())
            try:
                await asyncio.wait((sleeper, stopper), timeout=poll_interval, return_when=asyncio.FIRST_COMPLETED)
            finally:
                sleeper.cancel()
                stopper.cancel()
            if wake.is_set():
                wake.clear()
                self._signature = None  # SIGHUP: reload even if nothing seems to have changed

    async def check(self, *, propagation_timeout: timedelta = DEFAULT_PROPAGATION_TIMEOUT) -> None:
        """One step of the watcher: notice a new signer, advance a rotation, drop roots."""
        sig = await asyncio.to_thread(self.directory.stat_signature)
        if sig != self._signature:
            await asyncio.sleep(0.2)  # let a writer finish (settle), then read under the lock
            sig2 = await asyncio.to_thread(self.directory.stat_signature)
            if sig2 == sig:
                self._signature = sig
                await self._reload(sig)
        if self._pending is not None:
            self._advance(propagation_timeout)
        if self._refresh_bundle():
            self._notify(self._bundle_listeners)

    async def _reload(self, sig: tuple[tuple[object, ...], ...]) -> None:
        try:
            state = await asyncio.to_thread(self.directory.load, self.trust_domain, self._key_type)
        except (CAError, OSError, ValueError) as e:
            if sig != self._rejected_signature:
                self._rejected_signature = sig
                self._log.error("ca dir change rejected", ca_dir=str(self.directory.path), error=str(e),
                                signer_fingerprint=self._active.fingerprint)
                if self._metrics is not None:
                    self._metrics.ca_reload_failed()
            return
        self._rejected_signature = None
        newest = self._pending or self._active
        if state.active.fingerprint == newest.fingerprint:
            self._previous = list(state.previous)
            return
        # A new signer. Make sure the one in use is archived (it may have been replaced
        # by hand): certificates it issued must stay verifiable until they expire.
        if not any(p.signer.fingerprint == self._active.fingerprint for p in state.previous):
            path = await asyncio.to_thread(self.directory.archive, self._active)
            state = CAState(state.active, (*state.previous, PreviousSigner(self._active, path)), state.event)
        self._previous = list(state.previous)
        new = state.active
        self._log.info("ca rotation started", **{f"new_{k}": v for k, v in new.describe().items()},
                       old_signer_fingerprint=self._active.fingerprint,
                       old_root_fingerprint=self._active.root_fingerprint)
        trusted = {fingerprint(r) for r in self._bundle}
        if self._pending is not None or new.root_fingerprint not in trusted:
            self._pending, self._pending_since, self._synced_checks = new, time.time(), 0
            self._refresh_bundle()  # phase 1: trust both
            self._notify(self._bundle_listeners)
        else:
            self._promote(new, "root already trusted")

    def _advance(self, timeout: timedelta) -> None:
        assert self._pending is not None
        laggards = self.propagation_check(self._pending_since) if self.propagation_check else []
        if not laggards:
            self._synced_checks += 1
            if self._synced_checks >= 2:  # two quiet checks in a row: no response in flight
                self._promote(self._pending, "trust bundle acknowledged by every proxy")
            return
        self._synced_checks = 0
        if time.time() - self._pending_since >= timeout.total_seconds():
            self._log.warning("trust bundle not acknowledged by every proxy in time; signing with the new CA anyway",
                              laggards=laggards[:20], waiting=len(laggards))
            self._promote(self._pending, "propagation timeout")

    def _promote(self, new: Signer, why: str) -> None:
        old = self._active
        self._pending = None
        self._set_active(new)
        self._log.info("ca signer switched", reason=why, signer_fingerprint=new.fingerprint,
                       root_fingerprint=new.root_fingerprint, old_signer_fingerprint=old.fingerprint)
        self._refresh_bundle()
        self._notify(self._signer_listeners, new)
        self._notify(self._bundle_listeners)

    # --- debug ------------------------------------------------------------------------------
    def describe(self) -> dict[str, Any]:
        return {
            "active": self._active.describe(),
            "pending": self._pending.describe() if self._pending else None,
            "trust_bundle": [
                {"fingerprint_sha256": fingerprint(r), "subject": r.subject.rfc4514_string(),
                 "not_after": r.not_valid_after_utc.isoformat()} for r in self._bundle
            ],
            "previous": [
                {**p.signer.describe(), "path": str(p.path),
                 "issued_until": (u.isoformat() if (u := self.directory.issued_until(p.signer.fingerprint)) else None)}
                for p in self._previous
            ],
        }
