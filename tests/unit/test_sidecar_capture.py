"""Sidecar egress listeners with an address (`bind`, `captureMode`), as istiod builds
them (buildSidecarOutboundListeners): captureMode NONE binds a real port on `bind`
(127.0.0.1 without one) that the application dials; a `bind` under iptables capture is
the listener's address, reached through virtualOutbound as usual."""
from __future__ import annotations

import pytest
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2
from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2

from controlplane import names
from controlplane.config.objects import Origin, Rejection
from controlplane.config.parse import parse_document
from controlplane.generators import builders
from controlplane.model.proxy import parse_node
from tests.support.configs import mesh_from_yaml

SERVICES = """
apiVersion: v1
kind: Service
metadata: {name: ratings, namespace: shop}
spec: {clusterIP: 10.96.0.20, selector: {app: ratings}, ports: [{name: http, port: 9080}]}
---
apiVersion: v1
kind: Service
metadata: {name: db, namespace: shop}
spec: {clusterIP: 10.96.0.30, selector: {app: db}, ports: [{name: tcp, port: 5432}]}
"""
NODE = ("sidecar~10.1.0.10~app-1.shop~shop.svc.cluster.local", {"NAMESPACE": "shop", "LABELS": {"app": "app"}})


def _sidecar(egress: str) -> str:
    return SERVICES + f"""---
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {{name: default, namespace: shop}}
spec:
  egress:
{egress}
"""


def _listeners(text: str) -> dict:
    mesh = mesh_from_yaml(text)
    return {name: lis for name, lis in builders()[names.LISTENER](mesh, parse_node(*NODE))}


def _tcp_cluster(lis) -> str:
    chain = lis.filter_chains[0] if lis.filter_chains else lis.default_filter_chain
    tcp = tcp_proxy_pb2.TcpProxy()
    chain.filters[0].typed_config.Unpack(tcp)
    return tcp.cluster


DB_AND_RATINGS = """
  - port: {number: 5432, protocol: TCP, name: tcp}
    captureMode: NONE
    hosts: [./db.shop.svc.cluster.local]
  - hosts: [./ratings.shop.svc.cluster.local]"""


def test_capture_none_binds_localhost_and_the_application_dials_it():
    got = _listeners(_sidecar(DB_AND_RATINGS))
    lis = got["127.0.0.1_5432"]
    assert lis.bind_to_port.value is True
    assert (lis.address.socket_address.address, lis.address.socket_address.port_value) == ("127.0.0.1", 5432)
    assert _tcp_cluster(lis) == "outbound|5432||db.shop.svc.cluster.local"
    # The catch-all's services keep their captured listeners, never bound.
    assert got["0.0.0.0_9080"].bind_to_port.value is False
    # db came only through the bound listener: no captured listener on its VIP.
    assert "10.96.0.30_5432" not in got
    assert "outbound|5432||db.shop.svc.cluster.local" in {n for n, _ in builders()[names.CLUSTER](
        mesh_from_yaml(_sidecar(DB_AND_RATINGS)), parse_node(*NODE))}


def test_capture_none_with_a_bind_and_http_uses_the_port_route():
    got = _listeners(_sidecar("""
  - port: {number: 9080, protocol: HTTP, name: http}
    bind: 127.0.0.2
    captureMode: NONE
    hosts: [./ratings.shop.svc.cluster.local]"""))
    lis = got["127.0.0.2_9080"]
    assert lis.bind_to_port.value is True
    assert "0.0.0.0_9080" not in got
    chain = lis.filter_chains[0]
    hcm = hcm_pb2.HttpConnectionManager()
    chain.filters[0].typed_config.Unpack(hcm)
    assert hcm.rds.route_config_name == "9080"


@pytest.mark.parametrize("mode", ["IPTABLES", "DEFAULT"])
def test_a_bind_under_iptables_capture_names_the_listener_but_binds_nothing(mode):
    got = _listeners(_sidecar(f"""
  - port: {{number: 5432, protocol: TCP, name: tcp}}
    bind: 10.96.0.30
    captureMode: {mode}
    hosts: [./db.shop.svc.cluster.local]"""))
    lis = got["10.96.0.30_5432"]
    assert lis.bind_to_port.value is False
    assert _tcp_cluster(lis) == "outbound|5432||db.shop.svc.cluster.local"


def test_without_bind_or_none_nothing_changes():
    plain = _listeners(_sidecar("""
  - port: {number: 5432, protocol: TCP, name: tcp}
    captureMode: IPTABLES
    hosts: [./*]"""))
    assert "10.96.0.30_5432" in plain and all(not lis.bind_to_port.value for lis in plain.values()
                                              if lis.name.endswith("_5432"))


STILL_REFUSED = [
    ({"egress": [{"hosts": ["./*"], "bind": "127.0.0.1", "captureMode": "NONE"}]}, "spec.egress[0].bind"),
    ({"egress": [{"hosts": ["./*"], "captureMode": "NONE"}]}, "spec.egress[0].captureMode"),
    ({"egress": [{"hosts": ["./*"], "port": {"number": 3128, "protocol": "HTTP_PROXY"}, "captureMode": "NONE"}]},
     "spec.egress[0].captureMode"),
]  # ingress captureMode NONE is served: tests/unit/test_sidecar_ingress.py


def _doc(spec: dict) -> dict:
    return {"apiVersion": "networking.istio.io/v1", "kind": "Sidecar",
            "metadata": {"name": "s", "namespace": "shop"}, "spec": spec}


@pytest.mark.parametrize(("spec", "field"), STILL_REFUSED)
def test_what_is_not_served_is_still_refused(spec, field):
    got = parse_document(_doc(spec), Origin("file", "sidecar.yaml"))
    assert isinstance(got, Rejection), got
    assert any(e.field == field and "does not serve" in e.reason for e in got.errors), [str(e) for e in got.errors]


def test_an_egress_bind_on_a_port_is_accepted():
    spec = {"egress": [{"hosts": ["./*"], "port": {"number": 9080, "protocol": "HTTP"}, "bind": "127.0.0.1",
                        "captureMode": "NONE"}]}
    assert not isinstance(parse_document(_doc(spec), Origin("file", "sidecar.yaml")), Rejection)
