"""The foundation story's config for e2e tests, as files for meshd's config directory: the
ingress gateway's Service and the coolstore Gateway for webapp.istioinaction.io, webapp
v1 and v2 (Pods at 127.0.0.2 and 127.0.0.3 with an EndpointSlice, a DestinationRule with
a subset per version), and the VirtualService routing the gateway's traffic to them."""
from __future__ import annotations

HOST = "webapp.istioinaction.io"


def gateway_yaml(gw_port: int) -> str:
    return f"""
apiVersion: v1
kind: Service
metadata: {{name: istio-ingressgateway, namespace: istio-system}}
spec:
  selector: {{istio: ingressgateway}}
  ports:
  - {{name: http2, port: 80, targetPort: {gw_port}}}
---
apiVersion: networking.istio.io/v1beta1
kind: Gateway
metadata: {{name: coolstore-gateway, namespace: istioinaction}}
spec:
  selector: {{istio: ingressgateway}}
  servers:
  - port: {{number: 80, name: http, protocol: HTTP}}
    hosts: ["{HOST}"]
"""


def backends_yaml(backend_port: int) -> str:
    return f"""
apiVersion: v1
kind: Service
metadata: {{name: webapp, namespace: istioinaction}}
spec:
  selector: {{app: webapp}}
  ports:
  - {{name: http, port: 80, targetPort: {backend_port}}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: webapp-abcde
  namespace: istioinaction
  labels: {{kubernetes.io/service-name: webapp}}
addressType: IPv4
ports: [{{name: http, port: {backend_port}, protocol: TCP}}]
endpoints:
- addresses: ["127.0.0.2"]
  conditions: {{ready: true}}
  targetRef: {{kind: Pod, name: webapp-v1, namespace: istioinaction}}
- addresses: ["127.0.0.3"]
  conditions: {{ready: true}}
  targetRef: {{kind: Pod, name: webapp-v2, namespace: istioinaction}}
---
apiVersion: v1
kind: Pod
metadata: {{name: webapp-v1, namespace: istioinaction, labels: {{app: webapp, version: v1}}}}
spec: {{containers: [{{name: webapp, image: webapp}}]}}
status: {{podIP: 127.0.0.2}}
---
apiVersion: v1
kind: Pod
metadata: {{name: webapp-v2, namespace: istioinaction, labels: {{app: webapp, version: v2}}}}
spec: {{containers: [{{name: webapp, image: webapp}}]}}
status: {{podIP: 127.0.0.3}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: webapp, namespace: istioinaction}}
spec:
  host: webapp
  subsets:
  - {{name: v1, labels: {{version: v1}}}}
  - {{name: v2, labels: {{version: v2}}}}
"""


def vs_yaml(route: str) -> str:
    return f"""
apiVersion: networking.istio.io/v1alpha3
kind: VirtualService
metadata: {{name: webapp-vs-from-gw, namespace: istioinaction}}
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
