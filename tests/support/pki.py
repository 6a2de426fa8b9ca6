"""Certificates for tests, made with `cryptography`: a CA and leaf certificates (EC P-256),
Istio's cacerts files (root + intermediate, as an operator makes them), the Kubernetes
Secrets that carry them, and the serial a TLS server presents."""
from __future__ import annotations

import base64
import datetime
import json
import socket
import ssl
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


@dataclass
class Pem:
    cert: bytes
    key: bytes
    serial: int = 0
    _cert_obj: object = None
    _key_obj: object = None


def make_ca(common_name: str = "meshd test CA") -> Pem:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "meshd tests"),
                      x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1)).not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
                                     key_encipherment=False, data_encipherment=False, key_agreement=False,
                                     encipher_only=False, decipher_only=False), critical=True)
        .sign(key, hashes.SHA256())
    )
    return Pem(_pem(cert), _key_pem(key), cert.serial_number, cert, key)


def make_cert(ca: Pem, dns_names: list[str], *, client: bool = False) -> Pem:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    usage = [ExtendedKeyUsageOID.CLIENT_AUTH] if client else [ExtendedKeyUsageOID.SERVER_AUTH]
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, dns_names[0])]))
        .issuer_name(ca._cert_obj.subject).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1)).not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in dns_names]), critical=False)
        .add_extension(x509.ExtendedKeyUsage(usage), critical=False)
        .sign(ca._key_obj, hashes.SHA256())
    )
    return Pem(_pem(cert), _key_pem(key), cert.serial_number, cert, key)


def _pem(cert) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _key_pem(key) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def tls_secret_yaml(name: str, namespace: str, pem: Pem, ca: bytes | None = None) -> str:
    """A `kubernetes.io/tls` Secret as `kubectl create secret tls` writes it (base64 data)."""
    data = {"tls.crt": b64(pem.cert), "tls.key": b64(pem.key)}
    if ca is not None:
        data["ca.crt"] = b64(ca)
    return json.dumps({"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
                       "metadata": {"name": name, "namespace": namespace}, "data": data})


def generic_secret_yaml(name: str, namespace: str, pem: Pem | None = None, ca: bytes | None = None) -> str:
    """A generic (Opaque) Secret with plain-text `stringData`."""
    data = {}
    if pem is not None:
        data.update({"tls.crt": pem.cert.decode(), "tls.key": pem.key.decode()})
    if ca is not None:
        data["ca.crt"] = ca.decode()
    return json.dumps({"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
                       "metadata": {"name": name, "namespace": namespace}, "stringData": data})


def served_certificate_serial(host: str, port: int, sni: str) -> int:
    """The serial of the certificate a TLS server presents for `sni` (no verification)."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with socket.create_connection((host, port), timeout=5) as raw, ctx.wrap_socket(raw, server_hostname=sni) as s:
        der = s.getpeercert(binary_form=True)
    return x509.load_der_x509_certificate(der).serial_number


def make_cacerts(d: Path, name: str = "Test") -> tuple[x509.Certificate, x509.Certificate]:
    """Istio's cacerts files in `d`, as an operator would make them (Istio's tools/certs
    Makefile: a root, an intermediate under it): ca-cert.pem, ca-key.pem (0600),
    cert-chain.pem (intermediate + root), root-cert.pem. Returns (root, intermediate)."""
    from ca.keys import write_private

    now = datetime.datetime.now(datetime.UTC)

    def ca_cert(subject, issuer, pub, signer, days, pathlen):
        return (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer).public_key(pub)
                .serial_number(x509.random_serial_number())
                .not_valid_before(now - datetime.timedelta(hours=1)).not_valid_after(now + datetime.timedelta(days=days))
                .add_extension(x509.BasicConstraints(ca=True, path_length=pathlen), critical=True)
                .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                             data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                             crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
                .add_extension(x509.SubjectKeyIdentifier.from_public_key(pub), critical=False)
                .sign(signer, hashes.SHA256()))

    root_key, int_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    root_name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Istio"),
                           x509.NameAttribute(NameOID.COMMON_NAME, f"{name} Root CA")])
    int_name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Istio"),
                          x509.NameAttribute(NameOID.COMMON_NAME, f"{name} Intermediate CA"),
                          x509.NameAttribute(NameOID.LOCALITY_NAME, "cluster1")])
    root = ca_cert(root_name, root_name, root_key.public_key(), root_key, 3650, None)
    inter = ca_cert(int_name, root_name, int_key.public_key(), root_key, 730, 0)
    d.mkdir(parents=True, exist_ok=True)
    pem = serialization.Encoding.PEM
    (d / "root-cert.pem").write_bytes(root.public_bytes(pem))
    (d / "ca-cert.pem").write_bytes(inter.public_bytes(pem))
    (d / "cert-chain.pem").write_bytes(inter.public_bytes(pem) + root.public_bytes(pem))
    write_private(d / "ca-key.pem", int_key.private_bytes(pem, serialization.PrivateFormat.PKCS8,
                                                           serialization.NoEncryption()))
    return root, inter
