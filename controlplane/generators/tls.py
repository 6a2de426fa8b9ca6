"""TLS contexts for Istio mutual TLS, shared by inbound listeners and outbound clusters.

Certificates never appear inline: both sides reference the SDS secrets every Istio proxy
knows, `default` (its own chain and key) and `ROOTCA` (the trust bundle), delivered on
the same ADS stream. Peers are checked by SPIFFE identity: servers accept any identity of
the trust domain (authorization is a separate concern), clients check the exact service
accounts behind the destination, as istiod does.
"""
from __future__ import annotations

from typing import Iterable, Sequence

from envoy.config.core.v3 import base_pb2
from envoy.extensions.transport_sockets.tls.v3 import common_pb2, secret_pb2, tls_pb2
from envoy.type.matcher.v3 import string_pb2

from .. import names
from .convert import ads_config_source, typed

TLS_SOCKET = "envoy.transport_sockets.tls"
RAW_BUFFER_SOCKET = "envoy.transport_sockets.raw_buffer"


def sds(name: str) -> secret_pb2.SdsSecretConfig:
    return secret_pb2.SdsSecretConfig(name=name, sds_config=ads_config_source())


def _tls_params() -> common_pb2.TlsParameters:
    return common_pb2.TlsParameters(
        tls_minimum_protocol_version=common_pb2.TlsParameters.TLSv1_2,
        tls_maximum_protocol_version=common_pb2.TlsParameters.TLSv1_3,
    )


def _san_matchers(sans: Iterable[str], prefix: bool) -> list[common_pb2.SubjectAltNameMatcher]:
    out = []
    for san in sans:
        m = string_pb2.StringMatcher(prefix=san) if prefix else string_pb2.StringMatcher(exact=san)
        out.append(common_pb2.SubjectAltNameMatcher(san_type=common_pb2.SubjectAltNameMatcher.URI, matcher=m))
    return out


def istio_common_context(sans: Iterable[str], alpn: Sequence[str], san_prefix: bool = False) -> tls_pb2.CommonTlsContext:
    return tls_pb2.CommonTlsContext(
        tls_params=_tls_params(),
        alpn_protocols=list(alpn),
        tls_certificate_sds_secret_configs=[sds(names.SDS_DEFAULT)],
        combined_validation_context=tls_pb2.CommonTlsContext.CombinedCertificateValidationContext(
            default_validation_context=common_pb2.CertificateValidationContext(
                match_typed_subject_alt_names=_san_matchers(sans, san_prefix)
            ),
            validation_context_sds_secret_config=sds(names.SDS_ROOT),
        ),
    )


def istio_mutual_downstream(alpn: Sequence[str], trust_domain: str = names.TRUST_DOMAIN) -> tls_pb2.DownstreamTlsContext:
    """Server side of Istio mTLS: present `default`, require a client certificate that
    chains to ROOTCA and carries a SPIFFE identity of our trust domain."""
    return tls_pb2.DownstreamTlsContext(
        common_tls_context=istio_common_context([f"spiffe://{trust_domain}/"], alpn, san_prefix=True),
        require_client_certificate=_true(),
    )


def istio_mutual_upstream(sni: str, sans: Iterable[str], alpn: Sequence[str] = (names.ALPN_ISTIO,)) -> tls_pb2.UpstreamTlsContext:
    """Client side of Istio mTLS: present `default`, verify the server's SPIFFE identity
    is one of the destination's service accounts."""
    return tls_pb2.UpstreamTlsContext(common_tls_context=istio_common_context(sorted(set(sans)), alpn), sni=sni)


def transport_socket(ctx) -> base_pb2.TransportSocket:
    return base_pb2.TransportSocket(name=TLS_SOCKET, typed_config=typed(ctx))


def raw_buffer_socket() -> base_pb2.TransportSocket:
    from envoy.extensions.transport_sockets.raw_buffer.v3 import raw_buffer_pb2

    return base_pb2.TransportSocket(name=RAW_BUFFER_SOCKET, typed_config=typed(raw_buffer_pb2.RawBuffer()))


def outbound_sni(port: int, subset: str, host: str) -> str:
    """`outbound_.80_.v1_.reviews.default.svc.cluster.local`: istiod's SNI for mTLS."""
    return f"outbound_.{port}_.{subset}_.{host}"


def _true():
    from google.protobuf import wrappers_pb2

    return wrappers_pb2.BoolValue(value=True)
