"""What every typed Istio kind is built from: the readers that turn a validated document's
values into typed fields (the one place config data is coerced), durations, string
matches and percentages.

The parse gate validated the document, so these readers only normalise its shapes
(a YAML int or digit string as an int, a missing list as an empty tuple); they never
fail: a value that cannot be read reads as absent, as generators treated it before.
"""
from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

T = TypeVar("T")

EMPTY: Mapping[str, Any] = {}


def mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else EMPTY


def entries(value: Any) -> list:
    return list(value) if isinstance(value, (list, tuple)) else []


def each(value: Any, build: Callable[[Mapping[str, Any]], T]) -> tuple[T, ...]:
    """Every entry of a list, built; an entry that is no mapping reads as an empty one, so
    positions (and the field paths messages name) stay those of the document."""
    return tuple(build(mapping(v)) for v in entries(value))


def optional(value: Any, build: Callable[[Mapping[str, Any]], T]) -> T | None:
    """A block as written (an empty one included), None when absent."""
    return None if value is None else build(mapping(value))


def integer(value: Any, default: int | None = None) -> int | None:
    """An integer from YAML data (ints, or digit strings); bools are not numbers here."""
    if isinstance(value, bool):
        return default
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().isdigit():
        return int(value)
    return default


def text(value: Any) -> str:
    """A string field; absent (or empty) reads as ""."""
    return str(value) if value else ""


def strings(value: Any) -> tuple[str, ...]:
    """A list of strings, every entry kept."""
    return tuple(str(v) for v in entries(value))


def nonempty_strings(value: Any) -> tuple[str, ...]:
    """A list of names: empty entries carry nothing and are left out."""
    return tuple(str(v) for v in entries(value) if v)


def labels(value: Any) -> dict[str, str]:
    return {str(k): str(v) for k, v in mapping(value).items()}


# --- durations -------------------------------------------------------------------------

# Go's time.ParseDuration units, which Istio accepts besides protobuf's "1.5s".
_UNITS_NS = {"ns": 1, "us": 1_000, "µs": 1_000, "ms": 1_000_000, "s": 1_000_000_000,
             "m": 60_000_000_000, "h": 3_600_000_000_000}
_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
_NS_PER_S = 1_000_000_000


@dataclass(frozen=True, slots=True)
class Duration:
    """A non-negative duration, in nanoseconds."""

    total_nanos: int

    @property
    def seconds(self) -> int:
        return self.total_nanos // _NS_PER_S

    @property
    def nanos(self) -> int:
        return self.total_nanos % _NS_PER_S


def duration(value: Any) -> Duration | None:
    """`"10s"`, `"0.5s"`, `"1m30s"`, `"250ms"` (or a number of seconds); None when absent
    or unreadable."""
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        total_ns = int(round(float(value) * _NS_PER_S))
    elif isinstance(value, str):
        s = value.strip()
        pos, total = 0, 0.0
        if not s:
            return None
        for m in _PART.finditer(s):
            if m.start() != pos:
                return None
            total += float(m.group(1)) * _UNITS_NS[m.group(2)]
            pos = m.end()
        if pos != len(s):
            return None
        total_ns = int(round(total))
    else:
        return None
    return Duration(total_ns) if total_ns >= 0 else None


# --- string matches and percentages ------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StringMatch:
    """Istio's StringMatch: one of exact, prefix or regex (None: not given)."""

    exact: str | None = None
    prefix: str | None = None
    regex: str | None = None

    @property
    def presence(self) -> bool:
        """An empty StringMatch, or the regex `*`, means "present" in Istio (not a regex)."""
        return self.exact is None and self.prefix is None and self.regex in (None, "*")


def string_match(value: Any) -> StringMatch:
    m = mapping(value)
    return StringMatch(
        exact=str(m["exact"]) if "exact" in m else None,
        prefix=str(m["prefix"]) if "prefix" in m else None,
        regex=str(m["regex"]) if "regex" in m else None,
    )


def string_matches(value: Any) -> dict[str, StringMatch]:
    return {str(k): string_match(v) for k, v in mapping(value).items()}


def percent(value: Any) -> float | None:
    """Istio's `Percent {value: 12.5}` as a float in [0, 100]; None when absent or unreadable."""
    if not isinstance(value, Mapping):
        return None
    v = value.get("value", 0)
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    return float(v)


def integer_percent(value: Any) -> int:
    """The deprecated integer `percent` fields (0..100); anything else reads as 0."""
    return max(value, 0) if isinstance(value, int) and not isinstance(value, bool) else 0
