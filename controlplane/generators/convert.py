"""Istio API values (durations, percentages, string matches) as Envoy protos.

Config reaches generators typed (config/types/): what could not be read there is None,
and the caller leaves the field unset.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from envoy.config.core.v3 import config_source_pb2
from envoy.type.matcher.v3 import regex_pb2, string_pb2
from envoy.type.v3 import percent_pb2
from google.protobuf import any_pb2, duration_pb2, struct_pb2
from google.protobuf.message import Message

from ..config.types import common as types_common


def duration(value: Any) -> duration_pb2.Duration | None:
    """`"10s"`, `"0.5s"`, `"1m30s"`, `"250ms"` (or a number of seconds) -> Duration."""
    return proto_duration(types_common.duration(value))


def proto_duration(d: types_common.Duration | None) -> duration_pb2.Duration | None:
    """A typed config duration as the protobuf Duration (None stays None)."""
    return None if d is None else duration_pb2.Duration(seconds=d.seconds, nanos=d.nanos)


def fractional_percent(value: float) -> percent_pb2.FractionalPercent:
    """Istio `Percent {value: 12.5}` (a float in [0, 100]) -> parts per million, as istiod does."""
    return percent_pb2.FractionalPercent(numerator=int(value * 10000), denominator=percent_pb2.FractionalPercent.MILLION)


def integer_percent(value: int) -> percent_pb2.FractionalPercent:
    """The deprecated integer `percent` fields (0..100)."""
    return percent_pb2.FractionalPercent(numerator=max(value, 0), denominator=percent_pb2.FractionalPercent.HUNDRED)


def string_matcher(match: types_common.StringMatch) -> string_pb2.StringMatcher | None:
    """Istio StringMatch {exact|prefix|regex} -> Envoy StringMatcher (RE2 is Envoy's default engine)."""
    if match.exact is not None:
        return string_pb2.StringMatcher(exact=match.exact)
    if match.prefix is not None:
        return string_pb2.StringMatcher(prefix=match.prefix)
    if match.regex is not None:
        return string_pb2.StringMatcher(safe_regex=regex_pb2.RegexMatcher(regex=match.regex))
    return None


def typed(msg: Message) -> any_pb2.Any:
    a = any_pb2.Any()
    a.Pack(msg)
    return a


def struct(data: Mapping[str, Any]) -> struct_pb2.Struct:
    s = struct_pb2.Struct()
    s.update(dict(data))
    return s


def ads_config_source() -> config_source_pb2.ConfigSource:
    """Fetch over the ADS stream. initial_fetch_timeout 0 makes Envoy wait for the answer
    instead of going on without the resource after 15 s (istiod does the same)."""
    return config_source_pb2.ConfigSource(
        ads=config_source_pb2.AggregatedConfigSource(),
        initial_fetch_timeout=duration_pb2.Duration(),
        resource_api_version=config_source_pb2.V3,
    )
