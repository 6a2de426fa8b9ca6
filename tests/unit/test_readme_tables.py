"""The README carries, in full, the per-test conformance tables of
docs/gateway-api-conformance.md (the Gateway API issue asks for them in the README); this
keeps the copy equal to the source. Regenerate with

    python tests/unit/test_readme_tables.py --write
"""
from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
README = REPO / "README.md"
SOURCE = REPO / "docs" / "gateway-api-conformance.md"
BEGIN = "<!-- BEGIN copied from docs/gateway-api-conformance.md by tests/unit/test_readme_tables.py -->"
END = "<!-- END copied -->"


def copied_block() -> str:
    """Each table of the source under the heading it sits in."""
    out: list[str] = []
    heading = ""
    in_table = False
    for line in SOURCE.read_text().splitlines():
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


def current() -> str:
    text = README.read_text()
    assert BEGIN in text and END in text, "README.md lacks the copied-table markers"
    return text.split(BEGIN, 1)[1].split(END, 1)[0].strip("\n")


def test_the_readme_holds_every_conformance_table_as_the_docs_have_it():
    block = copied_block()
    assert block.count("\n| ") > 100, "the source's tables were not found"
    assert current() == block, "regenerate: python tests/unit/test_readme_tables.py --write"


if __name__ == "__main__":
    text = README.read_text()
    head, rest = text.split(BEGIN, 1)
    README.write_text(head + BEGIN + "\n" + copied_block() + "\n" + rest[rest.index(END):])
