"""The mesh over incremental xDS: sidecars and the gateway on the test bed bootstrapped
with `--xds-transport delta` (secure port, workload certificates over delta SDS) pass the
same traffic checks as over state of the world: auto mTLS between sidecars, PERMISSIVE
by default, STRICT refusing plaintext from outside the mesh while sidecars and the
gateway keep working.
"""
from __future__ import annotations

import pytest

from tests.testbed.fixtures import require_testbed
from tests.testbed.mesh import (
    CATALOG_PORT,
    CHAPTER9_PODS,
    GW_PORT,
    WEBAPP_PORT,
    Mesh,
    chapter9_layout,
    run_mesh,
    ssl_handshakes,
)

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def delta_mesh(tmp_path_factory):
    require_testbed()
    with run_mesh(tmp_path_factory.mktemp("delta-mesh"), CHAPTER9_PODS, chapter9_layout,
                  bootstrap_args=["--xds-transport", "delta"]) as m:
        yield m


def test_delta_sidecars_auto_mtls_and_strict(delta_mesh: Mesh):
    mesh = delta_mesh
    assert "delta=True" in mesh.cp.log()
    # PERMISSIVE by default; sidecar to sidecar is mTLS (auto mTLS)
    mesh.expect("sleep", mesh.url("catalog", CATALOG_PORT), 0, "200")
    before = ssl_handshakes(mesh.envoys["catalog"], "listener.0.0.0.0_15006")
    mesh.expect("webapp", mesh.vip("catalog"), 0, "200")
    assert ssl_handshakes(mesh.envoys["catalog"], "listener.0.0.0.0_15006") > before
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
