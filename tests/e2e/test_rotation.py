"""Certificate rotation under traffic, with real Envoys (see tests/support/rotation.py).

(a) Workload certificates with a 6 s lifetime renew at half-life, pushed over SDS with
    no request from Envoy: through at least three rotations of both Envoys, a steady
    request stream (each request a new mTLS handshake) never fails, and Envoy's /certs
    shows a new serial each time.
(b) Root rotation (`meshd ca rotate-root` on the running meshd's CA directory): the same
    stream never fails; ROOTCA holds both roots for a while; at the end every workload
    certificate chains to the new root only, and the old root is gone from the bundle
    Envoy holds, from meshd's, and from trust-bundle.pem.
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
from tests.support.rotation import (
    config_dir,
    envoy_chain,
    envoy_roots,
    leaf_serials,
    meshd_ca_view,
    mtls_pair,
    ports,
    spiffe,
    steady_traffic,
)

pytestmark = pytest.mark.e2e


def _fp(cert: x509.Certificate) -> str:
    return cert.fingerprint(hashes.SHA256()).hex(":").upper()


def _uri(cert: x509.Certificate) -> list[str]:
    return cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
        x509.UniformResourceIdentifier)


def test_workload_certificates_rotate_without_a_failed_request(tmp_path: Path):
    extra = ["--ca-dir", str(tmp_path / "ca"), "--workload-cert-ttl", "6s", "--ca-poll-interval", "0.5"]
    port, server_port = ports()
    with meshd(config_dir(tmp_path, port, server_port), tmp_path, extra=extra) as m, \
            mtls_pair(m, tmp_path, port, server_port) as (server, client):
        seen: dict[str, list[str]] = {"server": [], "client": []}

        def sample() -> bool:
            for name, e in (("server", server), ("client", client)):
                for serial in sorted(leaf_serials(e)):
                    if serial not in seen[name]:
                        seen[name].append(serial)
            return all(len(v) >= 4 for v in seen.values())  # the first + three rotations

        with steady_traffic(port) as traffic:
            wait_for(sample, 60, interval=0.2, what=lambda: f"three rotations on both Envoys (seen {seen})\n{m.log()[-3000:]}")
            time.sleep(0.5)
        assert traffic.failures == [], traffic.failures[:10]
        assert traffic.ok >= 100, traffic.ok
        # the serials Envoy showed are the ones meshd issued, one identity each
        log = m.log()
        issued = {line.split("serial=")[1].split()[0] for line in log.splitlines()
                  if "cert issued" in line and "serial=" in line}
        for name in seen:
            assert {int(s, 16) for s in seen[name]} <= {int(s, 16) for s in issued}, (name, seen[name])
        assert log.count("cert rotated") >= 6
        # pushed: Envoy never asked (its requests are ACKs); meshd logged SDS pushes
        assert "secret rotation" in log
        chain = envoy_chain(client)
        assert _uri(chain[0]) == [spiffe("client")]


def test_root_rotation_without_a_failed_request(tmp_path: Path):
    ca_dir = tmp_path / "ca"
    extra = ["--ca-dir", str(ca_dir), "--workload-cert-ttl", "8s", "--ca-poll-interval", "0.5"]
    port, server_port = ports()
    with meshd(config_dir(tmp_path, port, server_port), tmp_path, extra=extra) as m, \
            mtls_pair(m, tmp_path, port, server_port) as (server, client):
        old_root = x509.load_pem_x509_certificate((ca_dir / "root-cert.pem").read_bytes())
        assert [_fp(r) for r in envoy_roots(client)] == [_fp(old_root)]
        max_roots = 0

        with steady_traffic(port) as traffic:
            time.sleep(1.0)
            out = json.loads(meshd_cli("ca", "rotate-root", "--ca-dir", str(ca_dir)).stdout)
            assert out["old"]["root_fingerprint"] == _fp(old_root)
            new_fp = out["new"]["root_fingerprint"]
            assert new_fp != _fp(old_root)

            def done() -> bool:
                nonlocal max_roots
                roots = {n: [_fp(r) for r in envoy_roots(e)] for n, e in (("server", server), ("client", client))}
                max_roots = max(max_roots, *(len(v) for v in roots.values()))
                if any(v != [new_fp] for v in roots.values()):
                    return False
                view = meshd_ca_view(m)
                if [r["fingerprint_sha256"] for r in view["trust_bundle"]] != [new_fp]:
                    return False
                # every workload certificate Envoy holds now chains to the new root
                return all(_fp(envoy_chain(e)[-1]) == new_fp for e in (server, client))

            wait_for(done, 120, interval=0.3, what=lambda: f"the old root dropped everywhere\n{m.log()[-4000:]}")
            time.sleep(1.0)  # and traffic keeps flowing after the drop
        assert traffic.failures == [], traffic.failures[:10]
        assert traffic.ok >= 100, traffic.ok
        assert max_roots == 2, "ROOTCA should have carried both roots during the rotation"

        new_root_pem = (ca_dir / "root-cert.pem").read_bytes()
        assert _fp(x509.load_pem_x509_certificate(new_root_pem)) == new_fp
        assert (ca_dir / "trust-bundle.pem").read_bytes() == new_root_pem
        (tmp_path / "new-root.pem").write_bytes(new_root_pem)
        (tmp_path / "old-root.pem").write_bytes(old_root.public_bytes(serialization.Encoding.PEM))
        for name, e in (("server", server), ("client", client)):
            leaf = envoy_chain(e)[0]
            leaf_path = tmp_path / f"{name}-leaf.pem"
            leaf_path.write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
            ok = subprocess.run(["openssl", "verify", "-CAfile", str(tmp_path / "new-root.pem"), str(leaf_path)],
                                capture_output=True, text=True)
            assert ok.returncode == 0, ok
            old = subprocess.run(["openssl", "verify", "-CAfile", str(tmp_path / "old-root.pem"), str(leaf_path)],
                                 capture_output=True, text=True)
            assert old.returncode != 0, "a leaf after the rotation must not verify with the old root"
        log = m.log()
        for event in ("ca rotation started", "root added to trust bundle", "ca signer switched",
                      "root dropped from trust bundle", "previous signer retired"):
            assert event in log, event
        assert not list((ca_dir / "previous").glob("*")), "the old root's archive (and key) must be deleted"
