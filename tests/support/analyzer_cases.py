"""Istio's analyzer test cases as ../shared/corpus/INDEX.md lists them, and `meshd analyze`
run in-process: shared by the analyzer tests (test_analyze.py, test_analyzers_registry.py).

For every input under istio/pkg/config/analysis/analyzers/testdata, INDEX.md names the
cases of Istio's analyzers_test.go that use it: the analyzer run (by Go type) and the
messages expected (`Code Kind namespace/name`).
"""
from __future__ import annotations

import contextlib
import io
import re
from collections import defaultdict

import pytest

from controlplane import cli

from .paths import SHARED

CORPUS = SHARED / "corpus"
TESTDATA = CORPUS / "istio" / "pkg" / "config" / "analysis" / "analyzers" / "testdata"
_CASE = re.compile(r"analyzers_test\.go case '([^']+)' \[([^\]]+)\](?: \(meshConfig [^)]+\))?: expect (.*?)"
                   r"(?= analyzers_test\.go case|$)")


def istio_cases() -> dict[str, dict]:
    """case name -> {"files": inputs under TESTDATA, "analyzer": Go type, "expect": text}."""
    index = CORPUS / "INDEX.md"
    if not index.exists():
        pytest.fail(f"test corpus missing: {index}")
    cases: dict[str, dict] = defaultdict(lambda: {"files": set(), "analyzer": "", "expect": ""})
    for line in index.read_text().splitlines():
        if "analysis/analyzers/testdata/" not in line:
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        for m in _CASE.finditer(cells[-1]):
            c = cases[m.group(1)]
            c["files"].add(cells[0].split("testdata/", 1)[1])
            c["analyzer"], c["expect"] = m.group(2), m.group(3).strip()
    return dict(cases)


def run_cli(*argv: str) -> tuple[int, str]:
    """`meshd <argv>` in-process: its exit code and stdout."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = cli.main(list(argv))
    return code, out.getvalue()
