"""The benchmark's mesh: Kubernetes and Istio YAML for N services, their pods and
endpoints, and the proxies (sidecars and gateways) that connect for them.

Reference scenario (issue 8): 1,000 services with one HTTP port and two endpoints each,
10 % of them with a VirtualService and a DestinationRule with two subsets, 2,000 sidecars
(one per pod) and 10 ingress gateways. Services are spread over namespaces so sidecars
fall into a realistic number of sharing groups.

Files are laid out so the benchmark can change one thing by rewriting one small file:
`endpoints/<ns>/<svc>.yaml` holds one service's EndpointSlice (an endpoint change),
`rules/<ns>/<svc>.yaml` one service's VirtualService and DestinationRule (a full push).
"""
from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass, field
from pathlib import Path

GATEWAY_NS = "istio-system"
HTTP_PORT = 8080  # the one service port (HTTP): sidecars share listener 0.0.0.0_8080
TARGET_PORT = 9080
GW_LISTEN_PORT = 8080
HOST_DOMAIN = "bench.example.com"


@dataclass(frozen=True)
class ProxySpec:
    """One simulated proxy: what its Envoy bootstrap would say."""

    kind: str  # "sidecar" | "router"
    namespace: str
    pod: str
    ip: str
    labels: dict = field(default_factory=dict, hash=False, compare=False)
    service_account: str = "default"
    istio_version: str = "meshd-bench"  # istiod takes old-proxy code paths unless it parses (1.14.6)

    @property
    def node_id(self) -> str:
        return f"{self.kind}~{self.ip}~{self.pod}.{self.namespace}~{self.namespace}.svc.cluster.local"

    def metadata(self) -> dict:
        md = {
            "NAMESPACE": self.namespace, "LABELS": dict(self.labels), "SERVICE_ACCOUNT": self.service_account,
            "CLUSTER_ID": "Kubernetes", "INSTANCE_IPS": self.ip, "ISTIO_VERSION": self.istio_version,
        }
        if self.kind == "sidecar":
            md["INTERCEPTION_MODE"] = "REDIRECT"
        return md


@dataclass
class Scenario:
    services: int = 1000
    endpoints_per_service: int = 2
    routed_fraction: float = 0.10  # share of services with a VirtualService + DestinationRule
    sidecars: int = 2000
    gateways: int = 10
    namespaces: int = 10
    # One Sidecar per namespace importing `./*` and `istio-system/*` (docs/sidecar-scope.md):
    # each sidecar sees its own namespace's services, not the mesh's.
    sidecar_scope: bool = False

    def namespace_of(self, i: int) -> str:
        return f"ns-{i % self.namespaces}"

    def service_name(self, i: int) -> str:
        return f"svc-{i}"

    def pod_ip(self, i: int, e: int) -> str:
        # 10.128.0.0/9: room for a million pods, never a gateway's address.
        n = i * self.endpoints_per_service + e
        return str(ipaddress.IPv4Address("10.128.0.0") + n + 1)

    def routed(self, i: int) -> bool:
        every = max(1, round(1 / self.routed_fraction)) if self.routed_fraction > 0 else 0
        return bool(every) and i % every == 0

    # --- proxies ---------------------------------------------------------------
    def proxies(self) -> list[ProxySpec]:
        out: list[ProxySpec] = []
        n = 0
        for i in range(self.services):
            for e in range(self.endpoints_per_service):
                if n >= self.sidecars:
                    break
                ns, svc = self.namespace_of(i), self.service_name(i)
                out.append(ProxySpec(
                    "sidecar", ns, f"{svc}-{e}", self.pod_ip(i, e),
                    {"app": svc, "version": f"v{e % 2 + 1}", "security.istio.io/tlsMode": "istio"}, svc,
                ))
                n += 1
        for g in range(self.gateways):
            out.append(ProxySpec(
                "router", GATEWAY_NS, f"istio-ingressgateway-{g}", str(ipaddress.IPv4Address("10.127.0.1") + g),
                {"istio": "ingressgateway", "app": "istio-ingressgateway"}, "istio-ingressgateway-service-account",
            ))
        return out

    # --- YAML ------------------------------------------------------------------
    def service_yaml(self, i: int) -> str:
        ns, svc = self.namespace_of(i), self.service_name(i)
        docs = [f"""apiVersion: v1
kind: Service
metadata: {{name: {svc}, namespace: {ns}}}
spec:
  clusterIP: {ipaddress.IPv4Address("172.20.0.0") + i + 1}
  selector: {{app: {svc}}}
  ports: [{{name: http, port: {HTTP_PORT}, targetPort: {TARGET_PORT}}}]
"""]
        for e in range(self.endpoints_per_service):
            docs.append(f"""apiVersion: v1
kind: Pod
metadata: {{name: {svc}-{e}, namespace: {ns}, labels: {{app: {svc}, version: v{e % 2 + 1}, security.istio.io/tlsMode: istio}}}}
spec: {{serviceAccountName: {svc}, containers: [{{name: app}}]}}
status: {{podIP: {self.pod_ip(i, e)}}}
""")
        return "---\n".join(docs)

    def endpoints_yaml(self, i: int, generation: int = 0) -> str:
        """The service's EndpointSlice; `generation` > 0 moves the last endpoint to a new
        port, which changes the ClusterLoadAssignment and nothing else."""
        ns, svc = self.namespace_of(i), self.service_name(i)
        eps = []
        for e in range(self.endpoints_per_service):
            eps.append(f"""- addresses: ["{self.pod_ip(i, e)}"]
  conditions: {{ready: true}}
  targetRef: {{kind: Pod, name: {svc}-{e}, namespace: {ns}}}""")
        port = TARGET_PORT
        slices = [(f"{svc}-abcde", port, eps)]
        if generation:
            # Endpoint churn: a slice with one more (not ready -> ready) address.
            extra = f"""- addresses: ["{ipaddress.IPv4Address("10.64.0.0") + generation}"]
  conditions: {{ready: true}}"""
            slices = [(f"{svc}-abcde", port, eps + [extra])]
        out = []
        for name, slice_port, addresses in slices:
            body = "\n".join(addresses)
            out.append(f"""apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: {name}
  namespace: {ns}
  labels: {{kubernetes.io/service-name: {svc}}}
addressType: IPv4
ports: [{{name: http, port: {slice_port}, protocol: TCP}}]
endpoints:
{body}
""")
        return "---\n".join(out)

    def rules_yaml(self, i: int, generation: int = 0) -> str:
        """VirtualService (two subsets, weighted) and DestinationRule; `generation`
        changes the DestinationRule's connection pool: every proxy's CDS changes."""
        ns, svc = self.namespace_of(i), self.service_name(i)
        return f"""apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: {svc}, namespace: {ns}}}
spec:
  hosts: [{svc}]
  http:
  - match: [{{headers: {{x-canary: {{exact: "true"}}}}}}]
    route: [{{destination: {{host: {svc}, subset: v2}}}}]
  - route:
    - {{destination: {{host: {svc}, subset: v1}}, weight: 90}}
    - {{destination: {{host: {svc}, subset: v2}}, weight: 10}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: {svc}, namespace: {ns}}}
spec:
  host: {svc}
  trafficPolicy:
    connectionPool: {{http: {{http1MaxPendingRequests: {100 + generation}}}}}
  subsets:
  - {{name: v1, labels: {{version: v1}}}}
  - {{name: v2, labels: {{version: v2}}}}
"""

    def gateway_yaml(self) -> str:
        """The gateways' Service, a Gateway on port 80 for every host, and one
        VirtualService binding the routed services' hosts to it."""
        routed = [i for i in range(self.services) if self.routed(i)]
        hosts = "\n".join(f"    - {{match: [{{uri: {{prefix: /{self.service_name(i)}}}}}], route: [{{destination: {{host: {self.service_name(i)}.{self.namespace_of(i)}.svc.cluster.local, port: {{number: {HTTP_PORT}}}}}}}]}}" for i in routed)
        return f"""apiVersion: v1
kind: Service
metadata: {{name: istio-ingressgateway, namespace: {GATEWAY_NS}}}
spec:
  selector: {{istio: ingressgateway}}
  ports: [{{name: http2, port: 80, targetPort: {GW_LISTEN_PORT}}}]
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: bench-gateway, namespace: {GATEWAY_NS}}}
spec:
  selector: {{istio: ingressgateway}}
  servers:
  - port: {{number: 80, name: http, protocol: HTTP}}
    hosts: ["*.{HOST_DOMAIN}"]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: bench-ingress, namespace: {GATEWAY_NS}}}
spec:
  hosts: ["app.{HOST_DOMAIN}"]
  gateways: [bench-gateway]
  http:
{hosts if hosts else "    - {route: [{destination: {host: svc-0." + self.namespace_of(0) + ".svc.cluster.local}}]}"}
"""

    def write(self, root: Path) -> None:
        """Write the whole configuration below `root` (created)."""
        for sub in ("services", "endpoints", "rules"):
            (root / sub).mkdir(parents=True, exist_ok=True)
        for i in range(self.services):
            write_atomic(root / "services" / f"{self.service_name(i)}.yaml", self.service_yaml(i))
            write_atomic(self.endpoints_path(root, i), self.endpoints_yaml(i))
            if self.routed(i):
                write_atomic(self.rules_path(root, i), self.rules_yaml(i))
        write_atomic(root / "gateway.yaml", self.gateway_yaml())
        if self.sidecar_scope:
            write_atomic(root / "sidecars.yaml", self.sidecars_yaml())

    def seeing(self, i: int) -> int | None:
        """How many proxies see service `i` (None: all of them, without --sidecar-scope):
        the sidecars of its namespace and the gateways."""
        if not self.sidecar_scope:
            return None
        ns = self.namespace_of(i)
        return sum(1 for p in self.proxies() if p.kind == "router" or p.namespace == ns)

    def sidecars_yaml(self) -> str:
        """A namespace default Sidecar in each namespace: its own services and the gateways'."""
        return "---\n".join(f"""apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {{name: default, namespace: {self.namespace_of(n)}}}
spec:
  egress: [{{hosts: ["./*", "{GATEWAY_NS}/*"]}}]
""" for n in range(self.namespaces))

    def endpoints_path(self, root: Path, i: int) -> Path:
        return root / "endpoints" / f"{self.service_name(i)}.yaml"

    def rules_path(self, root: Path, i: int) -> Path:
        return root / "rules" / f"{self.service_name(i)}.yaml"

    def first_routed(self) -> int:
        return next(i for i in range(self.services) if self.routed(i))


def write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name("." + path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
