"""ServiceAccount tokens decide identity: a real `meshd serve --kubeconfig` process, its
secure xDS port (TLS), and the stand-in API server answering TokenReviews as Kubernetes
does. A token the API server says belongs to istioinaction/webapp gets webapp's key and
nothing else; tokens it does not vouch for get no stream at all."""
from __future__ import annotations

from pathlib import Path

import grpc
import pytest
from cryptography import x509
from envoy.extensions.transport_sockets.tls.v3 import secret_pb2

from controlplane import names
from tests.support.ads import ads_fetch
from tests.support.harness import meshd
from tests.support.kubeapi import FakeApiServer

pytestmark = pytest.mark.e2e

NS = "istioinaction"
WEBAPP_SA = "system:serviceaccount:istioinaction:webapp"
WEBAPP_URI = "spiffe://cluster.local/ns/istioinaction/sa/webapp"
WEBAPP_TOKEN = "k8s-projected-token-for-webapp"  # opaque to meshd: only the API server can tell


def _secrets(resp) -> dict[str, secret_pb2.Secret]:
    out = {}
    for a in resp.resources:
        s = secret_pb2.Secret()
        a.Unpack(s)
        out[s.name] = s
    return out


def _uri_sans(pem: bytes) -> list[str]:
    leaf = x509.load_pem_x509_certificates(pem)[0]
    return leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
        x509.UniformResourceIdentifier)


def test_token_review_decides_identity(tmp_path: Path):
    with FakeApiServer() as api:
        api.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}})
        api.add_token(WEBAPP_TOKEN, WEBAPP_SA)
        api.add_token("token-for-another-audience", WEBAPP_SA, audiences=["https://kubernetes.default.svc"])
        api.add_token("token-of-a-user", "jane@example.com")
        cfg = api.kubeconfig(tmp_path / "kubeconfig")
        with meshd(None, tmp_path, extra=["--kubeconfig", str(cfg), "--no-leader-elect"]) as m:
            root = m.root_cert.read_bytes()
            webapp = names.node_id("sidecar", "10.0.0.2", "webapp-0", NS)
            webapp_md = {"NAMESPACE": NS, "SERVICE_ACCOUNT": "webapp"}

            # the reviewed token: webapp's certificate and key, for webapp's identity only
            resp = ads_fetch(m.secure_port, webapp, webapp_md, names.SECRET, ["default", "ROOTCA"],
                             root_pem=root, token=WEBAPP_TOKEN)
            got = _secrets(resp)
            assert set(got) == {"default", "ROOTCA"}
            assert _uri_sans(got["default"].tls_certificate.certificate_chain.inline_bytes) == [WEBAPP_URI]
            assert got["default"].tls_certificate.private_key.inline_bytes.startswith(b"-----BEGIN")
            reviews = api.writes("tokenreviews", "POST")
            assert len(reviews) == 1 and reviews[0].status == 201

            # ...and nothing else: the same token on a node claiming catalog is refused
            catalog = names.node_id("sidecar", "10.0.0.3", "catalog-0", NS)
            with pytest.raises(grpc.RpcError) as err:
                ads_fetch(m.secure_port, catalog, {"NAMESPACE": NS, "SERVICE_ACCOUNT": "catalog"}, names.SECRET,
                          ["default"], root_pem=root, token=WEBAPP_TOKEN)
            assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
            # nor in another namespace with the same service account name
            with pytest.raises(grpc.RpcError) as err:
                ads_fetch(m.secure_port, names.node_id("sidecar", "10.0.0.4", "webapp-0", "default"),
                          {"NAMESPACE": "default", "SERVICE_ACCOUNT": "webapp"}, names.SECRET, ["default"],
                          root_pem=root, token=WEBAPP_TOKEN)
            assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED

            # tokens the API server does not vouch for (unknown, wrong audience, a person's)
            for token in ("forged-token", "token-for-another-audience", "token-of-a-user"):
                with pytest.raises(grpc.RpcError) as err:
                    ads_fetch(m.secure_port, webapp, webapp_md, names.SECRET, ["default"], root_pem=root, token=token)
                assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED, token
                assert "token" in err.value.details()

            # meshd's own tokens still work next to the cluster's, and never reach the API server
            reviews_before = len(api.writes("tokenreviews", "POST"))
            resp = ads_fetch(m.secure_port, webapp, webapp_md, names.SECRET, ["default"], root_pem=root,
                             token=m.token(NS, "webapp"))
            assert _uri_sans(_secrets(resp)["default"].tls_certificate.certificate_chain.inline_bytes) == [WEBAPP_URI]
            assert len(api.writes("tokenreviews", "POST")) == reviews_before

            log = m.log()
            assert "ads auth denied" in log and "ads auth failed" in log
            # the only workload identity meshd issued for is webapp's
            issued = {line.split(" identity=")[1].split()[0] for line in log.splitlines()
                      if "cert issued" in line and " identity=spiffe://" in line}
            assert issued == {WEBAPP_URI}, issued
            assert WEBAPP_TOKEN not in log and "forged-token" not in log  # credentials never logged
