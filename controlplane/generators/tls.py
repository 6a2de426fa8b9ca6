"""TLS contexts for Istio mutual TLS, shared by inbound listeners and outbound clusters.

Certificates never appear inline: both sides reference the SDS secrets every Istio proxy
knows, `default` (its own chain and key) and `ROOTCA` (the trust bundle), delivered on
the same ADS stream. Peers are checked by SPIFFE identity: servers accept any identity of
the trust domain (authorization is a separate concern), clients check the exact service
accounts behind the destination, as istiod does.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence

from envoy.config.core.v3 import base_pb2
from envoy.config.listener.v3 import listener_components_pb2
from envoy.extensions.transport_sockets.tls.v3 import common_pb2, secret_pb2, tls_pb2
from envoy.type.matcher.v3 import string_pb2
from google.protobuf import wrappers_pb2
from google.protobuf.message import Message

from .. import names
from ..config.types.trafficpolicy import ClientTLSSettings
from .convert import ads_config_source, typed

TLS_SOCKET = "envoy.transport_sockets.tls"
RAW_BUFFER_SOCKET = "envoy.transport_sockets.raw_buffer"

# FilterChainMatch.transport_protocol values the tls_inspector sets (raw_buffer without it).
TLS_TRANSPORT = "tls"
RAW_BUFFER_TRANSPORT = "raw_buffer"

# ALPN, as istiod uses it (pilot/pkg/networking/util and core/listener.go):
# - what a client sidecar or gateway offers upstream on Istio mTLS ("istio" marks mesh
#   traffic; plain Envoy has no metadata exchange, so no "istio-peer-exchange");
ALPN_IN_MESH = (names.ALPN_ISTIO,)
ALPN_IN_MESH_H2 = (names.ALPN_ISTIO, "h2")
# - what an inbound mTLS chain negotiates (never "istio": it would hide h2 from the codec);
ALPN_DOWNSTREAM = ("h2", "http/1.1")
ALPN_H2_ONLY = ("h2",)
# - what inbound filter chains match on: any Istio mTLS client (PERMISSIVE ports), Istio
#   mTLS that the client detected as HTTP or as TCP (passthrough chains), and plaintext
#   HTTP as the http_inspector reports it.
ALPN_ISTIO_MTLS = (names.ALPN_ISTIO, "istio-peer-exchange", *names.ALPN_ISTIO_HTTP)
ALPN_ISTIO_MTLS_HTTP = names.ALPN_ISTIO_HTTP
ALPN_ISTIO_MTLS_TCP = ("istio-peer-exchange", names.ALPN_ISTIO)
ALPN_PLAINTEXT_HTTP = ("http/1.1", "h2c")

# What istio-agent serves for `caCertificates` left empty in a DestinationRule ("system").
SYSTEM_CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"


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


def istio_common_context(
    sans: Iterable[str], alpn: Sequence[str], san_prefix: bool = False, own_cert: bool = True
) -> tls_pb2.CommonTlsContext:
    return tls_pb2.CommonTlsContext(
        tls_params=_tls_params(),
        alpn_protocols=list(alpn),
        tls_certificate_sds_secret_configs=[sds(names.SDS_DEFAULT)] if own_cert else [],
        combined_validation_context=tls_pb2.CommonTlsContext.CombinedCertificateValidationContext(
            default_validation_context=common_pb2.CertificateValidationContext(
                match_typed_subject_alt_names=_san_matchers(sans, san_prefix)
            ),
            validation_context_sds_secret_config=sds(names.SDS_ROOT),
        ),
    )


def istio_mutual_downstream(alpn: Sequence[str], trust_domain: str = names.TRUST_DOMAIN,
                            aliases: Sequence[str] = ()) -> tls_pb2.DownstreamTlsContext:
    """Server side of Istio mTLS: present `default`, require a client certificate that
    chains to ROOTCA and carries a SPIFFE identity of our trust domain or one of its
    aliases (the mesh config's trustDomainAliases, as istiod's inbound validation)."""
    domains = [trust_domain, *(a for a in aliases if a != trust_domain)]
    return tls_pb2.DownstreamTlsContext(
        common_tls_context=istio_common_context([f"spiffe://{td}/" for td in domains], alpn, san_prefix=True),
        require_client_certificate=_true(),
    )


def istio_mutual_upstream(
    sni: str, sans: Iterable[str], alpn: Sequence[str] = ALPN_IN_MESH, own_cert: bool = True
) -> tls_pb2.UpstreamTlsContext:
    """Client side of Istio mTLS: present `default`, verify the server's SPIFFE identity
    is one of the destination's service accounts. Without `own_cert` (a proxy that holds
    no workload certificate) the handshake still happens and the server, which requires a
    client certificate, refuses it: the request fails instead of the whole cluster waiting
    for a secret that never comes."""
    return tls_pb2.UpstreamTlsContext(
        common_tls_context=istio_common_context(sorted(set(sans)), alpn, own_cert=own_cert), sni=sni
    )


def inbound_mtls(trust_domain: str = names.TRUST_DOMAIN, aliases: Sequence[str] = ()) -> tls_pb2.DownstreamTlsContext:
    """The server side of a sidecar's inbound mTLS filter chains (STRICT and PERMISSIVE)."""
    return istio_mutual_downstream(ALPN_DOWNSTREAM, trust_domain, aliases)


def accept_trust_domain_aliases(chains: Iterable[listener_components_pb2.FilterChain], trust_domain: str,
                                aliases: Sequence[str]) -> None:
    """Inbound mTLS chains (in place) that accept peers of the mesh's trust domain and its
    aliases (istiod validates both once aliases are configured)."""
    if not aliases:
        return
    socket = transport_socket(inbound_mtls(trust_domain, aliases))
    for chain in chains:
        if chain.HasField("transport_socket"):
            chain.transport_socket.CopyFrom(socket)


def client_tls(
    settings: ClientTLSSettings, *, sni: str, sans: Sequence[str], http2: bool, own_cert: bool = True,
    default_sans: Sequence[str] = (),
) -> tls_pb2.UpstreamTlsContext | None:
    """The client side a DestinationRule `tls` block asks for (istiod's
    buildUpstreamClusterTLSContext). `sni` and `sans` are the Istio defaults used by
    ISTIO_MUTUAL when the rule leaves them out; `default_sans` those of SIMPLE/MUTUAL (a
    ServiceEntry's subjectAltNames). DISABLE (or no mode) gives None."""
    mode = settings.effective_mode
    if mode == "ISTIO_MUTUAL":
        explicit_sans = settings.subject_alt_names
        return istio_mutual_upstream(
            settings.sni or sni,
            list(explicit_sans) if explicit_sans else sans,
            ALPN_IN_MESH_H2 if http2 else ALPN_IN_MESH,
            own_cert=own_cert,
        )
    if mode not in ("SIMPLE", "MUTUAL"):
        return None
    ctx = tls_pb2.UpstreamTlsContext(
        common_tls_context=tls_pb2.CommonTlsContext(tls_params=_tls_params()),
        sni=settings.sni,
    )
    common = ctx.common_tls_context
    validation = common_pb2.CertificateValidationContext(
        match_typed_subject_alt_names=_typed_san_matchers(settings.subject_alt_names or default_sans)
    )
    skip_verify = settings.insecure_skip_verify
    credential = settings.credential_name
    if credential:
        # The certificate (and `<name>-cacert` trust bundle) of a Kubernetes Secret, over SDS.
        if mode == "MUTUAL":
            common.tls_certificate_sds_secret_configs.append(sds(names.sds_credential(credential)))
        if skip_verify:
            common.validation_context.SetInParent()
        else:
            common.combined_validation_context.default_validation_context.CopyFrom(validation)
            common.combined_validation_context.validation_context_sds_secret_config.CopyFrom(
                sds(names.sds_credential(credential) + "-cacert")
            )
    else:
        # Files mounted into the proxy's pod.
        if mode == "MUTUAL":
            common.tls_certificates.add(
                certificate_chain=base_pb2.DataSource(filename=settings.client_certificate),
                private_key=base_pb2.DataSource(filename=settings.private_key),
            )
        if skip_verify:
            common.validation_context.SetInParent()
        else:
            validation.trusted_ca.filename = settings.ca_certificates or SYSTEM_CA_BUNDLE
            if settings.ca_crl:
                validation.crl.filename = settings.ca_crl
            common.validation_context.CopyFrom(validation)
    if http2:
        common.alpn_protocols.extend(ALPN_H2_ONLY)
    return ctx


def _typed_san_matchers(sans: Iterable[str]) -> list[common_pb2.SubjectAltNameMatcher]:
    """Exact matchers for user-given SANs; the SAN type is inferred from the value (istiod's
    untyped matchers compare every SAN type, which Envoy has deprecated)."""
    out = []
    for san in sans:
        if "://" in san:
            kind = common_pb2.SubjectAltNameMatcher.URI
        elif _is_ip(san):
            kind = common_pb2.SubjectAltNameMatcher.IP_ADDRESS
        else:
            kind = common_pb2.SubjectAltNameMatcher.DNS
        out.append(common_pb2.SubjectAltNameMatcher(san_type=kind, matcher=string_pb2.StringMatcher(exact=san)))
    return out


typed_san_matchers = _typed_san_matchers


def _is_ip(value: str) -> bool:
    import ipaddress

    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return True


def transport_socket(ctx: Message) -> base_pb2.TransportSocket:
    return base_pb2.TransportSocket(name=TLS_SOCKET, typed_config=typed(ctx))


def raw_buffer_socket() -> base_pb2.TransportSocket:
    from envoy.extensions.transport_sockets.raw_buffer.v3 import raw_buffer_pb2

    return base_pb2.TransportSocket(name=RAW_BUFFER_SOCKET, typed_config=typed(raw_buffer_pb2.RawBuffer()))


def outbound_sni(port: int, subset: str, host: str) -> str:
    """`outbound_.80_.v1_.reviews.default.svc.cluster.local`: istiod's SNI for mTLS."""
    return f"outbound_.{port}_.{subset}_.{host}"


def _true() -> wrappers_pb2.BoolValue:
    return wrappers_pb2.BoolValue(value=True)
