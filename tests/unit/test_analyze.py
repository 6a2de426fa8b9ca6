"""`meshd analyze` against Istio's own analyzer test cases.

../shared/corpus/INDEX.md lists, for every input under
istio/pkg/config/analysis/analyzers/testdata, the cases of Istio's analyzers_test.go that
use it: the analyzer run and the messages expected (`Code Kind namespace/name`). For each
case whose analyzer meshd implements, meshd must report exactly the expected messages of
the codes it implements, and nothing for cases that expect none. Inputs are loaded as
Istio's test loads them (objects without a namespace keep an empty one).
"""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from controlplane.analysis import BY_NAME, analyze, messages
from controlplane.analysis.resources import parse_text
from tests.support.analyzer_cases import TESTDATA, istio_cases
from tests.support.analyzer_cases import run_cli as run

CASES = istio_cases()
IMPLEMENTED = {name: c for name, c in CASES.items() if c["analyzer"] in BY_NAME}
CODES = {t.name for t in messages.ALL}


def test_cases_were_found():
    assert len(CASES) > 80
    assert len(IMPLEMENTED) >= 40  # the corpus cases of the analyzers meshd implements


@pytest.mark.parametrize("case", sorted(IMPLEMENTED))
def test_istio_analyzer_case(case):
    c = IMPLEMENTED[case]
    resources = []
    for f in sorted(c["files"]):
        resources += parse_text((TESTDATA / f).read_text(), f, "")
    got = sorted(f"{m.type.name} {m.resource.friendly_name}" for m in analyze(resources, [BY_NAME[c["analyzer"]]]))
    expected = [] if c["expect"] == "no messages" else [e.strip() for e in c["expect"].split(";")]
    expected = sorted(e for e in expected if e.split()[0] in CODES)
    assert got == expected


def test_cli_output_format_and_exit_code(capsys):
    code, out = run("analyze", str(TESTDATA / "virtualservice_gateways.yaml"))
    assert code == 79
    line = next(l for l in out.splitlines() if "[IST0101]" in l)
    assert re.fullmatch(r'Error \[IST0101\] \(VirtualService default/httpbin-bogus \S+virtualservice_gateways\.yaml:\d+\) '
                        r'Referenced gateway not found: "httpbin-gateway-bogus"', line), line
    assert "Analyzers found issues" in capsys.readouterr().err


def test_issue_examples(tmp_path):
    """The checks the operator's-view issue names, on a small hand-written mesh."""
    (tmp_path / "mesh.yaml").write_text("""
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: gw, namespace: default}
spec:
  selector: {istio: ingressgateway}
  servers: [{port: {number: 80, name: http, protocol: HTTP}, hosts: [a.example.com]}]
---
apiVersion: v1
kind: Service
metadata: {name: foo, namespace: default}
spec: {selector: {app: foo}, ports: [{name: http, port: 80}]}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: foo, namespace: default}
spec:
  hosts: [b.example.com]
  gateways: [gw, missing-gw]
  http:
  - route:
    - destination: {host: bar}
    - destination: {host: foo, subset: v9}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: one, namespace: default}
spec: {hosts: [foo], http: [{route: [{destination: {host: foo}}]}]}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: two, namespace: default}
spec: {hosts: [foo], http: [{route: [{destination: {host: foo}}]}]}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: nobody, namespace: default}
spec:
  selector: {matchLabels: {app: nothing-here}}
  mtls: {mode: STRICT}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: ports-without-selector, namespace: default}
spec:
  portLevelMtls: {"8080": {mode: DISABLE}}
""")
    code, out = run("analyze", str(tmp_path))
    assert code == 79
    assert 'Error [IST0101] (VirtualService default/foo ' in out
    assert 'Referenced gateway not found: "missing-gw"' in out
    assert 'Referenced host not found: "bar"' in out
    assert 'Referenced host+subset in destinationrule not found: "foo+v9"' in out
    assert "one or more host [b.example.com] defined in VirtualService default/foo not found in Gateway default/gw." in out
    assert "[IST0109] (VirtualService default/one" in out and "[IST0109] (VirtualService default/two" in out
    assert ("Warning [IST0127] (PeerAuthentication default/nobody" in out
            and "No matching workloads for this resource with the following labels: app=nothing-here" in out)
    assert "[IST0106] (PeerAuthentication default/ports-without-selector" in out and \
        "portLevelMtls requires selector" in out
    # file and line point at the offending field
    assert re.search(r"VirtualService default/foo \S+mesh\.yaml:19\) Referenced gateway not found", out), out


def test_yaml_parse_errors_name_file_and_line(tmp_path, capsys):
    (tmp_path / "bad.yaml").write_text("apiVersion: v1\nkind: Service\nmetadata: {name: x\n")
    (tmp_path / "good.yaml").write_text("apiVersion: v1\nkind: Namespace\nmetadata: {name: ok}\n")
    code, out = run("analyze", str(tmp_path))
    err = capsys.readouterr().err
    assert code == 2
    assert re.search(r'errors parsing content "\S+bad\.yaml": yaml: line \d+:', err), err


def test_clean_input_and_json_output(tmp_path):
    code, out = run("analyze", str(Path(__file__).resolve().parents[2] / "deploy" / "examples"))
    assert code == 0 and "No validation issues found" in out
    code, out = run("analyze", "-o", "json", str(TESTDATA / "virtualservice_destinationrules.yaml"))
    import json

    data = json.loads(out)
    assert any(m["code"] == "IST0101" and m["origin"] == "VirtualService default/reviews-bogussubset" for m in data)


def test_failure_threshold_and_analyzer_selection(tmp_path):
    f = str(TESTDATA / "service-no-port-name.yaml")  # Info messages only
    assert run("analyze", "--analyzer", "service.PortNameAnalyzer", f)[0] == 0
    code, out = run("analyze", "--analyzer", "service.PortNameAnalyzer", "--failure-threshold", "Info", f)
    assert code == 79 and "Info [IST0118]" in out
    code, out = run("analyze", "--list-analyzers")
    assert "virtualservice.GatewayAnalyzer" in out


def test_against_a_running_meshd():
    """--meshd: the objects of meshd's store (its /debug/configz?content=true) are analyzed,
    and documents meshd refused are reported (IST0106) with the file they came from."""
    import http.server
    import json
    import threading

    import structlog

    from controlplane.config.objects import Origin
    from controlplane.config.parse import parse_document
    from controlplane.config.store import ConfigStore
    from controlplane.debug.views import DebugViews

    store = ConfigStore(logger=structlog.get_logger("test"))
    vs = {"apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
          "metadata": {"name": "web", "namespace": "default"},
          "spec": {"hosts": ["web"], "http": [{"route": [{"destination": {"host": "nowhere"}}]}]}}
    bad = {"apiVersion": "networking.istio.io/v1", "kind": "Gateway", "metadata": {"name": "gw"},
           "spec": {"servers": [{"port": {"number": 80, "name": "http", "protocol": "HTTPX"}, "hosts": ["*"]}]}}
    store.replace_location("/cfg/a.yaml", [parse_document(vs, Origin("file", "/cfg/a.yaml", 0)),
                                           parse_document(bad, Origin("file", "/cfg/a.yaml", 1))])
    ads = type("Ads", (), {"connections": lambda s: [], "mesh": None})()
    body = json.dumps(DebugViews(ads, store).configz(content=True)).encode()

    class H(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            assert self.path.startswith("/debug/configz?content=true")
            self.send_response(200)
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *a):
            pass

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        code, out = run("analyze", "--meshd", f"http://127.0.0.1:{srv.server_address[1]}")
    finally:
        srv.shutdown()
        srv.server_close()
    assert code == 79
    assert 'Error [IST0101] (VirtualService default/web /cfg/a.yaml) Referenced host not found: "nowhere"' in out
    assert "[IST0106] (Gateway default/gw /cfg/a.yaml) Schema validation error: spec.servers[0].port.protocol" in out
