"""A small mesh whose every object can be added, changed or removed: for tests that walk
random change sequences through the generator cache (tests/unit/test_push_generation.py)
and build every part in tracking mode (tests/unit/test_part_inputs.py).

The mesh is a set of slots, one per object (kind, namespace, name), each either empty or
holding one of a few variants of that object; a `World` keeps them in a ConfigStore (one
location per slot, as the directory source keeps a file) and builds each new snapshot
from the previous one with the changed keys, as MeshBuilder does, so an EndpointSlice
change takes build_mesh's fast path. Every kind the generators serve is here: Services,
Pods, EndpointSlices, Nodes, VirtualServices, DestinationRules, PeerAuthentications,
AuthorizationPolicies, RequestAuthentications, Gateways, Secrets, ServiceEntries (each
resolution, a workloadSelector, a host a Kubernetes Service or an older ServiceEntry
holds), WorkloadEntries (selected by a ServiceEntry or by the Kubernetes Service cart),
a WorkloadGroup, Telemetries and EnvoyFilters.

Namespaces: `shop` (cart, with two versions; db, headless), `web` (front, a client with
DestinationRules of its own), `istio-system` (the root namespace and the ingress gateway).
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from functools import cache

from controlplane.config.objects import ConfigKey
from controlplane.config.store import ConfigStore
from controlplane.model.mesh import MeshSnapshot, build_mesh
from controlplane.model.proxy import Proxy, parse_node

from .configs import objects_from_yaml
from .jwt import Issuer
from .pki import make_ca, make_cert, tls_secret_yaml

TLS_MODE = "security.istio.io/tlsMode: istio"


def _service(name: str, ns: str, ports: str, *, selector: str = "", headless: bool = False) -> str:
    ip = "clusterIP: None" if headless else f"clusterIP: 10.96.{len(ns)}.{len(name)}"
    return f"""apiVersion: v1
kind: Service
metadata: {{name: {name}, namespace: {ns}}}
spec:
  {ip}
  selector: {{{selector or 'app: ' + name}}}
  ports: {ports}
"""


def _pod(name: str, ns: str, ip: str, labels: str, sa: str, node: str = "") -> str:
    node_name = f", nodeName: {node}" if node else ""
    return f"""apiVersion: v1
kind: Pod
metadata: {{name: {name}, namespace: {ns}, labels: {{{labels}}}}}
spec: {{serviceAccountName: {sa}{node_name}, containers: [{{name: app, ports: [{{name: web, containerPort: 8080}}]}}]}}
status: {{podIP: {ip}}}
"""


def _slice(addresses: list[tuple[str, bool, str]], port: int = 8080) -> str:
    eps = "\n".join(f"- addresses: [\"{a}\"]\n  conditions: {{ready: {str(ready).lower()}}}\n"
                    f"  targetRef: {{kind: Pod, name: {pod}, namespace: shop}}" for a, ready, pod in addresses)
    return f"""apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: cart-x, namespace: shop, labels: {{kubernetes.io/service-name: cart}}}}
addressType: IPv4
ports: [{{name: http, port: {port}, protocol: TCP}}]
endpoints:
{eps}
"""


def _node(region: str, zone: str) -> str:
    return f"""apiVersion: v1
kind: Node
metadata: {{name: n1, labels: {{topology.kubernetes.io/region: {region}, topology.kubernetes.io/zone: {zone}}}}}
"""


def _vs(name: str, ns: str, body: str) -> str:
    return f"apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:\n{body}"


def _dr(name: str, ns: str, host: str, body: str) -> str:
    return (f"apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: {name}, namespace: {ns}}}\n"
            f"spec:\n  host: \"{host}\"\n{body}")


def _pa(name: str, ns: str, body: str) -> str:
    return f"apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:\n{body}"


def _authz(name: str, ns: str, body: str) -> str:
    return f"apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:\n{body}"


def _gateway(servers: str) -> str:
    return f"""apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: gw-1, namespace: istio-system}}
spec:
  selector: {{istio: ingressgateway}}
  servers:
{servers}"""


def _service_entry(name: str, ns: str, body: str, created: str = "") -> str:
    stamp = f", creationTimestamp: \"{created}\"" if created else ""
    return f"apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{name: {name}, namespace: {ns}{stamp}}}\nspec:\n{body}"


def _sidecar(name: str, ns: str, body: str) -> str:
    return f"apiVersion: networking.istio.io/v1\nkind: Sidecar\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:\n{body}"


def _telemetry(name: str, ns: str, body: str) -> str:
    return f"apiVersion: telemetry.istio.io/v1\nkind: Telemetry\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:\n{body}"


def _envoy_filter(name: str, ns: str, body: str) -> str:
    return f"apiVersion: networking.istio.io/v1alpha3\nkind: EnvoyFilter\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:\n{body}"


ROUTER_MATCH = ("{filterChain: {filter: {name: envoy.filters.network.http_connection_manager, "
                "subFilter: {name: envoy.filters.http.router}}}}")
LUA = ("{name: envoy.filters.http.lua, typed_config: {\"@type\": type.googleapis.com/envoy.extensions.filters.http.lua."
       "v3.Lua, inlineCode: \"function envoy_on_request(h) end\"}}")


def _workload_entry(body: str) -> str:
    return f"apiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {{name: vm-1, namespace: shop}}\nspec:\n{body}"


HTTP_SERVER = "  - {port: {number: 80, name: http, protocol: HTTP}, hosts: [\"shop.example.com\"]}\n"
SE_PORTS = "  ports: [{number: 443, name: https, protocol: TLS}, {number: 80, name: http, protocol: HTTP}]\n"
SUBSETS = "  subsets:\n  - {name: v1, labels: {version: v1}}\n  - {name: v2, labels: {version: v2}}\n"


@cache
def _pki() -> tuple[str, str, str, str]:
    """Two gateway credentials, a client credential with and without a CA (made once)."""
    ca = make_ca()
    a, b = make_cert(ca, ["shop.example.com"]), make_cert(ca, ["shop.example.com"])
    client = make_cert(ca, ["front.web"], client=True)
    return (tls_secret_yaml("gw-cred", "istio-system", a, ca.cert), tls_secret_yaml("gw-cred", "istio-system", b),
            tls_secret_yaml("client-cred", "web", client, ca.cert), tls_secret_yaml("client-cred", "web", client))


@cache
def _jwks() -> str:
    return json.dumps(Issuer("https://issuer.example", "ES256").jwks())


def _request_authentication(issuer: str) -> str:
    return f"""apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {{name: cart-jwt, namespace: shop}}
spec:
  selector: {{matchLabels: {{app: cart}}}}
  jwtRules: [{{issuer: "{issuer}", jwks: {_jwks()}}}]
"""


@cache
def slots() -> dict[str, tuple[str, ...]]:
    """slot -> the variants of its object (YAML); a slot may also be empty."""
    gw_a, gw_b, client_ca, client_plain = _pki()
    return {
        "service/shop/cart": (
            _service("cart", "shop", "[{name: http, port: 80, targetPort: 8080}]"),
            _service("cart", "shop", "[{name: http, port: 80, targetPort: 8080}, {name: tcp-db, port: 9000}]"),
            _service("cart", "shop", "[{name: http, port: 80, targetPort: web}]"),
            _service("cart", "shop", "[{name: grpc, port: 80, targetPort: 8080}]"),
        ),
        "service/shop/db": (
            _service("db", "shop", "[{name: tcp, port: 5432}]", headless=True),
            _service("db", "shop", "[{name: http, port: 8081}]", headless=True),
        ),
        "service/web/front": (
            _service("front", "web", "[{name: http, port: 80, targetPort: 8080}]"),
            _service("front", "web", "[{name: http, port: 80, targetPort: 8080}, {name: http-admin, port: 81}]"),
            # seen by its own namespace only (Istio's exportTo annotation)
            _service("front", "web", "[{name: http, port: 80, targetPort: 8080}]").replace(
                "namespace: web}", "namespace: web, annotations: {networking.istio.io/exportTo: \".\"}}"),
        ),
        "service/istio-system/istio-ingressgateway": (
            _service("istio-ingressgateway", "istio-system", "[{name: http2, port: 80, targetPort: 8080}, "
                     "{name: https, port: 443, targetPort: 8443}, {name: tcp, port: 31400}]",
                     selector="istio: ingressgateway"),
            _service("istio-ingressgateway", "istio-system", "[{name: http2, port: 80, targetPort: 8081}]",
                     selector="istio: ingressgateway"),
        ),
        "pod/shop/cart-1": (
            _pod("cart-1", "shop", "10.1.0.11", f"app: cart, version: v1, {TLS_MODE}", "cart"),
            _pod("cart-1", "shop", "10.1.0.11", f"app: cart, version: v2, {TLS_MODE}", "cart"),
            _pod("cart-1", "shop", "10.1.0.11", "app: cart, version: v1", "cart"),
            _pod("cart-1", "shop", "10.1.0.11", f"app: cart, version: v1, {TLS_MODE}", "cart", node="n1"),
        ),
        "pod/shop/cart-2": (
            _pod("cart-2", "shop", "10.1.0.12", f"app: cart, version: v2, {TLS_MODE}", "cart-v2"),
            _pod("cart-2", "shop", "10.1.0.12", f"app: cart, version: v2, {TLS_MODE}", "cart-v2", node="n1"),
        ),
        "pod/shop/db-0": (_pod("db-0", "shop", "10.1.0.40", f"app: db, {TLS_MODE}", "db"),),
        "pod/web/front-1": (_pod("front-1", "web", "10.2.0.10", f"app: front, {TLS_MODE}", "front"),),
        "pod/istio-system/gw-1": (_pod("gw-1", "istio-system", "10.0.0.2", "istio: ingressgateway", "gateway"),),
        "endpointslice/shop/cart-x": (
            _slice([("10.1.0.11", True, "cart-1")]),
            _slice([("10.1.0.11", True, "cart-1"), ("10.1.0.12", True, "cart-2")]),
            _slice([("10.1.0.11", False, "cart-1"), ("10.1.0.12", True, "cart-2")]),
            _slice([("10.1.0.12", True, "cart-2")], port=8081),
        ),
        "node/n1": (_node("r1", "z1"), _node("r2", "z2")),
        "virtualservice/shop/cart": (
            _vs("cart", "shop", "  hosts: [cart]\n  http:\n  - route:\n    - {destination: {host: cart, subset: v1}, weight: 90}\n"
                "    - {destination: {host: cart, subset: v2}, weight: 10}\n"),
            _vs("cart", "shop", "  hosts: [cart]\n  http:\n  - match: [{headers: {x-version: {exact: v2}}}]\n"
                "    route: [{destination: {host: cart, subset: v2}}]\n    retries: {attempts: 3, perTryTimeout: 1s}\n"
                "    timeout: 5s\n  - route: [{destination: {host: cart, subset: v1}}]\n"),
            _vs("cart", "shop", "  hosts: [cart]\n  http:\n  - match: [{sourceLabels: {app: front}}]\n"
                "    route: [{destination: {host: cart, subset: v2}}]\n  - route: [{destination: {host: cart}}]\n"),
            _vs("cart", "shop", "  hosts: [cart]\n  tcp:\n  - match: [{port: 9000, sourceLabels: {app: front}}]\n"
                "    route: [{destination: {host: cart, port: {number: 9000}}}]\n"),
            _vs("cart", "shop", "  hosts: [cart]\n  exportTo: [\".\"]\n  http:\n"
                "  - route: [{destination: {host: cart, subset: v2}}]\n"),
        ),
        # What sidecars see (model/sidecar_scope.py); the first variants import everything.
        "sidecar/shop/default": (
            _sidecar("default", "shop", "  egress: [{hosts: [\"*/*\"]}]\n"),
            _sidecar("default", "shop", "  egress: [{hosts: [\"./*\", \"istio-system/*\"]}]\n"),
            _sidecar("default", "shop", "  egress: [{hosts: [\"./*\"]}]\n  outboundTrafficPolicy: {mode: REGISTRY_ONLY}\n"),
            _sidecar("default", "shop", "  egress:\n  - port: {number: 80, protocol: HTTP, name: http}\n"
                     "    hosts: [\"web/*\"]\n  - hosts: [\"./*\"]\n"),
            _sidecar("default", "shop", "  egress: [{hosts: [\"~/*\"]}]\n  outboundTrafficPolicy:\n    mode: ALLOW_ANY\n"
                     "    egressProxy: {host: front.web.svc.cluster.local, port: {number: 80}}\n"),
        ),
        "sidecar/shop/cart": (
            _sidecar("cart", "shop", "  workloadSelector: {labels: {app: cart}}\n  egress: [{hosts: [\"*/*\"]}]\n"),
            _sidecar("cart", "shop", "  workloadSelector: {labels: {app: cart, version: v2}}\n"
                     "  egress: [{hosts: [\"web/front.web.svc.cluster.local\"]}]\n"),
            # ingress listeners replace the inbound side (9090 to the app's 8080; 0.0.0.0: the pod's)
            _sidecar("cart", "shop", "  workloadSelector: {labels: {app: cart}}\n  ingress:\n"
                     "  - {port: {number: 9090, protocol: HTTP, name: http-in}, defaultEndpoint: \"127.0.0.1:8080\"}\n"
                     "  - {port: {number: 9091, protocol: TCP, name: tcp-in}, defaultEndpoint: \"0.0.0.0:7070\"}\n"),
        ),
        "sidecar/istio-system/default": (
            _sidecar("default", "istio-system", "  egress: [{hosts: [\"*/*\"]}]\n"),
            _sidecar("default", "istio-system", "  egress: [{hosts: [\"./*\", \"istio-system/*\"]}]\n"
                     "  outboundTrafficPolicy: {mode: REGISTRY_ONLY}\n"),
        ),
        "virtualservice/istio-system/shop": (
            _vs("shop", "istio-system", "  hosts: [shop.example.com]\n  gateways: [gw-1]\n  http:\n"
                "  - route: [{destination: {host: cart.shop.svc.cluster.local, port: {number: 80}}}]\n"),
            _vs("shop", "istio-system", "  hosts: [shop.example.com]\n  gateways: [gw-1]\n  http:\n"
                "  - match: [{uri: {prefix: /front}}]\n    route: [{destination: {host: front.web.svc.cluster.local}}]\n"
                "  - route: [{destination: {host: cart.shop.svc.cluster.local, subset: v1}}]\n"),
            _vs("shop", "istio-system", "  hosts: [\"*\"]\n  gateways: [gw-1]\n  tcp:\n"
                "  - match: [{port: 31400}]\n    route: [{destination: {host: db.shop.svc.cluster.local, port: {number: 5432}}}]\n"),
        ),
        "destinationrule/shop/cart": (
            _dr("cart", "shop", "cart", SUBSETS),
            _dr("cart", "shop", "cart", "  trafficPolicy: {connectionPool: {tcp: {maxConnections: 10}}}\n" + SUBSETS),
            _dr("cart", "shop", "cart", "  trafficPolicy: {loadBalancer: {consistentHash: {httpHeaderName: x-user}}}\n"),
            _dr("cart", "shop", "cart", "  trafficPolicy: {tls: {mode: DISABLE}}\n  subsets:\n"
                "  - {name: v2, labels: {version: v2}, trafficPolicy: {tls: {mode: ISTIO_MUTUAL}}}\n"),
            _dr("cart", "shop", "cart", "  trafficPolicy:\n    outlierDetection: {consecutive5xxErrors: 3}\n"
                "    loadBalancer: {localityLbSetting: {failover: [{from: r1, to: r2}]}}\n"),
            _dr("cart", "shop", "cart", "  trafficPolicy:\n    loadBalancer: {localityLbSetting: {distribute: "
                "[{from: r1/z1/*, to: {r1/z1/*: 70, r2/z2/*: 30}}]}}\n"),
            _dr("cart", "shop", "cart", "  trafficPolicy:\n    outlierDetection: {consecutive5xxErrors: 3}\n"
                "    loadBalancer: {localityLbSetting: {failoverPriority: [topology.kubernetes.io/region]}}\n"),
        ),
        "destinationrule/web/cart-from-front": (
            _dr("cart-from-front", "web", "cart.shop.svc.cluster.local",
                "  workloadSelector: {matchLabels: {app: front}}\n  trafficPolicy: {tls: {mode: SIMPLE, credentialName: client-cred}}\n"),
            _dr("cart-from-front", "web", "cart.shop.svc.cluster.local",
                "  workloadSelector: {matchLabels: {app: front}}\n  trafficPolicy: {loadBalancer: {consistentHash: {useSourceIp: true}}}\n"),
            _dr("cart-from-front", "web", "cart.shop.svc.cluster.local", "  exportTo: [\".\"]\n" + SUBSETS),
        ),
        "destinationrule/istio-system/wildcard": (
            _dr("wildcard", "istio-system", "*.shop.svc.cluster.local", "  trafficPolicy: {tls: {mode: ISTIO_MUTUAL}}\n"),
            _dr("wildcard", "istio-system", "*.shop.svc.cluster.local",
                "  trafficPolicy: {connectionPool: {http: {http1MaxPendingRequests: 5}}}\n"),
        ),
        "peerauthentication/istio-system/default": tuple(
            _pa("default", "istio-system", f"  mtls: {{mode: {m}}}\n") for m in ("STRICT", "PERMISSIVE", "DISABLE")),
        "peerauthentication/shop/default": tuple(
            _pa("default", "shop", f"  mtls: {{mode: {m}}}\n") for m in ("STRICT", "DISABLE", "UNSET")),
        "peerauthentication/shop/cart": (
            _pa("cart", "shop", "  selector: {matchLabels: {app: cart}}\n  mtls: {mode: PERMISSIVE}\n"
                "  portLevelMtls: {8080: {mode: STRICT}}\n"),
            _pa("cart", "shop", "  selector: {matchLabels: {app: cart, version: v2}}\n  mtls: {mode: DISABLE}\n"),
        ),
        "authorizationpolicy/shop/cart": (
            _authz("cart", "shop", "  selector: {matchLabels: {app: cart}}\n  action: ALLOW\n  rules:\n"
                   "  - from: [{source: {principals: [\"cluster.local/ns/web/sa/front\"]}}]\n"),
            _authz("cart", "shop", "  selector: {matchLabels: {app: cart}}\n  action: DENY\n  rules:\n"
                   "  - to: [{operation: {paths: [\"/admin*\"], methods: [POST]}}]\n"),
        ),
        "authorizationpolicy/istio-system/gateway": (
            _authz("gateway", "istio-system", "  selector: {matchLabels: {istio: ingressgateway}}\n  action: DENY\n"
                   "  rules: [{to: [{operation: {paths: [\"/private*\"]}}]}]\n"),
            _authz("gateway", "istio-system", "  action: ALLOW\n  rules: [{}]\n"),
        ),
        "requestauthentication/shop/cart-jwt": (
            _request_authentication("https://issuer.example"),
            _request_authentication("https://other.example"),
        ),
        "gateway/istio-system/gw-1": (
            _gateway(HTTP_SERVER),
            _gateway(HTTP_SERVER + "  - port: {number: 443, name: https, protocol: HTTPS}\n    hosts: [\"shop.example.com\"]\n"
                     "    tls: {mode: SIMPLE, credentialName: gw-cred}\n"),
            _gateway("  - port: {number: 443, name: https, protocol: HTTPS}\n    hosts: [\"shop.example.com\"]\n"
                     "    tls: {mode: MUTUAL, credentialName: gw-cred}\n"),
            _gateway(HTTP_SERVER + "  - {port: {number: 31400, name: tcp, protocol: TCP}, hosts: [\"*\"]}\n"),
            _gateway("  - port: {number: 80, name: http, protocol: HTTP}\n    hosts: [\"shop.example.com\"]\n"
                     "    tls: {httpsRedirect: true}\n"),
            # a Secret of another namespace, served only as the ReferenceGrant below allows
            _gateway(HTTP_SERVER + "  - port: {number: 443, name: https, protocol: HTTPS}\n    hosts: [\"shop.example.com\"]\n"
                     "    tls: {mode: SIMPLE, credentialName: \"kubernetes-gateway://web/client-cred\"}\n"),
        ),
        "referencegrant/web/gateway-certs": (
            "apiVersion: gateway.networking.k8s.io/v1beta1\nkind: ReferenceGrant\n"
            "metadata: {name: gateway-certs, namespace: web}\nspec:\n"
            "  from: [{group: gateway.networking.k8s.io, kind: Gateway, namespace: istio-system}]\n"
            "  to: [{group: \"\", kind: Secret, name: client-cred}]\n",
        ),
        "secret/istio-system/gw-cred": (gw_a, gw_b),
        "serviceentry/shop/payments": (
            _service_entry("payments", "shop", "  hosts: [api.payments.example]\n  addresses: [240.0.0.10]\n" + SE_PORTS
                           + "  resolution: STATIC\n  endpoints:\n  - {address: 192.0.2.10}\n"
                           "  - {address: 192.0.2.11, weight: 3, locality: r2/z2, labels: {version: v2}}\n",
                           created="2024-01-01T00:00:00Z"),
            _service_entry("payments", "shop", "  hosts: [api.payments.example]\n" + SE_PORTS + "  resolution: DNS\n"),
            _service_entry("payments", "shop", "  hosts: [vm.shop.internal]\n  location: MESH_INTERNAL\n"
                           "  ports: [{number: 8080, name: http, protocol: HTTP, targetPort: 9080}]\n"
                           "  resolution: STATIC\n  workloadSelector: {labels: {app: vm}}\n"),
            _service_entry("payments", "shop", "  hosts: [db.payments.example]\n  addresses: [203.0.113.0/24]\n"
                           "  ports: [{number: 5432, name: tcp, protocol: TCP}]\n  resolution: NONE\n"),
            _service_entry("payments", "shop", "  hosts: [api.payments.example]\n"
                           "  ports: [{number: 443, name: https, protocol: TLS}]\n  resolution: DNS_ROUND_ROBIN\n"
                           "  endpoints: [{address: lb.payments.example}]\n"),
            _service_entry("payments", "shop", "  hosts: [cart.shop.svc.cluster.local]\n  location: MESH_INTERNAL\n"
                           "  ports: [{number: 80, name: http, protocol: HTTP}]\n  resolution: STATIC\n"
                           "  endpoints: [{address: 10.1.0.99, serviceAccount: cart}]\n"),
        ),
        # The same host from another namespace, older: it holds the host (istiod's rule).
        "serviceentry/web/payments": (
            _service_entry("payments", "web", "  hosts: [api.payments.example]\n"
                           "  ports: [{number: 80, name: http, protocol: HTTP}]\n  resolution: STATIC\n"
                           "  endpoints: [{address: 192.0.2.20}]\n", created="2020-01-01T00:00:00Z"),
        ),
        "workloadentry/shop/vm-1": (
            _workload_entry("  address: 10.3.0.5\n  labels: {app: vm, version: v1}\n  serviceAccount: vm\n"
                            "  ports: {http: 9090}\n"),
            _workload_entry("  address: 10.3.0.5\n  labels: {app: cart, version: v1}\n  serviceAccount: vm\n"),
            _workload_entry("  address: 10.3.0.5\n  labels: {app: vm}\n  serviceAccount: vm\n  network: net-2\n  locality: r2/z2\n"
                            "  weight: 5\n"),
            _workload_entry("  address: 10.3.0.6\n  labels: {app: vm, version: v1}\n  serviceAccount: vm\n"),
        ),
        "workloadgroup/shop/vm": (
            "apiVersion: networking.istio.io/v1\nkind: WorkloadGroup\nmetadata: {name: vm, namespace: shop}\n"
            "spec: {metadata: {labels: {app: vm}}, template: {serviceAccount: vm}}\n",
        ),
        "secret/web/client-cred": (client_ca, client_plain),
        # Telemetry: mesh-wide in the root namespace, and one selecting front-1 only.
        "telemetry/istio-system/mesh-default": (
            _telemetry("mesh-default", "istio-system", "  accessLogging: [{providers: [{name: envoy}]}]\n"),
            _telemetry("mesh-default", "istio-system", "  accessLogging: [{disabled: true}]\n"),
        ),
        "telemetry/web/front": (
            _telemetry("front", "web", "  selector: {matchLabels: {app: front}}\n"
                       "  accessLogging: [{match: {mode: SERVER}, providers: [{name: envoy}],"
                       " filter: {expression: 'response.code >= 400'}}]\n"),
            _telemetry("front", "web", "  selector: {matchLabels: {app: front}}\n  accessLogging: [{disabled: true}]\n"),
        ),
        # EnvoyFilters (the Generator's last stage): one per workload, the root namespace's for
        # every proxy, variants that are left out (Envoy would reject them) or match nothing.
        "envoyfilter/shop/cart": (
            _envoy_filter("cart", "shop", "  workloadSelector: {labels: {app: cart}}\n  configPatches:\n"
                          f"  - applyTo: HTTP_FILTER\n    match: {{context: SIDECAR_INBOUND, listener: {ROUTER_MATCH}}}\n"
                          f"    patch: {{operation: INSERT_BEFORE, value: {LUA}}}\n"),
            _envoy_filter("cart", "shop", "  workloadSelector: {labels: {app: cart}}\n  configPatches:\n"
                          "  - applyTo: CLUSTER\n    match: {context: SIDECAR_OUTBOUND, cluster: {service: cart.shop.svc.cluster.local}}\n"
                          "    patch: {operation: MERGE, value: {circuit_breakers: {thresholds: "
                          "[{retry_budget: {budget_percent: {value: 25}}}]}}}\n"),
            # a filter after the router: left out, the rest sent
            _envoy_filter("cart", "shop", "  workloadSelector: {labels: {app: cart}}\n  configPatches:\n"
                          f"  - applyTo: HTTP_FILTER\n    match: {{context: SIDECAR_INBOUND, listener: {ROUTER_MATCH}}}\n"
                          f"    patch: {{operation: INSERT_AFTER, value: {LUA}}}\n"),
            # v2 only, on the node's metadata; a REPLACE of nothing is left out
            _envoy_filter("cart", "shop", "  workloadSelector: {labels: {app: cart, version: v2}}\n  configPatches:\n"
                          "  - applyTo: CLUSTER\n    match: {proxy: {metadata: {SERVICE_ACCOUNT: cart-v2}}, "
                          "cluster: {name: nope}}\n    patch: {operation: REPLACE, value: {name: nope, "
                          "connect_timeout: 1s}}\n"),
        ),
        "envoyfilter/istio-system/mesh": (
            _envoy_filter("mesh", "istio-system", "  configPatches:\n  - applyTo: VIRTUAL_HOST\n"
                          "    match: {context: SIDECAR_OUTBOUND}\n"
                          "    patch: {operation: MERGE, value: {include_request_attempt_count: true}}\n"),
            _envoy_filter("mesh", "istio-system", "  configPatches:\n  - applyTo: LISTENER\n    match: {context: GATEWAY}\n"
                          "    patch: {operation: MERGE, value: {per_connection_buffer_limit_bytes: 32768}}\n"),
            _envoy_filter("mesh", "istio-system", "  priority: 5\n  configPatches:\n  - applyTo: HTTP_ROUTE\n"
                          "    match: {context: ANY, routeConfiguration: {vhost: {route: {action: ROUTE}}}}\n"
                          "    patch: {operation: MERGE, value: {route: {timeout: 7s}}}\n"),
        ),
        "envoyfilter/web/front": (
            _envoy_filter("front", "web", "  workloadSelector: {labels: {app: front}}\n  priority: -1\n  configPatches:\n"
                          "  - applyTo: ROUTE_CONFIGURATION\n    match: {context: SIDECAR_OUTBOUND}\n"
                          "    patch: {operation: MERGE, value: {validate_clusters: false}}\n"
                          "  - applyTo: HTTP_ROUTE\n    match: {context: SIDECAR_OUTBOUND}\n"
                          "    patch: {operation: MERGE, value: {route: {timeout: 3s}}}\n"),
            _envoy_filter("front", "web", "  configPatches:\n  - applyTo: NETWORK_FILTER\n"
                          "    match: {context: SIDECAR_OUTBOUND, listener: {filterChain: {filter: "
                          "{name: envoy.filters.network.tcp_proxy}}}}\n"
                          "    patch: {operation: MERGE, value: {name: envoy.filters.network.tcp_proxy, typed_config: "
                          "{\"@type\": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy, "
                          "idle_timeout: 30s}}}\n"),
            # an extension config served over ECDS only (no listener, route or cluster changes)
            _envoy_filter("front", "web", "  workloadSelector: {labels: {app: front}}\n  configPatches:\n"
                          "  - applyTo: EXTENSION_CONFIG\n    patch: {operation: ADD, value: {name: front.lua, "
                          "typed_config: {\"@type\": type.googleapis.com/envoy.extensions.filters.http.lua.v3.Lua}}}\n"),
            # a listener filter removed from every sidecar's outbound listeners
            _envoy_filter("front", "web", "  configPatches:\n  - applyTo: LISTENER_FILTER\n"
                          "    match: {context: SIDECAR_OUTBOUND, listener: {listenerFilter: "
                          "envoy.filters.listener.http_inspector}}\n    patch: {operation: REMOVE}\n"),
        ),
    }


def _node_of(pod: str, ip: str, ns: str, labels: dict[str, str], sa: str, kind: str = "sidecar") -> Proxy:
    return parse_node(f"{kind}~{ip}~{pod}.{ns}~{ns}.svc.cluster.local",
                      {"NAMESPACE": ns, "LABELS": labels, "SERVICE_ACCOUNT": sa})


CART_1 = _node_of("cart-1", "10.1.0.11", "shop", {"app": "cart", "version": "v1", "security.istio.io/tlsMode": "istio"}, "cart")
CART_2 = _node_of("cart-2", "10.1.0.12", "shop", {"app": "cart", "version": "v2", "security.istio.io/tlsMode": "istio"}, "cart-v2")
DB_0 = _node_of("db-0", "10.1.0.40", "shop", {"app": "db", "security.istio.io/tlsMode": "istio"}, "db")
FRONT_1 = _node_of("front-1", "10.2.0.10", "web", {"app": "front", "security.istio.io/tlsMode": "istio"}, "front")
# Beside front-1 in its namespace, with other labels: what selects front-1 (sourceLabels,
# workloadSelectors) does not select it. No pod of the mesh is behind it.
ADMIN_1 = _node_of("admin-1", "10.2.0.20", "web", {"app": "admin", "security.istio.io/tlsMode": "istio"}, "admin")
GATEWAY = _node_of("gw-1", "10.0.0.2", "istio-system", {"istio": "ingressgateway"}, "gateway", kind="router")
# The sidecar of the WorkloadEntry vm-1 (a VM: no Pod).
VM_1 = _node_of("vm-1", "10.3.0.5", "shop", {"app": "vm", "version": "v1"}, "vm")
# Every proxy, and the client one again without a workload certificate (plaintext xDS).
PROXIES = (CART_1, CART_2, DB_0, FRONT_1, ADMIN_1, GATEWAY, VM_1, dataclasses.replace(FRONT_1, workload_cert=False))


@dataclass(frozen=True)
class Change:
    slot: str
    variant: int | None  # None: the slot empties


class World:
    """The slots in a ConfigStore; each `apply` builds the next snapshot from the last."""

    def __init__(self, initial: dict[str, int] | None = None):
        self.store = ConfigStore()
        self.changed: set[ConfigKey] = set()
        self.store.subscribe(lambda _snap, keys: self.changed.update(keys))
        self.state: dict[str, int] = {}
        for slot, variant in (initial or {}).items():
            self._set(Change(slot, variant))
        self.mesh = build_mesh(self.store.snapshot())
        self.changed.clear()

    def _set(self, change: Change) -> None:
        if change.variant is None:
            self.state.pop(change.slot, None)
            self.store.remove_location(change.slot)
        else:
            self.state[change.slot] = change.variant
            self.store.replace_location(change.slot, objects_from_yaml(slots()[change.slot][change.variant], change.slot))

    def apply(self, changes: list[Change]) -> MeshSnapshot:
        for change in changes:
            self._set(change)
        self.mesh = build_mesh(self.store.snapshot(), previous=self.mesh, changed=frozenset(self.changed))
        self.changed.clear()
        return self.mesh


def everything() -> dict[str, int]:
    """Every slot filled with its first variant."""
    return dict.fromkeys(slots(), 0)


# --- hypothesis strategies -----------------------------------------------------------------

def _strategies():
    from hypothesis import strategies as st

    names = sorted(slots())

    def variant_of(slot: str):
        return st.one_of(st.none(), st.integers(0, len(slots()[slot]) - 1))

    change = st.sampled_from(names).flatmap(lambda slot: variant_of(slot).map(lambda v: Change(slot, v)))
    slice_change = st.integers(0, len(slots()["endpointslice/shop/cart-x"]) - 1).map(
        lambda v: Change("endpointslice/shop/cart-x", v))
    # A step: a few changes of any kind, or an EndpointSlice alone (build_mesh's fast path).
    step = st.one_of(st.lists(change, min_size=1, max_size=3), slice_change.map(lambda c: [c]))
    initial = st.fixed_dictionaries({slot: variant_of(slot) for slot in names}).map(
        lambda d: {k: v for k, v in d.items() if v is not None})
    return initial, step


def initial_states():
    """Any mesh of the slots: each empty or holding one of its variants."""
    return _strategies()[0]


def steps():
    """One step of changes: up to three objects of any kind added, changed or removed, or
    the EndpointSlice alone."""
    return _strategies()[1]
