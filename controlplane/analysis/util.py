"""Helpers shared by analyzers (Istio's analyzers/util and host package, in Python)."""
from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

DEFAULT_DOMAIN = "svc.cluster.local"
MESH_GATEWAY = "mesh"
EXPORT_ALL = "*"
EXPORT_LOCAL = "."
_FQDN = re.compile(r"^(.+)\.(.+)\.svc\.cluster\.local$")
SYSTEM_NAMESPACES = frozenset({"kube-system", "kube-public", "kube-node-lease", "local-path-storage", "istio-system"})


def to_fqdn(namespace: str, host: str) -> str:
    """ConvertHostToFQDN: short names become `<host>.<ns>.svc.cluster.local`."""
    if not host.startswith("*") and "." not in host:
        return f"{host}.{namespace}.{DEFAULT_DOMAIN}"
    return host


def scoped_fqdn(scope: str, namespace: str, host: str) -> str:
    return f"{scope}/{to_fqdn(namespace, host)}"


def full_name_from_fqdn(fqdn: str) -> tuple[str, str]:
    m = _FQDN.match(fqdn)
    return (m.group(2), m.group(1)) if m else ("", "")


def resource_name_from_host(default_ns: str, host: str) -> tuple[str, str]:
    """GetResourceNameFromHost -> (namespace, name)."""
    ns, name = full_name_from_fqdn(host)
    if not ns:
        return default_ns, host
    return ns, name


def short_or_full_name(default_ns: str, name: str) -> tuple[str, str]:
    """resource.NewShortOrFullName: `ns/name` or `name` in default_ns."""
    if "/" in name:
        ns, _, n = name.partition("/")
        return ns, n
    return default_ns, name


def full_name(ns: str, name: str) -> str:
    return f"{ns}/{name}" if ns else name


def host_matches(a: str, b: str) -> bool:
    """host.Name.Matches: wildcard-aware, either side may be a wildcard."""
    aw, bw = a.startswith("*"), b.startswith("*")
    if aw and not b:
        return True
    if not aw and not bw:
        return a == b
    if a == "*" or b == "*":
        return True
    if aw and bw:
        if len(a) < len(b):
            return b[1:].endswith(a[1:])
        return a[1:].endswith(b[1:])
    if aw:
        return b.endswith(a[1:])
    return a.endswith(b[1:])


def names_for_namespace(hosts: Iterable[str], namespace: str) -> list[str]:
    """host.NamesForNamespace: `ns/host` entries visible from namespace, stripped."""
    out = []
    for h in hosts:
        if "/" in h:
            ns, _, rest = h.partition("/")
            if ns != namespace and ns != "*":
                continue
            h = rest
        out.append(h)
    return out


def selector_string(sel: Mapping[str, str] | None) -> str:
    """labels.SelectorFromSet(sel).String(): `k=v,k2=v2` sorted by key; "" for none."""
    return ",".join(f"{k}={v}" for k, v in sorted((sel or {}).items()))


def selector_matches(sel: Mapping[str, str] | None, labels: Mapping[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in (sel or {}).items())


def export_to_all(export_to: Iterable[str] | None) -> bool:
    e = list(export_to or [])
    return not e or EXPORT_ALL in e
