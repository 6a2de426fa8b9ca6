"""Generators for router (ingress gateway) proxies: LDS, RDS, CDS, EDS.

Inputs are YAML documents as an operator writes them; expectations follow what istiod
sends a gateway (compare istioctl's golden config dumps in the shared corpus).
"""
from __future__ import annotations

import json
import shutil

import pytest
import yaml
from envoy.config.bootstrap.v3 import bootstrap_pb2
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import base_pb2, config_source_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2
from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2
from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2
from google.protobuf import json_format

from controlplane.config.kinds import split_api_version
from controlplane.config.objects import ConfigObject, Origin
from controlplane.config.snapshot import ConfigSnapshot
from controlplane.generators import clusters, endpoints, listeners, routes
from controlplane.model.mesh import build_mesh
from controlplane.model.proxy import parse_node
from tests.support.coolstore import INGRESS_SERVICE, NS, WEBAPP_SERVICE, coolstore_gateway, tcp_echo_service
from tests.support.envoy import envoy_validate
from tests.support.manifests import documents, gateway
from tests.support.paths import shared
from tests.support.static_xds import gateway_bootstrap

K8S_KINDS = {"Service", "Pod", "EndpointSlice", "Namespace"}
GOLDEN = ("corpus", "istioctl-golden", "istioctl", "pkg", "writer", "envoy", "configdump", "testdata", "routes")


# --- helpers -------------------------------------------------------------------------


def to_object(doc: dict, index: int) -> ConfigObject:
    """One YAML document as the store would hold it."""
    group, version = split_api_version(doc["apiVersion"])
    meta = doc.get("metadata") or {}
    kind = doc["kind"]
    if kind in K8S_KINDS:
        spec = {k: v for k, v in doc.items() if k not in ("apiVersion", "kind", "metadata")}
    else:
        spec = doc.get("spec") or {}
    return ConfigObject(
        kind=kind,
        group=group,
        version=version,
        namespace="" if kind == "Namespace" else meta.get("namespace", "default"),
        name=meta["name"],
        labels=meta.get("labels") or {},
        annotations=meta.get("annotations") or {},
        spec=spec,
        origin=Origin("file", "test.yaml", index),
    )


def mesh_of(*texts: str):
    docs = [d for t in texts for d in yaml.safe_load_all(t) if d]
    objs = [to_object(d, i) for i, d in enumerate(docs)]
    return build_mesh(ConfigSnapshot({o.key: o for o in objs}, version=str(len(objs))))


GATEWAY_PROXY = parse_node(
    "router~10.0.0.5~gw-1.istio-system~istio-system.svc.cluster.local",
    {"LABELS": {"istio": "ingressgateway"}, "NAMESPACE": "istio-system"},
)
SIDECAR_PROXY = parse_node(
    "sidecar~10.1.0.10~webapp-1.istioinaction~istioinaction.svc.cluster.local",
    {"LABELS": {"app": "webapp"}, "NAMESPACE": "istioinaction"},
)


def by_name(items):
    return {name: msg for name, msg in items}


def hcm_of(listener) -> hcm_pb2.HttpConnectionManager:
    f = listener.filter_chains[0].filters[0]
    assert f.name == "envoy.filters.network.http_connection_manager"
    out = hcm_pb2.HttpConnectionManager()
    assert f.typed_config.Unpack(out)
    return out


def to_dict(msg) -> dict:
    return json_format.MessageToDict(msg, preserving_proto_field_name=True)


# --- the Istio in Action story -----------------------------------------------------

WEBAPP = WEBAPP_SERVICE + """---
apiVersion: v1
kind: Pod
metadata: {name: webapp-1, namespace: istioinaction, labels: {app: webapp, version: v1}}
spec: {containers: [{name: webapp, ports: [{containerPort: 8080}]}]}
status: {phase: Running, podIP: 10.1.0.10, conditions: [{type: Ready, status: "True"}]}
---
apiVersion: v1
kind: Pod
metadata: {name: webapp-2, namespace: istioinaction, labels: {app: webapp, version: v2}}
spec: {containers: [{name: webapp, ports: [{containerPort: 8080}]}]}
status: {phase: Running, podIP: 10.1.0.11, conditions: [{type: Ready, status: "True"}]}
---
apiVersion: v1
kind: Pod
metadata: {name: webapp-3, namespace: istioinaction, labels: {app: webapp, version: v1}}
spec: {containers: [{name: webapp, ports: [{containerPort: 8080}]}]}
status: {phase: Running, podIP: 10.1.0.12, conditions: [{type: Ready, status: "False"}]}
"""

COOLSTORE_GATEWAY = coolstore_gateway()

WEBAPP_VS = """
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: webapp-vs-from-gw, namespace: istioinaction}
spec:
  hosts: ["webapp.istioinaction.io"]
  gateways: [coolstore-gateway]
  http:
  - route:
    - destination: {host: webapp, port: {number: 80}}
"""

WEBAPP_CLUSTER = "outbound|80||webapp.istioinaction.svc.cluster.local"


def story_mesh(*extra: str):
    return mesh_of(INGRESS_SERVICE, WEBAPP, COOLSTORE_GATEWAY, *extra)


def test_story_listener_on_target_port():
    lds = listeners.build(story_mesh(WEBAPP_VS), GATEWAY_PROXY)
    assert [name for name, _ in lds] == ["0.0.0.0_8080"]
    lst = lds[0][1]
    assert lst.address.socket_address.address == "0.0.0.0"
    assert lst.address.socket_address.port_value == 8080
    hcm = hcm_of(lst)
    assert hcm.stat_prefix == "outbound_0.0.0.0_8080"
    assert hcm.rds.route_config_name == "http.8080"
    assert hcm.rds.config_source.HasField("ads")
    assert hcm.rds.config_source.resource_api_version == config_source_pb2.V3
    assert hcm.http_filters[-1].name == "envoy.filters.http.router"
    assert hcm.use_remote_address.value is True
    assert hcm.normalize_path.value is True
    assert hcm.path_with_escaped_slashes_action == hcm_pb2.HttpConnectionManager.KEEP_UNCHANGED
    assert hcm.forward_client_cert_details == hcm_pb2.HttpConnectionManager.SANITIZE_SET
    assert [u.upgrade_type for u in hcm.upgrade_configs] == ["websocket"]
    assert hcm.HasField("stream_idle_timeout") and hcm.stream_idle_timeout.seconds == 0
    assert hcm.HasField("request_id_extension")


def test_story_route_config():
    rds = by_name(routes.build(story_mesh(WEBAPP_VS), GATEWAY_PROXY))
    assert list(rds) == ["http.8080"]
    rc = rds["http.8080"]
    assert rc.validate_clusters.value is False and rc.HasField("validate_clusters")
    assert rc.ignore_port_in_host_matching is True
    assert rc.max_direct_response_body_size_bytes.value == 1048576
    [vh] = rc.virtual_hosts
    assert vh.name == "webapp.istioinaction.io:80"
    assert list(vh.domains) == ["webapp.istioinaction.io"]
    assert vh.include_request_attempt_count is True
    [r] = vh.routes
    # no match conditions: istiod sends a bare "/" prefix (no case_sensitive)
    assert r.match.prefix == "/" and not r.match.HasField("case_sensitive")
    assert r.route.cluster == WEBAPP_CLUSTER
    assert r.route.HasField("timeout") and r.route.timeout.seconds == 0
    assert r.metadata.filter_metadata["istio"]["config"] == (
        "/apis/networking.istio.io/v1/namespaces/istioinaction/virtual-service/webapp-vs-from-gw"
    )
    assert r.decorator.operation == "webapp.istioinaction.svc.cluster.local:80/*"


def test_story_cluster_and_endpoints():
    mesh = story_mesh(WEBAPP_VS)
    cds = by_name(clusters.build(mesh, GATEWAY_PROXY))
    c = cds[WEBAPP_CLUSTER]
    assert c.type == cluster_pb2.Cluster.EDS
    assert c.eds_cluster_config.service_name == WEBAPP_CLUSTER
    assert c.eds_cluster_config.eds_config.HasField("ads")
    assert c.eds_cluster_config.eds_config.HasField("initial_fetch_timeout")
    assert c.connect_timeout.seconds == 10
    assert c.lb_policy == cluster_pb2.Cluster.LEAST_REQUEST
    md = to_dict(c.metadata)["filter_metadata"]["istio"]
    assert md["default_original_port"] == 80
    assert md["services"] == [
        {"host": "webapp.istioinaction.svc.cluster.local", "name": "webapp", "namespace": "istioinaction"}
    ]
    eds = by_name(endpoints.build(mesh, GATEWAY_PROXY))
    cla = eds[WEBAPP_CLUSTER]
    assert cla.cluster_name == WEBAPP_CLUSTER
    [loc] = cla.endpoints
    # webapp-3 is not ready: left out
    sockets = [e.endpoint.address.socket_address for e in loc.lb_endpoints]
    addrs = [(s.address, s.port_value) for s in sockets]
    assert addrs == [("10.1.0.10", 8080), ("10.1.0.11", 8080)]
    assert loc.load_balancing_weight.value == 2
    assert all(e.load_balancing_weight.value == 1 and e.health_status == 1 for e in loc.lb_endpoints)  # HEALTHY


def test_every_service_port_gets_a_cluster_plus_blackhole():
    mesh = story_mesh(WEBAPP_VS)
    names = [n for n, _ in clusters.build(mesh, GATEWAY_PROXY)]
    assert names == [
        "outbound|80||istio-ingressgateway.istio-system.svc.cluster.local",
        "outbound|443||istio-ingressgateway.istio-system.svc.cluster.local",
        "outbound|31400||istio-ingressgateway.istio-system.svc.cluster.local",
        WEBAPP_CLUSTER,
        "BlackHoleCluster",
    ]
    blackhole = by_name(clusters.build(mesh, GATEWAY_PROXY))["BlackHoleCluster"]
    assert blackhole.type == cluster_pb2.Cluster.STATIC
    assert not blackhole.HasField("load_assignment")
    # every EDS cluster has an assignment, even without endpoints, so none stays warming
    assert [n for n, _ in endpoints.build(mesh, GATEWAY_PROXY)] == names[:-1]
    empty = by_name(endpoints.build(mesh, GATEWAY_PROXY))[names[0]]
    assert empty.cluster_name == names[0] and len(empty.endpoints) == 0


def test_gateway_without_virtual_service_answers_404():
    mesh = story_mesh()
    assert [n for n, _ in listeners.build(mesh, GATEWAY_PROXY)] == ["0.0.0.0_8080"]
    rc = by_name(routes.build(mesh, GATEWAY_PROXY))["http.8080"]
    [vh] = rc.virtual_hosts
    assert vh.name == "blackhole:80"
    assert list(vh.domains) == ["*"]
    assert len(vh.routes) == 0  # no route: Envoy answers 404 NR


def test_gateway_service_missing_falls_back_to_server_port():
    mesh = mesh_of(WEBAPP, COOLSTORE_GATEWAY, WEBAPP_VS)
    assert [n for n, _ in listeners.build(mesh, GATEWAY_PROXY)] == ["0.0.0.0_80"]
    assert [n for n, _ in routes.build(mesh, GATEWAY_PROXY)] == ["http.80"]


def test_named_target_port_resolves_through_gateway_pods():
    svc = """
apiVersion: v1
kind: Service
metadata: {name: istio-ingressgateway, namespace: istio-system}
spec:
  selector: {istio: ingressgateway}
  ports: [{name: http2, port: 80, targetPort: http}]
---
apiVersion: v1
kind: Pod
metadata: {name: gw-1, namespace: istio-system, labels: {istio: ingressgateway}}
spec: {containers: [{name: istio-proxy, ports: [{name: http, containerPort: 8081}]}]}
status: {podIP: 10.0.0.5}
"""
    mesh = mesh_of(svc, WEBAPP, COOLSTORE_GATEWAY, WEBAPP_VS)
    assert [n for n, _ in listeners.build(mesh, GATEWAY_PROXY)] == ["0.0.0.0_8081"]


def test_virtual_service_without_gateways_binds_only_to_mesh():
    vs = WEBAPP_VS.replace("  gateways: [coolstore-gateway]\n", "")
    rc = by_name(routes.build(story_mesh(vs), GATEWAY_PROXY))["http.8080"]
    assert [v.name for v in rc.virtual_hosts] == ["blackhole:80"]


def test_gateway_reference_forms():
    for ref in ("istioinaction/coolstore-gateway", "coolstore-gateway.istioinaction.svc.cluster.local"):
        vs = WEBAPP_VS.replace("[coolstore-gateway]", f"[{ref}]")
        vs = vs.replace("namespace: istioinaction}", "namespace: default}")
        vs = vs.replace("host: webapp,", "host: webapp.istioinaction.svc.cluster.local,")
        rc = by_name(routes.build(story_mesh(vs), GATEWAY_PROXY))["http.8080"]
        assert [v.name for v in rc.virtual_hosts] == ["webapp.istioinaction.io:80"], ref
    # a short name resolves in the VirtualService's namespace: default/coolstore-gateway does not exist
    vs = WEBAPP_VS.replace("namespace: istioinaction}", "namespace: default}")
    rc = by_name(routes.build(story_mesh(vs), GATEWAY_PROXY))["http.8080"]
    assert [v.name for v in rc.virtual_hosts] == ["blackhole:80"]


@pytest.mark.parametrize(
    "server_host, vs_ns, bound",
    [
        ("istioinaction/webapp.istioinaction.io", "istioinaction", True),
        ("istioinaction/webapp.istioinaction.io", "default", False),
        ("./webapp.istioinaction.io", "istioinaction", True),  # "." is the Gateway's namespace
        ("./webapp.istioinaction.io", "default", False),
        ("*/webapp.istioinaction.io", "default", True),
        ("webapp.istioinaction.io", "default", True),
    ],
)
def test_namespace_prefixed_server_hosts_restrict_binding(server_host, vs_ns, bound):
    gw = coolstore_gateway([server_host])
    vs = (
        WEBAPP_VS.replace("namespace: istioinaction}", f"namespace: {vs_ns}}}")
        .replace("[coolstore-gateway]", "[istioinaction/coolstore-gateway]")
        .replace("host: webapp,", "host: webapp.istioinaction.svc.cluster.local,")
    )
    rc = by_name(routes.build(mesh_of(INGRESS_SERVICE, WEBAPP, gw, vs), GATEWAY_PROXY))["http.8080"]
    expected = ["webapp.istioinaction.io:80"] if bound else ["blackhole:80"]
    assert [v.name for v in rc.virtual_hosts] == expected


@pytest.mark.parametrize(
    "server_host, vs_host, vhost",
    [
        ("*.istioinaction.io", "webapp.istioinaction.io", "webapp.istioinaction.io"),
        ("webapp.istioinaction.io", "*.istioinaction.io", "webapp.istioinaction.io"),
        ("*", "webapp.istioinaction.io", "webapp.istioinaction.io"),
        ("*", "*", "*"),
        ("*.istioinaction.io", "*.api.istioinaction.io", "*.api.istioinaction.io"),
        ("*.example.com", "webapp.istioinaction.io", None),
    ],
)
def test_wildcard_host_intersection(server_host, vs_host, vhost):
    gw = coolstore_gateway([server_host])
    vs = WEBAPP_VS.replace('hosts: ["webapp.istioinaction.io"]', f'hosts: ["{vs_host}"]')
    rc = by_name(routes.build(mesh_of(INGRESS_SERVICE, WEBAPP, gw, vs), GATEWAY_PROXY))["http.8080"]
    if vhost is None:
        assert [v.name for v in rc.virtual_hosts] == ["blackhole:80"]
    else:
        [vh] = rc.virtual_hosts
        assert vh.name == f"{vhost}:80" and list(vh.domains) == [vhost]


# --- matching the golden istiod output ----------------------------------------------

HTTPBIN = """
apiVersion: v1
kind: Service
metadata: {name: istio-ingressgateway, namespace: istio-system}
spec:
  selector: {istio: ingressgateway}
  ports: [{name: http2, port: 80, targetPort: 8080}]
---
apiVersion: v1
kind: Service
metadata: {name: httpbin, namespace: default}
spec:
  selector: {app: httpbin}
  ports: [{name: http, port: 8000, targetPort: 8080}]
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: httpbin-gateway, namespace: default}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 80, name: http, protocol: HTTP}
    hosts: ["httpbin.example.com"]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: httpbin, namespace: default}
spec:
  hosts: ["httpbin.example.com"]
  gateways: [httpbin-gateway]
  http:
  - match: [{uri: {prefix: /get}}]
    route:
    - destination: {host: httpbin, port: {number: 8000}}
"""


def test_route_config_matches_istiod_golden():
    golden = json.loads(shared(*GOLDEN, "istio-gateway-http-route-prefix", "configdump.json").read_text())
    want = golden["configs"][0]["dynamic_route_configs"][0]["route_config"]
    want.pop("@type")
    got = to_dict(by_name(routes.build(mesh_of(HTTPBIN), GATEWAY_PROXY))["http.8080"])
    assert got == want


# --- VirtualService http rules ------------------------------------------------------


def routes_for(http_yaml: str, extra: str = ""):
    vs = f"""
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: webapp, namespace: istioinaction}}
spec:
  hosts: ["webapp.istioinaction.io"]
  gateways: [coolstore-gateway]
  http:
{http_yaml}
"""
    rc = by_name(routes.build(story_mesh(vs, extra), GATEWAY_PROXY))["http.8080"]
    [vh] = rc.virtual_hosts
    return list(vh.routes)


def test_each_match_becomes_a_route():
    rs = routes_for(
        """
  - match:
    - uri: {exact: /api/catalog}
    - uri: {regex: "/api/items/[0-9]+"}
      ignoreUriCase: true
    - headers:
        x-user: {exact: jason}
        x-env: {prefix: prod}
        x-id: {regex: "[a-f0-9]+"}
        x-any: {}
    route:
    - destination: {host: webapp}
"""
    )
    assert len(rs) == 3
    assert rs[0].match.path == "/api/catalog" and rs[0].match.case_sensitive.value is True
    assert rs[1].match.safe_regex.regex == "/api/items/[0-9]+"
    assert rs[1].match.case_sensitive.value is False
    assert rs[2].match.prefix == "/"
    headers = {h.name: h for h in rs[2].match.headers}
    assert [h.name for h in rs[2].match.headers] == sorted(headers)
    assert headers["x-user"].string_match.exact == "jason"
    assert headers["x-env"].string_match.prefix == "prod"
    assert headers["x-id"].string_match.safe_regex.regex == "[a-f0-9]+"
    assert headers["x-any"].present_match is True
    # destination port omitted: the service's only port
    assert all(r.route.cluster == WEBAPP_CLUSTER for r in rs)
    assert rs[0].decorator.operation == "webapp.istioinaction.svc.cluster.local:80/api/catalog"


def test_catch_all_ends_the_virtual_service():
    rs = routes_for(
        """
  - route: [{destination: {host: webapp}}]
  - match: [{uri: {prefix: /never}}]
    route: [{destination: {host: webapp}}]
"""
    )
    assert len(rs) == 1 and rs[0].match.prefix == "/"


def test_weighted_destinations_and_subsets():
    rs = routes_for(
        """
  - route:
    - destination: {host: webapp, subset: v1}
      weight: 80
    - destination: {host: webapp, subset: v2}
      weight: 20
    - destination: {host: webapp, subset: v3}
      weight: 0
"""
    )
    wc = rs[0].route.weighted_clusters
    assert [(c.name, c.weight.value) for c in wc.clusters] == [
        ("outbound|80|v1|webapp.istioinaction.svc.cluster.local", 80),
        ("outbound|80|v2|webapp.istioinaction.svc.cluster.local", 20),
    ]
    assert not wc.HasField("total_weight")
    assert rs[0].decorator.operation == "webapp:80/*"


def test_unknown_destination_still_routes_to_its_cluster():
    rs = routes_for("  - route: [{destination: {host: nowhere.example.com}}]\n")
    # no service: the port is the Gateway server port, and Envoy answers 503 for the cluster
    assert rs[0].route.cluster == "outbound|80||nowhere.example.com"


def test_route_options():
    rs = routes_for(
        """
  - name: main
    match: [{name: api, uri: {prefix: /api}}]
    rewrite: {uri: /v2/api, authority: backend.internal}
    timeout: 1.5s
    retries: {attempts: 3, perTryTimeout: 500ms, retryOn: "5xx,gateway-error,429"}
    headers:
      request:
        set: {x-a: "1"}
        add: {x-b: "2"}
        remove: [x-c]
      response:
        set: {x-d: "4"}
    fault:
      delay: {fixedDelay: 2s, percentage: {value: 50}}
      abort: {httpStatus: 500, percentage: {value: 10}}
    route: [{destination: {host: webapp}}]
  - match: [{uri: {prefix: /old}}]
    redirect: {uri: /new, authority: other.example.com, redirectCode: 302}
  - match: [{uri: {prefix: /gone}}]
    directResponse: {status: 410, body: {string: gone}}
  - match: [{uri: {prefix: /noretry}}]
    retries: {attempts: 0}
    route: [{destination: {host: webapp}}]
"""
    )
    main, redirect, direct, noretry = rs
    assert main.name == "main.api"
    a = main.route
    assert a.prefix_rewrite == "/v2/api" and a.host_rewrite_literal == "backend.internal"
    assert (a.timeout.seconds, a.timeout.nanos) == (1, 500_000_000)
    assert a.max_grpc_timeout == a.timeout
    assert a.retry_policy.num_retries.value == 3
    assert a.retry_policy.retry_on == "5xx,gateway-error,retriable-status-codes"
    assert list(a.retry_policy.retriable_status_codes) == [429]
    assert a.retry_policy.per_try_timeout.nanos == 500_000_000
    assert [(h.header.key, h.append_action) for h in main.request_headers_to_add] == [
        ("x-a", base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD),
        ("x-b", base_pb2.HeaderValueOption.APPEND_IF_EXISTS_OR_ADD),
    ]
    assert list(main.request_headers_to_remove) == ["x-c"]
    assert [h.header.key for h in main.response_headers_to_add] == ["x-d"]
    assert "envoy.filters.http.fault" in main.typed_per_filter_config
    assert redirect.redirect.path_redirect == "/new" and redirect.redirect.host_redirect == "other.example.com"
    assert redirect.redirect.response_code == 1  # FOUND
    assert direct.direct_response.status == 410 and direct.direct_response.body.inline_string == "gone"
    assert not noretry.route.HasField("retry_policy")


def test_default_retry_policy_like_istiod():
    [r] = routes_for("  - route: [{destination: {host: webapp}}]\n")
    p = r.route.retry_policy
    assert p.retry_on == "connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes"
    assert p.num_retries.value == 2 and p.host_selection_retry_max_attempts == 5
    assert list(p.retriable_status_codes) == [503]
    assert [h.name for h in p.retry_host_predicate] == ["envoy.retry_host_predicates.previous_hosts"]


def test_virtual_services_merge_on_one_host_in_order():
    second = """
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: zz-catalog, namespace: istioinaction}
spec:
  hosts: ["webapp.istioinaction.io"]
  gateways: [coolstore-gateway]
  http:
  - match: [{uri: {prefix: /api/catalog}}]
    route: [{destination: {host: webapp}}]
"""
    rc = by_name(routes.build(story_mesh(WEBAPP_VS, second), GATEWAY_PROXY))["http.8080"]
    [vh] = rc.virtual_hosts
    # the first VirtualService's catch-all moves behind the second one's specific route
    assert [r.match.prefix for r in vh.routes] == ["/api/catalog", "/"]


def test_match_gateways_restrict_routes():
    rs = routes_for(
        """
  - match: [{uri: {prefix: /mesh-only}, gateways: [mesh]}]
    route: [{destination: {host: webapp}}]
  - match: [{uri: {prefix: /gw}, gateways: [coolstore-gateway]}]
    route: [{destination: {host: webapp}}]
"""
    )
    assert [r.match.prefix for r in rs] == ["/gw"]


def test_https_redirect_sets_require_tls():
    gw = COOLSTORE_GATEWAY + "    tls: {httpsRedirect: true}\n"
    rc = by_name(routes.build(mesh_of(INGRESS_SERVICE, WEBAPP, gw), GATEWAY_PROXY))["http.8080"]
    [vh] = rc.virtual_hosts
    assert vh.name == "webapp.istioinaction.io:80" and vh.require_tls == 2  # ALL


# --- DestinationRules ----------------------------------------------------------------

WEBAPP_DR = """
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: webapp, namespace: istioinaction}
spec:
  host: webapp
  trafficPolicy:
    loadBalancer: {simple: ROUND_ROBIN}
    connectionPool:
      tcp: {connectTimeout: 3s, maxConnections: 10}
      http: {http1MaxPendingRequests: 5}
    outlierDetection: {consecutive5xxErrors: 1, interval: 5s, baseEjectionTime: 30s, maxEjectionPercent: 100}
  subsets:
  - name: v1
    labels: {version: v1}
  - name: v2
    labels: {version: v2}
    trafficPolicy:
      loadBalancer: {simple: RANDOM}
"""


def test_subset_clusters_and_traffic_policy():
    mesh = story_mesh(WEBAPP_VS, WEBAPP_DR)
    cds = by_name(clusters.build(mesh, GATEWAY_PROXY))
    base = cds[WEBAPP_CLUSTER]
    v1, v2 = cds[WEBAPP_CLUSTER.replace("||", "|v1|")], cds[WEBAPP_CLUSTER.replace("||", "|v2|")]
    assert base.lb_policy == cluster_pb2.Cluster.ROUND_ROBIN
    assert base.connect_timeout.seconds == 3
    t = base.circuit_breakers.thresholds[0]
    assert (t.max_connections.value, t.max_pending_requests.value, t.max_requests.value) == (10, 5, 2**32 - 1)
    assert base.outlier_detection.consecutive_5xx.value == 1 and base.outlier_detection.interval.seconds == 5
    assert v1.lb_policy == cluster_pb2.Cluster.ROUND_ROBIN and v1.connect_timeout.seconds == 3
    assert v2.lb_policy == cluster_pb2.Cluster.RANDOM and v2.connect_timeout.seconds == 3
    assert v2.eds_cluster_config.service_name == "outbound|80|v2|webapp.istioinaction.svc.cluster.local"
    md = to_dict(v2.metadata)["filter_metadata"]["istio"]
    assert md["subset"] == "v2"
    assert md["config"] == "/apis/networking.istio.io/v1/namespaces/istioinaction/destination-rule/webapp"


def test_subset_endpoints_filtered_by_labels():
    eds = by_name(endpoints.build(story_mesh(WEBAPP_VS, WEBAPP_DR), GATEWAY_PROXY))
    def addrs(name):
        return [e.endpoint.address.socket_address.address for loc in eds[name].endpoints for e in loc.lb_endpoints]
    assert addrs(WEBAPP_CLUSTER) == ["10.1.0.10", "10.1.0.11"]
    assert addrs(WEBAPP_CLUSTER.replace("||", "|v1|")) == ["10.1.0.10"]  # 10.1.0.12 is v1 but not ready
    assert addrs(WEBAPP_CLUSTER.replace("||", "|v2|")) == ["10.1.0.11"]
    assert eds[WEBAPP_CLUSTER.replace("||", "|v1|")].endpoints[0].load_balancing_weight.value == 1


def test_grpc_port_cluster_speaks_http2():
    svc = """
apiVersion: v1
kind: Service
metadata: {name: catalog, namespace: istioinaction}
spec:
  selector: {app: catalog}
  ports: [{name: grpc-api, port: 3000}]
"""
    c = by_name(clusters.build(mesh_of(svc), GATEWAY_PROXY))["outbound|3000||catalog.istioinaction.svc.cluster.local"]
    opts = http_protocol_options_pb2.HttpProtocolOptions()
    assert c.typed_extension_protocol_options["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"].Unpack(opts)
    assert opts.explicit_http_config.HasField("http2_protocol_options")


# --- TCP servers ---------------------------------------------------------------------

TCP_ECHO = documents(tcp_echo_service(2701),
                     gateway("echo-tcp-gateway", NS, ["*"], port=31400, protocol="TCP", port_name="tcp-echo"))

TCP_ECHO_VS = """
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: tcp-echo-vs-from-gw, namespace: istioinaction}
spec:
  hosts: ["*"]
  gateways: [echo-tcp-gateway]
  tcp:
  - match: [{port: 31400}]
    route:
    - destination: {host: tcp-echo, port: {number: 2701}}
"""


def test_tcp_server_proxies_to_virtual_service_destination():
    lds = by_name(listeners.build(mesh_of(INGRESS_SERVICE, TCP_ECHO, TCP_ECHO_VS), GATEWAY_PROXY))
    lst = lds["0.0.0.0_31400"]
    [f] = lst.filter_chains[0].filters
    assert f.name == "envoy.filters.network.tcp_proxy"
    tp = tcp_proxy_pb2.TcpProxy()
    assert f.typed_config.Unpack(tp)
    assert tp.cluster == "outbound|2701||tcp-echo.istioinaction.svc.cluster.local"
    # no tcp route bound: no listener (as istiod)
    assert "0.0.0.0_31400" not in by_name(listeners.build(mesh_of(INGRESS_SERVICE, TCP_ECHO), GATEWAY_PROXY))


def test_conflicting_server_on_a_port_is_dropped():
    other = documents(gateway("zz-tcp", NS, ["*"], protocol="TCP", port_name="tcp"))
    lds = listeners.build(story_mesh(WEBAPP_VS, other), GATEWAY_PROXY)
    assert [n for n, _ in lds] == ["0.0.0.0_8080"]
    assert hcm_of(lds[0][1]).rds.route_config_name == "http.8080"


# --- proxy types and purity ---------------------------------------------------------


def test_sidecars_get_sidecar_config():
    # Sidecars are covered in test_sidecar_generators.py; here: not the gateway's config.
    mesh = story_mesh(WEBAPP_VS, WEBAPP_DR)
    names = [n for n, _ in listeners.build(mesh, SIDECAR_PROXY)]
    assert "0.0.0.0_8080" not in names and names[-2:] == ["virtualOutbound", "virtualInbound"]
    assert "http.8080" not in dict(routes.build(mesh, SIDECAR_PROXY))


def test_gateway_selecting_other_proxies_is_ignored():
    other = parse_node(
        "router~10.0.0.9~egress-1.istio-system~istio-system.svc.cluster.local", {"LABELS": {"istio": "egressgateway"}}
    )
    mesh = story_mesh(WEBAPP_VS)
    assert listeners.build(mesh, other) == [] and routes.build(mesh, other) == []


def serialized(mesh) -> list[bytes]:
    out = []
    for mod in (clusters, endpoints, listeners, routes):
        for name, msg in mod.build(mesh, GATEWAY_PROXY):
            out.append(name.encode() + b"\0" + msg.SerializeToString(deterministic=True))
    return out


def test_builds_are_deterministic():
    texts = [INGRESS_SERVICE, WEBAPP, COOLSTORE_GATEWAY, WEBAPP_VS, WEBAPP_DR, TCP_ECHO, TCP_ECHO_VS]
    first = serialized(mesh_of(*texts))
    assert first == serialized(mesh_of(*texts))
    assert first == serialized(mesh_of(*reversed(texts)))  # document order does not matter


# --- Envoy accepts it ----------------------------------------------------------------


def static_bootstrap(mesh, proxy) -> bootstrap_pb2.Bootstrap:
    return gateway_bootstrap(mesh, proxy, node_cluster="istio-ingressgateway.istio-system")


@pytest.mark.e2e
def test_envoy_accepts_generated_config(tmp_path):
    envoy = shutil.which("envoy")
    if envoy is None:
        pytest.skip("envoy binary not installed")
    rich_vs = """
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: webapp-rich, namespace: istioinaction}
spec:
  hosts: ["*.istioinaction.io"]
  gateways: [coolstore-gateway]
  http:
  - match:
    - uri: {regex: "/api/items/[0-9]+"}
      headers: {x-user: {exact: jason}, x-any: {}}
      queryParams: {q: {prefix: a}}
      withoutHeaders: {x-skip: {exact: "1"}}
      ignoreUriCase: true
    fault: {delay: {fixedDelay: 1s, percentage: {value: 1}}, abort: {grpcStatus: UNAVAILABLE, percentage: {value: 1}}}
    corsPolicy: {allowOrigins: [{exact: "https://a.example.com"}], allowMethods: [GET], maxAge: 24h}
    mirror: {host: webapp, subset: v2}
    mirrorPercentage: {value: 10}
    route:
    - destination: {host: webapp, subset: v1}
      weight: 90
      headers: {request: {set: {x-v: "1"}}}
    - destination: {host: webapp, subset: v2}
      weight: 10
  - match: [{uri: {prefix: /old}}]
    redirect: {uri: /new, port: 8443, scheme: https}
  - match: [{uri: {exact: /teapot}}]
    directResponse: {status: 418, body: {string: "short and stout"}}
  - rewrite: {uri: /, authority: webapp.internal}
    timeout: 2s
    retries: {attempts: 5, perTryTimeout: 1s, retryOn: "gateway-error,503", retryRemoteLocalities: true}
    route: [{destination: {host: webapp}}]
"""
    dr = WEBAPP_DR + """
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: catalog, namespace: istioinaction}
spec:
  host: catalog
  trafficPolicy:
    loadBalancer: {consistentHash: {httpHeaderName: x-user}}
    connectionPool: {http: {idleTimeout: 30s, maxRequestsPerConnection: 10}}
---
apiVersion: v1
kind: Service
metadata: {name: catalog, namespace: istioinaction}
spec:
  selector: {app: catalog}
  ports: [{name: grpc, port: 3000}, {name: udp-dns, port: 53, protocol: UDP}]
"""
    mesh = mesh_of(INGRESS_SERVICE, WEBAPP, COOLSTORE_GATEWAY, WEBAPP_VS, rich_vs, dr, TCP_ECHO, TCP_ECHO_VS)
    boot = static_bootstrap(mesh, GATEWAY_PROXY)
    assert len(boot.static_resources.listeners) == 2
    envoy_validate(boot, tmp_path / "bootstrap.json")
    # and the empty gateway (404 virtual host) too
    envoy_validate(static_bootstrap(story_mesh(), GATEWAY_PROXY), tmp_path / "bootstrap.json")
