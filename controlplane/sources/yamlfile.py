"""Reading YAML the way the Kubernetes API server would accept it, defensively.

Operators' files are untrusted input: a file can be huge, an anchor bomb, binary junk
or carry duplicate keys. Each failure becomes a clear error instead of a crash or a
silently different object.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import yaml

MAX_FILE_BYTES = 8 * 1024 * 1024
# Aliases let a small file stand for an enormous tree; cap the expanded node count.
MAX_EXPANDED_NODES = 2_000_000
MAX_DEPTH = 200

try:  # libyaml is much faster; fall back to the pure Python loader when missing
    from yaml import CSafeLoader as _Base
except ImportError:  # pragma: no cover
    from yaml import SafeLoader as _Base  # type: ignore[assignment]  # the same loader, in Python


class YamlError(ValueError):
    """The file is not acceptable YAML; the message says where and why. `line` is the
    1-based line of the problem (0 for the whole file: size, encoding)."""

    def __init__(self, problem: str, line: int = 0, column: int = 0):
        super().__init__(f"line {line}, column {column}: {problem}" if line and column else problem)
        self.problem, self.line, self.column = problem, line, column

    def at(self, name: str) -> str:
        """`name:line:column: problem`, the form editors and terminals jump to."""
        where = ":".join(str(n) for n in (name, self.line, self.column) if n)
        return f"{where}: {self.problem}"


@dataclass(frozen=True)
class Document:
    """One document of a file and where it starts (what an Origin's line points at)."""

    data: Any
    line: int  # 1-based line of the document's first node
    lines: Mapping[tuple, int] = field(default_factory=dict, repr=False)  # field path -> line (if asked for)


class _StrictLoader(_Base):
    pass


def _construct_mapping(loader: yaml.SafeLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    loader.flatten_mapping(node)
    seen: set = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=True)
        try:
            dup = key in seen
        except TypeError:
            raise yaml.constructor.ConstructorError(
                None, None, "unhashable mapping key", key_node.start_mark
            ) from None
        if dup:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r}", key_node.start_mark
            )
        seen.add(key)
    return yaml.constructor.SafeConstructor.construct_mapping(loader, node, deep=deep)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def _check_size(node: yaml.Node) -> None:
    """Count nodes as if aliases were expanded (memoised per node, so bombs are cheap to
    measure) and bound the nesting depth."""
    sizes: dict[int, int] = {}

    def size(n: yaml.Node, depth: int) -> int:
        if depth > MAX_DEPTH:
            raise YamlError(f"nesting deeper than {MAX_DEPTH} levels", n.start_mark.line + 1, n.start_mark.column + 1)
        known = sizes.get(id(n))
        if known is not None:
            return known
        total = 1
        if isinstance(n, yaml.SequenceNode):
            for child in n.value:
                total += size(child, depth + 1)
        elif isinstance(n, yaml.MappingNode):
            for k, v in n.value:
                total += size(k, depth + 1) + size(v, depth + 1)
        if total > MAX_EXPANDED_NODES:
            raise YamlError(f"document expands to more than {MAX_EXPANDED_NODES} nodes (alias bomb?)",
                            node.start_mark.line + 1)
        sizes[id(n)] = total
        return total

    size(node, 0)


def field_lines(node: yaml.Node, path: tuple = (), out: dict | None = None) -> dict[tuple, int]:
    """The 1-based line of every field below `node`, by path (`("spec", "http", 0)`); a
    mapping field's line is its key's, so a message points at the field's name."""
    out = {} if out is None else out
    out[path] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        for k, v in node.value:
            key = k.value if isinstance(k, yaml.ScalarNode) else str(k)
            field_lines(v, path + (key,), out)
            out[path + (key,)] = k.start_mark.line + 1
    elif isinstance(node, yaml.SequenceNode):
        for i, v in enumerate(node.value):
            field_lines(v, path + (i,), out)
    return out


def load_documents(data: bytes) -> list[Any]:
    """All documents of a multi-document YAML file. Raises YamlError."""
    return [d.data for d in load_located(data)]


def load_located(data: bytes, *, with_lines: bool = False) -> list[Document]:
    """All documents of a multi-document YAML file with the line each starts on (and,
    `with_lines`, the line of each field). Raises YamlError."""
    if len(data) > MAX_FILE_BYTES:
        raise YamlError(f"file is {len(data)} bytes, more than the {MAX_FILE_BYTES} byte limit")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise YamlError(f"not UTF-8 text (byte {e.start})") from None
    if "\x00" in text:
        raise YamlError("binary content (NUL byte)")
    docs: list[Document] = []
    try:
        loader = _StrictLoader(text)
        try:
            while loader.check_node():
                node = loader.get_node()
                if node is None:
                    continue
                _check_size(node)
                lines = field_lines(node) if with_lines else {}
                docs.append(Document(loader.construct_document(node), node.start_mark.line + 1, lines))
        finally:
            loader.dispose()
    except YamlError:
        raise
    except yaml.MarkedYAMLError as e:
        raise _located(e) from None
    except yaml.YAMLError as e:
        raise YamlError(f"invalid YAML: {_one_line(str(e))}") from None
    except RecursionError:
        raise YamlError("nesting too deep") from None
    return docs


def _located(e: yaml.MarkedYAMLError) -> YamlError:
    """PyYAML's message without its `in "<unicode string>"` (the caller names the file):
    `line 3, column 1: invalid YAML: duplicate key 'name'`."""
    mark = e.problem_mark or e.context_mark
    text = e.problem or e.context or "unreadable"
    if e.context and e.problem:
        cm = e.context_mark
        text += f" ({e.context}" + (f" at line {cm.line + 1}, column {cm.column + 1})" if cm else ")")
    return YamlError(f"invalid YAML: {_one_line(text)}", mark.line + 1 if mark else 0, mark.column + 1 if mark else 0)


def _one_line(s: str) -> str:
    return " ".join(s.split())
