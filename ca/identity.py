"""Workload identities and their SPIFFE IDs (``spiffe://<td>/ns/<ns>/sa/<sa>``).

Istio encodes a workload's identity as the SPIFFE ID of its Kubernetes service
account; it is the only thing a workload certificate asserts. Parsing is strict
because an identity that round-trips loosely (extra path segments, query strings,
odd characters) is an identity an attacker can shape.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

SPIFFE_SCHEME = "spiffe://"

# SPIFFE ID spec: trust domain is lowercase letters, digits, '.', '-', '_';
# path segments are letters, digits, '.', '-', '_' and never '.' or '..'.
_TRUST_DOMAIN = re.compile(r"[a-z0-9._-]+")
_SEGMENT = re.compile(r"[A-Za-z0-9._-]+")
_MAX_URI_LEN = 2048  # the spec's limit on a SPIFFE ID


def check_trust_domain(value: str) -> str:
    """Return ``value`` if it is a valid SPIFFE trust domain name, else raise ValueError."""
    if not isinstance(value, str) or not _TRUST_DOMAIN.fullmatch(value):
        raise ValueError(f"invalid trust domain {value!r}: must be lowercase letters, digits, '.', '-', '_'")
    return value


def _check_segment(what: str, value: str) -> None:
    if not isinstance(value, str) or not _SEGMENT.fullmatch(value) or value in (".", ".."):
        raise ValueError(f"invalid {what} {value!r}: must be letters, digits, '.', '-', '_'")


@dataclass(frozen=True, order=True)
class Identity:
    trust_domain: str
    namespace: str
    service_account: str

    def __post_init__(self) -> None:
        check_trust_domain(self.trust_domain)
        _check_segment("namespace", self.namespace)
        _check_segment("service account", self.service_account)

    @property
    def spiffe_uri(self) -> str:
        return f"{SPIFFE_SCHEME}{self.trust_domain}/ns/{self.namespace}/sa/{self.service_account}"

    def __str__(self) -> str:
        return self.spiffe_uri

    @classmethod
    def from_spiffe_uri(cls, uri: str) -> Identity:
        """Parse exactly ``spiffe://<td>/ns/<ns>/sa/<sa>``; anything else is a ValueError."""
        if not isinstance(uri, str):
            raise ValueError(f"SPIFFE ID must be a string, not {type(uri).__name__}")
        if len(uri) > _MAX_URI_LEN:
            raise ValueError(f"SPIFFE ID longer than {_MAX_URI_LEN} characters")
        if not uri.startswith(SPIFFE_SCHEME):
            raise ValueError(f"not a SPIFFE ID (must start with {SPIFFE_SCHEME!r}): {uri!r}")
        parts = uri[len(SPIFFE_SCHEME):].split("/")
        if len(parts) != 5 or parts[1] != "ns" or parts[3] != "sa":
            raise ValueError(
                f"not an Istio workload SPIFFE ID (expected spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>): {uri!r}"
            )
        trust_domain, _, namespace, _, service_account = parts
        return cls(trust_domain, namespace, service_account)
