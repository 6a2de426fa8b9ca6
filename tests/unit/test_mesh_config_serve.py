"""`meshd serve --mesh-config FILE` as an operator runs it: a bad file stops meshd with
one line, a good one shows in /debug/configz (what is read, what is not) and changes
apply live; the JWT key sets of RequestAuthentications are fetched from a local server,
a failing jwksUri is reported (log, /debug/jwksz, metric) with the rule that uses it."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.support.harness import http_get, meshd, wait_for
from tests.support.jwt import Issuer, KeyServer
from tests.support.paths import REPO

pytestmark = pytest.mark.e2e  # meshd as a process

MESH = """
defaultConfig: {discoveryAddress: istiod.istio-system.svc:15012}
extensionProviders:
- name: ext-authz
  envoyExtAuthzHttp: {service: authz.foo.svc.cluster.local, port: 8000}
"""


def request_authn(uris: list[str]) -> str:
    rules = "".join(f"  - issuer: https://issuer-{i}.example\n    jwksUri: {u}\n" for i, u in enumerate(uris))
    return f"""apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {{name: jwt, namespace: shop}}
spec:
  jwtRules:
{rules}"""


def test_a_bad_mesh_config_file_stops_meshd_with_one_line(tmp_path):
    bad = tmp_path / "mesh.yaml"
    bad.write_text("extensionProviders:\n- envoyExtAuthzGrpc: {service: a, port: 1}\n")
    cp = subprocess.run([sys.executable, "-m", "controlplane", "serve", "--mesh-config", str(bad),
                         "--ca-dir", str(tmp_path / "ca")], capture_output=True, text=True, timeout=60, cwd=REPO)
    assert cp.returncode == 2
    assert cp.stderr.strip().splitlines() == [f"meshd: --mesh-config {bad}: extensionProviders[0].name: Required value"]


def test_mesh_config_and_key_sets_of_a_running_meshd(tmp_path):
    server = KeyServer()
    try:
        issuer = Issuer("https://issuer-0.example")
        server.routes["/good"] = (200, issuer.jwks())
        server.routes["/down"] = (500, "down")
        good, down = server.url + "/good", server.url + "/down"
        config = tmp_path / "config"
        config.mkdir()
        (config / "ra.yaml").write_text(request_authn([good, down]))
        mesh = tmp_path / "mesh.yaml"
        mesh.write_text(MESH)
        with meshd(config, tmp_path, extra=["--mesh-config", str(mesh)]) as m:
            def configz() -> dict:
                return json.loads(http_get("127.0.0.1", m.monitoring_port, "/debug/configz")[1])

            mc = configz()["meshConfig"]
            assert mc["source"] == f"file {mesh}" and mc["unread"] == ["defaultConfig.discoveryAddress"]
            assert [p["name"] for p in mc["extensionProviders"]] == ["ext-authz"]
            rows = {r["keySet"]: r for r in configz()["jwks"]["keySets"]}
            assert rows[good]["state"] == "ok" and rows[good]["keys"] == 1  # fetched before the first push
            assert rows[down]["state"] == "unavailable" and "HTTP 500" in rows[down]["lastError"]
            assert rows[down]["usedBy"] == ["shop/jwt spec.jwtRules[1]"]
            assert "refused" in rows[down]["effect"]
            jwksz = json.loads(http_get("127.0.0.1", m.monitoring_port, "/debug/jwksz")[1])
            assert {r["keySet"] for r in jwksz["keySets"]} == {good, down}
            assert f'meshd_jwks_fetch_failures_total{{uri="{down}"}}' in m.metrics()
            assert "jwks fetch failed" in m.log() and "shop/jwt spec.jwtRules[1]" in m.log()

            # Live: a new mesh config applies, a bad one is reported and the last good kept.
            mesh.write_text("extensionProviders: [{name: grpc, envoyExtAuthzGrpc: {service: g.foo.svc, port: 9000}}]\n")
            wait_for(lambda: [p["name"] for p in configz()["meshConfig"]["extensionProviders"]] == ["grpc"], 10,
                     what="the new mesh config in force")
            assert configz()["meshConfig"]["unread"] == []
            mesh.write_text("rootNamespace: [\n")
            wait_for(lambda: configz()["meshConfig"]["error"], 10, what="the bad mesh config reported")
            assert str(mesh) in configz()["meshConfig"]["error"]
            assert [p["name"] for p in configz()["meshConfig"]["extensionProviders"]] == ["grpc"]

            # A key set no longer used is dropped.
            (config / "ra.yaml").write_text(request_authn([good]))
            wait_for(lambda: [r["keySet"] for r in configz()["jwks"]["keySets"]] == [good], 10,
                     what="the unused key set dropped")
    finally:
        server.close()
