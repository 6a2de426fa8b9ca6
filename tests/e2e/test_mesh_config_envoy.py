"""The mesh config with real Envoys on the test bed (issue 18, point 5).

webapp and catalog with sidecars (every Envoy from `meshd bootstrap --mesh-config`),
meshd serving `--mesh-config FILE`:

- accessLogFile /dev/stdout with a custom accessLogFormat: a request from webapp to
  catalog's VIP writes a line in that format on both sidecars (outbound, inbound);
- the mesh config file changed while everything runs (JSON encoding): meshd pushes it
  and the next request is logged as JSON, with no Envoy restarted;
- defaultConfig.proxyStatsMatcher: Envoy's /stats keeps the configured prefix and drops
  what neither it nor Istio's inclusion list names;
- the other fields changed live (inboundTrafficPolicy LOCALHOST, enableAutoMtls false with
  a DestinationRule asking for ISTIO_MUTUAL, trustDomainAliases, protocolDetectionTimeout,
  defaultHttpRetryPolicy): the Envoys take all of it (no update rejected, checked at
  teardown), requests still succeed, and the application now sees its connections
  from 127.0.0.1 (LOCALHOST) instead of the sidecar's 127.0.0.6.
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


EVERYTHING = JSON_LOGS + """\
inboundTrafficPolicy: {mode: LOCALHOST}
enableAutoMtls: false
trustDomainAliases: [old.example]
protocolDetectionTimeout: 1s
defaultHttpRetryPolicy: {attempts: 1, retryOn: "connect-failure,503"}
"""
ISTIO_MUTUAL = f"""
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: catalog, namespace: {NS}}}
spec:
  host: catalog.{NS}.svc.cluster.local
  trafficPolicy: {{tls: {{mode: ISTIO_MUTUAL}}}}
"""


def test_the_other_fields_changed_live_reach_envoy_and_traffic(mesh):
    def peer() -> str:
        r = mesh.request("webapp", mesh.vip("catalog", 80, "/peer"))
        return json.loads(r.body)["peer"].split(":")[0] if r.status == "200" else r.status

    assert peer() == "127.0.0.6"  # PASSTHROUGH: the sidecar connects from 127.0.0.6 to the pod IP
    mesh.apply("catalog-mtls", ISTIO_MUTUAL)
    tmp = mesh.mesh_config.with_suffix(".tmp")
    tmp.write_text(EVERYTHING)
    tmp.replace(mesh.mesh_config)
    wait_for(lambda: peer() == "127.0.0.1", 20, interval=0.5, what="catalog's app reached at 127.0.0.1 (LOCALHOST)")
    webapp = mesh.envoys["webapp"]

    def clusters() -> list[dict]:
        return webapp.config_dump("dynamic_active_clusters")["configs"]

    def catalog_sans(configs: list[dict]) -> list[str]:
        catalog = next(c["cluster"] for c in configs if c["cluster"]["name"] == CATALOG)
        socket = catalog.get("transport_socket")
        if socket is None:
            return []
        return [m["matcher"]["exact"] for m in socket["typed_config"]["common_tls_context"]
                ["combined_validation_context"]["default_validation_context"]["match_typed_subject_alt_names"]]

    # catalog's inbound change (above) and webapp's clusters are pushed to two proxies:
    # wait for webapp's too.
    wait_for(lambda: f"spiffe://old.example/ns/{NS}/sa/catalog" in catalog_sans(clusters()), 20, interval=0.5,
             what="webapp's catalog cluster accepts the trust domain alias")
    configs = clusters()
    catalog = next(c["cluster"] for c in configs if c["cluster"]["name"] == CATALOG)
    # enableAutoMtls false: the ISTIO_MUTUAL rule is the only mTLS left; webapp's own
    # service, which no rule names, is reached in plaintext.
    assert "transport_socket_matches" not in catalog
    own = next(c["cluster"] for c in configs if c["cluster"]["name"] == f"outbound|80||webapp.{NS}.svc.cluster.local")
    assert "transport_socket" not in own and "transport_socket_matches" not in own, own
    mesh.apply("catalog-mtls", None)
    tmp.write_text(JSON_LOGS)
    tmp.replace(mesh.mesh_config)
    wait_for(lambda: peer() == "127.0.0.6", 20, interval=0.5, what="PASSTHROUGH again")


def test_proxy_stats_matcher_keeps_what_it_names(mesh):
    mesh.expect("webapp", mesh.vip("catalog", 80, "/stats-check"), 0, "200")
    stats = mesh.envoys["webapp"].stats()
    assert stats.get(f"cluster.{CATALOG}.upstream_rq_total", 0) >= 1, sorted(stats)[:40]
    # Istio's list keeps the managers' stats; what nobody names is gone.
    assert "cluster_manager.cds.update_success" in stats and "listener_manager.lds.update_success" in stats
    assert not [k for k in stats if k.startswith("listener.") or k.startswith("cluster.outbound|80||webapp")]
    assert not [k for k in stats if k.startswith("http.")], [k for k in stats if k.startswith("http.")][:5]


def test_the_bootstrap_carries_the_proxy_config(mesh):
    node = mesh.envoys["webapp"].bootstrap()["node"]
    assert node["metadata"]["PROXY_CONFIG"]["proxyStatsMatcher"] == {"inclusionPrefixes": ["cluster.outbound|80||catalog"]}

