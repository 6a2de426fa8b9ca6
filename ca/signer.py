"""What signs workload certificates: a signing certificate and key, and the chain from
it up to its root.

Two shapes, as istiod has them:

- self-signed: meshd's own root signs directly (chain after the leaf: the root);
- plug-in CA ("cacerts", Istio's plugged-in certificates): an intermediate given by the
  operator signs; the chain after the leaf is the intermediate, any further
  intermediates, then the root. Istio's file names:

    ca-cert.pem     the signing (intermediate) CA certificate
    ca-key.pem      its private key (must be 0600: never readable by group/others)
    cert-chain.pem  the chain from ca-cert up towards the root (Istio's tools write
                    ca-cert + root; the root and a repeated ca-cert are tolerated)
    root-cert.pem   the root: the trust bundle workloads get (SDS ROOTCA)

Loading checks what istiod's KeyCertBundle.Verify checks: the key matches ca-cert,
ca-cert is a CA allowed to sign certificates, ca-cert chains through cert-chain to the
root, the root is self-signed, nothing has expired. A signer is immutable; rotation
swaps one signer for another (see ca/store.py).
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization

from .clock import Clock, utc_now
from .errors import CAStateError
from .keys import PrivateKey, describe_key, private_key_from_pem, read_private, spki_der
from .root import RootCA, fingerprint

CA_CERT_FILE = "ca-cert.pem"
CA_KEY_FILE = "ca-key.pem"
CERT_CHAIN_FILE = "cert-chain.pem"
PLUGIN_ROOT_FILE = "root-cert.pem"
PLUGIN_FILES = (CA_CERT_FILE, CA_KEY_FILE, CERT_CHAIN_FILE, PLUGIN_ROOT_FILE)

SELF_SIGNED = "self-signed"
PLUG_IN = "plug-in"


def pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


@dataclass(frozen=True)
class Signer:
    """A signing certificate with its key and its chain to the root."""

    cert: x509.Certificate  # signs leaves (the root itself when self-signed)
    key: PrivateKey = field(repr=False)
    intermediates: tuple[x509.Certificate, ...]  # above `cert`, below the root, nearest first
    root: x509.Certificate
    kind: str = SELF_SIGNED  # SELF_SIGNED | PLUG_IN
    source: Path | None = None  # the directory it was loaded from (for logs)

    @classmethod
    def from_root(cls, root: RootCA) -> Signer:
        return cls(cert=root.cert, key=root.signing_key, intermediates=(), root=root.cert, kind=SELF_SIGNED,
                   source=Path(root.cert_path).parent if root.cert_path else None)

    @property
    def fingerprint(self) -> str:
        """SHA-256 of the signing certificate: names this signer (ledger, logs)."""
        return fingerprint(self.cert)

    @property
    def root_fingerprint(self) -> str:
        return fingerprint(self.root)

    @property
    def root_pem(self) -> bytes:
        return pem(self.root)

    @property
    def chain_pem(self) -> bytes:
        """What follows a leaf it signs: the signing cert (unless it is the root), the
        intermediates, the root. Leaf + this = the full chain, root last."""
        certs = ([] if self.cert == self.root else [self.cert]) + list(self.intermediates) + [self.root]
        return b"".join(pem(c) for c in certs)

    @property
    def chain_certs(self) -> list[x509.Certificate]:
        return ([] if self.cert == self.root else [self.cert]) + list(self.intermediates) + [self.root]

    @property
    def not_after(self) -> datetime:
        """When the first certificate of the chain expires: nothing it signs may outlive it."""
        return min(c.not_valid_after_utc for c in [self.cert, *self.intermediates, self.root])

    def describe(self) -> dict[str, Any]:
        """Safe to log: fingerprints, subjects and expiry, never the key."""
        return {
            "signer": self.kind,
            "signer_subject": self.cert.subject.rfc4514_string(),
            "signer_fingerprint": self.fingerprint,
            "signer_not_after": self.cert.not_valid_after_utc.isoformat(),
            "root_fingerprint": self.root_fingerprint,
            "root_not_after": self.root.not_valid_after_utc.isoformat(),
            "key": describe_key(self.key),
        }


def has_plugin_files(ca_dir: Path) -> bool:
    """True when `ca_dir` holds (part of) a plug-in CA: its key or its signing cert."""
    return (Path(ca_dir) / CA_KEY_FILE).exists() or (Path(ca_dir) / CA_CERT_FILE).exists()


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        bc = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        return False
    if not bc.ca:
        return False
    try:
        ku = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        return True  # no key usage: not restricted
    return ku.key_cert_sign


def _issued_by(child: x509.Certificate, parent: x509.Certificate) -> bool:
    try:
        child.verify_directly_issued_by(parent)
        return True
    except (ValueError, TypeError, InvalidSignature):
        return False


def _load_certs(path: Path, what: str) -> list[x509.Certificate]:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise CAStateError(f"{path} is missing ({what})") from None
    try:
        certs = x509.load_pem_x509_certificates(data)
    except ValueError as e:
        raise CAStateError(f"{path}: not PEM certificates ({e})") from None
    if not certs:
        raise CAStateError(f"{path}: holds no certificate ({what})")
    return certs


def verify_chain(signing: x509.Certificate, intermediates: list[x509.Certificate], root: x509.Certificate,
                 clock: Clock = utc_now, where: str = "") -> None:
    """Raise CAStateError unless `signing` -> intermediates -> `root` is a valid CA chain now."""
    now = clock()
    prefix = f"{where}: " if where else ""
    try:
        root.verify_directly_issued_by(root)
    except (ValueError, TypeError, InvalidSignature):
        raise CAStateError(f"{prefix}the root certificate is not self-signed") from None
    for cert, what in [(root, "root"), (signing, "signing CA certificate"),
                       *((c, f"intermediate {c.subject.rfc4514_string()!r}") for c in intermediates)]:
        if not _is_ca(cert):
            raise CAStateError(f"{prefix}the {what} is not a CA allowed to sign certificates "
                               "(basic constraints CA:TRUE and key usage keyCertSign needed)")
        if now >= cert.not_valid_after_utc:
            raise CAStateError(f"{prefix}the {what} expired at {cert.not_valid_after_utc.isoformat()}")
        if now < cert.not_valid_before_utc:
            raise CAStateError(f"{prefix}the {what} is not valid before {cert.not_valid_before_utc.isoformat()}")
    path = [signing, *intermediates, root]
    for child, parent in itertools.pairwise(path):
        if child == parent:
            continue
        if not _issued_by(child, parent):
            raise CAStateError(
                f"{prefix}{child.subject.rfc4514_string() or 'a certificate'!s} is not signed by "
                f"{parent.subject.rfc4514_string()!s}: the chain does not lead to the root"
            )


def load_plugin(ca_dir: Path, *, clock: Clock = utc_now) -> Signer:
    """The plug-in CA from Istio's cacerts files in `ca_dir`; CAStateError if anything is
    missing, unsafe (key mode), inconsistent or expired. Never reads the key into a log."""
    d = Path(ca_dir)
    missing = [n for n in (CA_CERT_FILE, CA_KEY_FILE, PLUGIN_ROOT_FILE) if not (d / n).exists()]
    if missing:
        raise CAStateError(
            f"{d} holds a partial plug-in CA: {', '.join(missing)} missing "
            f"(Istio's cacerts need {CA_CERT_FILE}, {CA_KEY_FILE}, {PLUGIN_ROOT_FILE} and {CERT_CHAIN_FILE})"
        )
    signing = _load_certs(d / CA_CERT_FILE, "the signing CA certificate")[0]
    try:
        key = private_key_from_pem(read_private(d / CA_KEY_FILE))
    except ValueError as e:
        raise CAStateError(f"{d / CA_KEY_FILE}: {e}") from None
    if spki_der(key) != spki_der(signing.public_key()):
        raise CAStateError(f"{d / CA_KEY_FILE} is not the key of {d / CA_CERT_FILE}")
    roots = _load_certs(d / PLUGIN_ROOT_FILE, "the root certificate")
    root = roots[0]
    chain: list[x509.Certificate] = []
    if (d / CERT_CHAIN_FILE).exists():
        chain = _load_certs(d / CERT_CHAIN_FILE, "the certificate chain")
    # Istio's cert-chain.pem is ca-cert followed by the chain up to (and often including)
    # the root: keep only what lies strictly between the two.
    intermediates = [c for c in chain if c != signing and c != root]
    verify_chain(signing, intermediates, root, clock, where=str(d))
    return Signer(cert=signing, key=key, intermediates=tuple(intermediates), root=root, kind=PLUG_IN, source=d)
