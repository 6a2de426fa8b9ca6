"""The error type every validator returns, and helpers to build field paths and messages.

Paths and wording mirror what `kubectl apply` prints (`spec.http[0].route: Required value`,
`...: Invalid value: 150: must be less than or equal to 100`), so an operator sees the same
text meshd rejects with as the API server would have given them.
"""
from __future__ import annotations

import json
from dataclasses import dataclass


@dataclass(frozen=True)
class FieldError:
    field: str  # dotted path like "spec.http[0].route[1].destination.host"; "" for the whole doc
    reason: str  # human-readable, e.g. "Required value"

    def __str__(self) -> str:
        return f"{self.field}: {self.reason}" if self.field else self.reason


def child(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def index(path: str, i: int) -> str:
    return f"{path}[{i}]"


def map_key(path: str, key: object) -> str:
    # Kubernetes' field.Path renders map keys in brackets: metadata.labels[app]
    return f"{path}[{key}]"


def type_name(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


def render(value: object) -> str:
    """Show a value the way Kubernetes does in `Invalid value: ...` (short, JSON-ish)."""
    if isinstance(value, bool) or value is None:
        return json.dumps(value)
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value if len(value) <= 80 else value[:77] + "...")
    return json.dumps(type_name(value))


def required(path: str) -> FieldError:
    return FieldError(path, "Required value")


def invalid(path: str, value: object, detail: str) -> FieldError:
    return FieldError(path, f"Invalid value: {render(value)}: {detail}")


def unknown_field(path: str, key: str) -> FieldError:
    return FieldError(child(path, key), f'unknown field "{key}"')
