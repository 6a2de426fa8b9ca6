"""The "Istio in Action" chapter 9 layout as config for generator tests: `webapp` and
`catalog` in `istioinaction` with sidecars (pods labelled `security.istio.io/tlsMode:
istio`), `sleep` in `default` without one, the ingress gateway in `istio-system`; the
proxies of each, and extra config the generator tests add to it (TCP services, a rich
set of routes and DestinationRules, PeerAuthentication and DestinationRule shorthands).

The network-namespace test bed has the same layout with real pods: tests/testbed/mesh.py.
"""
from __future__ import annotations

from pathlib import Path

from controlplane.model.mesh import MeshSnapshot
from controlplane.model.proxy import parse_node
from tests.support.configs import mesh_from_yaml
from tests.support.manifests import documents, peer_authentication

NS = "istioinaction"
WEBAPP_HOST = f"webapp.{NS}.svc.cluster.local"
CATALOG_HOST = f"catalog.{NS}.svc.cluster.local"
CATALOG = f"outbound|80||{CATALOG_HOST}"
WEBAPP = f"outbound|80||{WEBAPP_HOST}"

LAYOUT = f"""
apiVersion: v1
kind: Service
metadata: {{name: webapp, namespace: {NS}}}
spec:
  clusterIP: 10.96.0.10
  selector: {{app: webapp}}
  ports: [{{name: http, port: 80, targetPort: 8080}}]
---
apiVersion: v1
kind: Service
metadata: {{name: catalog, namespace: {NS}}}
spec:
  clusterIP: 10.96.0.11
  selector: {{app: catalog}}
  ports:
  - {{name: http, port: 80, targetPort: 3000}}
  - {{name: http-admin, port: 81, targetPort: 3001}}
---
apiVersion: v1
kind: Service
metadata: {{name: sleep, namespace: default}}
spec:
  clusterIP: 10.96.0.20
  selector: {{app: sleep}}
  ports: [{{name: http, port: 80}}]
---
apiVersion: v1
kind: Pod
metadata: {{name: webapp-1, namespace: {NS}, labels: {{app: webapp, security.istio.io/tlsMode: istio}}}}
spec: {{serviceAccountName: webapp, containers: [{{name: webapp}}]}}
status: {{podIP: 10.1.0.10}}
---
apiVersion: v1
kind: Pod
metadata: {{name: catalog-1, namespace: {NS}, labels: {{app: catalog, version: v1, security.istio.io/tlsMode: istio}}}}
spec: {{serviceAccountName: catalog, containers: [{{name: catalog}}]}}
status: {{podIP: 10.1.0.11}}
---
apiVersion: v1
kind: Pod
metadata: {{name: catalog-2, namespace: {NS}, labels: {{app: catalog, version: v2, security.istio.io/tlsMode: istio}}}}
spec: {{serviceAccountName: catalog-v2, containers: [{{name: catalog}}]}}
status: {{podIP: 10.1.0.12}}
---
apiVersion: v1
kind: Pod
metadata: {{name: sleep-1, namespace: default, labels: {{app: sleep}}}}
spec: {{containers: [{{name: sleep}}]}}
status: {{podIP: 10.1.0.20}}
---
apiVersion: v1
kind: Service
metadata: {{name: istio-ingressgateway, namespace: istio-system}}
spec:
  clusterIP: 10.96.0.2
  selector: {{istio: ingressgateway}}
  ports: [{{name: http2, port: 80, targetPort: 8080}}]
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: coolstore-gateway, namespace: {NS}}}
spec:
  selector: {{istio: ingressgateway}}
  servers:
  - port: {{number: 80, name: http, protocol: HTTP}}
    hosts: ["webapp.istioinaction.io"]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: webapp-vs-from-gw, namespace: {NS}}}
spec:
  hosts: ["webapp.istioinaction.io"]
  gateways: [coolstore-gateway]
  http:
  - route:
    - destination: {{host: webapp, port: {{number: 80}}}}
"""

WEBAPP_PROXY = parse_node(
    f"sidecar~10.1.0.10~webapp-1.{NS}~{NS}.svc.cluster.local",
    {"NAMESPACE": NS, "LABELS": {"app": "webapp", "security.istio.io/tlsMode": "istio"},
     "SERVICE_ACCOUNT": "webapp", "INTERCEPTION_MODE": "REDIRECT"},
)
CATALOG_PROXY = parse_node(
    f"sidecar~10.1.0.11~catalog-1.{NS}~{NS}.svc.cluster.local",
    {"NAMESPACE": NS, "LABELS": {"app": "catalog", "version": "v1", "security.istio.io/tlsMode": "istio"},
     "SERVICE_ACCOUNT": "catalog", "INTERCEPTION_MODE": "REDIRECT"},
)
SLEEP_PROXY = parse_node(
    "sidecar~10.1.0.20~sleep-1.default~default.svc.cluster.local",
    {"NAMESPACE": "default", "LABELS": {"app": "sleep"}, "INTERCEPTION_MODE": "REDIRECT"},
)
# The ingress gateway's node (id, metadata), as an ADS client sends it.
GATEWAY_NODE = ("router~10.1.0.2~gw-1.istio-system~istio-system.svc.cluster.local",
                {"NAMESPACE": "istio-system", "LABELS": {"istio": "ingressgateway"}})
GATEWAY_PROXY = parse_node(*GATEWAY_NODE)


def mesh(*extra: str) -> MeshSnapshot:
    """The layout plus `extra` YAML documents, through the real parse path."""
    return mesh_from_yaml("\n---\n".join([LAYOUT, *extra]))


def endpoints_v2(ip: str) -> str:
    """One more catalog v2 Pod (catalog-3) at `ip`: a new endpoint of catalog's v2 subset."""
    return f"""
apiVersion: v1
kind: Pod
metadata: {{name: catalog-3, namespace: {NS}, labels: {{app: catalog, version: v2, security.istio.io/tlsMode: istio}}}}
spec: {{serviceAccountName: catalog-v2, containers: [{{name: catalog}}]}}
status: {{podIP: {ip}}}
"""


def pa(name: str, namespace: str, mode: str, selector: dict | None = None, ports: dict | None = None) -> str:
    """A PeerAuthentication (YAML text)."""
    return documents(peer_authentication(name, namespace, mode, selector=selector, ports=ports))


def dr(name: str, host: str, body: str, namespace: str = NS) -> str:
    return f"apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: {name}, namespace: {namespace}}}\nspec:\n  host: {host}\n{body}"


STRICT_MESH = pa("default", "istio-system", "STRICT")


TCP_SERVICES = """
apiVersion: v1
kind: Service
metadata: {name: mysql, namespace: default, creationTimestamp: "2024-01-01T00:00:00Z"}
spec:
  clusterIP: 10.96.0.30
  selector: {app: mysql}
  ports: [{name: tcp-mysql, port: 3306}]
---
apiVersion: v1
kind: Service
metadata: {name: legacy-a, namespace: default, creationTimestamp: "2024-01-02T00:00:00Z"}
spec:
  selector: {app: a}
  ports: [{port: 7000}]
---
apiVersion: v1
kind: Service
metadata: {name: legacy-b, namespace: default, creationTimestamp: "2024-01-01T00:00:00Z"}
spec:
  selector: {app: b}
  ports: [{port: 7000}]
---
apiVersion: v1
kind: Service
metadata: {name: mixed-tcp, namespace: default}
spec:
  selector: {app: c}
  ports: [{name: tcp, port: 9000}]
---
apiVersion: v1
kind: Service
metadata: {name: mixed-http, namespace: default}
spec:
  selector: {app: d}
  ports: [{name: http, port: 9000}]
"""


RICH = f"""
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: catalog, namespace: {NS}}}
spec:
  hosts: [catalog, "*.example.com"]
  http:
  - match: [{{headers: {{x-version: {{exact: v2}}}}, port: 80}}]
    route: [{{destination: {{host: catalog, subset: v2}}}}]
    retries: {{attempts: 3, perTryTimeout: 1s}}
  - route:
    - {{destination: {{host: catalog, subset: v1}}, weight: 90}}
    - {{destination: {{host: catalog, subset: v2}}, weight: 10}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: mysql, namespace: default}}
spec:
  hosts: [mysql.default.svc.cluster.local]
  tcp: [{{route: [{{destination: {{host: mysql.default.svc.cluster.local}}}}]}}]
---
apiVersion: v1
kind: Service
metadata: {{name: grpc, namespace: {NS}}}
spec:
  clusterIP: 10.96.0.50
  selector: {{app: webapp}}
  ports: [{{name: grpc, port: 7000, targetPort: 7070}}, {{name: tcp-raw, port: 7001, targetPort: 7071}}, {{name: other, port: 7002}}]
---
apiVersion: v1
kind: Service
metadata: {{name: db, namespace: {NS}}}
spec:
  clusterIP: None
  selector: {{app: catalog}}
  ports: [{{name: tcp, port: 5432}}, {{name: http, port: 8081}}]
---
{pa("webapp", NS, "STRICT", selector={"app": "webapp"}, ports={7071: "PERMISSIVE", 7072: "DISABLE", 9999: "STRICT"})}
"""


def rich_drs(tmp_path: Path) -> str:
    """DestinationRules of every TLS mode, naming files in tmp_path (static_xds.self_signed writes them)."""
    return "\n---\n".join([
        dr("catalog", "catalog", f"""  trafficPolicy:
    loadBalancer: {{consistentHash: {{httpHeaderName: x-user}}}}
    portLevelSettings:
    - port: {{number: 81}}
      tls: {{mode: MUTUAL, clientCertificate: {tmp_path}/cert.pem, privateKey: {tmp_path}/key.pem, caCertificates: {tmp_path}/ca.pem}}
  subsets:
  - {{name: v1, labels: {{version: v1}}, trafficPolicy: {{tls: {{mode: ISTIO_MUTUAL}}}}}}
  - {{name: v2, labels: {{version: v2}}}}
"""),
        dr("webapp", "webapp", "  trafficPolicy: {tls: {mode: DISABLE}}\n"),
        dr("sleep", "sleep.default.svc.cluster.local",
           f"  trafficPolicy: {{tls: {{mode: SIMPLE, caCertificates: {tmp_path}/ca.pem, sni: sleep.example.com}}}}\n"),
        dr("gw", "istio-ingressgateway.istio-system.svc.cluster.local",
           "  trafficPolicy: {tls: {mode: MUTUAL, credentialName: gw-client}}\n", namespace="istio-system"),
    ])
