"""RequestAuthentication as HTTP filters: Envoy's jwt_authn (upstream), as istiod builds it
(pilot/pkg/security/authn/policy_applier.go convertToEnvoyJwtConfig, read not copied),
and the metadata Istio's own istio_authn filter adds, done by a Lua script.

- One provider per JWT rule (`origins-<i>`, rules sorted by issuer): issuer, audiences,
  where the token is looked for (fromHeaders/fromParams/fromCookies; Envoy's defaults,
  `Authorization: Bearer` and `access_token`, when none is given), forwardOriginalToken,
  outputPayloadToHeader, outputClaimToHeaders, the verified payload in the dynamic
  metadata of envoy.filters.http.jwt_authn under `payload` (where Istio's RBAC rules match
  request.auth.* today), scope/permission claims split into lists.
- The key set is always inline (`local_jwks`): the rule's own `jwks`, else what meshd
  fetched (sources/jwks.py), as istiod does in its default JWKS fetch mode.
- The requirement: a token, if one is present, must be valid for some provider (401
  otherwise); a request without any token passes, and authorization decides
  (`requestPrincipals: ["*"]` is how a policy makes a token mandatory).
- `istio_authn` (Lua): Istio's proxy fills the `istio_authn` metadata namespace
  (request.auth.principal, .audiences, .presenter, .claims, .raw_claims) with a filter
  upstream Envoy lacks; RBAC rules written against those keys (older istiod versions,
  `istioctl x authz check` dumps) work with this script. RBAC as istiod generates it now
  reads the jwt_authn payload directly and does not need it: pass
  `istio_authn_metadata=False` to leave it out.
"""
from __future__ import annotations

from functools import lru_cache
from importlib import resources

from envoy.config.core.v3 import base_pb2
from envoy.config.route.v3 import route_components_pb2
from envoy.extensions.filters.http.jwt_authn.v3 import config_pb2 as jwt_pb2
from envoy.extensions.filters.http.lua.v3 import lua_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2
from google.protobuf import empty_pb2

from ..model.request_authentication import DEFAULT_SPACE_DELIMITED_CLAIMS, JwksView, JwtRule, jwks_problem
from .convert import typed

JWT_AUTHN = "envoy.filters.http.jwt_authn"
ISTIO_AUTHN = "istio_authn"  # Istio's filter name (and metadata namespace); here a Lua filter
PAYLOAD_KEY = "payload"  # istiod's EnvoyJwtFilterPayload

# Why a key set nobody can sign for: while meshd cannot fetch a rule's key set, Envoy
# must still refuse every token for that issuer (a 401), never accept it unverified, and
# the listener must stay loadable (an empty or missing key set makes Envoy reject the
# whole listener). istiod does the same (PublicOnlyJwks): an RSA public key whose
# private key was generated for this purpose and discarded at once, so no token can
# ever verify against it. A request without a token is unaffected (it passes to
# authorization, as always).
UNAVAILABLE_JWKS = (
    '{"keys":[{"kty":"RSA","e":"AQAB","n":"0Af7d-Weo-kuh-K1tKr3VK_yh0fpdN-d0ymBZKmUrnpiQdGEWWRiroX5vW09S4qHO3i6fpJ2-'
    '7Hq0HVFghc5hpypQzY0uOLSEpYeBytj6aLW_1gFHFGeX1OreqLoYqevk7p-BcRLuKL5dgop9uftFopMeUwqawM--8C_kDmlQAyT6acWNlX9PfY'
    '3653bN-tHKmiBNbLTFyyKtDjfmSnmrgUSwpklgtCBqVhLT5xcfiEKnN-i5YCl4SKg0734WpT_nPEG919MeHHjFjZbcqOZCOVtiNFG2emAQ2EGRJJ'
    'LSNYGhet1G1Hqq7ok3HRckYK_K-I-LVxhVZmL0RLvEb_FCw","kid":"meshd-unavailable","alg":"RS256","use":"sig"}]}'
)


def local_jwks(rule: JwtRule, jwks: JwksView) -> str:
    """The key set Envoy verifies `rule`'s tokens with: the rule's own, else the fetched
    one, else (not fetched, or not a usable JWKS) one that verifies nothing."""
    ref = rule.key_set
    text = rule.jwks if ref is None else jwks.get(ref)
    if text is None or jwks_problem(text) is not None:
        return UNAVAILABLE_JWKS
    return text


def provider(rule: JwtRule, jwks: JwksView, *, clear_route_cache: bool = False) -> jwt_pb2.JwtProvider:
    claims = sorted(set(DEFAULT_SPACE_DELIMITED_CLAIMS) | set(rule.space_delimited_claims))
    p = jwt_pb2.JwtProvider(
        issuer=rule.issuer,
        audiences=list(rule.audiences),
        forward=rule.forward_original_token,
        forward_payload_header=rule.output_payload_to_header,
        payload_in_metadata=PAYLOAD_KEY,
        normalize_payload_in_metadata=jwt_pb2.JwtProvider.NormalizePayload(space_delimited_claims=claims),
        from_headers=[jwt_pb2.JwtHeader(name=h.name, value_prefix=h.prefix) for h in rule.from_headers],
        from_params=list(rule.from_params),
        from_cookies=list(rule.from_cookies),
        claim_to_headers=[jwt_pb2.JwtClaimToHeader(header_name=c.header, claim_name=c.claim)
                          for c in rule.output_claim_to_headers],
        local_jwks=base_pb2.DataSource(inline_string=local_jwks(rule, jwks)),
        clear_route_cache=clear_route_cache,
    )
    return p


def _name(i: int) -> str:
    return f"origins-{i}"


def jwt_authentication(rules: tuple[JwtRule, ...], jwks: JwksView, *,
                       clear_route_cache: bool = False) -> jwt_pb2.JwtAuthentication | None:
    """The jwt_authn config for `rules` (None without rules)."""
    if not rules:
        return None
    cfg = jwt_pb2.JwtAuthentication(bypass_cors_preflight=True)
    allow_missing = jwt_pb2.JwtRequirement(allow_missing=empty_pb2.Empty())
    per_provider = []  # each: {provider OR missing}: a token present must be valid
    any_provider = []
    for i, rule in enumerate(rules):
        cfg.providers[_name(i)].CopyFrom(provider(rule, jwks, clear_route_cache=clear_route_cache))
        only = jwt_pb2.JwtRequirement(provider_name=_name(i))
        any_provider.append(only)
        per_provider.append(jwt_pb2.JwtRequirement(
            requires_any=jwt_pb2.JwtRequirementOrList(requirements=[only, allow_missing])))
    if len(per_provider) == 1:
        requires = per_provider[0]
    else:
        # Several providers: every token present must be valid for its provider (the
        # AND), or one provider's token alone suffices: providers reading the same
        # header would otherwise fail each other's token (istiod's outer OR).
        requires = jwt_pb2.JwtRequirement(requires_any=jwt_pb2.JwtRequirementOrList(requirements=[
            *any_provider,
            jwt_pb2.JwtRequirement(requires_all=jwt_pb2.JwtRequirementAndList(requirements=per_provider)),
        ]))
    cfg.rules.append(jwt_pb2.RequirementRule(match=route_components_pb2.RouteMatch(prefix="/"), requires=requires))
    return cfg


@lru_cache(maxsize=1)
def istio_authn_script() -> str:
    return resources.files(__package__).joinpath("istio_authn.lua").read_text()


def istio_authn_filter() -> hcm_pb2.HttpFilter:
    lua = lua_pb2.Lua(default_source_code=base_pb2.DataSource(inline_string=istio_authn_script()))
    return hcm_pb2.HttpFilter(name=ISTIO_AUTHN, typed_config=typed(lua))


def http_filters(rules: tuple[JwtRule, ...], jwks: JwksView, *, istio_authn_metadata: bool = True,
                 clear_route_cache: bool = False) -> list[hcm_pb2.HttpFilter]:
    """The HTTP filters enforcing `rules` (jwt_authn, then istio_authn), [] without rules.
    They go before the RBAC filters, which read what they verified."""
    cfg = jwt_authentication(rules, jwks, clear_route_cache=clear_route_cache)
    if cfg is None:
        return []
    out = [hcm_pb2.HttpFilter(name=JWT_AUTHN, typed_config=typed(cfg))]
    if istio_authn_metadata:
        out.append(istio_authn_filter())
    return out
