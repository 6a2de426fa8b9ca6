"""Authorization and request authentication on the listeners a proxy receives: the
filters of the policies that select its workload, on every inbound chain but the
blackhole (sidecars) and on every gateway chain, in istiod's order; nothing for a
workload no policy selects; and the shared generation follows policy changes.
"""
from __future__ import annotations

import dataclasses

from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2

from controlplane import names
from controlplane.generators import Generator, listeners
from controlplane.generators.resources import pack
from tests.support.chapter9 import CATALOG_PROXY, GATEWAY_PROXY, NS, WEBAPP_PROXY, mesh

CATALOG_V2 = dataclasses.replace(
    CATALOG_PROXY, id=f"sidecar~10.1.0.12~catalog-2.{NS}~{NS}.svc.cluster.local", ip="10.1.0.12", pod="catalog-2",
    labels={**CATALOG_PROXY.labels, "version": "v2"})

ALLOW_WEBAPP = f"""
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: catalog-viewer, namespace: {NS}}}
spec:
  selector: {{matchLabels: {{app: catalog, version: v1}}}}
  rules:
  - from: [{{source: {{principals: ["cluster.local/ns/{NS}/sa/webapp"]}}}}]
    to: [{{operation: {{methods: ["GET"]}}}}]
"""
DENY_API_AT_GATEWAY = """
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-api, namespace: istio-system}
spec:
  selector: {matchLabels: {istio: ingressgateway}}
  action: DENY
  rules: [{to: [{operation: {paths: ["/api/*"]}}]}]
"""
JWT = f"""
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {{name: jwt, namespace: {NS}}}
spec:
  selector: {{matchLabels: {{app: catalog}}}}
  jwtRules:
  - issuer: https://issuer.example.com
    jwksUri: https://issuer.example.com/keys.json
"""
GATEWAY = """
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: gw, namespace: istio-system}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 80, name: http, protocol: HTTP}
    hosts: ["*"]
  - port: {number: 31400, name: tcp, protocol: TCP}
    hosts: ["*"]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: tcp, namespace: istio-system}
spec:
  hosts: ["*"]
  gateways: [gw]
  tcp:
  - match: [{port: 31400}]
    route: [{destination: {host: catalog.istioinaction.svc.cluster.local, port: {number: 80}}}]
"""


def _inbound(m, proxy):
    return {lst.name: lst for lst in listeners.sidecar_listeners(m, proxy)}["virtualInbound"]


def _chain_filters(chain) -> list[str]:
    """Network filter names of a chain, with the HTTP filters of its HCM after a colon."""
    out = []
    for f in chain.filters:
        if f.name == "envoy.filters.network.http_connection_manager":
            hcm = hcm_pb2.HttpConnectionManager()
            f.typed_config.Unpack(hcm)
            out.append("hcm:" + ",".join(h.name for h in hcm.http_filters))
        else:
            out.append(f.name)
    return out


def test_selected_workload_gets_rbac_on_every_inbound_chain_but_the_blackhole():
    m = mesh(ALLOW_WEBAPP)
    lst = _inbound(m, CATALOG_PROXY)
    for chain in lst.filter_chains:
        got = _chain_filters(chain)
        if chain.name == "virtualInbound-blackhole":
            assert got == ["envoy.filters.network.tcp_proxy"]
        elif got[0].startswith("hcm:"):
            assert got[0].startswith("hcm:envoy.filters.http.rbac,"), (chain.name, got)
            assert got[0].endswith("envoy.filters.http.router")
        else:  # TCP chains: network RBAC before tcp_proxy
            assert got[:2] == ["envoy.filters.network.rbac", "envoy.filters.network.tcp_proxy"], (chain.name, got)


def test_workloads_no_policy_selects_get_the_listener_they_had_before():
    plain = mesh()
    with_policy = mesh(ALLOW_WEBAPP)
    for proxy in (CATALOG_V2, WEBAPP_PROXY):
        assert _inbound(with_policy, proxy).SerializeToString(deterministic=True) == \
            _inbound(plain, proxy).SerializeToString(deterministic=True)


def test_jwt_filters_come_before_rbac_and_only_on_http_chains():
    m = mesh(ALLOW_WEBAPP, JWT)
    lst = _inbound(m, CATALOG_PROXY)
    http = [c for c in lst.filter_chains if _chain_filters(c)[0].startswith("hcm:")]
    assert http
    for chain in http:
        names_ = _chain_filters(chain)[0][4:].split(",")
        assert names_.index("envoy.filters.http.jwt_authn") < names_.index("envoy.filters.http.rbac"), names_
    # the replica without the ALLOW policy still gets the JWT filters (the policy selects app: catalog)
    other = _inbound(m, CATALOG_V2)
    assert any("envoy.filters.http.jwt_authn" in _chain_filters(c)[0] for c in other.filter_chains)
    assert not any("rbac" in ",".join(_chain_filters(c)) for c in other.filter_chains)


def test_gateway_http_and_tcp_chains_get_the_gateway_policies():
    m = mesh(GATEWAY, DENY_API_AT_GATEWAY)
    got = {lst.name: [_chain_filters(c) for c in lst.filter_chains] for lst in listeners.gateway_listeners(m, GATEWAY_PROXY)}
    assert got["0.0.0.0_8080"][0][0].startswith("hcm:envoy.filters.http.rbac,")
    assert got["0.0.0.0_31400"][0][:2] == ["envoy.filters.network.rbac", "envoy.filters.network.tcp_proxy"]
    # sidecars are not selected by the gateway's policy
    assert _inbound(m, CATALOG_PROXY).SerializeToString(deterministic=True) == \
        _inbound(mesh(GATEWAY), CATALOG_PROXY).SerializeToString(deterministic=True)


def test_shared_generation_follows_policy_changes_and_labels():
    g = Generator()
    before = mesh()
    after = mesh(ALLOW_WEBAPP)
    # replicas with different labels no longer share their inbound listener
    a = g.generate(after, CATALOG_PROXY, names.LISTENER)["virtualInbound"]
    b = g.generate(after, CATALOG_V2, names.LISTENER)["virtualInbound"]
    assert a.any.value != b.any.value
    assert g.generate(before, CATALOG_PROXY, names.LISTENER)["virtualInbound"].any.value == b.any.value
    # and the cached answer equals the plain builder's
    plain = dict(listeners.build(after, CATALOG_PROXY))["virtualInbound"]
    assert a.any.value == pack("virtualInbound", names.LISTENER, plain).any.value
