"""Golden tests: for inputs from the shared corpus (bookinfo networking, Istio's
tests/testdata/config, the microservices-demo manifests), what meshd generates for an
ingress gateway and a sidecar is stored as readable JSON next to a copy of the input
(tests/golden/<case>/) and compared on every run.

A difference fails the test with a diff; after reviewing it, accept it with
`python -m tests.golden.regen` (or MESHD_GOLDEN_UPDATE=1 on this test) and commit the
changed files, so every change of output is seen in review.
"""
from __future__ import annotations

import difflib
import os

import pytest

from tests.golden.cases import CASES
from tests.golden.regen import regen
from tests.golden.render import input_text, render
from tests.support.paths import shared

UPDATE = os.environ.get("MESHD_GOLDEN_UPDATE") == "1"


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_generated_output_matches_golden(case):
    if UPDATE:
        regen(case)
    assert (case.dir / "input.yaml").exists(), f"no golden input for {case.name}: run python -m tests.golden.regen"
    for name, text in render(case, case.dir).items():
        path = case.dir / name
        want = path.read_text() if path.exists() else ""
        if text != want:
            diff = "".join(difflib.unified_diff(want.splitlines(True), text.splitlines(True), f"golden/{case.name}/{name}",
                                                "generated", n=2))
            pytest.fail(f"{case.name}/{name} differs from the golden file (review, then `python -m tests.golden.regen "
                        f"{case.name}`):\n{diff[:6000]}")


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_golden_inputs_are_the_corpus_files(case):
    shared("corpus")  # fails (never skips) without the corpus
    assert (case.dir / "input.yaml").read_text() == input_text(case), "corpus changed: regenerate and review"
    assert (case.dir / "supplement.yaml").read_text() == case.supplement


def test_golden_output_is_what_envoy_would_accept():
    """Every golden listener set is free of duplicate filter chain matches, and every
    route configuration a listener names is in the output (no dangling RDS)."""
    import json

    for case in CASES:
        for proxy in case.proxies:
            doc = json.loads((case.dir / f"{proxy.name}.json").read_text())
            routes = {r["name"] for r in doc["routes"]}
            for lst in doc["listeners"]:
                matches = [json.dumps(c.get("filterChainMatch", {}), sort_keys=True) for c in lst.get("filterChains", [])]
                assert len(matches) == len(set(matches)), (case.name, lst["name"])
                for chain in lst.get("filterChains", []):
                    for f in chain.get("filters", []):
                        rds = f.get("typedConfig", {}).get("rds", {}).get("routeConfigName")
                        if rds:
                            assert rds in routes, (case.name, proxy.name, rds)
