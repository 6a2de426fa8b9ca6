"""The cache of compiled dataclass methods (controlplane/dataclass_cache.py): a process that
finds every method compiled behaves exactly as one without the cache, and a bad cache file,
PYTHONDONTWRITEBYTECODE or an unwritable directory never breaks a start.

Every case runs in subprocesses with a temporary PYTHONPYCACHEPREFIX: the cache is
per-process state, and the checkout's own cache is never touched."""
from __future__ import annotations

import dataclasses
import json
import marshal
import os
import subprocess
import sys
import textwrap
import types
from pathlib import Path

import pytest

from controlplane import dataclass_cache
from tests.support.paths import REPO

pytestmark = pytest.mark.skipif(
    not dataclass_cache.installed(), reason="this Python's dataclasses has no _create_fn of a known shape")

# Dataclasses using every option that changes the generated methods, and what a user of
# them notices: equality, hashes, order, repr, frozen errors, defaults, fields, signatures.
DEFINITIONS = textwrap.dedent('''
    import dataclasses, inspect, json, sys
    from dataclasses import InitVar, KW_ONLY, dataclass, field
    from typing import ClassVar

    @dataclass(frozen=True, order=True)
    class Point:
        x: int
        y: int = 0
        tags: tuple[str, ...] = ()

    @dataclass
    class Bag:
        name: str
        items: list[int] = field(default_factory=list)
        size: int = field(init=False, default=-1)
        seed: InitVar[int] = 3
        registry: ClassVar[dict[str, int]] = {}

        def __post_init__(self, seed):
            self.size = len(self.items) + seed

    @dataclass(kw_only=True, slots=True)
    class Options:
        a: int
        b: str = "b"

    @dataclass(unsafe_hash=True)
    class Key:
        kind: str
        _: KW_ONLY
        weight: float = 1.0
        note: str = field(default="", compare=False, repr=False)

    @dataclass(eq=False, repr=False)
    class Plain:
        v: int
''')
REPORT = textwrap.dedent('''
    def attempt(fn):
        try:
            return repr(fn())
        except Exception as e:
            return f"{type(e).__name__}: {e}"

    def methods(cls):
        out = {}
        for name in ("__init__", "__repr__", "__eq__", "__hash__", "__lt__", "__ge__", "__setattr__", "__delattr__"):
            fn = cls.__dict__.get(name)
            code = getattr(fn, "__code__", None)
            out[name] = None if code is None else [fn.__qualname__, repr(fn.__annotations__), repr(fn.__defaults__),
                                                   repr(fn.__kwdefaults__), code.co_filename, code.co_freevars]
        return out

    def shape(cls):
        def given(value):  # MISSING's repr holds its address
            return "MISSING" if value is dataclasses.MISSING else repr(value)
        return {"fields": [[f.name, repr(f.type), given(f.default), given(f.default_factory), f.init, f.repr,
                            f.compare, f.hash, f.kw_only] for f in dataclasses.fields(cls)],
                "match_args": getattr(cls, "__match_args__", None),
                "signature": str(inspect.signature(cls.__init__)),
                "slots": getattr(cls, "__slots__", None),
                "methods": methods(cls)}

    p, q = Point(1, 2), Point(1, 3, ("a",))
    b1, b2 = Bag("x"), Bag("x", [1, 2], 10)
    o = Options(a=1)
    k1, k2 = Key("k", weight=2.0, note="n1"), Key("k", weight=2.0, note="n2")
    seen = {
        "point": [repr(p), p == Point(1, 2), p < q, sorted([q, p]) == [p, q], hash(p) == hash(Point(1, 2)), hash(p),
                  attempt(lambda: setattr(p, "x", 5)), attempt(lambda: delattr(p, "y")), attempt(lambda: Point())],
        "bag": [repr(b1), repr(b2), b1.items is not Bag("x").items, b1 == Bag("x"), b1.size, b2.size,
                attempt(lambda: hash(b1)), attempt(lambda: Bag("x", size=1)), "seed" in b1.__dict__],
        "options": [repr(o), attempt(lambda: Options(1)), hasattr(o, "__dict__"), attempt(lambda: setattr(o, "c", 1))],
        "key": [repr(k1), k1 == k2, hash(k1) == hash(k2), hash(k1), attempt(lambda: Key("k", 2.0))],
        "plain": [Plain(1) == Plain(1), repr(Plain(1)).startswith("<__main__.Plain object")],
        "shapes": {c.__name__: shape(c) for c in (Point, Bag, Options, Key, Plain)},
    }
    mod = sys.modules.get("controlplane.dataclass_cache")
    cache = None if mod is None else {"counts": mod.counts(), "file": mod.cache_file(), "saved": mod.save()}
    print(json.dumps({"seen": seen, "cache": cache}))
''')
CLASSES = DEFINITIONS + REPORT


def run(prefix: Path, code: str, *, cached: bool = True, env: dict[str, str] | None = None, **kwargs) -> dict:
    """`code` in a fresh Python with its bytecode (and so the cache) under `prefix`; its
    last line of output, as JSON. `cached` imports controlplane first, which installs the
    cache; without it the stdlib's dataclasses run untouched."""
    environ = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    environ.update(PYTHONPYCACHEPREFIX=str(prefix), PYTHONHASHSEED="0", **(env or {}))
    source = ("import controlplane\n" if cached else "") + code
    done = subprocess.run([sys.executable, "-c", source], cwd=REPO, env=environ, capture_output=True, text=True,
                          timeout=120, **kwargs)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.splitlines()[-1])


def cache_path(prefix: Path, monkeypatch) -> Path:
    """The cache file a process with PYTHONPYCACHEPREFIX=`prefix` reads and writes."""
    with monkeypatch.context() as m:
        m.setattr(sys, "pycache_prefix", str(prefix))
        path = dataclass_cache.cache_file()
    assert path is not None
    return Path(path)


def test_second_process_finds_every_method_and_behaves_as_without_cache(tmp_path, monkeypatch):
    plain = run(tmp_path / "plain", CLASSES, cached=False)
    first = run(tmp_path / "cache", CLASSES)
    assert first["cache"]["file"] == str(cache_path(tmp_path / "cache", monkeypatch))
    second = run(tmp_path / "cache", CLASSES)

    assert plain["cache"] is None
    hits, misses = first["cache"]["counts"]
    assert misses > 20 and first["cache"]["saved"] == first["cache"]["file"]
    assert second["cache"]["counts"] == [hits + misses, 0]
    assert second["cache"]["saved"] is None  # nothing new: the file is not rewritten
    assert first["seen"] == plain["seen"]
    assert second["seen"] == plain["seen"]


def test_the_text_is_the_one_the_stdlib_builds(monkeypatch):
    """The stdlib's own _create_fn, run with an `exec` that records, builds for each
    method the very text _source builds (the cache key and what is compiled)."""
    stdlib = dataclass_cache._stdlib_create_fn
    assert isinstance(stdlib, types.FunctionType)
    theirs: list[str] = []
    ours: list[str] = []

    def recording_exec(txt, globals, ns):
        theirs.append(txt)
        exec(txt, globals, ns)

    recorded = types.FunctionType(stdlib.__code__, {**vars(dataclasses), "exec": recording_exec}, stdlib.__name__,
                                  stdlib.__defaults__, stdlib.__closure__)
    recorded.__kwdefaults__ = stdlib.__kwdefaults__

    def both(name, args, body, *, globals=None, locals=None, return_type=dataclasses.MISSING):
        ours.append(dataclass_cache._source(name, list(args), list(body), dict(locals or {}), return_type))
        return recorded(name, args, body, globals=globals, locals=locals, return_type=return_type)

    monkeypatch.setattr(dataclasses, "_create_fn", both)
    module = types.ModuleType("dataclass_cache_definitions")  # dataclasses looks the module up
    monkeypatch.setitem(sys.modules, module.__name__, module)
    exec(DEFINITIONS, module.__dict__)
    assert len(theirs) > 20 and ours == theirs


@pytest.mark.parametrize("content", [
    b"\x00garbage\xff" * 10,
    marshal.dumps([1, 2, 3]),
    marshal.dumps({"def __create_fn__():\n def f():\n  pass\n return f": "not code"}),
    marshal.dumps({b"bytes key": compile("", "<string>", "exec")}),
    marshal.dumps({"x": compile("", "<string>", "exec")})[:-3],  # truncated
], ids=["garbage", "list", "non-code-value", "non-str-key", "truncated"])
def test_a_bad_cache_file_is_an_empty_cache_and_is_replaced(tmp_path, monkeypatch, content):
    cache = cache_path(tmp_path, monkeypatch)
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_bytes(content)

    first = run(tmp_path, CLASSES)
    assert first["cache"]["counts"][0] == 0 and first["cache"]["saved"] == str(cache)
    replaced = marshal.loads(cache.read_bytes())
    assert replaced and all(isinstance(k, str) and isinstance(v, types.CodeType) for k, v in replaced.items())
    assert run(tmp_path, CLASSES)["cache"]["counts"][1] == 0


def test_only_the_texts_a_process_used_are_written(tmp_path):
    """A stale text (say of a class since changed) is dropped at the next write."""
    cache = Path(run(tmp_path, CLASSES)["cache"]["file"])
    stale = "def __create_fn__():\n def gone(self):\n  pass\n return gone"
    cached = marshal.loads(cache.read_bytes())
    cached[stale] = compile(stale, "<string>", "exec")
    cached.pop(next(iter(cached)))  # and one the process needs: it compiles it again, and writes
    cache.write_bytes(marshal.dumps(cached))

    again = run(tmp_path, CLASSES)
    assert again["cache"]["counts"][1] == 1 and again["cache"]["saved"]
    written = marshal.loads(cache.read_bytes())
    assert stale not in written and len(written) == len(cached)


def test_written_readable_by_all_whatever_the_umask(tmp_path):
    cache = Path(run(tmp_path, CLASSES, preexec_fn=lambda: os.umask(0o077))["cache"]["file"])
    assert cache.stat().st_mode & 0o777 == 0o644
    assert [p.name for p in cache.parent.iterdir() if p.name.endswith(".tmp")] == []


def test_dont_write_bytecode_writes_nothing(tmp_path):
    result = run(tmp_path, CLASSES, env={"PYTHONDONTWRITEBYTECODE": "1"})
    assert result["cache"]["counts"][1] > 0 and result["cache"]["saved"] is None
    assert not Path(result["cache"]["file"]).exists()


def test_an_unwritable_place_does_not_raise(tmp_path, monkeypatch):
    """A prefix that cannot be a directory (a file is in the way), and a cache path taken
    by a directory: both a read-only install as far as save() is concerned."""
    blocked = tmp_path / "a-file"
    blocked.write_text("")
    result = run(blocked, CLASSES)
    assert result["cache"]["counts"][1] > 0 and result["cache"]["saved"] is None

    taken = cache_path(tmp_path / "p", monkeypatch)
    taken.mkdir(parents=True)
    result = run(tmp_path / "p", CLASSES)
    assert result["cache"]["saved"] is None and taken.is_dir()
    assert [p.name for p in taken.parent.iterdir() if p.name.endswith(".tmp")] == []


def test_off_where_create_fn_is_not_the_known_shape(tmp_path):
    """3.13 has no _create_fn; a patched one with other text must not be rebuilt as ours."""
    for patch in ("del dataclasses._create_fn",
                  "orig = dataclasses._create_fn\n"
                  "def _create_fn(name, args, body, *, globals=None, locals=None, return_type=dataclasses.MISSING):\n"
                  "    return orig(name, args, body, globals=globals, locals=locals, return_type=return_type)\n"
                  "dataclasses._create_fn = _create_fn\n"):
        code = (f"import dataclasses, json\n{patch}\nimport controlplane\n"
                "from controlplane import dataclass_cache as d\n"
                "print(json.dumps({'installed': d.installed(), 'counts': d.counts()}))")
        assert run(tmp_path, code, cached=False) == {"installed": False, "counts": [0, 0]}


def test_precompile_warms_the_cache_for_the_server(tmp_path):
    environ = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    environ["PYTHONPYCACHEPREFIX"] = str(tmp_path)
    done = subprocess.run([sys.executable, "-m", "controlplane.precompile"], cwd=REPO, env=environ,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr

    served = run(tmp_path, "import json, controlplane.app\nfrom controlplane import dataclass_cache as d\n"
                           "print(json.dumps({'counts': d.counts(), 'file': d.cache_file()}))")
    hits, misses = served["counts"]
    assert misses == 0 and hits > 500
    assert Path(served["file"]).is_file()
