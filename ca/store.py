"""The CA directory over its whole life: the active signer, the signers it replaced,
the trust bundle, and a ledger of how long certificates chaining to each may live.

Layout (the directory is 0700, every key 0600, written atomically):

  root-cert.pem, root-key.pem     meshd's self-signed root (the active signer when there
                                  is no plug-in CA)
  ca-cert.pem, ca-key.pem,        Istio's plugged-in CA files: when present, the active
  cert-chain.pem, root-cert.pem   signer is this intermediate, and root-cert.pem its root
  token-key.pem                   the ES256 key of file-mode tokens (ca/tokens.py)
  trust-bundle.pem                every root currently trusted, the active one first:
                                  what bootstraps and `openssl verify -CAfile` should use
  previous/<when>-<fp>/           a signer replaced by a rotation, in the same file
                                  layout, kept until no certificate it issued can still
                                  be alive; then deleted
  ledger.json                     per signer (fingerprint): its root and the latest
                                  not-after of any workload certificate it issued

`rotate_root` is what `meshd ca rotate-root` does: it moves the active signer under
previous/ and installs a new one (a fresh self-signed root, or Istio cacerts copied in),
all under the directory lock. A running meshd sees the change (it watches the
directory, see controlplane/security/authority.py), first trusts both roots, then signs
with the new one, and drops the old root once `ledger.json` says every certificate
chaining to it has expired.

The ledger is written before a certificate leaves the CA, rounded up by a little
headroom so that a burst of issuance costs one write: after a crash it may say a
certificate lives a bit longer than it does, never shorter.
"""
from __future__ import annotations

import json
import shutil
import threading
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography import x509

from .clock import Clock, utc_now
from .errors import CAStateError
from .keys import (
    KeyType,
    ensure_private_dir,
    locked_dir,
    private_key_to_pem,
    read_private,
    write_private,
    write_public,
)
from .root import ROOT_CERT_FILE, ROOT_KEY_FILE, ROOT_TTL, create_root, fingerprint, load_or_create_root_locked
from .signer import (
    CA_CERT_FILE,
    CA_KEY_FILE,
    CERT_CHAIN_FILE,
    PLUG_IN,
    PLUGIN_ROOT_FILE,
    Signer,
    has_plugin_files,
    load_plugin,
    pem,
)

TRUST_BUNDLE_FILE = "trust-bundle.pem"
LEDGER_FILE = "ledger.json"
PREVIOUS_DIR = "previous"
# Files whose change means "the signer may have changed" (what a watcher stats).
WATCHED_FILES = (ROOT_CERT_FILE, ROOT_KEY_FILE, CA_CERT_FILE, CA_KEY_FILE, CERT_CHAIN_FILE)
MAX_LEDGER_HEADROOM = timedelta(minutes=1)


@dataclass(frozen=True)
class PreviousSigner:
    signer: Signer
    path: Path  # previous/<name>/


@dataclass(frozen=True)
class CAState:
    active: Signer
    previous: tuple[PreviousSigner, ...]
    event: str = "CA loaded"  # what loading did ("root CA created", ...)


def _utc(text: str) -> datetime:
    value = datetime.fromisoformat(text)
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def bundle_pem(roots: list[x509.Certificate]) -> bytes:
    """PEM of distinct roots, in order."""
    seen, out = set(), []
    for r in roots:
        fp = fingerprint(r)
        if fp not in seen:
            seen.add(fp)
            out.append(pem(r))
    return b"".join(out)


class CADirectory:
    def __init__(self, path: Path, *, clock: Clock = utc_now) -> None:
        self.path = Path(path)
        self._clock = clock
        self._ledger_lock = threading.Lock()
        self._ledger_cache: dict[str, dict[str, Any]] | None = None

    # --- reading -------------------------------------------------------------------
    def load(self, trust_domain: str = "cluster.local", key_type: KeyType = "ec-p256", *,
             create: bool = True) -> CAState:
        """The active signer (a self-signed root is created on first use when `create`)
        and the previous signers still on disk. CAStateError when unusable."""
        ensure_private_dir(self.path)
        with locked_dir(self.path):
            return self._load_locked(trust_domain, key_type, create)

    def _load_locked(self, trust_domain: str, key_type: KeyType, create: bool) -> CAState:
        if has_plugin_files(self.path):
            active = load_plugin(self.path, clock=self._clock)
            event = "plug-in CA loaded"
        else:
            if not create and not (self.path / ROOT_KEY_FILE).exists():
                raise CAStateError(f"{self.path} holds no CA yet (start `meshd serve --ca-dir {self.path}` once)")
            root, event = load_or_create_root_locked(self.path, trust_domain, key_type, clock=self._clock)
            active = Signer.from_root(root)
        previous = []
        for d in sorted((self.path / PREVIOUS_DIR).glob("*")) if (self.path / PREVIOUS_DIR).is_dir() else ():
            try:
                signer = self._load_signer_dir(d)
            except CAStateError:
                continue  # a half-written or damaged archive: skipped (reported by `meshd ca status`)
            if signer.fingerprint != active.fingerprint:
                previous.append(PreviousSigner(signer, d))
        return CAState(active, tuple(previous), event)

    def _load_signer_dir(self, d: Path) -> Signer:
        if has_plugin_files(d):
            # An archived signer may have expired meanwhile: it no longer signs, it is
            # only kept for its root, so load it without the validity checks.
            return load_plugin(d, clock=lambda: _cert_time(d))
        from .keys import private_key_from_pem

        cert = x509.load_pem_x509_certificate((d / ROOT_CERT_FILE).read_bytes())
        try:
            key = private_key_from_pem(read_private(d / ROOT_KEY_FILE))
        except (ValueError, FileNotFoundError) as e:
            raise CAStateError(f"{d}: {e}") from None
        return Signer(cert=cert, key=key, intermediates=(), root=cert, source=d)

    def list_previous(self) -> list[Path]:
        p = self.path / PREVIOUS_DIR
        return sorted(p.glob("*")) if p.is_dir() else []

    def stat_signature(self) -> tuple[tuple[object, ...], ...]:
        """Cheap fingerprint of the watched files (mtime, size, inode) and the archive:
        changes whenever the signer on disk may have changed."""
        sig: list[tuple[object, ...]] = []
        for name in WATCHED_FILES:
            try:
                st = (self.path / name).stat()
                sig.append((name, st.st_mtime_ns, st.st_size, st.st_ino))
            except FileNotFoundError:
                sig.append((name, None))
        sig.append(tuple(p.name for p in self.list_previous()))
        return tuple(sig)

    # --- the trust bundle ------------------------------------------------------------
    def write_trust_bundle(self, roots: list[x509.Certificate]) -> bytes:
        data = bundle_pem(roots)
        path = self.path / TRUST_BUNDLE_FILE
        try:
            if path.read_bytes() == data:
                return data
        except FileNotFoundError:
            pass
        write_public(path, data)
        return data

    def trust_bundle_path(self) -> Path:
        p = self.path / TRUST_BUNDLE_FILE
        return p if p.exists() else self.path / ROOT_CERT_FILE

    # --- the ledger --------------------------------------------------------------------
    def _read_ledger(self) -> dict[str, dict[str, Any]]:
        try:
            data = json.loads((self.path / LEDGER_FILE).read_text())
            return data if isinstance(data, dict) else {}
        except (FileNotFoundError, ValueError):
            return {}

    def ledger(self) -> dict[str, dict[str, Any]]:
        with self._ledger_lock:
            if self._ledger_cache is None:
                self._ledger_cache = self._read_ledger()
            return {k: dict(v) for k, v in self._ledger_cache.items()}

    def issued_until(self, signer_fingerprint: str) -> datetime | None:
        entry = self.ledger().get(signer_fingerprint)
        try:
            return _utc(entry["issued_until"]) if entry else None
        except (KeyError, ValueError, TypeError):
            return None

    def record_issue(self, signer: Signer, not_after: datetime, headroom: timedelta = MAX_LEDGER_HEADROOM) -> None:
        """Remember that a certificate from `signer` lives until `not_after` (thread-safe).
        Writes only when `not_after` passes what is recorded, then records it plus
        `headroom`, so a burst of issuance costs one write."""
        with self._ledger_lock:
            if self._ledger_cache is None:
                self._ledger_cache = self._read_ledger()
            entry = self._ledger_cache.get(signer.fingerprint)
            if entry:
                try:
                    if _utc(entry["issued_until"]) >= not_after:
                        return
                except (KeyError, ValueError, TypeError):
                    pass
            self._ledger_cache[signer.fingerprint] = {
                "root": signer.root_fingerprint,
                "issued_until": (not_after + headroom).isoformat(),
            }
            write_public(self.path / LEDGER_FILE, (json.dumps(self._ledger_cache, indent=1, sort_keys=True) + "\n").encode())

    def forget(self, signer_fingerprint: str) -> None:
        with self._ledger_lock:
            if self._ledger_cache is None:
                self._ledger_cache = self._read_ledger()
            if self._ledger_cache.pop(signer_fingerprint, None) is not None:
                write_public(self.path / LEDGER_FILE,
                             (json.dumps(self._ledger_cache, indent=1, sort_keys=True) + "\n").encode())

    # --- rotation ------------------------------------------------------------------------
    def archive(self, signer: Signer) -> Path:
        """Copy `signer` (certificate, chain, key) under previous/ unless it is there
        already; returns its directory. Used by rotate_root, and by a running meshd whose
        signer was replaced on disk by hand."""
        with locked_dir(self.path):
            return self._archive_locked(signer)

    def _archive_locked(self, signer: Signer) -> Path:
        base = self.path / PREVIOUS_DIR
        ensure_private_dir(base)
        for d in self.list_previous():
            try:
                if self._load_signer_dir(d).fingerprint == signer.fingerprint:
                    return d
            except (CAStateError, ValueError, OSError):
                continue
        stamp = self._clock().strftime("%Y%m%dT%H%M%SZ")
        d = base / f"{stamp}-{signer.fingerprint.replace(':', '')[:12].lower()}"
        tmp = base / f".{d.name}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        ensure_private_dir(tmp)
        key_pem = private_key_to_pem(signer.key)
        if signer.kind == PLUG_IN:
            write_public(tmp / CA_CERT_FILE, pem(signer.cert))
            write_private(tmp / CA_KEY_FILE, key_pem)
            write_public(tmp / CERT_CHAIN_FILE, b"".join(pem(c) for c in [signer.cert, *signer.intermediates, signer.root]))
            write_public(tmp / PLUGIN_ROOT_FILE, pem(signer.root))
        else:
            write_public(tmp / ROOT_CERT_FILE, pem(signer.cert))
            write_private(tmp / ROOT_KEY_FILE, key_pem)
        tmp.rename(d)  # appears whole or not at all
        return d

    def drop(self, previous: PreviousSigner) -> None:
        """Delete an archived signer (its key included) and its ledger entry."""
        with locked_dir(self.path):
            shutil.rmtree(previous.path, ignore_errors=True)
        self.forget(previous.signer.fingerprint)

    def rotate_root(
        self,
        *,
        trust_domain: str = "cluster.local",
        key_type: KeyType = "ec-p256",
        cacerts: Path | None = None,
        root_ttl: timedelta = ROOT_TTL,
    ) -> tuple[Signer, Signer]:
        """Replace the active signer: with a new self-signed root, or (`cacerts`) with the
        plug-in CA in that directory (validated first, keys must be 0600). The old one is
        archived under previous/ first. Returns (old, new)."""
        new_plugin = load_plugin(Path(cacerts), clock=self._clock) if cacerts is not None else None
        ensure_private_dir(self.path)
        with locked_dir(self.path):
            old = self._load_locked(trust_domain, key_type, create=False).active
            if new_plugin is not None and new_plugin.fingerprint == old.fingerprint:
                raise CAStateError(f"{cacerts} holds the CA already in use")
            self._archive_locked(old)
            for name in (CA_CERT_FILE, CA_KEY_FILE, CERT_CHAIN_FILE, ROOT_KEY_FILE):
                (self.path / name).unlink(missing_ok=True)
            if new_plugin is None:
                new = Signer.from_root(create_root(self.path, trust_domain, key_type, ttl=root_ttl, clock=self._clock))
            else:
                assert cacerts is not None  # new_plugin was loaded from it
                src = Path(cacerts)
                # The key first and the root last: a watcher reads under the lock anyway.
                write_private(self.path / CA_KEY_FILE, read_private(src / CA_KEY_FILE))
                write_public(self.path / CA_CERT_FILE, pem(new_plugin.cert))
                write_public(self.path / CERT_CHAIN_FILE,
                             b"".join(pem(c) for c in [new_plugin.cert, *new_plugin.intermediates, new_plugin.root]))
                write_public(self.path / PLUGIN_ROOT_FILE, pem(new_plugin.root))
                new = load_plugin(self.path, clock=self._clock)
            previous = self._load_locked(trust_domain, key_type, create=False).previous
            self.write_trust_bundle([new.root, *(p.signer.root for p in previous)])
        return old, new


def _cert_time(d: Path) -> datetime:
    """A moment at which the archived chain in `d` was valid (its signing cert's midpoint)."""
    try:
        cert = x509.load_pem_x509_certificate((d / CA_CERT_FILE).read_bytes())
    except (OSError, ValueError):
        return utc_now()
    return cert.not_valid_before_utc + (cert.not_valid_after_utc - cert.not_valid_before_utc) / 2
