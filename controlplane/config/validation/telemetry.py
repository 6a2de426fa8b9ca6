"""Istio's semantic checks of a Telemetry spec (its validating webhook's rules): selector
and targetRefs exclusive, one tracing entry, sampling in [0, 100], custom tags of exactly
one kind with their required fields, provider names given, modes known, tag overrides
coherent with their operation. A CEL `filter.expression` is only checked for balanced
brackets and quotes: meshd has no CEL parser, Envoy compiles the expression (docs/telemetry.md)."""
from __future__ import annotations

from typing import Any

from ..types.telemetry import MODES
from .errors import FieldError, child, index, invalid, map_key, required
from .istio_common import check_duration, check_labels

_TAG_KINDS = ("literal", "environment", "header")
_TAG_OPERATIONS = ("UPSERT", "REMOVE")


def validate_telemetry(spec: Any) -> list[FieldError]:
    errs: list[FieldError] = []
    if not isinstance(spec, dict):
        return errs
    selector = spec.get("selector")
    refs = spec.get("targetRefs") or []
    if selector and (spec.get("targetRef") or refs):
        errs.append(FieldError("spec", "only one of targetRefs or workloadSelector can be set"))
    if spec.get("targetRef") and refs:
        errs.append(FieldError("spec", "only one of targetRef or targetRefs can be set"))
    if isinstance(selector, dict):
        check_labels(selector.get("matchLabels"), "spec.selector.matchLabels", errs)
    tracing = spec.get("tracing") or []
    if len(tracing) > 1:
        errs.append(FieldError("spec.tracing", "multiple tracing is not currently supported"))
    for i, t in enumerate(tracing):
        _tracing(t, index("spec.tracing", i), errs)
    for i, a in enumerate(spec.get("accessLogging") or []):
        _access_logging(a, index("spec.accessLogging", i), errs)
    for i, m in enumerate(spec.get("metrics") or []):
        _metrics(m, index("spec.metrics", i), errs)
    return errs


def _mode(entry: dict, path: str, errs: list[FieldError]) -> None:
    match = entry.get("match")
    mode = match.get("mode") if isinstance(match, dict) else None
    if mode is not None and mode not in MODES:
        errs.append(invalid(child(child(path, "match"), "mode"), mode, f"must be one of {', '.join(MODES)}"))


def _providers(entry: dict, path: str, errs: list[FieldError]) -> None:
    for i, p in enumerate(entry.get("providers") or []):
        if not isinstance(p, dict) or not p.get("name"):
            errs.append(required(child(index(child(path, "providers"), i), "name")))


def _tracing(t: Any, path: str, errs: list[FieldError]) -> None:
    if not isinstance(t, dict):
        return
    _mode(t, path, errs)
    _providers(t, path, errs)
    if len(t.get("providers") or []) > 1:
        errs.append(FieldError(child(path, "providers"), "multiple providers is not currently supported"))
    pct = t.get("randomSamplingPercentage")
    if pct is not None and (isinstance(pct, bool) or not isinstance(pct, (int, float)) or not 0 <= pct <= 100):
        errs.append(invalid(child(path, "randomSamplingPercentage"), pct, "must be in range [0.0, 100.0]"))
    tags = t.get("customTags") or {}
    for name, tag in tags.items() if isinstance(tags, dict) else ():
        where = map_key(child(path, "customTags"), name)
        kinds = [k for k in _TAG_KINDS if isinstance(tag, dict) and tag.get(k) is not None]
        if len(kinds) != 1:
            errs.append(FieldError(where, "exactly one of literal, environment or header must be set"))
            continue
        block = tag[kinds[0]]
        field = "value" if kinds[0] == "literal" else "name"
        if not isinstance(block, dict) or not block.get(field):
            errs.append(required(child(child(where, kinds[0]), field)))


def _access_logging(a: Any, path: str, errs: list[FieldError]) -> None:
    if not isinstance(a, dict):
        return
    _mode(a, path, errs)
    _providers(a, path, errs)
    flt = a.get("filter")
    if isinstance(flt, dict) and flt.get("expression") is not None:
        problem = cel_syntax_problem(str(flt["expression"]))
        if problem:
            errs.append(invalid(child(child(path, "filter"), "expression"), flt["expression"], problem))


def _metrics(m: Any, path: str, errs: list[FieldError]) -> None:
    if not isinstance(m, dict):
        return
    _providers(m, path, errs)
    if m.get("reportingInterval") is not None:
        check_duration(m["reportingInterval"], child(path, "reportingInterval"), errs)
    for i, o in enumerate(m.get("overrides") or []):
        if not isinstance(o, dict):
            continue
        where = index(child(path, "overrides"), i)
        _mode(o, where, errs)
        raw_match = o.get("match")
        match = raw_match if isinstance(raw_match, dict) else {}
        if match.get("metric") and match.get("customMetric"):
            errs.append(FieldError(child(where, "match"), "only one of metric or customMetric can be set"))
        for tag, spec in (o.get("tagOverrides") or {}).items():
            tpath = map_key(child(where, "tagOverrides"), tag)
            if not tag:
                errs.append(FieldError(tpath, "tag name must not be empty"))
            spec = spec if isinstance(spec, dict) else {}
            op = spec.get("operation") or "UPSERT"
            if op not in _TAG_OPERATIONS:
                errs.append(invalid(child(tpath, "operation"), op, f"must be one of {', '.join(_TAG_OPERATIONS)}"))
            elif op == "UPSERT" and not spec.get("value"):
                errs.append(FieldError(child(tpath, "value"), "must be set when operation is UPSERT (default)"))
            elif op == "REMOVE" and spec.get("value"):
                errs.append(FieldError(child(tpath, "value"), "cannot be set when operation is REMOVE"))


def cel_syntax_problem(expr: str) -> str:
    """What makes `expr` unparseable as CEL among the checks meshd can make ("" if none):
    empty, unbalanced brackets, an unterminated string."""
    if not expr.strip():
        return "filter expression must not be empty"
    stack: list[str] = []
    pairs = {")": "(", "]": "[", "}": "{"}
    quote = ""
    escaped = False
    for ch in expr:
        if quote:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == quote:
                quote = ""
        elif ch in "'\"":
            quote = ch
        elif ch in "([{":
            stack.append(ch)
        elif ch in pairs:
            if not stack or stack.pop() != pairs[ch]:
                return f"invalid CEL expression: unbalanced {ch!r}"
    if quote:
        return "invalid CEL expression: unterminated string"
    if stack:
        return f"invalid CEL expression: unclosed {stack[-1]!r}"
    return ""
