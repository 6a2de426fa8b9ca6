"""The parse gate's shortcut for the Kubernetes source (`parse_document(...,
decoded_json=True)`: no normalising copy for documents fresh from the API's JSON) gives
the same verdict as the full path: every check still runs."""
from __future__ import annotations

import copy
import json

import pytest

from controlplane.config.objects import ConfigObject, Origin, Rejection
from controlplane.config.parse import parse_document

DOCS = {
    "service": {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web", "namespace": "shop", "labels": {"app": "web"}},
                "spec": {"ports": [{"name": "http", "port": 80, "targetPort": 8080}], "selector": {"app": "web"}}},
    "pod": {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "web-1", "namespace": "shop", "labels": {"app": "web"}},
            "spec": {"containers": [{"name": "app", "image": "web"}], "serviceAccountName": "web"},
            "status": {"podIP": "10.0.0.7", "phase": "Running"}},
    "virtualservice": {"apiVersion": "networking.istio.io/v1beta1", "kind": "VirtualService",
                       "metadata": {"name": "web", "namespace": "shop"},
                       "spec": {"hosts": ["web"], "http": [{"route": [{"destination": {"host": "web", "subset": "v1"}}],
                                                            "timeout": "2s"}]}},
    "destinationrule": {"apiVersion": "networking.istio.io/v1beta1", "kind": "DestinationRule",
                        "metadata": {"name": "web", "namespace": "shop"},
                        "spec": {"host": "web", "subsets": [{"name": "v1", "labels": {"version": "v1"}}],
                                 "trafficPolicy": {"portLevelSettings": [{"port": {"number": 80},
                                                                          "tls": {"mode": "ISTIO_MUTUAL"}}]}}},
    "bad-timeout": {"apiVersion": "networking.istio.io/v1beta1", "kind": "VirtualService",
                    "metadata": {"name": "bad", "namespace": "shop"},
                    "spec": {"hosts": ["web"], "http": [{"route": [{"destination": {"host": "web"}}], "timeout": "soon"}]}},
    "bad-port": {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "bad", "namespace": "shop"},
                 "spec": {"ports": [{"port": 70000}]}},
    "unknown-field": {"apiVersion": "networking.istio.io/v1beta1", "kind": "DestinationRule",
                      "metadata": {"name": "typo", "namespace": "shop"}, "spec": {"host": "web", "subset": []}},
}


@pytest.mark.parametrize("name", DOCS)
def test_a_decoded_json_document_gets_the_same_verdict_as_a_yaml_one(name):
    doc = json.loads(json.dumps(DOCS[name]))  # as the API server's JSON gives it
    origin = Origin("kubernetes", f"shop/{name}")
    full = parse_document(copy.deepcopy(doc), origin)
    short = parse_document(doc, origin, decoded_json=True)
    assert short == full
    assert isinstance(short, Rejection) == name.startswith(("bad", "unknown")), short
    if isinstance(short, ConfigObject):
        assert short.name == DOCS[name]["metadata"]["name"]
