"""The Istio CA API (istio.v1.auth.IstioCertificateService/CreateCertificate) over real
gRPC on 127.0.0.1: the secure port (TLS + bearer token) and the client-certificate port.

The caller's identity comes from its credential, never from the CSR; a CSR asking for
another identity is PERMISSION_DENIED, a malformed one INVALID_ARGUMENT with the reason,
a lifetime above the maximum INVALID_ARGUMENT; the chain is leaf first, root last.
"""
from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import pytest
import structlog
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from structlog.testing import capture_logs

from ca import TokenAuthority, load_or_create_token_key
from controlplane._gen.istio.v1.auth import ca_pb2, ca_pb2_grpc
from controlplane.security.authn import ClientCertAuthenticator, JwtAuthenticator
from controlplane.security.authority import MeshCA
from controlplane.security.ca_service import METHOD, IstioCertificateService
from controlplane.security.serving import ServingCertificate
from controlplane.server.metrics import Metrics
from tests.support.pki import make_cacerts

TD, NS = "cluster.local", "istioinaction"
CATALOG = f"spiffe://{TD}/ns/{NS}/sa/catalog"
PEM = serialization.Encoding.PEM


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 60))


def make_csr(key=None, uris=(), dns=(), cn: str | None = None) -> tuple[bytes, object]:
    key = key or ec.generate_private_key(ec.SECP256R1())
    b = x509.CertificateSigningRequestBuilder().subject_name(
        x509.Name([x509.NameAttribute(x509.oid.NameOID.COMMON_NAME, cn)] if cn else []))
    names = [x509.UniformResourceIdentifier(u) for u in uris] + [x509.DNSName(d) for d in dns]
    if names:
        b = b.add_extension(x509.SubjectAlternativeName(names), critical=False)
    return b.sign(key, hashes.SHA256()).public_bytes(PEM), key


class CAPlane:
    """MeshCA + the CA service on a TLS port (tokens) and an mTLS port (client certs)."""

    def __init__(self, tmp: Path, *, plugin: bool = False):
        self.ca_dir = tmp / "ca"
        if plugin:
            self.test_root, self.test_inter = make_cacerts(self.ca_dir)
        self.metrics = Metrics()
        self.ca = MeshCA.open(self.ca_dir, TD, metrics=self.metrics)
        self.tokens = TokenAuthority(load_or_create_token_key(self.ca_dir))
        authn = [JwtAuthenticator(self.tokens, TD)]
        self.service = IstioCertificateService(self.ca, authn, trust_domain=TD, metrics=self.metrics,
                                               default_ttl=timedelta(hours=24))
        self.mtls_service = IstioCertificateService(
            self.ca, [ClientCertAuthenticator(self.ca.trusted_roots, TD), *authn], trust_domain=TD,
            metrics=self.metrics)
        self.serving = ServingCertificate(self.ca)
        self.mtls_serving = ServingCertificate(self.ca, client_roots=lambda: self.ca.trust_bundle_pem)
        self.channels: list[grpc.aio.Channel] = []

    async def __aenter__(self) -> CAPlane:
        self.server = grpc.aio.server()
        self.service.add_to_server(self.server)
        self.port = self.server.add_secure_port("127.0.0.1:0", self.serving.credentials())
        self.mtls_server = grpc.aio.server()
        self.mtls_service.add_to_server(self.mtls_server)
        self.mtls_port = self.mtls_server.add_secure_port("127.0.0.1:0", self.mtls_serving.credentials())
        await self.server.start()
        await self.mtls_server.start()
        return self

    async def __aexit__(self, *exc) -> None:
        for ch in self.channels:
            await ch.close()
        await self.server.stop(None)
        await self.mtls_server.stop(None)

    def stub(self, *, mtls: bool = False, client_key: bytes | None = None, client_chain: bytes | None = None):
        creds = grpc.ssl_channel_credentials(self.ca.trust_bundle_pem, private_key=client_key,
                                             certificate_chain=client_chain)
        ch = grpc.aio.secure_channel(f"127.0.0.1:{self.mtls_port if mtls else self.port}", creds,
                                     options=[("grpc.ssl_target_name_override", "istiod.istio-system.svc")])
        self.channels.append(ch)
        return ca_pb2_grpc.IstioCertificateServiceStub(ch)

    def token(self, sa: str = "catalog", ns: str = NS) -> list[tuple[str, str]]:
        return [("authorization", f"Bearer {self.tokens.issue(ns, sa)}")]


async def create(stub, csr: bytes | str, metadata=None, validity: int = 0) -> ca_pb2.IstioCertificateResponse:
    req = ca_pb2.IstioCertificateRequest(csr=csr.decode() if isinstance(csr, bytes) else csr,
                                         validity_duration=validity)
    req.metadata.update({"source": "test"})
    return await stub.CreateCertificate(req, metadata=metadata, timeout=10)


def uris(cert: x509.Certificate) -> list[str]:
    return cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
        x509.UniformResourceIdentifier)


def test_the_method_path_is_istios():
    assert METHOD == "/istio.v1.auth.IstioCertificateService/CreateCertificate"
    fields = {f.name: (f.number, f.type) for f in ca_pb2.IstioCertificateRequest.DESCRIPTOR.fields}
    assert fields["csr"][0] == 1 and fields["validity_duration"][0] == 3 and fields["metadata"][0] == 4
    assert fields["validity_duration"][1] == 3  # TYPE_INT64
    (chain,) = ca_pb2.IstioCertificateResponse.DESCRIPTOR.fields
    assert chain.name == "cert_chain" and chain.number == 1
    assert list(ca_pb2.IstioCertificateResponse(cert_chain=["a", "b"]).cert_chain) == ["a", "b"]  # repeated


def test_caller_gets_its_own_identity(tmp_path: Path):
    async def main():
        with capture_logs() as logs:
            async with CAPlane(tmp_path) as p:
                csr, key = make_csr(uris=[CATALOG])
                resp = await create(p.stub(), csr, p.token())
                # a CSR without any SAN is fine too: the certificate names the caller anyway
                bare, _ = make_csr(cn="whatever-i-like")
                resp2 = await create(p.stub(), bare, p.token())
                return p, resp, resp2, key, logs

    p, resp, resp2, key, logs = run(main())
    chain = [x509.load_pem_x509_certificate(c.encode()) for c in resp.cert_chain]
    assert len(chain) == 2 and chain[-1] == p.ca.active.root  # leaf first, root last
    assert uris(chain[0]) == [CATALOG]
    chain[0].verify_directly_issued_by(chain[1])
    assert chain[0].public_key().public_numbers() == key.public_key().public_numbers()
    lifetime = chain[0].not_valid_after_utc - datetime.now(UTC)
    assert timedelta(hours=23, minutes=58) < lifetime <= timedelta(hours=24)  # the default TTL
    leaf2 = x509.load_pem_x509_certificate(resp2.cert_chain[0].encode())
    assert uris(leaf2) == [CATALOG] and leaf2.subject == x509.Name([])
    assert p.metrics.csr_success._value.get() == 2
    issued = [e for e in logs if e["event"] == "cert issued" and e.get("kind") == "csr"]
    assert issued[0]["identity"] == CATALOG and issued[0]["serial"] == f"{chain[0].serial_number:x}"
    assert issued[0]["not_after"] == chain[0].not_valid_after_utc.isoformat()
    assert "PRIVATE" not in repr(logs)


def test_csr_for_another_identity_is_permission_denied(tmp_path: Path):
    async def main():
        async with CAPlane(tmp_path) as p:
            out = {}
            for label, csr in {
                "other sa": make_csr(uris=[f"spiffe://{TD}/ns/{NS}/sa/webapp"])[0],
                "own and other": make_csr(uris=[CATALOG, f"spiffe://{TD}/ns/{NS}/sa/webapp"])[0],
                "dns name": make_csr(uris=[CATALOG], dns=["evil.example.com"])[0],
                "other trust domain": make_csr(uris=[f"spiffe://other.td/ns/{NS}/sa/catalog"])[0],
            }.items():
                with pytest.raises(grpc.aio.AioRpcError) as err:
                    await create(p.stub(), csr, p.token())
                out[label] = err.value
            return p, out

    p, out = run(main())
    for label, e in out.items():
        assert e.code() == grpc.StatusCode.PERMISSION_DENIED, label
        assert CATALOG in e.details(), e.details()
    assert p.metrics.csr_sign_errors.labels("permission_denied")._value.get() == 4
    assert p.metrics.csr_success._value.get() == 0


@pytest.mark.parametrize("csr,reason", [
    ("garbage", "malformed CSR"),
    ("", "malformed CSR"),
    ("-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n", "malformed CSR"),
])
def test_malformed_csr_is_invalid_argument(tmp_path: Path, csr, reason):
    async def main():
        async with CAPlane(tmp_path) as p:
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await create(p.stub(), csr, p.token())
            return p, err.value

    p, e = run(main())
    assert e.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert reason in e.details()
    assert p.metrics.csr_parse_errors._value.get() == 1


def test_csr_with_a_weak_key_is_invalid_argument(tmp_path: Path):
    weak_key = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    weak = x509.CertificateSigningRequestBuilder().subject_name(x509.Name([])).sign(weak_key, hashes.SHA256())

    async def main():
        async with CAPlane(tmp_path) as p:
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await create(p.stub(), weak.public_bytes(PEM), p.token())
            return err.value

    e = run(main())
    assert e.code() == grpc.StatusCode.INVALID_ARGUMENT and "too small" in e.details()


def test_validity(tmp_path: Path):
    async def main():
        async with CAPlane(tmp_path) as p:
            csr, _ = make_csr(uris=[CATALOG])
            one_hour = await create(p.stub(), csr, p.token(), validity=3600)
            at_max = await create(p.stub(), csr, p.token(), validity=90 * 86400)
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await create(p.stub(), csr, p.token(), validity=90 * 86400 + 1)
            return one_hour, at_max, err.value

    one_hour, at_max, too_long = run(main())
    leaf = x509.load_pem_x509_certificate(one_hour.cert_chain[0].encode())
    assert abs((leaf.not_valid_after_utc - datetime.now(UTC)) - timedelta(hours=1)) < timedelta(seconds=30)
    leaf = x509.load_pem_x509_certificate(at_max.cert_chain[0].encode())
    assert leaf.not_valid_after_utc - datetime.now(UTC) > timedelta(days=89)
    assert too_long.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "greater than the max allowed TTL" in too_long.details()


def test_unauthenticated_callers_get_nothing(tmp_path: Path):
    async def main():
        async with CAPlane(tmp_path) as p:
            csr, _ = make_csr(uris=[CATALOG])
            errs = []
            for md in (None, [("authorization", "Bearer not.a.token")], [("authorization", "Basic abc")]):
                with pytest.raises(grpc.aio.AioRpcError) as err:
                    await create(p.stub(), csr, md)
                errs.append(err.value)
            return p, errs

    p, errs = run(main())
    assert all(e.code() == grpc.StatusCode.UNAUTHENTICATED for e in errs)
    assert "not.a.token" not in " ".join(e.details() for e in errs)
    assert p.metrics.csr_auth_failures._value.get() == 3


def test_client_certificate_authenticates_on_the_mtls_port(tmp_path: Path):
    async def main():
        async with CAPlane(tmp_path) as p:
            # first certificate: with a token, as istio-agent starts
            csr, key = make_csr(uris=[CATALOG])
            first = await create(p.stub(), csr, p.token())
            key_pem = key.private_bytes(PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
            chain_pem = "".join(first.cert_chain).encode()
            # renewal: the certificate is the credential, no token
            csr2, _ = make_csr(uris=[CATALOG])
            renewed = await create(p.stub(mtls=True, client_key=key_pem, client_chain=chain_pem), csr2)
            # and it still only gets its own identity
            other, _ = make_csr(uris=[f"spiffe://{TD}/ns/{NS}/sa/webapp"])
            with pytest.raises(grpc.aio.AioRpcError) as denied:
                await create(p.stub(mtls=True, client_key=key_pem, client_chain=chain_pem), other)
            # without a client certificate the handshake itself fails
            with pytest.raises(grpc.aio.AioRpcError) as no_cert:
                await create(p.stub(mtls=True), csr2, p.token())
            return renewed, denied.value, no_cert.value

    renewed, denied, no_cert = run(main())
    assert uris(x509.load_pem_x509_certificate(renewed.cert_chain[0].encode())) == [CATALOG]
    assert denied.code() == grpc.StatusCode.PERMISSION_DENIED
    assert no_cert.code() == grpc.StatusCode.UNAVAILABLE


def test_plugin_ca_returns_leaf_intermediate_root(tmp_path: Path):
    async def main():
        async with CAPlane(tmp_path, plugin=True) as p:
            csr, _ = make_csr(uris=[CATALOG])
            return p, await create(p.stub(), csr, p.token())

    p, resp = run(main())
    chain = [x509.load_pem_x509_certificate(c.encode()) for c in resp.cert_chain]
    assert chain[1:] == [p.test_inter, p.test_root]
    assert chain[0].issuer == p.test_inter.subject
    chain[0].verify_directly_issued_by(p.test_inter)


def test_service_logs_refusals_with_reason(tmp_path: Path):
    async def main():
        with capture_logs() as logs:
            async with CAPlane(tmp_path) as p:
                p.service._log = structlog.get_logger("test")
                with pytest.raises(grpc.aio.AioRpcError):
                    await create(p.stub(), make_csr(uris=[f"spiffe://{TD}/ns/{NS}/sa/webapp"])[0], p.token())
        return logs

    logs = run(main())
    refused = [e for e in logs if e["event"] == "csr refused"]
    assert refused and refused[0]["code"] == "PERMISSION_DENIED" and refused[0]["identity"] == CATALOG
