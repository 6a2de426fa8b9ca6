"""Per-request limits on what a client may ask for, so one request cannot make meshd
build or hold unbounded state: a request over them ends the stream with
RESOURCE_EXHAUSTED (the client sees the reason), never an exception or a crash.

Sizes beside these are gRPC's: messages up to 16 MiB (grpc_server.SERVER_OPTIONS).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

# Names in one request (SotW resource_names, delta subscribe/unsubscribe). Envoy asks for
# one EDS name per EDS cluster, so this bounds the services one proxy can see.
MAX_RESOURCE_NAMES = 8192
# Bytes of one resource name: Istio's longest (`outbound|port|subset|host`,
# `kubernetes://ns/name`) stay far below.
MAX_NAME_BYTES = 4096


@dataclass(frozen=True)
class Limits:
    max_resource_names: int = MAX_RESOURCE_NAMES
    max_name_bytes: int = MAX_NAME_BYTES

    def names_problem(self, *lists: Sequence[str]) -> str | None:
        """Why these requested names are over the limits, or None."""
        count = sum(len(names) for names in lists)
        if count > self.max_resource_names:
            return f"request names {count} resources, more than the limit of {self.max_resource_names}"
        limit = self.max_name_bytes
        for names in lists:
            for name in names:
                # (a str has at most 4 bytes per character: most names need no encoding)
                if len(name) > limit // 4 and len(name.encode()) > limit:
                    return f"resource name of {len(name.encode())} bytes, more than the limit of {limit}"
        return None
