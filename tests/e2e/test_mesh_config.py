"""The mesh config with real Envoys on the test bed (issue 18, point 5).

webapp and catalog with sidecars (every Envoy from `meshd bootstrap --mesh-config`),
meshd serving `--mesh-config FILE`:

- accessLogFile /dev/stdout with a custom accessLogFormat: a request from webapp to
  catalog's VIP writes a line in that format on both sidecars (outbound, inbound);
- the mesh config file changed while everything runs (JSON encoding): meshd pushes it
  and the next request is logged as JSON, with no Envoy restarted;
- defaultConfig.proxyStatsMatcher: Envoy's /stats keeps the configured prefix and drops
  what neither it nor Istio's inclusion list names.
"""
from __future__ import annotations

import json

import pytest

from tests.support.manifests import documents, service
from tests.testbed.bed import wait_for
from tests.testbed.fixtures import require_testbed
from tests.testbed.mesh import CATALOG_PORT, CHAPTER9_PODS, NS, WEBAPP_PORT, pods_yaml, run_mesh

pytestmark = pytest.mark.e2e

PODS = {name: CHAPTER9_PODS[name] for name in ("webapp", "catalog")}
CATALOG = f"outbound|80||catalog.{NS}.svc.cluster.local"
TEXT = """\
accessLogFile: /dev/stdout
accessLogFormat: "MESHLOG %REQ(:METHOD)% %REQ(:PATH)% %RESPONSE_CODE% %UPSTREAM_CLUSTER%"
defaultConfig:
  proxyStatsMatcher:
    inclusionPrefixes: ["cluster.outbound|80||catalog"]
"""
JSON_LOGS = """\
accessLogFile: /dev/stdout
accessLogEncoding: JSON
accessLogFormat: '{"meshlog": "json", "path": "%REQ(:PATH)%", "code": "%RESPONSE_CODE%"}'
defaultConfig:
  proxyStatsMatcher:
    inclusionPrefixes: ["cluster.outbound|80||catalog"]
"""


def layout(pods, vips) -> str:
    return documents(service("webapp", NS, [("http", 80, WEBAPP_PORT)], cluster_ip=vips["webapp"]),
                     service("catalog", NS, [("http", 80, CATALOG_PORT)], cluster_ip=vips["catalog"])) + pods_yaml(PODS, pods)


def log_lines(envoy, marker: str) -> list[str]:
    return [line for line in envoy.log(2000).splitlines() if marker in line]


def json_logs(envoy) -> list[dict]:
    out = []
    for line in log_lines(envoy, '"meshlog"'):
        out.append(json.loads(line[line.index("{"):]))
    return out


@pytest.fixture(scope="module")
def mesh(tmp_path_factory):
    require_testbed()
    work = tmp_path_factory.mktemp("mesh-config")
    mesh_config = work / "mesh.yaml"
    mesh_config.write_text(TEXT)
    args = ["--mesh-config", str(mesh_config)]
    with run_mesh(work, PODS, layout, services=("webapp", "catalog"),
                  meshd_args=args, bootstrap_args=args) as m:
        m.mesh_config = mesh_config
        yield m


def test_a_request_is_logged_in_the_configured_format_on_both_sidecars(mesh):
    mesh.expect("webapp", mesh.vip("catalog", 80, "/items"), 0, "200")
    webapp, catalog = mesh.envoys["webapp"], mesh.envoys["catalog"]
    wait_for(lambda: log_lines(webapp, "MESHLOG GET /items 200"), 10, what="webapp's access log line")
    line = log_lines(webapp, "MESHLOG GET /items 200")[-1]
    assert line.endswith(f"MESHLOG GET /items 200 {CATALOG}"), line
    wait_for(lambda: log_lines(catalog, "MESHLOG GET /items 200 inbound|3000||"), 10,
             what="catalog's inbound access log line")


def test_a_changed_mesh_config_reaches_the_running_sidecars(mesh):
    tmp = mesh.mesh_config.with_suffix(".tmp")
    tmp.write_text(JSON_LOGS)
    tmp.replace(mesh.mesh_config)
    webapp = mesh.envoys["webapp"]

    def logged_as_json() -> bool:
        mesh.request("webapp", mesh.vip("catalog", 80, "/json"))
        return any(entry.get("path") == "/json" for entry in json_logs(webapp))

    wait_for(logged_as_json, 20, interval=0.5, what="a JSON access log line after the mesh config change")
    entry = next(e for e in json_logs(webapp) if e.get("path") == "/json")
    assert entry["meshlog"] == "json" and str(entry["code"]) == "200", entry


def test_proxy_stats_matcher_keeps_what_it_names(mesh):
    mesh.expect("webapp", mesh.vip("catalog", 80, "/stats-check"), 0, "200")
    stats = mesh.envoys["webapp"].stats()
    assert stats.get(f"cluster.{CATALOG}.upstream_rq_total", 0) >= 1, sorted(stats)[:40]
    # Istio's list keeps the managers' stats; what nobody names is gone.
    assert "cluster_manager.cds.update_success" in stats and "listener_manager.lds.update_success" in stats
    assert not [k for k in stats if k.startswith("listener.") or k.startswith("cluster.outbound|80||webapp")]
    assert not [k for k in stats if k.startswith("http.")], [k for k in stats if k.startswith("http.")][:5]


def test_the_bootstrap_carries_the_proxy_config(mesh):
    dump = mesh.envoys["webapp"].config_dump()["configs"]
    node = next(c for c in dump if c["@type"].endswith("BootstrapConfigDump"))["bootstrap"]["node"]
    assert node["metadata"]["PROXY_CONFIG"]["proxyStatsMatcher"] == {"inclusionPrefixes": ["cluster.outbound|80||catalog"]}

