"""The operator's view end to end: meshd, a real Envoy gateway and a real Envoy sidecar.

- `meshd proxy-config cluster|listener|route|endpoint|secret` from meshd (`--meshd`, what
  was sent) and from the proxy's Envoy (`--envoy`, what it holds) agree row for row
  (Envoy's bootstrap-defined static resources aside, which meshd never sent);
- `meshd proxy-status` shows every type SYNCED, and `proxy-status <proxy>` finds no
  difference between meshd's config dump and Envoy's;
- a listener Envoy rejects (a test-only generator wrapper duplicates a filter chain, which
  Envoy refuses) shows as STALE with Envoy's message, and pilot_total_xds_rejects counts it.

meshd runs in this process (in a thread) so the test can wrap its generator; Envoy runs
as a real process from `meshd bootstrap`.
"""
from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from controlplane import app as meshd_app
from controlplane import names
from controlplane.generators import generator as generator_module
from tests.support.envoy import envoy
from tests.support.harness import free_port, http_backend, http_get, wait_for
from tests.support.operator_view import (
    HOST,
    SIDECAR_IP,
    BreakableGenerator,
    config,
    inprocess_meshd,
    quiet_get,
    run_cli,
    syncz,
    vs,
)

pytestmark = pytest.mark.e2e


def all_synced(mon: int, names_: list[str]) -> bool:
    proxies = {p["name"]: p for p in syncz(mon)["proxies"]}
    for n in names_:
        p = proxies.get(n)
        if p is None or not p["types"]:
            return False
        if any(t["status"] != "SYNCED" for t in p["types"]):
            return False
    return True


def envoy_table(admin_port: int, kind: str) -> str:
    """The same table from Envoy's own config dump, without what Envoy's bootstrap
    defined (static clusters, listeners, routes and their endpoints)."""
    from controlplane.debug.configdump import ConfigDump
    from controlplane.debug.configwriter import ClusterFilter, ConfigWriter, EndpointFilter, ListenerFilter, RouteFilter

    status, body = http_get("127.0.0.1", admin_port, "/config_dump?include_eds", timeout=5)
    assert status == 200
    doc = json.loads(body)
    static = set()
    for section in doc["configs"]:
        for key in ("static_clusters", "static_listeners", "static_route_configs"):
            section.pop(key, None)
        for ep in section.pop("static_endpoint_configs", []) or []:
            static.add(ep["endpoint_config"].get("cluster_name"))
    dump = ConfigDump.from_json(doc)
    out = io.StringIO()
    w = ConfigWriter(dump, out)
    {"cluster": lambda: w.print_cluster_summary(ClusterFilter()),
     "listener": lambda: w.print_listener_summary(ListenerFilter()),
     "route": lambda: w.print_route_summary(RouteFilter()),
     "endpoint": lambda: w.print_endpoints_summary(EndpointFilter()),
     "secret": w.print_secret_summary}[kind]()
    return out.getvalue()


def test_proxy_config_status_and_nack(tmp_path: Path, monkeypatch):
    monkeypatch.setattr(generator_module, "Generator", BreakableGenerator)  # the class the warm-up makes
    BreakableGenerator.broken.clear()
    gw_port, backend_port = free_port("127.0.0.1"), free_port("127.0.0.1")
    cfg = tmp_path / "config"
    cfg.mkdir()
    (cfg / "mesh.yaml").write_text(config(gw_port, backend_port))
    (cfg / "vs.yaml").write_text(vs("v1"))
    xds, secure, mon = free_port("127.0.0.1"), free_port("127.0.0.1"), free_port("127.0.0.1")
    ca_dir = tmp_path / "ca"
    opts = meshd_app.ServeOptions(
        config_dir=cfg, xds_port=xds, monitoring_port=mon, listen_address="127.0.0.1", poll_interval=0.1,
        debounce_after=0.05, ca_dir=ca_dir, secure_xds_port=secure,
    )
    meshd_url = f"http://127.0.0.1:{mon}"
    gw_name, sc_name = "istio-ingressgateway-0.istio-system", "catalog-0.istioinaction"

    with inprocess_meshd(opts), http_backend("127.0.0.1", backend_port, b"webapp"), \
            envoy(tmp_path, ["--type", "router", "--namespace", "istio-system", "--pod", "istio-ingressgateway-0",
                             "--ip", "127.0.0.1", "--labels", "istio=ingressgateway",
                             "--xds-address", f"127.0.0.1:{xds}"]) as gw, \
            envoy(tmp_path, ["--type", "sidecar", "--namespace", "istioinaction", "--pod", "catalog-0",
                             "--service-account", "catalog", "--ip", SIDECAR_IP,
                             "--labels", "app=catalog,security.istio.io/tlsMode=istio",
                             "--ca-dir", str(ca_dir), "--xds-address", f"127.0.0.1:{secure}"]) as sc:
        wait_for(lambda: http_get("127.0.0.1", gw_port, "/", {"Host": HOST})[0] == 200, 20, what="route via gateway")
        wait_for(lambda: all_synced(mon, [gw_name, sc_name]), 20, what="both proxies SYNCED")

        # proxy-config from meshd and from Envoy agree, row for row.
        for proxy, handle in ((gw_name, gw), (sc_name, sc)):
            for kind in ("cluster", "listener", "route", "endpoint", "secret"):
                code, from_meshd = run_cli("proxy-config", kind, proxy, "--meshd", meshd_url)
                assert code == 0, (proxy, kind)
                # (the plaintext gateway holds no secrets: both sides say so)
                assert from_meshd.count("\n") >= 2 or (proxy, kind) == (gw_name, "secret"), (proxy, kind, from_meshd)
                from_envoy_dump = envoy_table(handle.admin_port, kind)
                if kind == "secret":  # Envoy keeps secrets in no particular order
                    assert sorted(from_meshd.splitlines()) == sorted(from_envoy_dump.splitlines()), proxy
                else:
                    assert from_meshd == from_envoy_dump, (proxy, kind)
                code, from_envoy = run_cli("proxy-config", kind, "--envoy", f"http://127.0.0.1:{handle.admin_port}")
                assert code == 0
                for line in from_meshd.splitlines()[1:]:
                    first = line.split()[0]
                    assert first in from_envoy, (proxy, kind, first)
        # the node id works as well as pod.namespace
        gw_id = names.node_id("router", "127.0.0.1", "istio-ingressgateway-0", "istio-system")
        assert run_cli("proxy-config", "cluster", gw_id, "--meshd", meshd_url)[1] == \
            run_cli("proxy-config", "cluster", gw_name, "--meshd", meshd_url)[1]
        code, listeners = run_cli("proxy-config", "listener", gw_name, "--meshd", meshd_url)
        assert "0.0.0.0   " in listeners and str(gw_port) in listeners and f"Route: http.{gw_port}" in listeners
        code, secrets = run_cli("proxy-config", "secret", sc_name, "--meshd", meshd_url)
        assert "default" in secrets and "Cert Chain" in secrets and "ROOTCA" in secrets

        # proxy-status: every type SYNCED for both; no diff against Envoy.
        code, table = run_cli("proxy-status", "--meshd", meshd_url, "-v", "1")
        assert code == 0
        rows = {line.split()[0]: line for line in table.splitlines()[1:] if line.strip()}
        assert set(rows) >= {gw_name, sc_name}, table
        header = table.splitlines()[0].split()
        assert header[:2] == ["NAME", "CLUSTER"] and "CDS" in header and "LDS" in header
        for n in (gw_name, sc_name):
            assert "STALE" not in rows[n] and "SYNCED" in rows[n], table
        code, diff = run_cli("proxy-status", gw_name, "--meshd", meshd_url, "--envoy",
                             f"http://127.0.0.1:{gw.admin_port}")
        assert code == 0
        assert "Clusters Match" in diff and "Listeners Match" in diff and "Routes Match" in diff, diff

        # the debug pages answer
        for page in ("/debug", "/debug/adsz", "/debug/registryz", "/debug/endpointz", "/debug/configz",
                     "/debug/push_status", f"/debug/config_dump?proxyID={gw_name}"):
            status, body = quiet_get(mon, page)
            assert status == 200, (page, body[:200])
            json.loads(body)
        assert quiet_get(mon, "/debug/config_dump?proxyID=nobody.nowhere")[0] == 404

        # A listener Envoy rejects: STALE with Envoy's message, counted.
        BreakableGenerator.broken.set()
        (cfg / "vs.yaml").write_text(vs("v1").replace("[coolstore-gateway]", "[istioinaction/coolstore-gateway]"))

        def lds_nacked():
            for p in syncz(mon)["proxies"]:
                if p["name"] == gw_name:
                    lds = next(t for t in p["types"] if t["type"] == "LDS")
                    nack = lds["nack"]
                    return lds if nack and nack["nonce"] == lds["sentNonce"] and lds["status"] != "SYNCED" else None
            return None

        lds = wait_for(lds_nacked, 20, what="the gateway's LDS NACK")
        assert lds["nack"]["message"], lds
        code, table = run_cli("proxy-status", "--meshd", meshd_url, "-v", "1")
        gw_row = next(line for line in table.splitlines() if line.startswith(gw_name))
        assert "STALE" in gw_row, table
        assert f"{gw_name} LDS STALE: Envoy rejected" in table and lds["nack"]["message"].splitlines()[0] in table
        sc_row = next(line for line in table.splitlines() if line.startswith(sc_name))
        assert "STALE" not in sc_row
        metrics = quiet_get(mon, "/metrics")[1].decode()
        rejects = [l for l in metrics.splitlines() if l.startswith('pilot_total_xds_rejects{type="lds"}')]
        assert rejects and float(rejects[0].split()[-1]) >= 1, rejects
        assert "pilot_proxy_convergence_time_bucket" in metrics
        assert 'pilot_k8s_cfg_events{event="add",type="VirtualService"}' in metrics
        assert gw.rejected_counters().get("listener_manager.lds.update_rejected", 0) >= 1
        # Envoy still serves the last good listener
        assert http_get("127.0.0.1", gw_port, "/", {"Host": HOST})[0] == 200
