"""What a newcomer runs first (issue 16, items 5, 7, 8 and 9).

- `meshd validate` takes istioctl's `-f` (files, directories, `-`), reads files through
  the gate `meshd serve` reads them through (so the two agree, on Istio's bookinfo and on
  broken files), and prints every error of a document at once, each with file:line.
- `meshd --version`; proxies bootstrapped by meshd report its version, which
  `proxy-status` shows in istioctl's default (brief) layout; `-v 1` is the per-type one.
- `meshd analyze`'s footer says what was analyzed; a running meshd's parse errors are
  reported as parse errors, not as schema validation errors (IST0106).
- Error messages and log events name file:line (never `<unicode string>` or a document
  index).
- `meshd bootstrap` writes YAML for a .yaml/.yml name and JSON for anything else
  (istio-agent's envoy-rev.json, no extension) and on stdout, and Envoy accepts each.
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import pytest
import structlog
import yaml
from structlog.testing import capture_logs

from controlplane import cli
from controlplane.commands.validate import check_file
from controlplane.config.store import ConfigStore
from controlplane.sources.directory import DirectorySource
from tests.support.envoy import envoy, envoy_binary
from tests.support.harness import meshd, wait_for
from tests.support.paths import REPO, shared

VS = """apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: web
spec:
  hosts: [web]
  http:
  - route:
    - destination: {host: web}
"""
GW_BAD_PROTOCOL = """apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: gw}
spec:
  servers: [{port: {number: 80, name: http, protocol: HTTPX}, hosts: ["*"]}]
"""


def run(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main(list(argv))
    return code, out.getvalue(), err.getvalue()


def meshd_cli(*argv: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "controlplane", *argv], input=stdin, capture_output=True, text=True,
                          timeout=60, env={**os.environ, "PYTHONPATH": str(REPO)})


def serve_load(root: Path) -> ConfigStore:
    """What `meshd serve --config-dir root` holds after its first scan."""
    store = ConfigStore(logger=structlog.get_logger("test"))
    DirectorySource(root, store).load()
    return store


# --- 5. validate ---------------------------------------------------------------------------

def test_validate_takes_istioctl_filename_flag_directories_and_stdin(tmp_path):
    (tmp_path / "cfg").mkdir()
    good, bad = tmp_path / "cfg" / "vs.yaml", tmp_path / "gw.yaml"
    good.write_text(VS)
    bad.write_text(GW_BAD_PROTOCOL)

    code, out, err = run("validate", "-f", str(good))
    assert (code, out) == (0, f'"{good}" is valid\n'), err
    code, out, err = run("validate", "--filename", str(tmp_path / "cfg"), "-f", str(bad))
    assert code == 1 and f'"{good}" is valid' in out
    assert re.search(rf"^{re.escape(str(bad))}:5: Gateway gw: spec\.servers\[0\]\.port\.protocol: ", err, re.M), err
    code, out, err = run("validate", str(good))  # positional paths still work
    assert code == 0

    cp = meshd_cli("validate", "-f", "-", stdin=GW_BAD_PROTOCOL)  # istioctl's `-f -`: standard input
    assert cp.returncode == 1 and re.search(r"^-:5: Gateway gw: spec\.servers\[0\]\.port\.protocol: ", cp.stderr,
                                            re.M), cp.stderr
    assert meshd_cli("validate", "-", stdin=VS).stdout == '"-" is valid\n'

    code, out, err = run("validate")  # says what it wants, not argparse's "arguments are required"
    assert code == 1 and "-f FILE" in err and "required" not in err


def test_validate_and_serve_agree_on_bookinfo_and_on_broken_files(tmp_path):
    root = tmp_path / "bookinfo"
    shutil.copytree(shared("corpus", "istio", "samples", "bookinfo"), root)
    mysql = root / "platform" / "kube" / "bookinfo-mysql.yaml"
    assert "kind: Secret" in mysql.read_text() and "type: Opaque" in mysql.read_text()
    code, out, err = run("validate", str(root))
    assert code == 0, err
    assert f'"{mysql}" is valid' in out
    assert not any(k.kind == "Secret" for k in serve_load(mysql.parent).snapshot().objects)  # skipped, as documented

    # Broken files beside Istio's samples: per file, the documents `meshd serve` rejects
    # are exactly those `meshd validate` reports (the whole file when it is not YAML).
    (root / "broken").mkdir()
    (root / "broken" / "gw.yaml").write_text(VS + "---\n" + GW_BAD_PROTOCOL)
    (root / "broken" / "dupkey.yaml").write_text(VS.replace("  hosts: [web]\n", "  hosts: [web]\n  hosts: [b]\n"))
    (root / "broken" / "twice.yaml").write_text(VS + "---\n" + VS)
    (root / "broken" / "version.yaml").write_text(VS.replace("networking.istio.io/v1", "networking.istio.io/v9"))
    (root / "broken" / "list.yaml").write_text("- a\n- b\n")
    files = sorted(root.rglob("*.yaml"))
    assert len(files) > 40
    for f in files:
        alone = tmp_path / "serve" / f.relative_to(root).with_suffix("")  # serve with only this file
        alone.mkdir(parents=True)
        shutil.copy(f, alone / f.name)
        served = {r.origin.index if r.origin.line else "file" for r in serve_load(alone).rejections()}
        reported = {ln.document if ln.document >= 0 else "file" for ln in check_file(str(f), f.read_bytes()) if ln.error}
        assert served == reported, f
        assert bool(served) == (f.parent.name == "broken"), f
    code, _, _ = run("validate", str(root))
    assert code == 1


def test_validate_reports_every_error_of_a_document_at_once_with_file_line(tmp_path):
    f = tmp_path / "vs.yaml"
    f.write_text("""apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: web
spec:
  hosts: web
  htp:
  - route: []
  http:
  - route:
    - destination: {host: web, port: {number: eighty}}
---
apiVersion: networking.istio.io/v9
kind: DestinationRule
metadata: {name: dr}
spec:
  host: web
  colour: blue
""")
    code, _, err = run("validate", str(f))
    assert code == 1
    lines = [ln for ln in err.splitlines() if ln.startswith(str(f))]
    expect = [
        (6, "VirtualService web", "spec.hosts"),
        (7, "VirtualService web", "spec.htp"),
        (11, "VirtualService web", "spec.http[0].route[0].destination.port.number"),
        (13, "DestinationRule dr", "apiVersion"),
        (18, "DestinationRule dr", "spec.colour"),
    ]
    for line, obj, field in expect:  # every error, each with the line of its field
        assert any(ln.startswith(f"{f}:{line}: {obj}: {field}: ") for ln in lines), (line, field, err)
    assert len(lines) == len(expect), err
    assert "5 problem(s) in 2 document(s)" in err
    # serve rejects the same documents (one log line each, summarising the others)
    with capture_logs() as logs:
        serve_load(tmp_path)
    rejected = [e for e in logs if e["event"] == "config rejected"]
    assert [e["line"] for e in rejected] == [1, 13] and "more" in rejected[0]["reason"]


# --- 7. version, proxy-status, analyze ---------------------------------------------------------

def test_version_flag_prints_the_installed_version():
    cp = meshd_cli("--version")
    assert cp.returncode == 0 and cp.stdout == f"meshd {version('meshd')}\n"


@pytest.mark.e2e
def test_proxy_status_is_brief_by_default_and_shows_the_meshd_version(tmp_path):
    config = tmp_path / "config"
    config.mkdir()
    with meshd(config, tmp_path) as m, envoy(tmp_path, ["--xds-address", f"127.0.0.1:{m.xds_port}"]):
        url = f"http://127.0.0.1:{m.monitoring_port}"

        def table():
            code, out, _ = run("proxy-status", "--meshd", url)
            return out if code == 0 and "istio-ingressgateway-0.istio-system" in out else None

        out = wait_for(table, 20, what="the gateway in proxy-status")
        header, row = out.splitlines()[:2]
        assert header.split() == ["NAME", "CLUSTER", "ISTIOD", "VERSION", "SUBSCRIBED", "TYPES"]
        cells = row.split()
        assert cells[0] == "istio-ingressgateway-0.istio-system" and cells[3] == version("meshd"), out
        assert re.fullmatch(r"\d+ \(CDS,LDS.*\)", " ".join(cells[4:])), out
        _, verbose, _ = run("proxy-status", "--meshd", url, "-v", "1")
        assert verbose.splitlines()[0].split()[:4] == ["NAME", "CLUSTER", "CDS", "LDS"], verbose


def test_analyze_footer_names_what_was_analyzed(tmp_path):
    ok = tmp_path / "ok.yaml"
    ok.write_text(VS.replace("destination: {host: web}", "destination: {host: web.default.svc.cluster.local}")
                  + "---\napiVersion: v1\nkind: Service\nmetadata: {name: web}\nspec: {ports: [{port: 80, name: http}]}\n")
    vs_bad = tmp_path / "bad-ref.yaml"
    vs_bad.write_text(VS.replace("{host: web}", "{host: nowhere}").replace("name: web", "name: web2"))
    not_yaml = tmp_path / "broken.yaml"
    not_yaml.write_text("a: [\n")

    code, out, _ = run("analyze", str(ok))
    assert code == 0 and out.strip() == f"\u2714 No validation issues found when analyzing {ok}."
    code, _, err = run("analyze", str(vs_bad))
    assert code == 79 and "Analyzers found issues when analyzing all namespaces." in err
    code, _, err = run("analyze", "-n", "default", str(vs_bad))
    assert code == 79 and "Analyzers found issues when analyzing namespace: default." in err
    code, out, _ = run("analyze", str(ok), str(not_yaml))
    assert code == 2
    assert out.strip() == "No validation issues found when analyzing all namespaces (but 1 file could not be parsed)."


def test_analyze_of_a_running_meshd_reports_its_parse_errors_as_parse_errors(tmp_path, monkeypatch):
    from controlplane.commands import analyze
    from controlplane.debug.views import DebugViews

    cfg = tmp_path / "cfg"
    cfg.mkdir()
    (cfg / "dup.yaml").write_text("a: 1\na: 2\n")
    (cfg / "gw.yaml").write_text(GW_BAD_PROTOCOL)
    ads = type("Ads", (), {"connections": lambda s: [], "mesh": None})()
    configz = json.dumps(DebugViews(ads, serve_load(cfg)).configz(content=True))
    monkeypatch.setattr(analyze, "get", lambda url, path, *a, **k: configz if path == "/debug/configz" else "")
    code, out, err = run("analyze", "--meshd", "http://meshd.invalid:15014")
    assert code == 79
    (schema,) = [ln for ln in out.splitlines() if "IST0106" in ln]
    assert f"(Gateway default/gw {cfg / 'gw.yaml'}:1) Schema validation error: spec.servers[0].port.protocol" in schema
    assert f'errors parsing content "{cfg / "dup.yaml"}": line 2, column 1: invalid YAML: duplicate key' in err
    assert "dup.yaml" not in out


# --- 8. messages name file:line ---------------------------------------------------------------

def test_duplicate_key_error_names_the_file_and_line(tmp_path):
    f = tmp_path / "dup.yaml"
    f.write_text(VS.replace("  name: web\n", "  name: web\n  name: other\n"))
    with capture_logs() as logs:
        store = serve_load(tmp_path)
    (ev,) = [e for e in logs if e["event"] == "config rejected"]
    assert "<unicode string>" not in json.dumps(ev)
    assert ev["file"] == str(f)
    assert ev["message"] == f"{f}: line 5, column 3: invalid YAML: duplicate key 'name'"
    assert store.rejections()[0].message() == ev["message"]
    code, _, err = run("validate", str(f))
    assert code == 1 and f"{f}:5:3: invalid YAML: duplicate key 'name'" in err.splitlines()


def test_rejections_and_their_log_events_give_file_line_not_the_document_index(tmp_path):
    f = tmp_path / "three.yaml"
    f.write_text(VS + "---\n" + VS.replace("name: web", "name: web2") + "---\n# the broken one\n" + GW_BAD_PROTOCOL)
    start = f.read_text().splitlines().index("kind: Gateway")  # 0-based line of `kind:`, 1-based of apiVersion
    with capture_logs() as logs:
        store = serve_load(tmp_path)
    (ev,) = [e for e in logs if e["event"] == "config rejected"]
    assert "document" not in ev and ev["line"] == start
    assert ev["message"].startswith(f"{f}:{start}: Gateway default/gw: spec.servers[0].port.protocol: ")
    (rej,) = store.rejections()
    assert str(rej.origin) == f"{f}:{start}" and rej.origin.index == 2
    # the objects in force carry the line of their document too
    second = VS.count("\n") + 2  # after the first document and its `---`
    assert [o.origin.line for o in sorted(store.snapshot().objects.values(), key=lambda o: o.name)] == [1, second]


# --- 9. bootstrap format by extension --------------------------------------------------------

@pytest.mark.e2e
@pytest.mark.parametrize("name,fmt", [("gateway.json", "json"), ("envoy-rev.json", "json"), ("envoy-rev", "json"),
                                      ("bootstrap.conf", "json"), ("gateway.yaml", "yaml"), ("gateway.YML", "yaml")])
def test_bootstrap_format_follows_the_file_name_and_envoy_accepts_it(tmp_path, name, fmt):
    out = tmp_path / name
    cp = meshd_cli("bootstrap", "--output", str(out))
    assert cp.returncode == 0, cp.stderr
    text = out.read_text()
    if fmt == "json":
        doc = json.loads(text)
    else:
        with pytest.raises(json.JSONDecodeError):
            json.loads(text)
        doc = yaml.safe_load(text)
    assert doc["node"]["metadata"]["ISTIO_VERSION"] == version("meshd")
    v = subprocess.run([envoy_binary(), "--mode", "validate", "-c", str(out), "--use-dynamic-base-id"],
                       capture_output=True, text=True, timeout=60)
    assert v.returncode == 0 and "OK" in v.stdout + v.stderr, v.stdout + v.stderr


def test_bootstrap_on_stdout_is_json():
    cp = meshd_cli("bootstrap")
    assert cp.returncode == 0
    assert json.loads(cp.stdout)["node"]["id"].startswith("router~")


# --- 11. the README ----------------------------------------------------------------------------

def _anchors(path: Path) -> set[str]:
    """GitHub's anchors of a Markdown file's headings (outside code blocks)."""
    out, in_code = set(), False
    for line in path.read_text().splitlines():
        if line.startswith("```"):
            in_code = not in_code
        elif not in_code and (m := re.match(r"^#+ (.*)", line)):
            out.add(re.sub(r"[^\w\- ]", "", m.group(1).strip().lower()).replace(" ", "-"))
    return out


def test_readme_starts_with_the_two_commands_and_every_link_resolves():
    readme = REPO / "README.md"
    blocks = re.findall(r"^```sh\n(.*?)\n```", readme.read_text(), re.M | re.S)
    assert blocks[:2] == ["pip install -e . && meshd serve", "pip install -e '.[test]' && python -m pytest"]
    docs = sorted((REPO / "docs").glob("*.md"))
    for page in [readme, REPO / "bench" / "README.md", *docs]:
        for target in re.findall(r"\]\(([^)\s]+)\)", page.read_text()):
            if target.startswith("http"):
                continue
            path, _, anchor = target.partition("#")
            dest = (page.parent / path) if path else page
            assert dest.exists(), (page.name, target)
            if anchor and dest.suffix == ".md":
                assert anchor in _anchors(dest), (page.name, target)
