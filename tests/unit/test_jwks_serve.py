"""The key sets of a running meshd reach its proxies: a gateway's jwt_authn filter carries
the key set fetched from the jwksUri, a rotated key set is pushed after the refresh, and
an issuer whose jwksUri fails gets the key set nobody can sign for (its tokens refused)."""
from __future__ import annotations

import pytest
from envoy.config.listener.v3 import listener_pb2
from envoy.extensions.filters.http.jwt_authn.v3 import config_pb2 as jwt_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2

from controlplane import names
from controlplane.generators.authn import JWT_AUTHN, UNAVAILABLE_JWKS
from tests.support.ads import ads_fetch
from tests.support.harness import meshd, wait_for
from tests.support.jwt import Issuer, KeyServer

pytestmark = pytest.mark.e2e  # meshd as a process, answering ADS

NODE = "router~127.0.0.1~gw-1.istio-system~istio-system.svc.cluster.local"
METADATA = {"NAMESPACE": "istio-system", "LABELS": {"istio": "ingressgateway"}}


def config(good: str, down: str) -> str:
    return f"""apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: gw, namespace: istio-system}}
spec:
  selector: {{istio: ingressgateway}}
  servers:
  - port: {{number: 8080, name: http, protocol: HTTP}}
    hosts: ["*"]
---
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {{name: jwt, namespace: istio-system}}
spec:
  jwtRules:
  - issuer: https://good.example
    jwksUri: {good}
  - issuer: https://down.example
    jwksUri: {down}
"""


def gateway_key_sets(port: int) -> dict[str, str]:
    """issuer -> the key set inlined in the gateway's jwt_authn filter."""
    resp = ads_fetch(port, NODE, METADATA, names.LISTENER, [])
    out = {}
    for any_ in resp.resources:
        listener = listener_pb2.Listener()
        any_.Unpack(listener)
        for chain in listener.filter_chains:
            for f in chain.filters:
                hcm = hcm_pb2.HttpConnectionManager()
                if not f.typed_config.Unpack(hcm):
                    continue
                for hf in hcm.http_filters:
                    if hf.name == JWT_AUTHN:
                        cfg = jwt_pb2.JwtAuthentication()
                        hf.typed_config.Unpack(cfg)
                        out.update({p.issuer: p.local_jwks.inline_string for p in cfg.providers.values()})
    return out


def test_fetched_key_sets_reach_the_gateway_and_rotate(tmp_path):
    server = KeyServer()
    try:
        old, new = Issuer("https://good.example", kid="old"), Issuer("https://good.example", kid="new")
        server.routes["/good"] = (200, old.jwks())
        server.routes["/down"] = (503, "unavailable")
        cfg = tmp_path / "config"
        cfg.mkdir()
        (cfg / "gw.yaml").write_text(config(server.url + "/good", server.url + "/down"))
        with meshd(cfg, tmp_path, extra=["--jwks-refresh-interval", "1s"]) as m:
            keys = gateway_key_sets(m.xds_port)
            assert keys == {"https://good.example": old.jwks(), "https://down.example": UNAVAILABLE_JWKS}
            server.routes["/good"] = (200, new.jwks())
            wait_for(lambda: gateway_key_sets(m.xds_port)["https://good.example"] == new.jwks(), 15,
                     what=lambda: f"the rotated key set pushed (log: {m.log()[-1500:]})")
            assert "config change: JWKS" in m.log()
            assert gateway_key_sets(m.xds_port)["https://down.example"] == UNAVAILABLE_JWKS
    finally:
        server.close()
