"""VirtualService and DestinationRule semantics beyond single rules: delegate
VirtualServices, which DestinationRule applies (lookup order, exportTo, merging of
several rules for one host), sidecar `tls` routes by SNI and `tcp` matches."""
from __future__ import annotations

import dataclasses

from envoy.config.cluster.v3 import cluster_pb2
from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2

from controlplane.generators import clusters, listeners, routes
from controlplane.model.proxy import parse_node
from tests.support.configs import mesh_from_yaml

GATEWAY = parse_node("router~10.0.0.1~gw-0.istio-system~istio-system.svc.cluster.local",
                     {"LABELS": {"istio": "ingressgateway"}, "NAMESPACE": "istio-system"})


def sidecar(ns: str, ip: str = "10.9.9.9", labels: dict | None = None):
    return parse_node(f"sidecar~{ip}~client-0.{ns}~{ns}.svc.cluster.local",
                      {"NAMESPACE": ns, "LABELS": labels or {"app": "client"}})


def by_name(items):
    return {name: msg for name, msg in items}


def svc(name: str, ns: str, ports: str = "[{name: http, port: 9080}]", vip: str = "") -> str:
    ip = f"\n  clusterIP: {vip}" if vip else ""
    return f"""
---
apiVersion: v1
kind: Service
metadata: {{name: {name}, namespace: {ns}}}
spec:{ip}
  selector: {{app: {name}}}
  ports: {ports}
"""


GW = """
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: gw, namespace: default}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 80, name: http, protocol: HTTP}
    hosts: ["*"]
"""


# --- delegate VirtualServices --------------------------------------------------------

DELEGATION = GW + svc("productpage-v1", "products") + svc("reviews", "products") + """
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: root, namespace: default}
spec:
  hosts: [bookinfo.example.com]
  gateways: [gw]
  http:
  - name: pp
    match: [{uri: {prefix: /productpage}}]
    timeout: 3s
    delegate: {name: productpage, namespace: products}
  - match: [{uri: {prefix: /reviews}}]
    delegate: {name: reviews, namespace: products}
  - route: [{destination: {host: productpage-v1.products.svc.cluster.local}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: productpage, namespace: products}
spec:
  http:
  - name: v1
    match: [{uri: {prefix: /productpage/v1}, headers: {x-user: {exact: a}}}]
    route: [{destination: {host: productpage-v1}}]
  - match: [{uri: {prefix: /other}}]
    route: [{destination: {host: productpage-v1}}]
  - route: [{destination: {host: productpage-v1}}]
    timeout: 1s
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews, namespace: products}
spec:
  exportTo: [products]
  http:
  - route: [{destination: {host: reviews}}]
"""


def test_delegate_rules_merge_into_the_root():
    mesh = mesh_from_yaml(DELEGATION)
    assert [vs.name for vs in mesh.virtual_services] == ["root"]  # delegates never bind on their own
    vh = by_name(routes.build(mesh, GATEWAY))["http.80"].virtual_hosts[0]
    got = [(r.name, r.match.prefix, [h.name for h in r.match.headers], r.route.cluster, r.route.timeout.seconds)
           for r in vh.routes]
    pp = "outbound|9080||productpage-v1.products.svc.cluster.local"
    assert got == [
        # the delegate's narrower match, its headers, its short host resolved in ITS namespace;
        # the root's timeout inherited where the delegate sets none, the names joined
        ("pp-v1", "/productpage/v1", ["x-user"], pp, 3),
        # a delegate match outside the root's (/other is not under /productpage) is dropped;
        # a delegate rule without match takes the root's match
        ("pp", "/productpage", [], pp, 1),
        # `reviews` is not exported to the root's namespace: that rule is skipped
        ("", "/", [], pp, 0),
    ]


def test_delegate_change_changes_the_merged_root():
    mesh1 = mesh_from_yaml(DELEGATION)
    mesh2 = mesh_from_yaml(DELEGATION.replace("timeout: 1s", "timeout: 2s"))
    assert mesh1.virtual_services[0].generation != mesh2.virtual_services[0].generation


# --- DestinationRule lookup and merging ------------------------------------------------

def dr(name: str, ns: str, host: str, body: str = "", export: str = "") -> str:
    exp = f"\n  exportTo: {export}" if export else ""
    return f"""
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: {name}, namespace: {ns}}}
spec:
  host: {host}{exp}
{body}"""


LB = "  trafficPolicy: {{loadBalancer: {{simple: {0}}}}}"


def lb_of(mesh, proxy, cluster="outbound|9080||reviews.products.svc.cluster.local"):
    return cluster_pb2.Cluster.LbPolicy.Name(by_name(clusters.build(mesh, proxy))[cluster].lb_policy)


def test_lookup_order_client_then_service_then_root_namespace():
    base = svc("reviews", "products")
    root = dr("root", "istio-system", "reviews.products.svc.cluster.local", LB.format("RANDOM"))
    service_ns = dr("svc", "products", "reviews", LB.format("ROUND_ROBIN"))
    client_ns = dr("client", "frontend", "reviews.products.svc.cluster.local", LB.format("LEAST_REQUEST"))
    assert lb_of(mesh_from_yaml(base + root), sidecar("frontend")) == "RANDOM"
    assert lb_of(mesh_from_yaml(base + root + service_ns), sidecar("frontend")) == "ROUND_ROBIN"
    assert lb_of(mesh_from_yaml(base + root + service_ns + client_ns), sidecar("frontend")) == "LEAST_REQUEST"
    # a rule of an unrelated namespace never applies
    other = dr("other", "elsewhere", "reviews.products.svc.cluster.local", LB.format("RANDOM"))
    assert lb_of(mesh_from_yaml(base + other), sidecar("frontend")) == "LEAST_REQUEST"  # Istio's default


def test_export_to_limits_where_a_rule_applies():
    base = svc("reviews", "products")
    private = dr("svc", "products", "reviews", LB.format("RANDOM"), export='["."]')
    assert lb_of(mesh_from_yaml(base + private), sidecar("frontend")) == "LEAST_REQUEST"
    assert lb_of(mesh_from_yaml(base + private), sidecar("products")) == "RANDOM"
    listed = dr("svc", "products", "reviews", LB.format("RANDOM"), export='[frontend]')
    assert lb_of(mesh_from_yaml(base + listed), sidecar("frontend")) == "RANDOM"
    assert lb_of(mesh_from_yaml(base + listed), sidecar("other")) == "LEAST_REQUEST"


def test_several_rules_for_one_host_merge():
    base = svc("reviews", "products")
    first = dr("a-first", "products", "reviews", """  trafficPolicy: {loadBalancer: {simple: RANDOM}}
  subsets: [{name: v1, labels: {version: v1}}]""")
    second = dr("b-second", "products", "reviews.products.svc.cluster.local", """  trafficPolicy: {loadBalancer: {simple: ROUND_ROBIN}}
  subsets: [{name: v1, labels: {version: other}}, {name: v2, labels: {version: v2}}]""")
    mesh = mesh_from_yaml(base + first + second)
    cds = by_name(clusters.build(mesh, sidecar("frontend")))
    assert "outbound|9080|v2|reviews.products.svc.cluster.local" in cds  # subsets concatenated
    # the first rule keeps its policy and its v1; the second only adds what is new
    assert cluster_pb2.Cluster.LbPolicy.Name(cds["outbound|9080|v2|reviews.products.svc.cluster.local"].lb_policy) == "RANDOM"
    rule = mesh.destination_rule("reviews.products.svc.cluster.local", "frontend")
    assert [s.labels["version"] for s in rule.typed.subsets] == ["v1", "v2"]
    # the merged rule's identity follows both: editing the second changes it
    mesh2 = mesh_from_yaml(base + first + second.replace("version: v2", "version: v3"))
    assert mesh2.destination_rule("reviews.products.svc.cluster.local", "frontend").generation != rule.generation


def test_wildcard_rule_is_the_most_specific_match():
    base = svc("reviews", "products")
    wide = dr("wide", "products", '"*.svc.cluster.local"', LB.format("RANDOM"))
    narrow = dr("narrow", "products", '"*.products.svc.cluster.local"', LB.format("ROUND_ROBIN"))
    assert lb_of(mesh_from_yaml(base + wide + narrow), sidecar("products")) == "ROUND_ROBIN"
    exact = dr("exact", "products", "reviews", LB.format("LEAST_CONN"))
    assert lb_of(mesh_from_yaml(base + wide + narrow + exact), sidecar("products")) == "LEAST_REQUEST"


# --- sidecar tls and tcp routes --------------------------------------------------------

TLS_SVC = svc("api", "shop", "[{name: https, port: 443}]", vip="10.96.0.10") + \
    svc("api-v2", "shop", "[{name: https, port: 443}]", vip="10.96.0.11") + \
    svc("db", "shop", "[{name: tcp, port: 5432}]", vip="10.96.0.12") + \
    svc("db-replica", "shop", "[{name: tcp, port: 5432}]", vip="10.96.0.13")


def test_sidecar_tls_route_by_sni():
    vs = """
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: api, namespace: shop}
spec:
  hosts: [api.shop.svc.cluster.local, v2.api.example.com]
  tls:
  - match: [{port: 443, sniHosts: [v2.api.example.com]}]
    route: [{destination: {host: api-v2, port: {number: 443}}}]
"""
    lst = by_name(listeners.build(mesh_from_yaml(TLS_SVC + vs), sidecar("shop")))["10.96.0.10_443"]
    sni = [c for c in lst.filter_chains if c.filter_chain_match.server_names]
    assert [list(c.filter_chain_match.server_names) for c in sni] == [["v2.api.example.com"]]
    tcp = tcp_proxy_pb2.TcpProxy()
    sni[0].filters[0].typed_config.Unpack(tcp)
    assert tcp.cluster == "outbound|443||api-v2.shop.svc.cluster.local"
    # everything else keeps going to the service itself
    default = tcp_proxy_pb2.TcpProxy()
    chain = lst.default_filter_chain if lst.HasField("default_filter_chain") else \
        next(c for c in lst.filter_chains if not c.filter_chain_match.server_names)
    chain.filters[0].typed_config.Unpack(default)
    assert default.cluster == "outbound|443||api.shop.svc.cluster.local"
    assert "envoy.filters.listener.tls_inspector" in [f.name for f in lst.listener_filters]


def test_sidecar_tcp_match_on_destination_subnets_and_source_labels():
    vs = """
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: db, namespace: shop}
spec:
  hosts: [db]
  tcp:
  - match: [{destinationSubnets: [10.96.0.0/24], sourceLabels: {app: reporting}}]
    route: [{destination: {host: db-replica}}]
  - match: [{destinationSubnets: [192.168.0.0/16]}]
    route: [{destination: {host: nowhere}}]
  - route: [{destination: {host: db}}]
"""
    mesh = mesh_from_yaml(TLS_SVC + vs)

    def target(proxy) -> str:
        tcp = tcp_proxy_pb2.TcpProxy()
        lst = by_name(listeners.build(mesh, proxy))["10.96.0.12_5432"]
        lst.filter_chains[0].filters[0].typed_config.Unpack(tcp)
        return tcp.cluster

    assert target(sidecar("shop", labels={"app": "reporting"})) == "outbound|5432||db-replica.shop.svc.cluster.local"
    assert target(sidecar("shop", labels={"app": "web"})) == "outbound|5432||db.shop.svc.cluster.local"


def test_gateway_l4_match_ignores_source_conditions_like_istiod():
    text = svc("echo", "shop", "[{name: tcp, port: 9000}]") + """
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: tcp-gw, namespace: shop}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 31400, name: tcp, protocol: TCP}
    hosts: ["*"]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: echo, namespace: shop}
spec:
  hosts: ["*"]
  gateways: [tcp-gw]
  tcp:
  - match: [{port: 31400, sourceLabels: {app: nobody}}]
    route: [{destination: {host: echo, port: {number: 9000}}}]
"""
    lst = by_name(listeners.build(mesh_from_yaml(text), GATEWAY))["0.0.0.0_31400"]
    tcp = tcp_proxy_pb2.TcpProxy()
    lst.filter_chains[0].filters[0].typed_config.Unpack(tcp)
    assert tcp.cluster == "outbound|9000||echo.shop.svc.cluster.local"


def test_virtual_service_export_to_hides_it_from_other_namespaces():
    text = svc("reviews", "products") + svc("ratings", "products") + """
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews, namespace: products}
spec:
  hosts: [reviews]
  exportTo: ["."]
  http:
  - route: [{destination: {host: ratings}}]
"""
    mesh = mesh_from_yaml(text)

    def cluster_for(proxy) -> str:
        rc = by_name(routes.build(mesh, proxy))["9080"]
        vh = next(v for v in rc.virtual_hosts if v.name == "reviews.products.svc.cluster.local:9080")
        return vh.routes[0].route.cluster

    assert cluster_for(sidecar("products")) == "outbound|9080||ratings.products.svc.cluster.local"
    assert cluster_for(sidecar("frontend")) == "outbound|9080||reviews.products.svc.cluster.local"


def test_virtual_service_for_another_port_does_not_leak_onto_port_80():
    text = svc("reviews", "products") + svc("web", "products", "[{name: http, port: 80}]") + """
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews, namespace: products}
spec:
  hosts: [reviews]
  http:
  - route: [{destination: {host: reviews}}]
"""
    rds = by_name(routes.build(mesh_from_yaml(text), sidecar("products")))
    assert [v.name for v in rds["80"].virtual_hosts] == ["web.products.svc.cluster.local:80", "allow_any"]
    assert "reviews.products.svc.cluster.local:9080" in [v.name for v in rds["9080"].virtual_hosts]


def test_proxy_workload_cert_does_not_change_routing():
    mesh = mesh_from_yaml(DELEGATION)
    a = routes.build(mesh, GATEWAY)
    b = routes.build(mesh, dataclasses.replace(GATEWAY, workload_cert=False))
    assert [m.SerializeToString(deterministic=True) for _, m in a] == [m.SerializeToString(deterministic=True) for _, m in b]


# --- DestinationRule traffic policies, as Envoy takes them --------------------------------

FULL_POLICY = svc("reviews", "products", "[{name: http, port: 9080}, {name: grpc, port: 9090}]") + """
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews, namespace: products}
spec:
  host: reviews
  trafficPolicy:
    connectionPool:
      tcp: {maxConnections: 50, connectTimeout: 3s, tcpKeepalive: {probes: 3, time: 600s, interval: 75s}}
      http: {http1MaxPendingRequests: 10, maxRequestsPerConnection: 5, idleTimeout: 30s, h2UpgradePolicy: UPGRADE,
             maxConcurrentStreams: 100}
    loadBalancer: {simple: ROUND_ROBIN, warmupDurationSecs: 30s}
    outlierDetection: {consecutive5xxErrors: 3, interval: 5s, baseEjectionTime: 30s, maxEjectionPercent: 50,
                       splitExternalLocalOriginErrors: true, consecutiveLocalOriginFailures: 2}
    portLevelSettings:
    - port: {number: 9090}
      loadBalancer: {consistentHash: {maglev: {tableSize: 65537}, httpCookie: {name: session, ttl: 60s}}}
      connectionPool: {http: {useClientProtocol: true}}
  subsets:
  - name: v1
    labels: {version: v1}
    trafficPolicy:
      loadBalancer: {consistentHash: {httpQueryParameterName: user, ringHash: {minimumRingSize: 2048}}}
"""


def test_traffic_policy_fields_reach_the_cluster():
    cds = by_name(clusters.build(mesh_from_yaml(FULL_POLICY), GATEWAY))
    c = cds["outbound|9080||reviews.products.svc.cluster.local"]
    assert c.upstream_connection_options.tcp_keepalive.keepalive_probes.value == 3
    assert c.upstream_connection_options.tcp_keepalive.keepalive_time.value == 600
    assert c.connect_timeout.seconds == 3
    assert c.outlier_detection.split_external_local_origin_errors
    assert c.outlier_detection.consecutive_local_origin_failure.value == 2
    assert c.round_robin_lb_config.slow_start_config.slow_start_window.seconds == 30
    from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2
    opts = http_protocol_options_pb2.HttpProtocolOptions()
    c.typed_extension_protocol_options["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"].Unpack(opts)
    assert opts.explicit_http_config.http2_protocol_options.max_concurrent_streams.value == 100  # h2 upgrade
    grpc = cds["outbound|9090||reviews.products.svc.cluster.local"]
    assert cluster_pb2.Cluster.LbPolicy.Name(grpc.lb_policy) == "MAGLEV"
    assert grpc.maglev_lb_config.table_size.value == 65537
    v1 = cds["outbound|9080|v1|reviews.products.svc.cluster.local"]
    assert cluster_pb2.Cluster.LbPolicy.Name(v1.lb_policy) == "RING_HASH"
    assert v1.ring_hash_lb_config.minimum_ring_size.value == 2048


def test_envoy_accepts_every_traffic_policy(tmp_path):
    import pytest

    from tests.support.envoy import envoy_validate
    from tests.support.static_xds import gateway_bootstrap

    text = FULL_POLICY + GW + DELEGATION.replace(GW, "") + """
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews-gw, namespace: products}
spec:
  hosts: [reviews.example.com]
  gateways: [default/gw]
  http:
  - match: [{uri: {prefix: /v1}, queryParams: {user: {exact: a}}, scheme: {exact: http}, method: {exact: GET},
             authority: {prefix: reviews}, withoutHeaders: {x-test: {}}}]
    route: [{destination: {host: reviews, subset: v1, port: {number: 9080}}}]
    mirrors: [{destination: {host: reviews, port: {number: 9090}}, percentage: {value: 25}}]
    retries: {attempts: 2, retryOn: "connect-failure,refused-stream,503", retryRemoteLocalities: true}
  - route: [{destination: {host: reviews, port: {number: 9090}}}]
"""
    if __import__("shutil").which("envoy") is None:
        pytest.skip("envoy binary not installed")
    envoy_validate(gateway_bootstrap(mesh_from_yaml(text), GATEWAY), tmp_path / "bootstrap.json")
