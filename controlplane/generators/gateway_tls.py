"""The server side TLS of a Gateway server (istiod's BuildListenerTLSContext for gateways,
read not copied).

- `credentialName` (or `credentialNames`): the certificate comes over SDS as
  `kubernetes://<name>`; MUTUAL and OPTIONAL_MUTUAL validate clients against
  `kubernetes://<name>-cacert` (the `<name>-cacert` Secret, or the `ca.crt` of `<name>`);
- `serverCertificate`/`privateKey`/`caCertificates` (or `tlsCertificates`): files on the
  gateway's own disk, read by Envoy (there is no istio-agent to serve them over SDS);
- ISTIO_MUTUAL: the proxy's own workload certificate (`default`) and the mesh root
  (`ROOTCA`), client certificate required;
- MUTUAL and ISTIO_MUTUAL require a client certificate; OPTIONAL_MUTUAL validates one if
  it is presented; `subjectAltNames`, `verifyCertificateSpki`/`Hash` restrict it;
- `minProtocolVersion`/`maxProtocolVersion` (TLS 1.2 minimum by default, as istiod), and
  `cipherSuites` filtered to the names Envoy knows (an unknown name would make Envoy
  refuse the whole listener).

`usable()` says whether a server's certificates can reach this proxy at all; a filter
chain whose secret can never arrive would keep its listener warming forever, so such a
server is left out (and reported, see model/mesh.py gateway_conflicts).
"""
from __future__ import annotations

from envoy.config.core.v3 import base_pb2
from envoy.extensions.transport_sockets.tls.v3 import common_pb2, tls_pb2
from google.protobuf import wrappers_pb2

from .. import names
from ..config.types.gateway import ServerTLSSettings, TLSCertificate
from ..model.credentials import sds_ca_name, sds_name
from ..model.gateways import ISTIO_MUTUAL, MUTUAL, OPTIONAL_MUTUAL, Server
from ..model.mesh import MeshSnapshot
from ..model.proxy import Proxy
from . import tls

ALPN_HTTP = ("h2", "http/1.1")

_VERSIONS = {
    "TLS_AUTO": common_pb2.TlsParameters.TLS_AUTO,
    "TLSV1_0": common_pb2.TlsParameters.TLSv1_0,
    "TLSV1_1": common_pb2.TlsParameters.TLSv1_1,
    "TLSV1_2": common_pb2.TlsParameters.TLSv1_2,
    "TLSV1_3": common_pb2.TlsParameters.TLSv1_3,
}

# The cipher suites Envoy (BoringSSL) accepts, as Istio's validation lists them.
VALID_CIPHER_SUITES = frozenset({
    "ECDHE-ECDSA-AES128-GCM-SHA256", "ECDHE-RSA-AES128-GCM-SHA256", "ECDHE-ECDSA-AES256-GCM-SHA384",
    "ECDHE-RSA-AES256-GCM-SHA384", "ECDHE-ECDSA-CHACHA20-POLY1305", "ECDHE-RSA-CHACHA20-POLY1305",
    "ECDHE-PSK-CHACHA20-POLY1305", "ECDHE-ECDSA-AES128-SHA", "ECDHE-RSA-AES128-SHA", "ECDHE-PSK-AES128-CBC-SHA",
    "ECDHE-ECDSA-AES256-SHA", "ECDHE-RSA-AES256-SHA", "ECDHE-PSK-AES256-CBC-SHA", "AES128-GCM-SHA256",
    "AES256-GCM-SHA384", "AES128-SHA", "PSK-AES128-CBC-SHA", "AES256-SHA", "PSK-AES256-CBC-SHA", "DES-CBC3-SHA",
})


def unusable_reason(mesh: MeshSnapshot, proxy: Proxy, server: Server) -> str | None:
    """Why the server's TLS cannot be set up for this proxy (None: it can)."""
    if server.passthrough or server.tls is None:
        return None
    if server.tls_mode == ISTIO_MUTUAL and not proxy.workload_cert:
        return "ISTIO_MUTUAL needs the gateway's workload certificate, and this proxy is not connected to the secure xDS port"
    creds = server.tls.credentials
    if creds and not proxy.workload_cert:
        return (f"credential {sds_name(creds[0])} is only served to an authenticated gateway "
                "(connect it to the secure xDS port)")
    return mesh.credential_problem(proxy.namespace, server)


def _tls_params(settings: ServerTLSSettings) -> common_pb2.TlsParameters:
    params = common_pb2.TlsParameters(tls_minimum_protocol_version=common_pb2.TlsParameters.TLSv1_2)
    lo = _VERSIONS.get(settings.min_protocol_version or "TLS_AUTO", common_pb2.TlsParameters.TLS_AUTO)
    hi = _VERSIONS.get(settings.max_protocol_version or "TLS_AUTO", common_pb2.TlsParameters.TLS_AUTO)
    if lo != common_pb2.TlsParameters.TLS_AUTO:
        params.tls_minimum_protocol_version = lo
    if hi != common_pb2.TlsParameters.TLS_AUTO:
        params.tls_maximum_protocol_version = hi
    suites: list[str] = []
    for c in settings.cipher_suites:
        if (c in VALID_CIPHER_SUITES or _is_group(c)) and c not in suites:
            suites.append(c)
    params.cipher_suites.extend(suites)
    return params


def _is_group(c: str) -> bool:
    """BoringSSL's equal-preference groups: `[A|B]`."""
    return c.startswith("[") and c.endswith("]") and all(p in VALID_CIPHER_SUITES for p in c[1:-1].split("|"))


def _validation(settings: ServerTLSSettings) -> common_pb2.CertificateValidationContext:
    v = common_pb2.CertificateValidationContext(
        match_typed_subject_alt_names=tls.typed_san_matchers(settings.subject_alt_names),
    )
    v.verify_certificate_spki.extend(settings.verify_certificate_spki)
    v.verify_certificate_hash.extend(settings.verify_certificate_hash)
    return v


def downstream_context(server: Server) -> tls_pb2.DownstreamTlsContext:
    assert server.tls is not None  # only TLS servers get a downstream context
    return settings_context(server.tls, server.tls_mode)


def settings_context(settings: ServerTLSSettings, mode: str) -> tls_pb2.DownstreamTlsContext:
    """The DownstreamTlsContext of ServerTLSSettings in `mode` (a Gateway server's, or a
    Sidecar ingress listener's)."""
    ctx = tls_pb2.DownstreamTlsContext(
        common_tls_context=tls_pb2.CommonTlsContext(alpn_protocols=list(ALPN_HTTP)),
        require_client_certificate=wrappers_pb2.BoolValue(value=mode in (MUTUAL, ISTIO_MUTUAL)),
    )
    common = ctx.common_tls_context
    validate_client = mode in (MUTUAL, ISTIO_MUTUAL, OPTIONAL_MUTUAL)
    if mode == ISTIO_MUTUAL:
        common.tls_params.CopyFrom(common_pb2.TlsParameters(tls_minimum_protocol_version=common_pb2.TlsParameters.TLSv1_2))
        common.tls_certificate_sds_secret_configs.append(tls.sds(names.SDS_DEFAULT))
        common.combined_validation_context.default_validation_context.CopyFrom(_validation(settings))
        common.combined_validation_context.validation_context_sds_secret_config.CopyFrom(tls.sds(names.SDS_ROOT))
        return ctx
    creds = settings.credentials
    if creds:
        for name in creds:
            common.tls_certificate_sds_secret_configs.append(tls.sds(sds_name(name)))
        if validate_client:
            common.combined_validation_context.default_validation_context.CopyFrom(_validation(settings))
            common.combined_validation_context.validation_context_sds_secret_config.CopyFrom(
                tls.sds(sds_ca_name(creds[0])))
    else:
        certs = settings.tls_certificates or (TLSCertificate(settings.server_certificate, settings.private_key),)
        for c in certs:
            if c.server_certificate and c.private_key:
                common.tls_certificates.add(
                    certificate_chain=base_pb2.DataSource(filename=c.server_certificate),
                    private_key=base_pb2.DataSource(filename=c.private_key),
                )
        if validate_client and settings.ca_certificates:
            v = _validation(settings)
            v.trusted_ca.filename = settings.ca_certificates
            if settings.ca_crl:
                v.crl.filename = settings.ca_crl
            common.validation_context.CopyFrom(v)
    common.tls_params.CopyFrom(_tls_params(settings))
    return ctx
