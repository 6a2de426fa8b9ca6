"""The CA's state in a Kubernetes cluster: Secrets `istio-ca-secret` and `cacerts`.

Every replica runs the CA of the CA directory (ca/store.py, security/authority.py:
signing, the trust bundle, the three-phase rotation). In a cluster that directory is a
mirror of the cluster's CA, kept by this module, so that every replica signs with the
same CA and a restarted pod (an emptyDir) finds it again:

- Secret `cacerts` in meshd's namespace (Istio's plug-in CA: `ca-cert.pem`,
  `ca-key.pem`, `cert-chain.pem`, `root-cert.pem`) wins when present: its files are
  copied into the directory, where they make the plug-in signer.
- Otherwise Secret `istio-ca-secret` (type `istio.io/ca-root`, Istio's layout: the root
  in `ca-cert.pem`, its key in `ca-key.pem`) holds the self-signed root. The first
  replica to find it missing creates a root and CREATEs the Secret; creation is atomic
  in the API server, so when replicas race exactly one wins (201) and the others get
  409 AlreadyExists, read the winner's Secret and use that root (their own candidate is
  discarded before it ever reaches the directory). A root istiod created is used as is,
  so proxies that trusted istiod's root keep trusting meshd's certificates.

    store = KubeCAStore(kube_api, "istio-system", ca_dir, "cluster.local")
    store.prepare()                                   # before the CA directory is opened
    ca = MeshCA.open(ca_dir, ...)                     # (security/plane.py)
    asyncio.create_task(store.run(stop, ca))         # every replica: follow the Secrets

While running, every replica re-reads both Secrets every `poll_interval` (GET: the
RBAC rules allow exactly these two names). When the cluster's signer changes (cacerts
created or replaced, istio-ca-secret replaced), the new files are written into the
directory under its lock, with the old signer archived under previous/ first; the CA
directory watcher (security/authority.py) then rotates as it does for `meshd ca rotate-root`:
trust both roots, sign with the new one, drop the old root when no certificate needs it.
Because other replicas issued certificates this replica has no ledger entry for, the
old signer is recorded as having issued until now + the workload certificate lifetime.

Which directories (docs/kubernetes.md): the mirror is the operator's `--ca-dir` when
it is empty or already a mirror (it has the `.kubernetes` marker); otherwise it is
meshd's own, `$MESHD_HOME/kubernetes/<server>-<namespace>/ca` (`cluster_ca_dirs`). The
CA of file mode (`~/.meshd/ca`) is never read in Kubernetes mode. A `--ca-dir` that holds
a CA of its own (no marker: a developer's ~/.meshd/ca, Istio's cacerts files) is
*offered* to the cluster: it becomes Secret `cacerts`, the cluster's plug-in CA, when the
cluster has none (create-if-absent, so racing replicas agree), and is only read, never
written. When the cluster's plug-in CA is another one, the cluster's stays in force and
the offer is reported; meshd starts either way.

What this relies on from the CA directory code (ca/): CADirectory(path).load(td,
create=False).active (a Signer with .fingerprint, .kind, .cert, .key), .archive(signer),
.record_issue(signer, not_after, headroom); the file names of ca/root.py
(root-cert.pem, root-key.pem) and ca/signer.py (Istio's cacerts names); load_plugin(dir)
to validate a plug-in CA; create_root(dir, td, key_type) to make a root; ca.keys'
ensure_private_dir, locked_dir, write_private, write_public; and from MeshCA only
.active / .pending (Signers) to know what is in force.
"""
from __future__ import annotations

import asyncio
import base64
import binascii
import re
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

import structlog
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from ca.clock import utc_now
from ca.errors import CAError, CAStateError
from ca.keys import (
    KeyType,
    ensure_private_dir,
    locked_dir,
    private_key_to_pem,
    read_private,
    write_private,
    write_public,
)
from ca.root import ROOT_CERT_FILE, ROOT_KEY_FILE, create_root, fingerprint
from ca.signer import (
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
from ca.store import CADirectory
from ca.tokens import TOKEN_KEY_FILE

from .api import ApiError, KubeApi, path

CA_SECRET = "istio-ca-secret"
CACERTS_SECRET = "cacerts"
CA_SECRET_TYPE = "istio.io/ca-root"
MARKER = ".kubernetes"  # this directory mirrors the cluster's CA
DEFAULT_POLL_INTERVAL = 10.0
STARTUP_TIMEOUT = 60.0  # how long to wait for the API server at start before giving up

# istio-ca-secret keys (Istio's): the self-signed root is ca-cert.pem, its key ca-key.pem.
_SECRET_CERT, _SECRET_KEY = "ca-cert.pem", "ca-key.pem"
_ISTIO_EMPTY_KEYS = ("cert-chain.pem", "key.pem", "root-cert.pem")


class SignersInForce(Protocol):
    """What the store reads of the running CA (security/authority.py MeshCA, handed in by
    app.py): the signer in force, and the one a rotation is moving to."""

    @property
    def active(self) -> Signer: ...

    @property
    def pending(self) -> Signer | None: ...


@dataclass(frozen=True)
class ClusterCA:
    """The CA the cluster says is in force."""

    source: str  # CACERTS_SECRET | CA_SECRET
    files: dict[str, bytes]  # CA directory file name -> content
    signer_fingerprint: str


def _decode(secret: dict[str, Any], name: str) -> dict[str, bytes]:
    out = {}
    for k, v in (secret.get("data") or {}).items():
        try:
            out[k] = base64.b64decode(v or "", validate=True)
        except (binascii.Error, ValueError):
            raise CAStateError(f"Secret {name}: {k} is not base64") from None
    return out


def _signer_fingerprint(pem: bytes, where: str) -> str:
    try:
        return fingerprint(x509.load_pem_x509_certificate(pem))
    except ValueError as e:
        raise CAStateError(f"{where}: not a PEM certificate: {e}") from None


def cluster_ca_from_cacerts(secret: dict[str, Any]) -> ClusterCA:
    data = _decode(secret, CACERTS_SECRET)
    missing = [k for k in (CA_CERT_FILE, CA_KEY_FILE, PLUGIN_ROOT_FILE) if not data.get(k)]
    if missing:
        raise CAStateError(f"Secret {CACERTS_SECRET} lacks {', '.join(missing)} (Istio's plug-in CA needs "
                           f"{CA_CERT_FILE}, {CA_KEY_FILE}, {CERT_CHAIN_FILE}, {PLUGIN_ROOT_FILE})")
    files = {CA_CERT_FILE: data[CA_CERT_FILE], CA_KEY_FILE: data[CA_KEY_FILE], PLUGIN_ROOT_FILE: data[PLUGIN_ROOT_FILE]}
    if data.get(CERT_CHAIN_FILE):
        files[CERT_CHAIN_FILE] = data[CERT_CHAIN_FILE]
    _validate_plugin(files)
    return ClusterCA(CACERTS_SECRET, files, _signer_fingerprint(files[CA_CERT_FILE], f"Secret {CACERTS_SECRET}"))


def cluster_ca_from_ca_secret(secret: dict[str, Any]) -> ClusterCA:
    data = _decode(secret, CA_SECRET)
    if not data.get(_SECRET_CERT) or not data.get(_SECRET_KEY):
        raise CAStateError(f"Secret {CA_SECRET} lacks {_SECRET_CERT} or {_SECRET_KEY}")
    files = {ROOT_CERT_FILE: data[_SECRET_CERT], ROOT_KEY_FILE: data[_SECRET_KEY]}
    return ClusterCA(CA_SECRET, files, _signer_fingerprint(files[ROOT_CERT_FILE], f"Secret {CA_SECRET}"))


def _validate_plugin(files: dict[str, bytes]) -> None:
    """CAStateError unless the files make a usable plug-in CA (ca/signer.py's checks)."""
    tmp = Path(tempfile.mkdtemp(prefix="meshd-cacerts-"))
    try:
        _write_files(tmp, files)
        load_plugin(tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _write_files(d: Path, files: dict[str, bytes]) -> None:
    ensure_private_dir(d)
    # Keys first, certificates after: a reader never sees a certificate without its key.
    for name in sorted(files, key=lambda n: n not in (CA_KEY_FILE, ROOT_KEY_FILE)):
        (write_private if name in (CA_KEY_FILE, ROOT_KEY_FILE) else write_public)(d / name, files[name])


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _holds_ca(d: Path) -> bool:
    return has_plugin_files(d) or (d / ROOT_KEY_FILE).exists() or (d / ROOT_CERT_FILE).exists()


@dataclass(frozen=True)
class ClusterCADirs:
    mirror: Path  # holds the cluster's CA for the signer; meshd writes it
    offered: Path | None  # the operator's own CA, offered as the plug-in CA; only read


def cluster_ca_dirs(ca_dir: Path | None, own_mirror: Path) -> ClusterCADirs:
    """The directories of Kubernetes mode for the operator's `--ca-dir` (None: not given):
    an empty directory or a mirror is the mirror; one holding a CA of its own is offered,
    and `own_mirror` (meshd's, under $MESHD_HOME) mirrors the cluster's CA."""
    if ca_dir is None:
        return ClusterCADirs(own_mirror, None)
    if _holds_ca(ca_dir) and not (ca_dir / MARKER).exists():
        return ClusterCADirs(own_mirror, ca_dir)
    return ClusterCADirs(ca_dir, None)


def own_mirror_dir(home: Path, server: str, namespace: str) -> Path:
    """meshd's mirror of one cluster's CA: one per API server and namespace, so that two
    clusters never share (or rotate into each other's) CA."""
    where = urlsplit(server).netloc or server
    return Path(home) / "kubernetes" / re.sub(r"[^A-Za-z0-9._-]", "_", f"{where}-{namespace}") / "ca"


def offered_ca(d: Path, trust_domain: str) -> ClusterCA:
    """The CA in directory `d` (meshd's self-signed root or Istio's cacerts files) in the
    plug-in layout of Secret cacerts. CAStateError when it is not a usable CA."""
    signer = CADirectory(d).load(trust_domain, create=False).active
    files = {CA_CERT_FILE: pem(signer.cert), CA_KEY_FILE: private_key_to_pem(signer.key),
             CERT_CHAIN_FILE: signer.chain_pem,  # Istio's: the signing cert (unless it is the root) up to the root
             PLUGIN_ROOT_FILE: pem(signer.root)}
    _validate_plugin(files)
    return ClusterCA(CACERTS_SECRET, files, signer.fingerprint)


class KubeCAStore:
    def __init__(self, kube: KubeApi, namespace: str, ca_dir: Path, trust_domain: str, *,
                 offered: Path | None = None, keep_old_for: timedelta = timedelta(hours=24),
                 poll_interval: float = DEFAULT_POLL_INTERVAL, key_type: KeyType = "ec-p256", logger: Any = None):
        self.kube = kube
        self.namespace = namespace
        self.ca_dir = Path(ca_dir)  # the mirror
        self.offered = Path(offered) if offered is not None else None  # the operator's CA (read only)
        self.trust_domain = trust_domain
        self.keep_old_for = keep_old_for
        self.poll_interval = poll_interval
        self.key_type = key_type
        self._log = logger if logger is not None else structlog.get_logger("meshd.ca")
        self._warned: str | None = None

    # --- the Secrets ----------------------------------------------------------------
    def _secret_path(self, name: str | None = None) -> str:
        return path("", "v1", "secrets", self.namespace, name)

    def _get_secret(self, name: str) -> dict[str, Any] | None:
        try:
            return self.kube.request("GET", self._secret_path(name))
        except ApiError as e:
            if e.not_found:
                return None
            raise

    def cluster_ca(self) -> ClusterCA | None:
        """What the Secrets hold now (cacerts first); None when neither exists."""
        cacerts = self._get_secret(CACERTS_SECRET)
        if cacerts is not None:
            return cluster_ca_from_cacerts(cacerts)
        secret = self._get_secret(CA_SECRET)
        return cluster_ca_from_ca_secret(secret) if secret is not None else None

    def _create_root_secret(self, cert_pem: bytes, key_pem: bytes) -> tuple[ClusterCA, bool]:
        """Create-if-absent: (the CA in force, whether we created it)."""
        body = {"apiVersion": "v1", "kind": "Secret", "type": CA_SECRET_TYPE,
                "metadata": {"name": CA_SECRET, "namespace": self.namespace,
                             "labels": {"app.kubernetes.io/managed-by": "meshd"}},
                "data": {_SECRET_CERT: _b64(cert_pem), _SECRET_KEY: _b64(key_pem),
                         **{k: "" for k in _ISTIO_EMPTY_KEYS}}}
        try:
            created = self.kube.request("POST", self._secret_path(), body)
            return cluster_ca_from_ca_secret(created), True
        except ApiError as e:
            if not e.conflict:
                raise
        winner = self._get_secret(CA_SECRET)  # another replica was first: use its root
        if winner is None:
            raise CAStateError(f"Secret {CA_SECRET} exists and then does not: retry")
        return cluster_ca_from_ca_secret(winner), False

    def _offer(self, offer: ClusterCA) -> bool:
        """Create Secret cacerts from the offered CA unless the cluster has one (409: a
        replica was first; the cluster's stays). Whether it was created."""
        body = {"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
                "metadata": {"name": CACERTS_SECRET, "namespace": self.namespace,
                             "labels": {"app.kubernetes.io/managed-by": "meshd"}},
                "data": {k: _b64(v) for k, v in offer.files.items()}}
        try:
            self.kube.request("POST", self._secret_path(), body)
            return True
        except ApiError as e:
            if not e.conflict:
                raise
        return False

    def _new_root(self) -> tuple[bytes, bytes]:
        tmp = Path(tempfile.mkdtemp(prefix="meshd-root-"))
        try:
            create_root(tmp, self.trust_domain, self.key_type)
            return (tmp / ROOT_CERT_FILE).read_bytes(), read_private(tmp / ROOT_KEY_FILE)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    # --- start ------------------------------------------------------------------------
    def prepare(self, timeout: float = STARTUP_TIMEOUT, stop: threading.Event | None = None) -> str:
        """Make the CA directory hold the cluster's CA (offering the operator's CA as the
        plug-in CA, or creating the root Secret, when the cluster has none). Retries API
        trouble (a namespace not created yet) for `timeout` seconds, or until `stop` is
        set (returns ""); CAStateError for a CA that cannot be used. Returns what
        happened, for the log."""
        stop = stop or threading.Event()
        offer = offered_ca(self.offered, self.trust_domain) if self.offered is not None else None
        deadline = time.monotonic() + timeout
        delay = 0.5
        while not stop.is_set():
            try:
                return self._prepare_once(offer)
            except ApiError as e:
                if time.monotonic() + delay > deadline:
                    raise CAStateError(f"cannot read the CA Secrets in {self.namespace}: {e}") from None
                self._log.warning("ca secrets not readable yet", error=str(e), retry_in=delay)
                stop.wait(delay)
                delay = min(delay * 2, 5.0)
        return ""

    def _prepare_once(self, offer: ClusterCA | None = None) -> str:
        wanted = self.cluster_ca()
        created = offered = False
        if offer is not None and (wanted is None or wanted.source != CACERTS_SECRET):
            offered = self._offer(offer)
            wanted = self.cluster_ca()
        if wanted is None:
            cert_pem, key_pem = self._new_root()
            wanted, created = self._create_root_secret(cert_pem, key_pem)
        secret = f"{self.namespace}/{wanted.source}"
        if offered:
            event = f"CA of {self.offered} is the cluster's plug-in CA now"
            self._log.warning(event, secret=secret, signer_fingerprint=wanted.signer_fingerprint,
                              note="created Secret cacerts; every replica signs with it (a rotation where a "
                                   "self-signed root was in force before)")
        else:
            event = ("root CA created in the cluster" if created else f"CA loaded from Secret {wanted.source}")
            self._log.info(event, secret=secret, signer_fingerprint=wanted.signer_fingerprint)
        if offer is not None and offer.signer_fingerprint != wanted.signer_fingerprint:
            self._log.warning("offered CA not used: the cluster has its plug-in CA", ca_dir=str(self.offered),
                              secret=secret, signer_fingerprint=wanted.signer_fingerprint,
                              offered_fingerprint=offer.signer_fingerprint,
                              note=f"{self.offered} is left as it is; to use it, replace Secret "
                                   f"{self.namespace}/{CACERTS_SECRET} with its files (meshd rotates to it)")
        self._install(wanted, at_start=True)
        if self.offered is not None and (self.offered / TOKEN_KEY_FILE).is_file():
            # Tokens minted from the operator's directory (`meshd token --ca-dir`) stay valid.
            write_private(self.ca_dir / TOKEN_KEY_FILE, read_private(self.offered / TOKEN_KEY_FILE))
        return event

    # --- following the cluster ----------------------------------------------------------
    async def run(self, stop: asyncio.Event, ca: SignersInForce) -> None:
        """Every replica, until `stop`: mirror changes of the cluster's CA into the directory
        (the directory watcher rotates), and re-create istio-ca-secret if it was deleted."""
        while not stop.is_set():
            try:
                await asyncio.wait_for(stop.wait(), self.poll_interval)
                return
            except TimeoutError:
                pass
            try:
                await asyncio.to_thread(self._follow_once, ca)
            except (ApiError, CAError, OSError, ValueError) as e:
                message = str(e)
                if message != self._warned:
                    self._warned = message
                    self._log.warning("cluster CA not followed", error=message)

    def _follow_once(self, ca: SignersInForce) -> None:
        wanted = self.cluster_ca()
        current = ca.pending or ca.active
        if wanted is None:
            if current.kind != PLUG_IN:  # the root Secret was deleted: put ours back
                wanted, created = self._create_root_secret(current.cert.public_bytes(Encoding.PEM),
                                                           private_key_to_pem(current.key))
                if created:
                    self._log.warning("root Secret re-created from the root in use", secret=f"{self.namespace}/{CA_SECRET}")
            else:
                return
        self._warned = None
        if wanted.signer_fingerprint != current.fingerprint:
            self._log.info("cluster CA changed", secret=f"{self.namespace}/{wanted.source}",
                           signer_fingerprint=wanted.signer_fingerprint, old_signer_fingerprint=current.fingerprint)
            self._install(wanted, at_start=False)

    # --- the directory --------------------------------------------------------------------
    def _install(self, wanted: ClusterCA, *, at_start: bool) -> None:
        d = self.ca_dir
        ensure_private_dir(d)
        directory = CADirectory(d)
        holds_ca = _holds_ca(d)
        if holds_ca and not (d / MARKER).exists():
            # cluster_ca_dirs never makes a directory with a CA of its own the mirror: a
            # caller that does gets an error, not a CA silently replaced.
            raise CAStateError(f"{d} holds a CA that did not come from the cluster: it is not overwritten "
                               f"(offer it with --ca-dir, see docs/kubernetes.md)")
        old = None
        if holds_ca:
            try:
                old = directory.load(self.trust_domain, create=False).active
            except (CAError, OSError, ValueError):
                old = None  # unreadable leftovers: replaced below
        if old is not None and old.fingerprint == wanted.signer_fingerprint:
            write_public(d / MARKER, f"{self.namespace}/{wanted.source}\n".encode())
            return
        if old is not None:
            # Certificates from the old signer stay verifiable until they expire: archive
            # it (the watcher keeps its root in the bundle while the ledger needs it) and
            # assume other replicas issued from it for a whole certificate lifetime.
            directory.archive(old)
            directory.record_issue(old, utc_now() + self.keep_old_for, headroom=timedelta(0))
        with locked_dir(d):
            for name in (CA_CERT_FILE, CA_KEY_FILE, CERT_CHAIN_FILE, ROOT_KEY_FILE):
                if name not in wanted.files:
                    (d / name).unlink(missing_ok=True)
            _write_files(d, wanted.files)
            write_public(d / MARKER, f"{self.namespace}/{wanted.source}\n".encode())
        self._log.info("ca dir now holds the cluster's CA", ca_dir=str(d), secret=f"{self.namespace}/{wanted.source}",
                       signer_fingerprint=wanted.signer_fingerprint, replaced=old.fingerprint if old else None,
                       at_start=at_start)
