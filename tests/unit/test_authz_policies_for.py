"""Which AuthorizationPolicies apply to a workload (model/authorization.py), by istiod's
rules: selector, root namespace, targetRef(s) to a Kubernetes Gateway (and to a Service,
which istiod binds only to waypoints), action buckets and order."""
from __future__ import annotations

import textwrap

from controlplane.model.authorization import ALLOW, AUDIT, CUSTOM, DENY, authz_policy, policies_for
from controlplane.names import GATEWAY_NAME_LABEL
from tests.support.configs import objects_from_yaml, unvalidated_objects

ROOT = "istio-system"
WEB = {"app": "web", "version": "v1"}


def policy(name: str, namespace: str, spec: str = "{}", created: str = "", annotations: str = "{}") -> str:
    ts = f", creationTimestamp: '{created}'" if created else ""
    return textwrap.dedent(f"""\
        apiVersion: security.istio.io/v1
        kind: AuthorizationPolicy
        metadata: {{name: {name}, namespace: {namespace}, annotations: {annotations}{ts}}}
        spec: {spec}
        """)


def load(*docs: str):
    return [authz_policy(o) for o in objects_from_yaml("---\n".join(docs))]


def load_unvalidated(*docs: str):
    """Policies the parse gate would reject (validation): the model must still not fail
    open if one reached it."""
    return [authz_policy(o) for o in unvalidated_objects("---\n".join(docs))]


def names(policies) -> list[str]:
    return [f"{p.namespace}/{p.name}" for p in policies]


def test_selector_picks_workloads_by_labels_and_no_selector_means_the_whole_namespace():
    ps = load(policy("web-only", "shop", "{selector: {matchLabels: {app: web}}, rules: [{}]}"),
              policy("v2-only", "shop", "{selector: {matchLabels: {app: web, version: v2}}, rules: [{}]}"),
              policy("ns-wide", "shop", "{rules: [{}]}"),
              policy("other-ns", "other", "{rules: [{}]}"))
    wp = policies_for(ps, "shop", WEB, ROOT)
    assert names(wp.allow) == ["shop/ns-wide", "shop/web-only"]
    assert names(policies_for(ps, "other", WEB, ROOT).allow) == ["other/other-ns"]


def test_root_namespace_policies_apply_mesh_wide_and_come_first():
    ps = load(policy("local", "shop", "{action: DENY, rules: [{}]}"),
              policy("mesh-deny", ROOT, "{action: DENY, rules: [{}]}"),
              # A selector in the root namespace selects matching workloads of every namespace.
              policy("mesh-web", ROOT, "{action: DENY, selector: {matchLabels: {app: web}}, rules: [{}]}"),
              policy("mesh-db", ROOT, "{action: DENY, selector: {matchLabels: {app: db}}, rules: [{}]}"))
    wp = policies_for(ps, "shop", WEB, ROOT)
    assert names(wp.deny) == [f"{ROOT}/mesh-deny", f"{ROOT}/mesh-web", "shop/local"]


def test_order_within_a_namespace_is_creation_time_then_name_objects_without_time_first():
    ps = load(policy("b-new", "shop", created="2024-05-01T00:00:00Z"),
              policy("a-new", "shop", created="2024-05-01T00:00:00Z"),
              policy("z-old", "shop", created="2023-01-01T00:00:00Z"),
              policy("file-only", "shop"))
    assert names(policies_for(ps, "shop", WEB, ROOT).allow) == ["shop/file-only", "shop/z-old", "shop/a-new",
                                                                 "shop/b-new"]


def test_policies_are_sorted_into_their_action():
    ps = load(policy("c", "shop", "{action: CUSTOM, provider: {name: authz}, rules: [{}]}"),
              policy("d", "shop", "{action: DENY, rules: [{}]}"),
              policy("a", "shop", "{action: ALLOW, rules: [{}]}"),
              policy("l", "shop", "{action: AUDIT, rules: [{}]}"),
              policy("default-action", "shop", "{rules: [{}]}"))
    wp = policies_for(ps, "shop", WEB, ROOT)
    assert [p.action for p in wp.custom] == [CUSTOM] and wp.custom[0].provider == "authz"
    assert [p.action for p in wp.deny] == [DENY]
    assert names(wp.allow) == ["shop/a", "shop/default-action"] and {p.action for p in wp.allow} == {ALLOW}
    assert [p.action for p in wp.audit] == [AUDIT]
    assert wp.invalid == ()


def test_a_sidecar_ignores_policies_with_target_refs_even_with_a_matching_selector():
    ps = load_unvalidated(
              policy("svc", "shop", "{targetRefs: [{kind: Service, group: '', name: web}], rules: [{}]}"),
              # Both selector and targetRef: validation rejects it; istiod's selection ignores it.
              policy("both", "shop", "{selector: {matchLabels: {app: web}}, "
                                     "targetRef: {kind: Service, group: '', name: web}, rules: [{}]}"))
    assert not policies_for(ps, "shop", WEB, ROOT, service_names=["web"])
    # istiod binds Service targetRefs on waypoint proxies only.
    wp = policies_for(ps, "shop", WEB, ROOT, service_names=["web"], is_waypoint=True)
    assert names(wp.allow) == ["shop/both", "shop/svc"]


def test_a_kubernetes_gateway_is_selected_by_a_gateway_target_ref_in_its_namespace():
    gw_labels = {GATEWAY_NAME_LABEL: "edge", "app": "edge"}
    def ref(name: str) -> str:
        return "{group: gateway.networking.k8s.io, kind: Gateway, name: " + name + "}"

    def refs(*names: str) -> str:
        return "{targetRefs: [" + ", ".join(ref(n) for n in names) + "], rules: [{}]}"

    ps = load_unvalidated(
              policy("to-edge", "infra", refs("edge")),
              policy("legacy-ref", "infra", "{targetRef: " + ref("edge") + ", rules: [{}]}"),
              policy("one-of-two", "infra", refs("x", "edge")),
              policy("to-other", "infra", refs("other")),
              policy("no-group", "infra", "{targetRefs: [{kind: Gateway, name: edge}], rules: [{}]}"),
              policy("from-root", ROOT, refs("edge")),
              # Without targetRefs a gateway falls back to the selector (istiod's default).
              policy("by-selector", "infra", "{selector: {matchLabels: {app: edge}}, rules: [{}]}"),
              policy("ns-wide", "infra", "{rules: [{}]}"))
    wp = policies_for(ps, "infra", gw_labels, ROOT, gateway_names=["edge"])
    assert names(wp.allow) == ["infra/by-selector", "infra/legacy-ref", "infra/ns-wide", "infra/one-of-two",
                               "infra/to-edge"]
    # The label alone identifies the gateway too.
    assert names(policies_for(ps, "infra", gw_labels, ROOT).allow) == names(wp.allow)


def test_key_is_hashable_and_follows_the_policies_content():
    before = load(policy("p", "shop", "{rules: [{to: [{operation: {paths: [/a]}}]}]}"))
    after = load(policy("p", "shop", "{rules: [{to: [{operation: {paths: [/b]}}]}]}"))
    k1 = policies_for(before, "shop", WEB, ROOT).key()
    assert k1 == policies_for(load(policy("p", "shop", "{rules: [{to: [{operation: {paths: [/a]}}]}]}")),
                              "shop", WEB, ROOT).key()
    assert k1 != policies_for(after, "shop", WEB, ROOT).key()
    assert hash(k1) == hash(policies_for(before, "shop", WEB, ROOT).key())


def test_unreadable_policies_are_kept_with_their_errors():
    ps = load_unvalidated(
              policy("typo", "shop", "{action: DENY, rules: [{from: [{source: {principal: [x]}}]}]}"),
              policy("weird-action", "shop", "{action: BLOCK, rules: [{}]}"))
    wp = policies_for(ps, "shop", WEB, ROOT)
    typo = wp.deny[0]
    assert typo.errors == ("spec.rules[0].from[0].source.principal: unknown field",)
    assert names(wp.invalid) == ["shop/weird-action"]
    assert "spec.action" in wp.invalid[0].errors[0]


def test_dry_run_annotation_is_read_as_go_parses_booleans():
    ps = load_unvalidated(
              policy("t", "shop", annotations="{istio.io/dry-run: 'True'}"),
              policy("f", "shop", annotations="{istio.io/dry-run: '0'}"),
              policy("bad", "shop", annotations="{istio.io/dry-run: 'yes'}"))
    by_name = {p.name: p for p in ps}
    assert by_name["t"].dry_run and not by_name["f"].dry_run
    assert not by_name["bad"].dry_run and "invalid boolean 'yes'" in by_name["bad"].warnings[0]
