"""Label and field selectors as the API server reads them (the subset tests need:
`k=v`, `k==v`, `k!=v`, `k`, `!k`, `k in (a,b)`, `k notin (a,b)`; fields
`metadata.name` / `metadata.namespace` with `=`, `==`, `!=`)."""
from __future__ import annotations

import re
from collections.abc import Callable

Match = Callable[[dict], bool]

_SET = re.compile(r"^\s*([^\s!=]+)\s+(in|notin)\s+\(([^)]*)\)\s*$")


def _split(selector: str) -> list[str]:
    parts, depth, cur = [], 0, ""
    for ch in selector:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    parts.append(cur)
    return [p.strip() for p in parts if p.strip()]


def label_matcher(selector: str | None) -> Match:
    if not selector:
        return lambda obj: True
    tests: list[Callable[[dict], bool]] = []
    for req in _split(selector):
        m = _SET.match(req)
        if m:
            key, op, values = m.group(1), m.group(2), {v.strip() for v in m.group(3).split(",")}
            if op == "in":
                tests.append(lambda l, k=key, vs=values: l.get(k) in vs)
            else:
                tests.append(lambda l, k=key, vs=values: l.get(k) not in vs)
        elif "!=" in req:
            k, v = (s.strip() for s in req.split("!=", 1))
            tests.append(lambda l, k=k, v=v: l.get(k) != v)
        elif "=" in req:
            k, v = (s.strip() for s in req.replace("==", "=").split("=", 1))
            tests.append(lambda l, k=k, v=v: l.get(k) == v)
        elif req.startswith("!"):
            absent = req[1:].strip()
            tests.append(lambda l, k=absent: k not in l)
        else:
            tests.append(lambda l, k=req: k in l)

    def match(obj: dict) -> bool:
        labels = (obj.get("metadata") or {}).get("labels") or {}
        return all(t(labels) for t in tests)

    return match


def field_matcher(selector: str | None) -> Match:
    if not selector:
        return lambda obj: True
    tests = []
    for req in _split(selector):
        negate = "!=" in req
        k, v = (s.strip() for s in req.replace("==", "=").replace("!=", "=").split("=", 1))
        if k not in ("metadata.name", "metadata.namespace"):
            raise ValueError(f'field label not supported: {k}')
        attr = k.split(".", 1)[1]
        tests.append(lambda o, a=attr, v=v, n=negate: ((o.get("metadata") or {}).get(a, "") == v) != n)
    return lambda obj: all(t(obj) for t in tests)
