"""One test base: tests share set-up through tests/support (and the test bed, the golden
cases), never by importing another test module. A test module that imports one ties the
two together: moving or renaming a helper in one silently breaks the other (an e2e test
once failed to collect for weeks because the unit test it borrowed from had changed)."""
from __future__ import annotations

import ast

from tests.support.paths import REPO

TESTS = REPO / "tests"


def is_test_module(module: str) -> bool:
    """`tests.unit.test_x`, `tests.e2e.test_y` (or anything `test_*` under tests/)."""
    parts = module.split(".")
    return parts[0] == "tests" and any(p.startswith("test_") for p in parts[1:])


def imported_modules(source: str, package: str) -> list[tuple[int, str]]:
    """(line, module) of every import in `source`, inside functions too; relative imports
    resolved against `package` (the file's)."""
    out = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                module = ".".join(parts[: len(parts) - node.level + 1] + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            out.append((node.lineno, module))
            # `from tests.unit import test_x` imports a module too
            out += [(node.lineno, f"{module}.{a.name}") for a in node.names if a.name.startswith("test_")]
    return out


def test_no_test_module_imports_another():
    offenders = []
    for path in sorted(TESTS.rglob("*.py")):
        package = ".".join(path.relative_to(REPO).parts[:-1])
        for line, module in imported_modules(path.read_text(), package):
            if is_test_module(module):
                offenders.append(f"{path.relative_to(REPO)}:{line}: imports {module}")
    assert offenders == [], "share set-up through tests/support instead:\n" + "\n".join(offenders)


def test_the_check_sees_every_form_of_import():
    source = "\n".join([
        "from tests.unit.test_ads import run", "import tests.e2e.test_storm", "from tests.unit import test_delta",
        "from . import test_storm", "def f():\n    from tests.unit.test_kube_source import until",
        "from tests.support.ads import run", "from tests.testbed.mesh import Mesh", "from .bed import Pod"])
    found = [m for _, m in imported_modules(source, "tests.e2e") if is_test_module(m)]
    assert found == ["tests.unit.test_ads", "tests.e2e.test_storm", "tests.unit.test_delta",
                     "tests.e2e.test_storm", "tests.unit.test_kube_source"]


def test_every_test_module_has_its_own_basename():
    """pytest imports test modules by basename (tests/unit and tests/e2e are not packages):
    a second `test_x.py` anywhere under tests/ stops the whole run at collection."""
    seen: dict[str, list[str]] = {}
    for path in sorted(TESTS.rglob("test_*.py")):
        seen.setdefault(path.name, []).append(str(path.relative_to(REPO)))
    assert {name: paths for name, paths in seen.items() if len(paths) > 1} == {}
