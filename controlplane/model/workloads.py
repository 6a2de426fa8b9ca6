"""Workloads outside Kubernetes: WorkloadEntries, and the endpoints they become.

A WorkloadEntry is an endpoint of every Service that selects it, as istiod's registries
see it (pilot/pkg/serviceregistry, read not copied):
- a ServiceEntry with a `workloadSelector` selects the WorkloadEntries (and Pods) of its
  namespace by label (service_entries.py);
- a Kubernetes Service selects them too: the WorkloadEntries of its namespace whose
  labels its `selector` matches, and whose address is an IP (a DNS name or a Unix socket
  cannot be a Kubernetes endpoint), besides the endpoints of its EndpointSlices.

The endpoint carries what istiod's does: the entry's labels, plus `security.istio.io/tlsMode:
istio` when the entry names a service account and no tlsMode of its own (a proxy runs
beside it: auto mTLS reads this label), the network and the topology labels of its
locality; its service account (in the entry's namespace), network, locality and weight.
"""
from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from ..config import kinds
from ..config.snapshot import ConfigSnapshot
from ..config.types.workloadentry import WorkloadEntry
from ..names import TLS_MODE_ISTIO, TLS_MODE_LABEL
from .locality import LOCALITY_LABEL, Locality, with_topology_labels
from .services import Endpoint, Service, ServicePort, labels_match

NETWORK_LABEL = "topology.istio.io/network"


@dataclass(frozen=True)
class Workload:
    """One WorkloadEntry object: its name and namespace, and its typed spec."""

    name: str
    namespace: str
    entry: WorkloadEntry

    @property
    def labels(self) -> Mapping[str, str]:
        return self.entry.labels

    @property
    def ip(self) -> bool:
        """Whether the address is an IP (what a Kubernetes Service can select)."""
        return is_ip(self.entry.address)


def is_ip(address: str) -> bool:
    try:
        ipaddress.ip_address(address)
    except ValueError:
        return False
    return True


def workloads_of(config: ConfigSnapshot) -> tuple[Workload, ...]:
    """The WorkloadEntries of `config`, by namespace and name."""
    return tuple(Workload(o.name, o.namespace, o.typed) for o in config.of_kind(kinds.WORKLOAD_ENTRY.kind))


def entry_locality(entry: WorkloadEntry) -> Locality:
    """`locality` (region/zone/subzone), else the `istio-locality` label (dots), as istiod."""
    if entry.locality:
        return Locality.parse(entry.locality)
    label = entry.labels.get(LOCALITY_LABEL, "")
    return Locality.parse(label, ".") if label else Locality()


def entry_endpoint(entry: WorkloadEntry, namespace: str, port: int, name: str = "") -> Endpoint:
    """The endpoint `entry` (of `namespace`: a WorkloadEntry's, or an inline ServiceEntry
    endpoint's ServiceEntry's) is on `port`; `name`: the WorkloadEntry's name, if one."""
    locality = entry_locality(entry)
    labels = with_topology_labels(entry.labels, locality)
    if TLS_MODE_LABEL not in labels and entry.service_account:
        labels[TLS_MODE_LABEL] = TLS_MODE_ISTIO
    if entry.network:
        labels.setdefault(NETWORK_LABEL, entry.network)
    return Endpoint(
        address=entry.address,
        port=0 if entry.unix else port,
        labels=labels,
        pod=name,
        namespace=namespace,
        service_account=entry.service_account,
        ready=True,
        locality=locality,
        network=entry.network,
        weight=entry.weight,
    )


def _target(sp: ServicePort) -> tuple[int, str, bool]:
    """(number, name, explicit) of a Kubernetes Service port's target, as istiod's
    findServiceTargetPort: a number (defaulting to the port) looked up by the port's
    name in the entry's `ports`; a named targetPort that the entry must name."""
    tp = sp.target_port
    if tp is None or tp == "" or isinstance(tp, int) or (isinstance(tp, str) and tp.isdigit()):
        number = int(tp) if tp not in (None, "") else sp.port
        return (number or sp.port, sp.name, False)
    return (sp.port, str(tp), True)


def service_endpoints(svc: Service, workloads: Iterable[Workload]) -> dict[int, list[Endpoint]]:
    """Service port -> the endpoints of the WorkloadEntries a Kubernetes Service selects."""
    out: dict[int, list[Endpoint]] = {}
    if not svc.selector:
        return out
    for w in workloads:
        if w.namespace != svc.namespace or not w.ip or not labels_match(svc.selector, w.labels):
            continue
        for sp in svc.ports:
            number, name, explicit = _target(sp)
            mapped = w.entry.ports.get(name) if name else None
            if mapped:
                number = mapped
            elif explicit:
                continue  # a named targetPort the entry does not name: not an endpoint (istiod)
            out.setdefault(sp.port, []).append(entry_endpoint(w.entry, w.namespace, number, w.name))
    return out
