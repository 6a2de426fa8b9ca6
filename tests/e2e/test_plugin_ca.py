"""A plug-in CA (Istio's cacerts) with real Envoys (see tests/support/rotation.py).

(a) meshd started on a CA directory holding cacerts made by the test (an intermediate
    under a test root): workload certificates chain leaf -> intermediate -> root, Envoy
    holds that chain, `openssl verify -CAfile testroot.pem -untrusted chain.pem` accepts
    the leaf with only the test root trusted, ROOTCA is the test root, mTLS works.
(b) switching a running meshd from its self-signed root to a plug-in CA
    (`meshd ca rotate-root --cacerts DIR`) under a steady request stream: no request
    fails, and at the end every workload certificate chains to the plug-in root only.
"""
from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

from tests.support.harness import meshd, meshd_cli, wait_for
from tests.support.pki import make_cacerts
from tests.support.rotation import (
    config_dir,
    envoy_chain,
    envoy_roots,
    meshd_ca_view,
    mtls_pair,
    ports,
    spiffe,
    steady_traffic,
)

pytestmark = pytest.mark.e2e
PEM = serialization.Encoding.PEM


def _fp(cert: x509.Certificate) -> str:
    return cert.fingerprint(hashes.SHA256()).hex(":").upper()


def _openssl_verify(tmp_path: Path, root: x509.Certificate, chain: list[x509.Certificate], name: str):
    (tmp_path / f"{name}-root.pem").write_bytes(root.public_bytes(PEM))
    (tmp_path / f"{name}-leaf.pem").write_bytes(chain[0].public_bytes(PEM))
    (tmp_path / f"{name}-untrusted.pem").write_bytes(b"".join(c.public_bytes(PEM) for c in chain[1:-1]))
    return subprocess.run(["openssl", "verify", "-CAfile", str(tmp_path / f"{name}-root.pem"),
                           "-untrusted", str(tmp_path / f"{name}-untrusted.pem"), str(tmp_path / f"{name}-leaf.pem")],
                          capture_output=True, text=True)


def test_plugin_ca_serves_the_full_chain(tmp_path: Path):
    ca_dir = tmp_path / "ca"
    root, inter = make_cacerts(ca_dir)
    port, server_port = ports()
    with meshd(config_dir(tmp_path, port, server_port), tmp_path, extra=["--ca-dir", str(ca_dir)]) as m, \
            mtls_pair(m, tmp_path, port, server_port) as (server, client):
        assert "plug-in CA loaded" in m.log()
        for name, e in (("server", server), ("client", client)):
            chain = envoy_chain(e)
            assert [_fp(c) for c in chain[1:]] == [_fp(inter), _fp(root)], "leaf -> intermediate -> root"
            assert chain[0].issuer == inter.subject
            assert chain[0].extensions.get_extension_for_class(x509.SubjectAlternativeName).value \
                .get_values_for_type(x509.UniformResourceIdentifier) == [spiffe(name)]
            ok = _openssl_verify(tmp_path, root, chain, name)
            assert ok.returncode == 0 and "OK" in ok.stdout, ok
            assert [_fp(r) for r in envoy_roots(e)] == [_fp(root)], "the trust bundle is the given root"
        # without the intermediate the leaf does not verify: the chain is what makes it work
        lonely = subprocess.run(["openssl", "verify", "-CAfile", str(tmp_path / "server-root.pem"),
                                 str(tmp_path / "server-leaf.pem")], capture_output=True, text=True)
        assert lonely.returncode != 0
        # key files stay 0600 and never reach the log
        assert (ca_dir / "ca-key.pem").stat().st_mode & 0o077 == 0
        key_body = (ca_dir / "ca-key.pem").read_text().splitlines()[1]
        assert key_body not in m.log() and "PRIVATE KEY" not in m.log()
        view = meshd_ca_view(m)
        assert view["active"]["signer"] == "plug-in" and view["active"]["signer_fingerprint"] == _fp(inter)
        metrics = m.metrics()
        assert "citadel_server_cert_chain_expiry_seconds" in metrics
        assert "citadel_server_root_cert_expiry_seconds" in metrics


def test_switch_from_self_signed_to_plugin_ca_without_a_failed_request(tmp_path: Path):
    ca_dir, cacerts = tmp_path / "ca", tmp_path / "cacerts"
    root, inter = make_cacerts(cacerts, "Plugged")
    port, server_port = ports()
    extra = ["--ca-dir", str(ca_dir), "--workload-cert-ttl", "8s", "--ca-poll-interval", "0.5"]
    with meshd(config_dir(tmp_path, port, server_port), tmp_path, extra=extra) as m, \
            mtls_pair(m, tmp_path, port, server_port) as (server, client):
        self_signed = x509.load_pem_x509_certificate((ca_dir / "root-cert.pem").read_bytes())
        with steady_traffic(port) as traffic:
            time.sleep(1.0)
            out = json.loads(meshd_cli("ca", "rotate-root", "--ca-dir", str(ca_dir), "--cacerts", str(cacerts)).stdout)
            assert out["old"]["root_fingerprint"] == _fp(self_signed)
            assert out["new"]["signer"] == "plug-in" and out["new"]["root_fingerprint"] == _fp(root)

            def done() -> bool:
                if any([_fp(r) for r in envoy_roots(e)] != [_fp(root)] for e in (server, client)):
                    return False
                if [r["fingerprint_sha256"] for r in meshd_ca_view(m)["trust_bundle"]] != [_fp(root)]:
                    return False
                return all([_fp(c) for c in envoy_chain(e)[1:]] == [_fp(inter), _fp(root)] for e in (server, client))

            wait_for(done, 120, interval=0.3, what=lambda: f"the switch to the plug-in CA\n{m.log()[-4000:]}")
            time.sleep(1.0)
        assert traffic.failures == [], traffic.failures[:10]
        assert traffic.ok >= 100
        assert not (ca_dir / "root-key.pem").exists(), "the self-signed root key is retired with its root"
        for name, e in (("server", server), ("client", client)):
            ok = _openssl_verify(tmp_path, root, envoy_chain(e), f"switched-{name}")
            assert ok.returncode == 0, ok
