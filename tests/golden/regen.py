"""Rewrite the golden files after a reviewed change:

    python -m tests.golden.regen            # every case
    python -m tests.golden.regen bookinfo   # some
    MESHD_GOLDEN_UPDATE=1 python -m pytest tests/unit/test_golden_traffic.py   # the same

Copies the inputs from the corpus again, writes the supplement, regenerates every
proxy's output, and prints what changed (review it with `git diff tests/golden`).
"""
from __future__ import annotations

import sys

from .cases import CASES, Case
from .render import input_text, render


def regen(case: Case) -> list[str]:
    case.dir.mkdir(parents=True, exist_ok=True)
    files = {"input.yaml": input_text(case), "supplement.yaml": case.supplement}
    changed = []
    for name, text in files.items():
        path = case.dir / name
        if not path.exists() or path.read_text() != text:
            path.write_text(text)
            changed.append(str(path))
    for name, text in render(case, case.dir).items():
        path = case.dir / name
        if not path.exists() or path.read_text() != text:
            path.write_text(text)
            changed.append(str(path))
    return changed


def main(argv: list[str]) -> int:
    wanted = set(argv)
    unknown = wanted - {c.name for c in CASES}
    if unknown:
        print(f"unknown case(s): {', '.join(sorted(unknown))}; cases: {', '.join(c.name for c in CASES)}")
        return 2
    for case in CASES:
        if wanted and case.name not in wanted:
            continue
        changed = regen(case)
        print(f"{case.name}: " + (", ".join(changed) if changed else "unchanged"))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
