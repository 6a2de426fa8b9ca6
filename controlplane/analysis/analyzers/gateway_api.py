"""meshd's analyzer of the Kubernetes Gateway API: the status meshd would give each
GatewayClass, Gateway (and its listeners) and route parent, one message per condition
that is not as it should be (Accepted, ResolvedRefs, Programmed not True; Conflicted
True), with the spec's reason and meshd's explanation.

The status is the server's own: the input goes through the parse gate and the model's
conversion (model/gateway_api/), exactly as `meshd serve` would take it; what the parse
gate refuses is SchemaValidationAnalyzer's to report. Istio has no such analyzer
(istiod writes the status instead); the codes are meshd's (MSHxxxx).
"""
from __future__ import annotations

from typing import Any

from ...config import kinds
from ...config.objects import ConfigObject, Origin
from ...config.parse import parse_document
from ...config.snapshot import ConfigSnapshot
from ...model.gateway_api.status import gateway_api_status
from ...model.mesh import build_mesh
from ...names import GATEWAY_API_GROUP
from .. import messages as msg
from ..context import Context
from ..resources import Resource

_KIND = {k.key_kind: k.kind for k in kinds.GATEWAY_API_KINDS}


def _problem(cond: dict[str, Any]) -> bool:
    healthy = "False" if cond.get("type") == "Conflicted" else "True"
    return cond.get("status") != healthy


def _text(where: str, cond: dict[str, Any]) -> str:
    return f"{where}{cond.get('type')} is {cond.get('status')}: {cond.get('reason')}: {cond.get('message')}"


def _parent(ref: dict[str, Any]) -> str:
    name = f"{ref.get('namespace')}/{ref.get('name')}" if ref.get("namespace") else str(ref.get("name"))
    extra = [f"{k} {ref[k]}" for k in ("sectionName", "port") if ref.get(k) not in (None, "")]
    return f"parent {ref.get('kind', 'Gateway')} {name}" + (f" ({', '.join(extra)})" if extra else "")


def status_findings(status: dict[str, Any]) -> list[tuple[bool, str]]:
    """(not accepted, text) for each condition of `status` that is not as it should be."""
    out = []
    for cond in status.get("conditions") or []:
        if _problem(cond):
            out.append((cond.get("type") == "Accepted", _text("", cond)))
    for ln in status.get("listeners") or []:
        for cond in ln.get("conditions") or []:
            if _problem(cond):
                out.append((cond.get("type") == "Accepted", _text(f"listener {ln.get('name')}: ", cond)))
    for parent in status.get("parents") or []:
        for cond in parent.get("conditions") or []:
            if _problem(cond):
                out.append((cond.get("type") == "Accepted", _text(f"{_parent(parent.get('parentRef') or {})}: ", cond)))
    return out


def _snapshot(resources: list[Resource]) -> ConfigSnapshot:
    objects: dict = {}
    for r in resources:
        parsed = parse_document(dict(r.doc), Origin("file", r.location.file if r.location else "", 0,
                                                    r.location.line if r.location else 0))
        if isinstance(parsed, ConfigObject):
            objects.setdefault(parsed.key, parsed)
    return ConfigSnapshot(objects)


class GatewayAPIStatusAnalyzer:
    name = "meshd.GatewayAPIStatusAnalyzer"
    description = ("Reports the Gateway API conditions meshd would not set True (Accepted, ResolvedRefs, Programmed; "
                   "Conflicted True) on GatewayClasses, Gateways, listeners and route parents")

    def analyze(self, ctx: Context) -> None:
        if not any(r.group == GATEWAY_API_GROUP for r in ctx.all_resources()):
            return
        resources = [r for r in ctx.all_resources() if not r.assumed]
        mesh = build_mesh(_snapshot(resources), root_namespace=ctx.mesh_config.root_namespace,
                          mesh_config=ctx.mesh_config)
        for key, status in sorted(gateway_api_status(mesh.gateway_api).items()):
            resource = ctx.find((GATEWAY_API_GROUP, _KIND.get(key.kind, key.kind)), key.namespace, key.name)
            if resource is None:
                continue
            for not_accepted, text in status_findings(status):
                ctx.report(msg.new(msg.GATEWAY_API_NOT_ACCEPTED if not_accepted else msg.GATEWAY_API_CONDITION,
                                   resource, text))


__all__ = ["GatewayAPIStatusAnalyzer", "status_findings"]
