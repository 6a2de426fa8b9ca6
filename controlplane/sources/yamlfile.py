"""Reading YAML the way the Kubernetes API server would accept it, defensively.

Operators' files are untrusted input: a file can be huge, an anchor bomb, binary junk
or carry duplicate keys. Each failure becomes a clear error instead of a crash or a
silently different object.
"""
from __future__ import annotations

from typing import Any

import yaml

MAX_FILE_BYTES = 8 * 1024 * 1024
# Aliases let a small file stand for an enormous tree; cap the expanded node count.
MAX_EXPANDED_NODES = 2_000_000
MAX_DEPTH = 200

try:  # libyaml is much faster; fall back to the pure Python loader when missing
    _Base = yaml.CSafeLoader  # type: ignore[attr-defined]
except AttributeError:  # pragma: no cover
    _Base = yaml.SafeLoader


class YamlError(ValueError):
    """The file is not acceptable YAML; the message says where and why."""


class _StrictLoader(_Base):  # type: ignore[misc,valid-type]
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
            raise YamlError(f"line {n.start_mark.line + 1}: nesting deeper than {MAX_DEPTH} levels")
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
            raise YamlError(f"document expands to more than {MAX_EXPANDED_NODES} nodes (alias bomb?)")
        sizes[id(n)] = total
        return total

    size(node, 0)


def load_documents(data: bytes) -> list[Any]:
    """All documents of a multi-document YAML file. Raises YamlError."""
    if len(data) > MAX_FILE_BYTES:
        raise YamlError(f"file is {len(data)} bytes, more than the {MAX_FILE_BYTES} byte limit")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise YamlError(f"not UTF-8 text (byte {e.start})") from None
    if "\x00" in text:
        raise YamlError("binary content (NUL byte)")
    docs: list[Any] = []
    try:
        loader = _StrictLoader(text)
        try:
            while loader.check_node():
                node = loader.get_node()
                if node is None:
                    continue
                _check_size(node)
                docs.append(loader.construct_document(node))
        finally:
            loader.dispose()
    except YamlError:
        raise
    except yaml.YAMLError as e:
        raise YamlError(f"invalid YAML: {_one_line(str(e))}") from None
    except RecursionError:
        raise YamlError("nesting too deep") from None
    return docs


def _one_line(s: str) -> str:
    return " ".join(s.split())
