"""/ui/ in a browser, on the chapter 9 mesh with real sidecars streaming their counters to
meshd's metrics service (`meshd bootstrap --metrics-service`): headless Chromium opens the
page; under PERMISSIVE a sidecar-less client's plaintext call shows as an open lock and
the sidecar-to-sidecar call as a lock; a mesh-wide STRICT policy then shows on the open
page, without a reload: catalog's mode turns STRICT and the client's calls show refused.
Screenshots are kept under $MESHD_TEST_ARTIFACTS (else the test's tmp dir).
"""
from __future__ import annotations

import json

import pytest

from tests.support.browser import Browser, screenshot_dir
from tests.support.harness import http_get, wait_for
from tests.testbed.fixtures import require_testbed
from tests.testbed.mesh import CATALOG_PORT, CHAPTER9_PODS, NS, Mesh, chapter9_layout, run_mesh

pytestmark = pytest.mark.e2e

CATALOG = f"catalog.{NS}.svc.cluster.local"
MTLS_EDGE = f"call:wl:{NS}/webapp->svc:{CATALOG}:traffic"
PLAIN_EDGE = f"call:outside->wl:{NS}/catalog:traffic"
REFUSED_EDGE = f"call:outside->wl:{NS}/catalog:refused"
STRICT = """
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: istio-system}
spec: {mtls: {mode: STRICT}}
"""


@pytest.fixture(scope="module")
def mesh(tmp_path_factory):
    require_testbed()
    with run_mesh(tmp_path_factory.mktemp("ui"), CHAPTER9_PODS, chapter9_layout,
                  bootstrap_args=["--metrics-service", "--metrics-flush-interval", "1s"]) as m:
        yield m


def row(table: str, attr: str, value: str) -> str:
    return f"document.querySelector('#{table} tr[{attr}=\"{value}\"]')"


def graph_edge(edge_id: str) -> str:
    return f"document.querySelector('#graph g.edge[data-edge-id=\"{edge_id}\"]')"


def test_page_shows_locks_modes_and_a_policy_change_live(mesh: Mesh, tmp_path):
    shots = screenshot_dir(tmp_path)
    mesh.expect("sleep", mesh.url("catalog", CATALOG_PORT), 0, "200")  # plaintext: no sidecar in sleep
    mesh.expect("webapp", mesh.vip("catalog"), 0, "200")  # sidecar to sidecar: auto mTLS
    try:
        with Browser(tmp_path) as b:
            b.open(f"http://127.0.0.1:{mesh.cp.monitoring_port}/ui/?interval=500")
            # PERMISSIVE: a lock on webapp -> catalog, an open lock on the plaintext call
            b.wait_for(f"{row('calls-table', 'data-edge-id', MTLS_EDGE)}?.dataset.lock === 'locked'",
                       "webapp -> catalog listed as mutual TLS")
            b.wait_for(f"{row('calls-table', 'data-edge-id', PLAIN_EDGE)}?.dataset.lock === 'open'",
                       "outside -> catalog listed as plaintext")
            assert b.eval(f"{graph_edge(MTLS_EDGE)}.querySelector('use').getAttribute('href')") == "#lock-closed"
            assert b.eval(f"{graph_edge(PLAIN_EDGE)}.querySelector('use').getAttribute('href')") == "#lock-open"
            assert "mutual TLS" in b.eval(f"{graph_edge(MTLS_EDGE)}.getAttribute('aria-label')")
            assert b.eval(f"{row('workloads-table', 'data-workload', NS + '/catalog')}.dataset.mode") == "PERMISSIVE"
            assert b.eval(f"{row('workloads-table', 'data-workload', NS + '/catalog')}"
                          ".dataset.plaintextAllowed") == "true"
            assert b.eval(f"{row('workloads-table', 'data-workload', NS + '/legacy')}.dataset.mode") == ""
            b.wait_for(f"{row('proxies-table', 'data-proxy', 'catalog-0.' + NS)}?.dataset.state === 'SYNCED'",
                       "catalog's proxy SYNCED")
            b.screenshot(shots / "ui-permissive.png")

            # STRICT, with the page open: no reload, the same document
            b.eval("window.__sameDocument = 'yes'")
            mesh.apply("pa-mesh", STRICT)
            b.wait_for(f"{row('workloads-table', 'data-workload', NS + '/catalog')}?.dataset.mode === 'STRICT'",
                       "catalog's mode STRICT on the open page")
            decided = b.eval(f"{row('workloads-table', 'data-workload', NS + '/catalog')}.cells[3].textContent")
            assert decided == "istio-system/default"
            mesh.expect("sleep", mesh.url("catalog", CATALOG_PORT), 56, "000")
            b.wait_for(f"{row('calls-table', 'data-edge-id', REFUSED_EDGE)}?.dataset.lock === 'refused'",
                       "the sidecar-less client's calls shown refused")
            mesh.expect("webapp", mesh.vip("catalog"), 0, "200")
            assert b.eval(f"{row('calls-table', 'data-edge-id', MTLS_EDGE)}.dataset.lock") == "locked"
            assert b.eval("window.__sameDocument") == "yes"
            b.screenshot(shots / "ui-strict.png")
    finally:
        mesh.apply("pa-mesh", None)


def test_istio_metrics_from_the_proxies_reports(mesh: Mesh):
    mesh.expect("webapp", mesh.vip("catalog"), 0, "200")

    def sample() -> float:
        status, body = http_get("127.0.0.1", mesh.cp.monitoring_port, "/metrics")
        assert status == 200
        text = body.decode()
        total = 0.0
        for line in text.splitlines():
            if (line.startswith("istio_requests_total{") and 'reporter="source"' in line
                    and 'source_workload="webapp"' in line and f'destination_service="{CATALOG}"' in line
                    and 'destination_workload="catalog"' in line and 'response_code_class="2xx"' in line
                    and 'connection_security_policy="mutual_tls"' in line
                    and 'source_principal="spiffe://cluster.local/ns/istioinaction/sa/webapp"' in line):
                total += float(line.rsplit(" ", 1)[1])
        return total

    wait_for(lambda: sample() >= 1, 20, what="istio_requests_total for webapp -> catalog")
    before = sample()
    mesh.expect("webapp", mesh.vip("catalog"), 0, "200")
    wait_for(lambda: sample() > before, 20, what="istio_requests_total grows with a request")
    status, body = http_get("127.0.0.1", mesh.cp.monitoring_port, "/ui/model.json")
    assert status == 200
    model = json.loads(body)
    assert model["telemetry"]["proxiesReporting"] == 3  # webapp, catalog, the gateway
