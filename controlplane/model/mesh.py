"""The mesh snapshot: an immutable, indexed picture of services, endpoints and
routing config that every generator reads (compare istiod's PushContext).

Built once per config change from a ConfigSnapshot; generators never look further
back than this object.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

from ..config import kinds
from ..config.objects import ConfigObject
from ..config.snapshot import ConfigSnapshot
from ..names import ROOT_NAMESPACE, resolve_host
from .peer_authentication import MtlsPolicy, effective_policy
from .proxy import Proxy
from .services import (
    Endpoint,
    PodIndex,
    Service,
    ServicePort,
    build_service,
    endpoints_from_pods,
    endpoints_from_slices,
    labels_match,
)

SERVICE_NAME_LABEL = "kubernetes.io/service-name"


@dataclass(frozen=True)
class ServiceInstance:
    """One service port served by one workload endpoint."""

    service: Service
    port: ServicePort
    endpoint: Endpoint


@dataclass(frozen=True)
class MeshSnapshot:
    version: str
    config: ConfigSnapshot
    services: Mapping[str, Service]  # by hostname (FQDN)
    endpoints: Mapping[tuple[str, int], tuple[Endpoint, ...]]  # (hostname, service port)
    gateways: tuple[ConfigObject, ...]
    virtual_services: tuple[ConfigObject, ...]
    destination_rules: tuple[ConfigObject, ...]
    peer_authentications: tuple[ConfigObject, ...] = ()
    root_namespace: str = ROOT_NAMESPACE
    _instances_by_ip: Mapping[str, tuple[ServiceInstance, ...]] = field(default_factory=dict, repr=False)
    _dr_by_host: Mapping[str, tuple[ConfigObject, ...]] = field(default_factory=dict, repr=False)

    # --- lookups generators use ------------------------------------------------
    def service(self, hostname: str) -> Service | None:
        return self.services.get(hostname)

    def service_endpoints(self, hostname: str, port: int) -> tuple[Endpoint, ...]:
        return self.endpoints.get((hostname, port), ())

    def instances_for(self, proxy: Proxy) -> tuple[ServiceInstance, ...]:
        """The service ports this proxy's workload serves (its endpoints' IP is the
        proxy's IP), as istiod finds a sidecar's service instances."""
        return self._instances_by_ip.get(proxy.ip, ())

    def mtls_policy(self, namespace: str, labels: Mapping[str, str]) -> MtlsPolicy:
        """Effective PeerAuthentication for a workload (see peer_authentication.py)."""
        return effective_policy(self.peer_authentications, namespace, labels, self.root_namespace)

    def gateways_for(self, proxy: Proxy) -> list[ConfigObject]:
        """Gateways whose `selector` matches the proxy's labels (any namespace, as
        istiod does unless PILOT_SCOPE_GATEWAY_TO_NAMESPACE is set). An empty
        selector selects nothing useful in Istio either, so it is skipped."""
        out = []
        for gw in self.gateways:
            sel = gw.spec.get("selector") or {}
            if sel and labels_match(sel, proxy.labels):
                out.append(gw)
        return out

    def gateway_service_for(self, proxy: Proxy) -> Service | None:
        """The Service in the gateway's own namespace that selects the gateway pod:
        its ports translate Gateway server ports to the ports Envoy listens on."""
        for svc in sorted(self.services.values(), key=lambda s: s.name):
            if svc.namespace == proxy.namespace and svc.selector and labels_match(svc.selector, proxy.labels):
                return svc
        return None

    def destination_rule(self, hostname: str, client_namespace: str) -> ConfigObject | None:
        """The DestinationRule for a host as seen from `client_namespace`: one in the
        client's namespace wins, then the service's namespace, then the root namespace
        (a simplified form of Istio's lookup order), then any other visible one."""
        candidates = self._dr_by_host.get(hostname)
        if not candidates:
            return self._wildcard_destination_rule(hostname, client_namespace)
        svc = self.services.get(hostname)
        order = [client_namespace, svc.namespace if svc else None, "istio-system"]
        for ns in order:
            for dr in candidates:
                if dr.namespace == ns:
                    return dr
        return candidates[0]

    def _wildcard_destination_rule(self, hostname: str, client_namespace: str) -> ConfigObject | None:
        from .hosts import covers

        best: ConfigObject | None = None
        best_len = -1
        for host, drs in self._dr_by_host.items():
            if host.startswith("*") and covers(host, hostname) and len(host) > best_len:
                best, best_len = drs[0], len(host)
        return best


def _dr_host(dr: ConfigObject) -> str:
    return resolve_host(str(dr.spec.get("host") or ""), dr.namespace)


def build_mesh(config: ConfigSnapshot, root_namespace: str = ROOT_NAMESPACE) -> MeshSnapshot:
    pods = config.of_kind(kinds.POD.kind)
    pod_index = PodIndex(pods)
    services: dict[str, Service] = {}
    for obj in config.of_kind(kinds.SERVICE.kind):
        svc = build_service(obj)
        services[svc.hostname] = svc

    slices_by_service: dict[tuple[str, str], list[ConfigObject]] = {}
    for sl in config.of_kind(kinds.ENDPOINT_SLICE.kind):
        owner = sl.labels.get(SERVICE_NAME_LABEL)
        if owner:
            slices_by_service.setdefault((sl.namespace, owner), []).append(sl)

    endpoints: dict[tuple[str, int], tuple[Endpoint, ...]] = {}
    instances: dict[str, list[ServiceInstance]] = {}
    for svc in services.values():
        slices = slices_by_service.get((svc.namespace, svc.name))
        per_port = endpoints_from_slices(svc, slices, pod_index) if slices else endpoints_from_pods(svc, pods)
        for port, eps in per_port.items():
            endpoints[(svc.hostname, port)] = eps
            sp = svc.port(port)
            for ep in eps:
                if sp is not None:
                    instances.setdefault(ep.address, []).append(ServiceInstance(svc, sp, ep))

    drs = tuple(config.of_kind(kinds.DESTINATION_RULE.kind))
    dr_by_host: dict[str, list[ConfigObject]] = {}
    for dr in drs:
        dr_by_host.setdefault(_dr_host(dr), []).append(dr)

    return MeshSnapshot(
        version=config.version,
        config=config,
        services=services,
        endpoints=endpoints,
        gateways=tuple(config.of_kind(kinds.GATEWAY.kind)),
        virtual_services=tuple(config.of_kind(kinds.VIRTUAL_SERVICE.kind)),
        destination_rules=drs,
        peer_authentications=tuple(config.of_kind(kinds.PEER_AUTHENTICATION.kind)),
        root_namespace=root_namespace,
        _instances_by_ip={ip: tuple(sorted(v, key=lambda i: (i.service.hostname, i.port.port))) for ip, v in instances.items()},
        _dr_by_host={h: tuple(v) for h, v in dr_by_host.items()},
    )
