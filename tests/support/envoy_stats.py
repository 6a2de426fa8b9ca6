"""Envoy's metrics service reports as Envoy serializes them, for tests and benchmarks of
meshd's telemetry (controlplane/telemetry/counters.py reads them by their bytes)."""
from __future__ import annotations

import struct

from controlplane._gen.meshd.telemetry.v1 import metrics_sink_pb2 as pb


def encode_varint(n: int) -> bytes:
    out = bytearray()
    while True:
        out.append((n & 0x7F) | (0x80 if n > 0x7F else 0))
        n >>= 7
        if not n:
            return bytes(out)


def family(name: str, value: float, type_: int = 0) -> bytes:
    """A serialized io.prometheus.client.MetricFamily as Envoy writes it (proto2: `type`
    written even when COUNTER; one sample, no labels, a timestamp after the counter)."""
    if type_ != 0:
        f = pb.MetricFamily(name=name, type=type_)
        f.metric.add().gauge.value = value
        return f.SerializeToString()
    metric = b"\x1a\x09\x09" + struct.pack("<d", value) + b"\x30" + encode_varint(1765000000000)
    return b"\x0a" + encode_varint(len(name)) + name.encode() + b"\x18\x00\x22" + encode_varint(len(metric)) + metric
