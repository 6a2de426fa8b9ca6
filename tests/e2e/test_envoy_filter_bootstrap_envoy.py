"""EnvoyFilter applyTo BOOTSTRAP with real Envoy (issue 21): meshd serving, two proxies
bootstrapped by `meshd bootstrap --fetch-envoy-filters` (routers), one selected by a BOOTSTRAP MERGE
(a runtime layer and a stats tag), one not.

- the selected proxy, bootstrapped over the secure port (TLS, its token), runs with the
  patch: the runtime key in Envoy's /runtime, the stats tag and meshd's own runtime layer
  in its config dump's bootstrap, and it connects to meshd as usual;
- the other proxy, bootstrapped over the plaintext port, has neither;
- a BOOTSTRAP EnvoyFilter changed while both run is reported by meshd for the proxy it
  selects only (/debug/configz `bootstrapPatches`, the log event): it applies at the next
  start, and a proxy bootstrapped again gets the new value.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.support.envoy import envoy
from tests.support.harness import http_get, meshd, meshd_cli, wait_for, write

pytestmark = pytest.mark.e2e

NS = "istioinaction"
KEY = "meshd.e2e.bootstrap_patch"


def envoy_filter(value: int) -> str:
    return f"""
apiVersion: networking.istio.io/v1alpha3
kind: EnvoyFilter
metadata: {{name: bootstrap-runtime, namespace: {NS}}}
spec:
  workloadSelector: {{labels: {{app: webapp}}}}
  configPatches:
  - applyTo: BOOTSTRAP
    patch:
      operation: MERGE
      value:
        layered_runtime:
          layers:
          - name: envoyfilter-layer
            static_layer: {{{KEY}: {value}}}
        stats_config:
          stats_tags:
          - tag_name: meshd_tenant
            regex: '^tenant\\.((.+?)\\.)'
"""


def runtime(e) -> dict:
    return json.loads(e.admin("/runtime"))["entries"]


def bootstrap_of(e) -> dict:
    dump = json.loads(e.admin("/config_dump"))["configs"]
    return next(c for c in dump if c["@type"].endswith("BootstrapConfigDump"))["bootstrap"]


def connected(e) -> bool:
    return e.stats("control_plane.connected_state").get("control_plane.connected_state") == 1


def configz(m) -> dict:
    status, body = http_get("127.0.0.1", m.monitoring_port, "/debug/configz")
    assert status == 200, body[:200]
    return json.loads(body)


def test_a_bootstrap_merge_reaches_the_selected_proxy_at_its_start(tmp_path: Path):
    config = tmp_path / "config"
    config.mkdir()
    write(config / "envoyfilter.yaml", envoy_filter(42))
    with meshd(config, tmp_path) as m:
        # Routers without Gateways: no listener binds a port, so both run side by side.
        webapp = ["--type", "router", "--namespace", NS, "--service-account", "webapp", "--pod", "webapp-0",
                  "--ip", "127.0.0.1", "--labels", "app=webapp", "--xds-address", f"127.0.0.1:{m.secure_port}",
                  "--ca-dir", str(m.ca_dir), "--fetch-envoy-filters"]
        catalog = ["--type", "router", "--namespace", NS, "--service-account", "catalog", "--pod", "catalog-0",
                   "--ip", "127.0.0.2", "--labels", "app=catalog", "--xds-address", f"127.0.0.1:{m.xds_port}",
                   "--fetch-envoy-filters"]
        with envoy(tmp_path, webapp) as selected, envoy(tmp_path, catalog) as other:
            assert runtime(selected)[KEY]["final_value"] == "42"
            boot = bootstrap_of(selected)
            assert [t["tag_name"] for t in boot["stats_config"]["stats_tags"]] == ["meshd_tenant"]
            assert [layer["name"] for layer in boot["layered_runtime"]["layers"]] == ["global config", "envoyfilter-layer"]
            # `meshd proxy-config bootstrap --envoy` shows the bootstrap Envoy runs (istioctl JSON): merged
            shown = meshd_cli("proxy-config", "bootstrap", "--envoy", f"http://127.0.0.1:{selected.admin_port}")
            assert json.loads(shown.stdout)["bootstrap"]["statsConfig"]["statsTags"][0]["tagName"] == "meshd_tenant"
            assert KEY not in runtime(other)
            assert "stats_tags" not in bootstrap_of(other).get("stats_config", {})
            for e in (selected, other):
                wait_for(lambda e=e: connected(e), 20, what=lambda: f"envoy connected\n{m.log()[-3000:]}")
            assert configz(m).get("bootstrapPatches") == []  # both started with the current patches

            # Changed while they run: reported for the selected proxy only, applied at its next start.
            write(config / "envoyfilter.yaml", envoy_filter(43))
            rows = wait_for(lambda: configz(m).get("bootstrapPatches") or None, 20,
                            what=lambda: f"bootstrapPatches in configz\n{m.log()[-3000:]}")
            assert [(r["proxy"], r["envoyFilters"]) for r in rows] == [
                ("router~127.0.0.1~webapp-0.istioinaction~istioinaction.svc.cluster.local",
                 [f"{NS}/bootstrap-runtime"])], rows
            # configz reads the state on request; the event is logged once the push is written
            wait_for(lambda: "bootstrap patches not applied" in m.log(), 20, what="the event logged")
            assert runtime(selected)[KEY]["final_value"] == "42"  # Envoy keeps its bootstrap
        with envoy(tmp_path, webapp) as restarted:
            assert runtime(restarted)[KEY]["final_value"] == "43"
            wait_for(lambda: connected(restarted), 20, what="restarted envoy connected")
            wait_for(lambda: configz(m).get("bootstrapPatches") == [], 20, what="no proxy left behind")
