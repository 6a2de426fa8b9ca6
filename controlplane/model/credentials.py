"""TLS credentials from Kubernetes Secrets, as istiod's credential controller serves them.

A Gateway server names a Secret with `credentialName`; the gateway's Envoy fetches it over
SDS as `kubernetes://<name>` (certificate chain and key) and, for MUTUAL and
OPTIONAL_MUTUAL, `kubernetes://<name>-cacert` (the CA that client certificates must chain
to). The CA comes from a Secret named `<name>-cacert` if there is one, else from the
`ca.crt` (or `cacert`) of the Secret `<name>` itself (istiod's GetCaCert).

Secrets are looked up in one namespace only: the namespace of the proxy asking (istiod
lets a gateway read the Secrets of its own namespace, never another's).
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from ..config.objects import ConfigObject

SDS_PREFIX = "kubernetes://"
CA_SUFFIX = "-cacert"


@dataclass(frozen=True)
class Credential:
    namespace: str
    name: str
    cert_chain: bytes = b""
    private_key: bytes = b""
    ca: bytes = b""
    crl: bytes = b""
    generation: str = ""

    def __repr__(self) -> str:  # never print key material
        return (f"Credential({self.namespace}/{self.name}, cert={bool(self.cert_chain)}, key={bool(self.private_key)}, "
                f"ca={bool(self.ca)}, crl={bool(self.crl)})")


def credentials_from(secrets: Iterable[ConfigObject]) -> dict[tuple[str, str], Credential]:
    out: dict[tuple[str, str], Credential] = {}
    for obj in secrets:
        parts: Mapping[str, bytes] = obj.extra.get("credential") or {}
        out[(obj.namespace, obj.name)] = Credential(
            namespace=obj.namespace,
            name=obj.name,
            cert_chain=parts.get("cert", b""),
            private_key=parts.get("key", b""),
            ca=parts.get("ca", b""),
            crl=parts.get("crl", b""),
            generation=obj.generation,
        )
    return out


def parse_sds_name(resource: str) -> tuple[str, bool] | None:
    """`kubernetes://name` -> ("name", False); `kubernetes://name-cacert` -> ("name", True)
    when read as a CA request; None for names that are no Kubernetes credential."""
    if not resource.startswith(SDS_PREFIX):
        return None
    name = resource[len(SDS_PREFIX):]
    if "/" in name:  # kubernetes://ns/name (cross-namespace references) are not served
        return None
    return name, name.endswith(CA_SUFFIX)


def sds_name(credential_name: str) -> str:
    return SDS_PREFIX + credential_name


def sds_ca_name(credential_name: str) -> str:
    return SDS_PREFIX + credential_name + CA_SUFFIX
