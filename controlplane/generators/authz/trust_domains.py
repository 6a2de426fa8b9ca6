"""Trust domain aliases in source principals (MeshConfig `trustDomain` and
`trustDomainAliases`), as istiod's pilot/pkg/security/trustdomain (read, not copied).

A principal `<td>/ns/<ns>/sa/<sa>` whose trust domain is the mesh's, one of its aliases,
or `cluster.local` (which always stands for the local trust domain) is widened to the same
identity in every trust domain of the bundle. A wildcard trust domain (`*-td`) is kept as
written for the trust domains it already matches. Principals not in SPIFFE form, or whose
trust domain is `*`, are left alone.
"""
from __future__ import annotations

from dataclasses import dataclass

CLUSTER_LOCAL = "cluster.local"


def _prefix_match(a: str, pattern: str) -> bool:
    return pattern.endswith("*") and a.startswith(pattern[:-1])


def _suffix_match(a: str, pattern: str) -> bool:
    return pattern.startswith("*") and a.endswith(pattern[1:])


def _matches_any(a: str, candidates: tuple[str, ...]) -> bool:
    """Either side may carry the wildcard (istiod's trustdomain.stringMatch)."""
    return any(a == s or s == "*" or _prefix_match(a, s) or _prefix_match(s, a) or _suffix_match(a, s)
               or _suffix_match(s, a) for s in candidates)


@dataclass(frozen=True)
class Bundle:
    trust_domains: tuple[str, ...]  # the mesh's trust domain first, then its aliases

    @classmethod
    def of(cls, trust_domain: str, aliases: tuple[str, ...] = ()) -> Bundle:
        return cls((trust_domain, *aliases))

    def principals(self, principals: tuple[str, ...]) -> tuple[str, ...]:
        """`principals` with each trust-domain-bound identity repeated for every trust
        domain of the bundle."""
        out: list[str] = []
        for principal in principals:
            parts = principal.split("/")
            if len(parts) != 5 or parts[0] == "*":
                out.append(principal)  # no SPIFFE form, or any trust domain: nothing to widen
                continue
            td = parts[0]
            if not (_matches_any(td, self.trust_domains) or td == CLUSTER_LOCAL):
                out.append(principal)
                continue
            widened: list[str] = []
            for other in self.trust_domains:
                candidate = principal if _suffix_match(other, td) else "/".join([other, *parts[1:]])
                if candidate not in widened:
                    widened.append(candidate)
            out.extend(widened)
        return tuple(out)

    def trust_domain_values(self, values: tuple[str, ...]) -> tuple[str, ...]:
        """`trustDomains` values: one of the bundle's trust domains stands for all of them."""
        out: list[str] = []
        for v in values:
            for td in (self.trust_domains if v in self.trust_domains else (v,)):
                if td not in out:
                    out.append(td)
        return tuple(out)
