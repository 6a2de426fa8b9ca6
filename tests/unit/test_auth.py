"""Authenticating xDS streams on the secure port: bearer JWT -> identity, then the node
must claim that identity. Real TLS gRPC on 127.0.0.1 where the wire matters."""
from __future__ import annotations

import asyncio
import socket
import ssl
from datetime import timedelta
from pathlib import Path

import grpc
import pytest
import structlog
from cryptography import x509
from structlog.testing import capture_logs

from ca import CertificateAuthority, Identity, TokenAuthority, generate_private_key, load_or_create_root
from controlplane import names
from controlplane.model.proxy import parse_node
from controlplane.security.authn import (
    AuthenticationError,
    JwtAuthenticator,
    authenticate_stream,
    bearer_token,
    normalize_metadata,
)
from controlplane.security.authz import identity_mismatch
from controlplane.security.serving import SERVER_DNS_NAMES, ServingCertificate
from tests.support.sds import NS, TD, FakeClock, Plane, node_id


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 60))


@pytest.fixture()
def tokens() -> TokenAuthority:
    return TokenAuthority(generate_private_key("ec-p256"))


# --- metadata and tokens --------------------------------------------------------------
def test_bearer_token_parsing():
    assert bearer_token([]) is None
    assert bearer_token([("user-agent", "envoy")]) is None
    assert bearer_token([("authorization", "Bearer abc.def.ghi")]) == "abc.def.ghi"
    assert bearer_token([("authorization", "bearer  abc.def.ghi ")]) == "abc.def.ghi"
    assert bearer_token([("authorization", b"Bearer x.y.z")]) == "x.y.z"
    for bad in ("Basic dXNlcjpwdw==", "Bearer", "abc.def.ghi"):
        with pytest.raises(AuthenticationError):
            bearer_token([("authorization", bad)])
    with pytest.raises(AuthenticationError, match="more than one"):
        bearer_token([("authorization", "Bearer a.b.c"), ("authorization", "Bearer d.e.f")])
    assert normalize_metadata([("Authorization", "x")]) == [("authorization", "x")]


def test_jwt_authenticator_maps_token_to_identity(tokens: TokenAuthority):
    authn = JwtAuthenticator(tokens, TD)
    md = [("authorization", f"Bearer {tokens.issue(NS, 'catalog')}")]
    assert authn.authenticate(md, "ipv4:127.0.0.1:1") == Identity(TD, NS, "catalog")
    assert authn.authenticate([], "peer") is None


def test_jwt_authenticator_rejects_bad_tokens(tokens: TokenAuthority):
    clock = FakeClock()
    tokens = TokenAuthority(tokens.key, clock=clock)
    authn = JwtAuthenticator(tokens, TD)
    stranger = TokenAuthority(generate_private_key("ec-p256"))
    cases = {
        "wrong audience": tokens.issue(NS, "catalog", audience=["kubernetes"]),
        "other signer": stranger.issue(NS, "catalog"),
        "garbage": "not-a-jwt",
        "bad identity": tokens.issue(NS, "cat/alog"),
    }
    for what, token in cases.items():
        with pytest.raises(AuthenticationError) as err:
            authn.authenticate([("authorization", f"Bearer {token}")], "peer")
        assert token not in str(err.value), what  # errors never echo the credential
    expiring = tokens.issue(NS, "catalog", ttl=timedelta(minutes=5))
    clock.advance(timedelta(minutes=6))
    with pytest.raises(AuthenticationError, match="expired"):
        authn.authenticate([("authorization", f"Bearer {expiring}")], "peer")


def test_authenticate_stream_tries_each_authenticator(tokens: TokenAuthority):
    class Abstains:
        name = "none"

        def authenticate(self, metadata, peer):
            return None

    class AsyncOne:
        name = "async"

        async def authenticate(self, metadata, peer):
            return Identity(TD, "ns", "sa") if ("x-test", "yes") in metadata else None

    jwt = JwtAuthenticator(tokens, TD)

    async def main():
        assert await authenticate_stream([Abstains(), AsyncOne()], [("x-test", "yes")], "p") == Identity(TD, "ns", "sa")
        md = [("authorization", f"Bearer {tokens.issue(NS, 'catalog')}")]
        assert await authenticate_stream([jwt, AsyncOne()], md, "p") == Identity(TD, NS, "catalog")
        with pytest.raises(AuthenticationError) as err:
            await authenticate_stream([jwt, Abstains()], [("authorization", "Bearer a.b.c")], "p")
        assert "jwt:" in str(err.value) and "none: no credential" in str(err.value)

    run(main())


def test_identity_must_match_the_nodes_namespace_and_service_account():
    def proxy(ns, sa):
        md = {"NAMESPACE": ns} | ({"SERVICE_ACCOUNT": sa} if sa else {})
        return parse_node(node_id("catalog-0", ns), md)

    me = Identity(TD, NS, "catalog")
    assert identity_mismatch(proxy(NS, "catalog"), me) is None
    assert "service account" in identity_mismatch(proxy(NS, "webapp"), me)
    assert "namespace" in identity_mismatch(proxy("default", "catalog"), me)
    assert "SERVICE_ACCOUNT" in identity_mismatch(proxy(NS, None), me)


# --- the secure port ----------------------------------------------------------------
def test_no_token_on_secure_port_is_unauthenticated(tmp_path: Path):
    async def main():
        with capture_logs() as logs:
            async with Plane(tmp_path, logger=structlog.get_logger("test")) as p:
                with pytest.raises(grpc.aio.AioRpcError) as err:
                    await p.fetch_secrets([names.SDS_ROOT], secure=True)
                assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
                with pytest.raises(grpc.aio.AioRpcError) as err2:
                    await p.fetch_secrets([names.SDS_DEFAULT], secure=True, token="e30.e30.sig")
                assert err2.value.code() == grpc.StatusCode.UNAUTHENTICATED
                assert p.ads.connections() == [] and p.secrets.certificates() == []
                assert p.metrics.auth_failures.labels("unauthenticated")._value.get() == 2
        failed = [e for e in logs if e["event"] == "ads auth failed"]
        assert len(failed) == 2 and all(e["peer"] and e["reason"] for e in failed)
        assert "no credential" in failed[0]["reason"]

    run(main())


def test_token_for_another_service_account_is_permission_denied(tmp_path: Path):
    async def main():
        with capture_logs() as logs:
            async with Plane(tmp_path, logger=structlog.get_logger("test")) as p:
                with pytest.raises(grpc.aio.AioRpcError) as err:
                    await p.fetch_secrets([names.SDS_DEFAULT, names.SDS_ROOT], secure=True,
                                          token=p.token(NS, "webapp"), service_account="catalog")
                assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
                assert "catalog" in err.value.details() and "webapp" in err.value.details()
                # nothing issued for either identity; the stream never became a connection
                assert p.secrets.certificates() == [] and p.ads.connections() == []
                assert p.metrics.auth_failures.labels("permission_denied")._value.get() == 1
                # a node without SERVICE_ACCOUNT is refused too
                with pytest.raises(grpc.aio.AioRpcError) as err2:
                    await p.fetch_secrets([names.SDS_DEFAULT], secure=True, token=p.token(NS, "catalog"),
                                          service_account=None)
                assert err2.value.code() == grpc.StatusCode.PERMISSION_DENIED
        denied = [e for e in logs if e["event"] == "ads auth denied"]
        assert len(denied) == 2
        assert denied[0]["proxy"] == node_id("catalog-0")
        assert denied[0]["claimed_identity"] == "spiffe://cluster.local/ns/istioinaction/sa/catalog"
        assert denied[0]["authenticated_identity"] == "spiffe://cluster.local/ns/istioinaction/sa/webapp"
        assert denied[0]["log_level"] == "warning"

    run(main())


def test_authenticated_stream_carries_its_identity(tmp_path: Path):
    async def main():
        with capture_logs() as logs:
            async with Plane(tmp_path, logger=structlog.get_logger("test")) as p:
                got = await p.fetch_secrets([names.SDS_DEFAULT], secure=True, token=p.token(NS, "catalog"))
                assert names.SDS_DEFAULT in got
        connect = next(e for e in logs if e["event"] == "ads connect")
        assert connect["identity"] == "spiffe://cluster.local/ns/istioinaction/sa/catalog"

    run(main())


def _served_serial(port: int, root_pem: bytes) -> int:
    """Handshake with the port as a client would (SNI istiod.istio-system.svc, ALPN h2)
    and return the serial of the certificate the server presented."""
    ctx = ssl.create_default_context(cadata=root_pem.decode())
    ctx.set_alpn_protocols(["h2"])
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        with ctx.wrap_socket(raw, server_hostname="istiod.istio-system.svc") as tls:
            return x509.load_der_x509_certificate(tls.getpeercert(binary_form=True)).serial_number


def test_server_certificate_is_istiods_and_renews_at_half_life(tmp_path: Path):
    root = load_or_create_root(tmp_path / "ca", TD)
    clock = FakeClock()  # decides when to renew; the CA signs on real time (the client checks validity)
    serving = ServingCertificate(CertificateAuthority(root), clock=clock)
    leaf = x509.load_pem_x509_certificate(serving.chain_pem)
    dns = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(x509.DNSName)
    assert dns == list(SERVER_DNS_NAMES) and "istiod.istio-system.svc" in dns
    assert x509.load_pem_x509_certificates(serving.chain_pem)[1] == root.cert  # leaf + root

    async def main():
        server = grpc.aio.server()
        port = server.add_secure_port("127.0.0.1:0", serving.credentials())
        await server.start()
        try:
            assert await asyncio.to_thread(_served_serial, port, root.cert_pem) == leaf.serial_number
            clock.advance(timedelta(hours=11))
            assert await asyncio.to_thread(_served_serial, port, root.cert_pem) == leaf.serial_number
            clock.advance(timedelta(hours=1))  # half of the 24 h lifetime: the next handshake gets a new one
            renewed = await asyncio.to_thread(_served_serial, port, root.cert_pem)
            assert renewed != leaf.serial_number
            assert renewed == x509.load_pem_x509_certificate(serving.chain_pem).serial_number
            assert await asyncio.to_thread(_served_serial, port, root.cert_pem) == renewed
        finally:
            await server.stop(None)

    run(main())


def test_delta_on_the_secure_port_is_authenticated_first(tmp_path: Path):
    from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2

    async def main():
        async with Plane(tmp_path) as p:
            stub = ads_pb2_grpc.AggregatedDiscoveryServiceStub(p.channel(secure=True))

            async def reqs():
                yield discovery_pb2.DeltaDiscoveryRequest(type_url=names.SECRET)

            for metadata, code in ((None, grpc.StatusCode.UNAUTHENTICATED),
                                   # authenticated: served by the delta server, which wants the node first
                                   ([("authorization", f"Bearer {p.token(NS, 'catalog')}")], grpc.StatusCode.INVALID_ARGUMENT)):
                call = stub.DeltaAggregatedResources(reqs(), metadata=metadata)
                with pytest.raises(grpc.aio.AioRpcError) as err:
                    await call.read()
                assert err.value.code() == code

    run(main())
