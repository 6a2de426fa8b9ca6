"""Pytest fixture for the test bed (a plugin of tests/conftest.py: every test can ask for it).

    @pytest.mark.e2e
    def test_something(testbed):
        pod = testbed.add_pod("webapp", sidecar=True)

Skips when not root (namespaces and iptables need it). Fails, rather than skips, when
root lacks a tool, so a CI machine missing `apt-get install iptables` is noticed. On
teardown the bed's process logs are printed; pytest shows them only for a failed test.
"""
from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from .bed import TestBed, missing_tools


def require_testbed() -> None:
    if os.geteuid() != 0:
        pytest.skip("the mesh test bed needs root (network namespaces, iptables)")
    missing = missing_tools()
    if missing:
        pytest.fail("the mesh test bed needs: " + ", ".join(missing) + " — apt-get install -y iptables iproute2 curl")


@pytest.fixture
def testbed() -> Iterator[TestBed]:
    require_testbed()
    bed = TestBed()
    bed.start()
    try:
        yield bed
    finally:
        try:
            logs = bed.logs()
            if logs:
                print(f"=== test bed {bed.run_id} ({bed.subnet}) logs ===\n{logs}")
        finally:
            bed.close()
