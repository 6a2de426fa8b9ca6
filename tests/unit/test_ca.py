"""meshd's CA: root persistence and file safety, Istio's workload certificate
profile (checked with cryptography and with the real openssl CLI), CSR signing,
key types, and file-mode service account tokens."""
from __future__ import annotations

import base64
import json
import os
import re
import shutil
import stat
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, ExtensionOID, NameOID

from ca import (
    CAError,
    CAStateError,
    CertificateAuthority,
    CSRError,
    Identity,
    TokenAuthority,
    TokenError,
    load_or_create_root,
    load_or_create_token_key,
    write_private,
)
from ca import keys as keys_module
from ca.keys import generate_private_key, private_key_from_pem

CATALOG = Identity("cluster.local", "istioinaction", "catalog")
NOW = datetime(2030, 6, 1, 12, 0, 0, tzinfo=UTC)


def fixed_clock(at: datetime = NOW):
    return lambda: at


class Recorder:
    """A structlog-shaped logger that keeps what it was told."""

    def __init__(self) -> None:
        self.events: list[tuple[str, str, dict]] = []

    def _record(self, level):
        return lambda event, **kw: self.events.append((level, event, kw))

    def __getattr__(self, level):
        return self._record(level)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def split_chain(chain_pem: bytes) -> list[x509.Certificate]:
    return x509.load_pem_x509_certificates(chain_pem)


def openssl() -> str:
    path = shutil.which("openssl")
    assert path, "the openssl CLI is required (apt-get install -y openssl)"
    return path


def run_openssl(*args: str) -> str:
    result = subprocess.run([openssl(), *args], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, f"openssl {' '.join(args)} failed:\n{result.stdout}{result.stderr}"
    return result.stdout + result.stderr


@pytest.fixture
def ca_dir(tmp_path: Path) -> Path:
    return tmp_path / "var" / "meshd" / "ca"


@pytest.fixture
def authority(ca_dir: Path) -> CertificateAuthority:
    return CertificateAuthority(load_or_create_root(ca_dir, logger=Recorder()), clock=fixed_clock(), logger=Recorder())


# --- identity ------------------------------------------------------------------


def test_identity_spiffe_uri_round_trip():
    assert CATALOG.spiffe_uri == "spiffe://cluster.local/ns/istioinaction/sa/catalog"
    assert str(CATALOG) == CATALOG.spiffe_uri
    assert Identity.from_spiffe_uri(CATALOG.spiffe_uri) == CATALOG


@pytest.mark.parametrize("uri", [
    "",
    "http://cluster.local/ns/a/sa/b",
    "SPIFFE://cluster.local/ns/a/sa/b",
    "spiffe://cluster.local/ns/a",
    "spiffe://cluster.local/ns/a/sa/b/extra",
    "spiffe://cluster.local/ns/a/sa/b/",
    "spiffe://cluster.local/sa/b/ns/a",
    "spiffe://cluster.local/ns//sa/b",
    "spiffe://cluster.local/ns/../sa/b",
    "spiffe://cluster.local/ns/a/sa/b?x=1",
    "spiffe://cluster.local/ns/a/sa/b#frag",
    "spiffe://Cluster.Local/ns/a/sa/b",
    "spiffe://cluster.local:443/ns/a/sa/b",
    "spiffe://user@cluster.local/ns/a/sa/b",
    "spiffe:///ns/a/sa/b",
    "spiffe://cluster.local/ns/a b/sa/b",
])
def test_identity_parse_is_strict(uri):
    with pytest.raises(ValueError, match="SPIFFE|invalid"):
        Identity.from_spiffe_uri(uri)


def test_identity_rejects_bad_parts():
    with pytest.raises(ValueError, match="namespace"):
        Identity("cluster.local", "a/b", "sa")
    with pytest.raises(ValueError, match="trust domain"):
        Identity("Cluster.local", "ns", "sa")


# --- writing private files -------------------------------------------------------


def test_write_private_is_0600_and_atomic(tmp_path, monkeypatch):
    target = tmp_path / "key.pem"
    target.write_bytes(b"old")
    os.chmod(target, 0o644)
    opened = []
    real_open = os.open

    def spy_open(path, flags, mode=0o777, *a, **kw):
        opened.append((Path(path), flags, mode))
        return real_open(path, flags, mode, *a, **kw)

    monkeypatch.setattr(keys_module.os, "open", spy_open)
    old_umask = os.umask(0)  # even with a permissive umask the file is born 0600
    try:
        write_private(target, b"secret")
    finally:
        os.umask(old_umask)
    assert target.read_bytes() == b"secret"
    assert mode(target) == 0o600
    created = [o for o in opened if o[1] & os.O_CREAT]
    assert created and all(m == 0o600 and flags & os.O_EXCL for _, flags, m in created)
    assert all(p.parent == tmp_path and p != target for p, _, _ in created)  # temp file beside, then renamed
    assert sorted(p.name for p in tmp_path.iterdir()) == ["key.pem"]  # no temp file left


# --- the root ------------------------------------------------------------------------


def test_root_created_on_first_start(ca_dir):
    root = load_or_create_root(ca_dir, logger=Recorder())
    assert mode(ca_dir) == 0o700
    assert mode(ca_dir / "root-key.pem") == 0o600
    assert mode(ca_dir / "root-cert.pem") == 0o644
    assert root.cert.public_bytes(serialization.Encoding.PEM) == (ca_dir / "root-cert.pem").read_bytes()

    cert = root.cert
    assert cert.subject.rfc4514_string() == "O=cluster.local"
    assert cert.issuer == cert.subject
    cert.verify_directly_issued_by(cert)
    bc = cert.extensions.get_extension_for_class(x509.BasicConstraints)
    assert bc.critical and bc.value.ca
    ku = cert.extensions.get_extension_for_class(x509.KeyUsage)
    assert ku.critical and ku.value.key_cert_sign and ku.value.crl_sign and not ku.value.digital_signature
    ski = cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
    assert ski.value == x509.SubjectKeyIdentifier.from_public_key(cert.public_key())
    lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
    assert timedelta(days=3650) <= lifetime <= timedelta(days=3650, minutes=3)
    assert isinstance(root.key, ec.EllipticCurvePrivateKey)


def test_root_reused_on_later_starts(ca_dir):
    first = load_or_create_root(ca_dir, logger=Recorder())
    key_bytes = (ca_dir / "root-key.pem").read_bytes()
    second = load_or_create_root(ca_dir, logger=Recorder())
    assert second.serial == first.serial
    assert second.fingerprint == first.fingerprint
    assert (ca_dir / "root-key.pem").read_bytes() == key_bytes


def test_root_logs_paths_and_fingerprints_never_key_material(ca_dir):
    log = Recorder()
    root = load_or_create_root(ca_dir, logger=log)
    load_or_create_root(ca_dir, logger=log)
    assert [e for _, e, _ in log.events] == ["root CA created", "root CA loaded"]
    text = repr(log.events) + repr(root)
    assert root.fingerprint in text and str(ca_dir / "root-key.pem") in text
    key_pem = (ca_dir / "root-key.pem").read_text()
    key_body = "".join(key_pem.splitlines()[1:-1])
    assert "PRIVATE KEY" not in text and key_body[:40] not in text
    assert str(root.key.private_numbers().private_value) not in text


@pytest.mark.parametrize("bad_mode", [0o640, 0o604, 0o644, 0o660])
def test_root_refuses_group_or_world_accessible_key(ca_dir, bad_mode):
    load_or_create_root(ca_dir, logger=Recorder())
    os.chmod(ca_dir / "root-key.pem", bad_mode)
    with pytest.raises(CAStateError, match=f"mode {bad_mode:04o}.*0600"):
        load_or_create_root(ca_dir, logger=Recorder())


def test_root_refuses_key_that_does_not_match_cert(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    load_or_create_root(a, logger=Recorder())
    load_or_create_root(b, logger=Recorder())
    shutil.copy2(b / "root-key.pem", a / "root-key.pem")
    with pytest.raises(CAStateError, match="do not match"):
        load_or_create_root(a, logger=Recorder())


def test_root_refuses_cert_without_key(ca_dir):
    load_or_create_root(ca_dir, logger=Recorder())
    (ca_dir / "root-key.pem").unlink()
    with pytest.raises(CAStateError, match="private key .* is missing"):
        load_or_create_root(ca_dir, logger=Recorder())


def test_root_cert_recreated_from_surviving_key(ca_dir):
    first = load_or_create_root(ca_dir, logger=Recorder())
    (ca_dir / "root-cert.pem").unlink()  # as after a crash between the two writes
    second = load_or_create_root(ca_dir, logger=Recorder())
    assert second.serial != first.serial
    assert keys_module.spki_der(second.key) == keys_module.spki_der(first.key)


def test_root_refuses_expired_root(ca_dir):
    load_or_create_root(ca_dir, ttl=timedelta(days=1), clock=fixed_clock(NOW - timedelta(days=2)), logger=Recorder())
    with pytest.raises(CAStateError, match="expired"):
        load_or_create_root(ca_dir, clock=fixed_clock(), logger=Recorder())


def test_root_refuses_garbage_key(ca_dir):
    ca_dir.mkdir(parents=True)
    write_private(ca_dir / "root-key.pem", b"not a key")
    with pytest.raises(CAStateError, match="root-key.pem"):
        load_or_create_root(ca_dir, logger=Recorder())


def test_root_with_other_trust_domain_and_rsa(ca_dir):
    root = load_or_create_root(ca_dir, trust_domain="example.org", key_type="rsa-2048", logger=Recorder())
    assert root.cert.subject.rfc4514_string() == "O=example.org"
    assert isinstance(root.key, rsa.RSAPrivateKey) and root.key.key_size == 2048


# --- Istio's workload certificate profile ------------------------------------------


def test_workload_profile(authority):
    key_pem, chain_pem = authority.issue_workload(CATALOG)
    leaf, root = split_chain(chain_pem)
    assert root == authority.root.cert
    assert chain_pem.endswith(authority.root_cert_pem)

    assert len(leaf.subject) == 0
    assert leaf.issuer.rfc4514_string() == "O=cluster.local"
    leaf.verify_directly_issued_by(root)

    exts = {e.oid: e for e in leaf.extensions}
    assert set(exts) == {
        ExtensionOID.SUBJECT_ALTERNATIVE_NAME, ExtensionOID.KEY_USAGE, ExtensionOID.EXTENDED_KEY_USAGE,
        ExtensionOID.BASIC_CONSTRAINTS, ExtensionOID.AUTHORITY_KEY_IDENTIFIER,
    }
    san = exts[ExtensionOID.SUBJECT_ALTERNATIVE_NAME]
    assert san.critical
    assert san.value.get_values_for_type(x509.UniformResourceIdentifier) == [CATALOG.spiffe_uri]
    assert len(list(san.value)) == 1
    ku = exts[ExtensionOID.KEY_USAGE]
    assert ku.critical and ku.value.digital_signature and ku.value.key_encipherment
    assert not (ku.value.key_cert_sign or ku.value.crl_sign or ku.value.content_commitment)
    eku = exts[ExtensionOID.EXTENDED_KEY_USAGE]
    assert not eku.critical
    assert list(eku.value) == [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
    bc = exts[ExtensionOID.BASIC_CONSTRAINTS]
    assert bc.critical and not bc.value.ca
    aki = exts[ExtensionOID.AUTHORITY_KEY_IDENTIFIER].value
    assert aki.key_identifier == root.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest

    assert 0 < leaf.serial_number < 2**128
    # Istio: notBefore = now - 2 min (clock skew grace), notAfter = now + ttl.
    assert leaf.not_valid_before_utc == NOW - timedelta(minutes=2)
    assert leaf.not_valid_after_utc == NOW + timedelta(hours=24)

    key = private_key_from_pem(key_pem)
    assert keys_module.spki_der(key) == keys_module.spki_der(leaf.public_key())
    assert isinstance(key, ec.EllipticCurvePrivateKey)


def test_workload_profile_with_openssl(tmp_path, ca_dir):
    root = load_or_create_root(ca_dir, logger=Recorder())
    authority = CertificateAuthority(root, logger=Recorder())  # real clock: openssl verifies against now
    _, chain_pem = authority.issue_workload(CATALOG)
    leaf = split_chain(chain_pem)[0]
    leaf_path = tmp_path / "leaf.pem"
    leaf_path.write_bytes(leaf.public_bytes(serialization.Encoding.PEM))

    text = run_openssl("x509", "-noout", "-text", "-in", str(leaf_path))
    assert re.search(r"^\s*Subject:\s*$", text, re.M), text  # empty subject
    assert re.search(r"^\s*Issuer: O = cluster\.local\s*$", text, re.M), text
    assert re.search(
        r"X509v3 Subject Alternative Name: critical\s*\n\s*URI:spiffe://cluster\.local/ns/istioinaction/sa/catalog\s*\n",
        text), text
    assert re.search(r"X509v3 Key Usage: critical\s*\n\s*Digital Signature, Key Encipherment\s*\n", text), text
    assert re.search(
        r"X509v3 Extended Key Usage:\s*\n\s*TLS Web Server Authentication, TLS Web Client Authentication\s*\n",
        text), text
    assert re.search(r"X509v3 Basic Constraints: critical\s*\n\s*CA:FALSE\s*\n", text), text
    assert "X509v3 Authority Key Identifier" in text

    fmt = "%b %d %H:%M:%S %Y GMT"
    not_before = datetime.strptime(" ".join(re.search(r"Not Before: (.*GMT)", text)[1].split()), fmt)
    not_after = datetime.strptime(" ".join(re.search(r"Not After : (.*GMT)", text)[1].split()), fmt)
    assert not_after - not_before == timedelta(hours=24, minutes=2)  # 24 h lifetime + 2 min backdate

    assert run_openssl("verify", "-CAfile", str(ca_dir / "root-cert.pem"), str(leaf_path)).strip().endswith(": OK")
    # x509_strict also checks RFC 5280 rules: critical SAN for an empty subject, AKI, SKI on the CA.
    assert run_openssl("verify", "-x509_strict", "-purpose", "sslclient", "-CAfile",
                       str(ca_dir / "root-cert.pem"), str(leaf_path)).strip().endswith(": OK")
    assert run_openssl("verify", "-x509_strict", "-purpose", "sslserver", "-CAfile",
                       str(ca_dir / "root-cert.pem"), str(leaf_path)).strip().endswith(": OK")


@pytest.mark.parametrize("root_type", ["ec-p256", "rsa-2048"])
@pytest.mark.parametrize("leaf_type", ["ec-p256", "rsa-2048"])
def test_key_types(tmp_path, root_type, leaf_type):
    root = load_or_create_root(tmp_path / "ca", key_type=root_type, logger=Recorder())
    authority = CertificateAuthority(root, logger=Recorder())
    key_pem, chain_pem = authority.issue_workload(CATALOG, key_type=leaf_type)
    key = private_key_from_pem(key_pem)
    leaf = split_chain(chain_pem)[0]
    expected = ec.EllipticCurvePrivateKey if leaf_type == "ec-p256" else rsa.RSAPrivateKey
    assert isinstance(key, expected)
    assert keys_module.spki_der(key) == keys_module.spki_der(leaf.public_key())
    leaf.verify_directly_issued_by(root.cert)
    (tmp_path / "leaf.pem").write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "key.pem").write_bytes(key_pem)
    run_openssl("verify", "-x509_strict", "-CAfile", str(root.cert_path), str(tmp_path / "leaf.pem"))
    # the key pair openssl reads back is the one certified
    assert run_openssl("pkey", "-in", str(tmp_path / "key.pem"), "-pubout") == run_openssl(
        "x509", "-in", str(tmp_path / "leaf.pem"), "-noout", "-pubkey")


def test_unknown_key_type_refused(authority):
    with pytest.raises(ValueError, match="unknown key type"):
        authority.issue_workload(CATALOG, key_type="dsa-1024")


def test_ttl_limits(authority, ca_dir):
    _, chain = authority.issue_workload(CATALOG, ttl=timedelta(hours=1))
    assert split_chain(chain)[0].not_valid_after_utc == NOW + timedelta(hours=1)
    with pytest.raises(ValueError, match="maximum"):
        authority.issue_workload(CATALOG, ttl=timedelta(days=91))
    with pytest.raises(ValueError, match="positive"):
        authority.issue_workload(CATALOG, ttl=timedelta(0))


def test_leaf_never_outlives_root(tmp_path):
    root = load_or_create_root(tmp_path / "ca", ttl=timedelta(hours=10), clock=fixed_clock(), logger=Recorder())
    log = Recorder()
    authority = CertificateAuthority(root, clock=fixed_clock(), logger=log)
    leaf = split_chain(authority.issue_workload(CATALOG)[1])[0]
    assert leaf.not_valid_after_utc == root.cert.not_valid_after_utc
    assert any(e == "certificate TTL capped at root expiry" for _, e, _ in log.events)


def test_issuing_logs_serial_not_key(authority):
    log = Recorder()
    authority._log = log
    key_pem, chain = authority.issue_workload(CATALOG)
    leaf = split_chain(chain)[0]
    [(level, event, fields)] = log.events
    assert (level, event) == ("info", "certificate issued")
    assert fields["subject"] == CATALOG.spiffe_uri and fields["serial"] == f"{leaf.serial_number:x}"
    assert "PRIVATE" not in repr(log.events)


def test_ten_certificates(authority):
    serials = set()
    for i in range(10):
        identity = Identity("cluster.local", "istioinaction", f"sa-{i}")
        _, chain = authority.issue_workload(identity)
        leaf, root = split_chain(chain)
        leaf.verify_directly_issued_by(root)
        assert leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
            x509.UniformResourceIdentifier) == [identity.spiffe_uri]
        serials.add(leaf.serial_number)
    assert len(serials) == 10


# --- CSRs ----------------------------------------------------------------------------------


def make_csr(key=None, cn="evil", uris=("spiffe://cluster.local/ns/istio-system/sa/istiod",)) -> bytes:
    key = key or ec.generate_private_key(ec.SECP256R1())
    builder = x509.CertificateSigningRequestBuilder().subject_name(
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn), x509.NameAttribute(NameOID.ORGANIZATION_NAME, "evil")])
    ).add_extension(
        x509.SubjectAlternativeName([*(x509.UniformResourceIdentifier(u) for u in uris), x509.DNSName("evil.example")]),
        critical=False,
    ).add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
    return builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)


def test_csr_identity_comes_from_caller_not_csr(authority):
    key = ec.generate_private_key(ec.SECP256R1())
    chain = authority.sign_csr(make_csr(key), CATALOG)
    leaf, _ = split_chain(chain)
    assert len(leaf.subject) == 0
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert list(san) == [x509.UniformResourceIdentifier(CATALOG.spiffe_uri)]
    assert not leaf.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert keys_module.spki_der(leaf.public_key()) == keys_module.spki_der(key)
    # the CSR as text works too (gRPC hands it over as a string)
    assert split_chain(authority.sign_csr(make_csr(key).decode(), CATALOG))[0].subject == x509.Name([])


def test_csr_with_bad_signature_refused(authority):
    pem = make_csr(cn="evilcn")
    der = x509.load_pem_x509_csr(pem).public_bytes(serialization.Encoding.DER)
    assert der.count(b"evilcn") == 1
    tampered = der.replace(b"evilcn", b"evilcm")  # still parses, no longer matches its signature
    tampered_pem = b"-----BEGIN CERTIFICATE REQUEST-----\n" + base64.encodebytes(tampered) + \
        b"-----END CERTIFICATE REQUEST-----\n"
    x509.load_pem_x509_csr(tampered_pem)  # well-formed
    with pytest.raises(CSRError, match="signature"):
        authority.sign_csr(tampered_pem, CATALOG)


@pytest.mark.parametrize("garbage", [b"", b"hello", b"-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n"])
def test_malformed_csr_refused(authority, garbage):
    with pytest.raises(CSRError, match="malformed"):
        authority.sign_csr(garbage, CATALOG)


def test_weak_keys_refused(authority):
    weak = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    with pytest.raises(CSRError, match="too small"):
        authority.sign_csr(make_csr(weak), CATALOG)
    with pytest.raises(CSRError, match="curve"):
        authority.sign_workload(ec.generate_private_key(ec.SECP256K1()).public_key(), CATALOG)
    assert isinstance(CSRError("x"), CAError)


# --- meshd's own serving certificate ----------------------------------------------------------


def test_server_cert(tmp_path, ca_dir):
    root = load_or_create_root(ca_dir, logger=Recorder())
    authority = CertificateAuthority(root, logger=Recorder())
    key_pem, chain_pem = authority.issue_server_cert(["istiod.istio-system.svc", "meshd.example.svc"])
    leaf, root_cert = split_chain(chain_pem)
    assert root_cert == root.cert and len(leaf.subject) == 0
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    assert san.critical
    assert san.value.get_values_for_type(x509.DNSName) == ["istiod.istio-system.svc", "meshd.example.svc"]
    assert ExtendedKeyUsageOID.SERVER_AUTH in leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert isinstance(private_key_from_pem(key_pem), ec.EllipticCurvePrivateKey)  # follows the root's type
    (tmp_path / "server.pem").write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    run_openssl("verify", "-x509_strict", "-purpose", "sslserver", "-verify_hostname", "istiod.istio-system.svc",
                "-CAfile", str(ca_dir / "root-cert.pem"), str(tmp_path / "server.pem"))
    with pytest.raises(ValueError, match="DNS name"):
        authority.issue_server_cert(["bad name"])
    with pytest.raises(ValueError, match="at least one"):
        authority.issue_server_cert([])


# --- tokens ------------------------------------------------------------------------------------


@pytest.fixture
def tokens(ca_dir) -> TokenAuthority:
    return TokenAuthority(load_or_create_token_key(ca_dir, logger=Recorder()), clock=fixed_clock())


def b64(obj) -> str:
    raw = obj if isinstance(obj, bytes) else json.dumps(obj, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def unb64(seg: str) -> bytes:
    return base64.urlsafe_b64decode(seg + "=" * (-len(seg) % 4))


def test_token_round_trip(tokens):
    token = tokens.issue("istioinaction", "catalog")
    assert tokens.verify(token) == ("istioinaction", "catalog")
    header_b64, claims_b64, sig_b64 = token.split(".")
    header, claims = json.loads(unb64(header_b64)), json.loads(unb64(claims_b64))
    assert header == {"alg": "ES256", "typ": "JWT", "kid": tokens.kid}
    assert claims["iss"] == "meshd"
    assert claims["sub"] == "system:serviceaccount:istioinaction:catalog"
    assert claims["aud"] == ["istio-ca"]
    assert claims["iat"] == int(NOW.timestamp()) and claims["exp"] == int((NOW + timedelta(hours=24)).timestamp())
    assert claims["kubernetes.io"] == {"namespace": "istioinaction", "serviceaccount": {"name": "catalog"}}
    assert len(unb64(sig_b64)) == 64  # raw r||s, not DER


def test_token_key_created_once_0600(ca_dir):
    first = TokenAuthority(load_or_create_token_key(ca_dir, logger=Recorder()))
    assert mode(ca_dir / "token-key.pem") == 0o600 and mode(ca_dir) == 0o700
    second = TokenAuthority(load_or_create_token_key(ca_dir, logger=Recorder()))
    assert first.kid == second.kid
    assert second.verify(first.issue("ns", "sa")) == ("ns", "sa")  # survives a restart
    os.chmod(ca_dir / "token-key.pem", 0o644)
    with pytest.raises(CAStateError, match="0644"):
        load_or_create_token_key(ca_dir, logger=Recorder())


def test_token_tampered_payload_rejected(tokens):
    header_b64, claims_b64, sig_b64 = tokens.issue("istioinaction", "catalog").split(".")
    claims = json.loads(unb64(claims_b64))
    claims["sub"] = "system:serviceaccount:istio-system:istiod"
    claims["kubernetes.io"] = {"namespace": "istio-system", "serviceaccount": {"name": "istiod"}}
    with pytest.raises(TokenError, match="signature"):
        tokens.verify(f"{header_b64}.{b64(claims)}.{sig_b64}")


def test_token_wrong_audience_rejected(tokens):
    with pytest.raises(TokenError, match="audience"):
        tokens.verify(tokens.issue("ns", "sa", audience=["kubernetes"]))
    with pytest.raises(TokenError, match="audience"):
        tokens.verify(tokens.issue("ns", "sa"), audience="other")
    assert tokens.verify(tokens.issue("ns", "sa", audience=["a", "istio-ca"])) == ("ns", "sa")


def test_token_expired_rejected(tokens):
    token = tokens.issue("ns", "sa", ttl=timedelta(hours=1))
    later = TokenAuthority(tokens.key, clock=fixed_clock(NOW + timedelta(hours=1)))
    with pytest.raises(TokenError, match="expired"):
        later.verify(token)
    almost = TokenAuthority(tokens.key, clock=fixed_clock(NOW + timedelta(minutes=59)))
    assert almost.verify(token) == ("ns", "sa")


def test_token_not_yet_valid_rejected(tokens):
    earlier = TokenAuthority(tokens.key, clock=fixed_clock(NOW - timedelta(minutes=5)))
    with pytest.raises(TokenError, match="not valid yet"):
        earlier.verify(tokens.issue("ns", "sa"))


def test_token_alg_none_rejected(tokens):
    _, claims_b64, _ = tokens.issue("ns", "sa").split(".")
    for alg in ("none", "None", "HS256", "RS256", "ES384", None):
        with pytest.raises(TokenError, match="algorithm"):
            tokens.verify(f"{b64({'alg': alg, 'typ': 'JWT'})}.{claims_b64}.")


def test_token_signed_by_another_key_rejected(tokens):
    other = TokenAuthority(generate_private_key("ec-p256"), clock=fixed_clock())
    with pytest.raises(TokenError, match="unknown key"):
        tokens.verify(other.issue("ns", "sa"))
    # same, without the kid hint: the signature itself fails
    header_b64, claims_b64, sig_b64 = other.issue("ns", "sa").split(".")
    with pytest.raises(TokenError, match="signature"):
        tokens.verify(f"{b64({'alg': 'ES256', 'typ': 'JWT'})}.{claims_b64}.{sig_b64}")


def test_token_der_signature_rejected(tokens):
    header_b64, claims_b64, _ = tokens.issue("ns", "sa").split(".")
    der = tokens.key.sign(f"{header_b64}.{claims_b64}".encode(), ec.ECDSA(hashes.SHA256()))
    with pytest.raises(TokenError, match="signature"):
        tokens.verify(f"{header_b64}.{claims_b64}.{b64(der)}")


def test_token_hand_built_claims_checked(tokens):
    def sign(claims, header=None):
        header_b64 = b64(header or {"alg": "ES256", "typ": "JWT", "kid": tokens.kid})
        claims_b64 = claims if isinstance(claims, str) else b64(claims)
        from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
        r, s = decode_dss_signature(tokens.key.sign(f"{header_b64}.{claims_b64}".encode(), ec.ECDSA(hashes.SHA256())))
        return f"{header_b64}.{claims_b64}.{b64(r.to_bytes(32, 'big') + s.to_bytes(32, 'big'))}"

    good = {"iss": "meshd", "sub": "system:serviceaccount:ns:sa", "aud": "istio-ca",
            "exp": int(NOW.timestamp()) + 60}
    assert tokens.verify(sign(good)) == ("ns", "sa")  # aud as a single string is allowed (RFC 7519)
    cases = {
        "issuer": {**good, "iss": "someone-else"},
        "no 'exp'": {k: v for k, v in good.items() if k != "exp"},
        "NumericDate": {**good, "exp": "tomorrow"},
        "service account": {**good, "sub": "alice"},
        "disagrees": {**good, "kubernetes.io": {"namespace": "other", "serviceaccount": {"name": "sa"}}},
    }
    for message, claims in cases.items():
        with pytest.raises(TokenError, match=message):
            tokens.verify(sign(claims))
    dup = b64(b'{"iss":"meshd","sub":"system:serviceaccount:ns:sa","sub":"system:serviceaccount:a:b",'
              b'"aud":"istio-ca","exp":9999999999}')
    with pytest.raises(TokenError, match="duplicate"):
        tokens.verify(sign(dup))
    with pytest.raises(TokenError, match="crit"):
        tokens.verify(sign(good, {"alg": "ES256", "crit": ["exp"]}))


@pytest.mark.parametrize("garbage", [
    "", "garbage", "a.b", "a.b.c", "a.b.c.d", "...", "eyJ.eyJ.sig", "é.é.é",
    f"{b64(b'[1]')}.{b64({})}.", f"{b64({'alg': 'ES256'})}.{b64({})}.AAAA",
    f"{b64({'alg': 'ES256'})}.{b64({})}.{'A' * 86}==", "x" * 10000,
])
def test_token_garbage_rejected(tokens, garbage):
    with pytest.raises(TokenError):
        tokens.verify(garbage)


def test_token_error_never_echoes_token(tokens):
    token = tokens.issue("ns", "sa")
    with pytest.raises(TokenError) as err:
        tokens.verify(token, audience="nope")
    assert token.split(".")[2] not in str(err.value) and token not in str(err.value)


def _der_length(n: int) -> bytes:
    if n < 0x80:
        return bytes([n])
    body = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(body)]) + body


def _pem_of_numbers(n: rsa.RSAPrivateNumbers) -> bytes:
    """PKCS#1 PEM of any numbers, fitting or not (cryptography refuses to build a key whose
    p*q is not its modulus, so the DER is written here)."""
    def integer(v: int) -> bytes:
        body = v.to_bytes(v.bit_length() // 8 + 1, "big")
        return b"\x02" + _der_length(len(body)) + body

    pub = n.public_numbers
    seq = b"".join(integer(v) for v in (0, pub.n, pub.e, n.d, n.p, n.q, n.dmp1, n.dmq1, n.iqmp))
    der = b"\x30" + _der_length(len(seq)) + seq
    text = base64.encodebytes(der).decode().replace("\n", "")
    lines = [text[i:i + 64] for i in range(0, len(text), 64)]
    return ("-----BEGIN RSA PRIVATE KEY-----\n" + "\n".join(lines) + "\n-----END RSA PRIVATE KEY-----\n").encode()


def test_rsa_private_keys_whose_numbers_do_not_fit_are_refused():
    """OpenSSL's primality tests are skipped at load (a 4096-bit CA key took a quarter of a
    second at every start); the structural checks Go's Validate makes still refuse a key
    whose numbers do not fit together, before it signs anything."""
    good = generate_private_key("rsa-2048")
    n = good.private_numbers()
    pub = n.public_numbers
    assert keys_module.spki_der(private_key_from_pem(_pem_of_numbers(n))) == keys_module.spki_der(good)

    def with_(**changed) -> rsa.RSAPrivateNumbers:
        fields = {"p": n.p, "q": n.q, "d": n.d, "dmp1": n.dmp1, "dmq1": n.dmq1, "iqmp": n.iqmp,
                  "public_numbers": pub, **changed}
        return rsa.RSAPrivateNumbers(**fields)

    other = generate_private_key("rsa-2048").private_numbers()
    for numbers, reason in [
        (with_(p=other.p), "product of its primes"),
        (with_(d=n.d + 2), "does not invert"),
        (with_(dmp1=n.dmp1 ^ 2), "CRT values"),
        (with_(iqmp=n.iqmp ^ 2), "CRT values"),
    ]:
        with pytest.raises(ValueError, match=reason):
            private_key_from_pem(_pem_of_numbers(numbers))


def test_a_4096_bit_rsa_key_loads_and_signs_what_its_certificate_verifies():
    key = rsa.generate_private_key(public_exponent=65537, key_size=4096)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                            serialization.NoEncryption())
    loaded = private_key_from_pem(pem)
    assert isinstance(loaded, rsa.RSAPrivateKey) and loaded.key_size == 4096
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import padding

    signature = loaded.sign(b"payload", padding.PKCS1v15(), hashes.SHA256())
    key.public_key().verify(signature, b"payload", padding.PKCS1v15(), hashes.SHA256())
