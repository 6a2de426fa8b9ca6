"""`meshd proxy-config` against istioctl's own golden outputs, byte for byte.

Each case feeds one of istioctl's test inputs (an Envoy config dump) to
`meshd proxy-config ... --file <dump>` and compares stdout with the file istioctl's Go test
compares its writer's output with (../shared/corpus/istioctl-golden, see its README).
Tabwriter padding and trailing spaces included.
"""
from __future__ import annotations

import contextlib
import difflib
import io
from pathlib import Path

import pytest

from controlplane import cli
from tests.support.paths import SHARED

GOLDEN = SHARED / "corpus" / "istioctl-golden" / "istioctl" / "pkg"
PROXYCONFIG = GOLDEN / "proxyconfig" / "testdata"
CONFIGDUMP = GOLDEN / "writer" / "envoy" / "configdump" / "testdata"


def golden(path: Path) -> str:
    if not path.exists():
        pytest.fail(f"istioctl golden file missing: {path} (expected ../shared/corpus beside the repo)")
    return path.read_text()


def run(*argv: str) -> tuple[int, str]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = cli.main(list(argv))
    return code, out.getvalue()


def same(got: str, want: str) -> None:
    if got != want:
        diff = "".join(difflib.unified_diff(want.splitlines(True), got.splitlines(True), "istioctl", "meshd"))
        pytest.fail("output differs from istioctl's golden:\n" + diff)


CASES = [
    # (argv after `proxy-config`, input dump, expected output)
    (["all"], PROXYCONFIG / "config_dump.json", PROXYCONFIG / "config_dump_summary.txt"),
    (["all", "--with-headers"], PROXYCONFIG / "config_dump.json", PROXYCONFIG / "config_dump_summary_withheaders.txt"),
    (["endpoint"], CONFIGDUMP / "endpoint" / "configdump.json", CONFIGDUMP / "endpoint" / "emptyfilter_output.txt"),
    (["endpoint", "-o", "json"], CONFIGDUMP / "endpoint" / "configdump.json",
     CONFIGDUMP / "endpoint" / "emptyfilter_output.json"),
    (["endpoint", "-o", "yaml"], CONFIGDUMP / "endpoint" / "configdump.json",
     CONFIGDUMP / "endpoint" / "emptyfilter_output.yaml"),
    (["endpoint", "--port", "8080"], CONFIGDUMP / "endpoint" / "configdump.json",
     CONFIGDUMP / "endpoint" / "portfilter_output.txt"),
    (["endpoint", "--port", "8080", "-o", "json"], CONFIGDUMP / "endpoint" / "configdump.json",
     CONFIGDUMP / "endpoint" / "portfilter_output.json"),
    (["endpoint", "--port", "8080", "-o", "yaml"], CONFIGDUMP / "endpoint" / "configdump.json",
     CONFIGDUMP / "endpoint" / "portfilter_output.yaml"),
    (["route"], CONFIGDUMP / "routes" / "empty-gateway" / "configdump.json",
     CONFIGDUMP / "routes" / "empty-gateway" / "output.txt"),
    (["route"], CONFIGDUMP / "routes" / "istio-gateway-http-route-prefix" / "configdump.json",
     CONFIGDUMP / "routes" / "istio-gateway-http-route-prefix" / "output.txt"),
    (["route"], CONFIGDUMP / "routes" / "k8s-gateway-http-route-path-prefix" / "configdump.json",
     CONFIGDUMP / "routes" / "k8s-gateway-http-route-path-prefix" / "output.txt"),
    (["secret"], CONFIGDUMP / "secret" / "istio" / "config_dump.json", CONFIGDUMP / "secret" / "istio" / "output"),
    (["secret"], CONFIGDUMP / "secret" / "spire" / "config_dump.json", CONFIGDUMP / "secret" / "spire" / "output"),
    (["bootstrap"], CONFIGDUMP / "configdump.json", CONFIGDUMP / "bootstrapdump.json"),
    (["bootstrap", "-o", "short"], CONFIGDUMP / "configdump.json", CONFIGDUMP / "versionsummary.txt"),
]


@pytest.mark.parametrize("argv,dump,expected", CASES,
                         ids=[" ".join(a) + " " + str(d.relative_to(GOLDEN)) for a, d, _ in CASES])
def test_matches_istioctl_golden(argv, dump, expected):
    code, out = run("proxy-config", *argv, "--file", str(dump))
    assert code == 0
    same(out, golden(expected))


def test_aliases_and_stdin(monkeypatch):
    dump = CONFIGDUMP / "endpoint" / "configdump.json"
    monkeypatch.setattr("sys.stdin", io.StringIO(dump.read_text()))
    code, out = run("pc", "ep", "--file", "-", "--port", "8080")
    assert code == 0
    same(out, golden(CONFIGDUMP / "endpoint" / "portfilter_output.txt"))


def test_cluster_and_listener_tables_from_the_all_golden():
    """istioctl has no stand-alone cluster/listener goldens at this commit; the `all`
    summary carries both tables, so the stand-alone ones must be the same rows without
    the NAME column."""
    code, clusters = run("proxy-config", "cluster", "--file", str(PROXYCONFIG / "config_dump.json"))
    assert code == 0
    assert clusters.splitlines()[0].split() == ["SERVICE", "FQDN", "PORT", "SUBSET", "DIRECTION", "TYPE",
                                                "DESTINATION", "RULE"]
    assert "httpbin.default.svc.cluster.local     8000     http       inbound-vip     EDS" in clusters
    code, listeners = run("proxy-config", "listener", "--file", str(PROXYCONFIG / "config_dump.json"))
    assert listeners.splitlines()[0] == "ADDRESSES PORT  MATCH DESTINATION"
    assert "0.0.0.0   15021 ALL   Inline Route: /healthz/ready*" in listeners
    code, brief = run("proxy-config", "listener", "--no-verbose", "--file", str(PROXYCONFIG / "config_dump.json"))
    assert brief.splitlines()[0] == "ADDRESSES PORT  TYPE"


def test_cluster_filters():
    dump = str(PROXYCONFIG / "config_dump.json")
    _, out = run("proxy-config", "cluster", "--file", dump, "--port", "8000")
    assert len(out.splitlines()) == 2 and "8000" in out.splitlines()[1]
    _, out = run("proxy-config", "cluster", "--file", dump, "--direction", "outbound")
    assert len(out.splitlines()) == 1
    _, out = run("proxy-config", "cluster", "--file", dump, "--fqdn", "httpbin", "-o", "json")
    assert '"name": "inbound-vip|8000|http|httpbin.default.svc.cluster.local"' in out


def test_route_name_filter_and_brief():
    dump = str(CONFIGDUMP / "routes" / "istio-gateway-http-route-prefix" / "configdump.json")
    _, out = run("proxy-config", "route", "--file", dump, "--name", "http.8080")
    assert out.splitlines()[1].startswith("http.8080     httpbin.example.com:80")
    assert len(out.splitlines()) == 2
    _, out = run("proxy-config", "route", "--file", dump, "--no-verbose")
    assert out.splitlines()[0].split() == ["NAME", "VIRTUAL", "HOSTS"]


def test_errors_are_reported_not_raised(tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text("{}")
    assert cli.main(["proxy-config", "cluster", "--file", str(bad)]) == 1
    assert "not an Envoy config dump" in capsys.readouterr().err
    assert cli.main(["proxy-config", "cluster", "--meshd", "http://127.0.0.1:9"]) == 1  # no proxy named
    assert "needs a proxy" in capsys.readouterr().err
    assert cli.main(["proxy-config", "cluster", "x.y", "--meshd", "http://127.0.0.1:9"]) == 1
    assert "GET http://127.0.0.1:9/debug/config_dump" in capsys.readouterr().err
