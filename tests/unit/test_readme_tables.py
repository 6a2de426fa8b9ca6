"""The README carries, in full, what the issues ask it to list: every Gateway API
conformance test with its result (the tables of docs/gateway-api-conformance.md), every
difference from Istio's translation goldens with its reason (the section "Differences
from istiod" of docs/gateway-api.md), and what meshd's injector keeps of Istio's output
per injection input (the section "Istio's injection goldens" of docs/injection.md, whose
table tests/unit/test_inject_golden.py generates). The docs are the source; this keeps the
README's copies equal to them. Regenerate with

    python tests/unit/test_readme_tables.py --write
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
README = REPO / "README.md"
END = "<!-- END copied -->"


@dataclass(frozen=True)
class Copy:
    source: Path
    section: str  # "": the tables of the whole file; else that "## " section whole

    @property
    def begin(self) -> str:
        what = f"section '{self.section}' of " if self.section else ""
        return f"<!-- BEGIN copied from {what}{self.source.relative_to(REPO)} by tests/unit/test_readme_tables.py -->"

    def block(self) -> str:
        lines = self.source.read_text().splitlines()
        if self.section:
            start = lines.index(f"## {self.section}") + 1
            end = next((i for i in range(start, len(lines)) if lines[i].startswith("## ")), len(lines))
            # Its headings one level down, under the README's own "## Kubernetes Gateway API".
            return "\n".join(("#" + ln if ln.startswith("### ") else ln) for ln in lines[start:end]).strip("\n")
        out: list[str] = []
        heading, in_table = "", False
        for line in lines:
            if line.startswith("## "):
                heading = line[3:]
            if line.startswith("|"):
                if not in_table:
                    out += ["", f"**{heading}**", ""]
                in_table = True
                out.append(line)
            else:
                in_table = False
        return "\n".join(out).strip("\n")


COPIES = [Copy(REPO / "docs" / "gateway-api-conformance.md", ""),
          Copy(REPO / "docs" / "gateway-api.md", "Differences from istiod"),
          Copy(REPO / "docs" / "injection.md", "Istio's injection goldens")]


def _current(copy: Copy) -> str:
    text = README.read_text()
    assert copy.begin in text, f"README.md lacks the marker {copy.begin}"
    return text.split(copy.begin, 1)[1].split(END, 1)[0].strip("\n")


@pytest.mark.parametrize("copy", COPIES, ids=lambda c: c.source.name)
def test_the_readme_holds_the_docs_tables_as_the_docs_have_them(copy: Copy):
    block = copy.block()
    assert block.count("\n| ") > 30, f"the tables of {copy.source} were not found"
    assert _current(copy) == block, "regenerate: python tests/unit/test_readme_tables.py --write"


if __name__ == "__main__":
    text = README.read_text()
    for copy in COPIES:
        if copy.begin not in text:
            sys.exit(f"README.md lacks the marker {copy.begin}")
        head, rest = text.split(copy.begin, 1)
        text = head + copy.begin + "\n" + copy.block() + "\n" + rest[rest.index(END):]
    README.write_text(text)
