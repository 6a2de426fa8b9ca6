"""Tests find ../shared relative to the checkout, through tests/support/paths.py, wherever the
repository sits (issue 16 item 10): no absolute path to the shared folder, and no test
module building its own way there (one that does can pass silently elsewhere)."""
from __future__ import annotations

import re

from tests.support.paths import REPO

ABSOLUTE = re.compile(r"""["']/work/""")
OWN_WAY = re.compile(r"""(parents\[\d\]|\.parent)\S*\s*/\s*["']shared["']""")


def test_no_test_reaches_shared_but_through_the_harness():
    offenders = []
    for path in sorted((REPO / "tests").rglob("*.py")) + sorted((REPO / "bench").rglob("*.py")):
        if path == REPO / "tests" / "support" / "paths.py":
            continue
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if ABSOLUTE.search(line) or OWN_WAY.search(line):
                offenders.append(f"{path.relative_to(REPO)}:{n}: {line.strip()}")
    assert offenders == [], "use tests.support.paths.SHARED / shared():\n" + "\n".join(offenders)
