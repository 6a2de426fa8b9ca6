"""Telemetry with real Envoy sidecars on the test bed (issue 21): webapp and catalog with
sidecars, a Zipkin-protocol collector (a small HTTP server taking POST /api/v2/spans) in a
pod of istio-system without a sidecar, meshd serving a mesh config with a JSON file access
log provider and a zipkin tracing provider.

- a Telemetry enabling the file provider makes webapp's Envoy write JSON access log lines
  for a request to catalog; after the Telemetry is deleted, requests write none (shown by a
  later request that webapp's Envoy logs to the same file, on its inbound side: Envoy
  writes one file's lines in order, so a line of the earlier request would be there first);
- a Telemetry with zipkin tracing at 100 % makes a request through webapp's sidecar reach
  the collector as a span;
- Telemetry metrics overrides change what meshd's /metrics serves of the sidecars' reports
  (their metrics service streams): webapp's istio_requests_total without source_principal
  and with a literal tag, then disabled, then back as Istio labels it once deleted.
"""
from __future__ import annotations

import json
import shutil
import sys
import tempfile
from pathlib import Path

import pytest

from tests.support.harness import http_get
from tests.support.manifests import documents, service
from tests.testbed.bed import wait_for
from tests.testbed.fixtures import require_testbed
from tests.testbed.mesh import CATALOG_PORT, CHAPTER9_PODS, NS, WEBAPP_PORT, PodSpec, pods_yaml, run_mesh

pytestmark = pytest.mark.e2e

ZIPKIN_PORT = 9411
PODS = {**{name: CHAPTER9_PODS[name] for name in ("webapp", "catalog")},
        "zipkin": PodSpec("istio-system", None, "zipkin", "app=zipkin")}

# The collector (HTTP/1.1, Envoy may send chunked bodies): appends every POSTed span batch (one JSON document per line) to a file.
COLLECTOR = r'''
import http.server, sys
out, port = sys.argv[1], int(sys.argv[2])
class H(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        if self.headers.get("transfer-encoding", "").lower() == "chunked":
            body = b""
            while True:
                size = int(self.rfile.readline().split(b";")[0], 16)
                chunk = self.rfile.read(size + 2)[:size]
                if not size:
                    break
                body += chunk
        else:
            body = self.rfile.read(int(self.headers.get("content-length") or 0))
        if self.path == "/api/v2/spans":
            with open(out, "ab") as f:
                f.write(body.replace(b"\n", b" ") + b"\n")
        self.send_response(202)
        self.end_headers()
    def log_message(self, *a):
        pass
srv = http.server.ThreadingHTTPServer(("0.0.0.0", port), H)
print("READY", flush=True)
srv.serve_forever()
'''


def layout(pods, vips) -> str:
    return documents(service("webapp", NS, [("http", 80, WEBAPP_PORT)], cluster_ip=vips["webapp"]),
                     service("catalog", NS, [("http", 80, CATALOG_PORT)], cluster_ip=vips["catalog"]),
                     service("zipkin", "istio-system", [("http-zipkin", ZIPKIN_PORT, ZIPKIN_PORT)],
                             cluster_ip=vips["zipkin"])) + pods_yaml(PODS, pods)


def telemetry(name: str, body: str) -> str:
    return f"apiVersion: telemetry.istio.io/v1\nkind: Telemetry\nmetadata: {{name: {name}, namespace: {NS}}}\nspec:\n{body}"


ACCESS_LOGS = telemetry("logs", "  selector: {matchLabels: {app: webapp}}\n"
                                "  accessLogging: [{match: {mode: CLIENT}, providers: [{name: json-file}]}]\n")
# Namespace-wide, the inbound side only: the marker requests that show what webapp's Envoy wrote.
SERVER_LOGS = telemetry("server-logs", "  accessLogging: [{match: {mode: SERVER}, providers: [{name: json-file}]}]\n")
TRACING = telemetry("traces", "  tracing: [{providers: [{name: zipkin}], randomSamplingPercentage: 100,"
                              " customTags: {meshd-test: {literal: {value: telemetry}}}}]\n")


@pytest.fixture(scope="module")
def mesh(tmp_path_factory):
    require_testbed()
    work = tmp_path_factory.mktemp("telemetry")
    # Envoy runs as uid 1337 (istio-proxy): its log file lives where that user may write.
    logs = Path(tempfile.mkdtemp(prefix="meshd-telemetry-"))
    logs.chmod(0o777)
    access_log, spans = logs / "access.log", work / "spans.jsonl"
    (work / "mesh.yaml").write_text(f"""
extensionProviders:
- name: json-file
  envoyFileAccessLog:
    path: {access_log}
    logFormat: {{labels: {{path: "%REQ(:PATH)%", code: "%RESPONSE_CODE%", upstream: "%UPSTREAM_CLUSTER%"}}}}
- name: zipkin
  zipkin: {{service: zipkin.istio-system.svc.cluster.local, port: {ZIPKIN_PORT}}}
""")
    (work / "collector.py").write_text(COLLECTOR)

    def start_collector(bed, pods, vips) -> None:
        p = pods["zipkin"].spawn([sys.executable, str(work / "collector.py"), str(spans), str(ZIPKIN_PORT)],
                                 name="zipkin", stdout_pipe=True)
        p.wait_line("READY", timeout=15)

    with run_mesh(work, PODS, layout, services=("webapp", "catalog", "zipkin"),
                  meshd_args=["--mesh-config", str(work / "mesh.yaml")], prepare=start_collector,
                  bootstrap_args=["--metrics-service", "--metrics-flush-interval", "1s"]) as m:
        m.access_log_path, m.spans_path = access_log, spans
        yield m
    shutil.rmtree(logs, ignore_errors=True)


def _lines(path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _logging_listeners(mesh) -> set[str]:
    """webapp's listeners that write to the access log file."""
    dump = mesh.envoys["webapp"].config_dump("dynamic_listeners")
    return {entry["name"] for entry in dump["configs"] if str(mesh.access_log_path) in json.dumps(entry)}


def test_access_logs_in_the_configured_format_while_a_telemetry_enables_them(mesh):
    mesh.expect("webapp", mesh.vip("catalog", 80, "/before"), 0, "200")
    assert _lines(mesh.access_log_path) == []
    mesh.apply("logs", ACCESS_LOGS)

    def logged():
        mesh.request("webapp", mesh.vip("catalog", 80, "/logged"))
        return [line for line in _lines(mesh.access_log_path) if line.get("path") == "/logged"]

    got = wait_for(logged, 30, interval=0.5, what="webapp's Envoy writing a JSON access log line")
    assert got[0]["code"] == 200 and got[0]["upstream"] == f"outbound|80||catalog.{NS}.svc.cluster.local"
    mesh.apply("server-logs", SERVER_LOGS)
    mesh.apply("logs", None)
    wait_for(lambda: _logging_listeners(mesh) == {"virtualInbound"}, 30, interval=0.5,
             what=lambda: f"webapp logging on its inbound side only; logging: {_logging_listeners(mesh)}")
    mesh.expect("webapp", mesh.vip("catalog", 80, "/after"), 0, "200")

    def marker():  # catalog -> webapp, logged by webapp's Envoy after anything it wrote for /after
        mesh.request("catalog", mesh.vip("webapp", 80, "/marker"))
        return [line for line in _lines(mesh.access_log_path) if line.get("path") == "/marker"]

    wait_for(marker, 30, interval=0.5, what="webapp's Envoy logging the marker request on its inbound side")
    # catalog's inbound side logs /after too (upstream inbound|...); webapp's outbound side must not
    assert [line for line in _lines(mesh.access_log_path)
            if line.get("path") == "/after" and line.get("upstream", "").startswith("outbound|")] == []
    mesh.apply("server-logs", None)


def test_a_request_through_a_sidecar_reaches_the_zipkin_collector_as_a_span(mesh):
    mesh.apply("traces", TRACING)

    def span():
        mesh.request("webapp", mesh.vip("catalog", 80, "/traced"))
        for batch in _lines(mesh.spans_path):
            for s in batch:
                if s.get("tags", {}).get("meshd-test") == "telemetry" and "/traced" in s.get("tags", {}).get("http.url", ""):
                    return s
        return None

    s = wait_for(span, 40, interval=1, what=lambda: "a span at the zipkin collector; collector got: "
                 f"{mesh.spans_path.read_text()[:1500] if mesh.spans_path.exists() else None}; webapp's Envoy: "
                 f"{mesh.envoys['webapp'].stats('zipkin')} {mesh.envoys['webapp'].stats('tracing')}")
    assert s["traceId"] and s["kind"] in ("CLIENT", "SERVER")
    mesh.apply("traces", None)


METRICS_TAGS = telemetry("metrics", "  selector: {matchLabels: {app: webapp}}\n  metrics:\n  - overrides:\n"
                                    "    - match: {metric: REQUEST_COUNT, mode: CLIENT}\n"
                                    "      tagOverrides: {source_principal: {operation: REMOVE}, meshd_test: {value: \"'e2e'\"}}\n")
METRICS_OFF = telemetry("metrics", "  selector: {matchLabels: {app: webapp}}\n  metrics:\n  - overrides:\n"
                                   "    - {match: {metric: REQUEST_COUNT, mode: CLIENT}, disabled: true}\n")


def _webapp_samples(mesh, metric: str) -> list[str]:
    """The lines of `metric` meshd serves for what webapp's sidecar reported calling catalog."""
    status, body = http_get("127.0.0.1", mesh.cp.monitoring_port, "/metrics")
    assert status == 200
    return [line for line in body.decode().splitlines() if line.startswith(metric + "{")
            and 'reporter="source"' in line and 'source_workload="webapp"' in line
            and f'destination_service="catalog.{NS}.svc.cluster.local"' in line]


def test_telemetry_metrics_overrides_change_what_the_metrics_service_serves(mesh):
    def requests() -> list[str]:
        mesh.request("webapp", mesh.vip("catalog", 80, "/counted"))
        return _webapp_samples(mesh, "istio_requests_total")

    got = wait_for(requests, 30, interval=1, what="istio_requests_total of webapp -> catalog")
    assert all(f'source_principal="spiffe://cluster.local/ns/{NS}/sa/webapp"' in line for line in got)
    mesh.apply("metrics", METRICS_TAGS)
    wait_for(lambda: any('meshd_test="e2e"' in line and "source_principal" not in line for line in requests()), 30,
             interval=1, what=lambda: f"webapp's requests without source_principal, with meshd_test; got {requests()}")
    mesh.apply("metrics", METRICS_OFF)
    wait_for(lambda: requests() == [], 30, interval=1, what="webapp's REQUEST_COUNT disabled on its client side")
    assert _webapp_samples(mesh, "istio_tcp_connections_opened_total")  # another metric: still there
    mesh.apply("metrics", None)
    wait_for(lambda: any("source_principal" in line for line in requests()), 30, interval=1,
             what="webapp's requests with Istio's labels again")
