"""ServiceEntries as Services: one Service per host, with its endpoints, as istiod's
serviceentry registry converts them (pilot/pkg/serviceregistry/serviceentry/conversion.go,
read not copied).

- Each host is a Service named and addressed by the host as written (a ServiceEntry's
  hosts are not qualified by its namespace), in the ServiceEntry's namespace, with its
  `addresses` (a /32 or /128 CIDR reads as the plain IP), ports (protocol as written,
  `targetPort`), `location` (mesh_external), `resolution` (NONE -> Passthrough, STATIC ->
  ClientSideLB, DNS -> DNS, DNS_ROUND_ROBIN -> DNSRoundRobin), `exportTo` and
  `subjectAltNames`; istiod keeps one Service per (host, address), meshd one per host
  with every address (generators bind one listener per address).
- Endpoints, per service port: the inline `endpoints`; or, with a `workloadSelector`,
  the Pods and WorkloadEntries of the ServiceEntry's namespace it selects; or, for DNS
  and DNS_ROUND_ROBIN without either, the host itself (its name resolved by Envoy).
  An endpoint's port: the endpoint's own `ports[<service port name>]` (a Pod's named
  container port), else the port's targetPort, else its number; a Unix socket has none.
"""
from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping

from ..config.objects import ConfigObject
from ..config.types.serviceentry import DNS, DNS_ROUND_ROBIN, NONE, STATIC, ServiceEntry, ServiceEntryPort
from . import protocol
from .services import (
    Endpoint,
    Service,
    ServicePort,
    _container_port,
    _endpoint_for_pod,
    _pod_ip,
    _pod_ready,
    labels_match,
)
from .workloads import Workload, entry_endpoint

SOURCE = "ServiceEntry"
# The ServiceEntry resolution -> istiod's model.Resolution (Service.resolution).
RESOLUTIONS = {NONE: "Passthrough", STATIC: "ClientSideLB", DNS: "DNS", DNS_ROUND_ROBIN: "DNSRoundRobin"}


def normalized_address(address: str) -> str:
    """An address as istiod keeps it: a CIDR of one host becomes the IP."""
    if "/" not in address:
        return address
    try:
        net = ipaddress.ip_network(address, strict=False)
    except ValueError:
        return address
    return str(net.network_address) if net.prefixlen == net.max_prefixlen else address


def service_port(port: ServiceEntryPort) -> ServicePort:
    """A ServiceEntry port as a ServicePort: its Istio protocol is what protocol.of_service_port
    reads first (app_protocol); a port without one is UNSUPPORTED (sniffed), never read
    from its name as a Kubernetes port's would be."""
    l4 = "UDP" if port.protocol.upper() == protocol.UDP else "TCP"
    return ServicePort(name=port.name, port=port.number, target_port=port.target_port or None, protocol=l4,
                       app_protocol=port.protocol or protocol.UNSUPPORTED)


def services_of(obj: ConfigObject) -> tuple[Service, ...]:
    """The Services of one ServiceEntry, one per host, in the order of its hosts."""
    se: ServiceEntry = obj.typed
    ports = tuple(service_port(p) for p in se.ports)
    addresses = tuple(dict.fromkeys(normalized_address(a) for a in se.addresses))
    out: dict[str, Service] = {}
    for host in se.hosts:
        out.setdefault(host, Service(
            name=host,
            namespace=obj.namespace,
            hostname=host,
            ports=ports,
            selector=dict(se.workload_selector or {}),
            labels=dict(obj.labels),
            created=str(obj.extra.get("creationTimestamp") or ""),
            source=SOURCE,
            resolution=RESOLUTIONS.get(se.resolution, RESOLUTIONS[NONE]),
            mesh_external=se.mesh_external,
            addresses=addresses,
            export_to=se.export_to,
            subject_alt_names=se.subject_alt_names,
        ))
    return tuple(out.values())


def endpoints_of(obj: ConfigObject, pods: Iterable[ConfigObject], workloads: Iterable[Workload],
                 nodes: Mapping[str, Mapping[str, str]]) -> dict[int, tuple[Endpoint, ...]]:
    """Service port -> the endpoints of one ServiceEntry (the same for each of its hosts,
    but for the DNS host endpoints: see host_endpoints)."""
    se: ServiceEntry = obj.typed
    out: dict[int, list[Endpoint]] = {p.number: [] for p in se.ports}
    if se.workload_selector is not None:
        selector = se.workload_selector
        for pod in pods:
            ip = _pod_ip(pod)
            if pod.namespace != obj.namespace or not ip or not labels_match(selector, pod.labels):
                continue
            ready = _pod_ready(pod)
            for p in se.ports:
                port = _container_port(pod, p.name) if p.name else None
                out[p.number].append(_endpoint_for_pod(pod, ip, port or p.endpoint_port, ready, nodes))
        for w in workloads:
            if w.namespace == obj.namespace and labels_match(selector, w.labels):
                for p in se.ports:
                    out[p.number].append(entry_endpoint(w.entry, w.namespace, _entry_port(w.entry.ports, p), w.name))
    else:
        for entry in se.endpoints:
            for p in se.ports:
                out[p.number].append(entry_endpoint(entry, obj.namespace, _entry_port(entry.ports, p)))
    return {k: tuple(v) for k, v in out.items()}


def resolves_host(se: ServiceEntry) -> bool:
    """A DNS ServiceEntry with neither endpoints nor selector: its host is its endpoint."""
    return not se.endpoints and se.workload_selector is None and se.resolution in (DNS, DNS_ROUND_ROBIN)


def host_endpoints(svc: Service, se: ServiceEntry) -> dict[int, tuple[Endpoint, ...]]:
    """The endpoints of a host whose name is resolved by the proxy (resolves_host): the
    host on each port's endpoint port, without labels (so no mTLS)."""
    return {p.number: (Endpoint(address=svc.hostname, port=p.endpoint_port, namespace=svc.namespace),)
            for p in se.ports}


def _entry_port(ports: Mapping[str, int], port: ServiceEntryPort) -> int:
    return ports.get(port.name) or port.endpoint_port
