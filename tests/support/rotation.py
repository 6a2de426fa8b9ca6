"""Shared by the rotation, plug-in CA and CA API end-to-end tests (no tests here).

Two real Envoys on loopback, both bootstrapped with `meshd bootstrap --ca-dir` over
meshd's secure port (so each gets its own `default` certificate and `ROOTCA` over SDS):

    test --HTTP--> client Envoy :G ----Istio mTLS---------------> server Envoy 127.0.0.2:S
                   (ingress gateway,  DestinationRule ISTIO_MUTUAL,  (static listener requiring
                    sa rot/client)    SAN rot/server, generated      a client cert with SAN
                                      by meshd; one request per      rot/client) -> 200 "ok"
                                      connection)

The client's route and mTLS cluster come from meshd (Gateway, VirtualService,
DestinationRule in the config directory). The cluster allows one request per connection
(connectionPool.http.maxRequestsPerConnection: 1), so every request is a fresh mTLS
handshake with whatever certificates and trust bundle both Envoys hold at that moment:
a rotation that breaks anything shows up as a failed request.
"""
from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path

from cryptography import x509

from tests.support.envoy import EnvoyHandle, envoy
from tests.support.harness import MeshdHandle, Traffic, free_port, http_get, wait_for
from tests.support.manifests import (
    MESHED,
    destination_rule,
    documents,
    gateway,
    ingress_gateway_service,
    pod,
    service,
    virtual_service,
)

NS = "rot"
TD = "cluster.local"


def spiffe(sa: str) -> str:
    return f"spiffe://{TD}/ns/{NS}/sa/{sa}"


def _sds(name: str) -> dict:
    return {"name": name, "sds_config": {"ads": {}, "resource_api_version": "V3"}}


def _validation(peer_sa: str) -> dict:
    return {"combined_validation_context": {
        "default_validation_context": {"match_typed_subject_alt_names": [
            {"san_type": "URI", "matcher": {"exact": spiffe(peer_sa)}}]},
        "validation_context_sds_secret_config": _sds("ROOTCA"),
    }}


def _hcm(stat_prefix: str, route: dict) -> dict:
    return {
        "name": "envoy.filters.network.http_connection_manager",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
            "stat_prefix": stat_prefix,
            "route_config": {"virtual_hosts": [{"name": "all", "domains": ["*"],
                                                "routes": [{"match": {"prefix": "/"}, **route}]}]},
            "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}],
        },
    }


def server_edit(port: int):
    """A listener on `port` that requires a client certificate of rot/client and answers 200."""
    def edit(doc: dict) -> None:
        doc["static_resources"]["listeners"].append({
            "name": "mtls_in",
            "address": {"socket_address": {"address": SERVER_IP, "port_value": port}},
            "filter_chains": [{
                "filters": [_hcm("mtls_in", {"direct_response": {"status": 200, "body": {"inline_string": "ok"}}})],
                "transport_socket": {"name": "envoy.transport_sockets.tls", "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
                    "require_client_certificate": True,
                    "common_tls_context": {"tls_certificate_sds_secret_configs": [_sds("default")],
                                           **_validation("client")}}},
            }],
        })
    return edit


HOST = "rot.example"
SERVER_IP = "127.0.0.2"


def mesh_yaml(gateway_port: int, server_port: int) -> str:
    """The client is an ingress gateway: Gateway + VirtualService to the `server` Service,
    whose DestinationRule asks for Istio mTLS (ISTIO_MUTUAL, `default` + ROOTCA over SDS)
    and one request per connection. The server Pod's service account gives the SAN the
    gateway expects."""
    return documents(
        ingress_gateway_service(gateway_port, namespace=NS),
        gateway("gw", NS, [HOST]),
        virtual_service("to-server", NS, [HOST], "server", gateways=["gw"], port=80),
        service("server", NS, [("http", 80, server_port)]),
        pod("server-0", NS, SERVER_IP, {"app": "server", **MESHED}, service_account="server"),
        destination_rule("server", NS, "server", traffic_policy={
            "tls": {"mode": "ISTIO_MUTUAL"}, "connectionPool": {"http": {"maxRequestsPerConnection": 1}}}))


def bootstrap_args(m: MeshdHandle, sa: str, labels: str) -> list[str]:
    return ["--type", "router", "--namespace", NS, "--service-account", sa, "--pod", f"{sa}-0",
            "--ip", "127.0.0.1", "--labels", labels, "--xds-address", f"127.0.0.1:{m.secure_port}",
            "--ca-dir", str(m.ca_dir)]


def leaf_serials(e: EnvoyHandle) -> set[str]:
    """Serial numbers of the workload certificates Envoy holds now (admin /certs)."""
    out = set()
    for c in json.loads(e.admin("/certs")).get("certificates", []):
        for cert in c.get("cert_chain") or []:
            if any(s.get("uri", "").startswith("spiffe://") for s in cert.get("subject_alt_names", [])):
                out.add(cert["serial_number"].lower())
    return out


def envoy_secret(e: EnvoyHandle, name: str) -> dict | None:
    dump = json.loads(e.admin("/config_dump?resource=dynamic_active_secrets"))
    for s in dump.get("configs", []):
        if s.get("name") == name:
            return s["secret"]
    return None


def envoy_chain(e: EnvoyHandle) -> list[x509.Certificate]:
    import base64

    secret = envoy_secret(e, "default")
    assert secret is not None, "Envoy holds no `default` secret"
    return x509.load_pem_x509_certificates(
        base64.b64decode(secret["tls_certificate"]["certificate_chain"]["inline_bytes"]))


def envoy_roots(e: EnvoyHandle) -> list[x509.Certificate]:
    import base64

    secret = envoy_secret(e, "ROOTCA")
    assert secret is not None, "Envoy holds no `ROOTCA` secret"
    return x509.load_pem_x509_certificates(
        base64.b64decode(secret["validation_context"]["trusted_ca"]["inline_bytes"]))


def steady_traffic(port: int) -> Traffic:
    """A steady request stream through the client Envoy: every answer must be 200 "ok"."""
    return Traffic(port, HOST, b"ok", path="/", exact=True, interval=0.03)


def ports() -> tuple[int, int]:
    """(gateway port, server port) for mesh_yaml and mtls_pair."""
    return free_port("127.0.0.1"), free_port("127.0.0.1")


def config_dir(tmp_path: Path, gateway_port: int, server_port: int) -> Path:
    d = tmp_path / "config"
    d.mkdir(exist_ok=True)
    (d / "mesh.yaml").write_text(mesh_yaml(gateway_port, server_port))
    return d


@contextlib.contextmanager
def mtls_pair(m: MeshdHandle, tmp_path: Path, gateway_port: int, server_port: int
              ) -> Iterator[tuple[EnvoyHandle, EnvoyHandle]]:
    """(server Envoy, client gateway Envoy), both serving once ready."""
    with envoy(tmp_path, bootstrap_args(m, "server", "app=server"), edit=server_edit(server_port)) as server, \
            envoy(tmp_path, bootstrap_args(m, "client", "istio=ingressgateway")) as client:
        def serving() -> bool:
            status, body = http_get("127.0.0.1", gateway_port, "/", headers={"Host": HOST}, timeout=3)
            return status == 200 and body == b"ok"

        wait_for(serving, 60, interval=0.2,
                 what=lambda: f"mTLS between the Envoys\n{client.process.log()[-1500:]}\n"
                              f"{server.process.log()[-1500:]}\n{m.log()[-3000:]}")
        yield server, client


def meshd_ca_view(m: MeshdHandle) -> dict:
    status, body = http_get("127.0.0.1", m.monitoring_port, "/debug/ca")
    assert status == 200, body
    return json.loads(body)
