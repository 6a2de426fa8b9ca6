"""A cache of the compiled methods of dataclasses, so a start does not compile them again.

For every method a dataclass generates (__init__, __repr__, __eq__, __hash__, a frozen
class's __setattr__/__delattr__) CPython 3.11 and 3.12 build a source text in
`dataclasses._create_fn` and `exec` it: a compile at every start, which the .pyc files do
not cache (0.115 s of meshd's start-up CPU). This module replaces `_create_fn` with one that
builds the very same text and looks its code object up in a dict keyed by that exact text,
so a stale entry can never be used: a changed class gives a different text, a miss.

The dict lives in one marshal file beside controlplane's own bytecode (the directory of
`cache_from_source(controlplane/__init__.py)`, so PYTHONPYCACHEPREFIX applies as it does
to .pyc files). A missing or damaged file is an empty cache; `save()` writes it back.
On Pythons whose `_create_fn` is not the shape written here (3.13 replaced it with
`_FuncBuilder`) `install()` does nothing.

Kept cheap on purpose: it is imported first by controlplane/__init__.py, before any
dataclass of meshd exists.
"""
import dataclasses
import importlib.util
import marshal
import os
import sys
import types
from collections.abc import Callable
from typing import Any

# The Pythons whose _create_fn (name, args, body, *, globals, locals, return_type) is
# rebuilt here; 3.13 replaced it with _FuncBuilder.
_VERSIONS = ((3, 11), (3, 12))
# Its string literals (and its genexpr's indent), whose text _create_fn below rebuilds: a
# stdlib that differs in any of them is not cached. Besides these it holds the name of the
# return annotation's local and "->" + that name: 3.11 has `_return_type`, 3.12 renamed it
# `__dataclass_return_type__` (so a field of that name cannot clash).
_LITERALS = frozenset({"", ",", "\n", " def ", "(", ")", ":\n", ", ", "def __create_fn__(", "):\n",
                       "\n return ", "__create_fn__"})

_stdlib_create_fn: Callable[..., Any] | None = None
_return_name = ""  # the return annotation's local in this Python's _create_fn
_code: dict[str, types.CodeType] | None = None  # from the file; None until first needed
_used: dict[str, types.CodeType] = {}  # texts this process asked for: hits and new
_hits = 0
_misses = 0
_unsaved = False  # compiled something the file does not hold


def _return_local() -> str | None:
    """The return annotation's local name if this Python's `_create_fn` is the one
    rebuilt here, else None: a known version, the same signature, the same literals."""
    fn = getattr(dataclasses, "_create_fn", None)
    if sys.version_info[:2] not in _VERSIONS or not isinstance(fn, types.FunctionType):
        return None
    code = fn.__code__
    strings = {c for c in code.co_consts if isinstance(c, str)}
    indents = [c.co_consts for c in code.co_consts if isinstance(c, types.CodeType)]
    rest = sorted(strings - _LITERALS)  # [name, "->name"] ("-" sorts before letters and "_")
    if (code.co_varnames[:code.co_argcount + code.co_kwonlyargcount]
            != ("name", "args", "body", "globals", "locals", "return_type")
            or code.co_argcount != 3 or not _LITERALS <= strings
            or len(rest) != 2 or rest[0] != f"->{rest[1]}" or not rest[1].isidentifier()
            or len(indents) != 1 or "  " not in indents[0]):
        return None
    return rest[1]


def cache_file() -> str | None:
    """Where the cache lives: beside controlplane's bytecode, named for this interpreter
    (e.g. dataclass-methods.cpython-311.marshal). None where Python caches no bytecode."""
    tag = sys.implementation.cache_tag
    if tag is None:
        return None
    init = os.path.join(os.path.dirname(os.path.abspath(__file__)), "__init__.py")
    return os.path.join(os.path.dirname(importlib.util.cache_from_source(init)), f"dataclass-methods.{tag}.marshal")


def _load() -> dict[str, types.CodeType]:
    """The cache file's dict; anything wrong with the file (missing, unreadable, not a
    marshal of a dict of str -> code) is an empty cache: start-up never fails on it."""
    try:
        path = cache_file()
        if path is None:
            return {}
        with open(path, "rb") as f:
            data = marshal.loads(f.read())
    except Exception:
        return {}
    if not isinstance(data, dict) or not all(
            type(k) is str and type(v) is types.CodeType for k, v in data.items()):
        return {}
    return data


def _source(name: str, args: list[str], body: list[str], locals: dict[str, Any], return_type: Any) -> str:
    """The text the stdlib's _create_fn (3.11/3.12) execs, built the same way; like it,
    this adds the return type to `locals`."""
    return_annotation = ""
    if return_type is not dataclasses.MISSING:
        locals[_return_name] = return_type
        return_annotation = f"->{_return_name}"
    args_text = ",".join(args)
    body_text = "\n".join(f"  {b}" for b in body)
    txt = f" def {name}({args_text}){return_annotation}:\n{body_text}"
    local_vars = ", ".join(locals.keys())
    return f"def __create_fn__({local_vars}):\n{txt}\n return {name}"


def _create_fn(name: str, args: list[str], body: list[str], *, globals: dict[str, Any] | None = None,
               locals: dict[str, Any] | None = None, return_type: Any = dataclasses.MISSING) -> Any:
    """dataclasses._create_fn with the compile looked up by the exact text."""
    global _code, _hits, _misses, _unsaved
    if locals is None:
        locals = {}
    txt = _source(name, args, body, locals, return_type)
    if _code is None:
        _code = _load()
    code = _code.get(txt)
    if code is None:
        # What exec(txt) compiles: same text, filename and (no inherited) future flags.
        code = compile(txt, "<string>", "exec", dont_inherit=True)
        _code[txt] = code
        _misses += 1
        _unsaved = True
    else:
        _hits += 1
    _used[txt] = code
    ns: dict[str, Any] = {}
    # No globals: the stdlib's exec would run in its own module's, not in this one's.
    exec(code, vars(dataclasses) if globals is None else globals, ns)
    return ns["__create_fn__"](**locals)


def install() -> bool:
    """Route dataclasses' method creation through the cache; True if it is on. Idempotent.
    Does nothing (False) on a Python whose `_create_fn` is not the known shape."""
    global _stdlib_create_fn, _return_name
    if _stdlib_create_fn is not None:
        return True
    name = _return_local()
    if name is None:
        return False
    _return_name = name
    _stdlib_create_fn = dataclasses._create_fn  # type: ignore[attr-defined]
    dataclasses._create_fn = _create_fn  # type: ignore[attr-defined]
    return True


def installed() -> bool:
    """Whether this process's dataclasses go through the cache."""
    return _stdlib_create_fn is not None


def counts() -> tuple[int, int]:
    """(hits, misses) of this process: methods found compiled, methods compiled."""
    return _hits, _misses


def save(*, force: bool = False) -> str | None:
    """Write the cache if this process compiled a method the file did not hold; the path
    written, or None. Call it once start-up is over (after /ready: by then every class
    meshd defines at import exists), or at the end of an image build (precompile).

    Writes only the texts this process used, so texts of classes since changed do not
    pile up. Skipped under PYTHONDONTWRITEBYTECODE (sys.dont_write_bytecode), as .pyc
    files are, unless `force` (an explicit precompile: compileall writes regardless);
    a directory that cannot be written (a read-only install) is silently skipped."""
    global _unsaved
    if not _unsaved or (sys.dont_write_bytecode and not force):
        return None
    path = cache_file()
    if path is None:
        return None
    tmp = f"{path}.{os.getpid()}.tmp"
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(tmp, "wb", opener=lambda p, flags: os.open(p, flags, 0o644)) as f:
            os.fchmod(f.fileno(), 0o644)  # whatever the umask: readable by the uid meshd runs as
            f.write(marshal.dumps(dict(_used)))
        os.replace(tmp, path)
    except OSError:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        return None
    _unsaved = False
    return path
