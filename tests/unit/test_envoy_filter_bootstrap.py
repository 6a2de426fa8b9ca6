"""EnvoyFilter applyTo BOOTSTRAP: the parse gate, the served patch (type Bootstrap, one
resource: the selected patches merged in order), its keys, and the merge of it into a
bootstrap `meshd bootstrap` builds (bootstrap_patches.py)."""
from __future__ import annotations

import contextlib
import json

from envoy.config.bootstrap.v3 import bootstrap_pb2
from google.protobuf import json_format

from controlplane import names
from controlplane.bootstrap import BootstrapParams, build_bootstrap
from controlplane.bootstrap_patches import MARKER, BootstrapPatchError, merge_into
from controlplane.config import kinds
from controlplane.config.validation import validate
from controlplane.generators import Generator
from controlplane.model.proxy import parse_node
from tests.support import chapter9
from tests.support.chapter9 import CATALOG_PROXY, GATEWAY_PROXY, NS, WEBAPP_PROXY


def envoy_filter(name: str, patches: str, namespace: str = NS, selector: str = "{labels: {app: webapp}}",
                 priority: int = 0) -> str:
    return f"""
apiVersion: networking.istio.io/v1alpha3
kind: EnvoyFilter
metadata: {{name: {name}, namespace: {namespace}}}
spec:
  workloadSelector: {selector}
  priority: {priority}
  configPatches:
{patches}
"""


def merge_patch(value: str, match: str = "") -> str:
    return f"""  - applyTo: BOOTSTRAP
{match}    patch:
      operation: MERGE
      value: {value}
"""


TAGS = envoy_filter("stats-tags", merge_patch(
    "{stats_config: {stats_tags: [{tag_name: tenant, regex: '^tenant\\\\.((.+?)\\\\.)'}]}}"))
RUNTIME = envoy_filter("runtime", merge_patch(
    "{layered_runtime: {layers: [{name: ef-layer, static_layer: {meshd.test.flag: 7}}]}}"), priority=5)
RUNTIME_LATER = envoy_filter("runtime-later", merge_patch(
    "{layered_runtime: {layers: [{name: ef-later, static_layer: {meshd.test.flag: 9}}]}}"), priority=10)


def _doc(text: str) -> dict:
    import yaml

    return yaml.safe_load(text)


def served(gen: Generator, mesh, proxy) -> bootstrap_pb2.Bootstrap:
    rs = gen.generate(mesh, proxy, names.BOOTSTRAP)
    assert list(rs) == [names.BOOTSTRAP_RESOURCE]
    bs = bootstrap_pb2.Bootstrap()
    rs[names.BOOTSTRAP_RESOURCE].any.Unpack(bs)
    return bs


# --- the parse gate ---------------------------------------------------------------------

def test_bootstrap_merge_passes_the_parse_gate():
    assert validate(_doc(TAGS), kinds.ENVOY_FILTER) == []


def test_bootstrap_operations_other_than_merge_are_refused_naming_the_field():
    for op in ("ADD", "REPLACE", "INSERT_FIRST"):
        errs = validate(_doc(TAGS.replace("operation: MERGE", f"operation: {op}")), kinds.ENVOY_FILTER)
        assert any(e.field == "spec.configPatches[0].patch.operation" and "MERGE only" in str(e) for e in errs), (op, errs)
    remove = _doc(TAGS.replace("operation: MERGE", "operation: REMOVE"))
    assert any("MERGE only" in str(e) for e in validate(remove, kinds.ENVOY_FILTER))


def test_bootstrap_patch_with_a_listener_match_or_unknown_field_is_refused():
    errs = validate(_doc(envoy_filter("m", merge_patch("{stats_flush_interval: 5s}", "    match: {listener: {portNumber: 80}}\n"))),
                    kinds.ENVOY_FILTER)
    assert any(e.field == "spec.configPatches[0].match.listener" for e in errs), errs
    errs = validate(_doc(envoy_filter("u", merge_patch("{no_such_field: 1}"))), kinds.ENVOY_FILTER)
    assert any("no_such_field" in str(e) for e in errs), errs


# --- the served patch -------------------------------------------------------------------

def test_the_bootstrap_patch_is_served_to_the_selected_proxy_only():
    gen = Generator()
    mesh = chapter9.mesh(TAGS)
    assert [t.tag_name for t in served(gen, mesh, WEBAPP_PROXY).stats_config.stats_tags] == ["tenant"]
    assert served(gen, mesh, CATALOG_PROXY) == bootstrap_pb2.Bootstrap()  # not selected: an empty patch
    assert served(gen, chapter9.mesh(), WEBAPP_PROXY) == bootstrap_pb2.Bootstrap()


def test_patches_are_merged_in_priority_order():
    gen = Generator()
    bs = served(gen, chapter9.mesh(RUNTIME_LATER, RUNTIME, TAGS), WEBAPP_PROXY)
    assert [layer.name for layer in bs.layered_runtime.layers] == ["ef-layer", "ef-later"]  # priority 5, then 10
    assert len(bs.stats_config.stats_tags) == 1


def test_context_and_proxy_match_select_the_proxy_type():
    gateway_only = envoy_filter("gw", merge_patch("{stats_flush_interval: 7s}", "    match: {context: GATEWAY}\n"),
                                namespace="istio-system", selector="{labels: {}}")
    gen = Generator()
    mesh = chapter9.mesh(gateway_only)
    assert served(gen, mesh, GATEWAY_PROXY).stats_flush_interval.seconds == 7
    assert served(gen, mesh, WEBAPP_PROXY) == bootstrap_pb2.Bootstrap()


def test_a_bootstrap_only_change_changes_no_other_key_and_the_bootstrap_key_of_the_selected_only():
    gen = Generator()
    before, after = chapter9.mesh(), chapter9.mesh(TAGS)
    for t in (names.LISTENER, names.ROUTE, names.CLUSTER, names.ENDPOINT):
        assert gen.key(before, WEBAPP_PROXY, t) == gen.key(after, WEBAPP_PROXY, t), names.SHORT[t]
    assert gen.key(before, CATALOG_PROXY, names.BOOTSTRAP) == gen.key(after, CATALOG_PROXY, names.BOOTSTRAP)
    assert gen.key(before, WEBAPP_PROXY, names.BOOTSTRAP) != gen.key(after, WEBAPP_PROXY, names.BOOTSTRAP)


def test_a_static_cluster_added_twice_is_left_out_and_reported():
    cluster = "{static_resources: {clusters: [{name: extra, connect_timeout: 1s}]}}"
    twice = envoy_filter("twice", merge_patch(cluster) + merge_patch(cluster))
    gen = Generator()
    mesh = chapter9.mesh(twice)
    assert [c.name for c in served(gen, mesh, WEBAPP_PROXY).static_resources.clusters] == ["extra"]
    rows = gen.envoy_filter_problems()
    assert [(r["envoyFilter"], r["patch"], r["applyTo"], r["code"]) for r in rows] == [
        (f"{NS}/twice", 1, "BOOTSTRAP", "EnvoyWouldReject")], rows
    assert "extra" in rows[0]["reason"]


def test_a_second_ads_service_is_left_out_and_reported():
    ads = envoy_filter("ads", merge_patch(
        "{dynamic_resources: {ads_config: {grpc_services: [{envoy_grpc: {cluster_name: other}}]}}}")
        + merge_patch("{stats_flush_interval: 5s}"))
    gen = Generator()
    bs = served(gen, chapter9.mesh(ads), WEBAPP_PROXY)
    assert not bs.HasField("dynamic_resources") and bs.stats_flush_interval.seconds == 5  # the rest is served
    assert [(r["patch"], r["code"]) for r in gen.envoy_filter_problems()] == [(0, "EnvoyWouldReject")]


# --- merging into the written bootstrap ----------------------------------------------------

def _params() -> BootstrapParams:
    return BootstrapParams(proxy_type="sidecar", namespace=NS, pod="webapp-1", ip="10.0.0.9",
                           xds_address="127.0.0.1:15010", labels={"app": "webapp"})


def test_merging_the_served_patch_equals_merging_each_patch_in_turn():
    """Associativity: what meshd serves (the patches merged into an empty Bootstrap),
    merged into the local bootstrap, equals istiod's patch-by-patch merge into it."""
    gen = Generator()
    mesh = chapter9.mesh(RUNTIME_LATER, RUNTIME, TAGS)
    local = build_bootstrap(_params())
    got = merge_into(local, served(gen, mesh, WEBAPP_PROXY), "v1")

    one_by_one = json_format.ParseDict(json.loads(json.dumps(local)), bootstrap_pb2.Bootstrap())
    one_by_one.node.metadata.fields[MARKER].string_value = "v1"
    for text in (TAGS, RUNTIME, RUNTIME_LATER):  # priority 0, 5, 10
        value = _doc(text)["spec"]["configPatches"][0]["patch"]["value"]
        one_by_one.MergeFrom(json_format.ParseDict(value, bootstrap_pb2.Bootstrap()))
    assert json_format.ParseDict(got, bootstrap_pb2.Bootstrap()) == one_by_one
    layers = [layer["name"] for layer in got["layered_runtime"]["layers"]]
    assert layers == ["global config", "ef-layer", "ef-later"]  # appended after meshd's own layer
    assert got["node"]["id"] == local["node"]["id"]


def test_an_empty_patch_leaves_the_bootstrap_as_built_but_for_the_marker():
    local = build_bootstrap(_params())
    got = merge_into(local, bootstrap_pb2.Bootstrap(), "v0")
    assert got["node"]["metadata"].pop(MARKER) == "v0"
    assert got == local and MARKER not in local["node"]["metadata"]


def test_a_patch_clashing_with_the_built_bootstrap_is_a_clear_error():
    patch = json_format.ParseDict({"static_resources": {"clusters": [{"name": "xds-grpc"}]}}, bootstrap_pb2.Bootstrap())
    try:
        merge_into(build_bootstrap(_params()), patch, "v1")
    except BootstrapPatchError as e:
        assert "xds-grpc" in str(e)
    else:
        raise AssertionError("a second xds-grpc cluster was merged")


# --- the commands, against a running meshd ------------------------------------------------

@contextlib.contextmanager
def _meshd_with_runtime_patch(tmp_path, more: dict[str, str] | None = None):
    """A running meshd serving chapter 9, the RUNTIME BOOTSTRAP EnvoyFilter and `more` files."""
    from tests.support.harness import meshd

    config = tmp_path / "config"
    config.mkdir()
    (config / "mesh.yaml").write_text(chapter9.LAYOUT)
    (config / "runtime.yaml").write_text(RUNTIME)
    for name, text in (more or {}).items():
        (config / name).write_text(text)
    with meshd(config, tmp_path) as m:
        yield m


def _pod_init(tmp_path, address: str, root, token_text: str, *extra: str, fetch_flag: bool = True):
    import os
    import subprocess
    import sys

    from tests.support.paths import REPO

    (tmp_path / "labels").write_text('app="webapp"\n')
    (tmp_path / "token").write_text(token_text)
    out = tmp_path / "envoy-rev.json"
    argv = [sys.executable, "-m", "controlplane", "pod-init", "-p", "15001", "-z", "15006", "-u", "1337", "-m",
            "REDIRECT", "-i", "*", "--dry-run", "--bootstrap-out", str(out), "--xds-address", address,
            "--root-cert", str(root), "--token-path", str(tmp_path / "token"), "--labels-file", str(tmp_path / "labels"),
            *(["--fetch-envoy-filters"] if fetch_flag else []), *extra]
    env = {k: v for k, v in os.environ.items() if not k.startswith("ISTIO_META_")}
    env.update({"PYTHONPATH": str(REPO), "POD_NAME": "webapp-7c9", "POD_NAMESPACE": NS, "INSTANCE_IP": "10.0.0.8",
                "SERVICE_ACCOUNT": "webapp"})
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, env=env), out


def test_pod_init_fetches_the_patches_with_the_pods_token_and_writes_them(tmp_path):
    with _meshd_with_runtime_patch(tmp_path) as m:
        token = m.token(NS, "webapp")
        cp, out = _pod_init(tmp_path, f"127.0.0.1:{m.secure_port}", m.root_cert, token)
        assert cp.returncode == 0, cp.stderr
        doc = json.loads(out.read_text())
        assert [layer["name"] for layer in doc["layered_runtime"]["layers"]] == ["global config", "ef-layer"]
        assert doc["layered_runtime"]["layers"][1]["static_layer"] == {"meshd.test.flag": 7}  # an integer still
        proxy = parse_node(doc["node"]["id"], doc["node"]["metadata"])
        rs = Generator().generate(chapter9.mesh(RUNTIME), proxy, names.BOOTSTRAP)
        assert doc["node"]["metadata"][MARKER] == rs[names.BOOTSTRAP_RESOURCE].version  # what meshd serves it
        # the token is still read from its file by Envoy: the fetch did not copy it in
        assert token not in out.read_text()
        # a token for another identity is refused, and nothing is written
        out.unlink()
        cp, out = _pod_init(tmp_path, f"127.0.0.1:{m.secure_port}", m.root_cert, m.token(NS, "catalog"))
        assert cp.returncode == 2 and "fetching the EnvoyFilter BOOTSTRAP patches" in cp.stderr, cp.stderr
        assert "PERMISSION_DENIED" in cp.stderr and not out.exists()


def test_istios_switch_in_the_proxy_config_turns_the_fetch_on(tmp_path):
    """proxyMetadata BOOTSTRAP_XDS_AGENT (what makes pilot-agent take its bootstrap from
    istiod) fetches the patches without the flag, and is not reported as without effect."""
    with _meshd_with_runtime_patch(tmp_path) as m:
        token = m.token(NS, "webapp")
        layers = {}
        for value in ("true", "false"):
            pc = json.dumps({"proxyMetadata": {"BOOTSTRAP_XDS_AGENT": value}})
            cp, out = _pod_init(tmp_path, f"127.0.0.1:{m.secure_port}", m.root_cert, token,
                                "--proxy-config-json", pc, fetch_flag=False)
            assert cp.returncode == 0, cp.stderr
            assert "BOOTSTRAP_XDS_AGENT" not in cp.stdout + cp.stderr  # not "has no effect"
            layers[value] = [layer["name"] for layer in json.loads(out.read_text())["layered_runtime"]["layers"]]
        assert layers == {"true": ["global config", "ef-layer"], "false": ["global config"]}


def test_the_fetch_of_a_vm_joining_a_workload_group_does_not_register_it(tmp_path):
    """The fetch is not the proxy: its node leaves AUTO_REGISTER_GROUP out, so no
    WorkloadEntry is made for it (and none removed under the Envoy that follows)."""
    from controlplane.bootstrap import XdsTls
    from controlplane.bootstrap_patches import fetch
    from tests.support.harness import http_get

    group = f"""
apiVersion: networking.istio.io/v1
kind: WorkloadGroup
metadata: {{name: webapp-vms, namespace: {NS}}}
spec:
  metadata:
    labels: {{app: webapp}}
  template:
    serviceAccount: webapp
"""
    with _meshd_with_runtime_patch(tmp_path, {"group.yaml": group}) as m:
        doc = build_bootstrap(BootstrapParams(
            proxy_type="sidecar", namespace=NS, pod="vm-1", ip="10.0.0.9", xds_address=f"127.0.0.1:{m.secure_port}",
            labels={"app": "webapp"}, service_account="webapp", auto_register_group="webapp-vms"))
        tls = XdsTls(root_cert_pem=m.root_cert.read_text(), token=m.token(NS, "webapp"))
        patch, _ = fetch(doc, f"127.0.0.1:{m.secure_port}", tls)
        assert [layer.name for layer in patch.layered_runtime.layers] == ["ef-layer"]  # selected by app=webapp
        status, body = http_get("127.0.0.1", m.monitoring_port, "/debug/configz")
        assert status == 200
        configz = json.loads(body)
        registration = configz["autoRegistration"]
        assert (registration["registered"], registration["pendingCleanup"]) == (0, []), registration
        assert not [o for o in configz.get("objects", []) if o.get("kind") == "WorkloadEntry"]


def test_a_failed_fetch_is_a_clear_error_and_writes_nothing(tmp_path):
    from tests.support.harness import free_port, meshd_cli

    port = free_port("127.0.0.1")  # nobody listens
    out = tmp_path / "envoy.json"
    cp = meshd_cli("bootstrap", "--xds-address", f"127.0.0.1:{port}", "--fetch-envoy-filters", "--fetch-timeout", "3s",
                   "--output", str(out), check=False)
    assert cp.returncode == 2
    assert cp.stderr.startswith(f"meshd bootstrap: fetching the EnvoyFilter BOOTSTRAP patches from meshd at 127.0.0.1:{port}: "), cp.stderr
    assert not out.exists()


def test_running_proxies_without_their_current_patches_are_reported():
    from controlplane.debug.bootstrap_patches import CHANGED, NOT_FETCHED, BootstrapPatchReport

    gen = Generator()
    mesh = chapter9.mesh(TAGS)
    current = gen.generate(mesh, WEBAPP_PROXY, names.BOOTSTRAP)[names.BOOTSTRAP_RESOURCE].version

    def webapp(pod: str, marker: str | None):
        md = dict(WEBAPP_PROXY.metadata)
        if marker is not None:
            md[MARKER] = marker
        return parse_node(f"sidecar~10.0.0.{len(pod)}~{pod}.{NS}~{NS}.svc.cluster.local", md)

    unselected = parse_node(CATALOG_PROXY.id, dict(CATALOG_PROXY.metadata))  # no marker, nothing selects it
    running = [webapp("fresh", current), webapp("stale-1", "0123456789abcdef"), webapp("unfetched", None),
               webapp("fetch", "fetching"), unselected]
    report = BootstrapPatchReport(gen, lambda: running)
    rows = report.rows(mesh)
    assert [(r["proxy"].split("~")[2].split(".")[0], r["reason"], r["envoyFilters"]) for r in rows] == [
        ("stale-1", CHANGED, [f"{NS}/stats-tags"]), ("unfetched", NOT_FETCHED, [f"{NS}/stats-tags"])]
    assert all(r["current"] == current for r in rows)
    assert report.rows(None) == []
    # deleted: a proxy started with patches meshd no longer serves it is out of date too
    assert [r["proxy"].split("~")[2].split(".")[0] for r in report.rows(chapter9.mesh())] == ["fresh", "stale-1"]


def test_a_change_under_a_running_proxy_is_logged_once():
    from structlog.testing import capture_logs

    from controlplane.debug.bootstrap_patches import BootstrapPatchReport

    gen = Generator()
    started = chapter9.mesh(TAGS)
    version = gen.generate(started, WEBAPP_PROXY, names.BOOTSTRAP)[names.BOOTSTRAP_RESOURCE].version
    running = parse_node(WEBAPP_PROXY.id, {**WEBAPP_PROXY.metadata, MARKER: version})
    report = BootstrapPatchReport(gen, lambda: [running])
    changed = chapter9.mesh(TAGS.replace("tenant", "team"))
    with capture_logs() as logs:
        for mesh in (started, changed, changed, chapter9.mesh(TAGS.replace("tenant", "team"), chapter9.STRICT_MESH)):
            report.observe(mesh)
    events = [e for e in logs if e["event"] == "bootstrap patches not applied"]
    assert [(e["proxy"], e["envoy_filters"], e["written"]) for e in events] == [
        (WEBAPP_PROXY.id, [f"{NS}/stats-tags"], version)]
