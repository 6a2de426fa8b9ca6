"""Gateway API objects the unit tests build configurations from."""
from __future__ import annotations

# Istio's GatewayClass (meshd handles the class whose controller is Istio's).
ISTIO_CLASS = """
apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {name: istio}
spec: {controllerName: istio.io/gateway-controller}
"""

# Lets Gateways of namespace `infra` use the Secret `shop-cert` of namespace `certs`.
SHOP_CERT_GRANT = """
apiVersion: gateway.networking.k8s.io/v1beta1
kind: ReferenceGrant
metadata: {name: certs-for-infra, namespace: certs}
spec:
  from: [{group: gateway.networking.k8s.io, kind: Gateway, namespace: infra}]
  to: [{group: "", kind: Secret, name: shop-cert}]
"""

# HTTPRouteHTTPSListenerDetectMisdirectedRequests (conformance suite): (SNI, Host, answer)
# on Gateway same-namespace-with-https-listener, answer a backend (v1 = infra-backend-v1)
# or a status. Shared by the e2e conformance case and the unit test of the 421 routes.
MISDIRECTED_REQUESTS: tuple[tuple[str, str, str | int], ...] = (
    ("example.org", "example.org", "v1"), ("example.org", "second-example.org", 421),
    ("example.org", "unknown-example.org", 404), ("second-example.org", "second-example.org", "v2"),
    ("second-example.org", "example.org", 421), ("second-example.org", "unknown-example.org", 421),
    ("third-example.wildcard.org", "third-example.wildcard.org", "v3"),
    ("third-example.wildcard.org", "fith-example.wildcard.org", "v3"),
    ("third-example.wildcard.org", "fourth-example.wildcard.org", 421),
    ("third-example.wildcard.org", "second-example.org", 421),
    ("third-example.wildcard.org", "unknown-example.org", 421),
    ("fourth-example.wildcard.org", "fourth-example.wildcard.org", "v1"),
    ("fourth-example.wildcard.org", "fith-example.wildcard.org", 421),
    ("unknown-example.org", "example.org", "v1"), ("unknown-example.org", "unknown-example.org", 404),
)
