"""Istio's FakeDiscoveryServer inputs (tests/testdata/networking/*) through meshd.

Every document goes through the parse gate `meshd serve` uses; each must be served except
the ones named here with the reason. Then the proxy Istio's lds_test connects gets what
that test asserts, from meshd's generators (tests/support/registry_corpus.py; the table in
docs/registry-corpus.md is its output).
"""
from __future__ import annotations

import pytest

from tests.support.registry_corpus import CASES, NETWORKING, run

BY_NAME = {c.name: c for c in CASES}
# The documents meshd does not serve, and why (everything else must be "served").
NOT_SERVED = {
    "envoyfilter-without-service": {},  # its EnvoyFilter is served (tests/unit/test_envoy_filter_served.py)
    # Kubernetes would refuse the name too (a DNS-1123 subdomain); Istio's file-based test
    # registry does not check object names.
    "ingress-gateway": {"ServiceEntry istio-system/BACKEND": 'rejected: ingress-gateway/configs.yaml: ServiceEntry '
                        'istio-system/BACKEND: metadata.name: Invalid value: "BACKEND"'},
    "sidecar-ns-scope": {},
    "sidecar-without-service": {},
}


def test_every_networking_input_has_a_case():
    assert sorted(p.name for p in NETWORKING.iterdir() if (p / "configs.yaml").exists()) == sorted(BY_NAME)
    assert sorted(NOT_SERVED) == sorted(BY_NAME)


@pytest.mark.parametrize("name", sorted(BY_NAME))
def test_parse_gate_serves_every_document_but_the_named_ones(name):
    out = run(BY_NAME[name])
    assert len(out.documents) >= 4
    not_served = {doc: outcome for doc, outcome in out.documents if outcome != "served"}
    assert sorted(not_served) == sorted(NOT_SERVED[name]), not_served
    for doc, start in NOT_SERVED[name].items():
        assert not_served[doc].startswith(start), not_served[doc]


def _eds_clusters(out) -> list[str]:
    return [c for c in out.clusters if c.startswith("outbound|")]


def test_ingress_gateway_listeners():
    """TestLDSWithIngressGateway: listeners for 80 and 443, three filter chains on 443
    (the SIMPLE server, the passthrough server, the TLS route's server)."""
    out = run(BY_NAME["ingress-gateway"])
    assert out.listeners == {"0.0.0.0_80": 1, "0.0.0.0_443": 3}
    assert "istio-ingressgateway.istio-system.svc.cluster.local (ServiceEntry)" in out.services


def test_envoy_filter_is_not_applied():
    """TestLDSEnvoyFilterWithWorkloadSelector expects a Lua filter for the selected
    workload; meshd does not serve EnvoyFilter (reported unsupported above), so its
    0.0.0.0_8081 listener is the plain one."""
    out = run(BY_NAME["envoyfilter-without-service"])
    assert out.listeners["0.0.0.0_8081"] == 1
    assert _eds_clusters(out) == ["outbound|8081||http1.ns1.svc.cluster.local"]


def test_root_namespace_sidecar_scopes_a_namespace():
    """TestLDSWithDefaultSidecar: the root namespace's Sidecar (`./*`) limits a ns1 proxy to
    ns1: 4 listeners (HTTP 8080, TCP 2.1.1.3:3306, virtualInbound, virtualOutbound), 9
    clusters, 3 virtual hosts in route 8080 (http1, http2, and the passthrough one)."""
    out = run(BY_NAME["sidecar-ns-scope"])
    assert sorted(out.listeners) == ["0.0.0.0_8080", "2.1.1.3_3306", "virtualInbound", "virtualOutbound"]
    assert out.clusters == sorted([
        "BlackHoleCluster", "InboundPassthroughCluster", "PassthroughCluster", "inbound|8080||",
        "outbound|3306||tcp1.ns1.svc.cluster.local", "outbound|8080|v1|http1.ns1.svc.cluster.local",
        "outbound|8080|v2|http1.ns1.svc.cluster.local", "outbound|8080||http1.ns1.svc.cluster.local",
        "outbound|8080||http2.ns1.svc.cluster.local"])
    assert out.routes["8080"] == 3


def test_workload_sidecar_without_service():
    """TestLDSWithSidecarForWorkloadWithoutService: egress `ns1/*` gives the consumer only
    http1.ns1 (listener 0.0.0.0_8081, one EDS cluster) besides virtualInbound."""
    out = run(BY_NAME["sidecar-without-service"])
    assert out.listeners["0.0.0.0_8081"] == 1 and "virtualInbound" in out.listeners
    assert _eds_clusters(out) == ["outbound|8081||http1.ns1.svc.cluster.local"]


def test_sidecar_ingress_port_without_service():
    """The same test: the Sidecar's ingress port 9080 (defaultEndpoint 127.0.0.1:8080) is a
    filter chain of virtualInbound although no Service selects the workload."""
    out = run(BY_NAME["sidecar-without-service"])
    assert 9080 in out.chain_ports["virtualInbound"], out.chain_ports


def test_docs_table_is_current():
    """docs/registry-corpus.md shows what meshd generates for these inputs today."""
    from tests.support.paths import REPO
    from tests.support.registry_corpus import markdown

    assert markdown() in (REPO / "docs" / "registry-corpus.md").read_text(), \
        "docs/registry-corpus.md is stale: replace its table with `python -m tests.support.registry_corpus`"


def test_weighted_service_entry_endpoints():
    """pilot/pkg/xds/eds_test.go TestEdsWeightedServiceEntry on
    tests/testdata/config/static-weighted-se.yaml: endpoint weights as written (none is 1),
    a locality's weight their sum: a = 9 (1 + 8), b = 3."""
    from controlplane import names
    from controlplane.generators import builders
    from controlplane.model.proxy import parse_node
    from tests.support.registry_corpus import load

    path = NETWORKING.parent / "config" / "static-weighted-se.yaml"
    _, mesh = load([("static-weighted-se.yaml", path.read_bytes())])
    proxy = parse_node("sidecar~10.0.0.9~client.default~default.svc.cluster.local", {"NAMESPACE": "default"})
    got = {c.cluster_name: c for _, c in builders()[names.ENDPOINT](mesh, proxy)}
    cla = got["outbound|80||weighted.static.svc.cluster.local"]
    localities = {e.locality.region: e.load_balancing_weight.value for e in cla.endpoints}
    weights = {lb.endpoint.address.socket_address.address: lb.load_balancing_weight.value
               for e in cla.endpoints for lb in e.lb_endpoints}
    assert localities == {"a": 9, "b": 3}
    assert weights == {"3.3.3.3": 1, "2.2.2.2": 8, "1.1.1.1": 3}
