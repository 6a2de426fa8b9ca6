"""Never fail open: an object of a mesh config kind meshd does not serve is never only a
log line. It is listed with its reason in /debug/configz, counted in
`meshd_config_unsupported{group,kind}` (back to 0 when it goes), reported by `meshd
analyze` (an error for a security kind) and named by `meshd validate` (exit code 1 for a
security kind). Kubernetes kinds meshd has no use for stay quiet.

AuthorizationPolicy and RequestAuthentication are served, so the security kinds still
unsupported are those meshd does not know: an unknown kind of security.istio.io and
Istio's pre-1.6 rbac.istio.io / authentication.istio.io kinds.
"""
from __future__ import annotations

import contextlib
import io
import json
import re
from pathlib import Path

import pytest
import yaml
from structlog.testing import capture_logs

from controlplane import cli
from controlplane.config.objects import Origin
from controlplane.config.parse import Unsupported, parse_document
from controlplane.config.store import ConfigStore
from controlplane.debug.views import DebugViews
from controlplane.kube.resources import as_document
from controlplane.server.metrics import Metrics
from controlplane.sources.directory import DirectorySource
from tests.support.harness import http_get, meshd, wait_for

PROXY_CONFIG = """
apiVersion: networking.istio.io/v1beta1
kind: ProxyConfig
metadata: {name: external, namespace: shop}
spec: {concurrency: 2}
"""
ENVOY_FILTER = """
apiVersion: extensions.istio.io/v1alpha1
kind: WasmPlugin
metadata: {name: lua, namespace: shop}
spec: {url: "oci://example.com/plugin:1"}
"""
WASM_PLUGIN = """
apiVersion: extensions.istio.io/v1alpha1
kind: WasmPlugin
metadata: {name: default, namespace: shop}
spec: {url: oci://example.com/plugin:1}
"""
# A Gateway API kind of the standard channel meshd does not serve (HTTPRoute and the other
# route kinds are served: docs/gateway-api.md).
HTTP_ROUTE = """
apiVersion: gateway.networking.k8s.io/v1
kind: UDPRoute
metadata: {name: bookinfo, namespace: shop}
spec:
  parentRefs: [{name: bookinfo-gateway}]
  rules: [{backendRefs: [{name: productpage, port: 9080}]}]
"""
LISTENER_SET = """
apiVersion: gateway.networking.k8s.io/v1
kind: ListenerSet
metadata: {name: extra, namespace: shop}
spec: {parentRef: {name: bookinfo-gateway}, listeners: [{name: http, port: 80, protocol: HTTP}]}
"""
# No such kind in Istio: a typo (or a kind of a newer Istio) in the security group.
UNKNOWN_SECURITY = """
apiVersion: security.istio.io/v1
kind: AuthorisationPolicy
metadata: {name: deny-all, namespace: shop}
spec: {}
"""
# Istio's access control before 1.6: istiod ignores it too, an operator may still apply it.
LEGACY_RBAC = """
apiVersion: rbac.istio.io/v1alpha1
kind: ServiceRole
metadata: {name: reader, namespace: shop}
spec: {rules: [{services: ["*"], methods: [GET]}]}
"""
QUIET = """
apiVersion: apps/v1
kind: Deployment
metadata: {name: web, namespace: shop}
spec: {}
---
apiVersion: v1
kind: ConfigMap
metadata: {name: settings, namespace: shop}
data: {a: b}
"""
AUTHZ = """
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-all, namespace: istio-system}
spec: {}
"""


def doc(text: str) -> dict:
    return yaml.safe_load(text)


# --- the parse gate --------------------------------------------------------------------

@pytest.mark.parametrize("text, key, security, says", [
    (PROXY_CONFIG, "ProxyConfig shop/external", False, "an Istio kind meshd does not serve"),
    (ENVOY_FILTER, "WasmPlugin shop/lua", False, "an Istio kind meshd does not serve"),
    (WASM_PLUGIN, "WasmPlugin shop/default", False, "an Istio kind meshd does not serve"),
    (HTTP_ROUTE, "UDPRoute shop/bookinfo", False, "a Kubernetes Gateway API kind meshd does not serve"),
    (LISTENER_SET, "ListenerSet shop/extra", False, "a Kubernetes Gateway API kind meshd does not serve"),
    (UNKNOWN_SECURITY, "AuthorisationPolicy shop/deny-all", True, "the access control it describes is NOT enforced"),
    (LEGACY_RBAC, "ServiceRole shop/reader", True, "the access control it describes is NOT enforced"),
])
def test_the_parse_gate_reports_each_unserved_mesh_kind(text, key, security, says):
    got = parse_document(doc(text), Origin("file", "/cfg/x.yaml"))
    assert isinstance(got, Unsupported)
    assert str(got.key) == key
    assert got.security is security
    assert says in got.reason and got.key.kind in got.reason


def test_served_security_kinds_and_plain_kubernetes_kinds_are_not_unsupported():
    assert not isinstance(parse_document(doc(AUTHZ), Origin("file", "a.yaml")), Unsupported)
    for d in yaml.safe_load_all(QUIET):
        assert parse_document(d, Origin("file", "q.yaml")) is None


def test_an_object_from_the_kubernetes_source_is_reported_the_same_way():
    """What the reflector does with a listed object (kube/reflector.py _parse), and what the
    source does when it is deleted (remove_location)."""
    store = ConfigStore()
    loc = "k8s:/apis/gateway.networking.k8s.io/v1/namespaces/shop/udproutes/bookinfo"
    obj = {k: v for k, v in doc(HTTP_ROUTE).items() if k not in ("apiVersion", "kind")}  # as list items come
    parsed = parse_document(as_document(obj, "gateway.networking.k8s.io/v1", "UDPRoute"), Origin("kubernetes", loc))
    store.replace_location(loc, [parsed])
    assert [str(u.key) for u in store.unsupported()] == ["UDPRoute shop/bookinfo"]
    assert store.unsupported()[0].origin.source == "kubernetes"
    store.remove_location(loc)
    assert store.unsupported() == [] and store.unsupported_counts() == {}


# --- a server's view: configz, the metric, the log ---------------------------------------

def gauge(metrics: Metrics, group: str, kind: str) -> float | None:
    m = re.search(rf'^meshd_config_unsupported{{group="{re.escape(group)}",kind="{kind}"}} (\S+)$',
                  metrics.render().decode(), re.M)
    return float(m.group(1)) if m else None


def served(tmp_path: Path, files: dict[str, str]):
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    metrics = Metrics()
    store = ConfigStore(on_unsupported=metrics.set_config_unsupported)
    src = DirectorySource(tmp_path, store)
    with capture_logs() as logs:
        src.load()
    return store, src, metrics, DebugViews(ads=None, store=store), logs


def test_configz_and_metric_list_every_unsupported_object_until_its_file_goes(tmp_path):
    store, src, metrics, views, logs = served(tmp_path, {
        "istio.yaml": PROXY_CONFIG + "---" + ENVOY_FILTER + "---" + WASM_PLUGIN,
        "route.yaml": HTTP_ROUTE, "security.yaml": UNKNOWN_SECURITY, "authz.yaml": AUTHZ, "quiet.yaml": QUIET,
    })
    listed = {u["object"]: u for u in views.configz()["unsupported"]}
    assert set(listed) == {"ProxyConfig shop/external", "WasmPlugin shop/lua", "WasmPlugin shop/default", "UDPRoute shop/bookinfo", "AuthorisationPolicy shop/deny-all"}
    route = listed["UDPRoute shop/bookinfo"]
    assert route["apiVersion"] == "gateway.networking.k8s.io/v1" and route["level"] == "Warning"
    assert route["origin"]["location"] == str(tmp_path / "route.yaml")
    assert "a Kubernetes Gateway API kind meshd does not serve" in route["reason"]
    assert listed["AuthorisationPolicy shop/deny-all"]["level"] == "Error"
    # The served AuthorizationPolicy is an object in force, not an unsupported one.
    assert [o["kind"] for o in views.configz()["objects"]] == ["AuthorizationPolicy"]

    assert gauge(metrics, "networking.istio.io", "ProxyConfig") == 1
    assert gauge(metrics, "gateway.networking.k8s.io", "UDPRoute") == 1
    assert gauge(metrics, "security.istio.io", "AuthorisationPolicy") == 1

    # One log event per object; a security kind at error level.
    events = {e["object"]: e for e in logs if e["event"] == "config unsupported"}
    assert set(events) == set(listed)
    assert events["AuthorisationPolicy shop/deny-all"]["log_level"] == "error"
    assert events["UDPRoute shop/bookinfo"]["log_level"] == "warning"

    (tmp_path / "route.yaml").unlink()
    (tmp_path / "security.yaml").unlink()
    src._apply(*src._changes(settle=False))
    listed = {u["object"] for u in views.configz()["unsupported"]}
    assert "UDPRoute shop/bookinfo" not in listed and "AuthorisationPolicy shop/deny-all" not in listed
    assert gauge(metrics, "gateway.networking.k8s.io", "UDPRoute") == 0
    assert gauge(metrics, "security.istio.io", "AuthorisationPolicy") == 0
    assert gauge(metrics, "networking.istio.io", "ProxyConfig") == 1


def test_a_file_that_changes_is_counted_again_and_logged_only_for_what_is_new(tmp_path):
    store, src, metrics, views, _ = served(tmp_path, {"pc.yaml": PROXY_CONFIG})
    assert gauge(metrics, "networking.istio.io", "ProxyConfig") == 1
    second = PROXY_CONFIG.replace("name: external", "name: other")
    (tmp_path / "pc.yaml").write_text(PROXY_CONFIG + "---" + second)
    with capture_logs() as logs:
        src._apply(*src._changes(settle=False))
    assert gauge(metrics, "networking.istio.io", "ProxyConfig") == 2
    assert [e["object"] for e in logs if e["event"] == "config unsupported"] == ["ProxyConfig shop/other"]
    # A file that can no longer be read keeps what it held (as it keeps its objects).
    (tmp_path / "pc.yaml").write_text("kind: [unclosed\n")
    src._apply(*src._changes(settle=False))
    assert gauge(metrics, "networking.istio.io", "ProxyConfig") == 2
    assert len(views.configz()["unsupported"]) == 2


# --- analyze and validate ----------------------------------------------------------------

def run(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main(list(argv))
    return code, out.getvalue(), err.getvalue()


def test_analyze_reports_security_kinds_as_errors_and_the_others_as_warnings(tmp_path):
    (tmp_path / "mesh.yaml").write_text(PROXY_CONFIG + "---" + HTTP_ROUTE + "---" + ENVOY_FILTER)
    code, out, _ = run("analyze", "--analyzer", "meshd.UnsupportedKindAnalyzer", str(tmp_path))
    assert code == 0, out  # warnings only: below the default failure threshold
    assert re.search(r"^Warning \[MSH0002\] \(UDPRoute shop/bookinfo \S+mesh\.yaml:\d+\) UDPRoute "
                     r"\(gateway\.networking\.k8s\.io\) is a Kubernetes Gateway API kind", out, re.M), out
    assert "Warning [MSH0002] (ProxyConfig shop/external" in out
    assert "Warning [MSH0002] (WasmPlugin shop/lua" in out

    (tmp_path / "old.yaml").write_text(UNKNOWN_SECURITY + "---" + LEGACY_RBAC)
    code, out, _ = run("analyze", str(tmp_path))
    assert code == 79
    assert "Error [MSH0001] (AuthorisationPolicy shop/deny-all" in out
    assert "Error [MSH0001] (ServiceRole shop/reader" in out
    assert "NOT enforced" in out


def test_validate_names_unsupported_objects_and_fails_only_for_security_kinds(tmp_path):
    (tmp_path / "mesh.yaml").write_text(PROXY_CONFIG + "---" + HTTP_ROUTE + "---" + AUTHZ)
    code, out, err = run("validate", str(tmp_path))
    assert code == 0, err
    assert re.search(r"mesh\.yaml:\d+: UDPRoute shop/bookinfo: Warning: UDPRoute \(gateway\.networking\.k8s\.io\)", err)
    assert "ProxyConfig shop/external: Warning:" in err
    assert "AuthorizationPolicy" not in err  # served: validated, not reported
    assert f'"{tmp_path / "mesh.yaml"}" is valid' in out

    (tmp_path / "old.yaml").write_text(UNKNOWN_SECURITY)
    code, out, err = run("validate", str(tmp_path))
    assert code == 1
    assert re.search(r"old\.yaml:\d+: AuthorisationPolicy shop/deny-all: Error: AuthorisationPolicy "
                     r"\(security\.istio\.io\) is a security kind meshd does not serve", err), err
    assert f'"{tmp_path / "old.yaml"}" is valid' not in out
    assert "Error: validation failed: 1 problem(s) in 1 document(s)" in err


# --- meshd serve over HTTP ---------------------------------------------------------------

def test_a_running_meshd_shows_them_in_configz_metrics_and_analyze(tmp_path):
    cfg = tmp_path / "cfg"
    cfg.mkdir()
    (cfg / "route.yaml").write_text(HTTP_ROUTE)
    (cfg / "istio.yaml").write_text(ENVOY_FILTER + "---" + UNKNOWN_SECURITY)
    with meshd(cfg, tmp_path, extra=["--log-format", "json"]) as cp:
        def configz() -> dict:
            return json.loads(http_get("127.0.0.1", cp.monitoring_port, "/debug/configz")[1])

        listed = {u["object"]: u["level"] for u in configz()["unsupported"]}
        assert listed == {"UDPRoute shop/bookinfo": "Warning", "WasmPlugin shop/lua": "Warning",
                          "AuthorisationPolicy shop/deny-all": "Error"}
        metrics = cp.metrics()
        assert 'meshd_config_unsupported{group="gateway.networking.k8s.io",kind="UDPRoute"} 1.0' in metrics
        assert 'meshd_config_unsupported{group="security.istio.io",kind="AuthorisationPolicy"} 1.0' in metrics

        url = f"http://127.0.0.1:{cp.monitoring_port}"
        code, out, _ = run("analyze", "--meshd", url)
        assert code == 79
        assert "Error [MSH0001] (AuthorisationPolicy shop/deny-all" in out
        assert "Warning [MSH0002] (UDPRoute shop/bookinfo" in out

        (cfg / "route.yaml").unlink()
        wait_for(lambda: 'kind="UDPRoute"} 0.0' in cp.metrics(), 10, what="the UDPRoute gauge back to 0")
        assert "UDPRoute shop/bookinfo" not in {u["object"] for u in configz()["unsupported"]}
