"""Tracking mode: what a part's build reads, recorded and held against what it declares.

A Part declares what its output reads (parts.py): of the proxy, what its `scope` reads;
of the mesh, its `deps` (fingerprints, dependencies.py; inputs.py names them),
`endpoints`, and the per-proxy fingerprints its scope calls. The Generator trusts that declaration: a build reading
anything else is served stale to every proxy sharing the part, and after a change of
it. In tracking mode (tests/unit/test_part_inputs.py) a part's scope, then its build,
run against a recording snapshot and proxy, and `undeclared()` is what the build read
that the scope and deps do not cover:

- a read of the snapshot is recorded as the input it belongs to: READS classifies every
  MeshSnapshot field and lookup (reading one it does not list is an error, so a new one
  cannot be read unclassified);
- a fingerprint function records what it stands for (inputs.stands_for), not what
  computing it reads;
- a read of a proxy field is recorded as `proxy.<field>` (but its `id`: logs name the
  proxy; an id in output would be caught by the differential tests, which compare
  replicas' shared output with their own plain builds).

Inputs are as fine as the snapshot's lookups: `destination_rule()` (the rule that
applies to a host) is DR_ROUTING whatever the caller reads of the rule;
`service_endpoints()` of a headless or named-targetPort service is ENDPOINT_FACTS.
Finer than that (which field of a rule, of an endpoint) is left to the differential
tests of cached against plain builds (tests/unit/test_push_generation.py).
"""
from __future__ import annotations

import dataclasses
import sys
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any

from ..config.snapshot import ConfigSnapshot
from ..model.credentials import credential_ref
from ..model.indexes import MeshIndexes
from ..model.mesh import MeshSnapshot
from ..model.proxy import ROUTER, Proxy
from .inputs import (
    AUTHORIZATION_POLICY,
    DECLARED,
    DESTINATION_RULE,
    DR_ROUTING,
    DR_SELECTORS,
    ENDPOINT_FACTS,
    ENDPOINTS,
    GATEWAY,
    INSTANCES,
    JWKS,
    MESH_CONFIG,
    MESH_VERSION,
    OTHER,
    PEER_AUTHENTICATION,
    PROXY_LOCALITY,
    REQUEST_AUTHENTICATION,
    SECRET,
    SERVICE,
    SIDECAR_SCOPE,
    STANDS_FOR,
    VIRTUAL_SERVICE,
    WORKLOAD_ENTRY,
    input_of,
)
from .parts import Part, ResourceCache


class UnclassifiedRead(AssertionError):
    """A build read a MeshSnapshot attribute READS does not classify."""


class By:
    """A lookup whose input depends on its arguments: `inputs(mesh, *args)`."""

    def __init__(self, inputs: Callable[..., Iterable[str]]):
        self.inputs = inputs


def _endpoints_of(mesh: MeshSnapshot, hostname: str, port: int) -> tuple[str, ...]:
    # Non-EDS output may read the endpoints of headless services, of services with a
    # named targetPort and of ServiceEntry hosts resolved by DNS or passed through (their
    # clusters carry them): ENDPOINT_FACTS digests them whole; of the others, EDS only.
    svc = mesh.services.get(hostname)
    named = svc is not None and any(isinstance(p.target_port, str) and not p.target_port.isdigit() for p in svc.ports)
    inline = svc is not None and svc.resolution in ("DNS", "DNSRoundRobin", "Passthrough")
    return (ENDPOINT_FACTS,) if svc is not None and (svc.headless or named or inline) else (ENDPOINTS,)


def _scope_of(mesh: MeshSnapshot, proxy: Proxy) -> tuple[str, ...]:
    # A gateway never takes a Sidecar: its scope is what is exported to its namespace.
    return (SIDECAR_SCOPE,) if proxy.type != ROUTER else (SERVICE, VIRTUAL_SERVICE, MESH_CONFIG)


def _secrets_of(mesh: MeshSnapshot, namespace: str, *args: Any) -> tuple[str, ...]:
    return (f"{SECRET}@{namespace}",)


def _server_secrets(mesh: MeshSnapshot, namespace: str, server: Any) -> tuple[str, ...]:
    # A server's kubernetes-gateway://ns/name references read that namespace's Secrets
    # and the ReferenceGrants (the Gateway API's input, OTHER).
    refs = [credential_ref(n, namespace) for n in (server.tls.credentials if server.tls is not None else ())]
    out = {f"{SECRET}@{namespace}"} | {f"{SECRET}@{r.namespace}" for r in refs if r is not None}
    return tuple(sorted(out | ({OTHER} if any(r is None or r.gateway_api for r in refs) else set())))


# Every MeshSnapshot field and lookup, and the inputs reading it reads.
READS: dict[str, tuple[str, ...] | By] = {
    "version": (MESH_VERSION,),
    "derived_from": (MESH_VERSION,),
    "config": (),  # recorded per kind (RecordingConfig)
    "services": (SERVICE,),
    "service": (SERVICE,),
    "gateway_service_for": (SERVICE,),
    "endpoints": (ENDPOINTS,),
    "service_endpoints": By(_endpoints_of),
    "service_accounts": (ENDPOINT_FACTS,),
    "_instances_by_ip": (INSTANCES,),
    "instances_for": (INSTANCES,),
    "_pods": (PROXY_LOCALITY,),
    # The WorkloadEntries as build_mesh read them: output reads them through endpoints only.
    "_workloads": (WORKLOAD_ENTRY,),
    "hidden_services": (SERVICE,),
    "proxy_locality": (PROXY_LOCALITY,),
    "gateways": (GATEWAY,),
    # The Gateway API converted (model/gateway_api/): its kinds count as OTHER (inputs.py);
    # the Gateways and VirtualServices it derives are read through `gateways` and
    # `virtual_services` (router parts declare OTHER; sidecar scopes name their content).
    "gateway_api": (OTHER,),
    "gateways_for": (GATEWAY,),
    # The servers of the Gateways selecting a proxy, on the ports its Service maps them to
    # (a named targetPort resolved through the gateway pods' endpoints).
    "merged_gateway": (GATEWAY, SERVICE, ENDPOINT_FACTS),
    "listen_port": (ENDPOINT_FACTS,),
    "gateway_conflicts": (GATEWAY, SERVICE, SECRET),
    "virtual_services": (VIRTUAL_SERVICE,),
    "sidecar_scope": By(_scope_of),
    "destination_rules": (DESTINATION_RULE,),
    "_dr_by_host": (DESTINATION_RULE,),
    "_wildcard_dr_hosts": (DESTINATION_RULE,),
    "_dr_index": (DESTINATION_RULE,),
    "_legacy_destination_rule": (DESTINATION_RULE,),
    "destination_rule": (DR_ROUTING,),
    "dr_selectors": (DR_SELECTORS,),
    "peer_authentications": (PEER_AUTHENTICATION,),
    "mtls_policy": (PEER_AUTHENTICATION,),
    "authorization_policies": (AUTHORIZATION_POLICY,),
    "request_authentications": (REQUEST_AUTHENTICATION,),
    "jwks": (JWKS,),
    "jwks_view": (JWKS,),
    "jwks_digest": (JWKS,),
    "root_namespace": (MESH_CONFIG,),
    "mesh_config": (MESH_CONFIG,),
    "credentials": (SECRET,),
    "credential": By(_secrets_of),
    "credentials_of": By(_secrets_of),
    "ca_credential": By(_secrets_of),
    "credential_problem": By(_server_secrets),
}


class Ledger:
    """What was read since the last `take()`."""

    def __init__(self) -> None:
        self.reads: set[str] = set()
        self.suspended = 0  # inside a fingerprint function: snapshot reads are its own

    def record(self, *inputs: str) -> None:
        if not self.suspended:
            self.reads.update(inputs)

    def take(self) -> frozenset[str]:
        out, self.reads = frozenset(self.reads), set()
        return out


_current: Ledger | None = None


class RecordingConfig:
    """The snapshot's ConfigSnapshot: objects read by kind are that kind's input (inputs.input_of)."""

    def __init__(self, config: ConfigSnapshot, ledger: Ledger):
        self._config, self._ledger = config, ledger

    def of_kind(self, kind: str) -> list[Any]:
        self._ledger.record(input_of(kind))
        return self._config.of_kind(kind)

    def get(self, kind: str, namespace: str, name: str) -> Any:
        self._ledger.record(input_of(kind))
        return self._config.get(kind, namespace, name)

    def __getattr__(self, name: str) -> Any:
        self._ledger.record(MESH_VERSION)  # every object, whatever its kind
        return getattr(self._config, name)

    def __iter__(self) -> Iterator[Any]:
        self._ledger.record(MESH_VERSION)
        return iter(self._config)


class RecordingMesh:
    """A MeshSnapshot whose reads are recorded, with indexes of its own (new for each
    phase: what a build computes through them, it reads)."""

    def __init__(self, mesh: MeshSnapshot, ledger: Ledger):
        self._mesh, self._ledger = mesh, ledger
        self.indexes = MeshIndexes()

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._mesh, name)
        rule = READS.get(name)
        if rule is None:
            raise UnclassifiedRead(f"MeshSnapshot.{name} is read, but ledger.READS does not say what it reads")
        if isinstance(rule, By):
            inputs = rule.inputs

            def lookup(*args: Any, **kwargs: Any) -> Any:
                self._ledger.record(*inputs(self._mesh, *args, **kwargs))
                return value(*args, **kwargs)
            return lookup
        self._ledger.record(*rule)
        return RecordingConfig(value, self._ledger) if name == "config" else value


_PROXY_FIELDS = frozenset(f.name for f in dataclasses.fields(Proxy)) - {"id"}


class RecordingProxy(Proxy):
    """A Proxy whose field reads are recorded (`label_key` is its labels)."""

    def __getattribute__(self, name: str) -> Any:
        ledger = _current
        if ledger is not None:
            if name in _PROXY_FIELDS:
                ledger.reads.add(f"proxy.{name}")
            elif name == "label_key":
                ledger.reads.add("proxy.labels")
        return object.__getattribute__(self, name)


def recording(proxy: Proxy) -> RecordingProxy:
    return RecordingProxy(**{f.name: getattr(proxy, f.name) for f in dataclasses.fields(Proxy)})


def _recording_fingerprint(fn: Callable[..., Any], inputs: frozenset[str],
                           per_call: Callable[..., Iterable[str]] | None) -> Callable[..., Any]:
    def call(*args: Any, **kwargs: Any) -> Any:
        ledger = _current
        if ledger is None:
            return fn(*args, **kwargs)
        ledger.record(*inputs, *(per_call(*args, **kwargs) if per_call is not None else ()))
        ledger.suspended += 1
        try:
            return fn(*args, **kwargs)
        finally:
            ledger.suspended -= 1
    return call


@contextmanager
def tracking() -> Iterator[Ledger]:
    """Tracking mode: the fingerprint functions record what they stand for wherever they
    are bound (dependencies and the generator modules importing them)."""
    global _current
    patched: list[tuple[object, str, object]] = []
    wrappers = {fn: _recording_fingerprint(fn, inputs, per_call) for fn, (inputs, per_call) in DECLARED.items()}
    for name, module in list(sys.modules.items()):
        if not name.startswith("controlplane.") or module is None:
            continue
        for attr, value in list(vars(module).items()):
            wrapper = wrappers.get(value) if callable(value) else None
            if wrapper is not None:
                patched.append((module, attr, value))
                setattr(module, attr, wrapper)
    _current = Ledger()
    try:
        yield _current
    finally:
        _current = None
        for owner, attr, value in patched:
            setattr(owner, attr, value)


def declared(part: Part) -> frozenset[str]:
    """What a part's deps stand for."""
    out = {i for d in part.deps for i in STANDS_FOR[d]}
    if part.endpoints:
        out |= {ENDPOINTS, ENDPOINT_FACTS}
    return frozenset(out)


def covered(read: str, declared: frozenset[str]) -> bool:
    return MESH_VERSION in declared or read in declared or ("@" in read and read.split("@")[0] in declared)


def undeclared(part: Part, mesh: MeshSnapshot, proxy: Proxy, hosts: Iterable[str] = ()) -> frozenset[str]:
    """What building `part` for `proxy` under `mesh` reads that the part does not declare
    (and its update_hosts for `hosts`, when given)."""
    with tracking() as ledger:
        snapshot, who = RecordingMesh(mesh, ledger), recording(proxy)
        part.scope(snapshot, who)  # type: ignore[arg-type]
        if part.view is not None:
            part.view(snapshot, who)  # type: ignore[arg-type]
        allowed = ledger.take() | declared(part)
        snapshot.indexes = MeshIndexes()
        part.build(snapshot, who, part, ResourceCache())  # type: ignore[arg-type]
        if hosts and part.update_hosts is not None:
            snapshot.indexes = MeshIndexes()
            part.update_hosts(snapshot, who, ResourceCache(), list(hosts))  # type: ignore[arg-type]
        reads = ledger.take()
    return frozenset(r for r in reads if not covered(r, allowed))
