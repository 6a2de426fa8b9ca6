"""AdmissionReview (admission.k8s.io v1 and v1beta1) in and out, as pure functions.

The API server POSTs an AdmissionReview whose `request` carries a uid, the operation,
the object (and the old one); the webhook answers with the same apiVersion and kind and a
`response` echoing the uid: `allowed`, a `status` whose message `kubectl` prints after
`admission webhook "<name>" denied the request: `, `warnings` it prints as
`Warning: ...`, and for a mutation a base64 JSONPatch (`patchType: JSONPatch`).

A body that is not a review is answered as a denied review naming what is wrong (the
API server shows that message), never with a 500: `parse` returns a `BadReview`.
(https://kubernetes.io/docs/reference/access-authn-authz/extensible-admission-controllers/#response)
"""
from __future__ import annotations

import base64
import json
from dataclasses import dataclass, field
from typing import Any

API_VERSIONS = ("admission.k8s.io/v1", "admission.k8s.io/v1beta1")
DEFAULT_API_VERSION = API_VERSIONS[0]
OPERATIONS = ("CREATE", "UPDATE", "DELETE", "CONNECT")


@dataclass(frozen=True)
class AdmissionRequest:
    api_version: str  # the review's: the response uses the same
    uid: str
    operation: str
    group: str  # request.kind
    version: str
    kind: str
    namespace: str
    name: str
    object: dict[str, Any] | None
    old_object: dict[str, Any] | None
    dry_run: bool = False
    sub_resource: str = ""


@dataclass(frozen=True)
class BadReview:
    """A body that is not an AdmissionReview meshd can answer; `reason` says why."""

    reason: str
    api_version: str = DEFAULT_API_VERSION
    uid: str = ""


@dataclass(frozen=True)
class Verdict:
    """What the webhook decided: allowed or not (with the message), a patch, warnings."""

    allowed: bool
    message: str = ""
    code: int = 200
    patch: list[dict[str, Any]] | None = None
    warnings: tuple[str, ...] = field(default=())

    @classmethod
    def deny(cls, message: str, code: int = 400) -> Verdict:
        return cls(False, message, code)


def parse(body: bytes) -> AdmissionRequest | BadReview:
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError) as e:
        return BadReview(f"the body is not JSON: {e}")
    if not isinstance(doc, dict):
        return BadReview(f"the body is a JSON {type(doc).__name__}, not an AdmissionReview object")
    api_version = doc.get("apiVersion")
    if doc.get("kind") != "AdmissionReview" or api_version not in API_VERSIONS:
        return BadReview(f"expected kind AdmissionReview of apiVersion {' or '.join(API_VERSIONS)}, "
                         f"got kind {doc.get('kind')!r} of apiVersion {api_version!r}")
    req = doc.get("request")
    if not isinstance(req, dict):
        return BadReview("request: Required value: the review carries no request", api_version)
    uid = req.get("uid")
    if not isinstance(uid, str) or not uid:
        return BadReview("request.uid: Required value", api_version)
    operation = req.get("operation")
    if operation not in OPERATIONS:
        return BadReview(f"request.operation: Unsupported value {operation!r}: want one of {', '.join(OPERATIONS)}",
                         api_version, uid)
    kind_field = req.get("kind")
    kind: dict[str, Any] = kind_field if isinstance(kind_field, dict) else {}
    objects: dict[str, dict[str, Any] | None] = {}
    for key in ("object", "oldObject"):
        value = req.get(key)
        if value is not None and not isinstance(value, dict):
            return BadReview(f"request.{key}: must be an object", api_version, uid)
        objects[key] = value
    return AdmissionRequest(
        api_version=api_version, uid=uid, operation=operation,
        group=str(kind.get("group") or ""), version=str(kind.get("version") or ""), kind=str(kind.get("kind") or ""),
        namespace=str(req.get("namespace") or ""), name=str(req.get("name") or ""),
        object=objects["object"], old_object=objects["oldObject"], dry_run=bool(req.get("dryRun")),
        sub_resource=str(req.get("subResource") or ""))


def respond(api_version: str, uid: str, verdict: Verdict) -> dict[str, Any]:
    """The AdmissionReview answering request `uid`."""
    response: dict[str, Any] = {"uid": uid, "allowed": verdict.allowed}
    if not verdict.allowed or verdict.message:
        response["status"] = {"code": verdict.code if not verdict.allowed else 200, "message": verdict.message}
        if not verdict.allowed:
            response["status"]["status"] = "Failure"
    if verdict.patch:
        response["patchType"] = "JSONPatch"
        response["patch"] = base64.b64encode(json.dumps(verdict.patch, separators=(",", ":")).encode()).decode()
    if verdict.warnings:
        response["warnings"] = list(verdict.warnings)
    return {"apiVersion": api_version, "kind": "AdmissionReview", "response": response}


def respond_bad(bad: BadReview) -> dict[str, Any]:
    return respond(bad.api_version, bad.uid, Verdict.deny(f"meshd cannot review this request: {bad.reason}"))
