"""What the mesh config's fields do to what proxies receive (issue 18, point 5), and that a
mesh config change reaches a connected proxy:

- accessLogFile / accessLogEncoding / accessLogFormat: file access logs on the HTTP
  connection managers and tcp_proxies of sidecar and gateway listeners;
- protocolDetectionTimeout: the listener filter timeout of sniffing listeners;
- defaultHttpRetryPolicy: the retries of routes without VirtualService retries;
- enableAutoMtls false: no automatic Istio mTLS (a DestinationRule still asks for it);
- trustDomainAliases: outbound SANs and inbound peer validation;
- localityLbSetting: the default behind DestinationRules;
- inboundTrafficPolicy LOCALHOST: inbound clusters to 127.0.0.1.
"""
from __future__ import annotations

import pytest
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_pb2
from envoy.extensions.access_loggers.file.v3 import file_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2
from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2
from envoy.extensions.transport_sockets.tls.v3 import tls_pb2

from controlplane import names
from controlplane.generators import Generator, clusters, endpoints, listeners, routes
from controlplane.generators.access_log import DEFAULT_TEXT_FORMAT
from controlplane.model.mesh import build_mesh
from controlplane.model.meshconfig import MeshConfigError, parse_mesh_config
from controlplane.model.proxy import parse_node
from tests.support.ads import eventually, run
from tests.support.ads_server import Harness
from tests.support.chapter9 import (
    CATALOG,
    CATALOG_HOST,
    CATALOG_PROXY,
    GATEWAY_PROXY,
    NS,
    WEBAPP_PROXY,
    dr,
    mesh,
)

GATEWAY = f"""
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: gw, namespace: {NS}}}
spec:
  selector: {{istio: ingressgateway}}
  servers:
  - port: {{number: 80, name: http, protocol: HTTP}}
    hosts: ["*"]
"""
TCP_SERVICE = f"""
apiVersion: v1
kind: Service
metadata: {{name: db, namespace: {NS}}}
spec:
  clusterIP: 10.96.0.30
  selector: {{app: db}}
  ports: [{{name: tcp, port: 5432}}]
"""


def with_mesh_config(text: str, *extra: str):
    """The chapter 9 layout (and `extra` documents) under the mesh config `text`."""
    return build_mesh(mesh(*extra).config, mesh_config=parse_mesh_config(_yaml(text)))


def _yaml(text: str):
    import yaml

    return yaml.safe_load(text)


def built(fn, m, proxy) -> dict:
    return dict(fn(m, proxy))


def network_filters(lst: listener_pb2.Listener):
    chains = list(lst.filter_chains) + ([lst.default_filter_chain] if lst.HasField("default_filter_chain") else [])
    for chain in chains:
        yield from chain.filters


def access_logs(lst: listener_pb2.Listener) -> list[tuple[str, file_pb2.FileAccessLog]]:
    """(filter name, file access log) of every HCM and tcp_proxy of `lst`."""
    out = []
    for f in network_filters(lst):
        msg = {"envoy.filters.network.http_connection_manager": hcm_pb2.HttpConnectionManager,
               "envoy.filters.network.tcp_proxy": tcp_proxy_pb2.TcpProxy}.get(f.name)
        if msg is None:
            continue
        m = msg()
        f.typed_config.Unpack(m)
        for log in m.access_log:
            fl = file_pb2.FileAccessLog()
            log.typed_config.Unpack(fl)
            out.append((f.name, fl))
    return out


# --- parsing ------------------------------------------------------------------------------


@pytest.mark.parametrize("text, field", [
    ("accessLogEncoding: XML", "accessLogEncoding"),
    ("accessLogEncoding: JSON\naccessLogFormat: 'not json'", "accessLogFormat"),
    ("accessLogFile: 7", "accessLogFile"),
    ("enableAutoMtls: maybe", "enableAutoMtls"),
    ("protocolDetectionTimeout: soon", "protocolDetectionTimeout"),
    ("inboundTrafficPolicy: {mode: SOMETIMES}", "inboundTrafficPolicy.mode"),
    ("defaultHttpRetryPolicy: {attempts: -1}", "defaultHttpRetryPolicy.attempts"),
    ("defaultHttpRetryPolicy: {attempts: 2, perTryTimeout: fast}", "defaultHttpRetryPolicy.perTryTimeout"),
    ("defaultConfig: {concurrency: two}", "defaultConfig.concurrency"),
    ("defaultConfig: {drainDuration: long}", "defaultConfig.drainDuration"),
    ("defaultConfig: {proxyStatsMatcher: {inclusionRegexps: ['(']}}", "defaultConfig.proxyStatsMatcher.inclusionRegexps[0]"),
    ("defaultConfig: {proxyStatsMatcher: {inclusionWords: [a]}}", "defaultConfig.proxyStatsMatcher.inclusionWords"),
    ("defaultConfig: {proxyMetadata: {A: 1}}", "defaultConfig.proxyMetadata"),
    ("localityLbSetting: {distribute: [{from: a/*, to: {b/*: 60}}]}", "localityLbSetting.distribute[0].to"),
    ("localityLbSetting: {distribute: [{from: a, to: {b: 100}}], failover: [{from: a, to: b}]}", "localityLbSetting"),
])
def test_a_bad_field_is_rejected_by_name(text, field):
    with pytest.raises(MeshConfigError) as e:
        parse_mesh_config(_yaml(text))
    assert e.value.field == field, str(e.value)


def test_istio_defaults_and_what_is_not_acted_on():
    mc = parse_mesh_config({"defaultConfig": {"concurrency": 0, "tracing": {}, "terminationDrainDuration": "10s"}})
    assert mc.enable_auto_mtls and mc.inbound_traffic_policy == "PASSTHROUGH" and mc.access_log_file == ""
    assert mc.protocol_detection_timeout.total_nanos == 0 and mc.default_http_retry_policy is None
    assert mc.default_config.concurrency == 0 and mc.default_config.drain_duration.seconds == 45
    assert mc.default_config.termination_drain_duration.seconds == 10
    # terminationDrainDuration is pilot-agent's (no agent here): reported, like tracing.
    assert mc.unread == ("defaultConfig.terminationDrainDuration", "defaultConfig.tracing")


# --- access logs ----------------------------------------------------------------------------


def test_access_log_file_on_every_sidecar_and_gateway_filter_in_istios_default_format():
    m = with_mesh_config("accessLogFile: /dev/stdout", GATEWAY, TCP_SERVICE)
    side = built(listeners.build, m, WEBAPP_PROXY)
    logs = [log for lst in side.values() for log in access_logs(lst)]
    kinds = {name for name, _ in logs}
    assert kinds == {"envoy.filters.network.http_connection_manager", "envoy.filters.network.tcp_proxy"}
    assert all(fl.path == "/dev/stdout" for _, fl in logs)
    assert all(fl.log_format.text_format_source.inline_string == DEFAULT_TEXT_FORMAT for _, fl in logs)
    # The TCP service's outbound listener and virtualInbound's chains log too.
    assert access_logs(side["10.96.0.30_5432"]) and access_logs(side["virtualInbound"])
    # Connections no chain takes (NR) are logged by the listener.
    assert all(lst.access_log[0].filter.response_flag_filter.flags == ["NR"] for lst in side.values())
    gw = built(listeners.build, m, GATEWAY_PROXY)
    assert [fl.path for _, fl in access_logs(gw["0.0.0.0_8080"])] == ["/dev/stdout"]


def test_access_log_text_format_gets_its_newline_and_json_its_fields():
    text = with_mesh_config("accessLogFile: /tmp/a.log\naccessLogFormat: '%REQ(:METHOD)% %RESPONSE_CODE%'")
    fl = access_logs(built(listeners.build, text, WEBAPP_PROXY)["virtualInbound"])[0][1]
    assert fl.path == "/tmp/a.log" and fl.log_format.text_format_source.inline_string == "%REQ(:METHOD)% %RESPONSE_CODE%\n"
    js = with_mesh_config('accessLogFile: /dev/stdout\naccessLogEncoding: JSON\naccessLogFormat: \'{"code": "%RESPONSE_CODE%"}\'')
    fl = access_logs(built(listeners.build, js, WEBAPP_PROXY)["virtualInbound"])[0][1]
    assert dict(fl.log_format.json_format) == {"code": "%RESPONSE_CODE%"}
    default_json = with_mesh_config("accessLogFile: /dev/stdout\naccessLogEncoding: JSON")
    fl = access_logs(built(listeners.build, default_json, WEBAPP_PROXY)["virtualInbound"])[0][1]
    assert fl.log_format.json_format["response_code"] == "%RESPONSE_CODE%" and "upstream_cluster" in fl.log_format.json_format


def test_without_access_log_file_no_listener_logs():
    side = built(listeners.build, mesh(), WEBAPP_PROXY)
    assert not any(lst.access_log or access_logs(lst) for lst in side.values())


# --- listeners, routes ----------------------------------------------------------------------


def test_protocol_detection_timeout_on_the_sniffing_listeners():
    side = built(listeners.build, with_mesh_config("protocolDetectionTimeout: 250ms"), WEBAPP_PROXY)
    inbound = side["virtualInbound"]
    assert inbound.listener_filters_timeout.ToMilliseconds() == 250 and inbound.continue_on_listener_filters_timeout
    default = built(listeners.build, mesh(), WEBAPP_PROXY)["virtualInbound"]
    assert default.listener_filters_timeout.ToMilliseconds() == 0  # Istio's default: wait for the bytes


def _default_route_retries(m) -> route_pb2.Route:
    rc = built(routes.build, m, WEBAPP_PROXY)["80"]
    vh = next(v for v in rc.virtual_hosts if CATALOG_HOST in v.domains)
    return vh.routes[-1].route


def test_default_http_retry_policy_replaces_istios_default_retries():
    assert _default_route_retries(mesh()).retry_policy.num_retries.value == 2  # istiod's default
    action = _default_route_retries(with_mesh_config(
        "defaultHttpRetryPolicy: {attempts: 5, retryOn: 'gateway-error,503', perTryTimeout: 2s}"))
    policy = action.retry_policy
    assert policy.num_retries.value == 5 and policy.retry_on == "gateway-error,retriable-status-codes"
    assert list(policy.retriable_status_codes) == [503] and policy.per_try_timeout.seconds == 2
    off = _default_route_retries(with_mesh_config("defaultHttpRetryPolicy: {attempts: 0}"))
    assert not off.HasField("retry_policy")


def test_a_virtual_service_retry_wins_over_the_mesh_default():
    vs = f"""
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: catalog, namespace: {NS}}}
spec:
  hosts: [catalog]
  http:
  - retries: {{attempts: 1}}
    route: [{{destination: {{host: catalog}}}}]
"""
    action = _default_route_retries(with_mesh_config("defaultHttpRetryPolicy: {attempts: 5}", vs))
    assert action.retry_policy.num_retries.value == 1


# --- clusters -------------------------------------------------------------------------------


def _catalog_cluster(m) -> cluster_pb2.Cluster:
    return built(clusters.build, m, WEBAPP_PROXY)[CATALOG]


def test_auto_mtls_off_sends_plaintext_unless_a_destination_rule_asks():
    assert _catalog_cluster(mesh()).transport_socket_matches  # auto mTLS by default
    off = _catalog_cluster(with_mesh_config("enableAutoMtls: false"))
    assert not off.transport_socket_matches and not off.HasField("transport_socket")
    rule = dr("catalog", "catalog", "  trafficPolicy: {tls: {mode: ISTIO_MUTUAL}}")
    asked = _catalog_cluster(with_mesh_config("enableAutoMtls: false", rule))
    assert asked.transport_socket.name == "envoy.transport_sockets.tls"


def _sans(c: cluster_pb2.Cluster) -> list[str]:
    ctx = tls_pb2.UpstreamTlsContext()
    c.transport_socket_matches[0].transport_socket.typed_config.Unpack(ctx)
    return [m.matcher.exact for m in ctx.common_tls_context.combined_validation_context.default_validation_context.match_typed_subject_alt_names]


def test_trust_domain_aliases_in_outbound_sans_and_inbound_validation():
    m = with_mesh_config("trustDomainAliases: [old.example]")
    sans = _sans(_catalog_cluster(m))
    local = [s for s in sans if s.startswith("spiffe://cluster.local/")]
    assert local and sorted(sans) == sorted(local + [s.replace("cluster.local", "old.example", 1) for s in local])
    assert _sans(_catalog_cluster(mesh())) == local
    inbound = built(listeners.build, m, CATALOG_PROXY)["virtualInbound"]
    prefixes = set()
    for chain in inbound.filter_chains:
        if chain.HasField("transport_socket"):
            ctx = tls_pb2.DownstreamTlsContext()
            chain.transport_socket.typed_config.Unpack(ctx)
            v = ctx.common_tls_context.combined_validation_context.default_validation_context
            prefixes.add(tuple(x.matcher.prefix for x in v.match_typed_subject_alt_names))
    assert prefixes == {("spiffe://cluster.local/", "spiffe://old.example/")}


def test_mesh_locality_setting_is_the_default_behind_destination_rules():
    zoned = parse_node(WEBAPP_PROXY.id, {**_metadata(WEBAPP_PROXY), "LABELS": {
        **WEBAPP_PROXY.labels, "topology.kubernetes.io/region": "r1", "topology.kubernetes.io/zone": "z1"}})
    text = "localityLbSetting: {distribute: [{from: 'r1/*', to: {'r1/z1/*': 100}}]}"
    c = built(clusters.build, with_mesh_config(text), zoned)[CATALOG]
    assert c.common_lb_config.HasField("locality_weighted_lb_config")
    assert not built(clusters.build, mesh(), zoned)[CATALOG].common_lb_config.HasField("locality_weighted_lb_config")
    off = with_mesh_config(text, dr("catalog", "catalog", "  trafficPolicy: {loadBalancer: {localityLbSetting: {enabled: false}}}"))
    assert not built(clusters.build, off, zoned)[CATALOG].common_lb_config.HasField("locality_weighted_lb_config")


def _metadata(proxy) -> dict:
    return {"NAMESPACE": proxy.namespace, "SERVICE_ACCOUNT": "webapp", "INTERCEPTION_MODE": "REDIRECT"}


def test_inbound_traffic_policy_localhost_sends_inbound_to_127_0_0_1():
    name = names.inbound_cluster(3000)
    passthrough = built(clusters.build, mesh(), CATALOG_PROXY)[name]
    assert passthrough.type == cluster_pb2.Cluster.ORIGINAL_DST
    local = built(clusters.build, with_mesh_config("inboundTrafficPolicy: {mode: LOCALHOST}"), CATALOG_PROXY)[name]
    addr = local.load_assignment.endpoints[0].lb_endpoints[0].endpoint.address.socket_address
    assert local.type == cluster_pb2.Cluster.STATIC and (addr.address, addr.port_value) == ("127.0.0.1", 3000)
    assert not local.HasField("upstream_bind_config")


# --- the generator's cache and the push -------------------------------------------------------


@pytest.mark.parametrize("text", [
    "enableAutoMtls: false", "trustDomainAliases: [old.example]", "inboundTrafficPolicy: {mode: LOCALHOST}",
    "accessLogFile: /dev/stdout", "defaultHttpRetryPolicy: {attempts: 4}", "protocolDetectionTimeout: 1s",
])
def test_the_cached_generator_follows_a_mesh_config_change(text):
    """The generator's shared parts and per-cluster cache give what the plain builders do
    after the mesh config changes (nothing built for the old config is served)."""
    g = Generator()
    before, after = mesh(), with_mesh_config(text)
    builders = {names.CLUSTER: clusters.build, names.LISTENER: listeners.build, names.ROUTE: routes.build,
                names.ENDPOINT: endpoints.build}
    for proxy in (WEBAPP_PROXY, CATALOG_PROXY):
        for type_url in builders:
            g.generate(before, proxy, type_url)
    changed = False
    for proxy in (WEBAPP_PROXY, CATALOG_PROXY):
        for type_url, build in builders.items():
            got = g.generate(after, proxy, type_url)
            plain = {n: m.SerializeToString(deterministic=True) for n, m in build(after, proxy)}
            assert {n: got[n].any.value for n in got} == plain, (proxy.id, type_url)
            old = {n: m.SerializeToString(deterministic=True) for n, m in build(before, proxy)}
            changed = changed or plain != old
    assert changed, f"{text!r} changed nothing a proxy receives"


def test_a_mesh_config_change_reaches_a_connected_proxy():
    node = (WEBAPP_PROXY.id, {"NAMESPACE": NS, "LABELS": dict(WEBAPP_PROXY.labels), "SERVICE_ACCOUNT": "webapp",
                              "INTERCEPTION_MODE": "REDIRECT"})

    async def main():
        async with Harness(Generator()) as s:
            s.ads.update(mesh())
            proxy = s.sotw(*node)
            await proxy.sync([CATALOG])
            await eventually(lambda: len(s.ads.connections()) == 1)
            assert s.ads.update(with_mesh_config("accessLogFile: /dev/stdout"), "MeshConfig") == 1
            lds = await proxy.recv()
            assert lds.type_url == names.LISTENER
            pushed = {}
            for a in lds.resources:
                lst = listener_pb2.Listener()
                a.Unpack(lst)
                pushed[lst.name] = lst
            inbound = pushed["virtualInbound"]
            assert [fl.path for _, fl in access_logs(inbound)][:1] == ["/dev/stdout"]
            proxy.ack(lds)
            # Clusters did not change: nothing else is pushed.
            await proxy.route_barrier()

    run(main())



# --- defaultConfig: the bootstrap and Envoy's command line ----------------------------------


def test_default_config_reaches_the_bootstrap_and_envoy_accepts_it(tmp_path):
    from controlplane.bootstrap import BootstrapParams, build_bootstrap
    from controlplane.proxy_settings import envoy_args
    from tests.support.envoy import envoy_validate

    pc = parse_mesh_config(_yaml("""
defaultConfig:
  concurrency: 3
  drainDuration: 20s
  proxyStatsMatcher: {inclusionPrefixes: [cluster.outbound], inclusionSuffixes: [upstream_rq_total], inclusionRegexps: ['.*ssl.*']}
  proxyMetadata: {ISTIO_META_DNS_CAPTURE: "true", BOOTSTRAP_XDS_AGENT: "true"}
""")).default_config
    doc = build_bootstrap(BootstrapParams("sidecar", NS, "webapp-1", "10.1.0.10", "127.0.0.1:15010", proxy_config=pc))
    patterns = doc["stats_config"]["stats_matcher"]["inclusion_list"]["patterns"]
    assert {"prefix": "cluster.outbound"} in patterns and {"prefix": "cluster_manager"} in patterns
    assert {"suffix": "upstream_rq_total"} in patterns and {"safe_regex": {"regex": ".*ssl.*"}} in patterns
    meta = doc["node"]["metadata"]
    assert meta["DNS_CAPTURE"] == "true" and "BOOTSTRAP_XDS_AGENT" not in meta
    assert meta["PROXY_CONFIG"]["concurrency"] == 3 and meta["PROXY_CONFIG"]["drainDuration"] == "20s"
    envoy_validate(doc, tmp_path / "boot.json")
    assert envoy_args(pc) == ["--concurrency", "3", "--drain-time-s", "20", "--drain-strategy", "immediate"]
    plain = build_bootstrap(BootstrapParams("sidecar", NS, "webapp-1", "10.1.0.10", "127.0.0.1:15010"))
    assert "stats_config" not in plain and "PROXY_CONFIG" not in plain["node"]["metadata"]


def test_meshd_bootstrap_reads_the_mesh_config_and_names_what_has_no_effect(tmp_path):
    from tests.support.harness import meshd_cli

    path = tmp_path / "mesh.yaml"
    path.write_text("defaultConfig: {concurrency: 0, drainDuration: 5s, tracing: {}, proxyMetadata: {FOO: bar}}\n")
    assert meshd_cli("bootstrap", "--mesh-config", str(path), "--envoy-args").stdout.split() == [
        "--drain-time-s", "5", "--drain-strategy", "immediate"]
    out = meshd_cli("bootstrap", "--mesh-config", str(path))
    assert "defaultConfig.tracing has no effect" in out.stderr and "defaultConfig.proxyMetadata.FOO has no effect" in out.stderr
    path.write_text("defaultConfig: {concurrency: many}\n")
    bad = meshd_cli("bootstrap", "--mesh-config", str(path), check=False)
    assert bad.returncode == 2 and f"{path}: defaultConfig.concurrency: must be a non-negative integer" in bad.stderr


def test_configz_shows_what_proxies_receive_from_the_mesh_config():
    from controlplane.sources.meshconfig import MeshConfigSource

    src = MeshConfigSource(root_namespace="istio-system")
    src.apply(parse_mesh_config(_yaml("accessLogFile: /dev/stdout\nenableAutoMtls: false\n"
                                      "defaultHttpRetryPolicy: {attempts: 3}\nprotocolDetectionTimeout: 100ms")), "test")
    status = src.status()
    assert (status["accessLogFile"], status["enableAutoMtls"], status["protocolDetectionTimeout"]) == ("/dev/stdout", False, "0.1s")
    assert status["defaultHttpRetryPolicy"] == {"attempts": 3, "retryOn": ""} and status["inboundTrafficPolicy"] == "PASSTHROUGH"
