"""The mesh over incremental xDS: sidecars and the gateway on the test bed bootstrapped
with `--xds-transport delta` (secure port, workload certificates over delta SDS) pass the
same traffic checks as over state of the world: auto mTLS between sidecars, PERMISSIVE
by default, STRICT refusing plaintext from outside the mesh while sidecars and the
gateway keep working.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.e2e.test_mesh_mtls import CATALOG_PORT, GW_PORT, NS, WEBAPP_PORT, Mesh, _ssl_handshakes, services_yaml
from tests.support.harness import free_port, meshd
from tests.support.paths import REPO
from tests.testbed.bed import TestBed, wait_for
from tests.testbed.fixtures import require_testbed

pytestmark = pytest.mark.e2e


def _bootstrap(path: Path, kind: str, namespace: str, sa: str, pod, labels: str, ca_dir: Path) -> Path:
    subprocess.run(
        [sys.executable, "-m", "controlplane", "bootstrap", "--type", kind, "--namespace", namespace,
         "--service-account", sa, "--pod", f"{pod.name}-0", "--ip", pod.ip, "--labels", labels,
         "--xds-address", "127.0.0.1:15012", "--admin-port", "15000", "--ca-dir", str(ca_dir),
         "--xds-transport", "delta", "--output", str(path)],
        check=True, env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    return path


@pytest.fixture(scope="module")
def delta_mesh(tmp_path_factory):
    require_testbed()
    work = tmp_path_factory.mktemp("delta-mesh")
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
        pods["catalog"].run_echo(http=[CATALOG_PORT, CATALOG_PORT + 1])
        pods["legacy"].run_echo(http=[9000])
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
            yield Mesh(bed, config_dir, pods, vips, envoys, cp)
            for name, e in envoys.items():
                bad = {k: v for k, v in e.stats("update_rejected").items() if v}
                assert bad == {}, f"{name} rejected config: {bad}"


def test_delta_sidecars_auto_mtls_and_strict(delta_mesh: Mesh):
    mesh = delta_mesh
    assert "delta=True" in mesh.cp.log()
    # PERMISSIVE by default; sidecar to sidecar is mTLS (auto mTLS)
    mesh.expect("sleep", mesh.url("catalog", CATALOG_PORT), 0, "200")
    before = _ssl_handshakes(mesh.envoys["catalog"], "listener.0.0.0.0_15006")
    mesh.expect("webapp", mesh.vip("catalog"), 0, "200")
    assert _ssl_handshakes(mesh.envoys["catalog"], "listener.0.0.0.0_15006") > before
    # mesh-wide STRICT: plaintext from outside is reset, the mesh keeps working
    mesh.apply("pa-mesh", """
        apiVersion: security.istio.io/v1
        kind: PeerAuthentication
        metadata: {name: default, namespace: istio-system}
        spec: {mtls: {mode: STRICT}}
        """)
    try:
        mesh.expect("sleep", mesh.url("catalog", CATALOG_PORT), 56, "000", stderr_part="Connection reset by peer")
        mesh.expect("webapp", mesh.vip("catalog"), 0, "200")
        gw = mesh.pods["gateway"].ip
        mesh.expect("sleep", f"http://{gw}:{GW_PORT}/api/catalog", 0, "200", headers={"Host": "webapp.istioinaction.io"})
    finally:
        mesh.apply("pa-mesh", None)
    mesh.expect("sleep", mesh.url("catalog", CATALOG_PORT), 0, "200")
    mesh.expect("sleep", mesh.url("webapp", WEBAPP_PORT), 0, "200")
