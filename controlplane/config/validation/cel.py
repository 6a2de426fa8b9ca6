"""The CEL rules (`x-kubernetes-validations`) of Istio's CRDs, as Python predicates.

We cannot run CEL, so every distinct rule string that appears in the CRD files under
`controlplane/config/schemas/` has a hand-written equivalent here, keyed by the exact rule
text. A predicate gets CEL's `self` (the value at the node carrying the rule) and returns
True when the rule holds. Where CEL would fail to evaluate (`int("x")`, a substring past the
end) the predicate raises or returns False; either way the rule counts as violated, as the
API server reports evaluation errors as invalid values too.

A rule missing from this table is skipped (see `lookup`); `tests/unit/test_validation.py`
checks that every rule in the shipped CRDs is covered, so a CRD update that adds one fails
loudly in CI rather than silently at runtime.
"""
from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from . import durations

Predicate = Callable[[Any], bool]


def has(obj: Any, key: str) -> bool:
    """CEL's has(self.key) on a Kubernetes object: the field is present (nulls are pruned)."""
    return isinstance(obj, dict) and obj.get(key) is not None


def _at_most_one(*keys: str) -> Predicate:
    # `(has(self.a) ? 1 : 0) + (has(self.b) ? 1 : 0) <= 1`
    return lambda self: sum(1 for k in keys if has(self, k)) <= 1


def _duration_at_least_1ms(self: Any) -> bool:
    return durations.parse_duration(self) >= durations.MILLISECOND


def _port_name_keys(self: dict) -> bool:
    return all(len(k) < 63 and _PORT_NAME.match(k) for k in self)


def _port_number_keys(self: dict) -> bool:
    # int(key) on a non-numeric key is a CEL evaluation error: counts as a violation.
    return all(0 < int(k) <= 65535 for k in self)


def _unique_port_numbers(self: list) -> bool:
    numbers = [item.get("number") if isinstance(item, dict) else None for item in self]
    return all(numbers.count(n) == 1 for n in numbers)


def _cidr_only_for_none_or_static(self: dict) -> bool:
    addresses = self.get("addresses") or []
    resolution = self.get("resolution") or "NONE"
    has_cidr = any("/" in a for a in addresses if isinstance(a, str))
    return not (has_cidr and resolution not in ("STATIC", "NONE"))


def _uds_absolute_or_abstract(self: str) -> bool:
    if not self.startswith("unix://"):
        return True
    # substring(7, 8) on a 7-character string is out of range in CEL: a violation.
    return self[7:8] in ("/", "@")


def _port_level_mtls_requires_selector(self: dict) -> bool:
    if not has(self, "portLevelMtls"):
        return True
    selector = self.get("selector")
    labels = selector["matchLabels"] if isinstance(selector, dict) and has(selector, "matchLabels") else {}
    return len(labels) > 0


def _service_accounts_exclusive(self: dict) -> bool:
    if has(self, "serviceAccounts") or has(self, "notServiceAccounts"):
        return not any(has(self, k) for k in ("principals", "notPrincipals", "namespaces", "notNamespaces"))
    return True


def _url_scheme_http_or_https(self: str) -> bool:
    # CEL's url() accepts absolute URLs only; its getScheme() is lower-cased, as Go's url.Parse does.
    scheme, sep, _ = self.partition("://")
    return bool(sep) and scheme.lower() in ("http", "https")


_PORT_NAME = re.compile(r"^[a-zA-Z0-9](?:[-a-zA-Z0-9]*[a-zA-Z0-9])?$")

RULES: dict[str, Predicate] = {
    # Durations everywhere (timeouts, intervals, ...).
    "duration(self) >= duration('1ms')": _duration_at_least_1ms,
    # Gateway server TLS: certificate sources are mutually exclusive.
    "(has(self.tlsCertificates) ? 1 : 0) + (has(self.credentialNames) ? 1 : 0) <= 1":
        _at_most_one("tlsCertificates", "credentialNames"),
    "(has(self.credentialName) ? 1 : 0) + (has(self.credentialNames) ? 1 : 0) <= 1":
        _at_most_one("credentialName", "credentialNames"),
    "(has(self.credentialNames) ? 1 : 0) + (has(self.tlsCertificates) ? 1 : 0) <= 1":
        _at_most_one("credentialNames", "tlsCertificates"),
    # Workload selectors (matchLabels maps and their values).
    'self.all(key, !key.contains("*"))': lambda self: all("*" not in k for k in self),
    "self.all(key, key.size() != 0)": lambda self: all(len(k) != 0 for k in self),
    '!self.contains("*")': lambda self: "*" not in self,
    # EnvoyFilter.
    "(has(self.workloadSelector) ? 1 : 0) + (has(self.targetRefs) ? 1 : 0) <= 1":
        _at_most_one("workloadSelector", "targetRefs"),
    'has(self.context) ? ((self.context == "WAYPOINT") ? has(self.waypoint) : !has(self.waypoint)) : '
    '!has(self.waypoint)':
        lambda self: (self.get("context") == "WAYPOINT") == has(self, "waypoint"),
    # ServiceEntry.
    "(has(self.workloadSelector) ? 1 : 0) + (has(self.endpoints) ? 1 : 0) <= 1":
        _at_most_one("workloadSelector", "endpoints"),
    '!((has(self.addresses) ? self.addresses : []).exists(k, k.contains("/")) && '
    '!((has(self.resolution) ? self.resolution : "NONE") in ["STATIC", "NONE"]))':
        _cidr_only_for_none_or_static,
    '((has(self.resolution) ? self.resolution : "NONE") == "NONE") ? !has(self.endpoints) : true':
        lambda self: (self.get("resolution") or "NONE") != "NONE" or not has(self, "endpoints"),
    '((has(self.resolution) ? self.resolution : "") == "DNS_ROUND_ROBIN") ? '
    '((has(self.endpoints) ? self.endpoints : []).size() <= 1) : true':
        lambda self: self.get("resolution") != "DNS_ROUND_ROBIN" or len(self.get("endpoints") or []) <= 1,
    # WorkloadEntry (ServiceEntry endpoints).
    "has(self.address) || has(self.network)": lambda self: has(self, "address") or has(self, "network"),
    '(has(self.address) ? self.address : "").startsWith("unix://") ? !has(self.ports) : true':
        lambda self: not str(self.get("address") or "").startswith("unix://") or not has(self, "ports"),
    'self.startsWith("unix://") ? (self.substring(7, 8) == "/" || self.substring(7, 8) == "@") : true':
        _uds_absolute_or_abstract,
    'self.startsWith("unix://") ? !self.endsWith("/") : true':
        lambda self: not self.startswith("unix://") or not self.endswith("/"),
    'self.all(key, size(key) < 63 && key.matches("^[a-zA-Z0-9](?:[-a-zA-Z0-9]*[a-zA-Z0-9])?$"))':
        _port_name_keys,
    "0 < self && self <= 65535": lambda self: 0 < self <= 65535,
    'self != "*"': lambda self: self != "*",
    "self.all(l1, self.exists_one(l2, l1.number == l2.number))": _unique_port_numbers,
    # WorkloadGroup probe (httpGet.scheme).
    'self in ["", "HTTP", "HTTPS"]': lambda self: self in ("", "HTTP", "HTTPS"),
    # PeerAuthentication.
    "has(self.portLevelMtls) ? (((has(self.selector) && has(self.selector.matchLabels)) ? "
    "self.selector.matchLabels : {}).size() > 0) : true": _port_level_mtls_requires_selector,
    "self.all(key, 0 < int(key) && int(key) <= 65535)": _port_number_keys,
    # Policy attachment (selector vs targetRef(s)).
    "(has(self.selector) ? 1 : 0) + (has(self.targetRef) ? 1 : 0) + (has(self.targetRefs) ? 1 : 0) <= 1":
        _at_most_one("selector", "targetRef", "targetRefs"),
    # AuthorizationPolicy source.
    "(has(self.serviceAccounts) || has(self.notServiceAccounts)) ? (!has(self.principals) &&\n"
    "!has(self.notPrincipals) && !has(self.namespaces) && !has(self.notNamespaces)) : true":
        _service_accounts_exclusive,
    # targetRef.namespace must be empty.
    "self.size() == 0": lambda self: len(self) == 0,
    # RequestAuthentication JWT rules.
    '(has(self.jwksUri) ? 1 : 0) + (has(self.jwks_uri) ? 1 : 0) + (has(self.jwks) ? 1 : 0) <= 1':
        _at_most_one("jwksUri", "jwks_uri", "jwks"),
    'url(self).getScheme() in ["http", "https"]': _url_scheme_http_or_https,
    # Telemetry metric tagOverrides: UPSERT needs a value, REMOVE takes none.
    '((has(self.operation) ? self.operation : "") == "UPSERT") ? (self.value != "") : true':
        lambda self: self.get("operation") != "UPSERT" or self.get("value", "") != "",
    '((has(self.operation) ? self.operation : "") == "REMOVE") ? !has(self.value) : true':
        lambda self: self.get("operation") != "REMOVE" or not has(self, "value"),
}


def lookup(rule: str) -> Predicate | None:
    """The predicate for a rule string, or None if we have no translation (the rule is skipped)."""
    return RULES.get(rule)


def holds(predicate: Predicate, value: Any) -> bool:
    try:
        return bool(predicate(value))
    except (ValueError, TypeError, AttributeError, KeyError):
        return False
