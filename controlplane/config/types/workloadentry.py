"""WorkloadEntry and WorkloadGroup, typed: one non-Kubernetes workload (a VM, a bare metal
server) and the template proxies of a group are registered from. A WorkloadEntry is also
the shape of a ServiceEntry's inline `endpoints`. Which Services select a workload, and
the endpoints it becomes, is the model's business (model/workloads.py,
model/service_entries.py)."""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .common import entries, integer, labels, mapping, optional, text

UNIX_PREFIX = "unix://"


@dataclass(frozen=True, slots=True)
class WorkloadEntry:
    address: str = ""  # an IP, a DNS name (DNS ServiceEntries only) or unix://<path>
    ports: Mapping[str, int] = field(default_factory=dict)  # service port name -> port on the workload
    labels: Mapping[str, str] = field(default_factory=dict)
    network: str = ""
    locality: str = ""  # region/zone/subzone
    weight: int = 0  # 0: not given
    service_account: str = ""

    @property
    def unix(self) -> bool:
        return self.address.startswith(UNIX_PREFIX)


def workload_entry(spec: Mapping[str, Any]) -> WorkloadEntry:
    ports: dict[str, int] = {}
    for name, number in mapping(spec.get("ports")).items():
        value = integer(number)
        if value is not None:
            ports[str(name)] = value
    return WorkloadEntry(
        address=text(spec.get("address")),
        ports=ports,
        labels=labels(spec.get("labels")),
        network=text(spec.get("network")),
        locality=text(spec.get("locality")),
        weight=integer(spec.get("weight"), 0) or 0,
        service_account=text(spec.get("serviceAccount")),
    )


@dataclass(frozen=True, slots=True)
class HttpHeader:
    name: str = ""
    value: str = ""


@dataclass(frozen=True, slots=True)
class HttpProbe:
    path: str = ""
    port: int = 0
    host: str = ""
    scheme: str = ""  # HTTP | HTTPS ("" reads as HTTP)
    headers: tuple[HttpHeader, ...] = ()


@dataclass(frozen=True, slots=True)
class Probe:
    """How the agent beside a workload checks its health (Kubernetes probe semantics)."""

    initial_delay_seconds: int = 0
    timeout_seconds: int = 0
    period_seconds: int = 0
    success_threshold: int = 0
    failure_threshold: int = 0
    http_get: HttpProbe | None = None
    tcp_port: int | None = None  # tcpSocket.port
    exec_command: tuple[str, ...] | None = None  # exec.command
    grpc_port: int | None = None  # grpc.port


@dataclass(frozen=True, slots=True)
class WorkloadGroup:
    # `metadata`: labels and annotations every WorkloadEntry of the group carries.
    labels: Mapping[str, str] = field(default_factory=dict)
    annotations: Mapping[str, str] = field(default_factory=dict)
    template: WorkloadEntry = field(default_factory=WorkloadEntry)
    probe: Probe | None = None


def _http_probe(raw: Mapping[str, Any]) -> HttpProbe:
    return HttpProbe(
        path=text(raw.get("path")),
        port=integer(raw.get("port"), 0) or 0,
        host=text(raw.get("host")),
        scheme=text(raw.get("scheme")),
        headers=tuple(HttpHeader(text(mapping(h).get("name")), text(mapping(h).get("value")))
                      for h in entries(raw.get("httpHeaders"))),
    )


def _probe(raw: Mapping[str, Any]) -> Probe:
    tcp, grpc, exe = raw.get("tcpSocket"), raw.get("grpc"), raw.get("exec")
    return Probe(
        initial_delay_seconds=integer(raw.get("initialDelaySeconds"), 0) or 0,
        timeout_seconds=integer(raw.get("timeoutSeconds"), 0) or 0,
        period_seconds=integer(raw.get("periodSeconds"), 0) or 0,
        success_threshold=integer(raw.get("successThreshold"), 0) or 0,
        failure_threshold=integer(raw.get("failureThreshold"), 0) or 0,
        http_get=optional(raw.get("httpGet"), _http_probe),
        tcp_port=integer(mapping(tcp).get("port"), 0) if tcp is not None else None,
        exec_command=tuple(str(c) for c in entries(mapping(exe).get("command"))) if exe is not None else None,
        grpc_port=integer(mapping(grpc).get("port"), 0) if grpc is not None else None,
    )


def workload_group(spec: Mapping[str, Any]) -> WorkloadGroup:
    meta = mapping(spec.get("metadata"))
    return WorkloadGroup(
        labels=labels(meta.get("labels")),
        annotations=labels(meta.get("annotations")),
        template=workload_entry(mapping(spec.get("template"))),
        probe=optional(spec.get("probe"), _probe),
    )
