"""Light checks for the core Kubernetes kinds meshd reads (Namespace, Service, Pod, EndpointSlice, Node).

No schema files here: these are the fields meshd uses (ports, selectors, addresses, pod IPs),
checked for type and range as apimachinery's validation would, with unknown fields rejected
where the shape is small and stable. Pod specs are large and grow every release, and meshd
reads little of them, so only the parts it uses are looked at and unknown PodSpec fields
are let through rather than rejecting manifests written for a newer cluster.
"""
from __future__ import annotations

import ipaddress
import re
from typing import Any

from . import dns
from .errors import FieldError, child, index, invalid, map_key, required, type_name, unknown_field

_PROTOCOLS = ("TCP", "UDP", "SCTP")
_OBJECT = frozenset({"apiVersion", "kind", "metadata", "spec", "status"})


def _unknown(obj: dict, known: frozenset[str], path: str, errs: list[FieldError]) -> None:
    for key in obj:
        if key not in known:
            errs.append(unknown_field(path, str(key)))


def _typed(value: Any, expected: type | tuple, name: str, path: str, errs: list[FieldError]) -> bool:
    if not isinstance(value, expected):
        errs.append(invalid(path, value, f"must be of type {name}, got {type_name(value)}"))
        return False
    return True


def _int(value: Any, path: str, errs: list[FieldError]) -> bool:
    if isinstance(value, bool) or not isinstance(value, int):
        errs.append(invalid(path, value, f"must be of type integer, got {type_name(value)}"))
        return False
    return True


def _port_number(value: Any, path: str, errs: list[FieldError], allow_zero: bool = False) -> None:
    if value is None:
        errs.append(required(path))
    elif _int(value, path, errs) and not ((allow_zero and value == 0) or 1 <= value <= 65535):
        errs.append(invalid(path, value, "must be between 1 and 65535, inclusive"))


def _optional(obj: dict, key: str, expected: type | tuple, name: str, path: str, errs: list[FieldError]) -> Any:
    value = obj.get(key)
    if value is not None and not _typed(value, expected, name, child(path, key), errs):
        return None
    return value


def _string_map(value: Any, path: str, errs: list[FieldError]) -> None:
    if value is None or not _typed(value, dict, "object", path, errs):
        return
    for k, v in value.items():
        _typed(v, str, "string", map_key(path, k), errs)


def _protocol(obj: dict, path: str, errs: list[FieldError]) -> None:
    protocol = obj.get("protocol")
    if protocol is not None and protocol not in _PROTOCOLS:
        errs.append(FieldError(child(path, "protocol"),
                               f"Unsupported value: \"{protocol}\": supported values: \"SCTP\", \"TCP\", \"UDP\""))


def _object(doc: dict, key: str, errs: list[FieldError], required_field: bool = False) -> dict:
    value = doc.get(key)
    if value is None:
        if required_field:
            errs.append(required(key))
        return {}
    return value if _typed(value, dict, "object", key, errs) else {}


# --- Namespace -------------------------------------------------------------------------------

def validate_namespace(doc: dict) -> list[FieldError]:
    errs: list[FieldError] = []
    _unknown(doc, _OBJECT, "", errs)
    spec = _object(doc, "spec", errs)
    _unknown(spec, frozenset({"finalizers"}), "spec", errs)
    finalizers = _optional(spec, "finalizers", list, "array", "spec", errs) or []
    for i, f in enumerate(finalizers):
        _typed(f, str, "string", index("spec.finalizers", i), errs)
    _object(doc, "status", errs)
    return errs


# --- Node ------------------------------------------------------------------------------------

def validate_node(doc: dict) -> list[FieldError]:
    """meshd reads a Node's name and labels only (metadata, checked for every kind): the
    rest must have the shape of an object, whatever a kubelet of any version puts there."""
    errs: list[FieldError] = []
    _unknown(doc, _OBJECT, "", errs)
    _object(doc, "spec", errs)
    _object(doc, "status", errs)
    return errs


# --- Service ---------------------------------------------------------------------------------

_SERVICE_SPEC = frozenset({
    "ports", "selector", "clusterIP", "clusterIPs", "type", "externalIPs", "sessionAffinity", "loadBalancerIP",
    "loadBalancerSourceRanges", "externalName", "externalTrafficPolicy", "healthCheckNodePort",
    "publishNotReadyAddresses", "sessionAffinityConfig", "ipFamilies", "ipFamilyPolicy",
    "allocateLoadBalancerNodePorts", "loadBalancerClass", "internalTrafficPolicy", "trafficDistribution",
})
_SERVICE_PORT = frozenset({"name", "protocol", "appProtocol", "port", "targetPort", "nodePort"})
_SERVICE_TYPES = ("ClusterIP", "NodePort", "LoadBalancer", "ExternalName")


def validate_service(doc: dict) -> list[FieldError]:
    errs: list[FieldError] = []
    _unknown(doc, _OBJECT, "", errs)
    spec = _object(doc, "spec", errs)
    _unknown(spec, _SERVICE_SPEC, "spec", errs)
    svc_type = _optional(spec, "type", str, "string", "spec", errs) or "ClusterIP"
    if svc_type not in _SERVICE_TYPES:
        errs.append(FieldError("spec.type", f"Unsupported value: \"{svc_type}\": supported values: "
                                            + ", ".join(f'"{t}"' for t in _SERVICE_TYPES)))
    selector = spec.get("selector")
    _string_map(selector, "spec.selector", errs)
    cluster_ip = _optional(spec, "clusterIP", str, "string", "spec", errs)
    if cluster_ip and cluster_ip != "None" and not dns.is_ip(cluster_ip):
        errs.append(invalid("spec.clusterIP", cluster_ip, "must be a valid IP address or \"None\""))
    for field in ("clusterIPs", "externalIPs"):
        for i, ip in enumerate(_optional(spec, field, list, "array", "spec", errs) or []):
            _typed(ip, str, "string", index(child("spec", field), i), errs)
    if svc_type == "ExternalName":
        name = _optional(spec, "externalName", str, "string", "spec", errs)
        if not name:
            errs.append(required("spec.externalName"))
        elif dns.check_fqdn(name):
            errs.append(invalid("spec.externalName", name, dns.check_fqdn(name) or ""))

    ports = _optional(spec, "ports", list, "array", "spec", errs)
    headless = cluster_ip == "None"
    if not ports and not headless and svc_type != "ExternalName":
        errs.append(required("spec.ports"))
    names: set[str] = set()
    for i, port in enumerate(ports or []):
        path = index("spec.ports", i)
        if not _typed(port, dict, "object", path, errs):
            continue
        _unknown(port, _SERVICE_PORT, path, errs)
        _port_number(port.get("port"), child(path, "port"), errs)
        _protocol(port, path, errs)
        name = _optional(port, "name", str, "string", path, errs)
        if name is None or name == "":
            if len(ports) > 1:  # a name is needed to tell ports apart (and for EndpointSlice ports)
                errs.append(required(child(path, "name")))
        elif not dns.is_k8s_label(name):
            errs.append(invalid(child(path, "name"), name, "must be a DNS-1123 label"))
        elif name in names:
            errs.append(FieldError(child(path, "name"), f"Duplicate value: \"{name}\""))
        if name:
            names.add(name)
        _target_port(port.get("targetPort"), child(path, "targetPort"), errs)
        if port.get("nodePort") is not None:
            _port_number(port["nodePort"], child(path, "nodePort"), errs, allow_zero=True)
        _optional(port, "appProtocol", str, "string", path, errs)
    _object(doc, "status", errs)
    return errs


def _target_port(value: Any, path: str, errs: list[FieldError]) -> None:
    """An int-or-string: a port number, or the name of a container port (IANA_SVC_NAME)."""
    if value is None:
        return
    if isinstance(value, str):
        if value.isdigit():  # "8080" is decoded by the API server as the number 8080
            value = int(value)
        else:
            err = dns.check_iana_svc_name(value)
            if err:
                errs.append(invalid(path, value, err))
            return
    if _int(value, path, errs) and not 1 <= value <= 65535:
        errs.append(invalid(path, value, "must be between 1 and 65535, inclusive"))


# --- Pod -------------------------------------------------------------------------------------

_CONTAINER_PORT = frozenset({"containerPort", "hostPort", "hostIP", "name", "protocol"})


def validate_pod(doc: dict) -> list[FieldError]:
    errs: list[FieldError] = []
    _unknown(doc, _OBJECT, "", errs)
    spec = _object(doc, "spec", errs)
    containers = _optional(spec, "containers", list, "array", "spec", errs)
    if not containers:
        errs.append(required("spec.containers"))
    for field in ("containers", "initContainers"):
        for i, container in enumerate(_optional(spec, field, list, "array", "spec", errs) or []):
            _container(container, index(child("spec", field), i), errs)
    for field in ("serviceAccountName", "serviceAccount", "nodeName", "hostname", "subdomain"):
        _optional(spec, field, str, "string", "spec", errs)
    _optional(spec, "hostNetwork", bool, "boolean", "spec", errs)

    status = _object(doc, "status", errs)
    for field in ("podIP", "hostIP", "phase"):
        _optional(status, field, str, "string", "status", errs)
    pod_ip = status.get("podIP")
    if isinstance(pod_ip, str) and pod_ip and not dns.is_ip(pod_ip):
        errs.append(invalid("status.podIP", pod_ip, "must be a valid IP address"))
    for i, entry in enumerate(_optional(status, "podIPs", list, "array", "status", errs) or []):
        path = index("status.podIPs", i)
        if _typed(entry, dict, "object", path, errs):
            ip = entry.get("ip")
            if ip is None:
                errs.append(required(child(path, "ip")))
            elif _typed(ip, str, "string", child(path, "ip"), errs) and not dns.is_ip(ip):
                errs.append(invalid(child(path, "ip"), ip, "must be a valid IP address"))
    return errs


def _container(container: Any, path: str, errs: list[FieldError]) -> None:
    if not _typed(container, dict, "object", path, errs):
        return
    name = container.get("name")
    if name is None:
        errs.append(required(child(path, "name")))
    elif _typed(name, str, "string", child(path, "name"), errs) and not dns.is_k8s_label(name):
        errs.append(invalid(child(path, "name"), name, "must be a DNS-1123 label"))
    _optional(container, "image", str, "string", path, errs)
    for i, port in enumerate(_optional(container, "ports", list, "array", path, errs) or []):
        pp = index(child(path, "ports"), i)
        if not _typed(port, dict, "object", pp, errs):
            continue
        _unknown(port, _CONTAINER_PORT, pp, errs)
        _port_number(port.get("containerPort"), child(pp, "containerPort"), errs)
        if port.get("hostPort") is not None:
            _port_number(port["hostPort"], child(pp, "hostPort"), errs, allow_zero=True)
        _protocol(port, pp, errs)
        name = _optional(port, "name", str, "string", pp, errs)
        if name:
            err = dns.check_iana_svc_name(name)
            if err:
                errs.append(invalid(child(pp, "name"), name, err))
        _optional(port, "hostIP", str, "string", pp, errs)


# --- EndpointSlice ---------------------------------------------------------------------------

_SLICE = frozenset({"apiVersion", "kind", "metadata", "addressType", "endpoints", "ports"})
_ENDPOINT = frozenset({"addresses", "conditions", "hostname", "targetRef", "nodeName", "zone", "hints",
                       "deprecatedTopology"})
_CONDITIONS = frozenset({"ready", "serving", "terminating"})
_SLICE_PORT = frozenset({"name", "protocol", "port", "appProtocol"})
_ADDRESS_TYPES = ("IPv4", "IPv6", "FQDN")
_MAX_ADDRESSES = 100


def validate_endpoint_slice(doc: dict) -> list[FieldError]:
    errs: list[FieldError] = []
    _unknown(doc, _SLICE, "", errs)
    address_type = doc.get("addressType")
    if address_type is None:
        errs.append(required("addressType"))
    elif address_type not in _ADDRESS_TYPES:
        errs.append(FieldError("addressType", f"Unsupported value: \"{address_type}\": supported values: "
                                              '"FQDN", "IPv4", "IPv6"'))
    endpoints = doc.get("endpoints")
    if endpoints is not None and _typed(endpoints, list, "array", "endpoints", errs):
        for i, endpoint in enumerate(endpoints):
            _endpoint(endpoint, address_type, index("endpoints", i), errs)
    ports = doc.get("ports")
    if ports is not None and _typed(ports, list, "array", "ports", errs):
        names: set[str] = set()
        for i, port in enumerate(ports):
            path = index("ports", i)
            if not _typed(port, dict, "object", path, errs):
                continue
            _unknown(port, _SLICE_PORT, path, errs)
            if port.get("port") is not None:
                _port_number(port["port"], child(path, "port"), errs)
            _protocol(port, path, errs)
            name = _optional(port, "name", str, "string", path, errs) or ""
            if name and not dns.is_k8s_label(name):
                errs.append(invalid(child(path, "name"), name, "must be a DNS-1123 label"))
            if name in names:
                errs.append(FieldError(child(path, "name"), f"Duplicate value: \"{name}\""))
            names.add(name)
            _optional(port, "appProtocol", str, "string", path, errs)
    return errs


def _endpoint(endpoint: Any, address_type: Any, path: str, errs: list[FieldError]) -> None:
    if not _typed(endpoint, dict, "object", path, errs):
        return
    _unknown(endpoint, _ENDPOINT, path, errs)
    addresses = endpoint.get("addresses")
    apath = child(path, "addresses")
    if addresses is None:
        errs.append(required(apath))
    elif _typed(addresses, list, "array", apath, errs):
        if not addresses:
            errs.append(invalid(apath, addresses, "must contain at least 1 address"))
        elif len(addresses) > _MAX_ADDRESSES:
            errs.append(FieldError(apath, f"Too many: {len(addresses)}: must have at most {_MAX_ADDRESSES} items"))
        for i, address in enumerate(addresses):
            p = index(apath, i)
            if _typed(address, str, "string", p, errs):
                err = _address_error(address, address_type)
                if err:
                    errs.append(invalid(p, address, err))
    conditions = endpoint.get("conditions")
    if conditions is not None and _typed(conditions, dict, "object", child(path, "conditions"), errs):
        _unknown(conditions, _CONDITIONS, child(path, "conditions"), errs)
        for key in _CONDITIONS:
            _optional(conditions, key, bool, "boolean", child(path, "conditions"), errs)
    hostname = _optional(endpoint, "hostname", str, "string", path, errs)
    if hostname and not dns.is_k8s_label(hostname):
        errs.append(invalid(child(path, "hostname"), hostname, "must be a DNS-1123 label"))
    for field in ("nodeName", "zone"):
        _optional(endpoint, field, str, "string", path, errs)
    for field in ("targetRef", "hints"):
        _optional(endpoint, field, dict, "object", path, errs)
    _string_map(endpoint.get("deprecatedTopology"), child(path, "deprecatedTopology"), errs)


# What ipaddress.IPv4Address accepts (four decimal octets, no leading zeros), matched
# without building the address: an EndpointSlice's addresses are most of a list's checks.
_OCTET = r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
_IPV4 = re.compile(rf"{_OCTET}(?:\.{_OCTET}){{3}}")


def _address_error(address: str, address_type: Any) -> str | None:
    if address_type == "IPv4":
        if _IPV4.fullmatch(address) is None:
            return "must be a valid IPv4 address"
    elif address_type == "IPv6":
        try:
            ipaddress.IPv6Address(address)
        except ValueError:
            return "must be a valid IPv6 address"
    elif address_type == "FQDN" and not dns.is_k8s_subdomain(address):
        return "must be a valid DNS-1123 subdomain"
    return None
