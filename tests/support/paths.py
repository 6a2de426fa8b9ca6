"""Where the tests find the checkout and the project's shared folder (../shared).

Every test reaches ../shared through SHARED or shared() here, never by an absolute path
or its own parents[...] arithmetic (tests/unit/test_newcomer_paths.py checks that)."""
from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
# The project's shared folder (the corpus, the Kubernetes set-up) lies beside the checkout,
# wherever that is: in CI a fresh clone gets a copy of it beside itself.
SHARED = REPO.parent / "shared"


def shared(*parts: str) -> Path:
    """`SHARED/parts...`, failing the test (never skipping it) when it is missing: a test
    that needs the corpus must not pass unnoticed where the corpus is not."""
    path = SHARED.joinpath(*parts)
    if not path.exists():
        import pytest

        pytest.fail(f"{path} is missing: the tests need the project's shared/ folder beside the checkout "
                    f"({REPO.parent}/shared; see ../shared/DESIGN.md)", pytrace=False)
    return path
