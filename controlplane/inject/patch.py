"""RFC 6902 JSON Patch between two documents: what the mutating webhook answers.

The patch is coarse where that is simpler and still exact: a list that changed is replaced
whole (the API server applies it the same), a mapping is diffed key by key so that the
fields the injector does not touch are not rewritten.
"""
from __future__ import annotations

import copy
from typing import Any


def _pointer(path: list[str]) -> str:
    return "".join("/" + p.replace("~", "~0").replace("/", "~1") for p in path)


def json_patch(before: Any, after: Any) -> list[dict[str, Any]]:
    """The operations that turn `before` into `after`."""
    ops: list[dict[str, Any]] = []
    _diff(before, after, [], ops)
    return ops


def _diff(before: Any, after: Any, path: list[str], ops: list[dict[str, Any]]) -> None:
    if isinstance(before, dict) and isinstance(after, dict):
        for key in before:
            if key not in after:
                ops.append({"op": "remove", "path": _pointer(path + [key])})
        for key, value in after.items():
            if key not in before:
                ops.append({"op": "add", "path": _pointer(path + [key]), "value": value})
            elif before[key] != value:
                _diff(before[key], value, path + [key], ops)
        return
    if before != after or type(before) is not type(after):
        ops.append({"op": "replace", "path": _pointer(path), "value": after})


def apply_patch(doc: Any, ops: list[dict[str, Any]]) -> Any:
    """Apply add/remove/replace operations (what json_patch emits) to a copy of `doc`."""
    out = copy.deepcopy(doc)
    for op in ops:
        parts = [p.replace("~1", "/").replace("~0", "~") for p in op["path"].split("/")[1:]]
        if not parts:
            out = copy.deepcopy(op["value"])
            continue
        parent = out
        for p in parts[:-1]:
            parent = parent[int(p)] if isinstance(parent, list) else parent[p]
        last: Any = parts[-1]
        if isinstance(parent, list):
            last = len(parent) if last == "-" else int(last)
        if op["op"] == "remove":
            del parent[last]
        elif op["op"] == "add" and isinstance(parent, list):
            parent.insert(last, copy.deepcopy(op["value"]))
        elif op["op"] in ("add", "replace"):
            parent[last] = copy.deepcopy(op["value"])
        else:
            raise ValueError(f"unsupported JSON Patch op {op['op']!r}")
    return out
