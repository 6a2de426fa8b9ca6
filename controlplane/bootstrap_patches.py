"""EnvoyFilter BOOTSTRAP patches, fetched from meshd and merged into a bootstrap being
written (`meshd bootstrap --fetch-envoy-filters`, `meshd pod-init --fetch-envoy-filters`).

istiod's pilot-agent fetches the whole bootstrap over xDS before it starts Envoy; meshd
has no agent, so the writer asks meshd's ADS port, with the proxy's own node and
credentials, for type `envoy.config.bootstrap.v3.Bootstrap`: one resource holding the
selected EnvoyFilters' MERGE values already merged in order (generators/envoyfilter/
bootstrap.py). Merging that into the bootstrap built here equals istiod's merge of each
patch in turn (proto merge is associative). A fetch that fails is an error: a bootstrap
never goes out silently missing the operator's patches.

The written bootstrap's node metadata carries `MESHD_BOOTSTRAP_PATCHES`, the version of
the patch merged, so meshd can tell (/debug/configz `bootstrapPatches`, the log) which
running proxies started without the current patches: a BOOTSTRAP change applies at a
proxy's next start, as in Istio.
"""
from __future__ import annotations

import json
import threading
from typing import TYPE_CHECKING, Any

from . import names
from .bootstrap import XdsTls

if TYPE_CHECKING:
    from envoy.config.bootstrap.v3 import bootstrap_pb2

MARKER = "MESHD_BOOTSTRAP_PATCHES"  # node metadata: the version of the patch merged
FETCHING = "fetching"  # the marker of the fetch itself (not a running proxy)
DEFAULT_TIMEOUT = 15.0


class BootstrapPatchError(ValueError):
    """The patches could not be fetched or merged: the message says which and why."""


def fetch(doc: dict[str, Any], xds_address: str, tls: XdsTls | None,
          timeout: float = DEFAULT_TIMEOUT) -> tuple[bootstrap_pb2.Bootstrap, str]:
    """The BOOTSTRAP patch meshd serves the node of `doc` (a bootstrap as built), and its
    version; BootstrapPatchError naming the address and the reason when that fails."""
    import grpc
    from envoy.config.bootstrap.v3 import bootstrap_pb2
    from envoy.config.core.v3 import base_pb2
    from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2
    from google.protobuf import json_format

    from .generators.resources import content_version  # the version meshd gives what it serves

    node = json_format.ParseDict(doc["node"], base_pb2.Node())
    node.metadata.fields[MARKER].string_value = FETCHING
    # The fetch is not the proxy: a VM's group must not auto-register it (the entry would
    # be removed again when the fetch's stream ends, under the Envoy that follows).
    if names.META_AUTO_REGISTER_GROUP in node.metadata.fields:
        del node.metadata.fields[names.META_AUTO_REGISTER_GROUP]
    request = discovery_pb2.DiscoveryRequest(node=node, type_url=names.BOOTSTRAP)
    metadata: list[tuple[str, str]] = []
    if tls is None:
        channel = grpc.insecure_channel(xds_address)
    else:
        channel = grpc.secure_channel(
            xds_address, grpc.ssl_channel_credentials(root_certificates=tls.root_cert_pem.encode()),
            options=[("grpc.ssl_target_name_override", tls.server_name)])
        token = tls.token or (_read_token(tls.token_path) if tls.token_path else "")
        if token:
            metadata.append(("authorization", f"Bearer {token}"))
    answered = threading.Event()

    def requests() -> Any:
        yield request
        answered.wait(timeout)  # keep the stream open until the answer is read

    what = f"fetching the EnvoyFilter BOOTSTRAP patches from meshd at {xds_address}"
    try:
        call = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel).StreamAggregatedResources(
            requests(), metadata=metadata, timeout=timeout)
        response = next(call)
    except grpc.RpcError as e:
        raise BootstrapPatchError(f"{what}: {e.code().name}: {e.details()}") from None
    except StopIteration:
        raise BootstrapPatchError(f"{what}: the stream ended without an answer") from None
    finally:
        answered.set()
        channel.close()
    if response.type_url != names.BOOTSTRAP or len(response.resources) != 1:
        raise BootstrapPatchError(f"{what}: expected one {names.BOOTSTRAP} resource, got "
                                  f"{len(response.resources)} of {response.type_url or 'no type'}")
    patch = bootstrap_pb2.Bootstrap()
    response.resources[0].Unpack(patch)
    return patch, content_version(response.resources[0].value)


def _read_token(path: str) -> str:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError as e:
        raise BootstrapPatchError(f"--token-path {path}: {e.strerror or e}") from None


def merge_into(doc: dict[str, Any], patch: bootstrap_pb2.Bootstrap, version: str) -> dict[str, Any]:
    """`doc` (a bootstrap as built, JSON-shaped) with `patch` merged in as proto merge does,
    and the node metadata MARKER set to `version`. BootstrapPatchError when the result
    would name a static listener or cluster twice (Envoy refuses it)."""
    from envoy.config.bootstrap.v3 import bootstrap_pb2
    from google.protobuf import json_format

    from .config.types.envoyfilter import _load_types

    if patch == bootstrap_pb2.Bootstrap():
        return {**doc, "node": {**doc["node"], "metadata": {**doc["node"].get("metadata", {}), MARKER: version}}}
    _load_types(doc)  # the typed_configs of the built bootstrap, for the parser
    built = json_format.ParseDict(doc, bootstrap_pb2.Bootstrap())
    for what, ours, theirs in (("cluster", built.static_resources.clusters, patch.static_resources.clusters),
                               ("listener", built.static_resources.listeners, patch.static_resources.listeners)):
        clash = sorted({c.name for c in ours} & {c.name for c in theirs})
        if clash:
            raise BootstrapPatchError(f"the EnvoyFilter BOOTSTRAP patches add static {what} {clash[0]!r}, which the "
                                      "bootstrap already has (Envoy would refuse it): rename it in the EnvoyFilter")
    built.MergeFrom(patch)
    built.node.metadata.fields[MARKER].string_value = version
    # Plain dicts for the YAML writer (MessageToDict gives OrderedDicts for Any fields), and
    # whole numbers as integers: a Struct holds every number as a double, and Envoy's
    # runtime reads a written `42.0` as the text "42.0", not as the integer 42.
    out: dict[str, Any] = json.loads(json_format.MessageToJson(built, preserving_proto_field_name=True),
                                     parse_float=_number)
    return out


def _number(text: str) -> float | int:
    value = float(text)
    return int(value) if value.is_integer() else value


__all__ = ["BootstrapPatchError", "MARKER", "fetch", "merge_into"]
