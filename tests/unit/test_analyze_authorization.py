"""`meshd analyze` on AuthorizationPolicies: Istio's analyzer (IST0127, IST0101) on
Istio's own test input, and meshd's principal and CUSTOM provider checks (MSH0003,
MSH0004) with `--mesh-config`."""
from __future__ import annotations

import re

import pytest
import yaml

from controlplane.analysis import BY_NAME, analyze
from controlplane.analysis.resources import parse_text
from controlplane.cli import main
from controlplane.model.meshconfig import parse_mesh_config
from tests.support.paths import shared

TESTDATA = ("corpus", "istio", "pkg", "config", "analysis", "analyzers", "testdata")
ISTIO = BY_NAME["auth.AuthorizationPoliciesAnalyzer"]
PRINCIPALS = BY_NAME["meshd.AuthorizationPrincipalAnalyzer"]
PROVIDERS = BY_NAME["meshd.CustomProviderAnalyzer"]


def expected_from_index(case: str) -> list[str]:
    """The messages Istio's analyzers_test.go expects for `case`, as INDEX.md quotes them."""
    text = shared("corpus", "INDEX.md").read_text()
    m = re.search(rf"analyzers_test\.go case '{re.escape(case)}' \[[^\]]+\]: expect (.*?) \|", text)
    assert m, f"case {case!r} not in INDEX.md"
    return sorted(e.strip() for e in m.group(1).split(";"))


def found(messages) -> list[str]:
    return sorted(f"{m.type.name} {m.resource.friendly_name}" for m in messages)


def istio_input():
    path = shared(*TESTDATA, "authorizationpolicies.yaml")
    return path, parse_text(path.read_text(), path.name, "")  # loaded as Istio's test loads it


def test_istios_case_reports_exactly_the_expected_messages():
    _, resources = istio_input()
    assert found(analyze(resources, [ISTIO])) == expected_from_index("authorizationpolicies")


def test_meshds_own_checks_add_nothing_to_istios_case():
    _, resources = istio_input()
    assert analyze(resources, [PRINCIPALS, PROVIDERS]) == []


def test_cli_prints_istios_codes_wording_and_lines(capsys):
    path, _ = istio_input()
    rc = main(["analyze", "--analyzer", ISTIO.name, str(path)])
    out = capsys.readouterr().out.splitlines()
    assert rc == 79
    assert f'Error [IST0101] (AuthorizationPolicy httpbin/httpbin-bogus-ns {path}:249) Referenced namespace not found: ' \
           f'"*-bogus"' in out
    # notNamespaces entries point at themselves
    assert f'Error [IST0101] (AuthorizationPolicy httpbin/httpbin-bogus-not-ns {path}:217) Referenced namespace not ' \
           f'found: "bogus-*"' in out
    assert f"Warning [IST0127] (AuthorizationPolicy httpbin/httpbin-nopods {path}:155) No matching workloads for this " \
           f"resource with the following labels: app=bogus-label,version=v1" in out
    assert f"Warning [IST0127] (AuthorizationPolicy httpbin-empty/httpbin-empty-namespace-wide {path}:109) No matching " \
           f"workloads for this resource with the following labels: " in out
    assert len(out) == 8


# --- which pods count as workloads ---------------------------------------------------------


def docs(*items: dict) -> list:
    return parse_text(yaml.safe_dump_all(items), "in.yaml", "default")


def ns(name: str, **labels: str) -> dict:
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels}}


def pod(name: str, namespace: str, labels: dict, *, proxy_image: str | None = None, sa: str = "",
        annotations: dict | None = None, **meta_labels) -> dict:
    containers = [{"name": "app", "image": "app"}]
    if proxy_image is not None:
        containers.append({"name": "istio-proxy", "image": proxy_image})
    spec = {"containers": containers}
    if sa:
        spec["serviceAccountName"] = sa
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": namespace,
                                                           "labels": {**labels, **meta_labels},
                                                           "annotations": annotations or {}}, "spec": spec}


def policy(name: str, namespace: str, selector: dict | None = None, **spec) -> dict:
    if selector is not None:
        spec["selector"] = {"matchLabels": selector}
    return {"apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
            "metadata": {"name": name, "namespace": namespace}, "spec": spec}


WEB = {"app": "web"}


@pytest.mark.parametrize("ns_labels, pod_kwargs, reported", [
    ({}, {}, True),  # no sidecar, no injection anywhere
    ({}, {"proxy_image": "istio/proxyv2"}, False),  # a sidecar container
    ({}, {"proxy_image": ""}, True),  # an istio-proxy container without an image is not one
    ({"istio-injection": "enabled"}, {}, False),  # the namespace injects
    ({"istio-injection": "enabled"}, {"annotations": {"sidecar.istio.io/inject": "false"}}, True),
    ({}, {"annotations": {"ambient.istio.io/redirection": "enabled"}}, False),  # ambient
])
def test_a_selector_needs_an_in_mesh_pod(ns_labels, pod_kwargs, reported):
    messages = analyze(docs(ns("shop", **ns_labels), pod("web-1", "shop", WEB, **pod_kwargs),
                            policy("web", "shop", WEB)), [ISTIO])
    assert found(messages) == (["NoMatchingWorkloadsFound AuthorizationPolicy shop/web"] if reported else [])


def test_the_root_namespace_comes_from_the_mesh_config():
    resources = docs(ns("shop", **{"istio-injection": "enabled"}), ns("mesh-root"), pod("web-1", "shop", WEB),
                     policy("all-web", "mesh-root", WEB))
    # with Istio's default root (istio-system) the policy is namespace-scoped: no pod in mesh-root
    assert found(analyze(resources, [ISTIO])) == ["NoMatchingWorkloadsFound AuthorizationPolicy mesh-root/all-web"]
    # as the root namespace it is mesh-wide and selects web-1 in shop
    mc = parse_mesh_config({"rootNamespace": "mesh-root"})
    assert analyze(resources, [ISTIO], mesh_config=mc) == []


def test_meshd_service_workloads_count_as_in_mesh(tmp_path):
    """meshd's directory configs describe workloads by Services: their stand-ins are sidecars."""
    svc = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web", "namespace": "shop"},
           "spec": {"selector": WEB, "ports": [{"name": "http", "port": 80}]}}
    resources = docs(svc, policy("web", "shop", WEB, rules=[{"from": [{"source": {"namespaces": ["shop"]}}]}]),
                     policy("none", "shop", {"app": "gone"}))
    messages = analyze(resources, [ISTIO], service_workloads=True)
    # without Namespace objects the namespaces are those the input uses: "shop" exists
    assert found(messages) == ["NoMatchingWorkloadsFound AuthorizationPolicy shop/none"]


def test_namespace_expressions_match_as_istios():
    resources = docs(ns("prod-web"), ns("web-test"), policy("p", "prod-web", rules=[{"from": [{"source": {
        "namespaces": ["prod-*", "*-test", "PROD-WEB", "*", "staging-*"], "notNamespaces": ["*-prod"]}}]}]))
    got = [(m.type.code, m.args) for m in analyze(resources, [ISTIO]) if m.type.code == "IST0101"]
    assert got == [("IST0101", ("namespace", "staging-*")), ("IST0101", ("namespace", "*-prod"))]


# --- meshd's principal check ---------------------------------------------------------------


def principal_messages(principals: list[str], *extra: dict, mesh: dict | None = None) -> list[tuple]:
    resources = docs(ns("shop"), pod("web-1", "shop", WEB, sa="web"),
                     policy("p", "shop", rules=[{"from": [{"source": {"principals": principals}}]}]), *extra)
    mc = parse_mesh_config(mesh or {})
    return [m.args for m in analyze(resources, [PRINCIPALS], mesh_config=mc)]


def test_principals_name_existing_identities():
    assert principal_messages([
        "cluster.local/ns/shop/sa/web",  # the pod's
        "cluster.local/ns/shop/sa/default",  # every namespace has one
        "cluster.local/ns/default/sa/sleep",  # nothing in the input says who lives in default
        "cluster.local/ns/shop/sa/*", "*", "*/ns/shop/sa/ghost",  # patterns are not looked up
    ]) == []
    assert principal_messages(["cluster.local/ns/shop/sa/ghost", "cluster.local/ns/nowhere/sa/web",
                               "other.domain/ns/shop/sa/web"]) == [
        ("cluster.local/ns/shop/sa/ghost", "service account", "shop/ghost"),
        ("cluster.local/ns/nowhere/sa/web", "namespace", "nowhere"),
        ("other.domain/ns/shop/sa/web", "trust domain", "other.domain"),
    ]


def test_principals_read_service_accounts_and_trust_domain_aliases():
    sa = {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "batch", "namespace": "shop"}}
    assert principal_messages(["cluster.local/ns/shop/sa/batch"], sa) == []
    assert principal_messages(["old.domain/ns/shop/sa/web"], mesh={"trustDomainAliases": ["old.domain"]}) == []


def test_principal_message_text_and_line(capsys, tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump_all([ns("shop"), pod("web-1", "shop", WEB, sa="web"), policy(
        "p", "shop", WEB, rules=[{"from": [{"source": {"notPrincipals": ["cluster.local/ns/shop/sa/ghost"]}}]}])]))
    assert main(["analyze", "--analyzer", PRINCIPALS.name, str(path)]) == 0  # a warning
    out = capsys.readouterr().out.strip()
    line = next(i for i, l in enumerate(path.read_text().splitlines(), 1) if "sa/ghost" in l)
    assert out == (f'Warning [MSH0003] (AuthorizationPolicy shop/p {path}:{line}) Principal '
                   f'"cluster.local/ns/shop/sa/ghost": service account "shop/ghost" not found in the mesh')


# --- meshd's CUSTOM provider check ---------------------------------------------------------

MESH = {"extensionProviders": [
    {"name": "my-authz", "envoyExtAuthzHttp": {"service": "authz.shop.svc.cluster.local", "port": 8000}},
    {"name": "tracer", "zipkin": {"service": "zipkin.istio-system.svc.cluster.local", "port": 9411}},
]}


def custom(name: str, provider: str) -> dict:
    return policy(name, "shop", WEB, action="CUSTOM", provider={"name": provider},
                  rules=[{"to": [{"operation": {"paths": ["/admin/*"]}}]}])


@pytest.mark.parametrize("form", ["mesh", "configmap"])
def test_custom_providers_checked_against_the_mesh_config(capsys, tmp_path, form):
    mesh = tmp_path / "mesh.yaml"
    if form == "mesh":
        mesh.write_text(yaml.safe_dump(MESH))
    else:
        mesh.write_text(yaml.safe_dump({"apiVersion": "v1", "kind": "ConfigMap",
                                        "metadata": {"name": "istio", "namespace": "istio-system"},
                                        "data": {"mesh": yaml.safe_dump(MESH)}}))
    config = tmp_path / "policies.yaml"
    config.write_text(yaml.safe_dump_all([custom("ok", "my-authz"), custom("typo", "my-authz2"),
                                          custom("tracing", "tracer")]))
    rc = main(["analyze", "--analyzer", PROVIDERS.name, "--mesh-config", str(mesh), str(config)])
    out = capsys.readouterr().out.splitlines()
    assert rc == 79
    assert [re.sub(r" \S+:\d+\)", ")", line) for line in out] == [
        'Error [MSH0004] (AuthorizationPolicy shop/tracing) CUSTOM provider "tracer" is a zipkin provider, not '
        'envoyExtAuthzHttp or envoyExtAuthzGrpc; the proxies deny the requests its rules match',
        'Error [MSH0004] (AuthorizationPolicy shop/typo) CUSTOM provider "my-authz2" is not among the mesh '
        'config\'s ext_authz providers "my-authz"; the proxies deny the requests its rules match',
    ]


def test_custom_without_a_mesh_config_says_how_to_give_one():
    [m] = analyze(docs(custom("ok", "my-authz")), [PROVIDERS])
    assert m.text == ('CUSTOM provider "my-authz" is not defined: the mesh config has no ext_authz provider '
                      '(analyze --mesh-config FILE); the proxies deny the requests its rules match')


def test_a_bad_mesh_config_is_an_input_error(capsys, tmp_path):
    mesh = tmp_path / "mesh.yaml"
    mesh.write_text("extensionProviders: [{envoyExtAuthzHttp: {}}]\n")
    config = tmp_path / "p.yaml"
    config.write_text(yaml.safe_dump(custom("ok", "my-authz")))
    assert main(["analyze", "--mesh-config", str(mesh), str(config)]) == 2
    assert f"Error: --mesh-config {mesh}: extensionProviders[0].name: Required value" in capsys.readouterr().err
    assert main(["analyze", "--mesh-config", str(tmp_path / "missing.yaml"), str(config)]) == 2
    assert "No such file or directory" in capsys.readouterr().err
