"""`/validate`: an Istio object at `kubectl apply` time, through the gate every source
uses (config/parse.py: the CRD's structural schema, then Istio's rules), so that what
`meshd serve` would reject from the cluster is refused before it is stored.

    $ kubectl apply -f bad-vs.yaml
    Error from server: error when creating "bad-vs.yaml": admission webhook
    "validation.istio.io" denied the request: configuration is invalid: VirtualService
    shop/reviews: spec.http[0].match[0].uri.regex: Invalid value: "([": ...

As istiod's: DELETE (and CONNECT) is always allowed, a kind meshd has no use for is
allowed, and a kind of a mesh group meshd does not serve is allowed with a warning that
it has no effect (the store keeps and reports it the same way).
"""
from __future__ import annotations

import copy

import structlog

from ..config import kinds
from ..config.objects import ConfigKey, Origin, Rejection
from ..config.parse import Unsupported, parse_document
from .review import AdmissionRequest, Verdict

log = structlog.get_logger("meshd.admission")

INVALID = "configuration is invalid"


def review(req: AdmissionRequest) -> Verdict:
    if req.operation not in ("CREATE", "UPDATE"):
        return Verdict(True)
    if req.object is None:
        return Verdict.deny(f"{INVALID}: request.object: Required value for {req.operation}")
    doc = copy.deepcopy(req.object)
    md = doc.setdefault("metadata", {})
    if isinstance(md, dict):
        # `kubectl apply -n ns` sends objects without a namespace: the request has it.
        if req.namespace and not md.get("namespace"):
            md["namespace"] = req.namespace
        if req.name and not md.get("name"):
            md["name"] = req.name
    if not doc.get("apiVersion") and req.version:
        doc["apiVersion"] = f"{req.group}/{req.version}" if req.group else req.version
    doc.setdefault("kind", req.kind)
    parsed = parse_document(doc, Origin("kubernetes", "admission"))
    if isinstance(parsed, Rejection):
        message = f"{INVALID}: {describe(parsed)}"
        log.info("admission denied", operation=req.operation, object=str(parsed.key or req.name), field=parsed.field,
                 reason=parsed.reason, dry_run=req.dry_run)
        return Verdict.deny(message)
    if isinstance(parsed, Unsupported):
        return Verdict(True, warnings=(f"{parsed.key}: {parsed.reason}",))
    if parsed is None and kinds.is_mesh_group(req.group):
        # A mesh kind the gate passes over (not one meshd knows at all): say so, never quietly.
        return Verdict(True, warnings=(f"{req.kind} {req.namespace}/{req.name}: meshd does not read this kind",))
    return Verdict(True)


def describe(rej: Rejection) -> str:
    """The object, the field and the reason (the origin is the request itself)."""
    key: ConfigKey | None = rej.key
    parts = [str(key)] if key else []
    if rej.field:
        parts.append(rej.field)
    parts.append(rej.reason)
    return ": ".join(parts)
