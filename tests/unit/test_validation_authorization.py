"""AuthorizationPolicy and RequestAuthentication validation (served kinds, security.istio.io
v1 and v1beta1): the CRD schema, then Istio's semantic rules, then meshd's checks for
values that could never match (docs/policy-validation.md).

Evidence: Istio's CRD validation fixtures (every valid one accepted, every invalid one
rejected on the field or with the text Istio names), every AuthorizationPolicy and
RequestAuthentication of Istio's authz builder goldens and analyzer inputs accepted, and
hand-written bad input, each error naming the field and the reason.
"""
from __future__ import annotations

import json
import re

import pytest
import yaml

from controlplane.config import kinds
from controlplane.config.objects import Origin, Rejection
from controlplane.config.parse import parse_document
from controlplane.config.store import ConfigStore
from controlplane.config.validation import FieldError, validate
from tests.support.paths import shared

AP = kinds.AUTHORIZATION_POLICY
RA = kinds.REQUEST_AUTHENTICATION


def crd_fixture(name: str):
    path = shared("corpus", "istio", "pkg", "config", "validation", "testdata", "crds", name)
    return [d for d in yaml.safe_load_all(path.read_text()) if isinstance(d, dict)]


def errors_of(text: str) -> list[FieldError]:
    doc = yaml.safe_load(text)
    return validate(doc, kinds.lookup(doc["apiVersion"], doc["kind"]))


def assert_error(errors: list[FieldError], field: str, reason: str) -> None:
    assert [e for e in errors if e.field == field and reason in e.reason], \
        f"expected {field}: ...{reason}... in {[str(e) for e in errors]}"


# --- Istio's own examples --------------------------------------------------------------------

@pytest.mark.parametrize("prefix, kind", [("authz", AP), ("reqauth", RA)])
def test_istio_valid_fixtures_are_accepted(prefix, kind):
    docs = crd_fixture(f"{prefix}-valid.yaml")
    assert docs
    for doc in docs:
        assert validate(doc, kind) == [], doc["metadata"]["name"]


@pytest.mark.parametrize("prefix, kind", [("authz", AP), ("reqauth", RA)])
def test_istio_invalid_fixtures_are_rejected_on_the_field_istio_names(prefix, kind):
    docs = crd_fixture(f"{prefix}-invalid.yaml")
    assert len(docs) >= 2
    for doc in docs:
        expected = doc.pop("_err")
        errs = validate(doc, kind)
        assert errs, f"{doc['metadata']['name']} should be rejected ({expected})"
        path = re.match(r"^(spec[\w.\[\]]*)(:| in body)", expected)
        if path:
            assert any(e.field == path.group(1) for e in errs), (expected, [str(e) for e in errs])
        else:  # a message, or a field named relative to its rule ("audiences[0] in body ...")
            fragment = expected.split(" in body ")[0]
            assert any(fragment in str(e) for e in errs), (expected, [str(e) for e in errs])


def istio_policies():
    roots = [shared("corpus", "istio", "pilot", "pkg", "security", "authz", "builder", "testdata"),
             shared("corpus", "istio", "pkg", "config", "analysis", "analyzers", "testdata")]
    for root in roots:
        for path in sorted(root.rglob("*.yaml")):
            if path.name.endswith(("-out.yaml", "-out1.yaml", "-out2.yaml")):
                continue
            for doc in yaml.safe_load_all(path.read_text()):
                if isinstance(doc, dict) and doc.get("kind") in (AP.kind, RA.kind) \
                        and str(doc.get("apiVersion", "")).startswith("security.istio.io/"):
                    yield path.name, doc


def test_every_policy_of_istios_authz_goldens_and_analyzer_inputs_is_accepted():
    policies = list(istio_policies())
    assert len(policies) >= 50  # 42 in the builder goldens, the rest analyzer inputs
    bad = [(name, doc["metadata"]["name"], [str(e) for e in validate(doc, kinds.lookup(doc["apiVersion"], doc["kind"]))])
           for name, doc in policies]
    assert [b for b in bad if b[2]] == []


@pytest.mark.parametrize("version", ["v1", "v1beta1"])
def test_both_served_versions(version):
    for kind, spec in (("AuthorizationPolicy", "{action: DENY, rules: [{to: [{operation: {paths: [/admin]}}]}]}"),
                       ("RequestAuthentication", "{jwtRules: [{issuer: a, jwksUri: 'https://a.example/jwks'}]}")):
        text = f"apiVersion: security.istio.io/{version}\nkind: {kind}\nmetadata: {{name: x, namespace: ns}}\nspec: {spec}\n"
        assert errors_of(text) == []


# --- AuthorizationPolicy: bad input ----------------------------------------------------------

AP_HEAD = """
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: p, namespace: shop}
"""


def ap(spec: str) -> list[FieldError]:
    return errors_of(AP_HEAD + "spec:\n" + spec)


def test_unknown_field_is_named():
    errs = ap("  rules: [{from: [{source: {principal: [a]}}]}]\n")
    assert_error(errs, "spec.rules[0].from[0].source.principal", 'unknown field "principal"')


@pytest.mark.parametrize("value, reason", [
    ("spiffe://cluster.local/ns/shop/sa/web", "without the spiffe:// prefix"),
    ("cluster.local/ns/*/sa/web", "wildcard * is supported only"),
    ("*cluster.local/ns/shop/*", "wildcard * is supported only"),
    ("cluster.local/ns/shop/sa/web client", "whitespace"),
    ("", "empty value not allowed"),
])
def test_malformed_principal(value, reason):
    errs = ap(f"  rules: [{{from: [{{source: {{principals: [cluster.local/ns/shop/sa/ok, {json.dumps(value)}]}}}}]}}]\n")
    assert_error(errs, "spec.rules[0].from[0].source.principals[1]", reason)


def test_wildcards_istio_supports_are_accepted():
    assert ap("  rules: [{from: [{source: {principals: ['*', 'cluster.local/*', '*/sa/web'], namespaces: ['team-*'],"
              " requestPrincipals: ['https://issuer.example/*']}}],"
              " to: [{operation: {hosts: ['*.example.com', 'api.*'], paths: ['/api/*', '*/info', '/v1/{*}/x',"
              " '/{**}/y']}}]}]\n") == []


@pytest.mark.parametrize("field, value, reason", [
    ("ipBlocks", "10.0.0.0/33", "bad CIDR range (10.0.0.0/33)"),
    ("ipBlocks", "10.0.0.300", "bad IP address (10.0.0.300)"),
    ("notIpBlocks", "10.0.0.0/8/8", "bad CIDR range"),
    ("remoteIpBlocks", "example.com", "bad IP address (example.com)"),
    ("notRemoteIpBlocks", "fe80::/129", "bad CIDR range"),
])
def test_malformed_ip_block(field, value, reason):
    errs = ap(f"  rules: [{{from: [{{source: {{{field}: [192.168.0.0/16, {json.dumps(value)}]}}}}]}}]\n")
    assert_error(errs, f"spec.rules[0].from[0].source.{field}[1]", reason)


def test_ip_blocks_istio_accepts():
    assert ap("  rules: [{from: [{source: {ipBlocks: [1.2.3.4, 10.1.2.3/16, '2001:db8::/32', '::1']}}]}]\n") == []


@pytest.mark.parametrize("spec, field, reason", [
    ("  rules: [{to: [{operation: {ports: ['http']}}]}]\n", "spec.rules[0].to[0].operation.ports[0]", "bad port (http)"),
    ("  rules: [{to: [{operation: {notPorts: ['70000']}}]}]\n", "spec.rules[0].to[0].operation.notPorts[0]", "bad port"),
    ("  rules: [{to: [{operation: {paths: ['/a/{*}/{name}']}}]}]\n", "spec.rules[0].to[0].operation.paths[0]",
     "unsupported path template"),
    ("  rules: [{to: [{operation: {methods: ['']}}]}]\n", "spec.rules[0].to[0].operation.methods[0]",
     "empty value not allowed"),
    ("  rules: [{to: [{operation: {}}]}]\n", "spec.rules[0].to[0].operation", "must not be empty"),
    ("  rules: [{to: [{}]}]\n", "spec.rules[0].to[0].operation", "must not be nil"),
    ("  rules: [{to: []}]\n", "spec.rules[0].to", "must not be empty"),
    ("  rules: [{from: []}]\n", "spec.rules[0].from", "must not be empty"),
    ("  rules: [{from: [{source: {}}]}]\n", "spec.rules[0].from[0].source", "must not be empty"),
    ("  rules: [{from: [{source: {serviceAccounts: ['a/b/c']}}]}]\n", "spec.rules[0].from[0].source.serviceAccounts[0]",
     "namespace/name"),
])
def test_rule_values(spec, field, reason):
    assert_error(ap(spec), field, reason)


@pytest.mark.parametrize("cond, field, reason", [
    ("{key: 'request.header[x]', values: [a]}", "spec.rules[0].when[0].key", "unknown attribute: request.header[x]"),
    ("{key: request.headers, values: [a]}", "spec.rules[0].when[0].key", "should have format a[b]"),
    ("{key: 'request.auth.claims[]', values: [a]}", "spec.rules[0].when[0].key", "should have format a[b]"),
    ("{key: source.ip, values: [10.0.0.0/40]}", "spec.rules[0].when[0].values[0]", "bad CIDR range"),
    ("{key: remote.ip, notValues: [x]}", "spec.rules[0].when[0].notValues[0]", "bad IP address"),
    ("{key: destination.port, values: ['99999']}", "spec.rules[0].when[0].values[0]", "bad port"),
    ("{key: destination.namespace, values: [a]}", "spec.rules[0].when[0].key", "replaced by the metadata.namespace"),
    ("{key: source.principal, values: ['spiffe://cluster.local/ns/a/sa/b']}", "spec.rules[0].when[0].values[0]",
     "spiffe://"),
    ("{key: 'request.auth.claims[group]'}", "spec.rules[0].when[0]", "at least one of `values` or `notValues`"),
])
def test_when_conditions(cond, field, reason):
    assert_error(ap(f"  rules: [{{when: [{cond}]}}]\n"), field, reason)


def test_every_documented_condition_key_is_accepted():
    keys = ["request.headers[x-user]", "source.ip", "remote.ip", "source.namespace", "source.principal",
            "request.auth.principal", "request.auth.audiences", "request.auth.presenter", "request.auth.claims[group]",
            "request.auth.claims[a][b]", "destination.ip", "connection.sni"]
    conds = ", ".join(f"{{key: '{k}', values: ['{'10.0.0.1' if k.endswith('.ip') else 'v'}']}}" for k in keys)
    assert ap(f"  rules: [{{when: [{conds}, {{key: destination.port, values: ['8080']}}]}}]\n") == []


def test_action_rules():
    assert_error(ap("  action: CUSTOM\n  provider: {name: ext}\n"), "spec.rules", "CUSTOM action without `rules`")
    assert_error(ap("  action: CUSTOM\n  rules: [{}]\n"), "spec.provider.name", "must not be empty")
    assert_error(ap("  action: DENY\n  provider: {name: ext}\n  rules: [{}]\n"), "spec.provider",
                 "must not be with non CUSTOM action, found DENY")
    assert_error(ap("  action: DENY\n"), "spec.rules", "DENY action without `rules`")
    assert_error(ap("  action: CUSTOM\n  provider: {name: ext}\n  rules: [{from: [{source: {principals: [a]}}]}]\n"),
                 "spec.rules[0].from[0].source.principals", "not supported with CUSTOM action")
    assert_error(ap("  action: CUSTOM\n  provider: {name: ext}\n  rules: [{when: [{key: 'request.auth.claims[a]', "
                    "values: [b]}]}]\n"), "spec.rules[0].when[0].key", "not supported with CUSTOM action")
    # Istio's "deny all" (an empty spec), allow-all, AUDIT and a proper CUSTOM policy are fine.
    assert ap("  {}\n") == []
    assert ap("  rules: [{}]\n") == []
    assert ap("  action: AUDIT\n  rules: [{to: [{operation: {paths: ['/x']}}]}]\n") == []
    assert ap("  action: CUSTOM\n  provider: {name: ext}\n  rules: [{to: [{operation: {paths: ['/x']}}]}]\n") == []


def test_targets_and_dry_run():
    assert_error(ap("  targetRef: {kind: Deployment, name: web}\n"), "spec.targetRef", "core/Deployment")
    assert_error(ap("  targetRefs: [{group: gateway.networking.k8s.io, kind: HTTPRoute, name: r}]\n"),
                 "spec.targetRefs[0]", "gateway.networking.k8s.io/HTTPRoute")
    assert ap("  targetRefs: [{group: gateway.networking.k8s.io, kind: Gateway, name: gw}, {kind: Service, name: s}]\n"
              "  rules: [{}]\n") == []
    doc = yaml.safe_load(AP_HEAD + "spec: {action: AUDIT, rules: [{}]}\n")
    doc["metadata"]["annotations"] = {"istio.io/dry-run": "true"}
    assert_error(validate(doc, AP), "metadata.annotations[istio.io/dry-run]", "only supports action ALLOW/DENY")
    doc["spec"]["action"] = "DENY"
    doc["metadata"]["annotations"] = {"istio.io/dry-run": "maybe"}
    assert_error(validate(doc, AP), "metadata.annotations[istio.io/dry-run]", "must be a boolean")


# --- RequestAuthentication: bad input --------------------------------------------------------

RA_HEAD = """
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {name: jwt, namespace: shop}
"""
RSA_JWKS = json.dumps({"keys": [{"kty": "RSA", "kid": "k1", "e": "AQAB", "n": "xAE7eB6qugXyCAG3yhh7pkDkT65pHymX-P7K"}]})


def ra(rule: dict) -> list[FieldError]:
    doc = yaml.safe_load(RA_HEAD)
    doc["spec"] = {"jwtRules": [rule]}
    return validate(doc, RA)


def test_a_jwt_rule_without_jwks_or_jwks_uri_needs_an_issuer_its_keys_can_be_discovered_at():
    # As istiod: the key set comes from https://issuer.example/.well-known/openid-configuration.
    assert ra({"issuer": "https://issuer.example"}) == []
    errs = ra({"issuer": "test-issuer-1@istio.io"})
    assert_error(errs, "spec.jwtRules[0].issuer", "the issuer must be an http(s) URL")
    assert ra({"issuer": "test-issuer-1@istio.io", "jwks": RSA_JWKS}) == []
    assert ra({"jwksUri": "http://jwks.example:8000/jwks"}) == []  # no issuer: Istio accepts it


@pytest.mark.parametrize("uri, reason", [
    ("https:///jwks.json", "no host"),
    ("https://issuer.example:99999/jwks", "not a valid URL"),
    ("https://issuer.example:0/jwks", "port must be in 1..65535"),
    ("https://issuer.example/jw ks", "whitespace"),
])
def test_bad_jwks_uri(uri, reason):
    assert_error(ra({"issuer": "a", "jwksUri": uri}), "spec.jwtRules[0].jwksUri", reason)


def test_jwks_uri_scheme_is_checked_by_the_schema():
    assert_error(ra({"issuer": "a", "jwksUri": "ftp://issuer.example/jwks"}), "spec.jwtRules[0].jwksUri",
                 "url must have scheme http:// or https://")
    assert_error(ra({"issuer": "a", "jwks": RSA_JWKS, "jwksUri": "https://a/j"}), "spec.jwtRules[0]",
                 "only one of jwks or jwksUri can be set")


@pytest.mark.parametrize("jwks, reason", [
    ("{not json", "not JSON"),
    ("[1, 2]", "must be a JSON object"),
    ('{"kty": "RSA", "e": "AQAB", "n": "xAE7"}', 'a JSON object with a "keys" array'),
    ('{"keys": []}', "no key to verify tokens with"),
    ('{"keys": [{"e": "AQAB"}]}', '"kty" is required'),
    ('{"keys": [{"kty": "RSA", "e": "AQAB"}]}', 'RSA key needs "n"'),
    ('{"keys": [{"kty": "RSA", "e": "AQAB", "n": "not base64!"}]}', "not base64url-encoded"),
    ('{"keys": [{"kty": "XYZ"}]}', "unsupported key type"),
])
def test_invalid_inline_jwks(jwks, reason):
    assert_error(ra({"issuer": "a", "jwks": jwks}), "spec.jwtRules[0].jwks", reason)


def test_token_locations_and_output_headers():
    base = {"issuer": "a", "jwksUri": "https://a.example/jwks"}
    assert_error(ra({**base, "fromHeaders": [{"name": "x token"}]}), "spec.jwtRules[0].fromHeaders[0].name",
                 "not a valid header name")
    assert_error(ra({**base, "outputPayloadToHeader": "x payload"}), "spec.jwtRules[0].outputPayloadToHeader",
                 "not a valid header name")
    assert_error(ra({**base, "outputClaimToHeaders": [{"claim": "sub", "header": "x_sub"}]}),
                 "spec.jwtRules[0].outputClaimToHeaders[0].header", "not a valid header name")
    assert ra({**base, "fromHeaders": [{"name": "x-jwt", "prefix": "Bearer "}], "fromParams": ["token"],
               "fromCookies": ["session"], "outputPayloadToHeader": "x-jwt-payload",
               "outputClaimToHeaders": [{"claim": "sub", "header": "x-sub"}], "forwardOriginalToken": True}) == []


def test_a_target_kind_istio_does_not_accept():
    doc = yaml.safe_load(RA_HEAD)
    doc["spec"] = {"targetRef": {"group": "apps", "kind": "Deployment", "name": "web"}}
    assert_error(validate(doc, RA), "spec.targetRef", "apps/Deployment")


# --- through the parse gate and the store ------------------------------------------------------

def test_a_bad_policy_is_rejected_naming_file_object_and_field():
    doc = yaml.safe_load(AP_HEAD + "spec: {rules: [{from: [{source: {ipBlocks: [10.0.0.0/99]}}]}]}\n")
    rej = parse_document(doc, Origin("file", "/cfg/authz.yaml"))
    assert isinstance(rej, Rejection)
    assert rej.message().startswith("/cfg/authz.yaml")
    assert ": AuthorizationPolicy shop/p: spec.rules[0].from[0].source.ipBlocks[0]: Invalid value: \"10.0.0.0/99\": " \
           "bad CIDR range" in rej.message()


def test_accepted_policies_reach_the_snapshot_and_a_bad_edit_keeps_the_last_good_one():
    store = ConfigStore()
    good = AP_HEAD + "spec: {action: DENY, rules: [{to: [{operation: {paths: ['/admin']}}]}]}\n"
    jwt = RA_HEAD + "spec: {jwtRules: [{issuer: a, jwksUri: 'https://a.example/jwks'}]}\n"
    store.replace_location("authz.yaml", [parse_document(yaml.safe_load(t), Origin("file", "authz.yaml", i))
                                          for i, t in enumerate((good, jwt))])
    snap = store.snapshot()
    assert [o.name for o in snap.of_kind("AuthorizationPolicy")] == ["p"]
    assert snap.of_kind("AuthorizationPolicy")[0].spec["action"] == "DENY"
    assert [o.name for o in snap.of_kind("RequestAuthentication")] == ["jwt"]
    bad = good.replace("'/admin'", "''")
    store.replace_location("authz.yaml", [parse_document(yaml.safe_load(bad), Origin("file", "authz.yaml"))])
    assert store.snapshot().of_kind("AuthorizationPolicy")[0].spec["rules"][0]["to"][0]["operation"]["paths"] == ["/admin"]
    assert [r.field for r in store.rejections()] == ["spec.rules[0].to[0].operation.paths[0]"]
