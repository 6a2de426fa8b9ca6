"""TLS credentials from Kubernetes Secrets, as istiod's credential controller serves them.

A Gateway server names a Secret with `credentialName`; the gateway's Envoy fetches it over
SDS as `kubernetes://<name>` (certificate chain and key) and, for MUTUAL and
OPTIONAL_MUTUAL, `kubernetes://<name>-cacert` (the CA that client certificates must chain
to). The CA comes from a Secret named `<name>-cacert` if there is one, else from the
`ca.crt` (or `cacert`) of the Secret `<name>` itself (istiod's GetCaCert).

Secrets are looked up in the namespace of the proxy asking (istiod lets a gateway read
the Secrets of its own namespace), except for the Kubernetes Gateway API's references,
`kubernetes-gateway://<namespace>/<name>` (what a Gateway's `certificateRefs` become, as
istiod names them): those name their namespace, and a gateway may read one only when a
Gateway server of its own namespace that applies to it names it and the Secret is in that
namespace or a ReferenceGrant lets Gateways of that namespace use it
(model/gateway_api/certificates.py decides, istiod's filterAuthorizedResources).
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from ..config.objects import ConfigObject

SDS_PREFIX = "kubernetes://"
GATEWAY_SDS_PREFIX = "kubernetes-gateway://"
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


@dataclass(frozen=True)
class CredentialRef:
    """The Secret a server's `credentialName` stands for on a proxy, and its SDS name."""

    namespace: str
    name: str
    resource: str  # the SDS resource name: kubernetes://<name> or kubernetes-gateway://<ns>/<name>

    @property
    def gateway_api(self) -> bool:
        """A `kubernetes-gateway://` reference: served only when authorized (certificates.py)."""
        return self.resource.startswith(GATEWAY_SDS_PREFIX)


def credential_ref(credential_name: str, proxy_namespace: str) -> CredentialRef | None:
    """`name` -> the Secret `name` of the proxy's namespace; `kubernetes-gateway://ns/name`
    -> the Secret `name` of `ns`; None for a `kubernetes-gateway://` name without both
    parts (never served)."""
    if not credential_name.startswith(GATEWAY_SDS_PREFIX):
        return CredentialRef(proxy_namespace, credential_name, SDS_PREFIX + credential_name)
    ns, _, name = credential_name[len(GATEWAY_SDS_PREFIX):].partition("/")
    if not ns or not name or "/" in name:
        return None
    return CredentialRef(ns, name, credential_name)


def gateway_credential_name(namespace: str, name: str) -> str:
    """How the Gateway API names a certificateRef in a derived Istio Gateway (istiod's)."""
    return f"{GATEWAY_SDS_PREFIX}{namespace}/{name}"


def sds_name(credential_name: str) -> str:
    if credential_name.startswith(GATEWAY_SDS_PREFIX):
        return credential_name
    return SDS_PREFIX + credential_name


def sds_ca_name(credential_name: str) -> str:
    return sds_name(credential_name) + CA_SUFFIX
