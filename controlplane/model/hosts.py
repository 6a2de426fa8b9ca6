"""Host names with wildcards, as Istio compares them.

`*` matches everything, `*.example.com` matches any name ending in `.example.com`
(and the wildcard itself), anything else matches only itself.
"""
from __future__ import annotations


def covers(wide: str, narrow: str) -> bool:
    """True when every name `narrow` stands for is also named by `wide`."""
    wide, narrow = wide.lower(), narrow.lower()
    if wide == "*" or wide == narrow:
        return True
    if wide.startswith("*"):
        suffix = wide[1:]  # ".example.com"
        if narrow.startswith("*"):
            return narrow[1:].endswith(suffix)
        return narrow.endswith(suffix)
    return False


def intersect(a: str, b: str) -> str | None:
    """The narrower of two hosts when one covers the other, else None
    (so `*.example.com` and `api.example.com` give `api.example.com`)."""
    if covers(a, b):
        return b
    if covers(b, a):
        return a
    return None


def split_namespace(host: str, own_namespace: str) -> tuple[str, str]:
    """Gateway `hosts` entries may carry a namespace: `ns/host`, `./host`, `*/host`.
    Returns (namespace or "*", host)."""
    if "/" not in host:
        return "*", host
    ns, _, name = host.partition("/")
    if ns == ".":
        ns = own_namespace
    return ns, name
