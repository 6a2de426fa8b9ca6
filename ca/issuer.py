"""Signing workload certificates in Istio's profile.

What istiod's CA puts in a workload certificate (security/pkg/pki/util/
generate_cert.go genCertTemplateFromCSR, san.go BuildSANExtension), and so do we:

  subject       empty: the identity lives only in the SAN
  issuer        the signer's subject (the root's, O=cluster.local, or a plug-in intermediate's)
  SAN           URI:spiffe://<td>/ns/<ns>/sa/<sa>, CRITICAL (RFC 5280 4.2.1.6:
                required when the subject is empty)
  key usage     Digital Signature, Key Encipherment; critical
  ext. usage    TLS Web Server + Client Authentication (one cert for both sides of mTLS)
  basic constr. CA:FALSE; critical
  AKI           the signer's subject key identifier
  serial        random 128 bits
  validity      notBefore = now - 2 min (clock skew grace), notAfter = now + ttl

The identity always comes from the caller (who authenticated the workload), never
from the CSR: a CSR only contributes its public key.
"""
from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Iterable
from datetime import datetime, timedelta
from typing import NamedTuple

import structlog
from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes
from cryptography.x509.oid import ExtendedKeyUsageOID

from .clock import CLOCK_SKEW_GRACE, Clock, utc_now
from .errors import CSRError
from .identity import Identity
from .keys import (
    KeyType,
    PrivateKey,
    PublicKey,
    check_public_key,
    generate_private_key,
    key_type_of,
    private_key_to_pem,
)
from .root import RootCA, random_serial
from .signer import Signer

DEFAULT_WORKLOAD_TTL = timedelta(hours=24)  # Istio's DEFAULT_WORKLOAD_CERT_TTL
MAX_WORKLOAD_TTL = timedelta(days=90)  # Istio's MAX_WORKLOAD_CERT_TTL
# The name Envoy's bootstrap verifies on istiod's secure xDS port (15012).
ISTIOD_DNS_NAMES = ("istiod.istio-system.svc",)

_DNS_NAME = re.compile(r"(\*\.)?[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*")

_LEAF_KEY_USAGE = x509.KeyUsage(
    digital_signature=True, content_commitment=False, key_encipherment=True, data_encipherment=False,
    key_agreement=False, key_cert_sign=False, crl_sign=False, encipher_only=False, decipher_only=False,
)
_LEAF_EXT_KEY_USAGE = x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH])


class KeyAndChain(NamedTuple):
    key_pem: bytes  # PKCS#8 private key: secret, never log it
    chain_pem: bytes  # leaf certificate, then the root


class CertificateAuthority:
    """Signs leaf certificates with one signer: meshd's self-signed root, or a plug-in
    intermediate (ca/signer.py). Stateless apart from the signer, so it is safe to call
    from several threads. Rotation replaces the whole object (controlplane/security/
    authority.py), never mutates it.

    `record`, if given, is called with (signer, not_after) for every workload
    certificate before it is returned (the CA directory's ledger of how long
    certificates chaining to each root may live; see ca/store.py)."""

    def __init__(
        self,
        root: RootCA | Signer,
        *,
        clock: Clock = utc_now,
        max_ttl: timedelta = MAX_WORKLOAD_TTL,
        logger: structlog.typing.FilteringBoundLogger | None = None,
        record: Callable[[Signer, datetime], None] | None = None,
    ) -> None:
        if isinstance(root, Signer):
            self._signer = root
            self._root = RootCA(root.root, root.key if root.cert == root.root else None, None, None)
        else:
            self._signer = Signer.from_root(root)
            self._root = root
        self._clock = clock
        self._max_ttl = max_ttl
        self._record = record
        self._log = logger or structlog.get_logger("meshd.ca")
        signing = self._signer.cert
        try:
            self._aki = x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(
                signing.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
            )
        except x509.ExtensionNotFound:
            self._aki = x509.AuthorityKeyIdentifier.from_issuer_public_key(self._signer.key.public_key())
        self._root_pem = self._signer.root_pem
        self._chain_pem = self._signer.chain_pem

    @property
    def root(self) -> RootCA:
        """The root (for a plug-in CA: its certificate only, the key is not ours)."""
        return self._root

    @property
    def signer(self) -> Signer:
        return self._signer

    @property
    def root_cert_pem(self) -> bytes:
        return self._root_pem

    @property
    def chain_pem(self) -> bytes:
        """What follows the leaf in every chain this CA returns: intermediates, root."""
        return self._chain_pem

    @property
    def max_ttl(self) -> timedelta:
        return self._max_ttl

    # --- workload certificates --------------------------------------------

    def sign_workload(
        self, public_key: CertificatePublicKeyTypes, identity: Identity, ttl: timedelta = DEFAULT_WORKLOAD_TTL
    ) -> bytes:
        """Certify ``public_key`` as ``identity``; returns the PEM chain: leaf, the
        signer's intermediates (plug-in CA), root."""
        try:
            checked = check_public_key(public_key)
        except ValueError as e:
            raise CSRError(str(e)) from None
        san = x509.SubjectAlternativeName([x509.UniformResourceIdentifier(identity.spiffe_uri)])
        cert = self._sign(checked, san, ttl, _LEAF_EXT_KEY_USAGE, subject=identity.spiffe_uri, record=True)
        return cert.public_bytes(serialization.Encoding.PEM) + self._chain_pem

    def sign_csr(self, csr_pem: bytes, identity: Identity, ttl: timedelta = DEFAULT_WORKLOAD_TTL) -> bytes:
        """Sign a PEM CSR for ``identity`` (from the caller's authentication).

        The CSR's subject, SANs and extensions are ignored: a workload may ask for
        anything, it only gets what it authenticated as. Its signature is checked
        (proof that the requester holds the private key).
        """
        csr = _load_csr(csr_pem)
        return self.sign_workload(csr.public_key(), identity, ttl)

    def issue_workload(
        self, identity: Identity, ttl: timedelta = DEFAULT_WORKLOAD_TTL, key_type: KeyType = "ec-p256"
    ) -> KeyAndChain:
        """Generate a key and certify it as ``identity`` (for file mode, where meshd
        writes the workload's credentials itself)."""
        key = generate_private_key(key_type)
        chain = self.sign_workload(key.public_key(), identity, ttl)
        return KeyAndChain(private_key_to_pem(key), chain)

    # --- meshd's own serving certificate ----------------------------------

    def issue_server_cert(
        self,
        dns_names: Iterable[str] = ISTIOD_DNS_NAMES,
        ttl: timedelta = DEFAULT_WORKLOAD_TTL,
        key_type: KeyType | None = None,
    ) -> KeyAndChain:
        """Key and certificate for meshd's secure xDS port, shaped like istiod's own:
        empty subject, critical SAN of DNS names, the workload key/extended key usages.
        A name that is an IP address becomes an IP SAN (the webhook port registered by
        `clientConfig.url: https://<ip>:<port>`, admission/certificate.py).
        The key type follows the signer's unless given (as istiod's GenKeyCert does).
        Not recorded in the ledger: it is re-issued whenever its signer changes."""
        names = [n.lower() for n in dns_names]
        if not names:
            raise ValueError("a server certificate needs at least one DNS name")
        sans: list[x509.GeneralName] = []
        for name in names:
            try:
                sans.append(x509.IPAddress(ipaddress.ip_address(name)))
                continue
            except ValueError:
                pass
            if len(name) > 253 or not _DNS_NAME.fullmatch(name):
                raise ValueError(f"invalid DNS name {name!r}")
            sans.append(x509.DNSName(name))
        key = generate_private_key(key_type or _key_type_or_default(self._signer.key))
        san = x509.SubjectAlternativeName(sans)
        cert = self._sign(key.public_key(), san, ttl, _LEAF_EXT_KEY_USAGE, subject=",".join(names))
        return KeyAndChain(private_key_to_pem(key), cert.public_bytes(serialization.Encoding.PEM) + self._chain_pem)

    # --- the one place certificates are built ------------------------------

    def _sign(
        self,
        public_key: PublicKey,
        san: x509.SubjectAlternativeName,
        ttl: timedelta,
        eku: x509.ExtendedKeyUsage,
        *,
        subject: str,
        record: bool = False,
    ) -> x509.Certificate:
        if ttl <= timedelta(0):
            raise ValueError(f"certificate TTL must be positive, got {ttl}")
        if ttl > self._max_ttl:
            raise ValueError(f"requested TTL {ttl} is greater than the maximum allowed {self._max_ttl}")
        now = self._clock()
        not_after = now + ttl
        chain_not_after = self._signer.not_after
        if not_after > chain_not_after:
            # A leaf outliving its CA chain would fail verification anyway; say so and cap it.
            self._log.warning("certificate TTL capped at root expiry", subject=subject,
                              root_not_after=chain_not_after.isoformat())
            not_after = chain_not_after
        serial = random_serial()
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([]))
            .issuer_name(self._signer.cert.subject)
            .public_key(public_key)
            .serial_number(serial)
            .not_valid_before(now - CLOCK_SKEW_GRACE)
            .not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(_LEAF_KEY_USAGE, critical=True)
            .add_extension(eku, critical=False)
            .add_extension(san, critical=True)  # critical: the subject is empty
            .add_extension(self._aki, critical=False)
            .sign(self._signer.key, hashes.SHA256())
        )
        if record and self._record is not None:
            # Before the certificate leaves: a crash must not forget a live certificate.
            self._record(self._signer, not_after)
        self._log.info("certificate issued", subject=subject, serial=f"{serial:x}",
                       ttl_seconds=int(ttl.total_seconds()), not_after=not_after.isoformat())
        return cert


def _key_type_or_default(key: PrivateKey) -> KeyType:
    try:
        return key_type_of(key)
    except ValueError:  # e.g. a P-384 or RSA-4096 plug-in key: serve with the default
        return "ec-p256"


def load_csr(csr_pem: bytes | str) -> x509.CertificateSigningRequest:
    """Parse and check a PEM CSR (signature = proof of possession); CSRError with the reason."""
    return _load_csr(csr_pem)


def _load_csr(csr_pem: bytes | str) -> x509.CertificateSigningRequest:
    if isinstance(csr_pem, str):
        csr_pem = csr_pem.encode()
    try:
        csr = x509.load_pem_x509_csr(csr_pem)
        valid = csr.is_signature_valid
    except (ValueError, UnsupportedAlgorithm) as e:
        raise CSRError(f"malformed CSR: {e}") from None
    if not valid:
        raise CSRError("CSR signature does not verify: the requester does not prove it holds the private key")
    return csr
