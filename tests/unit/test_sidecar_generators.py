"""Generators for sidecar proxies (REDIRECT interception), PeerAuthentication on the
inbound side and auto mTLS on the client side of sidecars and gateways.

The layout is "Istio in Action" chapter 9: `webapp` and `catalog` in `istioinaction`
with sidecars (pods labelled `security.istio.io/tlsMode: istio`), `sleep` in `default`
without one, the ingress gateway in `istio-system`. Expectations follow what istiod sends
(listener_inbound.go, filterchain_options.go, cluster_tls.go, httproute.go).
"""
from __future__ import annotations

import pytest
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import base_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2
from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2
from envoy.extensions.transport_sockets.tls.v3 import tls_pb2
from google.protobuf import json_format

from controlplane.generators import clusters, endpoints, filter_chains, listeners, routes
from controlplane.generators.resources import pack
from controlplane.model.proxy import parse_node
from tests.support.chapter9 import (
    CATALOG,
    CATALOG_HOST,
    CATALOG_PROXY,
    GATEWAY_PROXY,
    LAYOUT,
    NS,
    RICH,
    SLEEP_PROXY,
    STRICT_MESH,
    TCP_SERVICES,
    WEBAPP,
    WEBAPP_HOST,
    WEBAPP_PROXY,
    dr,
    mesh,
    pa,
    rich_drs,
)
from tests.support.configs import mesh_from_yaml
from tests.support.envoy import envoy_validate
from tests.support.static_xds import self_signed, sidecar_config

MTLS_ALPN = ["istio", "istio-peer-exchange", "istio-http/1.0", "istio-http/1.1", "istio-h2"]


def by_name(items):
    return {name: msg for name, msg in items}


def unpack(any_msg, cls):
    out = cls()
    assert any_msg.Unpack(out), any_msg.type_url
    return out


def hcm_of(chain) -> hcm_pb2.HttpConnectionManager:
    [f] = [f for f in chain.filters if f.name == "envoy.filters.network.http_connection_manager"]
    return unpack(f.typed_config, hcm_pb2.HttpConnectionManager)


def tcp_of(chain) -> tcp_proxy_pb2.TcpProxy:
    [f] = [f for f in chain.filters if f.name == "envoy.filters.network.tcp_proxy"]
    return unpack(f.typed_config, tcp_proxy_pb2.TcpProxy)


def lds(m, proxy=WEBAPP_PROXY) -> dict[str, listener_pb2.Listener]:
    return by_name(listeners.build(m, proxy))


def chain_summary(lst, port: int | None = None) -> list[tuple]:
    """(transport, alpn, mTLS?, filter) per chain of `port` (None: chains without a port)."""
    out = []
    for c in lst.filter_chains:
        m = c.filter_chain_match
        p = m.destination_port.value if m.HasField("destination_port") else None
        if p != port:
            continue
        kind = "http" if any(f.name.endswith("http_connection_manager") for f in c.filters) else "tcp"
        out.append((m.transport_protocol, tuple(m.application_protocols), c.HasField("transport_socket"), kind))
    return out


# --- LDS: names and the outbound side ------------------------------------------------


def test_sidecar_listener_names():
    assert list(lds(mesh())) == ["0.0.0.0_80", "0.0.0.0_81", "virtualOutbound", "virtualInbound"]


def test_virtual_outbound_passes_unknown_traffic_through():
    vo = lds(mesh())["virtualOutbound"]
    assert vo.address.socket_address.port_value == 15001 and vo.use_original_dst.value is True
    assert vo.traffic_direction == base_pb2.OUTBOUND
    blackhole, catchall = vo.filter_chains
    assert blackhole.name == "virtualOutbound-blackhole" and blackhole.filter_chain_match.destination_port.value == 15001
    assert tcp_of(blackhole).cluster == "BlackHoleCluster"
    assert catchall.name == "virtualOutbound-catchall-tcp" and not catchall.HasField("filter_chain_match")
    assert tcp_of(catchall).cluster == "PassthroughCluster"


def test_outbound_http_listener_uses_rds_per_port():
    lst = lds(mesh())["0.0.0.0_80"]
    assert lst.bind_to_port.value is False and lst.traffic_direction == base_pb2.OUTBOUND
    assert not lst.HasField("use_original_dst")
    [chain] = lst.filter_chains
    assert chain.filter_chain_match.transport_protocol == "raw_buffer"
    assert list(chain.filter_chain_match.application_protocols) == ["http/1.1", "h2c"]
    hcm = hcm_of(chain)
    assert hcm.rds.route_config_name == "80" and hcm.rds.config_source.HasField("ads")
    assert hcm.stat_prefix == "outbound_0.0.0.0_80"
    assert hcm.use_remote_address.value is False
    assert hcm.http_filters[-1].name == "envoy.filters.http.router"
    # what is not plaintext HTTP passes through
    assert lst.default_filter_chain.name == "PassthroughFilterChain"
    assert tcp_of(lst.default_filter_chain).cluster == "PassthroughCluster"
    assert [f.name for f in lst.listener_filters] == [
        "envoy.filters.listener.tls_inspector", "envoy.filters.listener.http_inspector"]


def test_outbound_tcp_listeners_and_conflicts():
    out = lds(mesh(TCP_SERVICES))
    mysql = out["10.96.0.30_3306"]
    assert mysql.bind_to_port.value is False and not mysql.listener_filters
    [chain] = mysql.filter_chains
    assert not chain.HasField("filter_chain_match")
    assert tcp_of(chain).cluster == "outbound|3306||mysql.default.svc.cluster.local"
    # two TCP services on one port, neither with a cluster IP: the oldest keeps it
    [legacy] = out["0.0.0.0_7000"].filter_chains
    assert tcp_of(legacy).cluster == "outbound|7000||legacy-b.default.svc.cluster.local"
    # HTTP and TCP on one port: told apart by the http_inspector, TCP is the fallback
    mixed = out["0.0.0.0_9000"]
    [http_chain] = mixed.filter_chains
    assert hcm_of(http_chain).rds.route_config_name == "9000"
    assert tcp_of(mixed.default_filter_chain).cluster == "outbound|9000||mixed-tcp.default.svc.cluster.local"
    for lst in out.values():
        assert filter_chains.duplicate_matches(lst.filter_chains) == [], lst.name


def test_headless_tcp_service_gets_a_listener_per_pod():
    headless = """
apiVersion: v1
kind: Service
metadata: {name: db, namespace: istioinaction}
spec:
  clusterIP: None
  selector: {app: db}
  ports: [{name: tcp, port: 5432}]
---
apiVersion: v1
kind: Pod
metadata: {name: db-0, namespace: istioinaction, labels: {app: db, security.istio.io/tlsMode: istio}}
spec: {containers: [{name: db}]}
status: {podIP: 10.1.0.40}
---
apiVersion: v1
kind: Pod
metadata: {name: db-1, namespace: istioinaction, labels: {app: db, security.istio.io/tlsMode: istio}}
spec: {containers: [{name: db}]}
status: {podIP: 10.1.0.41}
"""
    m = mesh(headless)
    assert {"10.1.0.40_5432", "10.1.0.41_5432"} <= set(lds(m))
    db_proxy = parse_node(f"sidecar~10.1.0.40~db-0.{NS}~{NS}.svc.cluster.local", {"NAMESPACE": NS, "LABELS": {"app": "db"}})
    own = lds(m, db_proxy)
    assert "10.1.0.41_5432" in own and "10.1.0.40_5432" not in own  # never its own address
    # sidecars dial the pod the application chose; gateways load balance over EDS
    name = f"outbound|5432||db.{NS}.svc.cluster.local"
    c = by_name(clusters.build(m, WEBAPP_PROXY))[name]
    assert c.type == cluster_pb2.Cluster.ORIGINAL_DST and c.lb_policy == cluster_pb2.Cluster.CLUSTER_PROVIDED
    assert c.HasField("transport_socket") and not c.transport_socket_matches  # every pod has a sidecar
    assert name not in by_name(endpoints.build(m, WEBAPP_PROXY))
    assert by_name(clusters.build(m, GATEWAY_PROXY))[name].type == cluster_pb2.Cluster.EDS
    assert name in by_name(endpoints.build(m, GATEWAY_PROXY))


def test_virtual_service_tcp_route_on_sidecars():
    vs = """
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: mysql, namespace: default}
spec:
  hosts: [mysql]
  tcp:
  - match: [{port: 3306, sourceLabels: {app: nobody}}]
    route: [{destination: {host: nowhere}}]
  - match: [{port: 3306}]
    route:
    - {destination: {host: mysql, subset: v1}, weight: 80}
    - {destination: {host: mysql, subset: v2}, weight: 20}
"""
    [chain] = lds(mesh(TCP_SERVICES, vs))["10.96.0.30_3306"].filter_chains
    tcp = tcp_of(chain)
    assert [(c.name, c.weight) for c in tcp.weighted_clusters.clusters] == [
        ("outbound|3306|v1|mysql.default.svc.cluster.local", 80),
        ("outbound|3306|v2|mysql.default.svc.cluster.local", 20),
    ]


def test_routers_get_no_sidecar_listeners():
    assert "virtualInbound" not in lds(mesh(), GATEWAY_PROXY)


# --- LDS: the inbound side and PeerAuthentication ------------------------------------


def test_virtual_inbound_listener():
    vi = lds(mesh())["virtualInbound"]
    assert vi.address.socket_address.port_value == 15006
    assert vi.traffic_direction == base_pb2.INBOUND
    # original_dst restores the address; handing off to the listener of that address would
    # send inbound traffic into the outbound 0.0.0.0_<port> listeners (istiod doesn't either)
    assert not vi.HasField("use_original_dst")
    assert [f.name for f in vi.listener_filters] == [
        "envoy.filters.listener.original_dst",
        "envoy.filters.listener.tls_inspector",
        "envoy.filters.listener.http_inspector",
    ]
    http_inspector = vi.listener_filters[2]
    disabled = sorted(r.destination_port_range.start for r in http_inspector.filter_disabled.or_match.rules)
    assert disabled == [8080, 15006]  # declared ports need no sniffing
    assert vi.filter_chains[0].name == "virtualInbound-blackhole"
    assert vi.filter_chains[0].filter_chain_match.destination_port.value == 15006


def test_default_is_permissive():
    vi = lds(mesh())["virtualInbound"]
    assert chain_summary(vi, 8080) == [
        ("tls", tuple(MTLS_ALPN), True, "http"),
        ("raw_buffer", (), False, "http"),
    ]
    assert chain_summary(vi) == [
        ("tls", ("istio-http/1.0", "istio-http/1.1", "istio-h2"), True, "http"),
        ("raw_buffer", ("http/1.1", "h2c"), False, "http"),
        ("tls", ("istio-peer-exchange", "istio"), True, "tcp"),
        ("raw_buffer", (), False, "tcp"),
        ("tls", (), False, "tcp"),
    ]


def test_strict_accepts_only_mtls():
    vi = lds(mesh(STRICT_MESH))["virtualInbound"]
    assert chain_summary(vi, 8080) == [("tls", (), True, "http")]
    assert chain_summary(vi) == [
        ("tls", ("istio-http/1.0", "istio-http/1.1", "istio-h2"), True, "http"),
        ("tls", (), True, "tcp"),
    ]
    [chain] = [c for c in vi.filter_chains if c.filter_chain_match.destination_port.value == 8080]
    assert chain.name == "0.0.0.0_8080"
    assert chain.transport_socket.name == "envoy.transport_sockets.tls"
    ctx = unpack(chain.transport_socket.typed_config, tls_pb2.DownstreamTlsContext)
    assert ctx.require_client_certificate.value is True
    common = ctx.common_tls_context
    assert [s.name for s in common.tls_certificate_sds_secret_configs] == ["default"]
    assert common.combined_validation_context.validation_context_sds_secret_config.name == "ROOTCA"
    assert list(common.alpn_protocols) == ["h2", "http/1.1"]
    # no plaintext HTTP to sniff anywhere: no http_inspector
    assert [f.name for f in vi.listener_filters] == [
        "envoy.filters.listener.original_dst", "envoy.filters.listener.tls_inspector"]


def test_disable_accepts_only_plaintext():
    vi = lds(mesh(STRICT_MESH, pa("default", NS, "DISABLE")))["virtualInbound"]
    assert chain_summary(vi, 8080) == [("raw_buffer", (), False, "http")]
    assert chain_summary(vi) == [("raw_buffer", ("http/1.1", "h2c"), False, "http"), ("raw_buffer", (), False, "tcp")]
    assert all(not c.HasField("transport_socket") for c in vi.filter_chains)


def test_port_level_mtls():
    policy = pa("catalog", NS, "STRICT", selector={"app": "catalog"}, ports={3001: "PERMISSIVE", 9999: "DISABLE"})
    vi = lds(mesh(policy), CATALOG_PROXY)["virtualInbound"]
    assert chain_summary(vi, 3000) == [("tls", (), True, "http")]
    assert chain_summary(vi, 3001) == [("tls", tuple(MTLS_ALPN), True, "http"), ("raw_buffer", (), False, "http")]
    # a port no service declares: passthrough chains with the port's mode
    assert chain_summary(vi, 9999) == [("raw_buffer", ("http/1.1", "h2c"), False, "http"), ("raw_buffer", (), False, "tcp")]
    assert chain_summary(vi)[0][0] == "tls" and len(chain_summary(vi)) == 2  # workload STRICT
    # the http_inspector runs only where plaintext HTTP may arrive
    [hi] = [f for f in vi.listener_filters if f.name.endswith("http_inspector")]
    assert hi.filter_disabled.not_match.destination_port_range.start == 9999
    # the selector policy does not reach webapp
    assert chain_summary(lds(mesh(policy))["virtualInbound"], 8080)[1][0] == "raw_buffer"


def test_inbound_http_chain_routes_to_the_inbound_cluster():
    vi = lds(mesh())["virtualInbound"]
    chain = [c for c in vi.filter_chains if c.filter_chain_match.destination_port.value == 8080][0]
    hcm = hcm_of(chain)
    assert hcm.stat_prefix == "inbound_0.0.0.0_8080"
    assert hcm.server_name == "istio-envoy"
    assert hcm.forward_client_cert_details == hcm_pb2.HttpConnectionManager.APPEND_FORWARD
    rc = hcm.route_config
    assert rc.name == "inbound|8080||" and rc.validate_clusters.value is False
    [vh] = rc.virtual_hosts
    assert vh.name == "inbound|http|80" and list(vh.domains) == ["*"]
    [route] = vh.routes
    assert route.route.cluster == "inbound|8080||" and route.route.timeout.ToSeconds() == 0
    assert route.decorator.operation == f"{WEBAPP_HOST}:80/*"
    # passthrough chains go to InboundPassthroughCluster
    catchall = [c for c in vi.filter_chains if c.name == "virtualInbound-catchall-http"][0]
    assert hcm_of(catchall).route_config.virtual_hosts[0].routes[0].route.cluster == "InboundPassthroughCluster"
    tcp_catchall = [c for c in vi.filter_chains if c.name == "virtualInbound"][0]
    assert tcp_of(tcp_catchall).cluster == "InboundPassthroughCluster"


def test_inbound_tcp_port_chains():
    tcp_svc = f"""
apiVersion: v1
kind: Service
metadata: {{name: webapp-tcp, namespace: {NS}}}
spec:
  selector: {{app: webapp}}
  ports: [{{name: tcp, port: 9000, targetPort: 9090}}]
"""
    vi = lds(mesh(tcp_svc))["virtualInbound"]
    assert chain_summary(vi, 9090) == [
        ("tls", tuple(MTLS_ALPN), True, "tcp"),
        ("raw_buffer", (), False, "tcp"),
        ("tls", (), False, "tcp"),  # TLS from outside the mesh goes to the app as it is
    ]
    assert all(tcp_of(c).cluster == "inbound|9090||" for c in vi.filter_chains
               if c.filter_chain_match.destination_port.value == 9090)
    assert chain_summary(lds(mesh(tcp_svc, STRICT_MESH))["virtualInbound"], 9090) == [("tls", (), True, "tcp")]


def test_no_duplicate_matches_with_two_services_on_one_target_port():
    """PERMISSIVE, and two services (one HTTP, one TCP) target webapp's port 8080: one set of
    chains for the port, from the oldest service, and Envoy gets no duplicate match."""
    clash = f"""
apiVersion: v1
kind: Service
metadata: {{name: webapp-old, namespace: {NS}, creationTimestamp: "2020-01-01T00:00:00Z"}}
spec:
  selector: {{app: webapp}}
  ports: [{{name: tcp, port: 7070, targetPort: 8080}}, {{name: http-alt, port: 7071, targetPort: 8080}}]
---
{pa("webapp", NS, "PERMISSIVE", selector={"app": "webapp"}, ports={8080: "PERMISSIVE"})}
"""
    vi = lds(mesh(clash))["virtualInbound"]
    assert filter_chains.duplicate_matches(vi.filter_chains) == []
    keys = [filter_chains.match_key(c) for c in vi.filter_chains]
    assert len(keys) == len(set(keys))
    # the oldest service (webapp-old, TCP) decides the protocol of the port
    assert chain_summary(vi, 8080) == [
        ("tls", tuple(MTLS_ALPN), True, "tcp"), ("raw_buffer", (), False, "tcp"), ("tls", (), False, "tcp")]
    assert [n for n, _ in clusters.build(mesh(clash), WEBAPP_PROXY) if n.startswith("inbound")] == ["inbound|8080||"]


def test_reserved_ports_are_never_served():
    odd = f"""
apiVersion: v1
kind: Service
metadata: {{name: odd, namespace: {NS}}}
spec:
  selector: {{app: webapp}}
  ports: [{{name: tcp, port: 15006}}, {{name: http, port: 15021}}, {{name: http-stats, port: 15090}}]
"""
    out = lds(mesh(odd))
    assert "0.0.0.0_15021" not in out and "0.0.0.0_15090" not in out and "0.0.0.0_15006" not in out
    assert filter_chains.duplicate_matches(out["virtualInbound"].filter_chains) == []
    assert chain_summary(out["virtualInbound"], 15006) == [("", (), False, "tcp")]  # only the blackhole


# --- CDS -----------------------------------------------------------------------------


def test_sidecar_cluster_names():
    names = [n for n, _ in clusters.build(mesh(), WEBAPP_PROXY)]
    assert names == [
        "outbound|80||catalog.istioinaction.svc.cluster.local",
        "outbound|81||catalog.istioinaction.svc.cluster.local",
        "outbound|80||istio-ingressgateway.istio-system.svc.cluster.local",
        "outbound|80||sleep.default.svc.cluster.local",
        "outbound|80||webapp.istioinaction.svc.cluster.local",
        "inbound|8080||",
        "BlackHoleCluster",
        "PassthroughCluster",
        "InboundPassthroughCluster",
    ]
    assert [n for n, _ in clusters.build(mesh(), CATALOG_PROXY) if n.startswith("inbound")] == [
        "inbound|3000||", "inbound|3001||"]


def test_inbound_and_passthrough_clusters():
    cds = by_name(clusters.build(mesh(), WEBAPP_PROXY))
    inbound = cds["inbound|8080||"]
    assert inbound.type == cluster_pb2.Cluster.ORIGINAL_DST
    assert inbound.lb_policy == cluster_pb2.Cluster.CLUSTER_PROVIDED
    assert inbound.upstream_bind_config.source_address.address == "127.0.0.6"
    assert inbound.upstream_bind_config.source_address.port_value == 0
    assert not inbound.HasField("transport_socket") and not inbound.transport_socket_matches
    passthrough = cds["PassthroughCluster"]
    assert passthrough.type == cluster_pb2.Cluster.ORIGINAL_DST and not passthrough.HasField("upstream_bind_config")
    inbound_pt = cds["InboundPassthroughCluster"]
    assert inbound_pt.type == cluster_pb2.Cluster.ORIGINAL_DST
    assert inbound_pt.upstream_bind_config.source_address.address == "127.0.0.6"
    blackhole = cds["BlackHoleCluster"]
    assert blackhole.type == cluster_pb2.Cluster.STATIC and not blackhole.HasField("load_assignment")


def _upstream_ctx(socket) -> tls_pb2.UpstreamTlsContext:
    assert socket.name == "envoy.transport_sockets.tls"
    return unpack(socket.typed_config, tls_pb2.UpstreamTlsContext)


def _sans(ctx: tls_pb2.UpstreamTlsContext) -> list[str]:
    vc = ctx.common_tls_context.combined_validation_context.default_validation_context
    return [m.matcher.exact for m in vc.match_typed_subject_alt_names]


@pytest.mark.parametrize("proxy", [WEBAPP_PROXY, GATEWAY_PROXY], ids=["sidecar", "router"])
def test_auto_mtls_transport_socket_matches(proxy):
    c = by_name(clusters.build(mesh(), proxy))[CATALOG]
    assert not c.HasField("transport_socket")
    istio, disabled = c.transport_socket_matches
    assert istio.name == "tlsMode-istio" and dict(istio.match) == {"tlsMode": "istio"}
    assert disabled.name == "tlsMode-disabled" and disabled.HasField("match") and dict(disabled.match) == {}
    assert disabled.transport_socket.name == "envoy.transport_sockets.raw_buffer"
    ctx = _upstream_ctx(istio.transport_socket)
    assert ctx.sni == f"outbound_.80_._.{CATALOG_HOST}"
    assert _sans(ctx) == [f"spiffe://cluster.local/ns/{NS}/sa/catalog", f"spiffe://cluster.local/ns/{NS}/sa/catalog-v2"]
    assert list(ctx.common_tls_context.alpn_protocols) == ["istio"]
    assert [s.name for s in ctx.common_tls_context.tls_certificate_sds_secret_configs] == ["default"]
    assert ctx.common_tls_context.combined_validation_context.validation_context_sds_secret_config.name == "ROOTCA"


def test_auto_mtls_endpoint_metadata():
    eds = by_name(endpoints.build(mesh(), GATEWAY_PROXY))
    [loc] = eds[CATALOG].endpoints
    for lb in loc.lb_endpoints:
        md = lb.metadata.filter_metadata["envoy.transport_socket_match"]
        assert dict(md) == {"tlsMode": "istio"}
    # sleep has no sidecar: no metadata, so the plaintext socket
    [loc] = eds["outbound|80||sleep.default.svc.cluster.local"].endpoints
    assert not loc.lb_endpoints[0].HasField("metadata")
    # sidecars get the same assignments
    assert by_name(endpoints.build(mesh(), WEBAPP_PROXY))[CATALOG] == eds[CATALOG]


def test_workload_disable_makes_clients_send_plaintext():
    policy = pa("catalog", NS, "DISABLE", selector={"version": "v2"})
    eds = by_name(endpoints.build(mesh(STRICT_MESH, policy), WEBAPP_PROXY))
    [loc] = eds[CATALOG].endpoints
    tls_modes = {lb.endpoint.address.socket_address.address: bool(lb.metadata.filter_metadata) for lb in loc.lb_endpoints}
    assert tls_modes == {"10.1.0.11": True, "10.1.0.12": False}
    # a port-level DISABLE counts for that port only
    policy = pa("catalog", NS, "STRICT", selector={"app": "catalog"}, ports={3001: "DISABLE"})
    eds = by_name(endpoints.build(mesh(policy), WEBAPP_PROXY))
    assert all(lb.metadata.filter_metadata for lb in eds[CATALOG].endpoints[0].lb_endpoints)
    assert not any(lb.metadata.filter_metadata for lb in eds[f"outbound|81||{CATALOG_HOST}"].endpoints[0].lb_endpoints)


def test_namespace_disable_turns_auto_mtls_off():
    c = by_name(clusters.build(mesh(pa("default", NS, "DISABLE")), GATEWAY_PROXY))[CATALOG]
    assert not c.HasField("transport_socket") and not c.transport_socket_matches
    # other namespaces are unaffected
    other = by_name(clusters.build(mesh(pa("default", "default", "DISABLE")), GATEWAY_PROXY))[CATALOG]
    assert len(other.transport_socket_matches) == 2


def test_destination_rule_istio_mutual_and_disable():
    m = mesh(
        dr("catalog", "catalog", "  trafficPolicy: {tls: {mode: ISTIO_MUTUAL}}\n"),
        dr("webapp", "webapp", "  trafficPolicy: {tls: {mode: DISABLE}}\n"),
    )
    cds = by_name(clusters.build(m, WEBAPP_PROXY))
    cat = cds[CATALOG]
    assert not cat.transport_socket_matches
    ctx = _upstream_ctx(cat.transport_socket)
    assert ctx.sni == f"outbound_.80_._.{CATALOG_HOST}" and len(_sans(ctx)) == 2
    web = cds[WEBAPP]
    assert not web.HasField("transport_socket") and not web.transport_socket_matches
    # EDS keeps tlsMode metadata; it does not matter without transport_socket_matches
    assert by_name(endpoints.build(m, WEBAPP_PROXY))[WEBAPP].endpoints[0].lb_endpoints[0].metadata.filter_metadata


def test_destination_rule_port_level_and_subset_tls():
    body = """  trafficPolicy:
    tls: {mode: DISABLE}
    portLevelSettings:
    - port: {number: 81}
      tls: {mode: ISTIO_MUTUAL, sni: admin.catalog, subjectAltNames: ["spiffe://cluster.local/ns/istioinaction/sa/admin"]}
  subsets:
  - name: v1
    labels: {version: v1}
    trafficPolicy: {tls: {mode: ISTIO_MUTUAL}}
  - name: v2
    labels: {version: v2}
"""
    cds = by_name(clusters.build(mesh(dr("catalog", "catalog", body)), WEBAPP_PROXY))
    assert not cds[CATALOG].HasField("transport_socket") and not cds[CATALOG].transport_socket_matches
    admin = _upstream_ctx(cds[f"outbound|81||{CATALOG_HOST}"].transport_socket)
    assert admin.sni == "admin.catalog" and _sans(admin) == ["spiffe://cluster.local/ns/istioinaction/sa/admin"]
    v1 = _upstream_ctx(cds[f"outbound|80|v1|{CATALOG_HOST}"].transport_socket)
    assert v1.sni == f"outbound_.80_.v1_.{CATALOG_HOST}"
    assert not cds[f"outbound|80|v2|{CATALOG_HOST}"].HasField("transport_socket")  # inherits DISABLE


def test_destination_rule_simple_and_mutual_tls():
    body = """  trafficPolicy:
    tls: {mode: SIMPLE, caCertificates: /etc/certs/ca.pem, sni: catalog.example.com, subjectAltNames: [catalog.example.com]}
    portLevelSettings:
    - port: {number: 81}
      tls: {mode: MUTUAL, clientCertificate: /etc/certs/cert.pem, privateKey: /etc/certs/key.pem, insecureSkipVerify: true}
"""
    cds = by_name(clusters.build(mesh(dr("catalog", "catalog", body)), WEBAPP_PROXY))
    simple = _upstream_ctx(cds[CATALOG].transport_socket)
    assert simple.sni == "catalog.example.com"
    vc = simple.common_tls_context.validation_context
    assert vc.trusted_ca.filename == "/etc/certs/ca.pem"
    assert [(m.san_type, m.matcher.exact) for m in vc.match_typed_subject_alt_names] == [
        (vc.match_typed_subject_alt_names[0].DNS, "catalog.example.com")]
    assert not simple.common_tls_context.tls_certificate_sds_secret_configs
    mutual = _upstream_ctx(cds[f"outbound|81||{CATALOG_HOST}"].transport_socket)
    [cert] = mutual.common_tls_context.tls_certificates
    assert cert.certificate_chain.filename == "/etc/certs/cert.pem" and cert.private_key.filename == "/etc/certs/key.pem"
    assert mutual.common_tls_context.HasField("validation_context")
    assert not mutual.common_tls_context.validation_context.HasField("trusted_ca")  # insecureSkipVerify


def test_destination_rule_credential_name():
    from tests.support.pki import make_ca, make_cert, tls_secret_yaml

    body = "  trafficPolicy: {tls: {mode: MUTUAL, credentialName: catalog-client}}\n"
    # without the Secret in the gateway's namespace the cluster would wait for it for ever:
    # it is left out (tests/unit/test_destination_rule_scope.py)
    assert CATALOG not in by_name(clusters.build(mesh(dr("catalog", "catalog", body)), GATEWAY_PROXY))
    ca = make_ca()
    secret = tls_secret_yaml("catalog-client", "istio-system", make_cert(ca, ["gw"], client=True), ca.cert)
    m = mesh(dr("catalog", "catalog", body), secret)
    gw = _upstream_ctx(by_name(clusters.build(m, GATEWAY_PROXY))[CATALOG].transport_socket)
    assert [s.name for s in gw.common_tls_context.tls_certificate_sds_secret_configs] == ["kubernetes://catalog-client"]
    assert gw.common_tls_context.combined_validation_context.validation_context_sds_secret_config.name == (
        "kubernetes://catalog-client-cacert")
    # istiod never gives a Secret to every sidecar a rule reaches (no workloadSelector)
    side = by_name(clusters.build(m, WEBAPP_PROXY))[CATALOG]
    assert not side.HasField("transport_socket") and not side.transport_socket_matches


def test_http2_clusters_offer_h2_alpn():
    grpc = f"""
apiVersion: v1
kind: Service
metadata: {{name: grpc, namespace: {NS}}}
spec:
  selector: {{app: webapp}}
  ports: [{{name: grpc, port: 7000}}]
"""
    c = by_name(clusters.build(mesh(grpc), WEBAPP_PROXY))[f"outbound|7000||grpc.{NS}.svc.cluster.local"]
    ctx = _upstream_ctx(c.transport_socket_matches[0].transport_socket)
    assert list(ctx.common_tls_context.alpn_protocols) == ["istio", "h2"]


# --- RDS -----------------------------------------------------------------------------


def rds(m, proxy=WEBAPP_PROXY):
    return by_name(routes.build(m, proxy))


def test_route_config_per_http_port():
    out = rds(mesh())
    assert list(out) == ["80", "81"]
    rc = out["80"]
    assert rc.validate_clusters.value is False and rc.ignore_port_in_host_matching is True
    assert [v.name for v in rc.virtual_hosts] == [
        f"{CATALOG_HOST}:80",
        "istio-ingressgateway.istio-system.svc.cluster.local:80",
        "sleep.default.svc.cluster.local:80",
        f"{WEBAPP_HOST}:80",
        "allow_any",
    ]
    allow_any = rc.virtual_hosts[-1]
    assert list(allow_any.domains) == ["*"] and allow_any.routes[0].route.cluster == "PassthroughCluster"
    cat = rc.virtual_hosts[0]
    [route] = cat.routes
    assert route.name == "default" and route.route.cluster == CATALOG
    assert route.route.retry_policy.num_retries.value == 2
    assert route.decorator.operation == f"{CATALOG_HOST}:80/*"


def test_alias_domains_same_and_other_namespace():
    vhosts = {v.name: list(v.domains) for v in rds(mesh())["80"].virtual_hosts}
    assert vhosts[f"{CATALOG_HOST}:80"] == [CATALOG_HOST, "catalog", "catalog.istioinaction.svc", "catalog.istioinaction", "10.96.0.11"]
    assert vhosts["sleep.default.svc.cluster.local:80"] == [
        "sleep.default.svc.cluster.local", "sleep.default", "sleep.default.svc", "10.96.0.20"]
    # from default, istioinaction's services have no bare short name
    vhosts = {v.name: list(v.domains) for v in rds(mesh(), SLEEP_PROXY)["80"].virtual_hosts}
    assert vhosts[f"{CATALOG_HOST}:80"] == [CATALOG_HOST, "catalog.istioinaction", "catalog.istioinaction.svc", "10.96.0.11"]
    assert vhosts["sleep.default.svc.cluster.local:80"][:2] == ["sleep.default.svc.cluster.local", "sleep"]


def test_mesh_virtual_services_apply_to_sidecars():
    vs = f"""
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: catalog, namespace: {NS}}}
spec:
  hosts: [catalog]
  http:
  - match: [{{headers: {{x-version: {{exact: v2}}}}}}]
    route: [{{destination: {{host: catalog, subset: v2}}}}]
  - route: [{{destination: {{host: catalog, subset: v1}}}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: webapp-gw-only, namespace: {NS}}}
spec:
  hosts: [webapp]
  gateways: [coolstore-gateway]
  http: [{{route: [{{destination: {{host: webapp, subset: nope}}}}]}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: external, namespace: {NS}}}
spec:
  hosts: [api.example.com]
  gateways: [mesh, coolstore-gateway]
  http: [{{route: [{{destination: {{host: webapp}}}}]}}]
"""
    rc = rds(mesh(vs))["80"]
    vh = {v.name: v for v in rc.virtual_hosts}
    assert [r.route.cluster for r in vh[f"{CATALOG_HOST}:80"].routes] == [
        f"outbound|80|v2|{CATALOG_HOST}", f"outbound|80|v1|{CATALOG_HOST}"]
    assert list(vh[f"{CATALOG_HOST}:80"].domains)[:2] == [CATALOG_HOST, "catalog"]
    # bound to a gateway only: not on sidecars
    assert [r.route.cluster for r in vh[f"{WEBAPP_HOST}:80"].routes] == [WEBAPP]
    # a host that is no service gets its own virtual host on port 80
    assert list(vh["api.example.com:80"].domains) == ["api.example.com"]
    assert vh["api.example.com:80"].routes[0].route.cluster == WEBAPP
    # but not on other ports, where it names no service
    assert "api.example.com:81" not in {v.name for v in rds(mesh(vs))["81"].virtual_hosts}
    # the routes follow the VirtualService on the gateway too (separately, untouched)
    assert "80" not in rds(mesh(vs), GATEWAY_PROXY)


def test_virtual_service_export_to_other_namespace_only():
    vs = f"""
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: catalog, namespace: {NS}}}
spec:
  hosts: [catalog]
  exportTo: ["."]
  http: [{{route: [{{destination: {{host: catalog, subset: v1}}}}]}}]
"""
    own = {v.name: v for v in rds(mesh(vs))["80"].virtual_hosts}
    other = {v.name: v for v in rds(mesh(vs), SLEEP_PROXY)["80"].virtual_hosts}
    assert own[f"{CATALOG_HOST}:80"].routes[0].route.cluster.startswith("outbound|80|v1|")
    assert other[f"{CATALOG_HOST}:80"].routes[0].route.cluster == CATALOG


def test_domains_are_unique_in_a_route_config():
    for proxy in (WEBAPP_PROXY, SLEEP_PROXY):
        for rc in rds(mesh(TCP_SERVICES), proxy).values():
            domains = [d for v in rc.virtual_hosts for d in v.domains]
            assert len(domains) == len(set(domains)), rc.name


# --- purity --------------------------------------------------------------------------


def serialized(m, proxy) -> list[bytes]:
    out = []
    for mod in (clusters, endpoints, listeners, routes):
        for name, msg in mod.build(m, proxy):
            out.append(pack(name, "t", msg).any.value)
    return out


def test_determinism_and_group_key():
    texts = [LAYOUT, TCP_SERVICES, STRICT_MESH, dr("catalog", "catalog", "  trafficPolicy: {tls: {mode: ISTIO_MUTUAL}}\n")]
    a = mesh_from_yaml("\n---\n".join(texts))
    b = mesh_from_yaml("\n---\n".join(reversed(texts)))
    for proxy in (WEBAPP_PROXY, CATALOG_PROXY, SLEEP_PROXY, GATEWAY_PROXY):
        assert serialized(a, proxy) == serialized(a, proxy) == serialized(b, proxy)
    # another pod with the same group key (same IP, namespace, labels) gets the same bytes
    twin = parse_node(
        f"sidecar~10.1.0.10~webapp-other.{NS}~{NS}.svc.cluster.local",
        {"NAMESPACE": NS, "LABELS": dict(WEBAPP_PROXY.labels), "SERVICE_ACCOUNT": "other"},
    )
    assert twin.group_key() == WEBAPP_PROXY.group_key()
    assert serialized(a, twin) == serialized(a, WEBAPP_PROXY)


def test_no_listener_has_duplicate_matches():
    m = mesh(TCP_SERVICES, STRICT_MESH, pa("catalog", NS, "PERMISSIVE", selector={"app": "catalog"}, ports={3000: "STRICT", 4000: "DISABLE"}))
    for proxy in (WEBAPP_PROXY, CATALOG_PROXY, SLEEP_PROXY):
        for lst in lds(m, proxy).values():
            assert filter_chains.duplicate_matches(lst.filter_chains) == [], (proxy.pod, lst.name)


# --- Envoy accepts it ----------------------------------------------------------------


@pytest.mark.e2e
@pytest.mark.parametrize("proxy", [WEBAPP_PROXY, CATALOG_PROXY, GATEWAY_PROXY], ids=["webapp", "catalog", "router"])
def test_envoy_accepts_sidecar_and_router_config(tmp_path, proxy):
    self_signed(tmp_path)  # the files the DestinationRules name
    m = mesh(TCP_SERVICES, RICH, rich_drs(tmp_path))
    config = sidecar_config(m, proxy, tmp_path)
    assert config["static_resources"]["secrets"], "expected mTLS secrets"
    envoy_validate(config, tmp_path / "envoy.json")


@pytest.mark.e2e
@pytest.mark.parametrize("policy", [STRICT_MESH, pa("default", NS, "DISABLE"), ""], ids=["strict", "disable", "permissive"])
def test_envoy_accepts_every_inbound_mode(tmp_path, policy):
    m = mesh(TCP_SERVICES, policy) if policy else mesh(TCP_SERVICES)
    envoy_validate(sidecar_config(m, CATALOG_PROXY, tmp_path), tmp_path / "envoy.json")


@pytest.mark.parametrize("proxy", [WEBAPP_PROXY, GATEWAY_PROXY], ids=["sidecar", "router"])
def test_proxy_without_workload_cert_never_references_default(proxy):
    """A proxy on the plaintext port gets no `default` secret, so nothing it is sent may
    wait for one: auto mTLS falls back to plaintext, explicit ISTIO_MUTUAL handshakes
    without a client certificate, inbound mTLS chains are dropped."""
    import dataclasses
    import re

    sds_default = re.compile(r'"name": "default",\s*"sdsConfig"')
    m = mesh(STRICT_MESH, dr("catalog", "catalog", "  trafficPolicy: {tls: {mode: ISTIO_MUTUAL}}"))
    no_cert = dataclasses.replace(proxy, workload_cert=False)
    for build in (clusters.build, listeners.build, endpoints.build, routes.build):
        for name, msg in build(m, no_cert):
            assert not sds_default.search(json_format.MessageToJson(msg)), f"{name} references the default secret"
    # with a certificate the same config does use it
    with_cert = [json_format.MessageToJson(msg) for _, msg in clusters.build(m, proxy)]
    assert any(sds_default.search(j) for j in with_cert)
    by = by_name(clusters.build(m, no_cert))
    assert not by[WEBAPP].transport_socket_matches  # auto mTLS: plaintext
    assert by[CATALOG].transport_socket.name == "envoy.transport_sockets.tls"  # DR ISTIO_MUTUAL still TLS
