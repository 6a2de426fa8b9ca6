"""RequestAuthentication: which rules a workload gets (Istio's selection), what must be
fetched, and the jwt_authn configuration built from them (as istiod builds it)."""
from __future__ import annotations

import json
import re

import yaml
from envoy.extensions.filters.http.jwt_authn.v3 import config_pb2 as jwt_pb2

from controlplane.config.objects import ConfigObject, Origin
from controlplane.generators.authn import (
    ISTIO_AUTHN,
    JWT_AUTHN,
    UNAVAILABLE_JWKS,
    http_filters,
    jwt_authentication,
)
from controlplane.model.request_authentication import (
    EMPTY_JWKS,
    ClaimToHeader,
    FromHeader,
    JwksView,
    JwtRule,
    KeySetRef,
    jwt_rules_for,
    key_sets_needed,
    rules_of,
)
from tests.support.jwt import Issuer
from tests.support.paths import shared

ROOT = "istio-system"


def ra(namespace: str, name: str, spec: dict, created: str = "") -> ConfigObject:
    return ConfigObject("RequestAuthentication", "security.istio.io", "v1", namespace, name, {}, {}, spec,
                        Origin("file", f"{name}.yaml"), extra={"creationTimestamp": created} if created else {})


def rule(issuer: str, **more) -> dict:
    return {"issuer": issuer, "jwksUri": f"https://{issuer}/jwks", **more}


def issuers(rules) -> list[str]:
    return [r.issuer for r in rules]


def test_mesh_namespace_and_workload_policies_are_merged_and_sorted_by_issuer():
    policies = [
        ra(ROOT, "mesh", {"jwtRules": [rule("z.example")]}),
        ra("shop", "ns", {"jwtRules": [rule("b.example")]}),
        ra("shop", "cart-only", {"selector": {"matchLabels": {"app": "cart"}}, "jwtRules": [rule("a.example")]}),
        ra("other", "elsewhere", {"jwtRules": [rule("o.example")]}),
        ra(ROOT, "mesh-selected", {"selector": {"matchLabels": {"app": "cart"}}, "jwtRules": [rule("m.example")]}),
    ]
    assert issuers(jwt_rules_for(policies, "shop", {"app": "cart"}, ROOT)) == ["a.example", "b.example", "m.example", "z.example"]
    assert issuers(jwt_rules_for(policies, "shop", {"app": "web"}, ROOT)) == ["b.example", "z.example"]
    assert issuers(jwt_rules_for(policies, "other", {}, ROOT)) == ["o.example", "z.example"]
    # Another root namespace: istio-system's policy is an ordinary namespace's.
    assert issuers(jwt_rules_for(policies, "other", {}, "mesh-root")) == ["o.example"]
    assert jwt_rules_for(policies, "empty", {}, "mesh-root") == ()


def test_targetref_policies_attach_to_their_gateway_only():
    template = shared("corpus/istio/tests/integration/security/policy_attachment_only/testdata/requestauthn/gateway-jwt.yaml.tmpl")
    text = template.read_text().replace("{{ .To.ServiceName }}", "b").replace("{{ .JWTServer.JwksURI }}", "https://jwt/jwks")
    # Only its RequestAuthentications (the rest of the template has Go range blocks).
    docs = [yaml.safe_load(c) for c in text.split("\n---\n") if "kind: RequestAuthentication" in c]
    policies = [ra("ns1", d["metadata"]["name"], d["spec"]) for d in docs]
    gateway = {"gateway.networking.k8s.io/gateway-name": "b-gateway"}
    # Istio's default (ENABLE_SELECTOR_BASED_K8S_GATEWAY_POLICY=true) also takes the selector
    # policy; the test this file comes from runs with it off, where only the targetRef counts.
    assert issuers(jwt_rules_for(policies, "ns1", gateway, ROOT)) == [
        "test-issuer-1@istio.io", "test-issuer-2@istio.io", "test-issuer-3@istio.io"]
    assert jwt_rules_for(policies, "ns1", {"gateway.networking.k8s.io/gateway-name": "other"}, ROOT) == ()
    assert jwt_rules_for(policies, "ns2", gateway, ROOT) == ()  # a targetRef never crosses namespaces
    # A sidecar never takes a targetRef policy, even with matching labels.
    assert jwt_rules_for(policies[:1], "ns1", {"app": "b"}, ROOT) == ()


def test_oldest_policy_first_within_a_namespace():
    policies = [ra("shop", "young", {"jwtRules": [rule("same.example", audiences=["young"])]}, "2024-02-01T00:00:00Z"),
                ra("shop", "old", {"jwtRules": [rule("same.example", audiences=["old"])]}, "2024-01-01T00:00:00Z")]
    assert [r.audiences for r in jwt_rules_for(policies, "shop", {}, ROOT)] == [("old",), ("young",)]


def test_every_field_of_a_jwt_rule_is_read():
    template = shared("corpus/istio/tests/integration/security/testdata/requestauthn/headers-params.yaml.tmpl")
    doc = next(d for d in yaml.safe_load_all(template.read_text().replace("{{ .To.ServiceName }}", "b")
                                             .replace("{{ .JWTServer.JwksURI }}", "https://jwt/jwks")) if d["kind"] == "RequestAuthentication")
    (r,) = rules_of(ra("ns1", "b", doc["spec"]))
    assert r.from_headers == (FromHeader("x-jwt-token", "Value "), FromHeader("auth-token", "Token "))
    assert r.from_params == ("token", "secondary_token")
    assert r.key_set == KeySetRef("https://jwt/jwks") and r.source == "ns1/b spec.jwtRules[0]"
    (full,) = rules_of(ra("ns", "full", {"jwtRules": [{
        "issuer": "iss", "audiences": ["a", "b"], "jwks": '{"keys":[]}', "fromCookies": ["session"],
        "forwardOriginalToken": True, "outputPayloadToHeader": "x-payload", "timeout": "7s",
        "outputClaimToHeaders": [{"header": "x-sub", "claim": "sub"}], "spaceDelimitedClaims": ["roles"]}]}))
    assert full == JwtRule("iss", ("a", "b"), '{"keys":[]}', "", (), (), ("session",), True, "x-payload",
                           (ClaimToHeader("x-sub", "sub"),), ("roles",), 7.0, "ns/full spec.jwtRules[0]")
    assert full.key_set is None  # inline: nothing to fetch


def test_key_sets_needed_by_every_policy_with_the_rules_that_use_them():
    policies = [
        ra("a", "p", {"jwtRules": [rule("x.example", timeout="10s"), {"issuer": "https://discover.example"}]}),
        ra("b", "q", {"jwtRules": [rule("x.example"), {"issuer": "inline", "jwks": "{}"}]}),
    ]
    needed = key_sets_needed(policies)
    assert set(needed) == {KeySetRef("https://x.example/jwks"), KeySetRef("", "https://discover.example")}
    x = needed[KeySetRef("https://x.example/jwks")]
    assert x.timeout == 10.0 and x.used_by == ("a/p spec.jwtRules[0]", "b/q spec.jwtRules[0]")
    assert str(KeySetRef("", "https://discover.example/")) == "https://discover.example/.well-known/openid-configuration"


# --- the filter ------------------------------------------------------------------------

def config(filters) -> jwt_pb2.JwtAuthentication:
    out = jwt_pb2.JwtAuthentication()
    assert filters[0].name == JWT_AUTHN and filters[0].typed_config.Unpack(out)
    return out


def test_no_rules_no_filters():
    assert http_filters((), EMPTY_JWKS) == []


def test_one_provider_token_optional_but_valid_if_present():
    issuer = Issuer("https://issuer.example")
    r = JwtRule("https://issuer.example", audiences=("api",), jwks_uri="https://issuer.example/jwks",
                from_headers=(FromHeader("x-token", "Bearer "),), from_params=("tok",), from_cookies=("c",),
                forward_original_token=True, output_payload_to_header="x-payload",
                output_claim_to_headers=(ClaimToHeader("x-group", "group"),), space_delimited_claims=("roles",))
    filters = http_filters((r,), JwksView({KeySetRef("https://issuer.example/jwks"): issuer.jwks()}))
    assert [f.name for f in filters] == [JWT_AUTHN, ISTIO_AUTHN]
    cfg = config(filters)
    assert cfg.bypass_cors_preflight
    p = cfg.providers["origins-0"]
    assert (p.issuer, list(p.audiences), p.forward, p.forward_payload_header, p.payload_in_metadata) == (
        "https://issuer.example", ["api"], True, "x-payload", "payload")
    assert [(h.name, h.value_prefix) for h in p.from_headers] == [("x-token", "Bearer ")]
    assert (list(p.from_params), list(p.from_cookies)) == (["tok"], ["c"])
    assert [(c.header_name, c.claim_name) for c in p.claim_to_headers] == [("x-group", "group")]
    assert list(p.normalize_payload_in_metadata.space_delimited_claims) == ["permission", "roles", "scope"]
    assert p.local_jwks.inline_string == issuer.jwks()
    (req,) = cfg.rules
    assert req.match.prefix == "/"
    alternatives = req.requires.requires_any.requirements
    assert [a.WhichOneof("requires_type") for a in alternatives] == ["provider_name", "allow_missing"]


def test_several_providers_any_valid_token_or_all_present_tokens_valid():
    rules = (JwtRule("a", jwks=Issuer("a").jwks()), JwtRule("b", jwks=Issuer("b").jwks()))
    cfg = jwt_authentication(rules, EMPTY_JWKS)
    assert sorted(cfg.providers) == ["origins-0", "origins-1"]
    outer = cfg.rules[0].requires.requires_any.requirements
    assert [o.provider_name for o in outer[:2]] == ["origins-0", "origins-1"]
    inner = outer[2].requires_all.requirements
    assert [[x.WhichOneof("requires_type") for x in i.requires_any.requirements] for i in inner] == [
        ["provider_name", "allow_missing"]] * 2


def test_unfetched_or_unusable_key_sets_are_replaced_by_one_that_verifies_nothing():
    fetched_garbage = KeySetRef("https://garbage/jwks")
    rules = (JwtRule("a", jwks_uri="https://down/jwks"), JwtRule("b", jwks='{"keys": "nope"}'),
             JwtRule("c", jwks_uri=fetched_garbage.jwks_uri))
    cfg = jwt_authentication(rules, JwksView({fetched_garbage: "<html/>"}))
    for name in ("origins-0", "origins-1", "origins-2"):
        assert cfg.providers[name].local_jwks.inline_string == UNAVAILABLE_JWKS
    key = json.loads(UNAVAILABLE_JWKS)["keys"][0]
    assert key["kty"] == "RSA" and len(key["n"]) > 300  # a 2048-bit public key, no private part
    assert not set(key) & {"d", "p", "q", "dp", "dq", "qi"}


def test_the_lua_filter_is_optional_and_sets_istios_keys():
    r = (JwtRule("a", jwks=Issuer("a").jwks()),)
    assert [f.name for f in http_filters(r, EMPTY_JWKS, istio_authn_metadata=False)] == [JWT_AUTHN]
    from controlplane.generators.authn import istio_authn_script

    keys = set(re.findall(r'"(request\.auth\.[a-z_]+)"', istio_authn_script()))
    assert keys == {"request.auth.principal", "request.auth.audiences", "request.auth.presenter",
                    "request.auth.claims", "request.auth.raw_claims"}


def test_same_input_same_bytes():
    rules = (JwtRule("b", jwks_uri="https://b/jwks"), JwtRule("a", jwks_uri="https://a/jwks"))
    view = JwksView({KeySetRef("https://a/jwks"): Issuer("a").jwks()})
    one = [f.SerializeToString(deterministic=True) for f in http_filters(rules, view)]
    two = [f.SerializeToString(deterministic=True) for f in http_filters(rules, JwksView(dict(view.key_sets)))]
    assert one == two
