"""Gateway, typed: the workloads it selects and its servers. How the servers of every
Gateway selecting a proxy merge per listening port is the model's business
(model/gateways.py)."""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .common import each, integer, labels, mapping, nonempty_strings, strings, text


@dataclass(frozen=True, slots=True)
class TLSCertificate:
    server_certificate: str = ""
    private_key: str = ""


@dataclass(frozen=True, slots=True)
class ServerTLSSettings:
    """A server's `tls` (ServerTLSSettings). A server without one, or with an empty one,
    has `tls` None."""

    https_redirect: bool = False
    mode: str = ""  # "" when not given: PASSTHROUGH
    credential_name: str = ""
    credential_names: tuple[str, ...] = ()
    server_certificate: str = ""
    private_key: str = ""
    ca_certificates: str = ""
    ca_crl: str = ""
    tls_certificates: tuple[TLSCertificate, ...] = ()
    subject_alt_names: tuple[str, ...] = ()
    verify_certificate_spki: tuple[str, ...] = ()
    verify_certificate_hash: tuple[str, ...] = ()
    min_protocol_version: str = ""  # upper case; "" when not given
    max_protocol_version: str = ""
    cipher_suites: tuple[str, ...] = ()

    @property
    def credentials(self) -> tuple[str, ...]:
        """The Secrets the server's certificates come from (`credentialName`, or `credentialNames`)."""
        return (self.credential_name,) if self.credential_name else self.credential_names


def server_tls(raw: Mapping[str, Any]) -> ServerTLSSettings:
    return ServerTLSSettings(
        https_redirect=bool(raw.get("httpsRedirect")),
        mode=text(raw.get("mode")).upper(),
        credential_name=text(raw.get("credentialName")),
        credential_names=nonempty_strings(raw.get("credentialNames")),
        server_certificate=text(raw.get("serverCertificate")),
        private_key=text(raw.get("privateKey")),
        ca_certificates=text(raw.get("caCertificates")),
        ca_crl=text(raw.get("caCrl")),
        tls_certificates=tuple(TLSCertificate(text(c.get("serverCertificate")), text(c.get("privateKey")))
                               for c in raw.get("tlsCertificates") or () if isinstance(c, Mapping)),
        subject_alt_names=strings(raw.get("subjectAltNames")),
        verify_certificate_spki=strings(raw.get("verifyCertificateSpki")),
        verify_certificate_hash=strings(raw.get("verifyCertificateHash")),
        min_protocol_version=text(raw.get("minProtocolVersion")).upper(),
        max_protocol_version=text(raw.get("maxProtocolVersion")).upper(),
        cipher_suites=strings(raw.get("cipherSuites")),
    )


@dataclass(frozen=True, slots=True)
class Server:
    number: int | None = None  # `port.number`; None when not given (or unreadable)
    protocol: str = ""  # `port.protocol` as written
    port_name: str = ""
    hosts: tuple[str, ...] = ()  # as written, possibly "ns/host"
    tls: ServerTLSSettings | None = None
    bind: str = ""


def server(raw: Mapping[str, Any]) -> Server:
    port = mapping(raw.get("port"))
    tls = mapping(raw.get("tls"))
    return Server(
        number=integer(port.get("number")),
        protocol=text(port.get("protocol")),
        port_name=text(port.get("name")),
        hosts=nonempty_strings(raw.get("hosts")),
        tls=server_tls(tls) if tls else None,
        bind=text(raw.get("bind")),
    )


@dataclass(frozen=True, slots=True)
class Gateway:
    selector: Mapping[str, str] = field(default_factory=dict)  # empty: selects nothing meshd serves
    servers: tuple[Server, ...] = ()


def gateway(spec: Mapping[str, Any]) -> Gateway:
    return Gateway(labels(spec.get("selector")), each(spec.get("servers"), server))
