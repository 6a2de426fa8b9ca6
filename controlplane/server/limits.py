"""Per-request limits on what a client may ask for, so one request cannot make meshd
build or hold unbounded state: a request over them ends the stream with
RESOURCE_EXHAUSTED (the client sees the reason), never an exception or a crash.

Sizes beside these are gRPC's: messages up to 16 MiB (grpc_server.SERVER_OPTIONS).
"""
from __future__ import annotations

from typing import Sequence

# Names in one request (SotW resource_names, delta subscribe/unsubscribe). Envoy asks for
# one EDS name per EDS cluster, so this bounds the services one proxy can see.
MAX_RESOURCE_NAMES = 8192
# Bytes of one resource name: Istio's longest (`outbound|port|subset|host`,
# `kubernetes://ns/name`) stay far below.
MAX_NAME_BYTES = 4096


def names_problem(*lists: Sequence[str]) -> str | None:
    """Why these requested names are over the limits, or None."""
    count = sum(len(names) for names in lists)
    if count > MAX_RESOURCE_NAMES:
        return f"request names {count} resources, more than the limit of {MAX_RESOURCE_NAMES}"
    for names in lists:
        for name in names:
            if len(name) > MAX_NAME_BYTES // 4 and len(name.encode()) > MAX_NAME_BYTES:
                return f"resource name of {len(name.encode())} bytes, more than the limit of {MAX_NAME_BYTES}"
    return None
