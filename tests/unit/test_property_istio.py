"""Property: any Istio object is either rejected by the parse gate with a message, or turns
into configuration that Envoy itself (`envoy --mode validate`) accepts.

Hypothesis generates VirtualService, DestinationRule, Gateway and PeerAuthentication shapes
with random (often nonsensical) field values on top of the "Istio in Action" layout; the
accepted ones are built for a sidecar and the ingress gateway and validated by real Envoy.
"""
from __future__ import annotations

import concurrent.futures
import json
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from controlplane.config.objects import ConfigObject, Origin, Rejection
from controlplane.config.parse import parse_document
from controlplane.config.store import ConfigStore
from controlplane.model.mesh import build_mesh
from tests.support.chapter9 import GATEWAY_PROXY, LAYOUT, NS, WEBAPP_PROXY
from tests.support.configs import objects_from_yaml
from tests.support.static_xds import sidecar_config

# --- strategies ------------------------------------------------------------------------

text = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=12)
dns = st.from_regex(r"[a-z][a-z0-9-]{0,10}", fullmatch=True)
host = st.one_of(st.sampled_from(["webapp", "catalog", "sleep.default.svc.cluster.local", "*.example.com",
                                  "webapp.istioinaction.io", "*", "catalog.istioinaction.svc.cluster.local"]),
                 dns, text)
anyint = st.one_of(st.integers(-5, 70000), st.sampled_from([0, 80, 81, 443, 8080, 2**31, 2**64]))
duration = st.one_of(st.sampled_from(["1s", "0s", "100ms", "2h", "-1s", "1.5s", "abc", "", "99999999999s"]), text)
percent = st.one_of(st.floats(-10, 200, allow_nan=False), st.integers(-1, 101))
scalar = st.one_of(text, anyint, st.booleans(), st.none(), percent)


def maybe(d: dict) -> st.SearchStrategy:
    """A fixed_dictionaries with every key optional."""
    return st.fixed_dictionaries({}, optional=d)


string_match = st.one_of(
    st.fixed_dictionaries({"prefix": st.one_of(st.just("/"), text)}),
    st.fixed_dictionaries({"exact": text}),
    st.fixed_dictionaries({"regex": st.one_of(st.sampled_from(["/api/.*", "[", "(a|b", ".*"]), text)}),
    scalar,
)
destination = maybe({
    "host": host,
    "subset": st.one_of(st.sampled_from(["v1", "v2"]), text),
    "port": st.one_of(maybe({"number": anyint}), scalar),
})
http_route = maybe({
    "name": text,
    "match": st.lists(maybe({"uri": string_match, "headers": st.dictionaries(dns, string_match, max_size=2),
                             "port": anyint, "ignoreUriCase": st.booleans()}), max_size=2),
    "route": st.lists(maybe({"destination": destination, "weight": anyint}), max_size=3),
    "redirect": maybe({"uri": text, "authority": text, "redirectCode": anyint, "port": anyint}),
    "directResponse": maybe({"status": anyint, "body": maybe({"string": text})}),
    "rewrite": maybe({"uri": text, "authority": text}),
    "timeout": duration,
    "retries": maybe({"attempts": anyint, "perTryTimeout": duration, "retryOn": text}),
    "fault": maybe({"abort": maybe({"httpStatus": anyint, "percentage": maybe({"value": percent})}),
                    "delay": maybe({"fixedDelay": duration, "percentage": maybe({"value": percent})})}),
    "mirror": destination,
    "mirrorPercentage": maybe({"value": percent}),
    "headers": maybe({"request": maybe({"set": st.dictionaries(dns, text, max_size=2)})}),
})
virtual_service = st.fixed_dictionaries({
    "hosts": st.lists(host, max_size=3),
}, optional={
    "gateways": st.lists(st.sampled_from(["coolstore-gateway", "mesh", f"{NS}/coolstore-gateway", "nope"]), max_size=2),
    "http": st.lists(http_route, max_size=3),
    "tcp": st.lists(maybe({"match": st.lists(maybe({"port": anyint}), max_size=1),
                           "route": st.lists(maybe({"destination": destination, "weight": anyint}), max_size=2)}),
                    max_size=2),
})
traffic_policy = maybe({
    "loadBalancer": st.one_of(maybe({"simple": st.one_of(st.sampled_from(["ROUND_ROBIN", "LEAST_REQUEST", "RANDOM"]), text)}),
                              maybe({"consistentHash": maybe({"httpHeaderName": text, "minimumRingSize": anyint})})),
    "connectionPool": maybe({"tcp": maybe({"maxConnections": anyint, "connectTimeout": duration}),
                             "http": maybe({"http1MaxPendingRequests": anyint, "idleTimeout": duration,
                                            "maxRequestsPerConnection": anyint})}),
    "outlierDetection": maybe({"consecutive5xxErrors": anyint, "interval": duration, "baseEjectionTime": duration,
                               "maxEjectionPercent": anyint}),
    "tls": maybe({"mode": st.one_of(st.sampled_from(["DISABLE", "SIMPLE", "MUTUAL", "ISTIO_MUTUAL"]), text),
                  "sni": text, "credentialName": text}),
})
destination_rule = st.fixed_dictionaries({"host": host}, optional={
    "trafficPolicy": traffic_policy,
    "subsets": st.lists(maybe({"name": st.one_of(st.sampled_from(["v1", "v2"]), text),
                               "labels": st.dictionaries(st.sampled_from(["version", "app"]), text, max_size=2),
                               "trafficPolicy": traffic_policy}), max_size=3),
})
gateway = maybe({
    "selector": st.one_of(st.just({"istio": "ingressgateway"}), st.dictionaries(dns, text, max_size=1)),
    "servers": st.lists(maybe({
        "port": maybe({"number": anyint, "name": text,
                       "protocol": st.one_of(st.sampled_from(["HTTP", "HTTPS", "TCP", "TLS", "HTTP2", "GRPC"]), text)}),
        "hosts": st.lists(st.one_of(host, st.just("*/webapp.istioinaction.io")), max_size=2),
        "tls": maybe({"mode": st.one_of(st.sampled_from(["SIMPLE", "MUTUAL", "PASSTHROUGH", "ISTIO_MUTUAL"]), text),
                      "credentialName": text, "httpsRedirect": st.booleans()}),
    }), max_size=3),
})
peer_authentication = maybe({
    "selector": maybe({"matchLabels": st.dictionaries(st.sampled_from(["app"]), st.sampled_from(["webapp", "catalog"]), max_size=1)}),
    "mtls": maybe({"mode": st.one_of(st.sampled_from(["STRICT", "PERMISSIVE", "DISABLE", "UNSET"]), text)}),
    "portLevelMtls": st.dictionaries(st.one_of(st.sampled_from(["8080", "3000"]), text),
                                     maybe({"mode": st.sampled_from(["STRICT", "DISABLE", "bogus"])}), max_size=2),
})
istio_object = st.tuples(
    st.sampled_from(["VirtualService", "DestinationRule", "Gateway", "PeerAuthentication"]),
    st.sampled_from([NS, "default", "istio-system"]),
    st.data(),
)
SPEC = {"VirtualService": virtual_service, "DestinationRule": destination_rule, "Gateway": gateway,
        "PeerAuthentication": peer_authentication}
API = {"PeerAuthentication": "security.istio.io/v1"}


def document(kind: str, namespace: str, spec) -> dict:
    return {"apiVersion": API.get(kind, "networking.istio.io/v1"), "kind": kind,
            "metadata": {"name": f"gen-{kind.lower()}", "namespace": namespace}, "spec": spec}


# --- the property ------------------------------------------------------------------------

LAYOUT_OBJECTS = objects_from_yaml(LAYOUT, "layout.yaml")


def _validate(config: dict) -> tuple[int, str]:
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(config, f)
    try:
        p = subprocess.run([shutil.which("envoy"), "--mode", "validate", "-c", f.name, "--log-level", "warn",
                            "--use-dynamic-base-id"], capture_output=True, text=True, timeout=120)
        return p.returncode, (p.stdout + p.stderr)[-3000:]
    finally:
        Path(f.name).unlink()


@pytest.mark.skipif(shutil.which("envoy") is None, reason="envoy binary not installed")
@settings(max_examples=40, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(st.lists(istio_object, min_size=1, max_size=3))
def test_random_istio_objects_are_rejected_or_valid_for_envoy(objs):
    accepted, rejected = [], []
    for i, (kind, namespace, data) in enumerate(objs):
        doc = document(kind, namespace, data.draw(SPEC[kind], label=kind))
        doc["metadata"]["name"] += f"-{i}"
        parsed = parse_document(yaml.safe_load(yaml.safe_dump(doc)), Origin("file", "gen.yaml", i))
        if isinstance(parsed, Rejection):
            assert parsed.message().strip(), doc
            assert parsed.reason, doc
            rejected.append(parsed)
        else:
            assert isinstance(parsed, ConfigObject), (doc, parsed)
            accepted.append(parsed)
    event(f"accepted {len(accepted)} of {len(objs)}")
    if not accepted:
        return
    store = ConfigStore()
    store.replace_location("layout.yaml", LAYOUT_OBJECTS)
    store.replace_location("gen.yaml", accepted)
    mesh = build_mesh(store.snapshot())
    with tempfile.TemporaryDirectory() as tmp:
        configs = [sidecar_config(mesh, proxy, Path(tmp)) for proxy in (WEBAPP_PROXY, GATEWAY_PROXY)]
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        results = list(pool.map(_validate, configs))
    for (rc, out), proxy in zip(results, ("sidecar", "gateway"), strict=True):
        assert rc == 0, f"envoy rejects {proxy} config built from accepted objects " \
                        f"{[o.spec for o in accepted]}:\n{out}"
