"""Sidecar ingress listeners, as istiod builds them (listener_inbound.go
buildInboundChainConfigs / buildInboundListeners, cluster_builder.go buildInboundCluster):
`bind` names the port's chains (`<bind>_<port>`, else the pod IP), `captureMode: NONE`
makes a real listener on `bind` (else the pod IP), `tls` is terminated where the port's
PeerAuthentication mode is DISABLE, `connectionPool` (else `inboundConnectionPool`)
shapes `inbound|<port>||` as a DestinationRule's would, `defaultEndpoint` may be the
workload's own address or a Unix socket."""
from __future__ import annotations

import textwrap

import pytest
from envoy.config.listener.v3 import listener_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2
from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2
from envoy.extensions.transport_sockets.tls.v3 import tls_pb2
from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2
from prometheus_client import CollectorRegistry

from controlplane import names
from controlplane.analysis import BY_NAME, analyze
from controlplane.analysis.resources import parse_text
from controlplane.config.objects import ConfigObject, Origin, Rejection
from controlplane.config.parse import parse_document
from controlplane.generators import Generator, builders
from controlplane.generators.dependencies import sidecar_ingress
from controlplane.model.proxy import parse_node
from controlplane.model.sidecar_problems import SidecarReport, problems
from tests.support.configs import mesh_from_yaml

POD_IP = "10.1.0.10"
NODE = (f"sidecar~{POD_IP}~app-1.shop~shop.svc.cluster.local", {"NAMESPACE": "shop", "LABELS": {"app": "app"}})
SERVICE = """
apiVersion: v1
kind: Service
metadata: {name: app, namespace: shop}
spec: {clusterIP: 10.96.0.20, selector: {app: app}, ports: [{name: http, port: 9080}, {name: tcp, port: 9000}]}
"""
CERTS = "serverCertificate: /etc/certs/cert.pem, privateKey: /etc/certs/key.pem"


def _sidecar(ingress: str, extra: str = "") -> str:
    return SERVICE + "---\n" + textwrap.dedent("""
        apiVersion: networking.istio.io/v1
        kind: Sidecar
        metadata: {name: app, namespace: shop}
        spec:
          workloadSelector: {labels: {app: app}}
        """) + extra + "  ingress:\n" + textwrap.indent(textwrap.dedent(ingress), "  ")


def _disable(port: int) -> str:
    return textwrap.dedent(f"""
        ---
        apiVersion: security.istio.io/v1
        kind: PeerAuthentication
        metadata: {{name: app, namespace: shop}}
        spec:
          selector: {{matchLabels: {{app: app}}}}
          mtls: {{mode: STRICT}}
          portLevelMtls: {{{port}: {{mode: DISABLE}}}}
        """)


def _mesh(text: str):
    return mesh_from_yaml(text)


def _listeners(text: str) -> dict[str, listener_pb2.Listener]:
    return {n: lis for n, lis in builders()[names.LISTENER](_mesh(text), parse_node(*NODE))}


def _clusters(text: str) -> dict:
    return {n: c for n, c in builders()[names.CLUSTER](_mesh(text), parse_node(*NODE))}


def _port_chains(lis: listener_pb2.Listener, port: int) -> list:
    return [c for c in lis.filter_chains if c.filter_chain_match.destination_port.value == port]


def _hcm(chain) -> hcm_pb2.HttpConnectionManager:
    [f] = [f for f in chain.filters if f.name == "envoy.filters.network.http_connection_manager"]
    hcm = hcm_pb2.HttpConnectionManager()
    f.typed_config.Unpack(hcm)
    return hcm


def _tcp(chain) -> tcp_proxy_pb2.TcpProxy:
    [f] = [f for f in chain.filters if f.name == "envoy.filters.network.tcp_proxy"]
    t = tcp_proxy_pb2.TcpProxy()
    f.typed_config.Unpack(t)
    return t


def _downstream(chain) -> tls_pb2.DownstreamTlsContext:
    ctx = tls_pb2.DownstreamTlsContext()
    chain.transport_socket.typed_config.Unpack(ctx)
    return ctx


# --- bind and captureMode ---------------------------------------------------------------

def test_chains_are_named_after_the_pod_ip_or_the_bind():
    got = _listeners(_sidecar("""
        - port: {number: 9080, protocol: HTTP, name: http}
          defaultEndpoint: 127.0.0.1:8080
        - port: {number: 9000, protocol: TCP, name: tcp}
          bind: 10.1.0.99
          captureMode: IPTABLES
        """))
    inbound = got["virtualInbound"]
    assert {c.name for c in _port_chains(inbound, 9080)} == {f"{POD_IP}_9080"}
    assert {c.name for c in _port_chains(inbound, 9000)} == {"10.1.0.99_9000"}
    assert _hcm(_port_chains(inbound, 9080)[0]).stat_prefix == f"inbound_{POD_IP}_9080"
    # under iptables capture a bind binds nothing: no listener of its own
    assert "10.1.0.99_9000" not in got and f"{POD_IP}_9080" not in got


def test_capture_none_gets_a_real_listener_on_the_bind():
    got = _listeners(_sidecar("""
        - port: {number: 9000, protocol: TCP, name: tcp}
          bind: 10.1.0.10
          captureMode: NONE
          defaultEndpoint: 127.0.0.1:7000
        - port: {number: 9080, protocol: HTTP, name: http}
          defaultEndpoint: 127.0.0.1:8080
        """))
    lis = got["10.1.0.10_9000"]
    assert (lis.address.socket_address.address, lis.address.socket_address.port_value) == ("10.1.0.10", 9000)
    assert not lis.HasField("bind_to_port") or lis.bind_to_port.value  # Envoy's default: binds
    assert "envoy.filters.listener.original_dst" not in [f.name for f in lis.listener_filters]
    assert {c.name for c in lis.filter_chains} == {"10.1.0.10_9000"}
    assert {_tcp(c).cluster for c in lis.filter_chains} == {"inbound|9000||"}
    # PERMISSIVE: Istio mTLS and plaintext, told apart by the tls_inspector
    assert {c.filter_chain_match.transport_protocol for c in lis.filter_chains} >= {"tls", "raw_buffer"}
    assert "envoy.filters.listener.tls_inspector" in [f.name for f in lis.listener_filters]
    # the port is no longer a chain of virtualInbound; the other one still is
    assert not _port_chains(got["virtualInbound"], 9000)
    assert _port_chains(got["virtualInbound"], 9080)


def test_capture_none_without_a_bind_binds_the_pod_ip():
    got = _listeners(_sidecar("""
        - port: {number: 9000, protocol: TCP, name: tcp}
          captureMode: NONE
          defaultEndpoint: 127.0.0.1:7000
        """))
    lis = got[f"{POD_IP}_9000"]
    assert lis.address.socket_address.address == POD_IP


# --- tls --------------------------------------------------------------------------------

def test_tls_simple_is_terminated_on_a_port_whose_mtls_is_disabled():
    got = _listeners(_sidecar(f"""
        - port: {{number: 9080, protocol: HTTPS, name: https}}
          defaultEndpoint: 127.0.0.1:8080
          tls: {{mode: SIMPLE, {CERTS}}}
        """, ) + _disable(9080))
    chains = _port_chains(got["virtualInbound"], 9080)
    assert len(chains) == 1, chains
    chain = chains[0]
    assert chain.filter_chain_match.transport_protocol == "tls"
    assert list(chain.filter_chain_match.application_protocols) == []  # any TLS client, not only Istio's
    ctx = _downstream(chain)
    cert = ctx.common_tls_context.tls_certificates[0]
    assert (cert.certificate_chain.filename, cert.private_key.filename) == ("/etc/certs/cert.pem", "/etc/certs/key.pem")
    assert not ctx.require_client_certificate.value
    assert not ctx.common_tls_context.tls_certificate_sds_secret_configs  # not the workload certificate
    # HTTPS after termination is HTTP: the chain routes requests to the inbound cluster
    hcm = _hcm(chain)
    assert hcm.route_config.virtual_hosts[0].routes[0].route.cluster == "inbound|9080||"


def test_tls_mutual_asks_for_a_client_certificate_signed_by_the_ca_file():
    got = _listeners(_sidecar(f"""
        - port: {{number: 9443, protocol: TLS, name: tls}}
          defaultEndpoint: 127.0.0.1:7000
          tls: {{mode: MUTUAL, {CERTS}, caCertificates: /etc/certs/ca.pem}}
        """) + _disable(9443))
    [chain] = _port_chains(got["virtualInbound"], 9443)
    ctx = _downstream(chain)
    assert ctx.require_client_certificate.value
    assert ctx.common_tls_context.validation_context.trusted_ca.filename == "/etc/certs/ca.pem"
    assert _tcp(chain).cluster == "inbound|9443||"  # TLS after termination is TCP


def test_tls_does_not_combine_with_istio_mtls():
    """istiod: user TLS only where the PeerAuthentication mode of the port is DISABLE;
    under PERMISSIVE the port is served as HTTP (after termination) with the mesh's chains."""
    got = _listeners(_sidecar(f"""
        - port: {{number: 9080, protocol: HTTPS, name: https}}
          defaultEndpoint: 127.0.0.1:8080
          tls: {{mode: SIMPLE, {CERTS}}}
        """))
    chains = _port_chains(got["virtualInbound"], 9080)
    assert {c.filter_chain_match.transport_protocol for c in chains} == {"tls", "raw_buffer"}
    for c in chains:
        assert _hcm(c).route_config.virtual_hosts
        if c.HasField("transport_socket"):
            assert "/etc/certs/cert.pem" not in str(_downstream(c))


def test_tls_on_a_bound_port():
    got = _listeners(_sidecar(f"""
        - port: {{number: 9443, protocol: HTTPS, name: https}}
          captureMode: NONE
          bind: 10.1.0.10
          defaultEndpoint: 127.0.0.1:8080
          tls: {{mode: SIMPLE, {CERTS}}}
        """) + _disable(9443))
    lis = got["10.1.0.10_9443"]
    [chain] = lis.filter_chains
    assert chain.filter_chain_match.transport_protocol == "tls"
    assert _downstream(chain).common_tls_context.tls_certificates[0].certificate_chain.filename == "/etc/certs/cert.pem"
    assert [f.name for f in lis.listener_filters] == ["envoy.filters.listener.tls_inspector"]


# --- connectionPool and defaultEndpoint --------------------------------------------------

POOL = """
  inboundConnectionPool:
    tcp: {maxConnections: 7}
"""


def test_connection_pool_of_the_port_else_the_sidecars():
    got = _clusters(_sidecar("""
        - port: {number: 9080, protocol: HTTP, name: http}
          defaultEndpoint: 127.0.0.1:8080
          connectionPool:
            tcp: {maxConnections: 1, connectTimeout: 2s}
            http: {http1MaxPendingRequests: 3, maxRequestsPerConnection: 4}
        - port: {number: 9000, protocol: TCP, name: tcp}
          defaultEndpoint: 127.0.0.1:7000
        """, POOL))
    c = got["inbound|9080||"]
    t = c.circuit_breakers.thresholds[0]
    assert (t.max_connections.value, t.max_pending_requests.value) == (1, 3)
    assert c.connect_timeout.seconds == 2
    opts = http_protocol_options_pb2.HttpProtocolOptions()
    c.typed_extension_protocol_options["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"].Unpack(opts)
    assert opts.common_http_protocol_options.max_requests_per_connection.value == 4
    other = got["inbound|9000||"].circuit_breakers.thresholds[0]
    assert other.max_connections.value == 7 and other.max_pending_requests.value == 2**32 - 1


def test_inbound_connection_pool_without_ingress_shapes_the_services_ports():
    text = SERVICE + "---\n" + textwrap.dedent("""
        apiVersion: networking.istio.io/v1
        kind: Sidecar
        metadata: {name: app, namespace: shop}
        spec:
        """) + POOL
    mesh = _mesh(text + textwrap.dedent(f"""
        ---
        apiVersion: v1
        kind: Pod
        metadata: {{name: app-1, namespace: shop, labels: {{app: app}}}}
        spec: {{containers: [{{name: app}}]}}
        status: {{podIP: {POD_IP}}}
        """))
    proxy = parse_node(*NODE)
    got = {n: c for n, c in builders()[names.CLUSTER](mesh, proxy)}
    assert got["inbound|9080||"].circuit_breakers.thresholds[0].max_connections.value == 7
    # the push engine keys the inbound side on that Sidecar
    assert sidecar_ingress(mesh, proxy) is not None


def test_default_endpoints():
    got = _clusters(_sidecar("""
        - port: {number: 9080, protocol: HTTP, name: http}
          defaultEndpoint: unix:///var/run/app.sock
        - port: {number: 9000, protocol: TCP, name: tcp}
          defaultEndpoint: 0.0.0.0:7000
        - port: {number: 9001, protocol: TCP, name: tcp2}
          defaultEndpoint: 127.0.0.1:7001
        """))
    uds = got["inbound|9080||"]
    assert uds.load_assignment.endpoints[0].lb_endpoints[0].endpoint.address.pipe.path == "/var/run/app.sock"
    own = got["inbound|9000||"]
    addr = own.load_assignment.endpoints[0].lb_endpoints[0].endpoint.address.socket_address
    assert (addr.address, addr.port_value) == (POD_IP, 7000)
    # to the pod's own address from 127.0.0.6, which istio-iptables lets through
    assert own.upstream_bind_config.source_address.address == "127.0.0.6"
    assert not got["inbound|9001||"].HasField("upstream_bind_config")


# --- the gate ---------------------------------------------------------------------------

def _doc(ingress: list, **extra) -> dict:
    return {"apiVersion": "networking.istio.io/v1", "kind": "Sidecar", "metadata": {"name": "s", "namespace": "shop"},
            "spec": {"ingress": ingress, **extra}}


HTTPS = {"number": 9443, "protocol": "HTTPS", "name": "https"}

SERVED = [
    [{"port": HTTPS, "bind": "10.1.0.10", "captureMode": "NONE", "defaultEndpoint": "127.0.0.1:8443"}],
    [{"port": HTTPS, "tls": {"mode": "SIMPLE", "serverCertificate": "/c.pem", "privateKey": "/k.pem"}}],
    [{"port": HTTPS, "tls": {"mode": "MUTUAL", "serverCertificate": "/c.pem", "privateKey": "/k.pem",
                             "caCertificates": "/ca.pem"}}],
    [{"port": HTTPS, "connectionPool": {"tcp": {"maxConnections": 1}}}],
    [{"port": HTTPS, "defaultEndpoint": "unix:///var/run/app.sock"}],
]


@pytest.mark.parametrize("ingress", SERVED)
def test_the_served_fields_pass_the_gate(ingress):
    got = parse_document(_doc(ingress), Origin("file", "sidecar.yaml"))
    assert not isinstance(got, Rejection), [str(e) for e in got.errors]


def test_inbound_connection_pool_passes_the_gate_and_is_typed():
    got = parse_document(_doc([], inboundConnectionPool={"http": {"http2MaxRequests": 5}}), Origin("file", "s.yaml"))
    assert isinstance(got, ConfigObject), got
    assert got.typed.inbound_connection_pool.http.http2_max_requests == 5


REFUSED = [
    ([{"port": HTTPS, "tls": {"mode": "SIMPLE", "credentialName": "app-cert"}}],
     "spec.ingress[0].tls.credentialName", "sidecar: credentialName is not currently supported"),
    ([{"port": HTTPS, "tls": {"mode": "MUTUAL", "serverCertificate": "/c.pem", "privateKey": "/k.pem"}}],
     "spec.ingress[0].tls.caCertificates", "MUTUAL TLS requires a client CA bundle"),
    ([{"port": HTTPS, "tls": {"mode": "SIMPLE", "serverCertificate": "/c.pem"}}],
     "spec.ingress[0].tls.privateKey", "SIMPLE TLS requires a private key"),
    ([{"port": HTTPS, "connectionPool": {}}],
     "spec.ingress[0].connectionPool", "connection pool must have at least one field"),
    ([{"port": HTTPS, "connectionPool": {"tcp": {"maxConnections": -1}}}],
     "spec.ingress[0].connectionPool.tcp.maxConnections", "max connections must be non-negative"),
    ([{"port": HTTPS, "tls": {"serverCertificate": "/c.pem", "privateKey": "/k.pem"}}],
     "spec.ingress[0].tls.mode", "terminates TLS"),
]


@pytest.mark.parametrize(("ingress", "field", "reason"), REFUSED)
def test_what_is_refused_names_the_field(ingress, field, reason):
    got = parse_document(_doc(ingress), Origin("file", "sidecar.yaml"))
    assert isinstance(got, Rejection), got
    assert any(e.field == field and reason in e.reason for e in got.errors), [str(e) for e in got.errors]


def test_an_empty_inbound_connection_pool_is_refused():
    got = parse_document(_doc([{"port": HTTPS}], inboundConnectionPool={}), Origin("file", "s.yaml"))
    assert isinstance(got, Rejection)
    assert any(e.field == "spec.inboundConnectionPool" for e in got.errors), [str(e) for e in got.errors]


def test_tls_optional_mutual_validates_a_certificate_when_one_is_presented():
    got = _listeners(_sidecar(f"""
        - port: {{number: 9443, protocol: HTTPS, name: https}}
          tls: {{mode: OPTIONAL_MUTUAL, {CERTS}, caCertificates: /etc/certs/ca.pem}}
        """) + _disable(9443))
    [chain] = _port_chains(got["virtualInbound"], 9443)
    ctx = _downstream(chain)
    assert not ctx.require_client_certificate.value
    assert ctx.common_tls_context.validation_context.trusted_ca.filename == "/etc/certs/ca.pem"


def test_tls_under_strict_keeps_istio_mtls_only():
    text = _sidecar(f"""
        - port: {{number: 9443, protocol: HTTPS, name: https}}
          tls: {{mode: SIMPLE, {CERTS}}}
        """) + _disable(9000)  # STRICT for the workload, DISABLE on another port
    chains = _port_chains(_listeners(text)["virtualInbound"], 9443)
    assert [c.filter_chain_match.transport_protocol for c in chains] == ["tls"]
    assert _downstream(chains[0]).common_tls_context.tls_certificate_sds_secret_configs[0].name == "default"


# --- reported: a tls that does nothing --------------------------------------------------

TLS_ONLY = f"""
    - port: {{number: 9443, protocol: HTTPS, name: https}}
      tls: {{mode: SIMPLE, {CERTS}}}
    """


def test_a_tls_under_istio_mtls_is_reported_not_silently_ignored():
    registry = CollectorRegistry()
    report = SidecarReport(registry)
    report.update(_mesh(_sidecar(TLS_ONLY)))
    [row] = report.status()
    assert (row["namespace"], row["name"], row["field"], row["reason"]) == (
        "shop", "app", "spec.ingress[0].tls", "IngressTLSUnderMutualTLS")
    assert "no PeerAuthentication turns mTLS off (DISABLE) on port 9443" in row["message"]
    assert registry.get_sample_value("meshd_sidecar_problems", {"reason": "IngressTLSUnderMutualTLS"}) == 1
    # a PeerAuthentication turning mTLS off on that port makes the tls do its work: nothing to report
    report.update(_mesh(_sidecar(TLS_ONLY) + _disable(9443)))
    assert report.status() == []
    assert registry.get_sample_value("meshd_sidecar_problems", {"reason": "IngressTLSUnderMutualTLS"}) == 0


def test_a_disable_for_other_workloads_or_ports_does_not_count():
    other_port = problems(_mesh(_sidecar(TLS_ONLY) + _disable(9000)))
    assert [p.field for p in other_port] == ["spec.ingress[0].tls"]
    other_workloads = _disable(9443).replace("{app: app}", "{app: other}")
    assert [p.field for p in problems(_mesh(_sidecar(TLS_ONLY) + other_workloads))] == ["spec.ingress[0].tls"]


# --- the push engine follows Sidecar ingress changes -------------------------------------

def test_the_cached_generator_follows_every_ingress_change():
    """Each step changes one ingress field (or the PeerAuthentication deciding the tls); the
    cached generator gives what the plain builders do, so no step is served stale."""
    pod = textwrap.dedent(f"""
        ---
        apiVersion: v1
        kind: Pod
        metadata: {{name: app-1, namespace: shop, labels: {{app: app}}}}
        spec: {{containers: [{{name: app}}]}}
        status: {{podIP: {POD_IP}}}
        """)
    bound = f"""
        - port: {{number: 9443, protocol: HTTPS, name: https}}
          captureMode: NONE
          tls: {{mode: SIMPLE, {CERTS}}}
        """
    steps = [  # (the mesh, the type that changed since the step before)
        (_sidecar(TLS_ONLY), None),
        (_sidecar(TLS_ONLY) + _disable(9443), names.LISTENER),  # the tls is now terminated
        (_sidecar(bound) + _disable(9443), names.LISTENER),  # on a listener of its own
        (_sidecar("""
            - port: {number: 9443, protocol: HTTPS, name: https}
              connectionPool: {tcp: {maxConnections: 3}}
            """), names.CLUSTER),
        (_sidecar("""
            - port: {number: 9443, protocol: HTTPS, name: https}
              connectionPool: {tcp: {maxConnections: 4}}
            """), names.CLUSTER),
        (SERVICE + pod, names.CLUSTER),  # no Sidecar: the service's ports
        (SERVICE + pod + "---\n" + textwrap.dedent("""
            apiVersion: networking.istio.io/v1
            kind: Sidecar
            metadata: {name: app, namespace: shop}
            spec:
            """) + POOL, names.CLUSTER),  # inboundConnectionPool on them
    ]
    gen, proxy = Generator(), parse_node(*NODE)
    last: dict[str, dict] = {}
    for text, changed in steps:
        mesh = _mesh(text)
        for type_url in (names.LISTENER, names.CLUSTER):
            got = gen.generate(mesh, proxy, type_url)
            plain = {n: m.SerializeToString(deterministic=True) for n, m in builders()[type_url](mesh, proxy)}
            assert {n: got[n].any.value for n in got} == plain, (text, type_url)
            if type_url == changed:
                assert plain != last[type_url], (text, type_url)
            last[type_url] = plain


def test_meshd_analyze_reports_it_before_it_is_applied():
    def found(text: str) -> list[str]:
        return [f"{m.type.code} {m.line}" for m in analyze(parse_text(text, "mesh.yaml"),
                                                           [BY_NAME["sidecar.IngressTLSAnalyzer"]])]
    text = _sidecar(TLS_ONLY)
    tls_line = next(i for i, line in enumerate(text.splitlines(), 1) if "tls:" in line)
    assert found(text) == [f"MSH0008 {tls_line}"]
    assert found(_sidecar(TLS_ONLY) + _disable(9443)) == []
