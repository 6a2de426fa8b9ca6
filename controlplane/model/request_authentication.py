"""RequestAuthentication: which JWT rules apply to a workload, and the key sets they need.

Selection follows istiod (pilot/pkg/model/authentication.go, policyattachment.go; read,
not copied): the policies of the workload's namespace and of the root namespace (mesh
wide) are considered, in that order, each namespace's oldest first;
- a workload that is not a Kubernetes Gateway API gateway (no label
  `gateway.networking.k8s.io/gateway-name`) takes a policy whose `selector` matches its
  labels (no selector: every workload); a policy with `targetRef(s)` is not for it;
- a Gateway API gateway takes a policy whose `targetRef(s)` name its Gateway (same
  namespace), or, without targetRefs, one whose selector matches (istiod's default
  ENABLE_SELECTOR_BASED_K8S_GATEWAY_POLICY=true).
The rules of every selected policy are merged and sorted by issuer (istiod's order), one
Envoy provider each (generators/authn.py).

Key sets: a rule with inline `jwks` carries its own; one with `jwksUri` needs that URI
fetched; one with neither needs the issuer's OpenID discovery document
(`<issuer>/.well-known/openid-configuration`, its `jwks_uri`), as istiod does. meshd
fetches them (sources/jwks.py) and hands the results to the model as a `JwksView`, so
generators stay pure functions of the snapshot.
"""
from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from ..config.objects import ConfigObject
from ..config.validation.durations import parse_duration
from ..names import GATEWAY_API_GROUP, GATEWAY_NAME_LABEL
from .services import labels_match

KIND = "RequestAuthentication"
DEFAULT_FETCH_TIMEOUT = 5.0  # seconds; JWTRule.timeout's default in istiod
# Claims whose string value Envoy splits into a list in the payload metadata (istiod's
# buildSpaceDelimitedClaims defaults; a rule's spaceDelimitedClaims adds to them).
DEFAULT_SPACE_DELIMITED_CLAIMS = ("permission", "scope")


@dataclass(frozen=True)
class FromHeader:
    name: str
    prefix: str = ""


@dataclass(frozen=True)
class ClaimToHeader:
    header: str
    claim: str


@dataclass(frozen=True, order=True)
class KeySetRef:
    """Where a rule's key set comes from: its `jwksUri`, or (empty uri) the OpenID
    discovery document of `issuer`."""

    jwks_uri: str
    issuer: str = ""  # set only when jwks_uri is empty

    def __str__(self) -> str:
        return self.jwks_uri or f"{self.issuer.rstrip('/')}/.well-known/openid-configuration"


@dataclass(frozen=True)
class JwtRule:
    issuer: str
    audiences: tuple[str, ...] = ()
    jwks: str = ""  # inline JWKS (JSON), as written
    jwks_uri: str = ""
    from_headers: tuple[FromHeader, ...] = ()
    from_params: tuple[str, ...] = ()
    from_cookies: tuple[str, ...] = ()
    forward_original_token: bool = False
    output_payload_to_header: str = ""
    output_claim_to_headers: tuple[ClaimToHeader, ...] = ()
    space_delimited_claims: tuple[str, ...] = ()
    timeout: float = DEFAULT_FETCH_TIMEOUT  # for fetching the key set
    source: str = ""  # "namespace/name spec.jwtRules[i]": where the rule was written

    @property
    def key_set(self) -> KeySetRef | None:
        """What must be fetched for this rule; None when the rule carries its key set."""
        if self.jwks:
            return None
        return KeySetRef(self.jwks_uri) if self.jwks_uri else KeySetRef("", self.issuer)


@dataclass(frozen=True)
class JwksView:
    """The key sets meshd fetched and currently trusts: ref -> JWKS JSON. A ref the
    rules need that is missing here could not be fetched (generators then inline a key
    set that matches no token: see generators/authn.py)."""

    key_sets: Mapping[KeySetRef, str] = field(default_factory=dict)

    def get(self, ref: KeySetRef) -> str | None:
        return self.key_sets.get(ref)

    @cached_property
    def digest(self) -> str:
        """Fingerprint of the contents (for caches and the mesh version)."""
        return self.digest_of(self.key_sets)

    def digest_of(self, refs: Iterable[KeySetRef | None]) -> str:
        """Fingerprint of what this view holds for `refs` (None entries: inline key sets)."""
        h = hashlib.blake2b(digest_size=12)
        for ref in sorted({r for r in refs if r is not None}):
            h.update(f"{ref.jwks_uri}\0{ref.issuer}\0{self.key_sets.get(ref)}\n".encode())
        return h.hexdigest()


EMPTY_JWKS = JwksView()


def _age_key(obj: ConfigObject) -> tuple[bool, str, str]:
    ts = str(obj.extra.get("creationTimestamp") or "")
    return (ts == "", ts, obj.name)  # without a timestamp (files): after, by name


def _target_refs(spec: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    refs = [r for r in spec.get("targetRefs") or () if isinstance(r, Mapping)]
    if not refs and isinstance(spec.get("targetRef"), Mapping):
        refs = [spec["targetRef"]]
    return refs


def _selected(spec: Mapping[str, Any], labels: Mapping[str, str]) -> bool:
    sel = spec.get("selector")
    match = (sel.get("matchLabels") or {}) if isinstance(sel, Mapping) else {}
    return labels_match(match, labels) if match else True


def applies(policy: ConfigObject, namespace: str, labels: Mapping[str, str]) -> bool:
    """Whether `policy` (in the workload's namespace or the root namespace) attaches to a
    workload of `namespace` with `labels` (istiod's ShouldAttachPolicy, no waypoints)."""
    spec = policy.spec or {}
    refs = _target_refs(spec)
    gateway = labels.get(GATEWAY_NAME_LABEL)
    if gateway is None:
        return not refs and _selected(spec, labels)
    if not refs:
        return _selected(spec, labels)
    if policy.namespace != namespace:
        return False
    for ref in refs:
        if str(ref.get("namespace") or namespace) != namespace:
            continue
        if (str(ref.get("group") or ""), str(ref.get("kind") or "")) == (GATEWAY_API_GROUP, "Gateway") \
                and str(ref.get("name") or "") == gateway:
            return True
    return False


def policies_for(policies: Iterable[ConfigObject], namespace: str, labels: Mapping[str, str],
                 root_namespace: str) -> list[ConfigObject]:
    """The RequestAuthentications selecting a workload, in istiod's order."""
    by_ns: dict[str, list[ConfigObject]] = {}
    for p in policies:
        if p.kind == KIND:
            by_ns.setdefault(p.namespace, []).append(p)
    out: list[ConfigObject] = []
    for ns in dict.fromkeys((namespace, root_namespace)):
        for p in sorted(by_ns.get(ns, ()), key=_age_key):
            if applies(p, namespace, labels):
                out.append(p)
    return out


def jwt_rules_for(policies: Iterable[ConfigObject], namespace: str, labels: Mapping[str, str],
                  root_namespace: str) -> tuple[JwtRule, ...]:
    """The JWT rules a workload of `namespace` with `labels` enforces, sorted by issuer."""
    rules: list[JwtRule] = []
    for p in policies_for(policies, namespace, labels, root_namespace):
        rules.extend(rules_of(p))
    rules.sort(key=lambda r: r.issuer)  # stable: equal issuers keep policy order
    return tuple(rules)


def rules_of(policy: ConfigObject) -> list[JwtRule]:
    """A policy's `jwtRules`, read defensively (the parse gate validated them)."""
    out = []
    for i, raw in enumerate((policy.spec or {}).get("jwtRules") or ()):
        if isinstance(raw, Mapping):
            out.append(_rule(raw, f"{policy.namespace}/{policy.name} spec.jwtRules[{i}]"))
    return out


def _strings(value: Any) -> tuple[str, ...]:
    if not isinstance(value, (list, tuple)):
        return ()
    return tuple(str(v) for v in value if isinstance(v, (str, int, float)) and not isinstance(v, bool))


def _rule(raw: Mapping[str, Any], source: str) -> JwtRule:
    headers = tuple(FromHeader(str(h.get("name") or ""), str(h.get("prefix") or ""))
                    for h in raw.get("fromHeaders") or () if isinstance(h, Mapping) and h.get("name"))
    claims = tuple(ClaimToHeader(str(c.get("header") or ""), str(c.get("claim") or ""))
                   for c in raw.get("outputClaimToHeaders") or ()
                   if isinstance(c, Mapping) and c.get("header") and c.get("claim"))
    return JwtRule(
        issuer=str(raw.get("issuer") or ""),
        audiences=_strings(raw.get("audiences")),
        jwks=str(raw.get("jwks") or ""),
        jwks_uri=str(raw.get("jwksUri") or raw.get("jwks_uri") or ""),
        from_headers=headers,
        from_params=_strings(raw.get("fromParams")),
        from_cookies=_strings(raw.get("fromCookies")),
        forward_original_token=raw.get("forwardOriginalToken") is True,
        output_payload_to_header=str(raw.get("outputPayloadToHeader") or ""),
        output_claim_to_headers=claims,
        space_delimited_claims=_strings(raw.get("spaceDelimitedClaims")),
        timeout=_seconds(raw.get("timeout")),
        source=source,
    )


def _seconds(value: Any) -> float:
    try:
        seconds = parse_duration(value) / 1e9 if isinstance(value, str) else 0.0
    except ValueError:
        seconds = 0.0
    return seconds if seconds > 0 else DEFAULT_FETCH_TIMEOUT


@dataclass(frozen=True)
class KeySetNeed:
    """Why a key set is fetched: the longest fetch timeout its rules ask for, and the
    rules (`namespace/name spec.jwtRules[i]`) that use it, for reports."""

    timeout: float = DEFAULT_FETCH_TIMEOUT
    used_by: tuple[str, ...] = ()


def key_sets_needed(policies: Iterable[ConfigObject]) -> dict[KeySetRef, KeySetNeed]:
    """Every key set some RequestAuthentication needs fetched. Every policy counts,
    whether a workload selects it or not: proxies come and go faster than key sets
    should be fetched."""
    out: dict[KeySetRef, KeySetNeed] = {}
    for p in policies:
        if p.kind != KIND:
            continue
        for rule in rules_of(p):
            ref = rule.key_set
            if ref is None or not (ref.jwks_uri or ref.issuer):
                continue
            had = out.get(ref, KeySetNeed(0.0))
            out[ref] = KeySetNeed(max(had.timeout, rule.timeout), had.used_by + (rule.source,))
    return out


# --- key set content ---------------------------------------------------------------

_REQUIRED = {"RSA": ("n", "e"), "EC": ("crv", "x", "y"), "oct": ("k",), "OKP": ("crv", "x")}


def jwks_problem(text: str) -> str | None:
    """Why `text` is not a JWKS Envoy can load (None: it is). Envoy rejects a listener
    whose jwt_authn carries an unusable local key set, so one is never sent: a key set
    that fails here is treated like one that could not be fetched."""
    try:
        doc = json.loads(text)
    except ValueError as e:
        return f"not JSON: {e}"
    if not isinstance(doc, dict):
        return "not a JSON object"
    if "keys" not in doc:
        # Envoy also accepts a single JWK or a PEM key; meshd asks for a key set.
        return "no `keys` array"
    keys = doc["keys"]
    if not isinstance(keys, list) or not keys:
        return "`keys` must be a non-empty array"
    for i, key in enumerate(keys):
        if not isinstance(key, dict):
            return f"keys[{i}] is not an object"
        kty = key.get("kty")
        if kty not in _REQUIRED:
            return f"keys[{i}].kty {kty!r} is not one of {', '.join(sorted(_REQUIRED))}"
        missing = [f for f in _REQUIRED[kty] if not isinstance(key.get(f), str) or not key.get(f)]
        if missing:
            return f"keys[{i}] ({kty}) lacks {', '.join(missing)}"
    return None
