"""SDS `default` and `ROOTCA` from meshd's CA, over real gRPC ports on 127.0.0.1.

The rules under test: a workload key leaves meshd only over the secure port, to a stream
authenticated as the node's own identity; ROOTCA goes to anyone; one certificate per
identity, shared by that identity's proxies and never by another identity's.
"""
from __future__ import annotations

import asyncio
import hashlib
from datetime import timedelta
from pathlib import Path

import structlog
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtensionOID
from structlog.testing import capture_logs

from ca import Identity
from controlplane import names
from controlplane.model.proxy import parse_node
from controlplane.security.sds import PLAINTEXT_REASON
from tests.support.sds import NS, TD, Plane, node_id

CATALOG = Identity(TD, NS, "catalog")
WEBAPP = Identity(TD, NS, "webapp")


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 60))


def certs_of(chain_pem: bytes) -> list[x509.Certificate]:
    return x509.load_pem_x509_certificates(chain_pem)


def uri_sans(cert: x509.Certificate) -> list[str]:
    ext = cert.extensions.get_extension_for_oid(ExtensionOID.SUBJECT_ALTERNATIVE_NAME)
    return ext.value.get_values_for_type(x509.UniformResourceIdentifier)


def spki(key_or_cert) -> bytes:
    pub = key_or_cert.public_key()
    return pub.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def proxy(pod: str, sa: str | None, namespace: str = NS, proxy_type: str = "sidecar"):
    md = {"NAMESPACE": namespace}
    if sa is not None:
        md["SERVICE_ACCOUNT"] = sa
    return parse_node(node_id(pod, namespace, proxy_type), md)


# --- over the wire -----------------------------------------------------------------
def test_plaintext_port_serves_rootca_and_never_default(tmp_path: Path):
    async def main():
        async with Plane(tmp_path) as p:
            got = await p.fetch_secrets([names.SDS_DEFAULT, names.SDS_ROOT], secure=False)
            assert set(got) == {names.SDS_ROOT}
            assert got[names.SDS_ROOT].validation_context.trusted_ca.inline_bytes == p.root.cert_pem
            # A valid token sent in clear changes nothing: the plaintext port never authenticates.
            got = await p.fetch_secrets([names.SDS_DEFAULT], secure=False, token=p.token(NS, "catalog"))
            assert got == {}
            assert p.secrets.certificates() == []  # nothing was even issued

    run(main())


def test_withheld_default_is_logged_once_per_stream(tmp_path: Path):
    async def main():
        with capture_logs() as logs:
            async with Plane(tmp_path, logger=structlog.get_logger("test")) as p:
                from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2

                stub = ads_pb2_grpc.AggregatedDiscoveryServiceStub(p.channel(secure=False))
                q: asyncio.Queue = asyncio.Queue()

                async def reqs():
                    while (r := await q.get()) is not None:
                        yield r

                call = stub.StreamAggregatedResources(reqs())
                first = discovery_pb2.DiscoveryRequest(type_url=names.SECRET, resource_names=[names.SDS_DEFAULT])
                first.node.id = node_id("catalog-0")
                first.node.metadata.update({"NAMESPACE": NS, "SERVICE_ACCOUNT": "catalog"})
                q.put_nowait(first)
                r1 = await asyncio.wait_for(call.read(), 10)
                assert list(r1.resources) == []
                q.put_nowait(discovery_pb2.DiscoveryRequest(
                    type_url=names.SECRET, resource_names=[names.SDS_DEFAULT, names.SDS_ROOT],
                    version_info=r1.version_info, response_nonce=r1.nonce))
                r2 = await asyncio.wait_for(call.read(), 10)
                assert len(r2.resources) == 1  # ROOTCA only
                q.put_nowait(None)
                call.cancel()
        withheld = [e for e in logs if e["event"] == "sds secret withheld"]
        assert len(withheld) == 1
        assert withheld[0]["secret"] == "default" and withheld[0]["reason"] == PLAINTEXT_REASON
        assert withheld[0]["proxy"] == node_id("catalog-0") and withheld[0]["log_level"] == "warning"

    run(main())


def test_default_secret_is_the_nodes_identity_with_a_matching_key(tmp_path: Path):
    async def main():
        async with Plane(tmp_path) as p:
            got = await p.fetch_secrets([names.SDS_DEFAULT, names.SDS_ROOT], secure=True, token=p.token(NS, "catalog"))
            assert set(got) == {names.SDS_DEFAULT, names.SDS_ROOT}
            tls = got[names.SDS_DEFAULT].tls_certificate
            chain = certs_of(tls.certificate_chain.inline_bytes)
            # leaf then root, as istio-agent serves `default`
            assert len(chain) == 2 and chain[1] == p.root.cert
            leaf = chain[0]
            assert uri_sans(leaf) == ["spiffe://cluster.local/ns/istioinaction/sa/catalog"]
            leaf.verify_directly_issued_by(p.root.cert)
            key = serialization.load_pem_private_key(tls.private_key.inline_bytes, None)
            assert spki(key) == spki(leaf)
            return p.secrets.certificates()[0], got[names.SDS_DEFAULT], tls.certificate_chain.inline_bytes

    cached, secret, chain_pem = run(main())
    # The resource version comes from the certificate chain, never from the key.
    assert cached.resource.version == hashlib.sha256(chain_pem).hexdigest()[:16]
    assert cached.identity == CATALOG


def test_proxies_of_one_identity_share_a_certificate(tmp_path: Path):
    async def main():
        with capture_logs() as logs:
            async with Plane(tmp_path, logger=structlog.get_logger("test")) as p:
                token = p.token(NS, "catalog")
                a = await p.fetch_secrets([names.SDS_DEFAULT], secure=True, token=token, pod="catalog-0", ip="10.0.0.1")
                b = await p.fetch_secrets([names.SDS_DEFAULT], secure=True, token=token, pod="catalog-1", ip="10.0.0.2")
                issued = p.metrics.certs_issued.labels("workload")._value.get()
        assert a[names.SDS_DEFAULT].SerializeToString() == b[names.SDS_DEFAULT].SerializeToString()
        assert issued == 1
        assert [e["event"] for e in logs].count("cert issued") == 2  # the xds server's and catalog's

    run(main())


def test_identities_never_get_each_others_key(tmp_path: Path):
    async def main():
        async with Plane(tmp_path) as p:
            cat = await p.fetch_secrets([names.SDS_DEFAULT], secure=True, token=p.token(NS, "catalog"))
            web = await p.fetch_secrets(
                [names.SDS_DEFAULT], secure=True, token=p.token(NS, "webapp"), pod="webapp-0", service_account="webapp"
            )
            return cat[names.SDS_DEFAULT].tls_certificate, web[names.SDS_DEFAULT].tls_certificate

    cat, web = run(main())
    assert cat.private_key.inline_bytes != web.private_key.inline_bytes
    cat_leaf, web_leaf = certs_of(cat.certificate_chain.inline_bytes)[0], certs_of(web.certificate_chain.inline_bytes)[0]
    assert uri_sans(cat_leaf) == ["spiffe://cluster.local/ns/istioinaction/sa/catalog"]
    assert uri_sans(web_leaf) == ["spiffe://cluster.local/ns/istioinaction/sa/webapp"]
    web_key = serialization.load_pem_private_key(web.private_key.inline_bytes, None)
    assert spki(web_key) == spki(web_leaf) and spki(web_key) != spki(cat_leaf)


def test_router_gets_its_service_accounts_certificate(tmp_path: Path):
    async def main():
        async with Plane(tmp_path) as p:
            sa = "istio-ingressgateway-service-account"
            got = await p.fetch_secrets(
                [names.SDS_DEFAULT], secure=True, token=p.token("istio-system", sa), pod="istio-ingressgateway-0",
                namespace="istio-system", service_account=sa, proxy_type="router",
            )
            leaf = certs_of(got[names.SDS_DEFAULT].tls_certificate.certificate_chain.inline_bytes)[0]
            assert uri_sans(leaf) == [f"spiffe://cluster.local/ns/istio-system/sa/{sa}"]

    run(main())


# --- the provider on its own --------------------------------------------------------
def test_provider_withholds_default_unless_identity_matches_node(tmp_path: Path):
    async def main():
        async with Plane(tmp_path) as p:
            s = p.secrets
            none = await s.secrets(proxy("catalog-0", "catalog"), None, [names.SDS_DEFAULT, names.SDS_ROOT])
            assert [r.name for r in none.resources] == [names.SDS_ROOT]
            assert none.withheld == {names.SDS_DEFAULT: PLAINTEXT_REASON}
            other = await s.secrets(proxy("catalog-0", "catalog"), WEBAPP, [names.SDS_DEFAULT])
            assert other.resources == [] and "service account" in other.withheld[names.SDS_DEFAULT]
            other_ns = await s.secrets(proxy("catalog-0", "catalog", namespace="default"), CATALOG, [names.SDS_DEFAULT])
            assert other_ns.resources == [] and "namespace" in other_ns.withheld[names.SDS_DEFAULT]
            no_sa = await s.secrets(proxy("catalog-0", None), CATALOG, [names.SDS_DEFAULT])
            assert no_sa.resources == [] and "SERVICE_ACCOUNT" in no_sa.withheld[names.SDS_DEFAULT]
            foreign = await s.secrets(proxy("catalog-0", "catalog"), Identity("other.domain", NS, "catalog"),
                                      [names.SDS_DEFAULT])
            assert foreign.resources == [] and "trust domain" in foreign.withheld[names.SDS_DEFAULT]
            assert s.certificates() == []
            ok = await s.secrets(proxy("catalog-0", "catalog"), CATALOG, [names.SDS_DEFAULT, "kubernetes://x"])
            assert [r.name for r in ok.resources] == [names.SDS_DEFAULT] and ok.withheld == {}

    run(main())


def test_concurrent_requests_for_one_identity_issue_once(tmp_path: Path):
    async def main():
        async with Plane(tmp_path) as p:
            certs = await asyncio.gather(*(p.secrets.certificate(CATALOG, f"p{i}") for i in range(20)))
            assert len({c.serial for c in certs}) == 1
            assert p.metrics.certs_issued.labels("workload")._value.get() == 1

    run(main())


def test_certificate_reissued_once_less_than_half_its_lifetime_remains(tmp_path: Path):
    async def main():
        with capture_logs() as logs:
            async with Plane(tmp_path, ttl=timedelta(hours=24), logger=structlog.get_logger("test")) as p:
                first = await p.secrets.certificate(CATALOG)
                assert first.not_after - first.issued_at == timedelta(hours=24)
                p.clock.advance(timedelta(hours=11, minutes=59))
                assert (await p.secrets.certificate(CATALOG)).serial == first.serial
                p.clock.advance(timedelta(minutes=1))  # exactly half the lifetime left
                second = await p.secrets.certificate(CATALOG)
                assert second.serial != first.serial
                assert second.not_after == p.clock.now + timedelta(hours=24)
                assert p.secrets.certificates() == [second]
        issued = [e for e in logs if e["event"] == "cert issued" and e.get("identity") == CATALOG.spiffe_uri]
        assert [e["reason"] for e in issued] == ["first request", "renewal"]
        assert issued[1]["serial"] == f"{second.serial:x}"
        assert issued[1]["not_after"] == second.not_after.isoformat()

    run(main())


def test_expired_certificates_are_evicted(tmp_path: Path):
    async def main():
        async with Plane(tmp_path, ttl=timedelta(hours=1)) as p:
            await p.secrets.certificate(CATALOG)
            p.clock.advance(timedelta(hours=2))
            await p.secrets.certificate(WEBAPP)
            assert [c.identity for c in p.secrets.certificates()] == [WEBAPP]

    run(main())


def test_logs_never_carry_key_material(tmp_path: Path):
    async def main():
        with capture_logs() as logs:
            async with Plane(tmp_path, logger=structlog.get_logger("test")) as p:
                got = await p.fetch_secrets([names.SDS_DEFAULT], secure=True, token=p.token(NS, "catalog"))
                key = got[names.SDS_DEFAULT].tls_certificate.private_key.inline_bytes
        text = repr(logs)
        assert "PRIVATE KEY" not in text
        body = b"".join(key.split(b"\n")[1:-2]).decode()
        assert body[:40] not in text
        cert_issued = next(e for e in logs if e["event"] == "cert issued" and "identity" in e and "spiffe" in e["identity"])
        assert set(cert_issued) >= {"identity", "serial", "not_after"}

    run(main())


def test_failed_renewal_keeps_serving_the_valid_certificate(tmp_path: Path):
    async def main():
        async with Plane(tmp_path, ttl=timedelta(hours=24)) as p:
            first = await p.secrets.certificate(CATALOG)
            p.clock.advance(timedelta(hours=13))

            def broken(*a, **kw):
                raise RuntimeError("CA unavailable")

            p.secrets._ca = type("BrokenCA", (), {"issue_workload": staticmethod(broken)})()
            assert (await p.secrets.certificate(CATALOG)).serial == first.serial
            p.clock.advance(timedelta(hours=12))  # now expired: no fallback
            try:
                await p.secrets.certificate(CATALOG)
            except RuntimeError:
                pass
            else:
                raise AssertionError("an expired certificate must not be served")

    run(main())
