"""The mesh, end to end: sidecars with Istio's interception, workload certificates over
SDS, PeerAuthentication and auto mTLS, in the "Istio in Action" chapter 9 layout:
`webapp` and `catalog` in `istioinaction` with sidecars, `sleep` in `default` without
one, the ingress gateway in `istio-system`. Policies change live; no proxy restarts.

Each pod is a network namespace of the test bed (tests/testbed) with istio-init's
iptables rules; every Envoy is a real one started from `meshd bootstrap`.
"""
from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.testbed.fixtures import require_testbed
from tests.testbed.mesh import (
    CATALOG_ADMIN_PORT,
    CATALOG_PORT,
    CHAPTER9_PODS,
    GW_PORT,
    NS,
    WEBAPP_PORT,
    Mesh,
    chapter9_layout,
    run_mesh,
    ssl_handshakes,
)

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def mesh(tmp_path_factory):
    require_testbed()
    with run_mesh(tmp_path_factory.mktemp("mesh"), CHAPTER9_PODS, chapter9_layout) as m:
        yield m


def test_no_policy_permissive_and_auto_mtls(mesh: Mesh):
    # a client without a sidecar gets 200 from meshed workloads (PERMISSIVE by default)
    mesh.expect("sleep", mesh.url("catalog", CATALOG_PORT), 0, "200")
    mesh.expect("sleep", mesh.url("webapp", WEBAPP_PORT), 0, "200")
    # sidecar to sidecar is mTLS anyway (auto mTLS): the catalog's inbound TLS handshakes grow
    before = ssl_handshakes(mesh.envoys["catalog"], "listener.0.0.0.0_15006")
    mesh.expect("webapp", mesh.vip("catalog"), 0, "200")
    assert ssl_handshakes(mesh.envoys["catalog"], "listener.0.0.0.0_15006") > before
    # a workload without a sidecar is reached in plaintext (auto mTLS sees no tlsMode label)
    mesh.expect("webapp", mesh.vip("legacy"), 0, "200")


def test_mesh_wide_strict(mesh: Mesh):
    mesh.apply("pa-mesh", """
        apiVersion: security.istio.io/v1
        kind: PeerAuthentication
        metadata: {name: default, namespace: istio-system}
        spec: {mtls: {mode: STRICT}}
        """)
    try:
        # plaintext from outside the mesh: reset by peer, curl exit 56, http code 000
        mesh.expect("sleep", mesh.url("catalog", CATALOG_PORT), 56, "000", stderr_part="Connection reset by peer")
        mesh.expect("sleep", mesh.url("webapp", WEBAPP_PORT), 56, "000")
        # sidecar to sidecar and the ingress gateway keep working
        mesh.expect("webapp", mesh.vip("catalog"), 0, "200")
        gw = mesh.pods["gateway"].ip
        mesh.expect("sleep", f"http://{gw}:{GW_PORT}/api/catalog", 0, "200", headers={"Host": "webapp.istioinaction.io"})
    finally:
        mesh.apply("pa-mesh", None)
    mesh.expect("sleep", mesh.url("catalog", CATALOG_PORT), 0, "200")


def test_namespace_and_workload_policies_override_mesh(mesh: Mesh):
    mesh.apply("pa-mesh", """
        apiVersion: security.istio.io/v1
        kind: PeerAuthentication
        metadata: {name: default, namespace: istio-system}
        spec: {mtls: {mode: STRICT}}
        """)
    try:
        mesh.expect("sleep", mesh.url("catalog", CATALOG_PORT), 56, "000")
        # namespace PERMISSIVE overrides the mesh STRICT
        mesh.apply("pa-ns", f"""
            apiVersion: security.istio.io/v1beta1
            kind: PeerAuthentication
            metadata: {{name: default, namespace: {NS}}}
            spec: {{mtls: {{mode: PERMISSIVE}}}}
            """)
        mesh.expect("sleep", mesh.url("catalog", CATALOG_PORT), 0, "200")
        mesh.expect("sleep", mesh.url("webapp", WEBAPP_PORT), 0, "200")
        mesh.apply("pa-ns", None)
        # a selector policy opens only webapp; catalog in the same namespace stays STRICT
        mesh.apply("pa-webapp", f"""
            apiVersion: security.istio.io/v1
            kind: PeerAuthentication
            metadata: {{name: webapp, namespace: {NS}}}
            spec:
              selector: {{matchLabels: {{app: webapp}}}}
              mtls: {{mode: PERMISSIVE}}
            """)
        mesh.expect("sleep", mesh.url("webapp", WEBAPP_PORT), 0, "200")
        mesh.expect("sleep", mesh.url("catalog", CATALOG_PORT), 56, "000")
        mesh.expect("webapp", mesh.vip("catalog"), 0, "200")
    finally:
        for name in ("pa-mesh", "pa-ns", "pa-webapp"):
            mesh.apply(name, None)
    mesh.expect("sleep", mesh.url("catalog", CATALOG_PORT), 0, "200")


def test_port_level_unset_and_disable(mesh: Mesh):
    def catalog_policy(mode: str, port_modes: dict[int, str]) -> str:
        ports = "".join(f"\n    {p}: {{mode: {m}}}" for p, m in port_modes.items())
        return f"""
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {{name: catalog, namespace: {NS}}}
spec:
  selector: {{matchLabels: {{app: catalog}}}}
  mtls: {{mode: {mode}}}
  portLevelMtls:{ports}
"""

    try:
        # STRICT, but port 3001 PERMISSIVE
        mesh.apply("pa-catalog", catalog_policy("STRICT", {CATALOG_ADMIN_PORT: "PERMISSIVE"}))
        mesh.expect("sleep", mesh.url("catalog", CATALOG_ADMIN_PORT), 0, "200")
        mesh.expect("sleep", mesh.url("catalog", CATALOG_PORT), 56, "000")
        # UNSET inherits the workload's mode (STRICT)
        mesh.apply("pa-catalog", catalog_policy("STRICT", {CATALOG_ADMIN_PORT: "UNSET"}))
        mesh.expect("sleep", mesh.url("catalog", CATALOG_ADMIN_PORT), 56, "000")
        # PERMISSIVE workload with one STRICT port
        mesh.apply("pa-catalog", catalog_policy("PERMISSIVE", {CATALOG_ADMIN_PORT: "STRICT"}))
        mesh.expect("sleep", mesh.url("catalog", CATALOG_PORT), 0, "200")
        mesh.expect("sleep", mesh.url("catalog", CATALOG_ADMIN_PORT), 56, "000")
        # DISABLE: the server side speaks plaintext only; meshed clients follow (istiod's
        # auto mTLS honours the server's DISABLE) and still get 200
        mesh.apply("pa-mesh", """
            apiVersion: security.istio.io/v1
            kind: PeerAuthentication
            metadata: {name: default, namespace: istio-system}
            spec: {mtls: {mode: STRICT}}
            """)
        mesh.apply("pa-catalog", catalog_policy("DISABLE", {}).replace("  portLevelMtls:", ""))
        mesh.expect("sleep", mesh.url("catalog", CATALOG_PORT), 0, "200")
        mesh.expect("webapp", mesh.vip("catalog"), 0, "200")
    finally:
        mesh.apply("pa-catalog", None)
        mesh.apply("pa-mesh", None)
    mesh.expect("sleep", mesh.url("catalog", CATALOG_PORT), 0, "200")


def test_destination_rule_tls_modes(mesh: Mesh):
    try:
        # ISTIO_MUTUAL to a workload without a sidecar: the client sends mTLS and fails
        mesh.apply("dr-legacy", f"""
            apiVersion: networking.istio.io/v1
            kind: DestinationRule
            metadata: {{name: legacy, namespace: {NS}}}
            spec:
              host: legacy.{NS}.svc.cluster.local
              trafficPolicy: {{tls: {{mode: ISTIO_MUTUAL}}}}
            """)
        mesh.expect("webapp", mesh.vip("legacy"), 0, "503")
        mesh.apply("dr-legacy", None)
        mesh.expect("webapp", mesh.vip("legacy"), 0, "200")
        # DISABLE towards a STRICT server: the client sends plaintext and is refused
        mesh.apply("pa-mesh", """
            apiVersion: security.istio.io/v1
            kind: PeerAuthentication
            metadata: {name: default, namespace: istio-system}
            spec: {mtls: {mode: STRICT}}
            """)
        mesh.expect("webapp", mesh.vip("catalog"), 0, "200")
        mesh.apply("dr-catalog", f"""
            apiVersion: networking.istio.io/v1
            kind: DestinationRule
            metadata: {{name: catalog, namespace: {NS}}}
            spec:
              host: catalog
              trafficPolicy: {{tls: {{mode: DISABLE}}}}
            """)
        mesh.expect("webapp", mesh.vip("catalog"), 0, "503")
        # ISTIO_MUTUAL explicitly: back to 200
        mesh.apply("dr-catalog", f"""
            apiVersion: networking.istio.io/v1
            kind: DestinationRule
            metadata: {{name: catalog, namespace: {NS}}}
            spec:
              host: catalog
              trafficPolicy: {{tls: {{mode: ISTIO_MUTUAL}}}}
            """)
        mesh.expect("webapp", mesh.vip("catalog"), 0, "200")
    finally:
        for name in ("dr-legacy", "dr-catalog", "pa-mesh"):
            mesh.apply(name, None)


def test_presented_certificate_has_istio_profile(mesh: Mesh, tmp_path: Path):
    """openssl s_client from a meshed pod to catalog's inbound port: the leaf is the
    catalog identity with Istio's profile, and it verifies against the root."""
    ca_root = mesh.cp.process.argv[mesh.cp.process.argv.index("--ca-dir") + 1] + "/root-cert.pem"
    webapp = mesh.pods["webapp"]
    # the pod's own directory is readable by the proxy uid (pytest's tmp dirs are 0700)
    pod_root = webapp.dir / "root-cert.pem"
    pod_root.write_bytes(Path(ca_root).read_bytes())
    pod_root.chmod(0o644)
    # The client certificate for s_client: webapp's own, taken from its Envoy (uid 1337 traffic
    # is not redirected, so s_client as 1337 talks to catalog's 15006 via iptables directly).
    out = webapp.exec(
        ["openssl", "s_client", "-connect", f"{mesh.pods['catalog'].ip}:{CATALOG_PORT}", "-showcerts",
         "-CAfile", str(pod_root), "-alpn", "istio-http/1.1"],
        uid=1337, input="", timeout=15,
    ).stdout
    assert "BEGIN CERTIFICATE" in out, out
    leaf = out[out.index("-----BEGIN CERTIFICATE-----"): out.index("-----END CERTIFICATE-----") + 25]
    leaf_path = tmp_path / "leaf.pem"
    leaf_path.write_text(leaf + "\n")
    text = subprocess.run(["openssl", "x509", "-noout", "-text", "-in", str(leaf_path)], capture_output=True, text=True, check=True).stdout
    assert "URI:spiffe://cluster.local/ns/istioinaction/sa/catalog" in text
    assert "Issuer: O = cluster.local" in text
    assert "X509v3 Subject Alternative Name: critical" in text
    assert "X509v3 Key Usage: critical" in text and "Digital Signature, Key Encipherment" in text
    assert "TLS Web Server Authentication, TLS Web Client Authentication" in text
    assert "X509v3 Basic Constraints: critical" in text and "CA:FALSE" in text
    verify = subprocess.run(["openssl", "verify", "-CAfile", ca_root, str(leaf_path)], capture_output=True, text=True)
    assert verify.returncode == 0 and "OK" in verify.stdout, verify
