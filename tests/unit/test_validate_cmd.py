"""`meshd validate` on Istio's CRD validation fixtures.

istio/pkg/config/validation/testdata/crds holds, per kind, a file of valid objects and a
file of invalid ones, each invalid document carrying the error Istio expects in `_err`.
For the kinds meshd has schemas for, `meshd validate` accepts every valid file and rejects
every invalid document with a message naming the field (the `_err` key, which is not part
of the object, is removed first so it cannot be what gets the document rejected).
"""
from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

import pytest
import yaml

from controlplane import cli
from tests.support.paths import SHARED

CRDS = SHARED / "corpus" / "istio" / "pkg" / "config" / "validation" \
    / "testdata" / "crds"
# Kinds meshd serves (DestinationRule, PeerAuthentication) and those it has schemas for.
PREFIXES = ["destinationrule", "peerauth", "serviceentry", "authz"]
# PyYAML reads the unquoted flow item `001:db8::` as a mapping where Go's YAML reads a
# string: a parser difference, not a validation one (see test_validation.py).
YAML_DIVERGENT = {("serviceentry-valid.yaml", "full")}


def run(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main(list(argv))
    return code, out.getvalue(), err.getvalue()


def fixture(name: str) -> Path:
    path = CRDS / name
    if not path.exists():
        pytest.fail(f"test corpus missing: {path}")
    return path


@pytest.mark.parametrize("prefix", PREFIXES)
def test_valid_fixtures_are_accepted(prefix, tmp_path):
    docs = [d for d in yaml.safe_load_all(fixture(f"{prefix}-valid.yaml").read_text()) if isinstance(d, dict)]
    docs = [d for d in docs if (f"{prefix}-valid.yaml", d["metadata"]["name"]) not in YAML_DIVERGENT]
    for i, d in enumerate(docs):  # the fixtures reuse names; one file may define an object only once
        d["metadata"]["name"] += f"-{i}"
    f = tmp_path / f"{prefix}-valid.yaml"
    f.write_text(yaml.safe_dump_all(docs))
    code, out, err = run("validate", str(f))
    assert code == 0, err
    assert f'"{f}" is valid' in out


@pytest.mark.parametrize("prefix", PREFIXES)
def test_every_invalid_document_is_rejected_naming_the_field(prefix, tmp_path):
    docs = [d for d in yaml.safe_load_all(fixture(f"{prefix}-invalid.yaml").read_text()) if isinstance(d, dict)]
    assert docs
    for i, doc in enumerate(docs):
        expected = doc.pop("_err")
        f = tmp_path / f"{prefix}-{i}.yaml"
        f.write_text(yaml.safe_dump(doc))
        code, out, err = run("validate", str(f))
        name = doc["metadata"]["name"]
        assert code == 1, (name, expected)
        lines = [l for l in err.splitlines() if f" {name}: " in l and ": Warning: " not in l]  # not the kind notice
        assert lines, (name, err)
        path = re.match(r"^(spec[\w.\[\]]*)(:| in body)", expected)
        if path:  # the field Istio names is the field meshd names
            assert any(f": {path.group(1)}: " in l for l in lines), (expected, lines)
        else:  # a whole-object rule: some field is named
            assert all(re.search(r": spec[\w.\[\]]*: ", l) for l in lines), (expected, lines)


def test_directory_mixed_and_skipped_kinds(tmp_path):
    (tmp_path / "a.yaml").write_text("""
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: vs}
spec: {hosts: [a], http: [{route: [{destination: {host: a}}]}]}
---
apiVersion: networking.istio.io/v1beta1
kind: ProxyConfig
metadata: {name: ef}
spec: {}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: d}
""")
    (tmp_path / "b.yaml").write_text("""
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: gw}
spec:
  servers: [{port: {number: 80, name: http, protocol: HTTPX}, hosts: ["*"]}]
""")
    code, out, err = run("validate", str(tmp_path))
    assert code == 1
    assert f'"{tmp_path / "a.yaml"}" is valid' in out
    # Named as not served (no effect), a warning: it does not fail the file.
    assert "ProxyConfig ef: Warning: ProxyConfig (networking.istio.io) is an Istio kind meshd does not serve" in err
    assert re.search(r"b\.yaml:\d+: Gateway gw: spec\.servers\[0\]\.port\.protocol: ", err), err
