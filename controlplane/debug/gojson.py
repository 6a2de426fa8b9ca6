"""JSON and YAML exactly as istioctl prints them (Go's encoders, not Python's).

istioctl's `-o json` and `-o yaml` outputs are what operators diff against, so three Go
behaviours are reproduced (the third in goyaml.py):

- `jsonpb(msg, indent)`: github.com/golang/protobuf/jsonpb's Marshaler (istio's
  `protomarshal.ToJSONWithIndent`): fields in declaration order, camelCase names, int64 as
  strings, map keys sorted, Any as `{"@type": ..., fields}`, well-known types in their JSON
  forms, and jsonpb's indentation, quirks included (a Struct value is indented one level
  deeper than its braces, which is how istioctl's bootstrap dump looks).
- `indent(compact)`: encoding/json's MarshalIndent over a compact document (istioctl's
  `json.MarshalIndent(protio.MessageSlice)`): literals kept verbatim, `{}`/`[]` stay inline.
- `to_yaml(json_text)` (goyaml.py): sigs.k8s.io/yaml's JSONToYAML (go-yaml v2).
"""
from __future__ import annotations

import base64
import functools
import importlib
import json
import math
import pkgutil
from typing import Any

from google.protobuf import descriptor_pool
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from .goscalars import go_float, go_string

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
