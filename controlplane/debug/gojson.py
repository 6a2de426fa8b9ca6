"""JSON and YAML exactly as istioctl prints them (Go's encoders, not Python's).

istioctl's `-o json` and `-o yaml` outputs are what operators diff against, so three Go
behaviours are reproduced here:

- `jsonpb(msg, indent)`: github.com/golang/protobuf/jsonpb's Marshaler (istio's
  `protomarshal.ToJSONWithIndent`): fields in declaration order, camelCase names, int64 as
  strings, map keys sorted, Any as `{"@type": ..., fields}`, well-known types in their JSON
  forms, and jsonpb's indentation, quirks included (a Struct value is indented one level
  deeper than its braces, which is how istioctl's bootstrap dump looks).
- `indent(compact)`: encoding/json's MarshalIndent over a compact document (istioctl's
  `json.MarshalIndent(protio.MessageSlice)`): literals kept verbatim, `{}`/`[]` stay inline.
- `to_yaml(json_text)`: sigs.k8s.io/yaml's JSONToYAML (go-yaml v2): keys sorted with
  go-yaml's "natural" order, strings that would read back as another type double-quoted.
"""
from __future__ import annotations

import base64
import functools
import importlib
import json
import math
import pkgutil
import re
import struct
from typing import Any

import yaml
from google.protobuf import descriptor_pool
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

# --- Go json.Marshal pieces ------------------------------------------------------------

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


# --- jsonpb ---------------------------------------------------------------------------

_WRAPPERS = {
    "google.protobuf.DoubleValue", "google.protobuf.FloatValue", "google.protobuf.Int64Value",
    "google.protobuf.UInt64Value", "google.protobuf.Int32Value", "google.protobuf.UInt32Value",
    "google.protobuf.BoolValue", "google.protobuf.StringValue", "google.protobuf.BytesValue",
}
_INT64 = {FieldDescriptor.TYPE_INT64, FieldDescriptor.TYPE_UINT64, FieldDescriptor.TYPE_SINT64,
          FieldDescriptor.TYPE_FIXED64, FieldDescriptor.TYPE_SFIXED64}
_FLOATS = {FieldDescriptor.TYPE_FLOAT: 32, FieldDescriptor.TYPE_DOUBLE: 64}


class UnknownType(Exception):
    """An Any names a type no imported module defines."""


@functools.cache
def _import_package(package: str) -> bool:
    """Import every generated module of a protobuf package (e.g. envoy.config.cluster.v3)."""
    try:
        pkg = importlib.import_module(package)
    except ImportError:
        return False
    for info in pkgutil.iter_modules(getattr(pkg, "__path__", [])):
        if info.name.endswith("_pb2"):
            try:
                importlib.import_module(f"{package}.{info.name}")
            except Exception:  # a broken module must not hide the others
                pass
    return True


def message_class(type_url: str):
    """The generated class for a type URL, importing its package on first use."""
    full_name = type_url.rsplit("/", 1)[-1]
    pool = descriptor_pool.Default()
    try:
        desc = pool.FindMessageTypeByName(full_name)
    except KeyError:
        package = full_name.rsplit(".", 1)[0]
        # Nested types: try shorter prefixes too (pkg.Outer.Inner).
        while package and not _import_package(package):
            package = package.rsplit(".", 1)[0] if "." in package else ""
        try:
            desc = pool.FindMessageTypeByName(full_name)
        except KeyError:
            raise UnknownType(full_name) from None
    return _get_class(desc)


def _get_class(desc):
    from google.protobuf import message_factory

    return message_factory.GetMessageClass(desc)


def preload_types(type_urls) -> None:
    for url in set(type_urls):
        try:
            message_class(url)
        except UnknownType:
            pass


# Any values whose type is unknown to this process are kept as their JSON (see configdump.py).
OPAQUE_PREFIX = b"\x00meshd-json\x00"


def _has(msg: Message, fd: FieldDescriptor) -> bool:
    if fd.is_repeated:
        return len(getattr(msg, fd.name)) > 0
    if getattr(fd, "has_presence", fd.message_type is not None or fd.containing_oneof is not None):
        return msg.HasField(fd.name)
    return getattr(msg, fd.name) != fd.default_value


class _Writer:
    def __init__(self, indent: str):
        self.ind = indent
        self.out: list[str] = []

    def w(self, s: str) -> None:
        self.out.append(s)

    def comma(self) -> None:
        self.w(",")
        if self.ind:
            self.w("\n")

    # marshalMessage
    def message(self, m: Message, indent: str, type_url: str = "") -> None:
        name = m.DESCRIPTOR.full_name
        if name == "google.protobuf.Any":
            return self.any(m, indent)
        if name in _WRAPPERS:
            fd = m.DESCRIPTOR.fields_by_number[1]
            return self.value(fd, getattr(m, fd.name), indent)
        if name == "google.protobuf.Duration":
            return self.w(go_string(_duration(m.seconds, m.nanos)))
        if name == "google.protobuf.Timestamp":
            return self.w(go_string(_timestamp(m.seconds, m.nanos)))
        if name == "google.protobuf.Value":
            kind = m.WhichOneof("kind")
            if kind is None:
                raise ValueError("nil Value")
            fd = m.DESCRIPTOR.fields_by_name[kind]
            return self.value(fd, getattr(m, kind), indent)
        if name in ("google.protobuf.Struct", "google.protobuf.ListValue"):
            fd = m.DESCRIPTOR.fields_by_number[1]
            return self.value(fd, getattr(m, fd.name), indent)

        self.w("{")
        if self.ind:
            self.w("\n")
        first = True
        if type_url:
            self.type_url(indent, type_url)
            first = False
        fields = m.DESCRIPTOR.fields
        i = 0
        while i < len(fields):
            fd = fields[i]
            od = fd.containing_oneof
            if od is not None:
                i += len(od.fields)
                which = m.WhichOneof(od.name)
                if which is None:
                    continue
                fd = m.DESCRIPTOR.fields_by_name[which]
            else:
                i += 1
            if not _has(m, fd):
                continue
            if not first:
                self.comma()
            self.field(fd, getattr(m, fd.name), indent)
            first = False
        if self.ind:
            self.w("\n")
            self.w(indent)
        self.w("}")

    def type_url(self, indent: str, url: str) -> None:
        if self.ind:
            self.w(indent + self.ind)
        self.w('"@type":')
        if self.ind:
            self.w(" ")
        self.w(go_string(url))

    def any(self, m: Message, indent: str) -> None:
        url, raw = m.type_url, m.value
        if raw.startswith(OPAQUE_PREFIX):
            return self.opaque(url, json.loads(raw[len(OPAQUE_PREFIX):]), indent)
        cls = message_class(url)
        inner = cls()
        inner.ParseFromString(raw)
        name = inner.DESCRIPTOR.full_name
        if not _well_known(name):
            return self.message(inner, indent, url)
        self.w("{")
        if self.ind:
            self.w("\n")
        self.type_url(indent, url)
        self.comma()
        if self.ind:
            self.w(indent + self.ind + '"value": ')
        else:
            self.w('"value":')
        self.message(inner, indent + self.ind)
        if self.ind:
            self.w("\n" + indent)
        self.w("}")

    def opaque(self, url: str, body: dict, indent: str) -> None:
        """An Any of a type this process cannot decode: its JSON fields as they came."""
        self.w("{")
        if self.ind:
            self.w("\n")
        self.type_url(indent, url)
        for k, v in body.items():
            self.comma()
            if self.ind:
                self.w(indent + self.ind)
            self.w(go_string(k) + (": " if self.ind else ":"))
            self.plain(v, indent + self.ind)
        if self.ind:
            self.w("\n" + indent)
        self.w("}")

    def plain(self, v: Any, indent: str) -> None:
        if isinstance(v, dict):
            self.w("{")
            for n, (k, x) in enumerate(v.items()):
                if n:
                    self.w(",")
                if self.ind:
                    self.w("\n" + indent + self.ind)
                self.w(go_string(k) + (": " if self.ind else ":"))
                self.plain(x, indent + self.ind)
            if self.ind and v:
                self.w("\n" + indent)
            self.w("}")
        elif isinstance(v, list):
            self.w("[")
            for n, x in enumerate(v):
                if n:
                    self.w(",")
                if self.ind:
                    self.w("\n" + indent + self.ind)
                self.plain(x, indent + self.ind)
            if self.ind and v:
                self.w("\n" + indent)
            self.w("]")
        elif isinstance(v, str):
            self.w(go_string(v))
        elif v is None:
            self.w("null")
        elif isinstance(v, bool):
            self.w("true" if v else "false")
        elif isinstance(v, float):
            self.w(go_float(v))
        else:
            self.w(str(v))

    # marshalField
    def field(self, fd: FieldDescriptor, v: Any, indent: str) -> None:
        if self.ind:
            self.w(indent + self.ind)
        self.w('"' + fd.json_name + '":')
        if self.ind:
            self.w(" ")
        self.value(fd, v, indent)

    # marshalValue
    def value(self, fd: FieldDescriptor, v: Any, indent: str) -> None:
        if _is_map(fd):
            kfd = fd.message_type.fields_by_name["key"]
            vfd = fd.message_type.fields_by_name["value"]
            keys = sorted(v.keys())
            self.w("{")
            for n, k in enumerate(keys):
                if n:
                    self.w(",")
                if self.ind:
                    self.w("\n" + indent + self.ind + self.ind)
                self.w(go_string(_map_key(kfd, k)))
                self.w(":")
                if self.ind:
                    self.w(" ")
                self.singular(vfd, v[k], indent + self.ind)
            if self.ind:
                self.w("\n" + indent + self.ind)
            self.w("}")
        elif fd.is_repeated:
            self.w("[")
            for n, item in enumerate(v):
                if n:
                    self.w(",")
                if self.ind:
                    self.w("\n" + indent + self.ind + self.ind)
                self.singular(fd, item, indent + self.ind)
            if self.ind:
                self.w("\n" + indent + self.ind)
            self.w("]")
        else:
            self.singular(fd, v, indent)

    # marshalSingularValue
    def singular(self, fd: FieldDescriptor, v: Any, indent: str) -> None:
        if fd.message_type is not None:
            return self.message(v, indent + self.ind)
        if fd.enum_type is not None:
            if fd.enum_type.full_name == "google.protobuf.NullValue":
                return self.w("null")
            ev = fd.enum_type.values_by_number.get(v)
            return self.w(str(v) if ev is None else '"' + ev.name + '"')
        t = fd.type
        if t in _FLOATS:
            if math.isinf(v):
                return self.w('"Infinity"' if v > 0 else '"-Infinity"')
            if math.isnan(v):
                return self.w('"NaN"')
            return self.w(go_float(v, _FLOATS[t]))
        if t in _INT64:
            return self.w(f'"{v}"')
        if t == FieldDescriptor.TYPE_BOOL:
            return self.w("true" if v else "false")
        if t == FieldDescriptor.TYPE_STRING:
            return self.w(go_string(v))
        if t == FieldDescriptor.TYPE_BYTES:
            return self.w('"' + base64.b64encode(v).decode() + '"')
        self.w(str(v))


def _is_map(fd: FieldDescriptor) -> bool:
    return (fd.is_repeated and fd.message_type is not None
            and fd.message_type.GetOptions().map_entry)


def _map_key(kfd: FieldDescriptor, k: Any) -> str:
    if isinstance(k, bool):
        return "true" if k else "false"
    return str(k)


def _well_known(name: str) -> bool:
    return name in _WRAPPERS or name in (
        "google.protobuf.Any", "google.protobuf.Duration", "google.protobuf.Timestamp", "google.protobuf.Struct",
        "google.protobuf.ListValue", "google.protobuf.Value",
    )


def _duration(s: int, ns: int) -> str:
    sign = ""
    if s < 0 or ns < 0:
        sign, s, ns = "-", -s, -ns
    x = f"{sign}{s}.{ns:09d}"
    for suffix in ("000", "000", ".000"):
        if x.endswith(suffix):
            x = x[: -len(suffix)]
    return x + "s"


def _timestamp(s: int, ns: int) -> str:
    import datetime as dt

    t = dt.datetime(1970, 1, 1, tzinfo=dt.UTC) + dt.timedelta(seconds=s)
    x = t.strftime("%Y-%m-%dT%H:%M:%S") + f".{ns:09d}"
    for suffix in ("000", "000", ".000"):
        if x.endswith(suffix):
            x = x[: -len(suffix)]
    return x + "Z"


def jsonpb(msg: Message, indent: str = "") -> str:
    w = _Writer(indent)
    w.message(msg, "")
    return "".join(w.out)


# --- encoding/json Indent --------------------------------------------------------------

def indent(compact: str, prefix: str = "", unit: str = "    ") -> str:
    """json.Indent: whitespace rewritten, strings and literals copied verbatim."""
    out: list[str] = []
    depth = 0
    need_indent = False
    i, n = 0, len(compact)

    def newline() -> None:
        out.append("\n" + prefix + unit * depth)

    while i < n:
        c = compact[i]
        if c in " \t\r\n":
            i += 1
            continue
        if need_indent and c not in "]}":
            need_indent = False
            depth += 1
            newline()
        if c == '"':
            j = i + 1
            while j < n:
                if compact[j] == "\\":
                    j += 2
                    continue
                if compact[j] == '"':
                    break
                j += 1
            out.append(compact[i:j + 1])
            i = j + 1
            continue
        if c in "{[":
            out.append(c)
            need_indent = True
        elif c == ",":
            out.append(c)
            newline()
        elif c == ":":
            out.append(": ")
        elif c in "}]":
            if need_indent:
                need_indent = False  # empty object/array stays inline
            else:
                depth -= 1
                newline()
            out.append(c)
        else:
            out.append(c)
        i += 1
    return "".join(out)


def marshal_indent_messages(messages: list[Message]) -> str:
    """`json.MarshalIndent(protio.MessageSlice(messages), "", "    ")`."""
    compact = "[" + ",".join(jsonpb(m) for m in messages) + "]"
    return indent(compact)


# --- go-yaml v2 ------------------------------------------------------------------------

def _yaml_key_less(a: str, b: str) -> bool:
    """go-yaml v2's keyList.Less for two string keys."""
    ar, br = a, b
    for i in range(min(len(ar), len(br))):
        if ar[i] == br[i]:
            continue
        al, bl = ar[i].isalpha(), br[i].isalpha()
        if al and bl:
            return ar[i] < br[i]
        if al or bl:
            return bl
        an = bn = 0
        if ar[i] == "0" or br[i] == "0":
            j = i - 1
            while j >= 0 and ar[j].isdigit():
                if ar[j] != "0":
                    an = bn = 1
                    break
                j -= 1
        ai = i
        while ai < len(ar) and ar[ai].isdigit():
            an = an * 10 + int(ar[ai])
            ai += 1
        bi = i
        while bi < len(br) and br[bi].isdigit():
            bn = bn * 10 + int(br[bi])
            bi += 1
        if an != bn:
            return an < bn
        if ai != bi:
            return ai < bi
        return ar[i] < br[i]
    return len(ar) < len(br)


def _yaml_key_cmp(a: Any, b: Any) -> int:
    if not isinstance(a, str) or not isinstance(b, str):
        return (str(a) > str(b)) - (str(a) < str(b))
    if _yaml_key_less(a, b):
        return -1
    if _yaml_key_less(b, a):
        return 1
    return 0


_V2_BOOL_NULL = {
    "y", "Y", "yes", "Yes", "YES", "n", "N", "no", "No", "NO", "true", "True", "TRUE", "false", "False", "FALSE",
    "on", "On", "ON", "off", "Off", "OFF", "~", "null", "Null", "NULL", "", ".inf", ".Inf", ".INF", "+.inf",
    "+.Inf", "+.INF", "-.inf", "-.Inf", "-.INF", ".nan", ".NaN", ".NAN", "<<",
}
_V2_FLOAT = re.compile(r"^[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?$")
_V2_BASE60 = re.compile(r"^[-+]?[0-9][0-9_]*(?::[0-5]?[0-9])+(?:\.[0-9_]*)?$")
_V2_TIMESTAMP = re.compile(
    r"^\d{4}-\d{1,2}-\d{1,2}(?:(?:[Tt]| )\d{1,2}:\d{1,2}:\d{1,2}(?:\.\d*)?(?:Z|[+-]\d{1,2}:\d{2})?)?$"
)
_V2_INT = re.compile(r"^[-+]?(0[xX][0-9a-fA-F]+|0[oO][0-7]+|0[bB][01]+|0[0-7]*|[1-9][0-9]*)$")


def _v2_non_string(s: str) -> bool:
    """Would go-yaml v2 read this plain scalar back as something other than a string?"""
    if s in _V2_BOOL_NULL:
        return True
    plain = s.replace("_", "")
    if _V2_INT.match(plain) or _V2_FLOAT.match(plain) and plain not in (".", "-.", "+."):
        return True
    if s[:2] in ("0b", "-0") and re.match(r"^-?0b[01_]+$", s):
        return True
    return bool(_V2_BASE60.match(s) or _V2_TIMESTAMP.match(s))


class _GoYamlDumper(yaml.SafeDumper):
    def ignore_aliases(self, data: Any) -> bool:
        return True


def _repr_str(dumper: yaml.SafeDumper, s: str):
    if "\n" in s:
        return dumper.represent_scalar("tag:yaml.org,2002:str", s, style="|")
    if _v2_non_string(s):
        return dumper.represent_scalar("tag:yaml.org,2002:str", s, style='"')
    return dumper.represent_scalar("tag:yaml.org,2002:str", s)


def _repr_float(dumper: yaml.SafeDumper, f: float):
    text = go_float_g(f)
    text = {"+Inf": ".inf", "-Inf": "-.inf", "NaN": ".nan"}.get(text, text)
    return dumper.represent_scalar("tag:yaml.org,2002:float", text)


def _repr_dict(dumper: yaml.SafeDumper, d: dict):
    key_of = functools.cmp_to_key(_yaml_key_cmp)
    items = sorted(d.items(), key=lambda kv: key_of(kv[0]))
    return dumper.represent_mapping("tag:yaml.org,2002:map", items)


_GoYamlDumper.add_representer(str, _repr_str)
_GoYamlDumper.add_representer(float, _repr_float)
_GoYamlDumper.add_representer(dict, _repr_dict)


def _parse_json_like_go_yaml(text: str) -> Any:
    """JSON to Python values the way go-yaml reads JSON: integers stay integers."""
    return json.loads(text)


def to_yaml(json_text: str) -> str:
    """sigs.k8s.io/yaml.JSONToYAML."""
    data = _parse_json_like_go_yaml(json_text)
    return yaml.dump(data, Dumper=_GoYamlDumper, default_flow_style=False, allow_unicode=True, width=80,
                     sort_keys=False)
