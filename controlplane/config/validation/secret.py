"""Kubernetes Secrets holding TLS credentials for gateways (Istio's `credentialName`).

meshd reads the Secrets istiod's credential controller reads:
- `type: kubernetes.io/tls` with `tls.crt`, `tls.key` and optionally `ca.crt` (`ca.crl`);
- generic (`Opaque`) Secrets with `tls.crt`/`tls.key`/`ca.crt`, or Istio's generic keys
  `cert`/`key`/`cacert` (`crl`); a Secret with only a CA (`<name>-cacert`) is fine.
Values come from `data` (base64, as the API server stores them) and `stringData` (plain
text, which wins over `data` for the same key, as the API server merges them).

Any other Secret (service account tokens, registry credentials, an Opaque Secret without
these keys) is none of meshd's business and is skipped quietly by the parse gate.

Checks, with errors that name the key but never show key material: values decode, the
certificates and keys parse as PEM, the private key belongs to the first certificate of
the chain, and a certificate comes with its key.
"""
from __future__ import annotations

import base64
import binascii
import hashlib
from typing import Any

from .errors import FieldError, invalid, map_key, required, type_name, unknown_field

TLS_TYPE = "kubernetes.io/tls"
OPAQUE_TYPE = "Opaque"

# (certificate, key, CA, CRL) key names: kubernetes.io/tls style, then Istio's generic style.
TLS_KEYS = ("tls.crt", "tls.key", "ca.crt", "ca.crl")
GENERIC_KEYS = ("cert", "key", "cacert", "crl")
CREDENTIAL_KEYS = frozenset(TLS_KEYS + GENERIC_KEYS)

_SECRET_FIELDS = frozenset({"apiVersion", "kind", "metadata", "type", "data", "stringData", "immutable"})


def _decoded(doc: dict) -> tuple[dict[str, bytes], list[FieldError]]:
    """The Secret's values as bytes (data decoded, stringData on top)."""
    errs: list[FieldError] = []
    out: dict[str, bytes] = {}
    data = doc.get("data")
    if data is not None:
        if not isinstance(data, dict):
            errs.append(invalid("data", data, f"must be of type object, got {type_name(data)}"))
        else:
            for key, value in data.items():
                if value is None:
                    out[str(key)] = b""
                    continue
                if not isinstance(value, str):
                    errs.append(FieldError(map_key("data", key), f"Invalid value: must be a base64 string, got {type_name(value)}"))
                    continue
                try:
                    out[str(key)] = base64.b64decode("".join(value.split()), validate=True)
                except (binascii.Error, ValueError):
                    # Never echo the value: it may be a private key.
                    errs.append(FieldError(map_key("data", key), "Invalid value: illegal base64 data"))
    string_data = doc.get("stringData")
    if string_data is not None:
        if not isinstance(string_data, dict):
            errs.append(invalid("stringData", string_data, f"must be of type object, got {type_name(string_data)}"))
        else:
            for key, value in string_data.items():
                if not isinstance(value, str):
                    errs.append(FieldError(map_key("stringData", key), f"Invalid value: must be a string, got {type_name(value)}"))
                    continue
                out[str(key)] = value.encode()
    return out, errs


def is_credential(doc: dict) -> bool:
    """A Secret meshd serves: `kubernetes.io/tls`, or one carrying TLS credential keys."""
    if doc.get("type") == TLS_TYPE:
        return True
    keys: set[str] = set()
    for field in ("data", "stringData"):
        if isinstance(doc.get(field), dict):
            keys.update(str(k) for k in doc[field])
    return bool(keys & CREDENTIAL_KEYS)


def _field_of(doc: dict, key: str) -> str:
    string_data = doc.get("stringData")
    return map_key("stringData" if isinstance(string_data, dict) and key in string_data else "data", key)


def credential_parts(values: dict[str, bytes]) -> dict[str, bytes]:
    """{"cert", "key", "ca", "crl"} from whichever key style the Secret uses (istiod's
    extractCertAndKey / extractRoot: the kubernetes.io/tls names win)."""
    out: dict[str, bytes] = {}
    for part, keys in (("cert", ("tls.crt", "cert")), ("key", ("tls.key", "key")), ("ca", ("ca.crt", "cacert")),
                       ("crl", ("ca.crl", "crl"))):
        for k in keys:
            if values.get(k):
                out[part] = values[k]
                break
    return out


def _source_key(values: dict[str, bytes], part: str) -> str:
    keys = {"cert": ("tls.crt", "cert"), "key": ("tls.key", "key"), "ca": ("ca.crt", "cacert"), "crl": ("ca.crl", "crl")}[part]
    for k in keys:
        if values.get(k):
            return k
    return keys[0]


def validate_secret(doc: dict) -> list[FieldError]:
    errs: list[FieldError] = []
    for key in doc:
        if key not in _SECRET_FIELDS:
            errs.append(unknown_field("", str(key)))
    secret_type = doc.get("type", OPAQUE_TYPE)
    if not isinstance(secret_type, str):
        errs.append(invalid("type", secret_type, f"must be of type string, got {type_name(secret_type)}"))
        secret_type = OPAQUE_TYPE
    values, decode_errs = _decoded(doc)
    errs += decode_errs
    if decode_errs:
        return errs
    if secret_type == TLS_TYPE:
        # The API server's own rule for this type.
        for k in ("tls.crt", "tls.key"):
            if k not in values:
                errs.append(required(map_key("data", k)))
        if errs:
            return errs
    errs += check_material(values, lambda k: _field_of(doc, k))
    return errs


def check_material(values: dict[str, bytes], field_of=lambda k: map_key("data", k)) -> list[FieldError]:
    """PEM parse and key/certificate match (istiod refuses such a Secret at push time;
    meshd refuses it at the gate, so the last good version stays in force)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    errs: list[FieldError] = []
    parts = credential_parts(values)
    cert_field = field_of(_source_key(values, "cert"))
    key_field = field_of(_source_key(values, "key"))
    certs = []
    if "cert" in parts:
        try:
            certs = x509.load_pem_x509_certificates(parts["cert"])
        except ValueError:
            errs.append(FieldError(cert_field, "Invalid value: not a PEM certificate (chain)"))
    if "key" in parts:
        try:
            key = serialization.load_pem_private_key(parts["key"], password=None)
        except (ValueError, TypeError):
            errs.append(FieldError(key_field, "Invalid value: not an unencrypted PEM private key"))
            key = None
        except Exception:  # unsupported key types
            errs.append(FieldError(key_field, "Invalid value: unsupported private key"))
            key = None
        if key is not None and certs:
            pub = serialization.PublicFormat.SubjectPublicKeyInfo
            enc = serialization.Encoding.DER
            if key.public_key().public_bytes(enc, pub) != certs[0].public_key().public_bytes(enc, pub):
                errs.append(FieldError(key_field, "Invalid value: the private key does not match the certificate "
                                                  f"in {cert_field}"))
    if "cert" in parts and "key" not in parts:
        errs.append(FieldError(key_field, f"Required value: {cert_field} needs its private key"))
    if "key" in parts and "cert" not in parts:
        errs.append(FieldError(cert_field, f"Required value: {key_field} needs its certificate"))
    if "ca" in parts:
        try:
            x509.load_pem_x509_certificates(parts["ca"])
        except ValueError:
            errs.append(FieldError(field_of(_source_key(values, "ca")), "Invalid value: not a PEM CA bundle"))
    if "crl" in parts:
        try:
            x509.load_pem_x509_crl(parts["crl"])
        except ValueError:
            errs.append(FieldError(field_of(_source_key(values, "crl")), "Invalid value: not a PEM certificate revocation list"))
    if not parts:
        errs.append(FieldError("data", "Required value: no TLS credential keys "
                                       "(tls.crt/tls.key/ca.crt, or cert/key/cacert)"))
    return errs


def secret_body(doc: dict) -> tuple[dict[str, Any], dict[str, bytes]]:
    """(spec, material) for an accepted Secret. The spec holds no key material: the type,
    and a fingerprint per credential key (what debug views may show); the material (PEM
    bytes of cert, key, ca, crl) is kept apart so nothing that dumps specs can leak it."""
    values, _ = _decoded(doc)
    parts = credential_parts(values)
    spec = {
        "type": doc.get("type", OPAQUE_TYPE),
        "keys": {k: "sha256:" + hashlib.sha256(v).hexdigest()[:16] for k, v in sorted(values.items())
                 if k in CREDENTIAL_KEYS},
    }
    return spec, parts
