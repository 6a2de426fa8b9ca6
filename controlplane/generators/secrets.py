"""SDS for Kubernetes credentials: `kubernetes://<name>` and `kubernetes://<name>-cacert`
(istiod's SecretGen for credentialName, read not copied).

`default` and `ROOTCA` (the workload identity) are the SecretProvider's (security/sds.py);
the server asks this builder for every other SDS name a proxy subscribes to, and sends
the ones it returns.

- `kubernetes://<name>`: `tls_certificate` with the Secret's chain and private key;
- `kubernetes://<name>-cacert`: `validation_context` with the CA (and CRL) that client
  certificates must chain to: the Secret `<name>-cacert`, else `ca.crt` of `<name>`.

Who gets them: a proxy gets only the Secrets of its own namespace (a private key never
reaches a proxy of another namespace), and only when it proved its identity on the
secure port (istiod refuses credentials to an unauthenticated proxy the same way); the
server checks the node's namespace against that identity before anything is served.

The Gateway API's certificates, `kubernetes-gateway://<ns>/<name>[-cacert]`, go to a
gateway only as model/gateway_api/certificates.py authorizes them: named by a Gateway of
its namespace that selects it, the Secret in its namespace or granted by a
ReferenceGrant. Nothing else of another namespace is ever built for a proxy.

Secrets are sent inline, never as file names: the proxy has no other way to get them.
"""
from __future__ import annotations

from envoy.config.core.v3 import base_pb2
from envoy.extensions.transport_sockets.tls.v3 import common_pb2, secret_pb2
from google.protobuf.message import Message

from ..model.credentials import CA_SUFFIX, SDS_PREFIX, Credential, CredentialRef
from ..model.gateway_api.certificates import authorized
from ..model.mesh import MeshSnapshot
from ..model.proxy import ROUTER, Proxy


def build(mesh: MeshSnapshot, proxy: Proxy) -> list[tuple[str, Message]]:
    if not proxy.workload_cert:
        return []
    out: dict[str, Message] = {}
    ns = proxy.namespace
    for name, cred in mesh.credentials_of(ns):
        if cred.cert_chain and cred.private_key:
            out[SDS_PREFIX + name] = certificate_secret(SDS_PREFIX + name, cred)
        base = name[: -len(CA_SUFFIX)] if name.endswith(CA_SUFFIX) else name
        ca = mesh.ca_credential(ns, base)
        if ca:
            ca_name = SDS_PREFIX + base + CA_SUFFIX
            crl = _crl_for(mesh, ns, base)
            out[ca_name] = ca_secret(ca_name, ca, crl)
    for ref, with_ca in gateway_certificates(mesh, proxy):
        granted = mesh.credential(ref.namespace, ref.name)
        if granted is not None and granted.cert_chain and granted.private_key:
            out[ref.resource] = certificate_secret(ref.resource, granted)
        ca = mesh.ca_credential(ref.namespace, ref.name) if with_ca else b""
        if ca:
            out[ref.resource + CA_SUFFIX] = ca_secret(ref.resource + CA_SUFFIX, ca, _crl_for(mesh, ref.namespace, ref.name))
    return sorted(out.items())


def gateway_certificates(mesh: MeshSnapshot, proxy: Proxy) -> tuple[tuple[CredentialRef, bool], ...]:
    """The `kubernetes-gateway://` references this proxy may read (a gateway's only)."""
    if proxy.type != ROUTER or not proxy.workload_cert:
        return ()
    return authorized(mesh.gateways_for(proxy), proxy.namespace, mesh.gateway_api.grants)


def _crl_for(mesh: MeshSnapshot, namespace: str, base: str) -> bytes:
    own = mesh.credential(namespace, base + CA_SUFFIX)
    if own is not None and (own.ca or own.cert_chain):
        return own.crl
    cred = mesh.credential(namespace, base)
    return cred.crl if cred is not None else b""


def certificate_secret(name: str, cred: Credential) -> secret_pb2.Secret:
    return secret_pb2.Secret(
        name=name,
        tls_certificate=common_pb2.TlsCertificate(
            certificate_chain=base_pb2.DataSource(inline_bytes=cred.cert_chain),
            private_key=base_pb2.DataSource(inline_bytes=cred.private_key),
        ),
    )


def ca_secret(name: str, ca: bytes, crl: bytes = b"") -> secret_pb2.Secret:
    v = common_pb2.CertificateValidationContext(trusted_ca=base_pb2.DataSource(inline_bytes=ca))
    if crl:
        v.crl.inline_bytes = crl
    return secret_pb2.Secret(name=name, validation_context=v)
