"""The Istio CA API against a real `meshd serve` process, with a real gRPC client (as
istio-agent calls it): on the secure xDS port with a bearer token, and on
`--ca-mtls-port` with the client certificate the first call returned."""
from __future__ import annotations

from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from controlplane._gen.istio.v1.auth import ca_pb2, ca_pb2_grpc
from tests.support.harness import free_port, meshd

pytestmark = pytest.mark.e2e
PEM = serialization.Encoding.PEM
NS = "istioinaction"
CATALOG = f"spiffe://cluster.local/ns/{NS}/sa/catalog"


def _csr(uri: str | None) -> tuple[str, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    b = x509.CertificateSigningRequestBuilder().subject_name(x509.Name([]))
    if uri:
        b = b.add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(uri)]), critical=False)
    return b.sign(key, hashes.SHA256()).public_bytes(PEM).decode(), key


def _stub(port: int, root: bytes, key: bytes | None = None, chain: bytes | None = None):
    ch = grpc.secure_channel(f"127.0.0.1:{port}", grpc.ssl_channel_credentials(root, key, chain),
                             options=[("grpc.ssl_target_name_override", "istiod.istio-system.svc")])
    return ch, ca_pb2_grpc.IstioCertificateServiceStub(ch)


def test_create_certificate_through_a_real_client(tmp_path: Path):
    config = tmp_path / "config"
    config.mkdir()
    mtls_port = free_port("127.0.0.1")
    with meshd(config, tmp_path, extra=["--ca-dir", str(tmp_path / "ca"), "--ca-mtls-port", str(mtls_port)]) as m:
        root = m.root_cert.read_bytes()
        auth = [("authorization", f"Bearer {m.token(NS, 'catalog')}")]
        ch, stub = _stub(m.secure_port, root)
        with ch:
            csr, key = _csr(CATALOG)
            resp = stub.CreateCertificate(ca_pb2.IstioCertificateRequest(csr=csr, validity_duration=3600),
                                          metadata=auth, timeout=10)
            chain = [x509.load_pem_x509_certificate(c.encode()) for c in resp.cert_chain]
            assert chain[-1] == x509.load_pem_x509_certificate(root)
            assert chain[0].extensions.get_extension_for_class(x509.SubjectAlternativeName).value \
                .get_values_for_type(x509.UniformResourceIdentifier) == [CATALOG]

            def refused(csr_text: str, validity: int = 0, metadata=auth) -> grpc.RpcError:
                with pytest.raises(grpc.RpcError) as err:
                    stub.CreateCertificate(ca_pb2.IstioCertificateRequest(csr=csr_text, validity_duration=validity),
                                           metadata=metadata, timeout=10)
                return err.value

            e = refused(_csr(f"spiffe://cluster.local/ns/{NS}/sa/webapp")[0])
            assert e.code() == grpc.StatusCode.PERMISSION_DENIED
            e = refused("-----BEGIN CERTIFICATE REQUEST-----\nnot base64!\n-----END CERTIFICATE REQUEST-----\n")
            assert e.code() == grpc.StatusCode.INVALID_ARGUMENT and "malformed CSR" in e.details()
            e = refused(csr, validity=91 * 86400)
            assert e.code() == grpc.StatusCode.INVALID_ARGUMENT and "max allowed TTL" in e.details()
            e = refused(csr, metadata=None)
            assert e.code() == grpc.StatusCode.UNAUTHENTICATED

        # renewal on the client-certificate port, with the certificate just issued
        key_pem = key.private_bytes(PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
        ch, stub = _stub(mtls_port, root, key_pem, "".join(resp.cert_chain).encode())
        with ch:
            renewed = stub.CreateCertificate(ca_pb2.IstioCertificateRequest(csr=_csr(None)[0]), timeout=10)
        leaf = x509.load_pem_x509_certificate(renewed.cert_chain[0].encode())
        assert leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value \
            .get_values_for_type(x509.UniformResourceIdentifier) == [CATALOG]

        metrics = m.metrics()
        assert "citadel_server_csr_count 6.0" in metrics
        assert "citadel_server_success_cert_issuance_count 2.0" in metrics
        assert 'citadel_server_csr_sign_err_count{error="permission_denied"} 1.0' in metrics
        assert 'meshd_certs_issued_total{kind="csr"} 2.0' in metrics
        log = m.log()
        assert "csr refused" in log and "cert issued" in log and "PRIVATE KEY" not in log
