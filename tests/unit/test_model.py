"""Services and endpoints as the model builds them from Kubernetes objects."""
from __future__ import annotations

import pytest

from controlplane.model.proxy import NodeError, parse_node
from tests.support.configs import mesh_from_yaml

SERVICE = """
apiVersion: v1
kind: Service
metadata: {name: catalog, namespace: istioinaction}
spec:
  selector: {app: catalog}
  ports:
  - {name: http, port: 80, targetPort: 3000}
  - {name: admin, port: 9000, targetPort: metrics}
"""

PODS = """
---
apiVersion: v1
kind: Pod
metadata: {name: catalog-1, namespace: istioinaction, labels: {app: catalog, version: v1}}
spec:
  serviceAccountName: catalog
  containers: [{name: c, ports: [{name: metrics, containerPort: 9100}]}]
status: {podIP: 10.1.0.1, phase: Running}
---
apiVersion: v1
kind: Pod
metadata: {name: catalog-2, namespace: istioinaction, labels: {app: catalog, version: v2}}
spec:
  containers: [{name: c}]
status:
  podIP: 10.1.0.2
  conditions: [{type: Ready, status: "False"}]
---
apiVersion: v1
kind: Pod
metadata: {name: other, namespace: default, labels: {app: catalog}}
spec: {containers: [{name: c}]}
status: {podIP: 10.9.9.9}
"""

SLICE = """
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: catalog-x1, namespace: istioinaction, labels: {kubernetes.io/service-name: catalog}}
addressType: IPv4
ports: [{name: http, port: 3001}]
endpoints:
- addresses: [10.2.0.1]
  targetRef: {kind: Pod, name: catalog-1}
- addresses: [10.2.0.2]
  conditions: {ready: false}
"""

HOST = "catalog.istioinaction.svc.cluster.local"


def test_service_gets_fqdn_and_pod_endpoints_without_slices():
    mesh = mesh_from_yaml(SERVICE + PODS)
    svc = mesh.service(HOST)
    assert svc is not None and [p.port for p in svc.ports] == [80, 9000]
    http = mesh.service_endpoints(HOST, 80)
    # other namespace is not selected; the not-ready pod is kept but marked not ready
    assert [(e.address, e.port, e.ready) for e in http] == [("10.1.0.1", 3000, True), ("10.1.0.2", 3000, False)]
    assert http[0].labels["version"] == "v1" and http[0].service_account == "catalog"
    # named targetPort resolves through the pod's container port; a pod without it is skipped
    assert [(e.address, e.port) for e in mesh.service_endpoints(HOST, 9000)] == [("10.1.0.1", 9100)]


def test_endpoint_slices_win_over_pods_and_take_labels_from_target_pod():
    mesh = mesh_from_yaml(SERVICE + PODS + SLICE)
    eps = mesh.service_endpoints(HOST, 80)
    assert [(e.address, e.port, e.ready) for e in eps] == [("10.2.0.1", 3001, True), ("10.2.0.2", 3001, False)]
    assert eps[0].labels == {"app": "catalog", "version": "v1"} and eps[0].pod == "catalog-1"
    # the slice has no port named "admin": no endpoints for that service port
    assert mesh.service_endpoints(HOST, 9000) == ()


def test_gateway_service_is_found_in_gateway_namespace_by_selector():
    mesh = mesh_from_yaml(
        """
apiVersion: v1
kind: Service
metadata: {name: istio-ingressgateway, namespace: istio-system}
spec:
  selector: {istio: ingressgateway}
  ports: [{name: http2, port: 80, targetPort: 8080}]
---
apiVersion: v1
kind: Service
metadata: {name: lookalike, namespace: default}
spec:
  selector: {istio: ingressgateway}
  ports: [{port: 80, targetPort: 9999}]
"""
    )
    gw = parse_node("router~10.0.0.5~gw-1.istio-system~istio-system.svc.cluster.local", {"LABELS": {"istio": "ingressgateway"}, "NAMESPACE": "istio-system"})
    svc = mesh.gateway_service_for(gw)
    assert svc is not None and svc.name == "istio-ingressgateway"
    other = parse_node("router~10.0.0.6~gw-2.edge~edge.svc.cluster.local", {"LABELS": {"istio": "ingressgateway"}})
    assert mesh.gateway_service_for(other) is None


def test_node_id_parsing():
    p = parse_node("router~10.0.0.5~istio-ingressgateway-7d4b9.istio-system~istio-system.svc.cluster.local", {"LABELS": {"istio": "ingressgateway"}})
    assert (p.type, p.ip, p.pod, p.namespace, p.short) == ("router", "10.0.0.5", "istio-ingressgateway-7d4b9", "istio-system", "istio-ingressgateway-7d4b9.istio-system")
    for bad in ["router~1.2.3.4", "gateway~1.2.3.4~a.b~b.svc.cluster.local"]:
        with pytest.raises(NodeError):
            parse_node(bad, {})


def test_root_namespace_decides_where_mesh_wide_policies_live():
    from controlplane.model.mesh import build_mesh
    from tests.support.configs import snapshot_from_yaml

    snap = snapshot_from_yaml(
        """
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: mesh-root}
spec: {mtls: {mode: STRICT}}
"""
    )
    assert build_mesh(snap).mtls_policy("shop", {}).mode == "PERMISSIVE"  # istio-system is the root
    assert build_mesh(snap, root_namespace="mesh-root").mtls_policy("shop", {}).mode == "STRICT"
