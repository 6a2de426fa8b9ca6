"""ServiceEntry semantics beyond the schema, after Istio's ValidateServiceEntry
(pkg/config/validation/validation.go, read not copied). What Istio only warns about (a
TCP port without addresses, targetPort with resolution NONE, a workloadSelector with DNS
resolution, several hosts with an address and a TCP port) is accepted here too; `meshd
analyze` reports what matters of it (analysis/)."""
from __future__ import annotations

from typing import Any

from . import dns
from .errors import FieldError, child, index, invalid
from .istio_common import check_export_to, check_labels, check_port, get
from .workloadentry import check_endpoint_ports, check_workload_entry

# Istio's protocol.Parse names (case-insensitive); "" means sniffed.
PROTOCOLS = frozenset({"TCP", "UDP", "GRPC", "GRPC-WEB", "HTTP", "HTTP_PROXY", "HTTP2", "HTTPS", "TLS", "MONGO",
                       "REDIS", "MYSQL"})
_HTTP = frozenset({"HTTP", "HTTP2", "GRPC", "GRPC-WEB", "HTTP_PROXY"})
_TLS = frozenset({"HTTPS", "TLS"})


def validate_service_entry(spec: dict, namespace: str | None) -> list[FieldError]:
    errs: list[FieldError] = []
    selector = get(spec, "workloadSelector")
    endpoints = get(spec, "endpoints")
    if selector is not None:
        check_labels(get(selector, "labels"), "spec.workloadSelector.labels", errs)
        if endpoints is not None:
            errs.append(FieldError("spec", "only one of WorkloadSelector or Endpoints is allowed in Service Entry"))
    hosts = get(spec, "hosts", [])
    if not hosts:
        errs.append(FieldError("spec.hosts", "Required value: service entry must have at least one host"))
    for i, host in enumerate(hosts):
        if host == "*":
            errs.append(invalid(index("spec.hosts", i), host, f"invalid host {host}"))
            continue
        problem = dns.check_wildcard_domain(str(host))
        if problem:
            errs.append(invalid(index("spec.hosts", i), host, problem))

    addresses = get(spec, "addresses", [])
    for i, address in enumerate(addresses):
        problem = dns.check_ip_subnet(str(address))
        if problem:
            errs.append(invalid(index("spec.addresses", i), address, problem))
    resolution = get(spec, "resolution", "NONE")
    if any("/" in str(a) for a in addresses) and resolution not in ("NONE", "STATIC"):
        errs.append(invalid("spec.resolution", resolution, "CIDR addresses are allowed only for NONE/STATIC resolution types"))

    ports = get(spec, "ports", [])
    names: set[str] = set()
    numbers: set[Any] = set()
    for i, port in enumerate(ports):
        p = index("spec.ports", i)
        name, number = str(get(port, "name", "")), get(port, "number", 0)
        if name in names:
            errs.append(invalid(child(p, "name"), name, f"service entry port name {name!r} already defined"))
        if number in numbers:
            errs.append(invalid(child(p, "number"), number, f"service entry port {number} already defined"))
        names.add(name)
        numbers.add(number)
        if get(port, "targetPort", 0):
            check_port(port["targetPort"], child(p, "targetPort"), errs)
        if not dns.is_istio_label(name):
            errs.append(invalid(child(p, "name"), name, f"invalid port name: {name}"))
        proto = str(get(port, "protocol", ""))
        if proto and proto.upper() not in PROTOCOLS:
            errs.append(invalid(child(p, "protocol"), proto, f"unsupported protocol: {proto}"))
        check_port(number, child(p, "number"), errs)

    if resolution == "NONE":
        if endpoints:
            errs.append(FieldError("spec.endpoints", "no endpoints should be provided for resolution type none"))
    elif resolution == "STATIC":
        for i, endpoint in enumerate(endpoints or []):
            check_workload_entry(endpoint, index("spec.endpoints", i), errs, service_ports=names, fqdn_allowed=False)
    elif resolution in ("DNS", "DNS_ROUND_ROBIN"):
        _check_dns(spec, resolution, hosts, endpoints or [], names, errs)

    if resolution != "NONE" and len(hosts) > 1:
        for i, port in enumerate(ports):
            proto = str(get(port, "protocol", "")).upper()
            if proto not in _HTTP and proto not in _TLS:
                errs.append(FieldError(index("spec.ports", i), "multiple hosts provided with non-HTTP, non-TLS ports"))
                break
    check_export_to(namespace, get(spec, "exportTo"), "spec.exportTo", errs, service_entry=True)
    return errs


def _check_dns(spec: dict, resolution: str, hosts: list, endpoints: list, port_names: set[str],
               errs: list[FieldError]) -> None:
    if not endpoints:
        for i, host in enumerate(hosts):
            if host != "*" and dns.check_fqdn(str(host)):
                errs.append(invalid(index("spec.hosts", i), host,
                                    f"hosts must be FQDN if no endpoints are provided for resolution mode {resolution}"))
    if resolution == "DNS_ROUND_ROBIN" and len(endpoints) > 1:
        errs.append(FieldError("spec.endpoints", f"there must only be 0 or 1 endpoint for resolution mode {resolution}"))
    for i, endpoint in enumerate(endpoints):
        p = index("spec.endpoints", i)
        address = str(get(endpoint, "address", ""))
        if not dns.is_ip(address) and dns.check_fqdn(address):
            errs.append(invalid(child(p, "address"), address,
                                f"endpoint address {address!r} is not a valid FQDN or an IP address"))
        check_labels(get(endpoint, "labels"), child(p, "labels"), errs)
        check_endpoint_ports(get(endpoint, "ports"), child(p, "ports"), errs, port_names)
