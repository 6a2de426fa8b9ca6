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
