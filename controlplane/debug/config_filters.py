"""What `proxy-config` selects and how it names things, as istioctl: the --fqdn/--port/
--subset/--direction/--address/--name filters (*Filter.Verify), Istio's subset keys
(`outbound|80|v1|host`), and the istio metadata a resource carries (its config path).
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from google.protobuf.message import Message

from .configdump import unpack

_HEALTH = {0: "UNKNOWN", 1: "HEALTHY", 2: "UNHEALTHY", 3: "DRAINING", 4: "TIMEOUT", 5: "DEGRADED"}
HTTP_CONNECTION_MANAGER = "envoy.filters.network.http_connection_manager"
TCP_PROXY = "envoy.filters.network.tcp_proxy"
BLACKHOLE = "BlackHoleCluster"


# --- filters (istioctl's *Filter.Verify) ------------------------------------------------

@dataclass
class ClusterFilter:
    fqdn: str = ""
    port: int = 0
    subset: str = ""
    direction: str = ""

    def verify(self, name: str) -> bool:
        if not (self.fqdn or self.port or self.subset or self.direction):
            return True
        if self.fqdn and self.fqdn not in name:
            return False
        if self.direction and self.direction not in name:
            return False
        if self.subset and self.subset not in name:
            return False
        if self.port and f"|{self.port}|" not in name:
            return False
        return True


@dataclass
class ListenerFilter:
    address: str = ""
    port: int = 0
    type: str = ""
    verbose: bool = True

    def verify(self, l: Message) -> bool:
        if not (self.address or self.port or self.type):
            return True
        if self.address:
            addresses = additional_addresses(l) + [listener_address(l)]
            if not any(a.lower() == self.address.lower() for a in addresses):
                return False
        if self.port and listener_port(l) != self.port:
            return False
        if self.type and listener_type(l).lower() != self.type.lower():
            return False
        return True


@dataclass
class RouteFilter:
    name: str = ""
    verbose: bool = True

    def verify(self, r: Message) -> bool:
        return not self.name or self.name == r.name


@dataclass
class EndpointFilter:
    address: str = ""
    port: int = 0
    cluster: str = ""
    status: str = ""

    def verify(self, ep: Message, cluster: str) -> bool:
        if not (self.address or self.port or self.cluster or self.status):
            return True
        if self.address and endpoint_address(ep).lower() != self.address.lower():
            return False
        if self.port and ep.endpoint.address.socket_address.port_value != self.port:
            return False
        if self.cluster and cluster.lower() != self.cluster.lower():
            return False
        if self.status and _HEALTH.get(ep.health_status, str(ep.health_status)).lower() != self.status.lower():
            return False
        return True


# --- names (Istio's subset keys) -------------------------------------------------------

def parse_subset_key(name: str) -> tuple[str, str, str, int]:
    """model.ParseSubsetKey: `direction|port|subset|host` -> (direction, subset, host, port)."""
    parts = name.split("|")
    if len(parts) < 4:
        return "", "", "", 0
    try:
        port = int(parts[1])
    except ValueError:
        port = 0
    return parts[0], parts[2], parts[3], port


def safe_subset_key(name: str) -> tuple[str, str, str, int]:
    if len(name.split("|")) > 3:
        return parse_subset_key(name)
    return "", "", name, 0


def subset_sort_key(name: str):
    direction, subset, host, port = safe_subset_key(name)
    return (host, subset, port, direction)


_CONFIG_PATH = re.compile(r"^/apis/networking\.istio\.io/[^/]+/namespaces/")


def render_config(path: str) -> str:
    if _CONFIG_PATH.match(path):
        pieces = path.split("/")
        if len(pieces) != 8:
            return ""
        return f"{pieces[7]}.{pieces[5]}"
    return "<unknown>"


def describe_management(metadata: Message | None) -> str:
    if metadata is None or "istio" not in metadata.filter_metadata:
        return ""
    fields = metadata.filter_metadata["istio"].fields
    if "config" not in fields:
        return ""
    return render_config(fields["config"].string_value)


# --- what a listener or endpoint is (read by the filters and the tables) ----------------

def listener_address(l: Message) -> str:
    a = l.address
    if a.HasField("socket_address"):
        return a.socket_address.address
    if a.HasField("pipe"):
        return a.pipe.path
    return ""


def additional_addresses(l: Message) -> list[str]:
    return [x.address.socket_address.address for x in l.additional_addresses]


def listener_port(l: Message) -> int:
    return l.address.socket_address.port_value


def filter_chains(l: Message) -> list[Message]:
    chains = list(l.filter_chains)
    if l.HasField("default_filter_chain"):
        chains.append(l.default_filter_chain)
    return chains


def listener_type(l: Message) -> str:
    n_http = n_tcp = 0
    for fc in filter_chains(l):
        for f in fc.filters:
            if f.name == HTTP_CONNECTION_MANAGER:
                n_http += 1
            elif f.name == TCP_PROXY and BLACKHOLE.encode() not in f.typed_config.value:
                n_tcp += 1
    if n_http:
        return "HTTP" if not n_tcp else "HTTP+TCP"
    return "TCP" if n_tcp else "UNKNOWN"


def unpack_as(a: Message, full_name: str) -> Message | None:
    from google.protobuf import any_pb2

    fixed = any_pb2.Any(type_url="type.googleapis.com/" + full_name, value=a.value)
    return unpack(fixed)


def endpoint_address(ep: Message) -> str:
    addr = ep.endpoint.address
    if addr.HasField("socket_address"):
        return f"{addr.socket_address.address}:{addr.socket_address.port_value}"
    if addr.HasField("pipe"):
        return addr.pipe.path
    if addr.HasField("envoy_internal_address"):
        ia = addr.envoy_internal_address
        if ia.WhichOneof("address_name_specifier") == "server_listener_name":
            return f"envoy://{ia.server_listener_name}/{ia.endpoint_id}"
    return "unknown"
