"""Go's encoding/json scalars: strings quoted as json.Marshal quotes them, floats in
strconv's shortest form ('g' as jsonpb writes them): the pieces gojson.py and goyaml.py
build their documents from.
"""
from __future__ import annotations

import math
import re
import struct

_HEX = "0123456789abcdef"


def go_string(s: str) -> str:
    """encoding/json's quoting: HTML-safe, \\u2028/\\u2029 escaped, control chars as \\u00XX
    except \\n \\r \\t."""
    out = ['"']
    for ch in s:
        o = ord(ch)
        if ch == '"':
            out.append('\\"')
        elif ch == "\\":
            out.append("\\\\")
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\r":
            out.append("\\r")
        elif ch == "\t":
            out.append("\\t")
        elif o < 0x20 or ch in "<>&" or o in (0x2028, 0x2029):
            out.append(f"\\u{o:04x}")
        elif 0xD800 <= o <= 0xDFFF:  # lone surrogate: Go writes U+FFFD for invalid UTF-8
            out.append("\ufffd")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def _shortest_float32(f: float) -> str:
    packed = struct.unpack("f", struct.pack("f", f))[0]
    for p in range(1, 10):
        s = f"{packed:.{p}g}"
        if struct.unpack("f", struct.pack("f", float(s)))[0] == packed:
            return s
    return repr(packed)


def _digits(f: float, bits: int) -> tuple[str, int]:
    """Shortest decimal digits and decimal exponent (value = 0.d1d2.. * 10**dp) of |f|."""
    r = _shortest_float32(abs(f)) if bits == 32 else repr(abs(f))
    mant, _, exp = r.lower().partition("e")
    e = int(exp) if exp else 0
    intpart, _, frac = mant.partition(".")
    digits = (intpart + frac).lstrip("0")
    lead_zeros = len(intpart + frac) - len((intpart + frac).lstrip("0"))
    dp = len(intpart) + e - lead_zeros
    digits = digits.rstrip("0") or "0"
    return digits, dp


def _format_f(digits: str, dp: int) -> str:
    if dp <= 0:
        return "0." + "0" * (-dp) + digits
    if dp >= len(digits):
        return digits + "0" * (dp - len(digits))
    return digits[:dp] + "." + digits[dp:]


def _format_e(digits: str, dp: int) -> str:
    exp = dp - 1
    m = digits[0] + ("." + digits[1:] if len(digits) > 1 else "")
    sign = "-" if exp < 0 else "+"
    return f"{m}e{sign}{abs(exp):02d}"


def go_float(f: float, bits: int = 64) -> str:
    """encoding/json's float formatting ('f' between 1e-6 and 1e21, else 'e', e-07 -> e-7)."""
    if f == 0:
        return "-0" if math.copysign(1, f) < 0 else "0"
    sign = "-" if f < 0 else ""
    digits, dp = _digits(f, bits)
    a = abs(f)
    if a < 1e-6 or a >= 1e21:
        s = _format_e(digits, dp)
        s = re.sub(r"e([+-])0(\d)$", r"e\1\2", s)
    else:
        s = _format_f(digits, dp)
    return sign + s


def go_float_g(f: float, bits: int = 64) -> str:
    """strconv.FormatFloat(f, 'g', -1, bits), as go-yaml prints floats."""
    if math.isinf(f):
        return "+Inf" if f > 0 else "-Inf"
    if math.isnan(f):
        return "NaN"
    if f == 0:
        return "-0" if math.copysign(1, f) < 0 else "0"
    sign = "-" if f < 0 else ""
    digits, dp = _digits(f, bits)
    exp = dp - 1
    eprec = 6  # strconv: shortest %g switches to %e at exponent < -4 or >= 6
    if exp < -4 or exp >= eprec:
        return sign + _format_e(digits, dp)
    return sign + _format_f(digits, dp)
