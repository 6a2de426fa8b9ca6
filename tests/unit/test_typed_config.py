"""Typed config (config/types/): the parse gate hands the model typed, frozen objects,
whose reading follows the document wherever an object is made."""
from __future__ import annotations

import dataclasses
import pickle

import pytest
import yaml

from controlplane.config.objects import Origin
from controlplane.config.parse import parse_document
from controlplane.config.types import DestinationRule, Gateway, PeerAuthentication, VirtualService

DOCS = """
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: gw, namespace: shop}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 443, name: https, protocol: HTTPS}
    hosts: [shop.example.com]
    tls: {mode: SIMPLE, credentialName: shop-cert}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: vs, namespace: shop}
spec:
  hosts: [web]
  http:
  - match: [{uri: {prefix: /api}, headers: {x-user: {exact: a}}}]
    timeout: 1m30s
    retries: {}
    route: [{destination: {host: web, subset: v2, port: {number: 8080}}, weight: 100}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: dr, namespace: shop}
spec:
  host: web
  trafficPolicy:
    loadBalancer: {simple: RANDOM}
    tls: {mode: ISTIO_MUTUAL}
    portLevelSettings:
    - port: {number: 8080}
      loadBalancer: {simple: ROUND_ROBIN}
  subsets:
  - name: v2
    labels: {version: v2}
    trafficPolicy:
      tls: {}
      outlierDetection: {}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: pa, namespace: shop}
spec:
  selector: {matchLabels: {app: web}}
  mtls: {mode: STRICT}
  portLevelMtls: {"8080": {mode: DISABLE}}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec: {ports: [{name: http, port: 8080}]}
"""


@pytest.fixture(scope="module")
def objects():
    return {o.kind: o for o in (parse_document(d, Origin("file", "t.yaml", i))
                                for i, d in enumerate(yaml.safe_load_all(DOCS)))}


def test_every_served_istio_kind_arrives_typed_and_kubernetes_kinds_as_documents(objects):
    assert isinstance(objects["Gateway"].typed, Gateway)
    assert isinstance(objects["VirtualService"].typed, VirtualService)
    assert isinstance(objects["DestinationRule"].typed, DestinationRule)
    assert isinstance(objects["PeerAuthentication"].typed, PeerAuthentication)
    assert objects["Service"].typed is None
    # The document stays as written: debug views dump it, last good copies keep it.
    assert objects["VirtualService"].spec["http"][0]["timeout"] == "1m30s"


def test_fields_are_read_once_with_their_types(objects):
    rule = objects["VirtualService"].typed.http[0]
    assert rule.timeout.seconds == 90  # a Go-style duration, as Istio accepts it
    assert rule.retries is not None and rule.retries.attempts == 0  # `retries: {}` is written: no retries
    assert rule.match[0].uri.prefix == "/api" and rule.match[0].headers["x-user"].exact == "a"
    assert rule.route[0].destination.port == 8080 and rule.route[0].weight == 100
    server = objects["Gateway"].typed.servers[0]
    assert server.number == 443 and server.tls.credentials == ("shop-cert",)
    pa = objects["PeerAuthentication"].typed
    assert (pa.mode, dict(pa.port_level_mtls), dict(pa.selector)) == ("STRICT", {8080: "DISABLE"}, {"app": "web"})
    with pytest.raises(dataclasses.FrozenInstanceError):
        rule.timeout = None  # type: ignore[misc]


def test_traffic_policy_layers_port_level_then_subset_as_istio(objects):
    dr: DestinationRule = objects["DestinationRule"].typed
    assert dr.policy_for(9090).load_balancer.simple == "RANDOM"
    assert dr.policy_for(8080).load_balancer.simple == "ROUND_ROBIN"  # the port-level entry replaces it
    v2 = dr.policy_for(8080, "v2")
    assert v2.load_balancer.simple == "ROUND_ROBIN"  # inherited: the subset does not set one
    assert v2.outlier_detection is not None  # an empty block turns detection on
    # The subset's empty `tls` replaces ISTIO_MUTUAL and asks for nothing: auto mTLS.
    assert dr.policy_for(8080).client_tls.mode == "ISTIO_MUTUAL" and v2.client_tls is None


def test_the_typed_reading_follows_the_document(objects):
    vs = objects["VirtualService"]
    changed = dataclasses.replace(vs, spec={**vs.spec, "hosts": ["other"]})
    assert changed.typed.hosts == ("other",)
    # The directory source parses in forked workers and pickles what they parsed.
    assert pickle.loads(pickle.dumps(vs)).typed == vs.typed
