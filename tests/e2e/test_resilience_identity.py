"""Impersonation end to end against a real meshd: a proxy gets its own identity's key and
nothing else, whatever it claims.

- node metadata, node id, namespace claims that differ from the token: refused;
- SDS names other than `default` that name another identity: nothing; `default` is always
  the caller's own identity;
- `kubernetes://` credentials of another namespace (plain or `ns/name`): never sent;
- tokens with the wrong audience, expired, or signed by another key: UNAUTHENTICATED;
- the plaintext port never carries a private key, whatever is asked;
- /debug/config_dump of a proxy holding its key shows no private key.
"""
from __future__ import annotations

import contextlib
import threading
import time
from datetime import timedelta
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from envoy.extensions.transport_sockets.tls.v3 import secret_pb2

from ca.keys import generate_private_key
from ca.tokens import TokenAuthority
from controlplane import names
from controlplane.security.cadir import open_tokens
from tests.support.ads import ads_fetch, secrets_of
from tests.support.harness import http_get, meshd, wait_for
from tests.support.pki import make_ca, make_cert, tls_secret_yaml

pytestmark = pytest.mark.e2e

NS = "istioinaction"
WEBAPP = "spiffe://cluster.local/ns/istioinaction/sa/webapp"
CATALOG = "spiffe://cluster.local/ns/istioinaction/sa/catalog"
WEBAPP_NODE = names.node_id("sidecar", "127.0.0.2", "webapp-0", NS)
WEBAPP_MD = {"NAMESPACE": NS, "SERVICE_ACCOUNT": "webapp"}


def _identity(secret: secret_pb2.Secret) -> list[str]:
    leaf = x509.load_pem_x509_certificates(secret.tls_certificate.certificate_chain.inline_bytes)[0]
    return leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
        x509.UniformResourceIdentifier)


@contextlib.contextmanager
def _held_stream(port: int, node_id: str, md: dict, names_: list[str], root: bytes, token: str):
    """A secure ADS stream asking for SDS `names_`, held open; yields the first response."""
    from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2

    req = discovery_pb2.DiscoveryRequest(type_url=names.SECRET, resource_names=names_)
    req.node.id = node_id
    req.node.metadata.update(md)
    channel = grpc.secure_channel(f"127.0.0.1:{port}", grpc.ssl_channel_credentials(root),
                                  options=[("grpc.ssl_target_name_override", "istiod.istio-system.svc")])
    done = threading.Event()

    def requests():
        yield req
        done.wait(30)

    call = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel).StreamAggregatedResources(
        requests(), metadata=[("authorization", f"Bearer {token}")], timeout=30)
    try:
        yield next(call)
    finally:
        done.set()
        call.cancel()
        channel.close()


def _config(tmp_path: Path) -> Path:
    d = tmp_path / "config"
    d.mkdir()
    ca = make_ca()
    # a gateway credential in istio-system: only istio-system proxies may ever get its key
    (d / "secret.yaml").write_text(tls_secret_yaml("gw-cred", "istio-system", make_cert(ca, ["gw.example.com"])))
    # and one in istioinaction, the caller's own namespace
    (d / "own.yaml").write_text(tls_secret_yaml("own-cred", NS, make_cert(ca, ["own.example.com"])))
    return d


def test_a_proxy_gets_only_its_own_identity(tmp_path: Path):
    with meshd(_config(tmp_path), tmp_path) as m:
        root = m.root_cert.read_bytes()
        webapp = m.token(NS, "webapp")

        def fetch(node=WEBAPP_NODE, md=WEBAPP_MD, want=("default",), token=webapp, port=None):
            return ads_fetch(port or m.secure_port, node, md, names.SECRET, list(want), root_pem=root, token=token)

        # claims that differ from the token: metadata, node id, namespace
        claims = {
            "metadata SA": (WEBAPP_NODE, {**WEBAPP_MD, "SERVICE_ACCOUNT": "catalog"}),
            "metadata NS": (WEBAPP_NODE, {**WEBAPP_MD, "NAMESPACE": "istio-system"}),
            "node id NS": (names.node_id("sidecar", "127.0.0.2", "webapp-0", "istio-system"),
                           {"SERVICE_ACCOUNT": "webapp"}),
            "node id and metadata": (names.node_id("sidecar", "127.0.0.3", "catalog-0", NS),
                                     {"NAMESPACE": NS, "SERVICE_ACCOUNT": "catalog"}),
            "router elsewhere": (names.node_id("router", "127.0.0.4", "gw-0", "istio-system"),
                                 {"NAMESPACE": "istio-system", "SERVICE_ACCOUNT": "webapp"}),
        }
        for what, (node, md) in claims.items():
            with pytest.raises(grpc.RpcError) as err:
                fetch(node, md, want=("default", "ROOTCA", "kubernetes://gw-cred"))
            assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED, what

        # SDS names: `default` is the caller's own identity; names of others give nothing
        got = secrets_of(fetch(want=("default", CATALOG, "spiffe://cluster.local/ns/istio-system/sa/istio-ingressgateway",
                                   "catalog", "default/catalog", "kubernetes://gw-cred",
                                   "kubernetes://istio-system/gw-cred", "kubernetes://own-cred")))
        assert _identity(got.pop("default")) == [WEBAPP]
        # only the credential of its own namespace
        assert set(got) == {"kubernetes://own-cred"}, set(got)
        assert b"PRIVATE KEY" in got["kubernetes://own-cred"].tls_certificate.private_key.inline_bytes

        # the positive control: an istio-system router with its own token gets gw-cred
        gw_node = names.node_id("router", "127.0.0.4", "gw-0", "istio-system")
        gw_md = {"NAMESPACE": "istio-system", "SERVICE_ACCOUNT": "istio-ingressgateway"}
        got = secrets_of(fetch(gw_node, gw_md, want=("kubernetes://gw-cred",),
                             token=m.token("istio-system", "istio-ingressgateway")))
        assert set(got) == {"kubernetes://gw-cred"}

        # bad tokens: wrong audience, expired, another signer, garbage
        tokens = open_tokens(m.ca_dir)
        stranger = TokenAuthority(generate_private_key("ec-p256"))
        expiring = tokens.issue(NS, "webapp", ttl=timedelta(seconds=1))
        bad = {
            "wrong audience": tokens.issue(NS, "webapp", audience=["kubernetes"]),
            "other signer": stranger.issue(NS, "webapp"),
            "garbage": "not-a-jwt",
            "empty": "",
        }
        time.sleep(2.1)
        bad["expired"] = expiring
        for what, token in bad.items():
            with pytest.raises(grpc.RpcError) as err:
                fetch(token=token)
            assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED, (what, err.value)
        assert m.process.alive()

        # the plaintext port never carries a private key, whatever is asked, token or not
        for token in (None, webapp):
            resp = ads_fetch(m.xds_port, WEBAPP_NODE, WEBAPP_MD, names.SECRET,
                             ["default", "ROOTCA", "kubernetes://own-cred", "kubernetes://gw-cred", CATALOG], token=token)
            assert set(secrets_of(resp)) <= {"ROOTCA"}
            assert b"PRIVATE KEY" not in resp.SerializeToString()

        # /debug/config_dump of a proxy holding its key: certificates, never the key
        with _held_stream(m.secure_port, WEBAPP_NODE, WEBAPP_MD, ["default", "kubernetes://own-cred"], root, webapp) as r:
            assert b"PRIVATE KEY" in r.SerializeToString()  # the proxy itself does get it
            status, body = wait_for(
                lambda: (x := http_get("127.0.0.1", m.monitoring_port, f"/debug/config_dump?proxyID={WEBAPP_NODE}"))
                and x[0] == 200 and x, 5, what="meshd's config_dump of the proxy")
            assert b"dynamic_active_secrets" in body or b"secrets" in body.lower()
            assert b"PRIVATE KEY" not in body and b"-----BEGIN EC" not in body
        for path in ("/debug/certs", "/debug/ca", "/debug/configz?content=1", "/metrics"):
            status, body = http_get("127.0.0.1", m.monitoring_port, path)
            assert b"PRIVATE KEY" not in body, path
        assert "PRIVATE KEY" not in m.log()
