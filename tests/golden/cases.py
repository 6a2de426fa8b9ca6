"""The golden cases: inputs copied from the shared corpus, plus what a cluster would add
(the ingress gateway's Service, Pods with addresses so endpoints exist), and the proxies
whose configuration is recorded.

Each case lives in tests/golden/<name>/:
  input.yaml       the corpus files, copied verbatim, each after a `# source:` line
  supplement.yaml  meshd-only additions (not from the corpus), kept apart on purpose
  <proxy>.json     what meshd generates for that proxy: listeners, routes, clusters,
                   endpoints, secrets, and the config notes (rejections, conflicts)
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from tests.support.paths import SHARED

CORPUS = SHARED / "corpus"
HERE = Path(__file__).resolve().parent


@dataclass(frozen=True)
class Proxy:
    name: str  # the output file: <name>.json
    node_id: str
    metadata: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Case:
    name: str
    sources: tuple[str, ...]  # paths under the corpus
    supplement: str
    proxies: tuple[Proxy, ...]

    @property
    def dir(self) -> Path:
        return HERE / self.name


def _pod(name: str, ns: str, ip: str, labels: dict, sa: str) -> str:
    lab = ", ".join(f"{k}: {v}" for k, v in {**labels, "security.istio.io/tlsMode": "istio"}.items())
    return f"""---
apiVersion: v1
kind: Pod
metadata: {{name: {name}, namespace: {ns}, labels: {{{lab}}}}}
spec: {{serviceAccountName: {sa}, containers: [{{name: app}}]}}
status: {{podIP: {ip}}}
"""


INGRESS = """apiVersion: v1
kind: Service
metadata: {name: istio-ingressgateway, namespace: istio-system}
spec:
  selector: {istio: ingressgateway}
  ports:
  - {name: http2, port: 80, targetPort: 8080}
  - {name: https, port: 443, targetPort: 8443}
"""

GATEWAY = Proxy("gateway", "router~10.1.0.2~istio-ingressgateway-0.istio-system~istio-system.svc.cluster.local",
                {"NAMESPACE": "istio-system", "SERVICE_ACCOUNT": "istio-ingressgateway-service-account",
                 "LABELS": {"istio": "ingressgateway", "app": "istio-ingressgateway"}})

BOOKINFO_PODS = "".join([
    _pod("productpage-v1-0", "default", "10.1.0.10", {"app": "productpage", "version": "v1"}, "bookinfo-productpage"),
    _pod("details-v1-0", "default", "10.1.0.11", {"app": "details", "version": "v1"}, "bookinfo-details"),
    _pod("reviews-v1-0", "default", "10.1.0.12", {"app": "reviews", "version": "v1"}, "bookinfo-reviews"),
    _pod("reviews-v2-0", "default", "10.1.0.13", {"app": "reviews", "version": "v2"}, "bookinfo-reviews"),
    _pod("reviews-v3-0", "default", "10.1.0.14", {"app": "reviews", "version": "v3"}, "bookinfo-reviews"),
    _pod("ratings-v1-0", "default", "10.1.0.15", {"app": "ratings", "version": "v1"}, "bookinfo-ratings"),
])
PRODUCTPAGE = Proxy("sidecar-productpage", "sidecar~10.1.0.10~productpage-v1-0.default~default.svc.cluster.local",
                    {"NAMESPACE": "default", "SERVICE_ACCOUNT": "bookinfo-productpage",
                     "LABELS": {"app": "productpage", "version": "v1", "security.istio.io/tlsMode": "istio"}})

BOOK = "istio/samples/bookinfo"
TESTDATA = "istio/tests/testdata/config"

DEMO_APPS = ["frontend", "cartservice", "productcatalogservice", "currencyservice", "paymentservice",
             "shippingservice", "emailservice", "checkoutservice", "recommendationservice", "adservice", "redis-cart"]
DEMO_PODS = "".join(_pod(f"{app}-0", "default", f"10.2.0.{10 + i}", {"app": app}, app if app != "redis-cart" else "default")
                    for i, app in enumerate(DEMO_APPS))

CASES = (
    Case(
        "bookinfo",
        (f"{BOOK}/platform/kube/bookinfo.yaml", f"{BOOK}/networking/bookinfo-gateway.yaml",
         f"{BOOK}/networking/destination-rule-all.yaml", f"{BOOK}/networking/virtual-service-reviews-jason-v2-v3.yaml",
         f"{BOOK}/networking/virtual-service-ratings-test-abort.yaml"),
        INGRESS + BOOKINFO_PODS,
        (GATEWAY, PRODUCTPAGE),
    ),
    Case(
        "bookinfo-traffic-shifting",
        (f"{BOOK}/platform/kube/bookinfo.yaml", f"{BOOK}/networking/bookinfo-gateway.yaml",
         f"{BOOK}/networking/destination-rule-all-mtls.yaml", f"{BOOK}/networking/virtual-service-reviews-80-20.yaml",
         f"{BOOK}/networking/virtual-service-ratings-test-delay.yaml"),
        INGRESS + BOOKINFO_PODS,
        (GATEWAY, PRODUCTPAGE),
    ),
    Case(
        "istio-testdata",
        tuple(f"{TESTDATA}/{f}" for f in (
            "gateway-all.yaml", "virtual-service-all.yaml", "destination-rule-all.yaml", "destination-rule-passthrough.yaml",
            "rule-content-route.yaml", "rule-default-route-cors-policy.yaml", "rule-default-route-append-headers.yaml",
            "rule-fault-injection.yaml", "rule-redirect-injection.yaml", "rule-regex-route.yaml",
            "rule-weighted-route.yaml")),
        """apiVersion: v1
kind: Service
metadata: {name: my-gateway-controller, namespace: testns}
spec:
  selector: {app: my-gateway-controller}
  ports:
  - {name: http, port: 80, targetPort: 8080}
  - {name: https, port: 443, targetPort: 8443}
  - {name: tcp, port: 31400, targetPort: 31400}
---
apiVersion: v1
kind: Service
metadata: {name: service3, namespace: default}
spec:
  selector: {app: service3}
  ports: [{name: http, port: 80}, {name: http-alt, port: 81}]
---
apiVersion: v1
kind: Service
metadata: {name: destall, namespace: default}
spec:
  selector: {app: destall}
  ports: [{name: http, port: 81, targetPort: 7072}]
---
apiVersion: v1
kind: Service
metadata: {name: app, namespace: testns}
spec:
  selector: {app: app}
  ports: [{name: http, port: 8080}]
""" + _pod("service3-v1-0", "default", "10.3.0.10", {"app": "service3", "version": "v1"}, "service3")
        + _pod("service3-v2-0", "default", "10.3.0.11", {"app": "service3", "version": "v2"}, "service3")
        + _pod("destall-0", "default", "10.3.0.12", {"app": "destall", "version": "v1"}, "destall")
        + _pod("app-0", "testns", "10.3.0.20", {"app": "app"}, "app"),
        (Proxy("gateway", "router~10.3.0.2~my-gateway-controller-0.testns~testns.svc.cluster.local",
               {"NAMESPACE": "testns", "SERVICE_ACCOUNT": "my-gateway", "LABELS": {"app": "my-gateway-controller"}}),
         Proxy("sidecar-app", "sidecar~10.3.0.20~app-0.testns~testns.svc.cluster.local",
               {"NAMESPACE": "testns", "SERVICE_ACCOUNT": "app",
                "LABELS": {"app": "app", "security.istio.io/tlsMode": "istio"}})),
    ),
    Case(
        "microservices-demo",
        ("microservices-demo/release/kubernetes-manifests.yaml", "microservices-demo/istio-manifests/frontend-gateway.yaml",
         "microservices-demo/istio-manifests/frontend.yaml", "microservices-demo/istio-manifests/allow-egress-googleapis.yaml"),
        INGRESS + DEMO_PODS,
        (GATEWAY, Proxy("sidecar-frontend", "sidecar~10.2.0.10~frontend-0.default~default.svc.cluster.local",
                        {"NAMESPACE": "default", "SERVICE_ACCOUNT": "frontend",
                         "LABELS": {"app": "frontend", "security.istio.io/tlsMode": "istio"}})),
    ),
)
