"""Gateway analyzers (Istio's pkg/config/analysis/analyzers/gateway)."""
from __future__ import annotations

from typing import Any

from .. import messages as msg
from ..context import GATEWAY, POD, SECRET, SERVICE, Context
from ..resources import Resource
from ..util import host_matches, selector_matches, selector_string, short_or_full_name


def _list(v: Any) -> list:
    return v if isinstance(v, list) else []


def _dict(v: Any) -> dict:
    return v if isinstance(v, dict) else {}


def _selector(r: Resource) -> dict[str, str]:
    return {str(k): str(v) for k, v in _dict(r.spec.get("selector")).items()}


def _selector_line(r: Resource) -> int:
    sel = _selector(r)
    if sel:
        return r.line_of("spec", "selector", sorted(sel)[0])
    return r.line_of("spec", "selector")


def _port_number(server: dict) -> int | None:
    port = _dict(server.get("port"))
    n = port.get("number")
    try:
        return int(n) if n is not None else None
    except (TypeError, ValueError):
        return None


class IngressGatewayPortAnalyzer:
    name = "gateway.IngressGatewayPortAnalyzer"
    description = "Checks a gateway's ports against the gateway's Kubernetes service ports"

    def analyze(self, ctx: Context) -> None:
        for r in ctx.for_each(GATEWAY):
            sel = _selector(r)
            service_ports: set[int] = set()
            matches = 0
            for pod in ctx.for_each(POD):
                if not selector_matches(sel, pod.labels):
                    continue
                matches += 1
                for svc in ctx.for_each(SERVICE):
                    if svc.namespace != pod.namespace:
                        continue
                    svc_sel = _dict(svc.spec.get("selector"))
                    if not selector_matches(svc_sel, pod.labels):
                        continue
                    for p in _list(svc.spec.get("ports")):
                        p = _dict(p)
                        if str(p.get("protocol") or "TCP") == "TCP" and p.get("port") is not None:
                            # The gateway listens on the target port; the service port is
                            # accepted too (a Gateway written against the Service's ports).
                            service_ports.add(int(p["port"]))
                            target = p.get("targetPort")
                            if isinstance(target, int) or (isinstance(target, str) and target.isdigit()):
                                service_ports.add(int(target))
            if matches == 0:
                ctx.report(msg.new(msg.REFERENCED_RESOURCE_NOT_FOUND, r, "selector", selector_string(sel),
                                   line=_selector_line(r)))
                continue
            for s in _list(r.spec.get("servers")):
                n = _port_number(_dict(s))
                if n is not None and n not in service_ports:
                    ctx.report(msg.new(msg.GATEWAY_PORT_NOT_DEFINED_ON_SERVICE, r, n, selector_string(sel),
                                       line=_selector_line(r)))


class ConflictingGatewayAnalyzer:
    """Two Gateways selecting the same workloads (equal selectors, or one a subset of the
    other) with servers on the same port and overlapping hosts conflict."""

    name = "gateway.ConflictingGatewayAnalyzer"
    description = "Checks a gateway's selector, port number and hosts"

    def analyze(self, ctx: Context) -> None:
        gateways = ctx.all(GATEWAY)
        for r in gateways:
            sel = _selector(r)
            for s in _list(r.spec.get("servers")):
                s = _dict(s)
                port = _port_number(s)
                if port is None:
                    continue
                hosts = [str(h) for h in _list(s.get("hosts"))]
                conflicts: list[str] = []
                for other in gateways:
                    if other is r or other.full_name in conflicts:
                        continue
                    osel = _selector(other)
                    if not (_selector_subset(sel, osel) or _selector_subset(osel, sel)):
                        continue
                    for os_ in _list(other.spec.get("servers")):
                        os_ = _dict(os_)
                        if _port_number(os_) != port:
                            continue
                        ohosts = [str(h) for h in _list(os_.get("hosts"))]
                        if any(host_matches(h, oh) for h in hosts for oh in ohosts):
                            conflicts.append(other.full_name)
                            break
                if conflicts:
                    ctx.report(msg.new(msg.CONFLICTING_GATEWAYS, r, ",".join(conflicts), selector_string(sel),
                                       str(port), ",".join(hosts)))


class SecretAnalyzer:
    name = "gateway.SecretAnalyzer"
    description = "Checks a gateway's referenced secrets for correctness"

    def analyze(self, ctx: Context) -> None:
        for r in ctx.for_each(GATEWAY):
            sel = _selector(r)
            gw_ns = next((p.namespace for p in ctx.for_each(POD) if selector_matches(sel, p.labels)), None)
            if gw_ns is None:
                ctx.report(msg.new(msg.REFERENCED_RESOURCE_NOT_FOUND, r, "selector", selector_string(sel),
                                   line=_selector_line(r)))
                continue
            for i, s in enumerate(_list(r.spec.get("servers"))):
                cn = str(_dict(_dict(s).get("tls")).get("credentialName") or "")
                if not cn:
                    continue
                ns, name = short_or_full_name(gw_ns, cn)
                if not ctx.exists(SECRET, ns, name):
                    ctx.report(msg.new(msg.REFERENCED_RESOURCE_NOT_FOUND, r, "credentialName", cn,
                                       line=r.line_of("spec", "servers", i, "tls", "credentialName")))


def _same_certificate(a: dict, b: dict) -> bool:
    ca, cb = a.get("credentialName") or "", b.get("credentialName") or ""
    if ca and cb:
        return ca == cb
    if not ca and not cb:
        sa, sb = a.get("serverCertificate") or "", b.get("serverCertificate") or ""
        if sa and sb and sa == sb:
            pa, pb = a.get("privateKey") or "", b.get("privateKey") or ""
            if pa and pb:
                return pa == pb
    return False


def _selector_subset(x: dict, y: dict) -> bool:
    for k, v in x.items():
        if k in y and y[k] != v:
            return False
    return sum(1 for k in x if k in y) == len(x)


class CertificateAnalyzer:
    name = "gateway.CertificateAnalyzer"
    description = "Checks a gateway certificate"

    def analyze(self, ctx: Context) -> None:
        gateways = ctx.all(GATEWAY)
        for r in gateways:
            sel = _selector(r)
            for other in gateways:
                if other is r:
                    continue
                if sel and not _selector_subset(sel, _selector(other)):
                    continue
                for cs in _list(r.spec.get("servers")):
                    for os_ in _list(other.spec.get("servers")):
                        ct, ot = _dict(cs).get("tls"), _dict(os_).get("tls")
                        if not isinstance(ct, dict) or not isinstance(ot, dict):
                            continue
                        if _same_certificate(ct, ot):
                            ctx.report(msg.new(msg.GATEWAY_DUPLICATE_CERTIFICATE, r, [r.full_name, other.full_name],
                                               line=r.line_of("metadata", "name")))
