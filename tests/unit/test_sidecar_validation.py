"""Sidecar at the parse gate: Istio's corpus Sidecars pass, what Istio's ValidateSidecar
rejects is rejected naming the field and Istio's reason, and the typed reading carries
egress hosts, ports, ingress listeners and the outbound traffic policy."""
from __future__ import annotations

import pytest
import yaml

from controlplane.config.objects import ConfigObject, Origin, Rejection
from controlplane.config.parse import parse_document
from tests.support.paths import shared

CORPUS_FILES = [
    "tests/testdata/networking/sidecar-ns-scope/configs.yaml",
    "tests/testdata/networking/sidecar-without-service/configs.yaml",
    "tests/testdata/config/none.yaml",
    "tests/testdata/config/se-example.yaml",
    "tests/testdata/config/se-example-gw.yaml",
    "pkg/config/analysis/analyzers/testdata/sidecar-selector.yaml",
]
# Analyzer inputs are not validated by Istio's tests; Sidecars with nothing but a selector there
# (ns-ambient/namespace-scoped, pod-scoped) are what Istio's webhook refuses, as is
# deprecation.yaml's ingress port without a protocol ("unrecognized protocol").
EMPTY_IN_CORPUS = "pkg/config/analysis/analyzers/testdata/sidecar-default-selector.yaml"


def _sidecars(path):
    for doc in yaml.safe_load_all(shared("corpus", "istio", path).read_text()):
        if isinstance(doc, dict) and doc.get("kind") == "Sidecar":
            yield doc


@pytest.mark.parametrize("path", CORPUS_FILES)
def test_istios_corpus_sidecars_pass_the_gate(path):
    docs = list(_sidecars(path))
    assert docs
    for doc in docs:
        got = parse_document(doc, Origin("file", path))
        assert isinstance(got, ConfigObject), got.message() if isinstance(got, Rejection) else got
        assert got.typed is not None


def test_the_corpus_sidecars_istio_would_refuse_are_refused_as_empty():
    docs = {(d["metadata"]["namespace"], d["metadata"]["name"]): d for d in _sidecars(EMPTY_IN_CORPUS)}
    verdicts = {key: parse_document(doc, Origin("file", EMPTY_IN_CORPUS)) for key, doc in docs.items()}
    refused = {key for key, got in verdicts.items() if isinstance(got, Rejection)}
    assert refused == {key for key, doc in docs.items()
                       if not set(doc.get("spec") or {}) & {"egress", "ingress", "outboundTrafficPolicy"}}
    assert refused and all(verdicts[n].reason == "sidecar: empty configuration provided" for n in refused)


def _sidecar(spec, namespace="shop"):
    return {"apiVersion": "networking.istio.io/v1", "kind": "Sidecar",
            "metadata": {"name": "default", "namespace": namespace}, "spec": spec}


INVALID = [
    ({}, "spec", "sidecar: empty configuration provided"),
    ({"egress": [{"hosts": ["foo.com"]}]}, "spec.egress[0].hosts[0]", "host must be of form namespace/dnsName"),
    ({"egress": [{"hosts": ["bad_ns/*"]}]}, "spec.egress[0].hosts[0]", 'invalid namespace value "bad_ns" in sidecar'),
    ({"egress": [{"hosts": ["./reviews"]}]}, "spec.egress[0].hosts[0]", "short names (non FQDN) are not allowed"),
    ({"egress": [{"hosts": ["./*"]}, {"hosts": ["*/*"], "port": {"number": 80, "protocol": "HTTP"}}]},
     "spec.egress[0]", "the egress listener with empty port should be the last listener"),
    ({"egress": [{"hosts": ["./*"], "port": {"number": 80, "protocol": "HTTP"}},
                 {"hosts": ["./*"], "port": {"number": 80, "protocol": "TCP"}}]},
     "spec.egress[1].port.number", "ports on IP bound listeners must be unique"),
    ({"egress": [{"hosts": ["./*"], "port": {"number": 80, "protocol": "FOO"}}]},
     "spec.egress[0].port.protocol", 'unrecognized protocol "FOO"'),
    ({"egress": [{"hosts": ["./*"], "port": {"number": 0, "protocol": "HTTP"}, "bind": "127.0.0.1"}]},
     "spec.egress[0].bind", "ports with 0 value must have a unix domain socket bind address"),
    ({"egress": [{"hosts": ["./*"], "port": {"number": 80, "protocol": "HTTP"}, "bind": "not-an-ip"}]},
     "spec.egress[0].bind", "is not a valid IP"),
    ({"egress": [{"hosts": ["./*"], "port": {"number": 0, "protocol": "HTTP"}, "bind": "unix://", "captureMode": "IPTABLES"}]},
     "spec.egress[0].captureMode", "captureMode must be DEFAULT/NONE for unix domain socket listeners"),
    ({"ingress": [{"port": {"number": 9080, "protocol": "HTTP", "name": "http"}, "defaultEndpoint": "10.0.0.1:80"}]},
     "spec.ingress[0].defaultEndpoint", "defaultEndpoint must be of form 127.0.0.1:<port>"),
    ({"ingress": [{"port": {"number": 9080, "protocol": "HTTP", "name": "http"}, "tls": {"mode": "SIMPLE"}}]},
     "spec.ingress[0].tls", "server cannot have TLS settings for non HTTPS/TLS ports"),
    ({"ingress": [{"port": {"number": 9443, "protocol": "HTTPS", "name": "https"}, "tls": {"mode": "ISTIO_MUTUAL"}}]},
     "spec.ingress[0].tls.mode", "cannot set mode to ISTIO_MUTUAL in sidecar ingress tls"),
    ({"outboundTrafficPolicy": {"mode": "REGISTRY_ONLY", "egressProxy": {"host": "egress.example.com",
                                                                        "port": {"number": 80}}}},
     "spec.outboundTrafficPolicy.egressProxy", "egress_proxy must be set only with ALLOW_ANY"),
    ({"workloadSelector": {"labels": {"app": "re*"}}, "egress": [{"hosts": ["./*"]}]},
     "spec.workloadSelector.labels[app]", "wildcard is not supported in selector"),
]


@pytest.mark.parametrize(("spec", "field", "reason"), INVALID)
def test_what_istio_rejects_is_rejected_naming_the_field(spec, field, reason):
    got = parse_document(_sidecar(spec), Origin("file", "sidecar.yaml"))
    assert isinstance(got, Rejection), got
    assert any(e.field == field and reason in e.reason for e in got.errors), [str(e) for e in got.errors]


NOT_SERVED = [
    ({"egress": [{"hosts": ["./*"], "bind": "127.0.0.1"}]}, "spec.egress[0].bind"),  # the catch-all
    # ingress bind, captureMode NONE, tls, connectionPool and unix:// endpoints are served
    # (tests/unit/test_sidecar_ingress.py); a tls without a mode to terminate is not
    ({"ingress": [{"port": {"number": 9443, "protocol": "HTTPS", "name": "https"}, "defaultEndpoint": "127.0.0.1:8443",
                   "tls": {"serverCertificate": "/etc/c.pem", "privateKey": "/etc/k.pem"}}]},
     "spec.ingress[0].tls.mode"),
]


@pytest.mark.parametrize(("spec", "field"), NOT_SERVED)
def test_what_istio_accepts_but_meshd_does_not_serve_is_refused_naming_the_field(spec, field):
    got = parse_document(_sidecar(spec), Origin("file", "sidecar.yaml"))
    assert isinstance(got, Rejection), got
    assert [e.reason for e in got.errors if e.field == field][0].endswith(
        "meshd does not serve this field of a Sidecar yet (docs/sidecar-scope.md)"), [str(e) for e in got.errors]


def test_the_typed_reading():
    spec = {
        "workloadSelector": {"labels": {"app": "ratings"}},
        "egress": [{"port": {"number": 9080, "protocol": "HTTP", "name": "egresshttp"}, "captureMode": "IPTABLES",
                    "hosts": ["prod-us1/*"]},
                   {"hosts": ["istio-system/*", "~/*"]}],
        "ingress": [{"port": {"number": 9080, "protocol": "HTTP", "name": "somename"},
                     "defaultEndpoint": "127.0.0.1:8080"}],
        "outboundTrafficPolicy": {"mode": "ALLOW_ANY", "egressProxy": {"host": "egress.example.com",
                                                                       "port": {"number": 3128}}},
    }
    got = parse_document(_sidecar(spec), Origin("file", "sidecar.yaml"))
    assert isinstance(got, ConfigObject), got
    sc = got.typed
    assert sc.workload_selector == {"app": "ratings"}
    assert sc.egress[0].port.number == 9080 and sc.egress[0].port.protocol == "HTTP"
    assert (sc.egress[0].bind, sc.egress[0].capture_mode) == ("", "IPTABLES")
    assert sc.egress[1].port is None and sc.egress[1].hosts == ("istio-system/*", "~/*")
    assert sc.ingress[0].default_endpoint == "127.0.0.1:8080" and sc.ingress[0].port.number == 9080
    assert sc.outbound_traffic_policy.mode == "ALLOW_ANY"
    assert sc.outbound_traffic_policy.egress_proxy.host == "egress.example.com"
    assert sc.outbound_traffic_policy.egress_proxy.port == 3128
