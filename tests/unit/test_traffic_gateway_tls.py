"""Gateway TLS: Secrets through the parse gate, SDS `kubernetes://` credentials, HTTPS /
TLS / PASSTHROUGH servers told apart by SNI, conflicts reported instead of sent, and
Envoy's own validation of the result."""
from __future__ import annotations

import dataclasses
import json

import pytest
import yaml
from envoy.config.bootstrap.v3 import bootstrap_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2
from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2
from envoy.extensions.transport_sockets.tls.v3 import common_pb2, tls_pb2

from controlplane.config.objects import ConfigObject, Origin, Rejection
from controlplane.config.parse import parse_document
from controlplane.generators import filter_chains, listeners, routes, secrets
from controlplane.model.proxy import parse_node
from tests.support.configs import mesh_from_yaml
from tests.support.coolstore import (
    INGRESS_SERVICE,
    NS,
    WEBAPP_HOST,
    WEBAPP_SERVICE,
    coolstore_gateway,
    tcp_echo_service,
)
from tests.support.envoy import envoy_validate
from tests.support.manifests import destination, documents, gateway, gateway_server, service
from tests.support.pki import b64, generic_secret_yaml, make_ca, make_cert, tls_secret_yaml
from tests.support.static_xds import gateway_bootstrap

CA = make_ca()
WEBAPP = make_cert(CA, ["webapp.istioinaction.io"])
CATALOG = make_cert(CA, ["catalog.istioinaction.io"])
OTHER = make_cert(CA, ["other.example.com"])

GATEWAY = parse_node("router~10.0.0.1~istio-ingressgateway-1.istio-system~istio-system.svc.cluster.local",
                     {"LABELS": {"istio": "ingressgateway"}, "NAMESPACE": "istio-system"})
PLAINTEXT_GATEWAY = dataclasses.replace(GATEWAY, workload_cert=False)

INGRESS = documents(INGRESS_SERVICE, WEBAPP_SERVICE, service("tls-backend", NS, [("tls", 443, 8443)]),
                    tcp_echo_service(9000))

WEBAPP_TLS = {"mode": "SIMPLE", "credentialName": "webapp-credential"}
GATEWAYS = coolstore_gateway(tls={"httpsRedirect": True}, more_servers=[
    gateway_server(["istioinaction/webapp.istioinaction.io"], 443, "HTTPS", "https-webapp", WEBAPP_TLS),
    gateway_server(["./catalog.istioinaction.io"], 443, "HTTPS", "https-catalog", {
        "mode": "MUTUAL", "credentialName": "catalog-credential",
        "minProtocolVersion": "TLSV1_2", "maxProtocolVersion": "TLSV1_3",
        "cipherSuites": ["ECDHE-ECDSA-AES256-GCM-SHA384", "NOT-A-CIPHER", "ECDHE-ECDSA-AES256-GCM-SHA384"],
        "subjectAltNames": ["client.istioinaction.io"]}),
    gateway_server(["*/simple-sni-1.istioinaction.io"], 443, "TLS", "tls-passthrough", {"mode": "PASSTHROUGH"}),
    gateway_server(["*"], 31400, "TCP", "tcp-echo"),
]) + """---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: webapp, namespace: istioinaction}
spec:
  hosts: ["webapp.istioinaction.io", "catalog.istioinaction.io"]
  gateways: [coolstore-gateway]
  http:
  - route: [{destination: {host: webapp}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: passthrough, namespace: istioinaction}
spec:
  hosts: ["simple-sni-1.istioinaction.io"]
  gateways: [coolstore-gateway]
  tls:
  - match: [{port: 443, sniHosts: ["simple-sni-1.istioinaction.io"]}]
    route: [{destination: {host: tls-backend, port: {number: 443}}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: tcp-echo, namespace: istioinaction}
spec:
  hosts: ["*"]
  gateways: [coolstore-gateway]
  tcp:
  - match: [{port: 31400}]
    route: [{destination: {host: tcp-echo, port: {number: 9000}}}]
"""


def secrets_yaml() -> str:
    return "\n---\n".join([
        tls_secret_yaml("webapp-credential", "istio-system", WEBAPP),
        generic_secret_yaml("catalog-credential", "istio-system", CATALOG, CA.cert),
    ])


def full_mesh(*extra: str):
    return mesh_from_yaml("\n---\n".join([INGRESS, GATEWAYS, secrets_yaml(), *extra]))


def parse(doc) -> object:
    return parse_document(doc, Origin("file", "secret.yaml", 0))


def by_name(items):
    return {name: msg for name, msg in items}


def hcm_of(chain) -> hcm_pb2.HttpConnectionManager:
    hcm = hcm_pb2.HttpConnectionManager()
    chain.filters[0].typed_config.Unpack(hcm)
    return hcm


def downstream(chain) -> tls_pb2.DownstreamTlsContext:
    ctx = tls_pb2.DownstreamTlsContext()
    chain.transport_socket.typed_config.Unpack(ctx)
    return ctx


def chain_for(listener, sni: str):
    for c in listener.filter_chains:
        if sni in c.filter_chain_match.server_names:
            return c
    raise AssertionError(f"no chain for {sni}: {[list(c.filter_chain_match.server_names) for c in listener.filter_chains]}")


# --- Secrets through the parse gate --------------------------------------------------


def secret_doc(**kw) -> dict:
    doc = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "cred", "namespace": "istio-system"}}
    doc.update(kw)
    return doc


def test_tls_secret_is_accepted_and_keeps_key_material_out_of_spec():
    obj = parse(secret_doc(type="kubernetes.io/tls", data={"tls.crt": b64(WEBAPP.cert), "tls.key": b64(WEBAPP.key)}))
    assert isinstance(obj, ConfigObject)
    dumped = json.dumps(obj.spec)
    assert "PRIVATE KEY" not in dumped and "CERTIFICATE" not in dumped
    assert set(obj.spec["keys"]) == {"tls.crt", "tls.key"}
    assert obj.extra["credential"]["key"] == WEBAPP.key


def test_generic_secret_with_string_data_and_istio_generic_keys():
    obj = parse(secret_doc(stringData={"cert": WEBAPP.cert.decode(), "key": WEBAPP.key.decode(),
                                       "cacert": CA.cert.decode()}))
    assert isinstance(obj, ConfigObject)
    assert obj.extra["credential"] == {"cert": WEBAPP.cert, "key": WEBAPP.key, "ca": CA.cert}


def test_string_data_wins_over_data():
    obj = parse(secret_doc(data={"tls.crt": b64(OTHER.cert), "tls.key": b64(OTHER.key)},
                           stringData={"tls.crt": WEBAPP.cert.decode(), "tls.key": WEBAPP.key.decode()}))
    assert obj.extra["credential"]["cert"] == WEBAPP.cert


@pytest.mark.parametrize("doc,field,reason", [
    (secret_doc(type="kubernetes.io/tls", data={"tls.crt": b64(WEBAPP.cert), "tls.key": b64(CATALOG.key)}),
     "data[tls.key]", "does not match the certificate"),
    (secret_doc(type="kubernetes.io/tls", data={"tls.crt": b64(WEBAPP.cert)}), "data[tls.key]", "Required value"),
    (secret_doc(data={"tls.crt": "!!!not base64!!!", "tls.key": b64(WEBAPP.key)}), "data[tls.crt]", "illegal base64"),
    (secret_doc(data={"tls.crt": b64(b"garbage"), "tls.key": b64(WEBAPP.key)}), "data[tls.crt]", "not a PEM certificate"),
    (secret_doc(stringData={"tls.crt": WEBAPP.cert.decode(), "tls.key": "garbage"}), "stringData[tls.key]",
     "not an unencrypted PEM private key"),
    (secret_doc(stringData={"ca.crt": "garbage"}), "stringData[ca.crt]", "not a PEM CA bundle"),
])
def test_bad_secrets_are_rejected_naming_the_key_never_the_value(doc, field, reason):
    rej = parse(doc)
    assert isinstance(rej, Rejection), rej
    assert rej.field == field and reason in rej.reason, rej.message()
    assert "PRIVATE KEY" not in rej.message() and "MII" not in rej.message()


def test_secrets_meshd_does_not_use_are_skipped_quietly():
    assert parse(secret_doc(type="kubernetes.io/service-account-token", data={"token": b64(b"x")})) is None
    assert parse(secret_doc(type="kubernetes.io/dockerconfigjson", data={".dockerconfigjson": b64(b"{}")})) is None
    assert parse(secret_doc(data={"password": b64(b"hunter2")})) is None


# --- SDS -----------------------------------------------------------------------------


def test_sds_serves_certificate_and_ca_of_the_gateway_namespace_only():
    mesh = full_mesh()
    got = by_name(secrets.build(mesh, GATEWAY))
    assert sorted(got) == ["kubernetes://catalog-credential", "kubernetes://catalog-credential-cacert",
                           "kubernetes://webapp-credential"]
    web = got["kubernetes://webapp-credential"]
    assert web.tls_certificate.certificate_chain.inline_bytes == WEBAPP.cert
    assert web.tls_certificate.private_key.inline_bytes == WEBAPP.key
    assert got["kubernetes://catalog-credential-cacert"].validation_context.trusted_ca.inline_bytes == CA.cert
    # another namespace, or a proxy that proved no identity: nothing, never a key
    assert secrets.build(mesh, dataclasses.replace(GATEWAY, namespace="istioinaction")) == []
    assert secrets.build(mesh, PLAINTEXT_GATEWAY) == []


def test_cacert_secret_wins_over_ca_crt():
    other_ca = make_ca("other")
    mesh = full_mesh(generic_secret_yaml("catalog-credential-cacert", "istio-system", None, other_ca.cert))
    got = by_name(secrets.build(mesh, GATEWAY))
    assert got["kubernetes://catalog-credential-cacert"].validation_context.trusted_ca.inline_bytes == other_ca.cert


# --- listeners -----------------------------------------------------------------------


def test_https_servers_on_one_port_are_told_apart_by_sni():
    mesh = full_mesh()
    lds = by_name(listeners.build(mesh, GATEWAY))
    assert sorted(lds) == ["0.0.0.0_31400", "0.0.0.0_8080", "0.0.0.0_8443"]
    lst = lds["0.0.0.0_8443"]
    assert [f.name for f in lst.listener_filters] == ["envoy.filters.listener.tls_inspector"]
    assert filter_chains.duplicate_matches(lst.filter_chains) == []

    web = chain_for(lst, "webapp.istioinaction.io")
    assert hcm_of(web).rds.route_config_name == "https.443.https-webapp.coolstore-gateway.istioinaction"
    ctx = downstream(web)
    assert [s.name for s in ctx.common_tls_context.tls_certificate_sds_secret_configs] == ["kubernetes://webapp-credential"]
    assert not ctx.require_client_certificate.value
    assert not ctx.common_tls_context.HasField("combined_validation_context")
    assert list(ctx.common_tls_context.alpn_protocols) == ["h2", "http/1.1"]
    assert ctx.common_tls_context.tls_params.tls_minimum_protocol_version == common_pb2.TlsParameters.TLSv1_2

    cat = downstream(chain_for(lst, "catalog.istioinaction.io"))
    assert cat.require_client_certificate.value
    cvc = cat.common_tls_context.combined_validation_context
    assert cvc.validation_context_sds_secret_config.name == "kubernetes://catalog-credential-cacert"
    assert [m.matcher.exact for m in cvc.default_validation_context.match_typed_subject_alt_names] == [
        "client.istioinaction.io"]
    params = cat.common_tls_context.tls_params
    assert params.tls_maximum_protocol_version == common_pb2.TlsParameters.TLSv1_3
    assert list(params.cipher_suites) == ["ECDHE-ECDSA-AES256-GCM-SHA384"]  # unknown and repeated ones dropped

    passthrough = chain_for(lst, "simple-sni-1.istioinaction.io")
    assert not passthrough.HasField("transport_socket")
    tcp = tcp_proxy_pb2.TcpProxy()
    passthrough.filters[0].typed_config.Unpack(tcp)
    assert tcp.cluster == "outbound|443||tls-backend.istioinaction.svc.cluster.local"


def test_https_route_configurations_hold_their_own_server_hosts():
    mesh = full_mesh()
    rds = by_name(routes.build(mesh, GATEWAY))
    assert sorted(rds) == ["http.8080", "https.443.https-catalog.coolstore-gateway.istioinaction",
                           "https.443.https-webapp.coolstore-gateway.istioinaction"]
    web = rds["https.443.https-webapp.coolstore-gateway.istioinaction"]
    assert [v.name for v in web.virtual_hosts] == ["webapp.istioinaction.io:443"]
    assert web.virtual_hosts[0].routes[0].route.cluster == "outbound|80||webapp.istioinaction.svc.cluster.local"
    # httpsRedirect on the port 80 server
    http = rds["http.8080"]
    assert [(v.name, v.require_tls) for v in http.virtual_hosts] == [("webapp.istioinaction.io:80", 2)]  # ALL


def test_plaintext_gateway_gets_no_chain_waiting_for_a_secret():
    lds = by_name(listeners.build(full_mesh(), PLAINTEXT_GATEWAY))
    lst = lds["0.0.0.0_8443"]
    # only the passthrough chain: the credentials would never reach this proxy
    assert [list(c.filter_chain_match.server_names) for c in lst.filter_chains] == [["simple-sni-1.istioinaction.io"]]


def test_missing_secret_leaves_the_chain_out_and_is_reported():
    mesh = mesh_from_yaml("\n---\n".join([INGRESS, GATEWAYS, tls_secret_yaml("webapp-credential", "istio-system", WEBAPP)]))
    lst = by_name(listeners.build(mesh, GATEWAY))["0.0.0.0_8443"]
    hosts = sorted(h for c in lst.filter_chains for h in c.filter_chain_match.server_names)
    assert hosts == ["simple-sni-1.istioinaction.io", "webapp.istioinaction.io"]
    reasons = [c.message() for c in mesh.gateway_conflicts]
    assert any("kubernetes://catalog-credential" in r and "spec.servers[2]" in r for r in reasons), reasons


def test_mutual_without_a_ca_is_left_out():
    mesh = mesh_from_yaml("\n---\n".join([INGRESS, GATEWAYS, tls_secret_yaml("webapp-credential", "istio-system", WEBAPP),
                                          tls_secret_yaml("catalog-credential", "istio-system", CATALOG)]))
    lst = by_name(listeners.build(mesh, GATEWAY))["0.0.0.0_8443"]
    assert not any("catalog.istioinaction.io" in c.filter_chain_match.server_names for c in lst.filter_chains)
    assert any("catalog-credential-cacert" in c.reason for c in mesh.gateway_conflicts)


DUPLICATE = documents(gateway("zz-other", NS, [WEBAPP_HOST], port=443, protocol="HTTPS", port_name="https",
                              tls=WEBAPP_TLS, more_servers=[gateway_server(["*"], 31400, "TCP", "tcp-again"),
                                                            gateway_server([WEBAPP_HOST], 80, "HTTP", "http-other")]))


def tls_term(term_tls: dict, mesh_hosts: str, *more_servers: dict) -> str:
    """The Gateway `tls-term`: TLS for echo.istioinaction.io terminated on 9443 with
    `term_tls`, Istio mTLS on 15443 and `more_servers`; and its VirtualService sending
    echo and `mesh_hosts` to tcp-echo."""
    gw = gateway("tls-term", NS, ["echo.istioinaction.io"], port=9443, protocol="TLS", port_name="tls-term",
                 tls=term_tls, more_servers=[
                     gateway_server(["*.istioinaction.svc.cluster.local"], 15443, "TLS", "mtls", {"mode": "ISTIO_MUTUAL"}),
                     *more_servers])
    vs = {"apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
          "metadata": {"name": "echo-tls", "namespace": NS},
          "spec": {"hosts": ["echo.istioinaction.io", mesh_hosts], "gateways": ["tls-term"],
                   "tcp": [{"route": [{"destination": destination("tcp-echo", port=9000)}]}]}}
    return documents(gw, vs)


def test_conflicting_servers_are_reported_and_never_reach_envoy():
    mesh = full_mesh(DUPLICATE)
    lds = by_name(listeners.build(mesh, GATEWAY))
    for lst in lds.values():
        assert filter_chains.duplicate_matches(lst.filter_chains) == []
    lst = lds["0.0.0.0_8443"]
    assert len([c for c in lst.filter_chains if "webapp.istioinaction.io" in c.filter_chain_match.server_names]) == 1
    conflicts = {(c.server.gateway_name, c.server.index): c for c in mesh.gateway_conflicts}
    dup = conflicts[("istioinaction/zz-other", 0)]
    assert dup.dropped and "webapp.istioinaction.io is already served with TLS" in dup.reason
    assert dup.other.gateway_name == "istioinaction/coolstore-gateway"
    assert conflicts[("istioinaction/zz-other", 1)].dropped  # a second TCP server on 31400
    merged = conflicts[("istioinaction/zz-other", 2)]
    assert not merged.dropped  # HTTP hosts merge (istiod merges them), but it is reported


def test_gateway_conflict_is_logged_once():
    import structlog

    full_mesh()  # no conflict: a later one is new again
    with structlog.testing.capture_logs() as logs:
        full_mesh(DUPLICATE)
        full_mesh(DUPLICATE)
    events = [e for e in logs if e["event"] == "gateway conflict"]
    assert len(events) == 3, events
    assert {e["action"] for e in events} == {"ignored", "merged"}


def test_tls_termination_with_tcp_route_and_istio_mutual():
    extra = tls_term(WEBAPP_TLS, "tcp-echo.istioinaction.svc.cluster.local")
    lds = by_name(listeners.build(full_mesh(extra), GATEWAY))
    term = lds["0.0.0.0_9443"].filter_chains[0]
    assert list(term.filter_chain_match.server_names) == ["echo.istioinaction.io"]
    assert term.filters[0].name == "envoy.filters.network.tcp_proxy"
    assert downstream(term).common_tls_context.tls_certificate_sds_secret_configs[0].name == "kubernetes://webapp-credential"
    mtls = lds["0.0.0.0_15443"].filter_chains[0]
    ctx = downstream(mtls)
    assert ctx.require_client_certificate.value
    assert ctx.common_tls_context.tls_certificate_sds_secret_configs[0].name == "default"
    assert ctx.common_tls_context.combined_validation_context.validation_context_sds_secret_config.name == "ROOTCA"
    # without a workload certificate there is nothing to present: left out
    assert "0.0.0.0_15443" not in by_name(listeners.build(full_mesh(extra), PLAINTEXT_GATEWAY))


def test_tcp_server_routes_to_echo():
    lst = by_name(listeners.build(full_mesh(), GATEWAY))["0.0.0.0_31400"]
    tcp = tcp_proxy_pb2.TcpProxy()
    lst.filter_chains[0].filters[0].typed_config.Unpack(tcp)
    assert tcp.cluster == "outbound|9000||tcp-echo.istioinaction.svc.cluster.local"
    assert not lst.listener_filters


def test_secret_change_changes_sds_only():
    mesh1 = full_mesh()
    rotated = make_cert(CA, ["webapp.istioinaction.io"])
    mesh2 = mesh_from_yaml("\n---\n".join([INGRESS, GATEWAYS, tls_secret_yaml("webapp-credential", "istio-system", rotated),
                                           generic_secret_yaml("catalog-credential", "istio-system", CATALOG, CA.cert)]))
    ser = lambda items: {n: m.SerializeToString(deterministic=True) for n, m in items}
    assert ser(listeners.build(mesh1, GATEWAY)) == ser(listeners.build(mesh2, GATEWAY))  # no listener drain
    assert ser(routes.build(mesh1, GATEWAY)) == ser(routes.build(mesh2, GATEWAY))
    s1, s2 = ser(secrets.build(mesh1, GATEWAY)), ser(secrets.build(mesh2, GATEWAY))
    assert s1["kubernetes://webapp-credential"] != s2["kubernetes://webapp-credential"]
    assert s1["kubernetes://catalog-credential"] == s2["kubernetes://catalog-credential"]


# --- Envoy accepts it ----------------------------------------------------------------


def static_bootstrap(mesh, proxy) -> bootstrap_pb2.Bootstrap:
    """Everything the gateway would get, inlined (the workload's own certificate: OTHER)."""
    return gateway_bootstrap(mesh, proxy, root=CA.cert, leaf=OTHER)


@pytest.mark.e2e
def test_envoy_accepts_the_tls_gateway(tmp_path):
    extra = DUPLICATE + "---\n" + tls_term(
        {"mode": "OPTIONAL_MUTUAL", "credentialName": "catalog-credential", "verifyCertificateSpki": []},
        "*.istioinaction.svc.cluster.local",
        gateway_server(["*.istioinaction.svc.cluster.local"], 15444, "TLS", "auto", {"mode": "AUTO_PASSTHROUGH"}))
    boot = static_bootstrap(full_mesh(extra), GATEWAY)
    assert len(boot.static_resources.listeners) == 6
    envoy_validate(boot, tmp_path / "bootstrap.json")


def test_secret_yaml_round_trip_through_yaml_loader():
    # Secrets written as YAML (what `kubectl create secret tls --dry-run -o yaml` gives)
    doc = yaml.safe_load(f"""
apiVersion: v1
kind: Secret
type: kubernetes.io/tls
metadata: {{name: webapp-credential, namespace: istio-system}}
data:
  tls.crt: {b64(WEBAPP.cert)}
  tls.key: {b64(WEBAPP.key)}
""")
    assert isinstance(parse(doc), ConfigObject)


def test_min_protocol_above_max_is_reported_not_sent():
    extra = documents(gateway("minmax", NS, ["minmax.istioinaction.io"], port=9443, protocol="HTTPS",
                              port_name="https-minmax", tls={**WEBAPP_TLS, "minProtocolVersion": "TLSV1_3",
                                                              "maxProtocolVersion": "TLSV1_2"}))
    mesh = full_mesh(extra)
    assert "0.0.0.0_9443" not in by_name(listeners.build(mesh, GATEWAY))
    assert any("minProtocolVersion TLSV1_3 is above" in c.reason for c in mesh.gateway_conflicts)
