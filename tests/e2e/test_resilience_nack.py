"""NACK containment end to end: a real Envoy gateway rejects a listener (a test-only
generator wrapper duplicates a filter chain). meshd records the NACK (proxy-status /
syncz, `pilot_total_xds_rejects`, an `ads NACK` log event), does not send the rejected
listener again in a loop, Envoy keeps serving its last good listener, and a later good
change brings the proxy back to SYNCED.
"""
from __future__ import annotations

import time
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from controlplane import app as meshd_app
from controlplane.generators import generator as generator_module
from tests.support.envoy import envoy
from tests.support.harness import free_port, http_backend, http_get, wait_for
from tests.support.operator_view import HOST, BreakableGenerator, config, inprocess_meshd, run_cli, syncz, vs

pytestmark = pytest.mark.e2e

GW = "istio-ingressgateway-0.istio-system"


def _lds(mon: int) -> dict | None:
    for p in syncz(mon)["proxies"]:
        if p["name"] == GW:
            return next((t for t in p["types"] if t["type"] == "LDS"), None)
    return None


def _metric(mon: int, prefix: str) -> float:
    body = http_get("127.0.0.1", mon, "/metrics")[1].decode()
    return sum(float(l.split()[-1]) for l in body.splitlines() if l.startswith(prefix))


def test_nack_is_recorded_not_resent_and_recovered(tmp_path: Path, monkeypatch):
    monkeypatch.setattr(generator_module, "Generator", BreakableGenerator)  # the class the warm-up makes
    BreakableGenerator.broken.clear()
    gw_port, backend_port = free_port("127.0.0.1"), free_port("127.0.0.1")
    cfg = tmp_path / "config"
    cfg.mkdir()
    (cfg / "mesh.yaml").write_text(config(gw_port, backend_port))
    (cfg / "vs.yaml").write_text(vs("v1"))
    xds, mon = free_port("127.0.0.1"), free_port("127.0.0.1")
    opts = meshd_app.ServeOptions(
        config_dir=cfg, xds_port=xds, monitoring_port=mon, listen_address="127.0.0.1", poll_interval=0.1,
        debounce_after=0.05, ca_dir=tmp_path / "ca", secure_xds_port=0,
    )
    with capture_logs() as logs, inprocess_meshd(opts), http_backend("127.0.0.1", backend_port, b"webapp"), \
            envoy(tmp_path, ["--type", "router", "--namespace", "istio-system", "--pod", "istio-ingressgateway-0",
                             "--ip", "127.0.0.1", "--labels", "istio=ingressgateway",
                             "--xds-address", f"127.0.0.1:{xds}"]) as gw:
        wait_for(lambda: http_get("127.0.0.1", gw_port, "/", {"Host": HOST})[0] == 200, 20, what="route via gateway")
        wait_for(lambda: (l := _lds(mon)) and l["status"] == "SYNCED", 20, what="LDS SYNCED")
        good_success = gw.stats("listener_manager.lds.update_success")["listener_manager.lds.update_success"]

        # a change whose listener Envoy rejects
        BreakableGenerator.broken.set()
        (cfg / "vs.yaml").write_text(vs("v1").replace("[coolstore-gateway]", "[istioinaction/coolstore-gateway]"))
        lds = wait_for(lambda: (l := _lds(mon)) and l["nack"] and l["nack"]["nonce"] == l["sentNonce"] and l,
                       20, what="the gateway's LDS NACK")
        assert lds["status"] != "SYNCED" and lds["nack"]["message"]
        table = run_cli("proxy-status", "--meshd", f"http://127.0.0.1:{mon}", "-v", "1")[1]
        assert "STALE" in next(r for r in table.splitlines() if r.startswith(GW))
        assert _metric(mon, 'pilot_total_xds_rejects{type="lds"}') >= 1
        nacks = [e for e in logs if e["event"] == "ads NACK" and e["type"] == "LDS"]
        assert nacks and nacks[0]["error"], nacks

        # not resent in a loop: over 3 s of quiet, Envoy sees no further listener update
        # and meshd neither pushes LDS again nor receives another NACK
        rejected = gw.stats("listener_manager.lds.update_rejected")["listener_manager.lds.update_rejected"]
        assert rejected >= 1
        pushes = _metric(mon, 'pilot_xds_pushes{type="lds"}')
        n_nacks = len([e for e in logs if e["event"] == "ads NACK"])
        time.sleep(3)
        assert gw.stats("listener_manager.lds.update_rejected")["listener_manager.lds.update_rejected"] == rejected
        assert _metric(mon, 'pilot_xds_pushes{type="lds"}') == pushes
        assert len([e for e in logs if e["event"] == "ads NACK"]) == n_nacks
        # Envoy serves on with its last good listener
        assert http_get("127.0.0.1", gw_port, "/", {"Host": HOST})[0] == 200

        # a later good change to the listener's inputs (here: the operator reverts the
        # VirtualService) recovers the proxy
        BreakableGenerator.broken.clear()
        (cfg / "vs.yaml").write_text(vs("v1"))
        wait_for(lambda: (l := _lds(mon)) and l["status"] == "SYNCED", 20, what="LDS SYNCED again")
        wait_for(lambda: gw.stats("listener_manager.lds.update_success")["listener_manager.lds.update_success"]
                 > good_success, 10, what="Envoy accepts the next listener")
        assert gw.stats("listener_manager.lds.update_rejected")["listener_manager.lds.update_rejected"] == rejected
        code, table = run_cli("proxy-status", "--meshd", f"http://127.0.0.1:{mon}", "-v", "1")
        assert "STALE" not in next(r for r in table.splitlines() if r.startswith(GW)), table
        assert http_get("127.0.0.1", gw_port, "/", {"Host": HOST})[0] == 200
