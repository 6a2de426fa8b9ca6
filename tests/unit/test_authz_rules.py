"""What the authorization builder makes of policies beyond Istio's goldens: the filter
order, Istio's HTTP-versus-TCP rules, fail-closed handling of what cannot be built, and
the problems reported for the lead's configz/analyze."""
from __future__ import annotations

import textwrap

import pytest
from envoy.config.rbac.v3 import rbac_pb2
from envoy.extensions.filters.http.ext_authz.v3 import ext_authz_pb2 as http_ext_authz_pb2
from envoy.extensions.filters.http.rbac.v3 import rbac_pb2 as http_rbac_pb2
from envoy.extensions.filters.network.rbac.v3 import rbac_pb2 as network_rbac_pb2
from google.protobuf import json_format

from controlplane.generators.authz import builder
from controlplane.model.authorization import authz_policy, policies_for
from controlplane.model.meshconfig import parse_mesh_config
from tests.support.configs import objects_from_yaml, unvalidated_objects

NS = "shop"
LABELS = {"app": "web"}
MESH = parse_mesh_config({"extensionProviders": [
    {"name": "grpc-authz", "envoyExtAuthzGrpc": {"service": "authz.shop.svc.cluster.local", "port": 9000}},
    {"name": "http-authz", "envoyExtAuthzHttp": {"service": "shop/authz.shop.svc.cluster.local", "port": 8000}},
    {"name": "zipkin", "zipkin": {"service": "zipkin.istio-system.svc.cluster.local", "port": 9411}},
]})


def wp_of(*specs: str, unvalidated: bool = False):
    docs = [textwrap.dedent(f"""\
        apiVersion: security.istio.io/v1
        kind: AuthorizationPolicy
        metadata: {{name: p{i}, namespace: {NS}}}
        spec: {spec}
        """) for i, spec in enumerate(specs)]
    parse = unvalidated_objects if unvalidated else objects_from_yaml
    ps = [authz_policy(o) for o in parse("---\n".join(docs))]
    return policies_for(ps, NS, LABELS, "istio-system")


def rbac_of(f) -> http_rbac_pb2.RBAC | network_rbac_pb2.RBAC:
    msg = http_rbac_pb2.RBAC() if f.name == builder.HTTP_RBAC else network_rbac_pb2.RBAC()
    assert f.typed_config.Unpack(msg), f.name
    return msg


def as_dict(msg) -> dict:
    return json_format.MessageToDict(msg)


MATCH_ALL = {"permissions": [{"any": True}], "principals": [{"any": True}]}
MATCH_NEVER = {"permissions": [{"notRule": {"any": True}}], "principals": [{"notId": {"any": True}}]}


def test_filters_run_custom_then_audit_then_deny_then_allow():
    wp = wp_of("{action: ALLOW, rules: [{}]}", "{action: DENY, rules: [{to: [{operation: {paths: [/admin]}}]}]}",
               "{action: AUDIT, rules: [{}]}", "{action: CUSTOM, provider: {name: grpc-authz}, rules: [{}]}")
    http = builder.http_filters(wp, MESH)
    assert [f.name for f in http] == [builder.HTTP_RBAC, builder.HTTP_EXT_AUTHZ] + [builder.HTTP_RBAC] * 3
    actions = [rbac_of(f).rules.action for f in http[2:]]
    assert actions == [rbac_pb2.RBAC.LOG, rbac_pb2.RBAC.DENY, rbac_pb2.RBAC.ALLOW]
    assert rbac_of(http[0]).shadow_rules.action == rbac_pb2.RBAC.DENY and not rbac_of(http[0]).HasField("rules")
    # The custom/non-custom split the lead needs to put the JWT filters in between.
    assert builder.custom_http_filters(wp, MESH) + builder.rbac_http_filters(wp, MESH) == http
    net = builder.network_filters(wp, MESH)
    assert [f.name for f in net] == [builder.NETWORK_RBAC, builder.NETWORK_EXT_AUTHZ] + [builder.NETWORK_RBAC] * 3


def test_no_policy_no_filter():
    wp = wp_of()
    assert builder.http_filters(wp, MESH) == [] and builder.network_filters(wp, MESH) == []


def test_an_empty_spec_allows_nothing():
    """`spec: {}` is an ALLOW policy without rules: it matches nothing, so every request is
    refused (Istio's "deny all")."""
    (f,) = builder.http_filters(wp_of("{}"), MESH)
    rbac = rbac_of(f)
    assert rbac.rules.action == rbac_pb2.RBAC.ALLOW
    assert {k: as_dict(v) for k, v in rbac.rules.policies.items()} == {"ns[shop]-policy[p0]-rule[0]": MATCH_NEVER}


def test_http_only_fields_on_tcp_make_allow_match_nothing_and_deny_match_more():
    allow = wp_of("{rules: [{to: [{operation: {methods: [GET]}}]}, "
                  "{from: [{source: {namespaces: [ns-1]}}], to: [{operation: {ports: ['80'], paths: [/a]}}]}]}")
    (f,) = builder.network_filters(allow, MESH)
    rbac = rbac_of(f)
    assert rbac.HasField("rules") and len(rbac.rules.policies) == 0  # nothing allowed on TCP
    (h,) = builder.http_filters(allow, MESH)
    assert len(rbac_of(h).rules.policies) == 2  # both rules on HTTP

    deny = wp_of("{action: DENY, rules: [{from: [{source: {requestPrincipals: ['*']}}], "
                 "to: [{operation: {ports: ['8080'], methods: [POST]}}]}]}")
    (f,) = builder.network_filters(deny, MESH)
    (policy,) = rbac_of(f).rules.policies.values()
    # Only the port is left: every connection to 8080 is refused, whoever sends it.
    assert as_dict(policy) == {"permissions": [{"andRules": {"rules": [{"orRules": {"rules": [
        {"destinationPort": 8080}]}}]}}], "principals": [{"andIds": {"ids": [{"any": True}]}}]}


@pytest.mark.parametrize("action,expect", [("ALLOW", None), ("DENY", "wider"), ("AUDIT", "wider")])
def test_a_malformed_value_drops_the_allow_rule_but_widens_deny(action, expect):
    wp = wp_of(f"{{action: {action}, rules: [{{from: [{{source: {{ipBlocks: [10.0.0.1, 10.0.0.300]}}}}]}}]}}",
               unvalidated=True)
    (f,) = builder.http_filters(wp, MESH)
    policies = rbac_of(f).rules.policies
    if expect is None:
        assert len(policies) == 0
    else:
        (p,) = policies.values()
        assert as_dict(p)["principals"] == [{"andIds": {"ids": [{"orIds": {"ids": [
            {"directRemoteIp": {"addressPrefix": "10.0.0.1", "prefixLen": 32}}]}}]}}]
    (problem,) = builder.problems(wp, MESH)
    assert problem.field == "spec.rules[0]" and "10.0.0.300" in problem.reason
    assert ("rule dropped" if expect is None else "value ignored") in problem.reason


def test_an_unknown_when_key_never_opens_a_deny():
    deny = wp_of("{action: DENY, rules: [{when: [{key: request.regexp.path, values: [x]}]}]}", unvalidated=True)
    (f,) = builder.http_filters(deny, MESH)
    assert [as_dict(p) for p in rbac_of(f).rules.policies.values()] == [
        {"permissions": [{"andRules": {"rules": [{"any": True}]}}], "principals": [{"andIds": {"ids": [{"any": True}]}}]}]
    allow = wp_of("{rules: [{when: [{key: request.regexp.path, values: [x]}]}]}", unvalidated=True)
    assert len(rbac_of(builder.http_filters(allow, MESH)[0]).rules.policies) == 0
    assert "unknown attribute" in builder.problems(allow, MESH)[0].reason


def test_a_policy_that_cannot_be_read_fails_closed():
    deny = wp_of("{action: DENY, rules: [{to: [{operation: {path: [/x]}}]}]}", unvalidated=True)
    (f,) = builder.http_filters(deny, MESH)
    assert {k: as_dict(v) for k, v in rbac_of(f).rules.policies.items()} == {"ns[shop]-policy[p0]-rule[0]": MATCH_ALL}
    allow = wp_of("{rules: [{to: [{operation: {path: [/x]}}]}]}", unvalidated=True)
    (f,) = builder.http_filters(allow, MESH)
    assert {k: as_dict(v) for k, v in rbac_of(f).rules.policies.items()} == {"ns[shop]-policy[p0]-rule[0]": MATCH_NEVER}
    unknown_action = wp_of("{action: BLOCK, rules: [{}]}", unvalidated=True)
    (f,) = builder.http_filters(unknown_action, MESH)
    assert rbac_of(f).rules.action == rbac_pb2.RBAC.DENY
    (problem,) = builder.problems(unknown_action, MESH)
    assert problem.field == "spec.action" and "deny-all" in problem.reason


@pytest.mark.parametrize("provider,why", [
    ("missing", "not defined"),
    ("zipkin", "is a zipkin"),
])
def test_custom_with_an_unusable_provider_denies_what_it_selects(provider, why):
    wp = wp_of(f"{{action: CUSTOM, provider: {{name: {provider}}}, rules: [{{to: [{{operation: {{paths: [/x]}}}}]}}]}}")
    for filters in (builder.http_filters(wp, MESH), builder.network_filters(wp, MESH)):
        (f,) = filters
        rbac = rbac_of(f)
        assert rbac.rules.action == rbac_pb2.RBAC.DENY
        assert list(rbac.rules.policies) == [
            f"istio-ext-authz-{provider}-ns[shop]-policy[p0]-rule[0]-deny-due-to-bad-CUSTOM-action"]
    (problem,) = builder.problems(wp, MESH)
    assert problem.field == "spec.provider.name" and why in problem.reason and "fail closed" in problem.reason


def test_a_provider_with_bad_settings_is_reported_field_by_field():
    mesh = parse_mesh_config({"extensionProviders": [{"name": "bad", "envoyExtAuthzHttp": {
        "service": "authz.shop.svc.cluster.local", "port": 0, "pathPrefix": "check", "statusOnError": "999",
        "includeRequestHeadersInCheck": ["*"], "retries": 3}}]})
    wp = wp_of("{action: CUSTOM, provider: {name: bad}, rules: [{}]}")
    (problem,) = builder.problems(wp, mesh)
    for part in ("port: must be in the range", "pathPrefix: must begin with '/'", "statusOnError: unsupported",
                 "includeRequestHeadersInCheck: a single wildcard", "retries: unknown field"):
        assert part in problem.reason, part
    (f,) = builder.http_filters(wp, mesh)
    assert rbac_of(f).rules.action == rbac_pb2.RBAC.DENY


def test_each_provider_gets_its_own_shadow_rules_and_ext_authz_filter():
    wp = wp_of("{action: CUSTOM, provider: {name: http-authz}, rules: [{to: [{operation: {paths: [/h]}}]}]}",
               "{action: CUSTOM, provider: {name: grpc-authz}, rules: [{to: [{operation: {paths: [/g]}}]}]}")
    http = builder.http_filters(wp, MESH)
    assert [f.name for f in http] == [builder.HTTP_RBAC, builder.HTTP_EXT_AUTHZ] * 2
    assert list(rbac_of(http[0]).shadow_rules.policies) == ["istio-ext-authz-grpc-authz-ns[shop]-policy[p1]-rule[0]"]
    assert list(rbac_of(http[2]).shadow_rules.policies) == ["istio-ext-authz-http-authz-ns[shop]-policy[p0]-rule[0]"]
    for f, provider in ((http[1], "grpc-authz"), (http[3], "http-authz")):
        ext = http_ext_authz_pb2.ExtAuthz()
        f.typed_config.Unpack(ext)
        assert ext.filter_enabled_metadata.value.string_match.prefix == f"istio-ext-authz-{provider}"
    # On TCP only the gRPC provider has a filter; the HTTP provider's CUSTOM rules do nothing there.
    assert [f.name for f in builder.network_filters(wp, MESH)] == [builder.NETWORK_RBAC, builder.NETWORK_EXT_AUTHZ]


def test_dry_run_custom_is_not_enforced_and_reported():
    wp = policies_for([authz_policy(o) for o in unvalidated_objects(textwrap.dedent("""\
        apiVersion: security.istio.io/v1
        kind: AuthorizationPolicy
        metadata: {name: trial, namespace: shop, annotations: {istio.io/dry-run: "true"}}
        spec: {action: CUSTOM, provider: {name: grpc-authz}, rules: [{}]}
        """))], NS, LABELS, "istio-system")
    assert builder.http_filters(wp, MESH) == []
    (problem,) = builder.problems(wp, MESH)
    assert problem.severity == builder.WARNING and "dry-run" in problem.reason


def test_target_ref_to_a_service_is_reported_as_binding_nothing():
    ps = [authz_policy(o) for o in unvalidated_objects(textwrap.dedent("""\
        apiVersion: security.istio.io/v1
        kind: AuthorizationPolicy
        metadata: {name: svc, namespace: shop}
        spec: {action: DENY, targetRefs: [{kind: Service, group: "", name: web}], rules: [{}]}
        """))]
    assert not policies_for(ps, NS, LABELS, "istio-system", service_names=["web"])
    (problem,) = builder.problems(ps, MESH)
    assert problem.severity == builder.WARNING and "waypoint" in problem.reason


def test_values_are_escaped_and_templated_as_istio_does():
    wp = wp_of("{rules: [{from: [{source: {serviceAccounts: [a.b/c.d]}}, {source: {namespaces: ['team.*']}}], "
               "to: [{operation: {paths: ['/api/{*}/items/{**}'], hosts: ['*.Example.com']}}], "
               "when: [{key: 'request.auth.claims[groups]', values: [admins]}, "
               "{key: remote.ip, values: ['2001:db8::/32']}]}]}")
    (p,) = rbac_of(builder.http_filters(wp, MESH)[0]).rules.policies.values()
    got = as_dict(p)
    perms = got["permissions"][0]["andRules"]["rules"]
    assert perms[0] == {"orRules": {"rules": [{"header": {"name": ":authority", "stringMatch": {
        "suffix": ".Example.com", "ignoreCase": True}}}]}}
    assert perms[1]["orRules"]["rules"][0]["uriTemplate"]["typedConfig"]["pathTemplate"] == "/api/*/items/**"
    sa_ids, ns_ids = (p["andIds"]["ids"] for p in got["principals"])
    assert sa_ids[0]["orIds"]["ids"][0]["authenticated"]["principalName"]["safeRegex"]["regex"] == \
        r"spiffe://.+/ns/a\.b/(.+/|)sa/c\.d(/.+)?"
    assert ns_ids[0]["orIds"]["ids"][0]["authenticated"]["principalName"]["safeRegex"]["regex"] == r".*/ns/team\..*/.*"
    assert sa_ids[1:] == ns_ids[1:]  # `when` conditions join every `from`
    ids = sa_ids
    assert ids[1]["metadata"] == {"filter": "envoy.filters.http.jwt_authn", "path": [{"key": "payload"}, {"key": "groups"}],
                                  "value": {"orMatch": {"valueMatchers": [
                                      {"listMatch": {"oneOf": {"stringMatch": {"exact": "admins"}}}},
                                      {"stringMatch": {"exact": "admins"}}]}}}
    assert ids[2] == {"orIds": {"ids": [{"remoteIp": {"addressPrefix": "2001:db8::", "prefixLen": 32}}]}}


def test_identical_policies_give_byte_identical_filters():
    spec = "{rules: [{from: [{source: {principals: [a, b, c]}}]}, {to: [{operation: {ports: ['1', '2']}}]}]}"
    first = [f.SerializeToString(deterministic=True) for f in builder.http_filters(wp_of(spec, spec), MESH)]
    again = [f.SerializeToString(deterministic=True) for f in builder.http_filters(wp_of(spec, spec), MESH)]
    assert first == again
