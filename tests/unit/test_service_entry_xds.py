"""What proxies get for ServiceEntry hosts, as istiod builds it: the cluster type of each
resolution (STATIC -> EDS, DNS -> STRICT_DNS, DNS_ROUND_ROBIN -> LOGICAL_DNS, NONE ->
ORIGINAL_DST) with istiod's DNS settings, outbound listeners on the entry's addresses and
CIDRs (0.0.0.0 without), virtual hosts for its HTTP ports (wildcard hosts too), TLS
origination by a DestinationRule, and no auto mTLS to MESH_EXTERNAL hosts.

ServiceEntries join the chapter 9 mesh as YAML, through the parse gate and
model/service_entries.py.
"""
from __future__ import annotations

from envoy.config.cluster.v3 import cluster_pb2
from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2
from envoy.extensions.transport_sockets.tls.v3 import common_pb2, tls_pb2
from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2

from controlplane.generators import clusters, endpoints, listeners, routes
from tests.support.chapter9 import GATEWAY_PROXY, NS, SLEEP_PROXY, WEBAPP_PROXY, dr, mesh
from tests.support.envoy import envoy_validate
from tests.support.static_xds import sidecar_config

HTTP_PROTOCOL_OPTIONS = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"


def entry(name: str, body: str, namespace: str = NS) -> str:
    """A ServiceEntry document (spec `body`, indented two spaces)."""
    return f"""
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: {name}, namespace: {namespace}}}
spec:
{body}"""


def cds(m, proxy=WEBAPP_PROXY) -> dict[str, cluster_pb2.Cluster]:
    return dict(clusters.build(m, proxy))


def eds(m, proxy=WEBAPP_PROXY) -> dict:
    return dict(endpoints.build(m, proxy))


def hosts_of(c: cluster_pb2.Cluster) -> list[tuple[str, int, int]]:
    return [(lb.endpoint.address.socket_address.address, lb.endpoint.address.socket_address.port_value,
             lb.load_balancing_weight.value) for llb in c.load_assignment.endpoints for lb in llb.lb_endpoints]


def upstream_tls(c: cluster_pb2.Cluster) -> tls_pb2.UpstreamTlsContext:
    ctx = tls_pb2.UpstreamTlsContext()
    assert c.transport_socket.typed_config.Unpack(ctx)
    return ctx


API = entry("api", """
  hosts: [api.example.com]
  location: MESH_EXTERNAL
  resolution: DNS
  ports: [{number: 80, name: http, protocol: HTTP}]
""")


def test_dns_resolution_is_strict_dns_resolving_the_host_with_istiods_settings():
    m = mesh(API)
    c = cds(m)["outbound|80||api.example.com"]
    assert c.type == cluster_pb2.Cluster.STRICT_DNS
    assert c.dns_lookup_family == cluster_pb2.Cluster.V4_ONLY
    assert c.respect_dns_ttl and c.dns_refresh_rate.seconds == 60 and c.dns_jitter.nanos == 100_000_000
    assert c.typed_dns_resolver_config.name == "envoy.network.dns_resolver.cares"
    # No endpoints in the entry: the host itself is resolved, on the port.
    assert hosts_of(c) == [("api.example.com", 80, 1)]
    assert c.load_assignment.cluster_name == "outbound|80||api.example.com"
    assert not c.HasField("eds_cluster_config")
    assert "outbound|80||api.example.com" not in eds(m)  # inline, never over EDS
    assert c.metadata.filter_metadata["istio"]["external"] is True


def test_dns_round_robin_is_logical_dns_with_one_host():
    m = mesh(entry("db", """
  hosts: [db.example.com]
  location: MESH_EXTERNAL
  resolution: DNS_ROUND_ROBIN
  ports: [{number: 5432, name: tcp, protocol: TCP, targetPort: 5433}]
  endpoints: [{address: db-1.example.com}]
"""))
    c = cds(m)["outbound|5432||db.example.com"]
    assert c.type == cluster_pb2.Cluster.LOGICAL_DNS
    assert hosts_of(c) == [("db-1.example.com", 5433, 1)]


def test_static_resolution_is_eds_with_the_endpoints_and_their_weights():
    m = mesh(entry("legacy", """
  hosts: [legacy.example.com]
  addresses: [10.9.0.10]
  location: MESH_EXTERNAL
  resolution: STATIC
  ports: [{number: 8080, name: http, protocol: HTTP}]
  endpoints: [{address: 10.9.0.1, weight: 3}, {address: 10.9.0.2}]
"""))
    name = "outbound|8080||legacy.example.com"
    assert cds(m)[name].type == cluster_pb2.Cluster.EDS
    cla = eds(m)[name]
    assert [(lb.endpoint.address.socket_address.address, lb.load_balancing_weight.value)
            for llb in cla.endpoints for lb in llb.lb_endpoints] == [("10.9.0.1", 3), ("10.9.0.2", 1)]
    assert cla.endpoints[0].load_balancing_weight.value == 4


WIKIPEDIA = entry("wikipedia", """
  hosts: ["*.wikipedia.org"]
  location: MESH_EXTERNAL
  resolution: NONE
  ports: [{number: 443, name: tls, protocol: TLS}, {number: 80, name: http, protocol: HTTP}]
""")


def test_none_resolution_is_original_dst_on_sidecars_and_eds_on_gateways():
    m = mesh(WIKIPEDIA)
    name = "outbound|443||*.wikipedia.org"
    side = cds(m)[name]
    assert side.type == cluster_pb2.Cluster.ORIGINAL_DST
    assert side.lb_policy == cluster_pb2.Cluster.CLUSTER_PROVIDED
    assert cds(m, GATEWAY_PROXY)[name].type == cluster_pb2.Cluster.EDS
    assert name in eds(m, GATEWAY_PROXY) and name not in eds(m)


def test_dns_cluster_without_any_endpoint_is_left_out():
    # A workloadSelector that selects nothing: no endpoint, no cluster (istiod drops it too).
    m = mesh(entry("nobody", """
  hosts: [nobody.example.com]
  location: MESH_INTERNAL
  resolution: DNS
  ports: [{number: 80, name: http, protocol: HTTP}]
  workloadSelector: {labels: {app: nobody}}
"""))
    assert "outbound|80||nobody.example.com" not in cds(m)


def vm(name: str, location: str, resolution: str, address: str) -> str:
    return entry(name, f"""
  hosts: [{name}.example.com]
  location: {location}
  resolution: {resolution}
  ports: [{{number: 9080, name: http, protocol: HTTP}}]
  endpoints:
  - address: {address}
    labels: {{app: vm, security.istio.io/tlsMode: istio}}
    serviceAccount: vm
""")


def test_mesh_internal_entry_gets_auto_mtls_and_mesh_external_does_not():
    m = mesh(vm("internal", "MESH_INTERNAL", "STATIC", "10.9.0.5"),
             vm("external", "MESH_EXTERNAL", "STATIC", "10.9.0.6"))
    got = cds(m)
    internal = got["outbound|9080||internal.example.com"]
    assert [t.name for t in internal.transport_socket_matches] == ["tlsMode-istio", "tlsMode-disabled"]
    assert "external" not in internal.metadata.filter_metadata["istio"]
    ext = got["outbound|9080||external.example.com"]
    assert not ext.transport_socket_matches and not ext.HasField("transport_socket")
    assert ext.metadata.filter_metadata["istio"]["external"] is True
    # EDS: the internal endpoint is marked for mTLS (the external cluster has no match on it).
    marked = {name: cla.endpoints[0].lb_endpoints[0].metadata.filter_metadata
              for name, cla in eds(m).items() if name.endswith("example.com")}
    assert marked["outbound|9080||internal.example.com"]["envoy.transport_socket_match"]["tlsMode"] == "istio"


def test_dns_cluster_of_mesh_internal_entry_marks_inline_endpoints_for_mtls():
    c = cds(mesh(vm("internal", "MESH_INTERNAL", "DNS", "vm-1.example.com")))["outbound|9080||internal.example.com"]
    assert [t.name for t in c.transport_socket_matches] == ["tlsMode-istio", "tlsMode-disabled"]
    lb = c.load_assignment.endpoints[0].lb_endpoints[0]
    assert lb.endpoint.address.socket_address.address == "vm-1.example.com"
    assert lb.metadata.filter_metadata["envoy.transport_socket_match"]["tlsMode"] == "istio"


SECURE = entry("secure", """
  hosts: [secure.example.com]
  location: MESH_EXTERNAL
  resolution: DNS
  subjectAltNames: [secure.example.com]
  ports: [{number: 80, name: http, protocol: HTTP, targetPort: 443}]
""")


def test_tls_origination_simple_with_sni_verifies_the_entrys_subject_alt_names():
    rule = dr("secure", "secure.example.com", """
  trafficPolicy:
    portLevelSettings:
    - port: {number: 80}
      tls: {mode: SIMPLE, sni: secure.example.com, caCertificates: /etc/certs/ca.pem}
""")
    c = cds(mesh(SECURE, rule))["outbound|80||secure.example.com"]
    assert hosts_of(c) == [("secure.example.com", 443, 1)]  # plain HTTP on 80 leaves as TLS to 443
    ctx = upstream_tls(c)
    assert ctx.sni == "secure.example.com"
    v = ctx.common_tls_context.validation_context
    assert v.trusted_ca.filename == "/etc/certs/ca.pem"
    assert [(s.san_type, s.matcher.exact) for s in v.match_typed_subject_alt_names] == [
        (common_pb2.SubjectAltNameMatcher.DNS, "secure.example.com")]
    assert HTTP_PROTOCOL_OPTIONS not in c.typed_extension_protocol_options or not _upstream(c).auto_sni


def _upstream(c: cluster_pb2.Cluster):
    opts = http_protocol_options_pb2.HttpProtocolOptions()
    assert c.typed_extension_protocol_options[HTTP_PROTOCOL_OPTIONS].Unpack(opts)
    return opts.upstream_http_protocol_options


def test_tls_origination_without_sni_lets_envoy_take_sni_and_san_from_the_host():
    rule = dr("api", "api.example.com", "  trafficPolicy: {tls: {mode: SIMPLE}}\n")
    c = cds(mesh(API, rule))["outbound|80||api.example.com"]
    assert upstream_tls(c).sni == ""
    up = _upstream(c)
    assert up.auto_sni and up.auto_san_validation


def test_mutual_origination_to_an_external_host():
    rule = dr("api", "api.example.com", """
  trafficPolicy:
    tls: {mode: MUTUAL, sni: api.example.com, clientCertificate: /etc/certs/cert.pem,
          privateKey: /etc/certs/key.pem, caCertificates: /etc/certs/ca.pem}
""")
    ctx = upstream_tls(cds(mesh(API, rule))["outbound|80||api.example.com"])
    assert ctx.sni == "api.example.com"
    [cert] = ctx.common_tls_context.tls_certificates
    assert cert.certificate_chain.filename == "/etc/certs/cert.pem"


TCP_ENTRIES = [
    entry("db", """
  hosts: [db.example.com]
  addresses: [10.9.1.1, 10.9.1.2/32]
  location: MESH_EXTERNAL
  resolution: STATIC
  ports: [{number: 5432, name: tcp, protocol: TCP}]
  endpoints: [{address: 10.9.9.9}]
"""),
    entry("net", """
  hosts: [net.example.com]
  addresses: [10.10.0.0/16]
  location: MESH_EXTERNAL
  resolution: NONE
  ports: [{number: 5432, name: tcp, protocol: TCP}]
"""),
    entry("mq", """
  hosts: [mq.example.com]
  location: MESH_EXTERNAL
  resolution: DNS
  ports: [{number: 5672, name: tcp, protocol: TCP}]
"""),
]


def test_tcp_entry_listens_on_its_addresses_cidrs_and_else_the_wildcard():
    lds = dict(listeners.build(mesh(*TCP_ENTRIES), WEBAPP_PROXY))
    assert {"10.9.1.1_5432", "10.9.1.2_5432", "0.0.0.0_5432", "0.0.0.0_5672"} <= set(lds)
    [chain] = [c for c in lds["0.0.0.0_5432"].filter_chains if c.filter_chain_match.prefix_ranges]
    assert [(r.address_prefix, r.prefix_len.value) for r in chain.filter_chain_match.prefix_ranges] == [
        ("10.10.0.0", 16)]
    assert _tcp_cluster(chain) == "outbound|5432||net.example.com"
    # Other addresses on 5432 pass through.
    assert lds["0.0.0.0_5432"].default_filter_chain.name == "PassthroughFilterChain"
    # Without addresses every connection to 5672 goes to the host.
    assert _tcp_cluster(lds["0.0.0.0_5672"].filter_chains[0]) == "outbound|5672||mq.example.com"
    assert _tcp_cluster(lds["10.9.1.2_5432"].filter_chains[0]) == "outbound|5432||db.example.com"


def _tcp_cluster(chain) -> str:
    tcp = tcp_proxy_pb2.TcpProxy()
    [f] = [f for f in chain.filters if f.name == "envoy.filters.network.tcp_proxy"]
    assert f.typed_config.Unpack(tcp)
    return tcp.cluster


TLS_ENTRY = entry("a", """
  hosts: [a.example.com]
  location: MESH_EXTERNAL
  resolution: DNS
  ports: [{number: 443, name: tls, protocol: TLS}]
""")


def test_tls_entry_on_the_wildcard_is_told_apart_by_sni():
    lst = dict(listeners.build(mesh(TLS_ENTRY, WIKIPEDIA), WEBAPP_PROXY))["0.0.0.0_443"]
    got = {tuple(c.filter_chain_match.server_names): _tcp_cluster(c) for c in lst.filter_chains}
    assert got == {("a.example.com",): "outbound|443||a.example.com",
                   ("*.wikipedia.org",): "outbound|443||*.wikipedia.org"}
    assert lst.default_filter_chain.name == "PassthroughFilterChain"
    assert "envoy.filters.listener.tls_inspector" in [f.name for f in lst.listener_filters]


def test_http_entry_ports_get_virtual_hosts_in_the_port_route_config():
    api = entry("api", """
  hosts: [api.example.com]
  addresses: [10.9.2.2]
  location: MESH_EXTERNAL
  resolution: DNS
  ports: [{number: 80, name: http, protocol: HTTP}]
""")
    m = mesh(api, WIKIPEDIA)
    rc = dict(routes.build(m, SLEEP_PROXY))["80"]
    vhosts = {v.name: list(v.domains) for v in rc.virtual_hosts}
    assert vhosts["api.example.com:80"] == ["api.example.com", "10.9.2.2"]
    assert vhosts["*.wikipedia.org:80"] == ["*.wikipedia.org"]
    [wiki_vh] = [v for v in rc.virtual_hosts if v.name == "*.wikipedia.org:80"]
    assert wiki_vh.routes[0].route.cluster == "outbound|80||*.wikipedia.org"
    # The HTTP listener on 0.0.0.0_80 fetches that route configuration.
    assert "0.0.0.0_80" in dict(listeners.build(m, SLEEP_PROXY))


def test_virtual_service_routes_a_service_entry_host():
    vs = f"""
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: api, namespace: {NS}}}
spec:
  hosts: [api.example.com]
  http:
  - timeout: 3s
    route:
    - destination: {{host: api.example.com}}
"""
    rc = dict(routes.build(mesh(API, vs), WEBAPP_PROXY))["80"]
    [vh] = [v for v in rc.virtual_hosts if v.name == "api.example.com:80"]
    assert vh.routes[0].route.cluster == "outbound|80||api.example.com"
    assert vh.routes[0].route.timeout.seconds == 3


def test_envoy_accepts_everything_a_sidecar_and_a_gateway_get(tmp_path):
    rule = dr("secure", "secure.example.com", """
  trafficPolicy:
    portLevelSettings:
    - port: {number: 80}
      tls: {mode: SIMPLE, sni: secure.example.com}
""")
    m = mesh(rule, API, SECURE, WIKIPEDIA, TLS_ENTRY, *TCP_ENTRIES,
             vm("internal", "MESH_INTERNAL", "DNS", "vm-1.example.com"))
    for proxy in (WEBAPP_PROXY, GATEWAY_PROXY):
        envoy_validate(sidecar_config(m, proxy, tmp_path), tmp_path / f"{proxy.type}.json")


def test_dns_endpoints_inline_keep_their_localities_weights_and_subsets():
    m = mesh(entry("multi", """
  hosts: [multi.example.com]
  location: MESH_EXTERNAL
  resolution: DNS
  ports: [{number: 80, name: http, protocol: HTTP}]
  endpoints:
  - {address: a.example.com, locality: us-east/z1, weight: 2, labels: {version: v1}}
  - {address: b.example.com, locality: us-west/z2, labels: {version: v2}}
"""), dr("multi", "multi.example.com", "  subsets: [{name: v2, labels: {version: v2}}]\n"))
    got = cds(m)
    cla = got["outbound|80||multi.example.com"].load_assignment
    assert [(e.locality.region, e.locality.zone, e.load_balancing_weight.value,
             [lb.endpoint.address.socket_address.address for lb in e.lb_endpoints]) for e in cla.endpoints] == [
        ("us-east", "z1", 2, ["a.example.com"]), ("us-west", "z2", 1, ["b.example.com"])]
    # The subset cluster resolves only the endpoints with the subset's labels.
    assert hosts_of(got["outbound|80|v2|multi.example.com"]) == [("b.example.com", 80, 1)]
