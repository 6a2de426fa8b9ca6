"""Go-style durations ("1h2m3.5s", "300ms", "0.5s"), as CEL's duration() and Istio read them.

The CRDs guard every duration field with the CEL rule `duration(self) >= duration('1ms')`;
CEL parses the string with Go's time.ParseDuration, so that is the grammar accepted here:
an optional sign, then one or more <decimal number><unit> terms, or the bare string "0".
"""
from __future__ import annotations

import re
from fractions import Fraction

NANOSECOND = 1
MICROSECOND = 1_000
MILLISECOND = 1_000_000
SECOND = 1_000_000_000
MINUTE = 60 * SECOND
HOUR = 60 * MINUTE

_UNITS = {
    "ns": NANOSECOND,
    "us": MICROSECOND,
    "µs": MICROSECOND,  # U+00B5 micro sign
    "μs": MICROSECOND,  # U+03BC greek mu
    "ms": MILLISECOND,
    "s": SECOND,
    "m": MINUTE,
    "h": HOUR,
}
_TERM = re.compile(r"(\d*)(?:\.(\d*))?([^\d.]+)")
_MAX = (1 << 63) - 1  # Go's time.Duration is an int64 of nanoseconds


def parse_duration(text: str) -> int:
    """Return the duration in nanoseconds; raise ValueError like time.ParseDuration would."""
    if not isinstance(text, str):
        raise ValueError(f"duration must be a string, got {type(text).__name__}")
    s = text
    sign = 1
    if s[:1] in ("-", "+"):
        sign = -1 if s[0] == "-" else 1
        s = s[1:]
    if s == "0":
        return 0
    if not s:
        raise ValueError(f"invalid duration \"{text}\"")
    total = Fraction(0)
    pos = 0
    while pos < len(s):
        m = _TERM.match(s, pos)
        if not m:
            raise ValueError(f"invalid duration \"{text}\"")
        whole, frac, unit = m.group(1), m.group(2), m.group(3)
        if not whole and not frac:
            raise ValueError(f"invalid duration \"{text}\"")
        # The unit is the run of non-digit, non-dot characters; it must be a known one.
        if unit not in _UNITS:
            raise ValueError(f"unknown unit \"{unit}\" in duration \"{text}\"")
        value = Fraction(int(whole or "0"))
        if frac:
            value += Fraction(int(frac), 10 ** len(frac))
        total += value * _UNITS[unit]
        pos = m.end()
    nanos = int(total)  # Go truncates sub-nanosecond fractions
    if nanos > _MAX + (1 if sign < 0 else 0):
        raise ValueError(f"invalid duration \"{text}\": out of range")
    return sign * nanos


def is_valid(text: object) -> bool:
    try:
        parse_duration(text)  # type: ignore[arg-type]
    except ValueError:
        return False
    return True
