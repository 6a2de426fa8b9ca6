"""EnvoyFilter `applyTo: BOOTSTRAP`: the patches a proxy's bootstrap gets when it is written.

istiod builds the whole bootstrap server side and merges each BOOTSTRAP patch into it with
`proto.Merge` (pilot/pkg/xds/bootstrapds.go); pilot-agent fetches that before it starts
Envoy (BOOTSTRAP_XDS_AGENT), so a patch applies at the proxy's next start. meshd has no
agent and writes bootstraps itself (`meshd bootstrap`, `meshd pod-init`), so it serves
only the patches: type `envoy.config.bootstrap.v3.Bootstrap`, one resource named
`bootstrap`, the selected EnvoyFilters' MERGE values merged in their order into an empty
Bootstrap. The writer merges that into the bootstrap it builds. Plain proto merge (set
scalars overwrite, messages merge, repeated fields append, an `Any` is replaced whole)
is associative, so merging the merged patches equals merging each patch in turn, as
istiod does (tests/unit/test_envoy_filter_bootstrap.py checks it).

Unlike istiod, `match.context` (GATEWAY: routers, SIDECAR_*: sidecars) and
`match.proxy` are honoured, and a patch Envoy would refuse (a static listener or cluster
named twice, a filter without typed_config, ...) is left out and reported as for every
other applyTo (apply.py).
"""
from __future__ import annotations

from collections.abc import Sequence

from envoy.config.bootstrap.v3 import bootstrap_pb2
from google.protobuf.message import Message

from ... import names
from ...config.types.envoyfilter import ConfigPatch
from ...model.mesh import MeshSnapshot
from ...model.proxy import Proxy
from . import checks

KIND = "BOOTSTRAP"


def build(mesh: MeshSnapshot, proxy: Proxy) -> list[tuple[str, Message]]:
    """The unpatched resource: an empty Bootstrap (the EnvoyFilter stage merges into it)."""
    return [(names.BOOTSTRAP_RESOURCE, bootstrap_pb2.Bootstrap())]


def merge_patch(items: list[Message], cp: ConfigPatch, op: str, value: Message | None, proxy: Proxy) -> int:
    """apply.py's step for one BOOTSTRAP patch: istiod's proto.Merge, MERGE only."""
    if op != "MERGE" or value is None:
        raise checks.Rejected(f"operation {op or '(none)'} is not valid for BOOTSTRAP (MERGE only)")
    for bs in items:
        bs.MergeFrom(value)
    return len(items)


def check(items: Sequence[Message]) -> str:
    """What Envoy would refuse in the static resources the patches add (the rest of the
    bootstrap is checked where it is written, against what the writer built)."""
    for bs in items:
        if bs.dynamic_resources.ads_config.grpc_services:
            # meshd's bootstrap has its ADS service; Envoy takes exactly one ("Only
            # singleton gRPC service lists supported"), so a second would stop it starting
            return "dynamic_resources.ads_config.grpc_services: the bootstrap's ADS service is meshd's"
        static = bs.static_resources
        reason = checks.check("LISTENER", list(static.listeners)) or checks.check("CLUSTER", list(static.clusters))
        if reason:
            return f"static_resources: {reason}"
    return ""


__all__ = ["KIND", "build", "check", "merge_patch"]
