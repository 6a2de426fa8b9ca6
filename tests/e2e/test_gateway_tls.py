"""HTTPS, mutual TLS, passthrough and TCP at a real Envoy gateway ("Istio in Action"
chapter 4), with certificates from Kubernetes Secrets served over SDS.

One meshd and one Envoy gateway (connected to the secure xDS port, as a gateway holding
credentials must be) serve every test of this module, in order:
- webapp and catalog on one port (443), each with its own certificate, told apart by
  SNI: `curl --cacert ca.pem --resolve <host>:<port>:127.0.0.1` verifies both;
- a MUTUAL server refuses a client without a certificate and serves one with;
- a PASSTHROUGH server hands the TLS stream to a backend that terminates it itself;
- a TCP server (Gateway port 31400) carries bytes to an echo service;
- httpsRedirect answers 301;
- a Secret change reaches Envoy as a new certificate without touching the listener;
- a bad Secret is rejected and the last good one stays; a Gateway server claiming a
  host another server already holds on the port is reported, never sent;
- no credential ever reaches a proxy of another namespace or an unauthenticated one;
and at the end Envoy has rejected nothing.
"""
from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
from pathlib import Path

import pytest

from controlplane import names
from tests.support.ads import ads_fetch
from tests.support.envoy import envoy
from tests.support.harness import free_port, meshd, wait_for, write
from tests.support.pki import generic_secret_yaml, make_ca, make_cert, served_certificate_serial, tls_secret_yaml
from tests.support.traffic import backend, curl, service_yaml, tcp_echo, tcp_roundtrip, write_files

pytestmark = [pytest.mark.e2e, pytest.mark.skipif(shutil.which("curl") is None, reason="curl is needed")]

NS = "istioinaction"
GW_NS = "istio-system"
WEBAPP, CATALOG, MTLS, SNI = ("webapp.istioinaction.io", "catalog.istioinaction.io", "mtls.istioinaction.io",
                              "simple-sni-1.istioinaction.io")


def gateway_yaml(ports: dict[str, int]) -> str:
    return f"""
apiVersion: v1
kind: Service
metadata: {{name: istio-ingressgateway, namespace: {GW_NS}}}
spec:
  selector: {{istio: ingressgateway}}
  ports:
  - {{name: http2, port: 80, targetPort: {ports['http']}}}
  - {{name: https, port: 443, targetPort: {ports['https']}}}
  - {{name: tcp, port: 31400, targetPort: {ports['tcp']}}}
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: coolstore-gateway, namespace: {NS}}}
spec:
  selector: {{istio: ingressgateway}}
  servers:
  - port: {{number: 80, name: http, protocol: HTTP}}
    hosts: ["{WEBAPP}"]
    tls: {{httpsRedirect: true}}
  - port: {{number: 443, name: https-webapp, protocol: HTTPS}}
    hosts: ["{WEBAPP}"]
    tls: {{mode: SIMPLE, credentialName: webapp-credential}}
  - port: {{number: 443, name: https-catalog, protocol: HTTPS}}
    hosts: ["{CATALOG}"]
    tls: {{mode: SIMPLE, credentialName: catalog-credential, minProtocolVersion: TLSV1_2}}
  - port: {{number: 443, name: https-mtls, protocol: HTTPS}}
    hosts: ["{MTLS}"]
    tls: {{mode: MUTUAL, credentialName: mtls-credential}}
  - port: {{number: 443, name: tls-passthrough, protocol: TLS}}
    hosts: ["{SNI}"]
    tls: {{mode: PASSTHROUGH}}
  - port: {{number: 31400, name: tcp-echo, protocol: TCP}}
    hosts: ["*"]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: webapp, namespace: {NS}}}
spec:
  hosts: ["{WEBAPP}", "{MTLS}"]
  gateways: [coolstore-gateway]
  http:
  - route: [{{destination: {{host: webapp}}}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: catalog, namespace: {NS}}}
spec:
  hosts: ["{CATALOG}"]
  gateways: [coolstore-gateway]
  http:
  - route: [{{destination: {{host: catalog}}}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: simple-sni-1, namespace: {NS}}}
spec:
  hosts: ["{SNI}"]
  gateways: [coolstore-gateway]
  tls:
  - match: [{{port: 443, sniHosts: ["{SNI}"]}}]
    route: [{{destination: {{host: simple-tls-service-1, port: {{number: 443}}}}}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: tcp-echo, namespace: {NS}}}
spec:
  hosts: ["*"]
  gateways: [coolstore-gateway]
  tcp:
  - match: [{{port: 31400}}]
    route: [{{destination: {{host: tcp-echo, port: {{number: 9000}}}}}}]
"""


class Bed:
    """What the tests share: addresses, certificates, processes."""

    def __init__(self, tmp: Path):
        self.tmp = tmp
        self.cfg = tmp / "config"
        self.cfg.mkdir()
        self.ports = {"http": free_port(), "https": free_port(), "tcp": free_port()}
        self.ca = make_ca()
        self.client_ca = make_ca("client CA")
        self.webapp = make_cert(self.ca, [WEBAPP])
        self.catalog = make_cert(self.ca, [CATALOG])
        self.mtls = make_cert(self.ca, [MTLS])
        self.sni = make_cert(self.ca, [SNI])
        self.client = make_cert(self.client_ca, ["client.istioinaction.io"], client=True)
        self.files = write_files(tmp, **{"ca.pem": self.ca.cert, "client.pem": self.client.cert,
                                         "client-key.pem": self.client.key})
        self.cp = self.gw = None

    def resolve(self, host: str, port: int | None = None) -> list[str]:
        return ["--resolve", f"{host}:{port or self.ports['https']}:127.0.0.1"]

    def https(self, host: str, *extra: str, path: str = "/") -> subprocess.CompletedProcess[str]:
        return curl("--cacert", str(self.files["ca.pem"]), *self.resolve(host), *extra,
                    "-w", "\n%{http_code}", f"https://{host}:{self.ports['https']}{path}")

    def secrets(self, webapp=None) -> str:
        return "\n---\n".join([
            tls_secret_yaml("webapp-credential", GW_NS, webapp or self.webapp),
            generic_secret_yaml("catalog-credential", GW_NS, self.catalog),
            tls_secret_yaml("mtls-credential", GW_NS, self.mtls, ca=self.client_ca.cert),
        ])


@pytest.fixture(scope="module")
def bed(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("gateway-tls")
    b = Bed(tmp)
    web_port, tls_port, echo_port = free_port("127.0.0.21"), free_port("127.0.0.22"), free_port("127.0.0.23")
    write(b.cfg / "gateway.yaml", gateway_yaml(b.ports))
    write(b.cfg / "secrets.yaml", b.secrets())
    write(b.cfg / "services.yaml", "\n---\n".join([
        service_yaml("webapp", NS, [("http", 80, web_port)], [("127.0.0.21", {})]),
        service_yaml("catalog", NS, [("http", 80, web_port)], [("127.0.0.21", {})], app="catalog"),
        service_yaml("simple-tls-service-1", NS, [("tls", 443, tls_port)], [("127.0.0.22", {})]),
        service_yaml("tcp-echo", NS, [("tcp", 9000, echo_port)], [("127.0.0.23", {})]),
    ]))
    with contextlib.ExitStack() as stack:
        b.webapp_backend = stack.enter_context(backend("webapp", "127.0.0.21", web_port))
        b.tls_backend = stack.enter_context(backend("simple-tls-1", "127.0.0.22", tls_port, tls_pem=b.sni))
        stack.enter_context(tcp_echo("127.0.0.23", echo_port))
        b.cp = stack.enter_context(meshd(b.cfg, tmp))
        b.gw = stack.enter_context(envoy(tmp, [
            "--type", "router", "--namespace", GW_NS, "--pod", "istio-ingressgateway-5b7c9",
            "--service-account", "istio-ingressgateway-service-account", "--ip", "127.0.0.1",
            "--labels", "istio=ingressgateway,app=istio-ingressgateway",
            "--xds-address", f"127.0.0.1:{b.cp.secure_port}", "--ca-dir", str(b.cp.ca_dir)]))
        wait_for(lambda: b.https(WEBAPP).stdout.endswith("200"), 30, what="HTTPS through the gateway")
        yield b
        # Envoy rejected nothing meshd sent during the whole module.
        rejected = {k: v for k, v in b.gw.rejected_counters().items() if v}
        assert rejected == {}, rejected


def test_two_hosts_two_certificates_on_one_port(bed):
    for host, pem in ((WEBAPP, bed.webapp), (CATALOG, bed.catalog)):
        r = bed.https(host, path="/api/catalog")
        body, _, status = r.stdout.rpartition("\n")
        assert (r.returncode, status) == (0, "200"), r.stderr
        assert json.loads(body)["path"] == "/api/catalog"
        # the certificate presented for each SNI is that host's own
        assert served_certificate_serial("127.0.0.1", bed.ports["https"], host) == pem.serial
    dump = bed.gw.admin("/config_dump")
    for name in ("https.443.https-webapp.coolstore-gateway.istioinaction",
                 "https.443.https-catalog.coolstore-gateway.istioinaction", "kubernetes://webapp-credential",
                 "kubernetes://catalog-credential", f'"0.0.0.0_{bed.ports["https"]}"'):
        assert name in dump, name
    assert "PRIVATE KEY" not in dump  # Envoy redacts; and meshd sent it inline, not as a file


def test_mutual_tls_refuses_a_client_without_certificate(bed):
    without = bed.https(MTLS)
    assert without.returncode != 0 or not without.stdout.endswith("200"), without
    with_cert = bed.https(MTLS, "--cert", str(bed.files["client.pem"]), "--key", str(bed.files["client-key.pem"]))
    assert with_cert.returncode == 0 and with_cert.stdout.endswith("200"), with_cert.stderr
    # a client certificate from another CA is refused too
    stranger_ca = make_ca("stranger")
    stranger = make_cert(stranger_ca, ["stranger"], client=True)
    files = write_files(bed.tmp, **{"stranger.pem": stranger.cert, "stranger-key.pem": stranger.key})
    refused = bed.https(MTLS, "--cert", str(files["stranger.pem"]), "--key", str(files["stranger-key.pem"]))
    assert refused.returncode != 0 or not refused.stdout.endswith("200"), refused


def test_passthrough_reaches_a_backend_terminating_tls(bed):
    before = bed.tls_backend.count()
    r = bed.https(SNI, path="/hello")
    body, _, status = r.stdout.rpartition("\n")
    assert (r.returncode, status) == (0, "200"), r.stderr
    assert json.loads(body)["backend"] == "simple-tls-1"
    assert bed.tls_backend.count() == before + 1
    # the certificate is the backend's own: the gateway did not terminate TLS
    assert served_certificate_serial("127.0.0.1", bed.ports["https"], SNI) == bed.sni.serial


def test_tcp_server_carries_bytes_to_the_echo_service(bed):
    assert tcp_roundtrip("127.0.0.1", bed.ports["tcp"], b"world\n") == b"hello world\n"


def test_https_redirect_gives_301(bed):
    r = curl("-o", "/dev/null", "-w", "%{http_code} %{redirect_url}", "-H", f"Host: {WEBAPP}",
             f"http://127.0.0.1:{bed.ports['http']}/api/catalog")
    code, _, location = r.stdout.partition(" ")
    assert code == "301", r.stdout
    assert location.startswith(f"https://{WEBAPP}") and location.endswith("/api/catalog"), location


def test_secret_change_rotates_the_certificate_without_listener_drain(bed):
    modified = bed.gw.stats("listener_manager.listener_modified")
    rotated = make_cert(bed.ca, [WEBAPP])
    write(bed.cfg / "secrets.yaml", bed.secrets(webapp=rotated))
    wait_for(lambda: served_certificate_serial("127.0.0.1", bed.ports["https"], WEBAPP) == rotated.serial, 10,
             what="the rotated certificate served")
    assert bed.https(WEBAPP).stdout.endswith("200")
    assert bed.gw.stats("listener_manager.listener_modified") == modified  # the listener was not touched
    assert served_certificate_serial("127.0.0.1", bed.ports["https"], CATALOG) == bed.catalog.serial
    bed.webapp = rotated


def test_bad_secret_is_rejected_and_the_last_good_one_stays(bed):
    bad = json.loads(tls_secret_yaml("catalog-credential", GW_NS, bed.catalog))
    bad["data"]["tls.key"] = json.loads(tls_secret_yaml("x", GW_NS, bed.webapp))["data"]["tls.key"]
    write(bed.cfg / "bad-secret.yaml", json.dumps(bad))
    wait_for(lambda: "bad-secret.yaml" in bed.cp.log() and "does not match the certificate" in bed.cp.log(), 5,
             what="rejection logged")
    assert "BEGIN" not in "".join(line for line in bed.cp.log().splitlines() if "config rejected" in line)
    assert served_certificate_serial("127.0.0.1", bed.ports["https"], CATALOG) == bed.catalog.serial
    assert bed.https(CATALOG).stdout.endswith("200")
    (bed.cfg / "bad-secret.yaml").unlink()


def test_conflicting_server_is_reported_not_sent(bed):
    lds_before = bed.gw.stats("listener_manager.lds.update_rejected")
    write(bed.cfg / "conflict.yaml", f"""
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: webapp-again, namespace: {NS}}}
spec:
  selector: {{istio: ingressgateway}}
  servers:
  - port: {{number: 443, name: https, protocol: HTTPS}}
    hosts: ["{WEBAPP}"]
    tls: {{mode: SIMPLE, credentialName: catalog-credential}}
""")
    wait_for(lambda: "gateway conflict" in bed.cp.log() and "webapp-again" in bed.cp.log(), 5, what="conflict logged")
    line = next(line for line in bed.cp.log().splitlines() if "gateway conflict" in line and "webapp-again" in line)
    assert f"host {WEBAPP} is already served with TLS" in line and "coolstore-gateway" in line
    # the first server keeps the host, with its own certificate, and Envoy refused nothing
    assert served_certificate_serial("127.0.0.1", bed.ports["https"], WEBAPP) == bed.webapp.serial
    assert bed.https(WEBAPP).stdout.endswith("200")
    assert bed.gw.stats("listener_manager.lds.update_rejected") == lds_before
    (bed.cfg / "conflict.yaml").unlink()


def test_credentials_never_leave_the_gateway_namespace(bed):
    root = (bed.cp.ca_dir / "trust-bundle.pem") if (bed.cp.ca_dir / "trust-bundle.pem").exists() \
        else bed.cp.root_cert
    # a router authenticated for another namespace asks for the gateway's credential
    token = bed.cp.token(NS, "intruder")
    node = names.node_id("router", "127.0.0.9", "intruder-1", NS)
    resp = ads_fetch(bed.cp.secure_port, node, {"NAMESPACE": NS, "SERVICE_ACCOUNT": "intruder",
                                                "LABELS": {"istio": "ingressgateway"}},
                     names.SECRET, ["kubernetes://webapp-credential"], root_pem=root.read_bytes(), token=token)
    assert len(resp.resources) == 0
    # the plaintext port proves nothing: no credential there either, whatever the node claims
    node = names.node_id("router", "127.0.0.9", "istio-ingressgateway-x", GW_NS)
    resp = ads_fetch(bed.cp.xds_port, node, {"NAMESPACE": GW_NS, "LABELS": {"istio": "ingressgateway"}},
                     names.SECRET, ["kubernetes://webapp-credential"])
    assert len(resp.resources) == 0
