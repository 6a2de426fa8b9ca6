"""`proxy-config secret` rows: the SDS secrets of a config dump with their certificates'
serial, validity and trust domain, as istioctl lists them.
"""
from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass

from cryptography import x509
from google.protobuf.message import Message

from .config_filters import unpack_as
from .configdump import ConfigDump


@dataclass
class SecretItem:
    name: str
    state: str
    type: str = ""
    valid: bool = False
    serial: str = ""
    not_after: str = ""
    not_before: str = ""
    trust_domain: str = ""


def _cert_meta(pem: bytes, item: SecretItem, now: _dt.datetime) -> None:
    try:
        cert = x509.load_pem_x509_certificate(pem)
    except ValueError:
        item.valid = False
        return
    try:
        is_ca = cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        is_ca = False
    nb, na = cert.not_valid_before_utc, cert.not_valid_after_utc
    item.type = "CA" if is_ca else "Cert Chain"
    n = cert.serial_number  # Go: fmt.Sprintf("%x", SerialNumber.Bytes()), leading zero byte kept
    item.serial = n.to_bytes((n.bit_length() + 7) // 8, "big").hex()
    item.not_after = na.strftime("%Y-%m-%dT%H:%M:%SZ")
    item.not_before = nb.strftime("%Y-%m-%dT%H:%M:%SZ")
    item.valid = nb < now < na


def _spiffe_trust_domain(pem: bytes) -> str:
    try:
        cert = x509.load_pem_x509_certificate(pem)
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (ValueError, x509.ExtensionNotFound):
        return ""
    for uri in san.get_values_for_type(x509.UniformResourceIdentifier):
        if uri.startswith("spiffe://"):
            return uri[len("spiffe://"):].split("/", 1)[0]
    return ""


def envoy_secrets(dump: ConfigDump, now: _dt.datetime | None = None) -> tuple[list[SecretItem], bool]:
    """Secret rows (warming first, then active) and whether any is trust-domain aware (SPIFFE)."""
    now = now or _dt.datetime.now(_dt.UTC)
    sd = dump.secrets()
    items: list[SecretItem] = []
    spiffe = False

    def parse(ds: Message, state: str) -> list[SecretItem]:
        nonlocal spiffe
        secret = unpack_as(ds.secret, "envoy.extensions.transport_sockets.tls.v3.Secret")
        base = SecretItem(ds.name, state)
        if secret is None:
            return [base]
        chain = secret.tls_certificate.certificate_chain.inline_bytes
        ca = secret.validation_context.trusted_ca.inline_bytes
        if chain:
            _cert_meta(chain, base, now)
            base.trust_domain = _spiffe_trust_domain(chain)
            return [base]
        if ca:
            _cert_meta(ca, base, now)
            return [base]
        cv = secret.validation_context.custom_validator_config
        if cv.HasField("typed_config"):
            spiffe_cfg = unpack_as(cv.typed_config,
                                    "envoy.extensions.transport_sockets.tls.v3.SPIFFECertValidatorConfig")
            if spiffe_cfg is not None and spiffe_cfg.trust_domains:
                spiffe = True
                out = []
                for td in spiffe_cfg.trust_domains:
                    item = SecretItem(ds.name, state, trust_domain=td.name)
                    _cert_meta(td.trust_bundle.inline_bytes, item, now)
                    out.append(item)
                return out
        return [base]

    for ws in sd.dynamic_warming_secrets:
        items += parse(ws, "WARMING")
    for s in sd.dynamic_active_secrets:
        rows = parse(s, "ACTIVE")
        if s.version_info == "uninitialized":
            for r in rows:
                r.state = "UNINITIALIZED"
        items += rows
    return items, spiffe
