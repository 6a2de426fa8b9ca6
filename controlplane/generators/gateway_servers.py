"""The Gateway servers a router proxy serves, merged per listening port, and the
VirtualServices bound to them.

Shared by the gateway listener and route builders. The merge itself (istiod's
MergeGateways) is model/gateways.py: a server listens on the gateway Service's
`targetPort` for its port number (Gateway port 80 becomes Envoy's 8080 when the Service
maps 80 -> 8080); plaintext HTTP servers on one port share `http.<port>`; TLS servers on
a port are told apart by SNI; conflicting servers are dropped and reported.
VirtualServices bind to a server through `spec.gateways` and the server's hosts, which
may restrict the VirtualService namespace (`ns/host`, `./host`, `*/host`).
"""
from __future__ import annotations

from ..config.objects import ConfigObject
from ..model.gateways import GatewayPort, Server
from ..model.hosts import intersect
from ..model.mesh import MeshSnapshot
from ..model.proxy import Proxy
from .virtual_services import bound_gateways, virtual_service_hosts, visible_to


def gateway_ports(mesh: MeshSnapshot, proxy: Proxy) -> list[GatewayPort]:
    """The merged servers of every Gateway selecting `proxy`, by listening port (ascending)."""
    return list(mesh.merged_gateway(proxy).ports)


# --- VirtualService binding ---------------------------------------------------------


def virtual_services_for_gateway(mesh: MeshSnapshot, proxy: Proxy, gateway_name: str) -> list[ConfigObject]:
    """VirtualServices bound to `gateway_name` and visible to the proxy, in stable order."""
    return [
        vs
        for vs in mesh.virtual_services
        if gateway_name in bound_gateways(vs)
        and visible_to(vs, proxy.namespace, mesh.mesh_config.default_virtual_service_export_to)
    ]


def matching_hosts(server: Server, vs: ConfigObject) -> list[str]:
    """Hosts a VirtualService serves on a server: each pair of server and VirtualService
    hosts that overlap gives the narrower of the two (wildcards on either side)."""
    out: list[str] = []
    vs_hosts = virtual_service_hosts(vs)
    for s_host in server.hosts_for_namespace(vs.namespace):
        for v_host in vs_hosts:
            h = intersect(s_host, v_host)
            if h is not None and h not in out:
                out.append(h)
    return out
