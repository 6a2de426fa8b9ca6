"""Istio API values (durations, percentages, string matches) as Envoy protos.

Config reaches generators as plain YAML data, so every value is read defensively: a
value that cannot be understood yields None and the caller leaves the field unset,
rather than one odd object taking down generation for every proxy.
"""
from __future__ import annotations

from typing import Any, Mapping

from google.protobuf import any_pb2, duration_pb2, struct_pb2
from google.protobuf.message import Message

from envoy.config.core.v3 import config_source_pb2
from envoy.type.matcher.v3 import regex_pb2, string_pb2
from envoy.type.v3 import percent_pb2

from ..config.types import common as types_common


def duration(value: Any) -> duration_pb2.Duration | None:
    """`"10s"`, `"0.5s"`, `"1m30s"`, `"250ms"` (or a number of seconds) -> Duration."""
    return proto_duration(types_common.duration(value))


def proto_duration(d: types_common.Duration | None) -> duration_pb2.Duration | None:
    """A typed config duration as the protobuf Duration (None stays None)."""
    return None if d is None else duration_pb2.Duration(seconds=d.seconds, nanos=d.nanos)


def fractional_percent(value: Any) -> percent_pb2.FractionalPercent | None:
    """Istio `Percent {value: 12.5}` (a float in [0, 100]) -> parts per million, as istiod does."""
    if not isinstance(value, Mapping):
        return None
    v = value.get("value", 0)
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    return percent_pb2.FractionalPercent(
        numerator=int(float(v) * 10000), denominator=percent_pb2.FractionalPercent.MILLION
    )


def integer_percent(value: Any) -> percent_pb2.FractionalPercent:
    """The deprecated integer `percent` fields (0..100)."""
    n = value if isinstance(value, int) and not isinstance(value, bool) else 0
    return percent_pb2.FractionalPercent(numerator=max(n, 0), denominator=percent_pb2.FractionalPercent.HUNDRED)


def is_presence_match(match: Any) -> bool:
    """An empty StringMatch, or the regex `*`, means "present" in Istio (not a regex)."""
    if not isinstance(match, Mapping):
        return True
    kinds = [k for k in ("exact", "prefix", "regex") if k in match]
    if not kinds:
        return True
    return kinds == ["regex"] and match.get("regex") == "*"


def string_matcher(match: Any) -> string_pb2.StringMatcher | None:
    """Istio StringMatch {exact|prefix|regex} -> Envoy StringMatcher (RE2 is Envoy's default engine)."""
    if not isinstance(match, Mapping):
        return None
    if "exact" in match:
        return string_pb2.StringMatcher(exact=str(match["exact"]))
    if "prefix" in match:
        return string_pb2.StringMatcher(prefix=str(match["prefix"]))
    if "regex" in match:
        return string_pb2.StringMatcher(safe_regex=regex_pb2.RegexMatcher(regex=str(match["regex"])))
    return None


def typed(msg: Message) -> any_pb2.Any:
    a = any_pb2.Any()
    a.Pack(msg)
    return a


def struct(data: Mapping[str, Any]) -> struct_pb2.Struct:
    s = struct_pb2.Struct()
    s.update(dict(data))
    return s


def as_int(value: Any, default: int | None = None) -> int | None:
    """An integer from YAML data (ints, or digit strings); bools are not numbers here."""
    if isinstance(value, bool):
        return default
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().isdigit():
        return int(value)
    return default


def as_list(value: Any) -> list:
    return list(value) if isinstance(value, (list, tuple)) else []


def as_map(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def ads_config_source() -> config_source_pb2.ConfigSource:
    """Fetch over the ADS stream. initial_fetch_timeout 0 makes Envoy wait for the answer
    instead of going on without the resource after 15 s (istiod does the same)."""
    return config_source_pb2.ConfigSource(
        ads=config_source_pb2.AggregatedConfigSource(),
        initial_fetch_timeout=duration_pb2.Duration(),
        resource_api_version=config_source_pb2.V3,
    )
