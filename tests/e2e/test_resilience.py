"""Resilience end to end, with a real Envoy gateway carrying a steady request stream:

- bad input (Istio's own invalid corpus and hand-made hostile files) dropped into the
  config directory of a running meshd never reaches Envoy: each is reported with file,
  object, field and reason, traffic keeps flowing, Envoy rejects nothing;
- meshd SIGKILLed or SIGTERMed and restarted on the same ports and CA: no request fails,
  Envoy reconnects and receives the same (content-derived) versions, so nothing changes.
"""
from __future__ import annotations

import json
import os
import re
import signal
import time
from pathlib import Path

import pytest
import yaml

from tests.support.envoy import envoy
from tests.support.harness import Process, Traffic, free_port, http_backend, http_get, meshd, wait_for, write
from tests.support.ingress import HOST, backends_yaml, gateway_yaml, one_subset, vs_yaml
from tests.support.paths import shared

pytestmark = pytest.mark.e2e

CORPUS = ("corpus", "istio", "pkg", "config", "validation", "testdata", "crds")
SERVED = {"destinationrule", "peerauth"}


def _setup(tmp_path: Path):
    cfg = tmp_path / "config"
    cfg.mkdir()
    gw_port, backend_port = free_port(), free_port("127.0.0.2")
    write(cfg / "gateway.yaml", gateway_yaml(gw_port))
    write(cfg / "backends.yaml", backends_yaml(backend_port))
    write(cfg / "virtualservice.yaml", vs_yaml(one_subset("v1")))
    return cfg, gw_port, backend_port


def _gateway_args(xds_port: int, transport: str = "sotw") -> list[str]:
    return ["--type", "router", "--namespace", "istio-system", "--pod", "istio-ingressgateway-0",
            "--ip", "127.0.0.1", "--labels", "istio=ingressgateway,app=istio-ingressgateway",
            "--xds-address", f"127.0.0.1:{xds_port}", "--xds-transport", transport]


def _events(log: str, name: str) -> list[dict]:
    out = []
    for line in log.splitlines():
        if line.startswith("{"):
            try:
                ev = json.loads(line)
            except ValueError:
                continue
            if ev.get("event") == name:
                out.append(ev)
    return out


def _hostile_documents() -> dict[str, bytes]:
    good_vs = vs_yaml(one_subset("v1"))
    bomb = "a: &a [x,x,x,x,x,x,x,x,x,x]\n" + "".join(
        f"{c}: &{c} [{','.join(['*' + p] * 10)}]\n" for p, c in zip("abcdefghi", "bcdefghij", strict=True))
    return {
        "huge.yaml": b"# " + b"x" * (9 * 1024 * 1024),
        "deep.yaml": (b"apiVersion: v1\nkind: Service\nmetadata: {name: deep}\nspec: " + b"[" * 5000 + b"]" * 5000),
        "deep-map.yaml": (b"apiVersion: v1\nkind: Service\nmetadata: {name: deep2}\nspec: " + b"{a: " * 3000 + b"1" + b"}" * 3000),
        "bomb.yaml": bomb.encode(),
        "junk.yaml": os.urandom(4096),
        "nul.yaml": b"apiVersion: v1\x00\x00\xff\xfe",
        "dupkeys.yaml": good_vs.replace("metadata:", "metadata: {name: dup}\nmetadata:").replace(
            "name: webapp-vs-from-gw", "name: dup-vs").encode(),
        "wrongtype.yaml": vs_yaml("    - destination: {host: webapp, port: {number: eighty}}").replace(
            "webapp-vs-from-gw", "wrongtype-vs").encode(),
        "wrongtype2.yaml": good_vs.replace(f'hosts: ["{HOST}"]', f'hosts: "{HOST}"').replace(
            "webapp-vs-from-gw", "wrongtype2-vs").encode(),
        # the same VirtualService as virtualservice.yaml, sending traffic elsewhere: a conflict
        "zz-conflict.yaml": vs_yaml(one_subset("v2")).encode(),
        "notutf8.yaml": "kind: Service\nmetadata: {name: caf\u00e9}\n".encode("latin-1"),
        "list.yaml": b"- 1\n- 2\n",
    }


def test_bad_input_never_reaches_envoy(tmp_path: Path):
    cfg, gw_port, backend_port = _setup(tmp_path)
    with http_backend("127.0.0.2", backend_port, b"webapp-v1"), http_backend("127.0.0.3", backend_port, b"webapp-v2"), \
            meshd(cfg, tmp_path, extra=["--log-format", "json"]) as cp, envoy(tmp_path, _gateway_args(cp.xds_port)) as gw:
        wait_for(lambda: http_get("127.0.0.1", gw_port, "/api/catalog", {"Host": HOST})[0] == 200, 15, what="first 200")
        versions = gw.xds_versions()
        expected_rejected: dict[str, str | None] = {}  # file -> field prefix (None: any)
        expected_unsupported: set[str] = set()
        with Traffic(gw_port, HOST, b"webapp-v1") as traffic:
            # Istio's own invalid corpus, one document per file
            for path in sorted(shared(*CORPUS).glob("*-invalid.yaml")):
                kind = path.name.removesuffix("-invalid.yaml")
                for i, doc in enumerate(d for d in yaml.safe_load_all(path.read_text()) if d):
                    err = doc.pop("_err", "")
                    name = f"corpus-{kind}-{i}.yaml"
                    write(cfg / name, yaml.safe_dump(doc))
                    if kind in SERVED:
                        m = re.match(r"^(spec[\w.\[\]]*)(:| in body)", err)
                        expected_rejected[name] = m.group(1) if m else "spec"  # else: some spec field
                    else:
                        expected_unsupported.add(name)
            for name, data in _hostile_documents().items():
                (cfg / name).write_bytes(data)
                expected_rejected[name] = None
            time.sleep(1.5)  # while meshd reads and reports all that, traffic keeps flowing

            def reported():
                log = cp.log()
                files = {Path(e["file"]).name for e in _events(log, "config rejected")}
                unsup = {Path(e["file"]).name for e in _events(log, "config unsupported")}
                unsup |= {Path(e["file"]).name for e in _events(log, "config rejected") if Path(e["file"]).name in expected_unsupported}
                return set(expected_rejected) <= files and expected_unsupported <= unsup

            wait_for(reported, 20, what="every bad file reported")
            time.sleep(0.5)
        assert cp.process.alive()
        rejections = _events(cp.log(), "config rejected")
        by_file: dict[str, list[dict]] = {}
        for ev in rejections:
            by_file.setdefault(Path(ev["file"]).name, []).append(ev)
        for name, field in expected_rejected.items():
            evs = by_file[name]
            for ev in evs:
                assert ev["reason"] and ev["message"], ev
            if field:  # Istio's expected field is named (or a parent of it)
                assert any(ev.get("object") and (ev.get("field") or "") and
                           (field.startswith(ev["field"]) or ev["field"].startswith(field)) for ev in evs), (field, evs)
        assert "conflict" in by_file["zz-conflict.yaml"][0]["reason"]
        assert by_file["wrongtype.yaml"][0]["object"] == "VirtualService istioinaction/wrongtype-vs"
        assert by_file["wrongtype.yaml"][0]["field"] == "spec.http[0].route[0].destination.port.number"
        assert traffic.failures == [], traffic.failures[:5]
        assert traffic.ok > 50
        assert "meshd_config_rejections_total" in cp.metrics()
        # Envoy still holds exactly the last good configuration and rejected nothing
        assert gw.xds_versions() == versions
        assert {k: v for k, v in gw.rejected_counters().items() if v} == {}
        assert gw.stats("control_plane.connected_state") == {"control_plane.connected_state": 1}

        # fixing a file brings its change in; the rest keeps being refused
        write(cfg / "zz-conflict.yaml", "# nothing here any more\n")
        (cfg / "virtualservice.yaml").write_text(vs_yaml(one_subset("v2")))
        wait_for(lambda: http_get("127.0.0.1", gw_port, "/api/catalog", {"Host": HOST})[1].startswith(b"webapp-v2"),
                 5, what="fix applied")
        assert {k: v for k, v in gw.rejected_counters().items() if v} == {}


@pytest.mark.parametrize("sig,transport", [(signal.SIGKILL, "sotw"), (signal.SIGTERM, "sotw"), (signal.SIGKILL, "delta")],
                         ids=["sigkill", "sigterm", "sigkill-delta"])
def test_restart_loses_nothing(tmp_path: Path, sig: int, transport: str):
    """Over delta xDS the reconnecting Envoy declares what it holds
    (`initial_resource_versions`), and the restarted meshd sends it no resource at all."""
    cfg, gw_port, backend_port = _setup(tmp_path)
    with http_backend("127.0.0.2", backend_port, b"webapp-v1"), \
            meshd(cfg, tmp_path, extra=["--log-format", "json"]) as cp, \
            envoy(tmp_path, _gateway_args(cp.xds_port, transport)) as gw:
        wait_for(lambda: http_get("127.0.0.1", gw_port, "/api/catalog", {"Host": HOST})[0] == 200, 15, what="first 200")
        wait_for(lambda: gw.stats("control_plane.connected_state") == {"control_plane.connected_state": 1}, 5)
        time.sleep(0.5)
        versions, changes = gw.xds_versions(), gw.config_changes()
        argv, first = cp.process.argv, cp.process
        second = None
        try:
            with Traffic(gw_port, HOST, b"webapp-v1") as traffic:
                time.sleep(0.5)
                t0 = time.monotonic()
                first.stop(sig)
                rc = first.proc.returncode
                if sig == signal.SIGTERM:
                    # graceful: streams closed, exit 0, quickly
                    assert rc == 0, first.log_path.read_text()[-2000:]
                    assert time.monotonic() - t0 < 8
                    assert "meshd stopping" in first.log_path.read_text()
                else:
                    assert rc == -signal.SIGKILL
                wait_for(lambda: gw.stats("control_plane.connected_state") == {"control_plane.connected_state": 0},
                         10, what="envoy notices the control plane is gone")
                time.sleep(1.0)  # envoy serves on without a control plane
                second = Process("meshd", argv, tmp_path / "meshd-restarted.log", env=cp.env)
                wait_for(lambda: cp.ready() or not second.alive(), 30, what="restarted meshd /ready")
                assert second.alive(), second.log()
                wait_for(lambda: gw.stats("control_plane.connected_state") == {"control_plane.connected_state": 1},
                         30, what="envoy reconnects")
                if transport == "delta":
                    wait_for(lambda: _events(second.log(), "ads connect"), 10, interval=0.2,
                             what="the gateway's delta stream on the restarted meshd")
                else:
                    wait_for(lambda: "ads" in second.log() and "PUSH" in second.log() or _events(second.log(), "ads push"),
                             10, interval=0.2, what="restarted meshd serves the gateway")
                time.sleep(1.5)
            if transport == "delta":
                assert all(e.get("delta") for e in _events(second.log(), "ads connect"))
                resent = [line for line in second.log().splitlines() if '"delta": true' in line and "PUSH" in line
                          and '"resources": 0' not in line]
                assert resent == [], resent[:3]
            assert traffic.failures == [], traffic.failures[:5]
            assert traffic.ok > 100
            # content-derived versions: the same versions again, and Envoy changed nothing
            assert gw.xds_versions() == versions
            assert gw.config_changes() == changes
            assert {k: v for k, v in gw.rejected_counters().items() if v} == {}
        finally:
            if second is not None:
                second.stop()
