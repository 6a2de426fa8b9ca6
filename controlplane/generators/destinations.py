"""The outbound clusters a proxy gets, shared by CDS (clusters) and EDS (their endpoints).

istiod gives a gateway, and every sidecar (no Sidecar resource narrows it here), a
cluster for every port of every service (`outbound|port||host`) plus one per
DestinationRule subset of that host (`outbound|port|subset|host`). UDP ports get none:
Envoy proxies TCP and HTTP only.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

from .. import names
from ..config.objects import ConfigObject
from ..model.mesh import MeshSnapshot
from ..model.proxy import Proxy
from ..model.services import Service, ServicePort
from . import protocol
from .convert import as_list, as_map


@dataclass(frozen=True)
class OutboundCluster:
    name: str
    service: Service
    port: ServicePort
    protocol: str  # Istio protocol of the service port
    rule: ConfigObject | None  # the DestinationRule that applies to the host, if any
    subset: str = ""
    subset_labels: Mapping[str, str] = field(default_factory=dict)


def outbound_clusters(mesh: MeshSnapshot, proxy: Proxy) -> list[OutboundCluster]:
    """In a stable order: services by host, ports as declared, subsets as declared."""
    out: list[OutboundCluster] = []
    for svc in sorted(mesh.services.values(), key=lambda s: s.hostname):
        out += service_clusters(mesh, proxy, svc)
    return out


def service_clusters(mesh: MeshSnapshot, proxy: Proxy, svc: Service) -> list[OutboundCluster]:
    """The outbound clusters of one service (names are unique per host, so the clusters
    of different services never collide)."""
    out: list[OutboundCluster] = []
    seen: set[str] = set()
    rule = mesh.destination_rule(svc.hostname, proxy.namespace)
    for sp in svc.ports:
        proto = protocol.of_service_port(sp)
        if proto == protocol.UDP:
            continue
        for oc in _clusters_for_port(svc, sp, proto, rule):
            # A repeated subset name would give Envoy two clusters with one name.
            if oc.name not in seen:
                seen.add(oc.name)
                out.append(oc)
    return out


def _clusters_for_port(svc: Service, sp: ServicePort, proto: str, rule: ConfigObject | None) -> list[OutboundCluster]:
    out = [OutboundCluster(names.outbound_cluster(sp.port, svc.hostname), svc, sp, proto, rule)]
    for subset in as_list(rule.spec.get("subsets")) if rule is not None else []:
        subset = as_map(subset)
        name = str(subset.get("name") or "")
        if not name:
            continue
        labels = {str(k): str(v) for k, v in as_map(subset.get("labels")).items()}
        out.append(
            OutboundCluster(names.outbound_cluster(sp.port, svc.hostname, name), svc, sp, proto, rule, name, labels)
        )
    return out
