"""WorkloadEntry and WorkloadGroup semantics beyond the schema, after Istio's
ValidateWorkloadEntry and ValidateWorkloadGroup (pkg/config/validation/validation.go,
read not copied). Istio's warnings (an entry without address but with a network) are
accepted without a word, as `kubectl apply` accepts them."""
from __future__ import annotations

from collections.abc import Collection
from typing import Any

from . import dns
from .errors import FieldError, child, invalid, map_key
from .istio_common import check_labels, check_port, get, header_name_error

UNIX_PREFIX = "unix://"


def validate_workload_entry(spec: dict) -> list[FieldError]:
    errs: list[FieldError] = []
    check_workload_entry(spec, "spec", errs, service_ports=None, fqdn_allowed=True)
    return errs


def check_workload_entry(entry: Any, path: str, errs: list[FieldError], service_ports: Collection[str] | None,
                         fqdn_allowed: bool) -> None:
    """One workload: a WorkloadEntry's spec, or a STATIC ServiceEntry's endpoint
    (`service_ports`: the ServiceEntry's port names, which its `ports` must name;
    `fqdn_allowed`: whether the address may be a DNS name)."""
    address = str(get(entry, "address", ""))
    if not address and not get(entry, "network"):
        errs.append(FieldError(child(path, "address"), "Required value: address is required"))
        return
    ports = get(entry, "ports", {})
    if address.startswith(UNIX_PREFIX):
        problem = unix_address_error(address[len(UNIX_PREFIX):])
        if problem:
            errs.append(invalid(child(path, "address"), address, problem))
        if ports:
            errs.append(invalid(child(path, "ports"), "object", f"unix endpoint {address} must not include ports"))
        if service_ports is not None and len(service_ports) != 1:
            errs.append(FieldError(child(path, "address"), "exactly 1 service port required for unix endpoints"))
    elif address and not dns.is_ip(address):
        if not fqdn_allowed:
            errs.append(invalid(child(path, "address"), address, f"endpoint address {address!r} is not a valid IP address"))
        elif dns.check_fqdn(address):
            errs.append(invalid(child(path, "address"), address,
                                f"endpoint address {address!r} is not a valid FQDN or an IP address"))
    check_endpoint_ports(ports, child(path, "ports"), errs, service_ports)
    check_labels(get(entry, "labels"), child(path, "labels"), errs)


def check_endpoint_ports(ports: Any, path: str, errs: list[FieldError], service_ports: Collection[str] | None) -> None:
    """An endpoint's `ports` map: port names (DNS-1123 labels) the service defines, to port numbers."""
    for name, number in (ports or {}).items():
        p = map_key(path, name)
        if service_ports is not None and name not in service_ports:
            errs.append(invalid(p, number, f"endpoint port {number} is not defined by the service entry"))
        if not dns.is_istio_label(str(name)):
            errs.append(invalid(p, name, f"invalid port name: {name}"))
        check_port(number, p, errs)


def unix_address_error(path: str) -> str | None:
    """Istio's ValidateUnixAddress: an abstract socket (`@name`) or an absolute file path."""
    if not path:
        return "unix address must not be empty"
    if path.startswith("@"):
        return None
    if not path.startswith("/") or path.endswith("/"):
        return f"{path} is not an absolute path to a file"
    return None


def validate_workload_group(spec: dict) -> list[FieldError]:
    errs: list[FieldError] = []
    if get(spec, "template") is None:
        errs.append(FieldError("spec.template", "Required value: template is required"))
        return errs
    # The template is not checked as a WorkloadEntry: its address is filled in when a
    # proxy registers.
    check_labels(get(get(spec, "metadata"), "labels"), "spec.metadata.labels", errs)
    _check_probe(get(spec, "probe"), "spec.probe", errs)
    return errs


def _check_probe(probe: Any, path: str, errs: list[FieldError]) -> None:
    if probe is None:
        return
    for field in ("periodSeconds", "initialDelaySeconds", "timeoutSeconds", "successThreshold", "failureThreshold"):
        value = get(probe, field, 0)
        if value < 0:
            errs.append(invalid(child(path, field), value, f"{field} must be non-negative"))
    http, tcp, exe = get(probe, "httpGet"), get(probe, "tcpSocket"), get(probe, "exec")
    if http is not None:
        hp = child(path, "httpGet")
        check_port(get(http, "port", 0), child(hp, "port"), errs)
        scheme = get(http, "scheme", "")
        if scheme not in ("", "HTTP", "HTTPS"):
            errs.append(invalid(child(hp, "scheme"), scheme, 'httpGet.scheme must be one of "HTTPS", "HTTP"'))
        for i, header in enumerate(get(http, "httpHeaders", [])):
            problem = header_name_error(str(get(header, "name", "")))
            if problem:
                errs.append(invalid(f"{hp}.httpHeaders[{i}].name", get(header, "name", ""), problem))
    elif tcp is not None:
        check_port(get(tcp, "port", 0), child(child(path, "tcpSocket"), "port"), errs)
    elif exe is not None:
        if not get(exe, "command"):
            errs.append(FieldError(child(child(path, "exec"), "command"), "Required value: exec.command is required"))
    else:
        errs.append(FieldError(path, "unknown health check method: one of httpGet, tcpSocket or exec is required"))
