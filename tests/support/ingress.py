"""The foundation story's config for e2e tests, as files for meshd's config directory: the
ingress gateway's Service and the coolstore Gateway for webapp.istioinaction.io, webapp
v1 and v2 (Pods at 127.0.0.2 and 127.0.0.3 with an EndpointSlice, a DestinationRule with
a subset per version), and the VirtualService routing the gateway's traffic to them."""
from __future__ import annotations

from tests.support.manifests import (
    destination_rule,
    documents,
    endpoint_slice,
    gateway,
    ingress_gateway_service,
    pod,
    service,
)

HOST = "webapp.istioinaction.io"
NS = "istioinaction"


def gateway_yaml(gw_port: int) -> str:
    return documents(ingress_gateway_service(gw_port), gateway("coolstore-gateway", NS, [HOST], version="v1beta1"))


def backends_yaml(backend_port: int) -> str:
    """webapp v1 at 127.0.0.2 and v2 at 127.0.0.3 (Pods and an EndpointSlice naming them),
    their Service (port 80 to `backend_port`) and a DestinationRule with a subset each."""
    return documents(
        service("webapp", NS, [("http", 80, backend_port)]),
        endpoint_slice("webapp-abcde", NS, "webapp", backend_port, ["127.0.0.2", "127.0.0.3"],
                       pods=["webapp-v1", "webapp-v2"]),
        pod("webapp-v1", NS, "127.0.0.2", {"app": "webapp", "version": "v1"}),
        pod("webapp-v2", NS, "127.0.0.3", {"app": "webapp", "version": "v2"}),
        destination_rule("webapp", NS, "webapp", subsets={"v1": {"version": "v1"}, "v2": {"version": "v2"}}))


def vs_yaml(route: str) -> str:
    return f"""
apiVersion: networking.istio.io/v1alpha3
kind: VirtualService
metadata: {{name: webapp-vs-from-gw, namespace: {NS}}}
spec:
  hosts: ["{HOST}"]
  gateways: [coolstore-gateway]
  http:
  - route:
{route}
"""


def one_subset(subset: str) -> str:
    return f"""    - destination: {{host: webapp, port: {{number: 80}}, subset: {subset}}}"""


SPLIT = """    - destination: {host: webapp, port: {number: 80}, subset: v1}
      weight: 50
    - destination: {host: webapp.istioinaction.svc.cluster.local, subset: v2}
      weight: 50"""
