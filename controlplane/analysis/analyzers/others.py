"""DestinationRule, Service and PeerAuthentication analyzers, and schema validation."""
from __future__ import annotations

from typing import Any

from ...config import kinds
from ...config.validation import validate
from .. import messages as msg
from ..context import DESTINATION_RULE, PEER_AUTHENTICATION, SERVICE, Context
from ..util import SYSTEM_NAMESPACES
from .workloads import report_unmatched, workloads_of


def _list(v: Any) -> list:
    return v if isinstance(v, list) else []


def _dict(v: Any) -> dict:
    return v if isinstance(v, dict) else {}


class CaCertificateAnalyzer:
    name = "destinationrule.CaCertificateAnalyzer"
    description = "Checks if caCertificates is set when TLS mode is SIMPLE/MUTUAL"

    def analyze(self, ctx: Context) -> None:
        for r in ctx.for_each(DESTINATION_RULE):
            tp = _dict(r.spec.get("trafficPolicy"))
            host = str(r.spec.get("host", ""))
            tls = _dict(tp.get("tls"))
            mode = str(tls.get("mode") or "")
            # A DestinationRule for selected workloads with a credentialName gets its CA
            # from that secret (Istio skips it too).
            selected = bool(r.spec.get("workloadSelector"))
            if mode in ("SIMPLE", "MUTUAL") and not tls.get("caCertificates") and not (
                    selected and tls.get("credentialName")):
                ctx.report(msg.new(msg.NO_SERVER_CERT_VERIFICATION_DEST, r, r.full_name, r.namespace, mode, host,
                                   line=r.line_of("spec", "trafficPolicy", "tls", "mode")))
            for i, p in enumerate(_list(tp.get("portLevelSettings"))):
                ptls = _dict(_dict(p).get("tls"))
                pmode = str(ptls.get("mode") or "")
                if pmode in ("SIMPLE", "MUTUAL") and not ptls.get("caCertificates") and not (
                        selected and ptls.get("credentialName")):
                    number = _dict(_dict(p).get("port")).get("number")
                    port = f"number:{number}" if number is not None else ""
                    ctx.report(msg.new(msg.NO_SERVER_CERT_VERIFICATION_PORT, r, r.full_name, r.namespace, pmode,
                                       host, port,
                                       line=r.line_of("spec", "trafficPolicy", "portLevelSettings", i, "tls", "mode")))


_ISTIO_PORT_PROTOCOLS = {"http", "http2", "https", "grpc", "grpc-web", "mongo", "redis", "mysql", "tcp", "tls",
                         "udp", "http_proxy"}
_K8S_APP_PROTOCOLS = {"kubernetes.io/h2c", "kubernetes.io/ws", "kubernetes.io/wss"}


def _protocol_unsupported(port: dict) -> bool:
    """kube.ConvertProtocol(...).IsUnsupported() for a Service port."""
    if str(port.get("protocol") or "TCP").upper() == "UDP":
        return False
    app = str(port.get("appProtocol") or "")
    if app:
        return app.lower() not in _ISTIO_PORT_PROTOCOLS and app.lower() not in _K8S_APP_PROTOCOLS
    name = str(port.get("name") or "").lower()
    if name.startswith("grpc-web"):
        return False
    return name.split("-", 1)[0] not in _ISTIO_PORT_PROTOCOLS


class PortNameAnalyzer:
    name = "service.PortNameAnalyzer"
    description = "Checks the port names associated with each service"

    def analyze(self, ctx: Context) -> None:
        for r in ctx.for_each(SERVICE):
            if r.namespace in SYSTEM_NAMESPACES:
                continue
            if "istio" in r.labels or r.labels.get("release") == "istio":
                continue
            if "gateway.istio.io/managed" in r.labels:  # generated for a (waypoint) gateway
                continue
            external = r.spec.get("type") == "ExternalName"
            for i, p in enumerate(_list(r.spec.get("ports"))):
                p = _dict(p)
                name = str(p.get("name") or "")
                if _protocol_unsupported(p) or (name == "tcp" and external):
                    line = r.line_of("spec", "ports", i)
                    if external:
                        ctx.report(msg.new(msg.EXTERNAL_NAME_INVALID_PORT_NAME, r, line=line))
                    else:
                        target = p.get("targetPort")
                        ctx.report(msg.new(msg.PORT_NAME_NOT_UNDER_CONVENTION, r, name, int(p.get("port") or 0),
                                           "" if target is None else str(target), line=line))


class PeerAuthenticationAnalyzer:
    """meshd's own: a PeerAuthentication whose workload selector matches no pod (or
    WorkloadEntry) in its namespace does nothing (Istio reports the same for
    AuthorizationPolicy, IST0127)."""

    name = "peerauthentication.SelectorAnalyzer"
    description = "Checks that PeerAuthentication workload selectors match a pod"

    def analyze(self, ctx: Context) -> None:
        workloads = workloads_of(ctx)
        for r in ctx.for_each(PEER_AUTHENTICATION):
            labels = _dict(_dict(r.spec.get("selector")).get("matchLabels"))
            report_unmatched(ctx, workloads, r, {str(k): str(v) for k, v in labels.items()},
                             r.line_of("spec", "selector", "matchLabels"))


# Istio kinds with a schema in controlplane/config/schemas (served or not).
_SCHEMA_KINDS = {
    (kinds.ISTIO_NETWORKING, "ServiceEntry"): kinds.Kind(kinds.ISTIO_NETWORKING, "ServiceEntry", kinds.ISTIO_VERSIONS),
    (kinds.ISTIO_NETWORKING, "Sidecar"): kinds.Kind(kinds.ISTIO_NETWORKING, "Sidecar", kinds.ISTIO_VERSIONS),
    (kinds.ISTIO_SECURITY, "AuthorizationPolicy"): kinds.Kind(kinds.ISTIO_SECURITY, "AuthorizationPolicy",
                                                              ("v1", "v1beta1")),
}


def schema_kind(group: str, kind: str) -> kinds.Kind | None:
    k = kinds.SERVED.get((group, kind))
    if k is not None and k.istio:
        return k
    return _SCHEMA_KINDS.get((group, kind))


class SchemaValidationAnalyzer:
    """Istio's schema validation (IST0106) with meshd's validator: the CRD's structural
    schema and CEL rules (e.g. PeerAuthentication portLevelMtls needs a selector), then
    Istio's semantic checks."""

    name = "schemaValidation.CollectionValidationAnalyzer"
    description = "Validates Istio resources against their CRD schemas and Istio's rules"

    def analyze(self, ctx: Context) -> None:
        seen = set()
        for r in sorted(ctx.all_resources(), key=lambda r: (r.kind, r.namespace, r.name)):
            kind = schema_kind(r.group, r.kind)
            if kind is None or id(r) in seen:
                continue
            seen.add(id(r))
            doc = dict(r.doc)
            for e in validate(doc, kind):
                path = tuple(int(p) if p.isdigit() else p for p in _split_path(e.field))
                ctx.report(msg.new(msg.SCHEMA_VALIDATION_ERROR, r, f"{e.field}: {e.reason}" if e.field else e.reason,
                                   line=r.line_of(*path)))


def _split_path(field: str) -> list[str]:
    out = []
    for part in field.replace("]", "").split("."):
        out += [p for p in part.split("[") if p]
    return out


__all__ = ["CaCertificateAnalyzer", "PortNameAnalyzer", "PeerAuthenticationAnalyzer", "SchemaValidationAnalyzer",
           "schema_kind"]
