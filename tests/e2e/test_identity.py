"""Workload identity end to end: a real meshd process, real Envoy, real TLS.

(a) Envoy bootstrapped with `meshd bootstrap --type sidecar ... --ca-dir` connects to the
    secure port and receives `default` for spiffe://cluster.local/ns/istioinaction/sa/catalog,
    which `openssl verify -CAfile root-cert.pem` accepts and which Envoy can serve with
    (its key matches). Envoy only asks for secrets something references, so the test adds
    a static listener using `default` and `ROOTCA` over ADS to the generated bootstrap.
(b) a token for webapp on a node claiming catalog: the stream is refused, no catalog key.
(c) the plaintext port without a token: ROOTCA, never a key; the secure port without a
    token: UNAUTHENTICATED.
(d) a restarted meshd on the same CA directory keeps its root: same fingerprint, and a
    certificate issued before the restart still verifies against it.
"""
from __future__ import annotations

import base64
import json
import socket
import ssl
import subprocess
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

from controlplane import names
from tests.support.ads import ads_fetch, secrets_of
from tests.support.envoy import envoy
from tests.support.harness import free_port, http_get, meshd, wait_for

pytestmark = pytest.mark.e2e

NS = "istioinaction"
CATALOG_URI = "spiffe://cluster.local/ns/istioinaction/sa/catalog"
CATALOG_NODE = names.node_id("sidecar", "127.0.0.1", "catalog-0", NS)


def _config_dir(tmp_path: Path) -> Path:
    d = tmp_path / "config"
    d.mkdir(exist_ok=True)
    return d


def _uri_sans(cert: x509.Certificate) -> list[str]:
    return cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
        x509.UniformResourceIdentifier)


def _openssl_verify(root: Path, pem: bytes, tmp_path: Path, name: str) -> subprocess.CompletedProcess:
    leaf = tmp_path / name
    leaf.write_bytes(pem)
    return subprocess.run(["openssl", "verify", "-CAfile", str(root), str(leaf)], capture_output=True, text=True)


def _sds_probe_listener(port: int):
    """A static TLS listener serving `default` and trusting `ROOTCA`, both over ADS: it
    makes Envoy request the secrets, and proves it can use them."""
    def sds(name: str) -> dict:
        return {"name": name, "sds_config": {"ads": {}, "resource_api_version": "V3"}}

    def edit(doc: dict) -> None:
        doc["static_resources"]["listeners"].append({
            "name": "sds_probe",
            "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
            "filter_chains": [{
                "filters": [{"name": "envoy.filters.network.direct_response", "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.network.direct_response.v3.Config",
                    "response": {"inline_string": "probe\n"}}}],
                "transport_socket": {"name": "envoy.transport_sockets.tls", "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
                    "common_tls_context": {"tls_certificate_sds_secret_configs": [sds("default")],
                                           "validation_context_sds_secret_config": sds("ROOTCA")}}},
            }],
        })
    return edit


def _presented_cert(port: int, root_pem: str) -> x509.Certificate:
    ctx = ssl.create_default_context(cadata=root_pem)
    ctx.check_hostname = False  # workload certificates carry a SPIFFE URI, no DNS name
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw, ctx.wrap_socket(raw) as tls:
        return x509.load_der_x509_certificate(tls.getpeercert(binary_form=True))


def test_envoy_gets_its_workload_certificate_over_the_secure_port(tmp_path: Path):
    ca_dir = tmp_path / "ca"
    with meshd(_config_dir(tmp_path), tmp_path, extra=["--ca-dir", str(ca_dir)]) as m:
        probe = free_port("127.0.0.1")
        args = ["--type", "sidecar", "--namespace", NS, "--service-account", "catalog", "--pod", "catalog-0",
                "--ip", "127.0.0.1", "--labels", "app=catalog", "--xds-address", f"127.0.0.1:{m.secure_port}",
                "--ca-dir", str(ca_dir)]
        with envoy(tmp_path, args, edit=_sds_probe_listener(probe)) as e:
            wait_for(lambda: e.stats("control_plane.connected_state").get("control_plane.connected_state") == 1, 20,
                     what=lambda: f"envoy connected over TLS\n{e.process.log()[-2000:]}\n{m.log()[-2000:]}")

            def default_secret():
                dump = json.loads(e.admin("/config_dump?resource=dynamic_active_secrets"))
                for s in dump.get("configs", []):
                    if s.get("name") == "default":
                        return s
                return None

            secret = wait_for(default_secret, 20, what=lambda: f"`default` in Envoy's secrets\n{m.log()[-3000:]}")
            chain_pem = base64.b64decode(secret["secret"]["tls_certificate"]["certificate_chain"]["inline_bytes"])
            leaf = x509.load_pem_x509_certificates(chain_pem)[0]
            assert _uri_sans(leaf) == [CATALOG_URI]
            verify = _openssl_verify(m.root_cert, leaf.public_bytes(serialization.Encoding.PEM), tmp_path, "leaf.pem")
            assert verify.returncode == 0 and "OK" in verify.stdout, verify
            # /certs shows the same certificate, and ROOTCA as its CA
            certs = json.loads(e.admin("/certs"))["certificates"]
            chains = [c for c in certs if c.get("cert_chain")]
            assert any(san.get("uri") == CATALOG_URI for c in chains for san in c["cert_chain"][0]["subject_alt_names"])
            # Envoy serves with it: the key it received matches the certificate
            root_pem = m.root_cert.read_text()
            presented = wait_for(lambda: _presented_cert(probe, root_pem), 10, what="probe listener up")
            assert presented.serial_number == leaf.serial_number
            assert "ads connect" in m.log() and "identity=spiffe://cluster.local/ns/istioinaction/sa/catalog" in m.log()


def test_token_for_another_identity_gets_no_key(tmp_path: Path):
    with meshd(_config_dir(tmp_path), tmp_path) as m:
        root = m.root_cert.read_bytes()
        webapp_token = m.token(NS, "webapp")
        claims_catalog = {"NAMESPACE": NS, "SERVICE_ACCOUNT": "catalog"}
        with pytest.raises(grpc.RpcError) as err:
            ads_fetch(m.secure_port, CATALOG_NODE, claims_catalog, names.SECRET, ["default", "ROOTCA"],
                      root_pem=root, token=webapp_token)
        assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
        log = m.log()
        assert "ads auth denied" in log
        assert "claimed_identity=spiffe://cluster.local/ns/istioinaction/sa/catalog" in log
        assert "authenticated_identity=spiffe://cluster.local/ns/istioinaction/sa/webapp" in log
        assert CATALOG_URI not in [line.split("identity=")[-1].split()[0] for line in log.splitlines()
                                   if "cert issued" in line]
        # the same token on a node that claims webapp gets webapp's key, never catalog's
        webapp_node = names.node_id("sidecar", "127.0.0.2", "webapp-0", NS)
        resp = ads_fetch(m.secure_port, webapp_node, {"NAMESPACE": NS, "SERVICE_ACCOUNT": "webapp"}, names.SECRET,
                         ["default"], root_pem=root, token=webapp_token)
        leaf = x509.load_pem_x509_certificates(secrets_of(resp)["default"].tls_certificate.certificate_chain.inline_bytes)[0]
        assert _uri_sans(leaf) == ["spiffe://cluster.local/ns/istioinaction/sa/webapp"]
        # meshd's debug view holds webapp's certificate and none for catalog (and no keys)
        status, body = http_get("127.0.0.1", m.monitoring_port, "/debug/certs")
        view = json.loads(body)
        assert status == 200 and b"PRIVATE" not in body
        assert [c["identity"] for c in view["workload_certificates"]] == [
            "spiffe://cluster.local/ns/istioinaction/sa/webapp"]
        assert view["workload_certificates"][0]["serial"] == f"{leaf.serial_number:x}"


def test_no_key_without_a_token(tmp_path: Path):
    with meshd(_config_dir(tmp_path), tmp_path) as m:
        root = m.root_cert.read_bytes()
        md = {"NAMESPACE": NS, "SERVICE_ACCOUNT": "catalog"}
        resp = ads_fetch(m.xds_port, CATALOG_NODE, md, names.SECRET, ["default", "ROOTCA"])
        got = secrets_of(resp)
        assert set(got) == {"ROOTCA"}
        assert got["ROOTCA"].validation_context.trusted_ca.inline_bytes == root
        # a token sent in clear on the plaintext port does not unlock anything
        resp = ads_fetch(m.xds_port, CATALOG_NODE, md, names.SECRET, ["default"], token=m.token(NS, "catalog"))
        assert secrets_of(resp) == {}
        with pytest.raises(grpc.RpcError) as err:
            ads_fetch(m.secure_port, CATALOG_NODE, md, names.SECRET, ["default"], root_pem=root)
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
        log = m.log()
        assert "sds secret withheld" in log and "ads auth failed" in log
        assert "cert issued identity=spiffe" not in log


def test_restart_keeps_the_root(tmp_path: Path):
    ca_dir = tmp_path / "ca"
    md = {"NAMESPACE": NS, "SERVICE_ACCOUNT": "catalog"}

    def fingerprint(pem: bytes) -> bytes:
        return x509.load_pem_x509_certificate(pem).fingerprint(hashes.SHA256())

    with meshd(_config_dir(tmp_path), tmp_path, extra=["--ca-dir", str(ca_dir)]) as m:
        root_before = m.root_cert.read_bytes()
        resp = ads_fetch(m.secure_port, CATALOG_NODE, md, names.SECRET, ["default"],
                         root_pem=root_before, token=m.token(NS, "catalog"))
        chain = secrets_of(resp)["default"].tls_certificate.certificate_chain.inline_bytes
        leaf_before = x509.load_pem_x509_certificates(chain)[0].public_bytes(serialization.Encoding.PEM)
        token = m.token(NS, "catalog", ttl="2h")
    with meshd(_config_dir(tmp_path), tmp_path, extra=["--ca-dir", str(ca_dir)]) as m2:
        assert "root CA loaded" in m2.log() and "root CA created" not in m2.log()
        served = secrets_of(ads_fetch(m2.xds_port, CATALOG_NODE, md, names.SECRET, ["ROOTCA"]))
        root_after = served["ROOTCA"].validation_context.trusted_ca.inline_bytes
        assert fingerprint(root_after) == fingerprint(root_before)
        assert m2.root_cert.read_bytes() == root_before
        verify = _openssl_verify(m2.root_cert, leaf_before, tmp_path, "before-restart.pem")
        assert verify.returncode == 0 and "OK" in verify.stdout, verify
        # a token minted before the restart is still accepted (same token key)
        resp = ads_fetch(m2.secure_port, CATALOG_NODE, md, names.SECRET, ["default"], root_pem=root_after, token=token)
        assert "default" in secrets_of(resp)
