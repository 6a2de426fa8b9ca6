"""Telemetry with real Envoy sidecars on the test bed (issue 21): webapp and catalog with
sidecars, a Zipkin-protocol collector (a small HTTP server taking POST /api/v2/spans) in a
pod of istio-system without a sidecar, meshd serving a mesh config with a JSON file access
log provider and a zipkin tracing provider.

- a Telemetry enabling the file provider makes webapp's Envoy write JSON access log lines
  for a request to catalog; after the Telemetry is deleted, requests write none;
- a Telemetry with zipkin tracing at 100 % makes a request through webapp's sidecar reach
  the collector as a span.
"""
from __future__ import annotations

import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import pytest

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
                  meshd_args=["--mesh-config", str(work / "mesh.yaml")], prepare=start_collector) as m:
        m.access_log_path, m.spans_path = access_log, spans
        yield m
    shutil.rmtree(logs, ignore_errors=True)


def _lines(path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _has_access_log(mesh) -> bool:
    return str(mesh.access_log_path) in json.dumps(mesh.envoys["webapp"].config_dump("dynamic_listeners"))


def test_access_logs_in_the_configured_format_while_a_telemetry_enables_them(mesh):
    mesh.expect("webapp", mesh.vip("catalog", 80, "/before"), 0, "200")
    assert _lines(mesh.access_log_path) == []
    mesh.apply("logs", ACCESS_LOGS)

    def logged():
        mesh.request("webapp", mesh.vip("catalog", 80, "/logged"))
        return [line for line in _lines(mesh.access_log_path) if line.get("path") == "/logged"]

    got = wait_for(logged, 30, interval=0.5, what="webapp's Envoy writing a JSON access log line")
    assert got[0]["code"] == 200 and got[0]["upstream"] == f"outbound|80||catalog.{NS}.svc.cluster.local"
    mesh.apply("logs", None)
    wait_for(lambda: not _has_access_log(mesh), 30, interval=0.5, what="the access log gone from webapp's listeners")
    count = len(_lines(mesh.access_log_path))
    mesh.expect("webapp", mesh.vip("catalog", 80, "/after"), 0, "200")
    time.sleep(1)  # Envoy flushes file logs every second: a line written now would show by then
    assert [line for line in _lines(mesh.access_log_path)[count:] if line.get("path") == "/after"] == []


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
