"""ServiceAccount tokens decide identity: a real `meshd serve --kubeconfig` process, its
secure xDS port (TLS), and the session's real API server answering TokenReviews for
tokens it signed (TokenRequest), through a recording proxy that counts them. A token the
API server says belongs to <ns>/webapp gets webapp's key and nothing else; tokens it does
not vouch for (forged, for another audience) get no stream at all. (A person's token, which
the real server here cannot issue, is refused in tests/unit/test_tokenreview.py.)"""
from __future__ import annotations

from pathlib import Path

import grpc
import pytest
from cryptography import x509

from controlplane import names
from tests.support.ads import ads_fetch, secrets_of
from tests.support.harness import meshd
from tests.support.kube import RecordingProxy

pytestmark = pytest.mark.e2e



def _uri_sans(pem: bytes) -> list[str]:
    leaf = x509.load_pem_x509_certificates(pem)[0]
    return leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
        x509.UniformResourceIdentifier)


def test_token_review_decides_identity(kube, tmp_path: Path):
    system, ns = kube.ns("istio-system"), kube.ns("istioinaction")
    webapp_uri = f"spiffe://cluster.local/ns/{ns}/sa/webapp"
    webapp_token = kube.token(ns, "webapp")  # opaque to meshd: only the API server can tell
    other_audience = kube.token(ns, "webapp", audiences=("https://kubernetes.default.svc.cluster.local",))
    with RecordingProxy(kube.cluster) as api:
        cfg = api.kubeconfig(tmp_path / "kubeconfig")
        with meshd(None, tmp_path, extra=["--kubeconfig", str(cfg), "--no-leader-elect",
                                          "--leader-election-namespace", system, "--root-namespace", system]) as m:
            root = m.root_cert.read_bytes()
            webapp = names.node_id("sidecar", "10.0.0.2", "webapp-0", ns)
            webapp_md = {"NAMESPACE": ns, "SERVICE_ACCOUNT": "webapp"}

            # the reviewed token: webapp's certificate and key, for webapp's identity only
            resp = ads_fetch(m.secure_port, webapp, webapp_md, names.SECRET, ["default", "ROOTCA"],
                             root_pem=root, token=webapp_token)
            got = secrets_of(resp)
            assert set(got) == {"default", "ROOTCA"}
            assert _uri_sans(got["default"].tls_certificate.certificate_chain.inline_bytes) == [webapp_uri]
            assert got["default"].tls_certificate.private_key.inline_bytes.startswith(b"-----BEGIN")
            reviews = api.writes("tokenreviews", "POST")
            assert len(reviews) == 1 and reviews[0].status == 201

            # ...and nothing else: the same token on a node claiming catalog is refused
            catalog = names.node_id("sidecar", "10.0.0.3", "catalog-0", ns)
            with pytest.raises(grpc.RpcError) as err:
                ads_fetch(m.secure_port, catalog, {"NAMESPACE": ns, "SERVICE_ACCOUNT": "catalog"}, names.SECRET,
                          ["default"], root_pem=root, token=webapp_token)
            assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
            # nor in another namespace with the same service account name
            with pytest.raises(grpc.RpcError) as err:
                ads_fetch(m.secure_port, names.node_id("sidecar", "10.0.0.4", "webapp-0", "default"),
                          {"NAMESPACE": "default", "SERVICE_ACCOUNT": "webapp"}, names.SECRET, ["default"],
                          root_pem=root, token=webapp_token)
            assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED

            # tokens the API server does not vouch for (unknown, wrong audience)
            for token in ("forged-token", other_audience):
                with pytest.raises(grpc.RpcError) as err:
                    ads_fetch(m.secure_port, webapp, webapp_md, names.SECRET, ["default"], root_pem=root, token=token)
                assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED, token[:20]
                assert "token" in err.value.details()

            # meshd's own tokens still work next to the cluster's, and never reach the API server
            reviews_before = len(api.writes("tokenreviews", "POST"))
            resp = ads_fetch(m.secure_port, webapp, webapp_md, names.SECRET, ["default"], root_pem=root,
                             token=m.token(ns, "webapp"))
            assert _uri_sans(secrets_of(resp)["default"].tls_certificate.certificate_chain.inline_bytes) == [webapp_uri]
            assert len(api.writes("tokenreviews", "POST")) == reviews_before

            log = m.log()
            assert "ads auth denied" in log and "ads auth failed" in log
            # the only workload identity meshd issued for is webapp's
            issued = {line.split(" identity=")[1].split()[0] for line in log.splitlines()
                      if "cert issued" in line and " identity=spiffe://" in line}
            assert issued == {webapp_uri}, issued
            assert webapp_token not in log and "forged-token" not in log  # credentials never logged
