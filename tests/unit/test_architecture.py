"""The house's import rules, read from the production code itself (../shared/DESIGN.md,
"The house as it stands"): no import cycles among the modules of controlplane/ and ca/,
and none of the arrows that must never run.

Every import counts, including those inside functions (a lazy import is still a
dependency: it only moves the moment it bites); imports under `if TYPE_CHECKING:` do
not, since they never run. A failure names each offending import as file:line.

An arrow that still runs because its fix belongs to a room another change is
restructuring is marked xfail(strict=True) below with the room named: when that room
lands the mark turns into an unexpected pass, and the mark goes.
"""
from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

import ca
import controlplane

ROOTS = (Path(controlplane.__file__).parent, Path(ca.__file__).parent)


@dataclass(frozen=True)
class Import:
    importer: str  # module name
    imported: str  # module name (a module of the scanned packages)
    file: str  # relative to the folder holding the package
    line: int

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.importer} -> {self.imported}"


def module_files(roots: tuple[Path, ...]) -> dict[str, Path]:
    """Module name -> file relative to the folder holding its package, for every .py
    file under each package root."""
    out: dict[str, Path] = {}
    for root in roots:
        for file in sorted(root.rglob("*.py")):
            relative = file.relative_to(root.parent)
            parts = list(relative.with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            out[".".join(parts)] = relative
    return out


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _import_nodes(tree: ast.AST):
    """Every Import/ImportFrom node, at any depth, except under `if TYPE_CHECKING:`."""
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
            continue
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            stack.extend(node.orelse)  # the body never runs
            continue
        stack.extend(ast.iter_child_nodes(node))


def _targets(module: str, file: Path, node: ast.Import | ast.ImportFrom, modules: dict[str, Path]) -> list[str]:
    """The scanned modules an import statement loads (a name imported from a package is
    its submodule when there is one, else the package)."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names if a.name in modules]
    if node.level:
        package = module.split(".") if file.name == "__init__.py" else module.split(".")[:-1]
        package = package[:len(package) - (node.level - 1)]
        base = ".".join(package + ([node.module] if node.module else []))
    else:
        base = node.module or ""
    out = []
    for alias in node.names:
        sub = f"{base}.{alias.name}"
        if sub in modules:
            out.append(sub)
        elif base in modules:
            out.append(base)
    return out


def imports(roots: tuple[Path, ...] = ROOTS) -> list[Import]:
    """Every import between scanned modules (a module importing its own package excluded:
    it runs inside that package's import already)."""
    modules = module_files(roots)
    folders = {root.name: root.parent for root in roots}
    out = []
    for module, file in modules.items():
        tree = ast.parse((folders[file.parts[0]] / file).read_text(), str(file))
        for node in _import_nodes(tree):
            for target in _targets(module, file, node, modules):
                if target != module and not module.startswith(target + "."):
                    out.append(Import(module, target, str(file), node.lineno))
    return sorted(set(out), key=lambda i: (i.file, i.line, i.imported))


def cycles(edges: list[Import]) -> list[list[Import]]:
    """The strongly connected components of more than one module (Tarjan), each as the
    imports that run inside it."""
    graph: dict[str, set[str]] = {}
    for e in edges:
        graph.setdefault(e.importer, set()).add(e.imported)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[set[str]] = []

    def visit(v: str) -> None:  # iterative depth-first search: no recursion limit to mind
        work = [(v, iter(sorted(graph.get(v, ()))))]
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        while work:
            node, children = work[-1]
            for w in children:
                if w not in index:
                    index[w] = low[w] = len(index)
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(sorted(graph.get(w, ())))))
                    break
                if w in on_stack:
                    low[node] = min(low[node], index[w])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = set()
                    while True:
                        w = stack.pop()
                        on_stack.discard(w)
                        component.add(w)
                        if w == node:
                            break
                    if len(component) > 1:
                        components.append(component)

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return [[e for e in edges if e.importer in c and e.imported in c] for c in components]


@dataclass(frozen=True)
class Arrow:
    """Imports from any module under `sources` to any under `targets` must not exist."""

    name: str
    sources: tuple[str, ...]
    targets: tuple[str, ...]

    def runs(self, edges: list[Import]) -> list[Import]:
        return [e for e in edges if _under(e.importer, self.sources) and _under(e.imported, self.targets)]


def _under(module: str, packages: tuple[str, ...]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in packages)


SOURCES = ("controlplane.sources", "controlplane.kube")  # the Kubernetes room is a source too
ARROWS = [
    Arrow("the config store -> the mesh model", ("controlplane.config",), ("controlplane.model",)),
    Arrow("the model -> generators", ("controlplane.model",), ("controlplane.generators",)),
    Arrow("generators -> sources or the server", ("controlplane.generators",), SOURCES + ("controlplane.server",)),
    Arrow("the server -> sources", ("controlplane.server",), SOURCES),
    Arrow("security -> the server or debug", ("controlplane.security",), ("controlplane.server", "controlplane.debug")),
    # Security provides providers behind small interfaces (authenticators, the CA); the
    # Kubernetes room implements or uses them, and app.py wires the two together.
    Arrow("security -> the cluster room", ("controlplane.security",), ("controlplane.kube",)),
    Arrow("the cluster room -> the CLI", ("controlplane.kube",), ("controlplane.cli", "controlplane.commands")),
    Arrow("the cluster room -> app, the server or debug", ("controlplane.kube",),
          ("controlplane.app", "controlplane.server", "controlplane.debug")),
    Arrow("debug views -> the server", ("controlplane.debug",), ("controlplane.server",)),
    Arrow("ca/ -> controlplane/", ("ca",), ("controlplane",)),
]

# Arrows that run today where another room of issue 17 is moving the code: xfail(strict)
# until that room lands, then the mark goes.
EXPECTED_TO_RUN: dict[str, str] = {}


@pytest.fixture(scope="module")
def edges() -> list[Import]:
    return imports()


def test_no_import_cycles(edges):
    found = cycles(edges)
    assert not found, "import cycles:\n" + "\n\n".join("\n".join(f"  {e}" for e in c) for c in found)


@pytest.mark.parametrize("arrow", [
    pytest.param(a, id=a.name, marks=[pytest.mark.xfail(strict=True, reason=EXPECTED_TO_RUN[a.name])]
                 if a.name in EXPECTED_TO_RUN else [])
    for a in ARROWS
])
def test_forbidden_arrow_does_not_run(edges, arrow):
    running = arrow.runs(edges)
    assert not running, f"{arrow.name}:\n" + "\n".join(f"  {e}" for e in running)


def test_the_reader_sees_every_kind_of_import(tmp_path):
    """The checks above can fail: a cycle through a function-level import and a forbidden
    arrow are found and named file:line, a `TYPE_CHECKING` import is not counted."""
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("from . import b\n")
    (pkg / "a.py").write_text("from typing import TYPE_CHECKING\n"
                              "if TYPE_CHECKING:\n    from .sub import c\n"
                              "def f():\n    from .sub.b import g\n")
    (pkg / "sub" / "b.py").write_text("import pkg.a\n")
    (pkg / "sub" / "c.py").write_text("x = 1\n")
    (pkg / "lone.py").write_text("from pkg.sub import c, b\n")
    found = imports((pkg,))
    assert [str(e) for e in found] == [
        "pkg/a.py:5: pkg.a -> pkg.sub.b",
        "pkg/lone.py:1: pkg.lone -> pkg.sub.b",
        "pkg/lone.py:1: pkg.lone -> pkg.sub.c",
        "pkg/sub/__init__.py:1: pkg.sub -> pkg.sub.b",
        "pkg/sub/b.py:1: pkg.sub.b -> pkg.a",
    ]
    assert [{(e.importer, e.imported) for e in c} for c in cycles(found)] == [
        {("pkg.a", "pkg.sub.b"), ("pkg.sub.b", "pkg.a")}]
    arrow = Arrow("sub -> a", ("pkg.sub",), ("pkg.a",))
    assert [str(e) for e in arrow.runs(found)] == ["pkg/sub/b.py:1: pkg.sub.b -> pkg.a"]
