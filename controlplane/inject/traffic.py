"""The interception flags of the init step, from the pod's `traffic.sidecar.istio.io/*`
annotations and the values, as Istio's injection template computes istio-iptables' args.

Istio's validation of these annotations comes first (inject.go's validators): a bad value
is an error naming the annotation, and the pod is not injected.
"""
from __future__ import annotations

import ipaddress
from collections.abc import Mapping

from .config import InjectionConfig

INCLUDE_IP_RANGES = "traffic.sidecar.istio.io/includeOutboundIPRanges"
EXCLUDE_IP_RANGES = "traffic.sidecar.istio.io/excludeOutboundIPRanges"
INCLUDE_INBOUND_PORTS = "traffic.sidecar.istio.io/includeInboundPorts"
EXCLUDE_INBOUND_PORTS = "traffic.sidecar.istio.io/excludeInboundPorts"
INCLUDE_OUTBOUND_PORTS = "traffic.sidecar.istio.io/includeOutboundPorts"
EXCLUDE_OUTBOUND_PORTS = "traffic.sidecar.istio.io/excludeOutboundPorts"
KUBEVIRT_INTERFACES = "traffic.sidecar.istio.io/kubevirtInterfaces"
REROUTE_VIRTUAL_INTERFACES = "istio.io/reroute-virtual-interfaces"
EXCLUDE_INTERFACES = "traffic.sidecar.istio.io/excludeInterfaces"
STATUS_PORT = "status.sidecar.istio.io/port"
INTERCEPTION_MODE = "sidecar.istio.io/interceptionMode"
HONOURED = frozenset({INCLUDE_IP_RANGES, EXCLUDE_IP_RANGES, INCLUDE_INBOUND_PORTS, EXCLUDE_INBOUND_PORTS,
                      INCLUDE_OUTBOUND_PORTS, EXCLUDE_OUTBOUND_PORTS, KUBEVIRT_INTERFACES, REROUTE_VIRTUAL_INTERFACES,
                      EXCLUDE_INTERFACES, STATUS_PORT, INTERCEPTION_MODE})
# meshd's listeners are built for REDIRECT, and `meshd pod-init` installs REDIRECT rules
# only: TPROXY is not served, NONE (no rules, the bootstrap only) is not implemented by the
# init step. Both are refused here rather than left to fail in the pod's init container.
MODES = ("REDIRECT",)
_WHY = {"TPROXY": " (TPROXY: listeners for original source addresses are not built)",
        "NONE": " (NONE: meshd's init step has no mode that writes the bootstrap without rules)"}
# Always kept out of inbound capture: Envoy's Prometheus and readiness ports.
ALWAYS_EXCLUDED_INBOUND = "15090,15021"


class AnnotationError(ValueError):
    """A pod annotation meshd refuses: names the annotation, the value and the reason."""

    def __init__(self, annotation: str, value: str, reason: str):
        super().__init__(f"annotation {annotation}={value!r}: {reason}")
        self.annotation = annotation


def _ports(annotation: str, value: str, wildcard: bool) -> str:
    if wildcard and value.strip() == "*":
        return value
    for part in value.split(","):
        p = part.strip()
        if not p:
            continue
        if not p.isdigit() or not 0 < int(p) < 65536:
            raise AnnotationError(annotation, value, f"{p!r} is not a port (1-65535)"
                                  + (" or '*'" if wildcard else ""))
    return value


def _cidrs(annotation: str, value: str, wildcard: bool) -> str:
    if wildcard and value.strip() == "*":
        return value
    for part in value.split(","):
        c = part.strip()
        if not c:
            continue
        try:
            ipaddress.ip_network(c, strict=False)
        except ValueError:
            raise AnnotationError(annotation, value, f"{c!r} is not an IP range (CIDR)"
                                  + (" or '*'" if wildcard else "")) from None
        if "/" not in c:
            raise AnnotationError(annotation, value, f"{c!r} is not an IP range: give the prefix length (CIDR)")
    return value


def interception_mode(annotations: Mapping[str, str], proxy_config: Mapping[str, object]) -> str:
    mode = str(annotations.get(INTERCEPTION_MODE) or proxy_config.get("interceptionMode") or "REDIRECT")
    if mode not in MODES:
        raise AnnotationError(INTERCEPTION_MODE, mode, f"meshd serves interception mode {', '.join(MODES)} only"
                              + _WHY.get(mode, ""))
    return mode


def _exclude_status_port(status_port: str, excluded: str) -> str:
    """Istio's excludeInboundPort: the status port added to the excluded ports unless 0
    or already there."""
    port = status_port.strip()
    if not port or port == "0":
        return excluded
    parts = [p.strip() for p in excluded.split(",")]
    if port in parts:
        return excluded
    return ",".join([p for p in parts if p] + [port])


def iptables_args(annotations: Mapping[str, str], cfg: InjectionConfig, mode: str) -> list[str]:
    """istio-iptables' flags for the pod, in the order of Istio's template."""
    t = cfg.traffic

    def get(name: str, default: str) -> str:
        value = annotations.get(name)
        return default if value is None else str(value)

    include_ranges = _cidrs(INCLUDE_IP_RANGES, get(INCLUDE_IP_RANGES, t.include_ip_ranges), wildcard=True)
    exclude_ranges = _cidrs(EXCLUDE_IP_RANGES, get(EXCLUDE_IP_RANGES, t.exclude_ip_ranges), wildcard=False)
    include_in = _ports(INCLUDE_INBOUND_PORTS, get(INCLUDE_INBOUND_PORTS, t.include_inbound_ports), wildcard=True)
    exclude_in = _ports(EXCLUDE_INBOUND_PORTS, get(EXCLUDE_INBOUND_PORTS, t.exclude_inbound_ports), wildcard=False)
    status_port = get(STATUS_PORT, t.status_port)
    if status_port.strip() != "0":
        _ports(STATUS_PORT, status_port, wildcard=False)
    excluded = _exclude_status_port(status_port, exclude_in)
    args = ["-p", "15001", "-z", "15006", "-u", "1337", "-m", mode, "-i", include_ranges, "-x", exclude_ranges,
            "-b", include_in, "-d", f"{ALWAYS_EXCLUDED_INBOUND},{excluded}" if excluded else ALWAYS_EXCLUDED_INBOUND]
    if INCLUDE_OUTBOUND_PORTS in annotations or t.include_outbound_ports:
        args += ["-q", _ports(INCLUDE_OUTBOUND_PORTS, get(INCLUDE_OUTBOUND_PORTS, t.include_outbound_ports), wildcard=False)]
    if EXCLUDE_OUTBOUND_PORTS in annotations or t.exclude_outbound_ports:
        args += ["-o", _ports(EXCLUDE_OUTBOUND_PORTS, get(EXCLUDE_OUTBOUND_PORTS, t.exclude_outbound_ports), wildcard=False)]
    interfaces = annotations.get(REROUTE_VIRTUAL_INTERFACES) or annotations.get(KUBEVIRT_INTERFACES)
    if interfaces:
        args += ["-k", str(interfaces)]
    if annotations.get(EXCLUDE_INTERFACES):
        args += ["-c", str(annotations[EXCLUDE_INTERFACES])]
    return args
