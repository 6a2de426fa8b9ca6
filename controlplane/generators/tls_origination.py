"""TLS a DestinationRule originates (`tls.mode: SIMPLE` or `MUTUAL`) without naming the
server: istiod's setAutoSniAndAutoSanValidation, read not copied.

Without `sni` Envoy sends the request's Host as SNI (`auto_sni`); without `sni` and
without `subjectAltNames` (and unless `insecureSkipVerify`) it also checks the server's
certificate against that Host (`auto_san_validation`). Both are HTTP upstream options:
a TCP cluster carries them but Envoy has no Host there, so a TCP origination should name
its `sni`.
"""
from __future__ import annotations

from envoy.config.cluster.v3 import cluster_pb2
from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2

from ..config.types.trafficpolicy import ClientTLSSettings
from .convert import typed
from .traffic_policy import HTTP_PROTOCOL_OPTIONS


def apply_auto_sni(cluster: cluster_pb2.Cluster, settings: ClientTLSSettings | None) -> None:
    if settings is None or settings.effective_mode not in ("SIMPLE", "MUTUAL") or settings.sni:
        return
    opts = http_protocol_options_pb2.HttpProtocolOptions()
    current = cluster.typed_extension_protocol_options.get(HTTP_PROTOCOL_OPTIONS)
    if current is not None:
        current.Unpack(opts)
    else:
        # Envoy requires an upstream protocol choice in these options: HTTP/1.1, its default.
        opts.explicit_http_config.http_protocol_options.SetInParent()
    upstream = opts.upstream_http_protocol_options
    upstream.auto_sni = True
    if not settings.subject_alt_names and not settings.insecure_skip_verify:
        upstream.auto_san_validation = True
    cluster.typed_extension_protocol_options[HTTP_PROTOCOL_OPTIONS].CopyFrom(typed(opts))
