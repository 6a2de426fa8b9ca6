"""ServiceEntry, typed: hosts added to the service registry, their addresses and ports,
where they live (`location`), how clients find their endpoints (`resolution`), and the
endpoints themselves (inline WorkloadEntries, or a `workloadSelector` choosing Pods and
WorkloadEntries). The Services it becomes are the model's business
(model/service_entries.py)."""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .common import each, integer, labels, mapping, strings, text
from .workloadentry import WorkloadEntry, workload_entry

MESH_EXTERNAL = "MESH_EXTERNAL"
MESH_INTERNAL = "MESH_INTERNAL"
NONE = "NONE"
STATIC = "STATIC"
DNS = "DNS"
DNS_ROUND_ROBIN = "DNS_ROUND_ROBIN"


@dataclass(frozen=True, slots=True)
class ServiceEntryPort:
    number: int = 0
    name: str = ""
    protocol: str = ""  # Istio's protocol name as written (HTTP, TCP, TLS, ...); "" when not given
    target_port: int = 0  # 0: not given

    @property
    def endpoint_port(self) -> int:
        """The port on an endpoint that names no port of its own: targetPort, else the number."""
        return self.target_port or self.number


@dataclass(frozen=True, slots=True)
class ServiceEntry:
    hosts: tuple[str, ...] = ()
    addresses: tuple[str, ...] = ()  # VIPs and CIDRs, as written
    ports: tuple[ServiceEntryPort, ...] = ()
    location: str = MESH_EXTERNAL  # the proto's default
    resolution: str = NONE  # the proto's default
    endpoints: tuple[WorkloadEntry, ...] = ()
    # `workloadSelector.labels`; None without a selector (an empty one selects every
    # workload of the namespace).
    workload_selector: Mapping[str, str] | None = None
    export_to: tuple[str, ...] = ()
    subject_alt_names: tuple[str, ...] = ()

    @property
    def mesh_external(self) -> bool:
        return self.location != MESH_INTERNAL


def _port(raw: Mapping[str, Any]) -> ServiceEntryPort:
    return ServiceEntryPort(
        number=integer(raw.get("number"), 0) or 0,
        name=text(raw.get("name")),
        protocol=text(raw.get("protocol")),
        target_port=integer(raw.get("targetPort"), 0) or 0,
    )


def service_entry(spec: Mapping[str, Any]) -> ServiceEntry:
    selector = spec.get("workloadSelector")
    return ServiceEntry(
        hosts=strings(spec.get("hosts")),
        addresses=strings(spec.get("addresses")),
        ports=each(spec.get("ports"), _port),
        location=text(spec.get("location")) or MESH_EXTERNAL,
        resolution=text(spec.get("resolution")) or NONE,
        endpoints=each(spec.get("endpoints"), workload_entry),
        workload_selector=labels(mapping(selector).get("labels")) if isinstance(selector, Mapping) else None,
        export_to=strings(spec.get("exportTo")),
        subject_alt_names=strings(spec.get("subjectAltNames")),
    )
