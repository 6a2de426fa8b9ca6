"""The self-signed root CA: created on first start, reused on every later start.

Files in ``ca_dir`` (created 0700):
  root-cert.pem  0644  the root certificate (the mesh's trust anchor)
  root-key.pem   0600  its private key

The same root must survive restarts: every workload trusts it, so a new root on
restart would break mTLS between old and new certificates until all rotate.
"""
from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

import structlog
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import NameOID

from .clock import CLOCK_SKEW_GRACE, Clock, utc_now
from .errors import CAStateError
from .identity import check_trust_domain
from .keys import (
    KeyType,
    PrivateKey,
    describe_key,
    ensure_private_dir,
    generate_private_key,
    locked_dir,
    private_key_from_pem,
    private_key_to_pem,
    read_private,
    spki_der,
    write_private,
    write_public,
)

ROOT_CERT_FILE = "root-cert.pem"
ROOT_KEY_FILE = "root-key.pem"
# Istio's self-signed root lives 10 years (CITADEL_SELF_SIGNED_CA_CERT_TTL).
ROOT_TTL = timedelta(days=3650)


def random_serial() -> int:
    """A random, positive, non-zero 128-bit serial, as Istio's genSerialNum."""
    while not (serial := secrets.randbits(128)):
        pass
    return serial


def fingerprint(cert: x509.Certificate) -> str:
    """SHA-256 fingerprint in OpenSSL's ``AB:CD:...`` form (safe to log)."""
    return cert.fingerprint(hashes.SHA256()).hex(":").upper()


@dataclass(frozen=True)
class RootCA:
    cert: x509.Certificate
    # None, and no paths: the view of a plug-in CA's root, whose key is not ours (ca/issuer.py).
    key: PrivateKey | None = field(repr=False)
    cert_path: Path | None
    key_path: Path | None

    @property
    def signing_key(self) -> PrivateKey:
        """The key of a root that is ours; CAStateError for the view of a plug-in CA's root."""
        if self.key is None:
            raise CAStateError(f"root {self.fingerprint} is a plug-in CA's: its key is not ours")
        return self.key

    @property
    def cert_pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    @property
    def serial(self) -> int:
        return self.cert.serial_number

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.cert)


def load_or_create_root(
    ca_dir: Path,
    trust_domain: str = "cluster.local",
    key_type: KeyType = "ec-p256",
    *,
    ttl: timedelta = ROOT_TTL,
    clock: Clock = utc_now,
    logger: structlog.typing.FilteringBoundLogger | None = None,
) -> RootCA:
    """Load the root CA from ``ca_dir``, creating it on first start.

    ``trust_domain`` and ``key_type`` only shape a root being created; an existing
    root is reused as it is. Raises CAStateError when the files are unsafe or
    inconsistent, rather than silently replacing a root workloads already trust.
    """
    log = logger or structlog.get_logger("meshd.ca")
    check_trust_domain(trust_domain)
    ca_dir = Path(ca_dir)
    ensure_private_dir(ca_dir)
    cert_path, key_path = ca_dir / ROOT_CERT_FILE, ca_dir / ROOT_KEY_FILE
    with locked_dir(ca_dir):
        root, event = load_or_create_root_locked(ca_dir, trust_domain, key_type, ttl=ttl, clock=clock)

    organization = root.cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)
    if [a.value for a in organization] != [trust_domain]:
        log.warning(
            "root CA subject differs from configured trust domain",
            subject=root.cert.subject.rfc4514_string(), trust_domain=trust_domain, cert_path=str(cert_path),
        )
    log.info(
        event,
        cert_path=str(cert_path), key_path=str(key_path), serial=f"{root.serial:x}",
        fingerprint_sha256=root.fingerprint, key=describe_key(root.signing_key),
        not_after=root.cert.not_valid_after_utc.isoformat(),
    )
    return root


def load_or_create_root_locked(
    ca_dir: Path, trust_domain: str, key_type: KeyType = "ec-p256", *, ttl: timedelta = ROOT_TTL,
    clock: Clock = utc_now,
) -> tuple[RootCA, str]:
    """load_or_create_root's work, for a caller already holding the directory lock
    (ca/store.py); returns the root and what happened ("root CA loaded", ...)."""
    cert_path, key_path = ca_dir / ROOT_CERT_FILE, ca_dir / ROOT_KEY_FILE
    has_cert, has_key = cert_path.exists(), key_path.exists()
    if has_cert and not has_key:
        raise CAStateError(
            f"{cert_path} exists but its private key {key_path} is missing; "
            "restore the key, or remove the certificate to create a new root (all workloads must then re-fetch it)"
        )
    if has_key:
        key = _load_key(key_path)
        if has_cert:
            root = RootCA(_load_cert(cert_path), key, cert_path, key_path)
            _check_loaded(root, clock)
            event = "root CA loaded"
        else:
            # A crash between writing the key and the certificate leaves only the
            # key (it is written first); no certificate can have been issued, so
            # re-creating the certificate from it is safe.
            root = _create_cert(key, trust_domain, ttl, clock, cert_path, key_path)
            event = "root CA certificate re-created from existing key"
    else:
        key = generate_private_key(key_type)
        write_private(key_path, private_key_to_pem(key))
        root = _create_cert(key, trust_domain, ttl, clock, cert_path, key_path)
        event = "root CA created"

    return root, event


def create_root(
    ca_dir: Path, trust_domain: str, key_type: KeyType = "ec-p256", *, ttl: timedelta = ROOT_TTL,
    clock: Clock = utc_now,
) -> RootCA:
    """A brand-new self-signed root written to `ca_dir` (replacing root-key.pem and
    root-cert.pem): for root rotation, under the directory lock (ca/store.py)."""
    check_trust_domain(trust_domain)
    key = generate_private_key(key_type)
    key_path = ca_dir / ROOT_KEY_FILE
    write_private(key_path, private_key_to_pem(key))
    return _create_cert(key, trust_domain, ttl, clock, ca_dir / ROOT_CERT_FILE, key_path)


def _load_key(key_path: Path) -> PrivateKey:
    data = read_private(key_path)
    try:
        return private_key_from_pem(data)
    except ValueError as e:
        raise CAStateError(f"{key_path}: {e}") from None


def _load_cert(cert_path: Path) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(cert_path.read_bytes())
    except ValueError as e:
        raise CAStateError(f"{cert_path}: not a PEM certificate ({e})") from None


def _check_loaded(root: RootCA, clock: Clock) -> None:
    cert, path = root.cert, root.cert_path
    if spki_der(cert.public_key()) != spki_der(root.signing_key):
        raise CAStateError(f"{path} and {root.key_path} do not match: the certificate is for another key")
    try:
        bc = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        bc = None
    if bc is None or not bc.ca:
        raise CAStateError(f"{path} is not a CA certificate (basic constraints CA:TRUE missing)")
    try:
        cert.verify_directly_issued_by(cert)
    except (ValueError, TypeError, InvalidSignature):
        raise CAStateError(f"{path} is not a self-signed root certificate") from None
    if clock() >= cert.not_valid_after_utc:
        raise CAStateError(
            f"{path} expired at {cert.not_valid_after_utc.isoformat()}; certificates it signs would not verify"
        )


def _create_cert(
    key: PrivateKey, trust_domain: str, ttl: timedelta, clock: Clock, cert_path: Path, key_path: Path
) -> RootCA:
    now = clock()
    # Istio's self-signed root: subject O=<trust domain> and nothing else.
    name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, trust_domain)])
    public_key = key.public_key()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(public_key)
        .serial_number(random_serial())
        .not_valid_before(now - CLOCK_SKEW_GRACE)
        .not_valid_after(now + ttl)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
                encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .sign(key, hashes.SHA256())
    )
    write_public(cert_path, cert.public_bytes(serialization.Encoding.PEM))
    return RootCA(cert, key, cert_path, key_path)
