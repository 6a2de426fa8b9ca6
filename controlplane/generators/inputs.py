"""What generated output can read, by name: the inputs of the generator cache's keys.

- one per config kind (KNOWN_KINDS), and `OTHER` for every kind not listed there (and
  the mesh config): a kind added later (ServiceEntry, Sidecar, ...) is therefore an input
  of everything until someone declares who reads it: correct first, precise later;
- narrower views of a kind: `DR_ROUTING` (what routes read of DestinationRules),
  `ENDPOINT_FACTS` (the few things non-EDS output reads of endpoints);
- `MESH_VERSION`: the whole snapshot, for output nobody has analysed;
- and what a part reads through the per-proxy fingerprints its scope calls (ENDPOINTS,
  INSTANCES, PROXY_LOCALITY, JWKS, MESH_CONFIG, DR_SELECTORS).

dependencies.py computes the fingerprints; STANDS_FOR and `stands_for` say which inputs
each one covers, which tracking mode (ledger.py) holds every part's build to.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, TypeVar

from ..config import kinds

GATEWAY = kinds.GATEWAY.kind
VIRTUAL_SERVICE = kinds.VIRTUAL_SERVICE.kind
DESTINATION_RULE = kinds.DESTINATION_RULE.kind
PEER_AUTHENTICATION = kinds.PEER_AUTHENTICATION.kind
SERVICE = kinds.SERVICE.kind
# The registry's services are Kubernetes Services and ServiceEntries (model/service_entries.py):
# a ServiceEntry counts as a change of SERVICE (input_of), so whatever reads services reads
# both. WorkloadEntries (and the Pods a ServiceEntry selects) are endpoints: read only
# through the endpoint fingerprints (ENDPOINTS, ENDPOINT_FACTS, INSTANCES), like
# EndpointSlices. WorkloadGroups are read by auto-registration only, no generator.
SERVICE_ENTRY = kinds.SERVICE_ENTRY.kind
WORKLOAD_ENTRY = kinds.WORKLOAD_ENTRY.kind
WORKLOAD_GROUP = kinds.WORKLOAD_GROUP.kind
# Secrets are read only as credentials (model/credentials.py): by the SDS builder, by
# gateway listeners (credentialName servers) and by clusters whose DestinationRule names
# a `credentialName` (through namespace_secrets, so a Secret change leaves everything
# else cached).
SECRET = kinds.SECRET.kind
NODE = kinds.NODE.kind
ENDPOINT_SLICE = kinds.ENDPOINT_SLICE.kind
ENDPOINT_KINDS = frozenset({ENDPOINT_SLICE, kinds.POD.kind, NODE})
REGISTRY_KINDS = frozenset({SERVICE_ENTRY, WORKLOAD_ENTRY, WORKLOAD_GROUP})
# Authorization and request authentication: read by the inbound listener of a sidecar and
# by gateway listeners only (generators/security_filters.py).
AUTHORIZATION_POLICY = kinds.AUTHORIZATION_POLICY.kind
REQUEST_AUTHENTICATION = kinds.REQUEST_AUTHENTICATION.kind
SECURITY_KINDS = (AUTHORIZATION_POLICY, REQUEST_AUTHENTICATION)
# Sidecars are read only through the sidecar scope (SIDECAR_SCOPE below).
SIDECAR = kinds.SIDECAR.kind
# EnvoyFilters are read by no part: the Generator patches the composed output of the
# proxies they select and keys it on them (generators/envoyfilter/stage.py).
ENVOY_FILTER = kinds.ENVOY_FILTER.kind
# Telemetries are read by listeners only through the per-proxy key of those that apply
# to the proxy (generators/tracing.py telemetry_key), so a change re-keys those proxies alone.
TELEMETRY = kinds.TELEMETRY.kind
# Kinds whose readers are declared precisely (parts.py).
KNOWN_KINDS = frozenset({GATEWAY, VIRTUAL_SERVICE, DESTINATION_RULE, PEER_AUTHENTICATION, SERVICE, SECRET, SIDECAR,
                         ENVOY_FILTER, TELEMETRY, *SECURITY_KINDS}) | ENDPOINT_KINDS | REGISTRY_KINDS
# Kinds counted as another input (their own fingerprint is that input's).
_COUNTED_AS = {SERVICE_ENTRY: SERVICE}


def input_of(kind: str) -> str:
    """The input a change of an object of `kind` is a change of."""
    return _COUNTED_AS.get(kind, kind) if kind in KNOWN_KINDS else OTHER

OTHER = "*other*"
MESH_VERSION = "*mesh*"  # the whole snapshot: for output nobody has analysed
# What routes read of DestinationRules: which rule applies to a host (host, namespace,
# exportTo) and its consistent-hash settings. A connection pool or TLS change is not
# in it, so it leaves every route configuration cached.
DR_ROUTING = "*dr-routing*"
ENDPOINT_FACTS = "*endpoint-facts*"
ALL_CONFIG = (GATEWAY, VIRTUAL_SERVICE, DESTINATION_RULE, PEER_AUTHENTICATION, SERVICE, SECRET, SIDECAR,
              *SECURITY_KINDS, OTHER, ENDPOINT_FACTS)
# --- what each fingerprint stands for ---------------------------------------------------
# A Part declares fingerprints (`deps`) and the per-proxy ones its scope calls; tracking
# mode (ledger.py) checks that its build reads nothing else. Inputs a build can read
# besides the fingerprint names above:
ENDPOINTS = "*endpoints*"  # every endpoint: read by the parts that declare `endpoints` (EDS)
INSTANCES = "*instances*"  # the service instances at the proxy's address
PROXY_LOCALITY = "*proxy-locality*"  # where the proxy runs (its Pod, the Pod's Node)
JWKS = "*jwks*"  # the key sets meshd fetched
MESH_CONFIG = "*mesh-config*"  # the mesh config (counted under OTHER)
DR_SELECTORS = "*dr-selectors*"  # which DestinationRule workloadSelectors select the proxy
# What the proxy sees (model/sidecar_scope.py: the Sidecar that applies to it, the services
# and VirtualServices exported to its namespace that it imports). Its fingerprint is the
# scope's digest, which names the content of every service and VirtualService in it: a
# part reading services and VirtualServices only through the scope declares this instead
# of SERVICE and VIRTUAL_SERVICE, so a change outside the scope leaves its key alone.
SIDECAR_SCOPE = "*sidecar-scope*"
STANDS_FOR: dict[str, frozenset[str]] = {
    **{k: frozenset({k}) for k in KNOWN_KINDS},
    DESTINATION_RULE: frozenset({DESTINATION_RULE, DR_ROUTING, DR_SELECTORS}),
    DR_ROUTING: frozenset({DR_ROUTING, DR_SELECTORS}),
    SIDECAR_SCOPE: frozenset({SIDECAR_SCOPE, SERVICE, VIRTUAL_SERVICE, SIDECAR}),
    OTHER: frozenset({OTHER, MESH_CONFIG}),
    ENDPOINT_FACTS: frozenset({ENDPOINT_FACTS}),
    MESH_VERSION: frozenset({MESH_VERSION}),  # everything
}
F = TypeVar("F", bound=Callable[..., Any])
# fingerprint function -> (what it stands for, what a call stands for by its arguments)
DECLARED: dict[Callable[..., Any], tuple[frozenset[str], Callable[..., Iterable[str]] | None]] = {}


def stands_for(*inputs: str, per_call: Callable[..., Iterable[str]] | None = None) -> Callable[[F], F]:
    """Declares what a fingerprint function stands for: its result changes when these do.
    A switch (a yes/no a scope asks, such as uses_source_labels) stands for nothing but
    its answer, which the key holds."""
    def declare(fn: F) -> F:
        DECLARED[fn] = (frozenset(inputs), per_call)
        return fn
    return declare
