"""The mesh, end to end: sidecars with Istio's interception, workload certificates over
SDS, PeerAuthentication and auto mTLS, in the "Istio in Action" chapter 9 layout:
`webapp` and `catalog` in `istioinaction` with sidecars, `sleep` in `default` without
one, the ingress gateway in `istio-system`. Policies change live; no proxy restarts.

Each pod is a network namespace of the test bed (tests/testbed) with istio-init's
iptables rules; every Envoy is a real one started from `meshd bootstrap`.
"""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from tests.harness import REPO, free_port, meshd
from tests.testbed.bed import TestBed, wait_for
from tests.testbed.fixtures import require_testbed

pytestmark = pytest.mark.e2e

NS = "istioinaction"
WEBAPP_PORT, CATALOG_PORT, CATALOG_ADMIN_PORT, LEGACY_PORT = 8080, 3000, 3001, 9000
GW_PORT = 8080  # the gateway's listener (Gateway port 80 -> Service targetPort 8080)


def _bootstrap(path: Path, kind: str, namespace: str, sa: str, pod, labels: str, ca_dir: Path) -> Path:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    subprocess.run(
        [sys.executable, "-m", "controlplane", "bootstrap", "--type", kind, "--namespace", namespace,
         "--service-account", sa, "--pod", f"{pod.name}-0", "--ip", pod.ip, "--labels", labels,
         "--xds-address", "127.0.0.1:15012", "--admin-port", "15000", "--ca-dir", str(ca_dir),
         "--output", str(path)],
        check=True, env=env,
    )
    return path


def services_yaml(bed_pods: dict, vips: dict) -> str:
    """Kubernetes objects for the bed's pods, as the API server would hold them."""
    web, cat, sleep, legacy, gw = (bed_pods[n] for n in ("webapp", "catalog", "sleep", "legacy", "gateway"))
    return textwrap.dedent(f"""
        apiVersion: v1
        kind: Service
        metadata: {{name: webapp, namespace: {NS}}}
        spec:
          clusterIP: {vips['webapp']}
          selector: {{app: webapp}}
          ports: [{{name: http, port: 80, targetPort: {WEBAPP_PORT}}}]
        ---
        apiVersion: v1
        kind: Service
        metadata: {{name: catalog, namespace: {NS}}}
        spec:
          clusterIP: {vips['catalog']}
          selector: {{app: catalog}}
          ports:
          - {{name: http, port: 80, targetPort: {CATALOG_PORT}}}
          - {{name: http-admin, port: 81, targetPort: {CATALOG_ADMIN_PORT}}}
        ---
        apiVersion: v1
        kind: Service
        metadata: {{name: legacy, namespace: {NS}}}
        spec:
          clusterIP: {vips['legacy']}
          selector: {{app: legacy}}
          ports: [{{name: http, port: 80, targetPort: {LEGACY_PORT}}}]
        ---
        apiVersion: v1
        kind: Pod
        metadata:
          name: webapp-0
          namespace: {NS}
          labels: {{app: webapp, security.istio.io/tlsMode: istio}}
        spec: {{serviceAccountName: webapp, containers: [{{name: webapp}}]}}
        status: {{podIP: {web.ip}}}
        ---
        apiVersion: v1
        kind: Pod
        metadata:
          name: catalog-0
          namespace: {NS}
          labels: {{app: catalog, security.istio.io/tlsMode: istio}}
        spec: {{serviceAccountName: catalog, containers: [{{name: catalog}}]}}
        status: {{podIP: {cat.ip}}}
        ---
        apiVersion: v1
        kind: Pod
        metadata: {{name: legacy-0, namespace: {NS}, labels: {{app: legacy}}}}
        spec: {{serviceAccountName: legacy, containers: [{{name: legacy}}]}}
        status: {{podIP: {legacy.ip}}}
        ---
        apiVersion: v1
        kind: Pod
        metadata: {{name: sleep-0, namespace: default, labels: {{app: sleep}}}}
        spec: {{containers: [{{name: sleep}}]}}
        status: {{podIP: {sleep.ip}}}
        ---
        apiVersion: v1
        kind: Service
        metadata: {{name: istio-ingressgateway, namespace: istio-system}}
        spec:
          selector: {{istio: ingressgateway}}
          ports: [{{name: http2, port: 80, targetPort: {GW_PORT}}}]
        ---
        apiVersion: v1
        kind: Pod
        metadata:
          name: gateway-0
          namespace: istio-system
          labels: {{istio: ingressgateway, app: istio-ingressgateway}}
        spec: {{serviceAccountName: istio-ingressgateway-service-account, containers: [{{name: istio-proxy}}]}}
        status: {{podIP: {gw.ip}}}
        ---
        apiVersion: networking.istio.io/v1
        kind: Gateway
        metadata: {{name: coolstore-gateway, namespace: {NS}}}
        spec:
          selector: {{istio: ingressgateway}}
          servers:
          - port: {{number: 80, name: http, protocol: HTTP}}
            hosts: ["webapp.istioinaction.io"]
        ---
        apiVersion: networking.istio.io/v1
        kind: VirtualService
        metadata: {{name: webapp-vs-from-gw, namespace: {NS}}}
        spec:
          hosts: ["webapp.istioinaction.io"]
          gateways: [coolstore-gateway]
          http:
          - route:
            - destination: {{host: webapp, port: {{number: 80}}}}
        """)


class Mesh:
    """The running layout, with helpers that poll until an expected outcome holds
    (pushes are asynchronous) and then assert it with curl's exit code and status."""

    def __init__(self, bed: TestBed, config_dir: Path, pods: dict, vips: dict, envoys: dict, cp):
        self.bed, self.config_dir, self.pods, self.vips, self.envoys, self.cp = bed, config_dir, pods, vips, envoys, cp

    def apply(self, name: str, text: str | None) -> None:
        path = self.config_dir / f"{name}.yaml"
        if text is None:
            path.unlink(missing_ok=True)
            return
        tmp = path.with_suffix(".tmp")
        tmp.write_text(textwrap.dedent(text))
        tmp.replace(path)

    def curl(self, client: str, url: str, headers: dict | None = None) -> tuple[int, str, str]:
        args = ["-o", "/dev/null", "-w", "%{http_code}"]
        for k, v in (headers or {}).items():
            args += ["-H", f"{k}: {v}"]
        cp = self.pods[client].curl(url, *args, timeout=5)
        return cp.returncode, cp.stdout.strip(), cp.stderr.strip()

    def expect(self, client: str, url: str, exit_code: int, http_code: str, headers: dict | None = None,
               timeout: float = 10.0, stderr_part: str = "") -> None:
        last: tuple = ()

        def ok():
            nonlocal last
            last = self.curl(client, url, headers)
            return last[0] == exit_code and last[1] == http_code and stderr_part in last[2]

        try:
            wait_for(ok, timeout, interval=0.2, what=f"{client} -> {url}: exit {exit_code}, http {http_code}")
        except AssertionError:
            raise AssertionError(f"{client} -> {url}: want exit {exit_code} http {http_code}, got {last}\n"
                                 f"meshd log tail:\n{self.cp.log()[-3000:]}") from None
        # and it stays that way (not a flap during a push)
        got = self.curl(client, url, headers)
        assert got[:2] == (exit_code, http_code), f"{client} -> {url}: {got}"

    def url(self, pod: str, port: int, path: str = "/") -> str:
        return f"http://{self.pods[pod].ip}:{port}{path}"

    def vip(self, svc: str, port: int = 80, path: str = "/") -> str:
        return f"http://{self.vips[svc]}:{port}{path}"


@pytest.fixture(scope="module")
def mesh(tmp_path_factory):
    require_testbed()
    work = tmp_path_factory.mktemp("mesh")
    config_dir, ca_dir = work / "config", work / "ca"
    config_dir.mkdir()
    with TestBed() as bed:
        pods = {
            "webapp": bed.add_pod("webapp", sidecar=True),
            "catalog": bed.add_pod("catalog", sidecar=True),
            "sleep": bed.add_pod("sleep"),
            "legacy": bed.add_pod("legacy"),
            "gateway": bed.add_pod("gateway"),
        }
        vips = {name: bed.service_ip() for name in ("webapp", "catalog", "legacy")}
        (config_dir / "layout.yaml").write_text(services_yaml(pods, vips))
        pods["webapp"].run_echo(http=[WEBAPP_PORT])
        pods["catalog"].run_echo(http=[CATALOG_PORT, CATALOG_ADMIN_PORT])
        pods["legacy"].run_echo(http=[LEGACY_PORT])
        secure = free_port("127.0.0.1")
        with meshd(config_dir, work, extra=["--ca-dir", str(ca_dir), "--secure-xds-port", str(secure)]) as cp:
            envoys = {}
            specs = {
                "webapp": ("sidecar", NS, "webapp", "app=webapp,security.istio.io/tlsMode=istio"),
                "catalog": ("sidecar", NS, "catalog", "app=catalog,security.istio.io/tlsMode=istio"),
                "gateway": ("router", "istio-system", "istio-ingressgateway-service-account",
                            "istio=ingressgateway,app=istio-ingressgateway"),
            }
            for name, (kind, ns, sa, labels) in specs.items():
                pod = pods[name]
                pod.forward_to_host(secure, pod_port=15012)
                boot = _bootstrap(work / f"{name}-bootstrap.yaml", kind, ns, sa, pod, labels, ca_dir)
                envoys[name] = pod.start_envoy(boot, admin_port=15000)
            for name, e in envoys.items():
                wait_for(e.ready, 30, what=f"{name} envoy ready")
            m = Mesh(bed, config_dir, pods, vips, envoys, cp)
            yield m
            # Envoy accepted everything meshd sent, across every scenario of the module.
            for name, e in envoys.items():
                bad = {k: v for k, v in e.stats("update_rejected").items() if v}
                assert bad == {}, f"{name} rejected config: {bad}"


def _ssl_handshakes(envoy, prefix: str) -> int:
    return sum(v for k, v in envoy.stats("ssl.handshake").items() if k.startswith(prefix))


def test_no_policy_permissive_and_auto_mtls(mesh: Mesh):
    # a client without a sidecar gets 200 from meshed workloads (PERMISSIVE by default)
    mesh.expect("sleep", mesh.url("catalog", CATALOG_PORT), 0, "200")
    mesh.expect("sleep", mesh.url("webapp", WEBAPP_PORT), 0, "200")
    # sidecar to sidecar is mTLS anyway (auto mTLS): the catalog's inbound TLS handshakes grow
    before = _ssl_handshakes(mesh.envoys["catalog"], "listener.0.0.0.0_15006")
    mesh.expect("webapp", mesh.vip("catalog"), 0, "200")
    assert _ssl_handshakes(mesh.envoys["catalog"], "listener.0.0.0.0_15006") > before
    # a workload without a sidecar is reached in plaintext (auto mTLS sees no tlsMode label)
    mesh.expect("webapp", mesh.vip("legacy"), 0, "200")


def test_mesh_wide_strict(mesh: Mesh):
    mesh.apply("pa-mesh", f"""
        apiVersion: security.istio.io/v1
        kind: PeerAuthentication
        metadata: {{name: default, namespace: istio-system}}
        spec: {{mtls: {{mode: STRICT}}}}
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
