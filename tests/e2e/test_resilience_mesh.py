"""Restart loses nothing, in the mesh: sidecars with Istio's interception and an ingress
gateway on the netns test bed (tests/testbed), all connected to meshd's secure xDS port
with tokens (so the sidecars hold workload certificates from SDS), mesh-wide STRICT mTLS,
steady request streams through the sidecars and the gateway. meshd is SIGKILLed and
started again on the same ports and CA directory, then SIGTERMed and started again:

- no request fails (existing mTLS connections keep working, new ones handshake with the
  re-issued certificates);
- every Envoy notices the control plane is gone, reconnects (its retry backoff) and is
  sent the same content-derived versions: no listener, cluster or route is added,
  modified or removed, config_dump's versions are those of before;
- the workload certificate (SDS `default`) is the exception: meshd keeps workload keys
  only in memory, so a restarted meshd issues a new certificate and key per identity, and
  each sidecar takes the new secret in place (no listener or cluster change, no drain);
  ROOTCA is unchanged;
- SIGTERM ends each ADS stream at once with a gRPC status (UNAVAILABLE, "meshd shutting
  down; reconnect") and meshd exits well within its 2 s grace; after SIGKILL Envoy sees
  the connection reset under the stream (status 13, connection_termination). Envoy logs
  both at `config:debug` (the reset also as a warning); its xds-grpc cluster counts one
  connection closed under an active stream (the SIGKILL) and one new stream per restart.

Envoy retries with its default backoff (500 ms base, 30 s cap, full jitter), so the
reconnection after a restart takes a few seconds to ~15 s (the slowest of four Envoys).
"""
from __future__ import annotations

import json
import os
import re
import signal
import threading
import time
from pathlib import Path

import pytest

from tests.support.harness import Process, free_port, meshd
from tests.support.manifests import documents, peer_authentication, service
from tests.support.paths import REPO
from tests.testbed.bed import wait_for
from tests.testbed.mesh import (
    CATALOG_PORT,
    GATEWAY_HOST,
    GW_PORT,
    MESHED,
    NS,
    WEBAPP_PORT,
    PodSpec,
    bootstrap,
    gateway_to_webapp,
    pods_yaml,
)

pytestmark = pytest.mark.e2e

ADS = "cluster.xds-grpc.grpc.envoy.service.discovery.v3.AggregatedDiscoveryService.StreamAggregatedResources"


# name: the pod's place in the layout, its proxy and how meshd bootstrap labels it
PODS = {
    "sleep": PodSpec("default", "sidecar", "sleep", f"app=sleep,{MESHED}"),
    "webapp": PodSpec(NS, "sidecar", "webapp", f"app=webapp,{MESHED}"),
    "catalog": PodSpec(NS, "sidecar", "catalog", f"app=catalog,{MESHED}"),
    "gateway": PodSpec("istio-system", "router", "istio-ingressgateway-service-account",
                       "istio=ingressgateway,app=istio-ingressgateway"),
}


def layout(pods: dict, vips: dict) -> str:
    return documents(
        service("webapp", NS, [("http", 80, WEBAPP_PORT)], cluster_ip=vips["webapp"]),
        service("catalog", NS, [("http", 80, CATALOG_PORT)], cluster_ip=vips["catalog"]),
        *gateway_to_webapp(),
        peer_authentication("default", "istio-system", "STRICT")) + pods_yaml(PODS, pods)


def _bootstrap(path: Path, name: str, pod, ca_dir: Path) -> Path:
    spec = PODS[name]
    return bootstrap(path, spec.proxy, spec.namespace, spec.service_account, pod, spec.labels, ca_dir)


class Traffic:
    """GETs in a loop, one background thread per stream, each from inside a pod; every
    answer must be a 200 from the expected echo app."""

    def __init__(self, streams: dict[str, tuple]):
        self.streams = streams  # name -> (client pod, host, port, headers, expected echo pod)
        self.ok = {name: 0 for name in streams}
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(n,), daemon=True) for n in streams]

    def _run(self, name: str) -> None:
        pod, host, port, headers, expected = self.streams[name]
        while not self._stop.is_set():
            try:
                status, _, body = pod.http_get(host, port, "/", headers=headers, timeout=5)
                if status == 200 and json.loads(body)["pod"] == expected:
                    self.ok[name] += 1
                else:
                    self.failures.append(f"{time.strftime('%T')} {name}: {status} {body[:120]!r}")
            except (OSError, ValueError) as e:
                self.failures.append(f"{time.strftime('%T')} {name}: {e!r}")
            time.sleep(0.02)

    def __enter__(self):
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        for t in self._threads:
            t.join(10)


def versions(envoy) -> dict[str, str]:
    """Every version Envoy holds: per xDS type and per resource (secrets included)."""
    dump = json.loads(envoy.admin("/config_dump?include_eds"))
    out: dict[str, str] = {}
    for c in dump["configs"]:
        t = c["@type"].rsplit(".", 1)[-1]
        if "version_info" in c:
            out[t] = c["version_info"]
        for key in ("dynamic_listeners", "dynamic_active_clusters", "dynamic_route_configs",
                    "dynamic_endpoint_configs", "dynamic_active_secrets", "dynamic_warming_secrets",
                    "dynamic_warming_clusters"):
            for item in c.get(key, []):
                state = item.get("active_state", item)
                name = item.get("name") or state.get("cluster", {}).get("name") or \
                    state.get("route_config", {}).get("name") or \
                    state.get("endpoint_config", {}).get("cluster_name")
                out[f"{t}/{key}/{name}"] = state.get("version_info", item.get("version_info"))
    return out


CHANGE_STATS = ("listener_manager.listener_added", "listener_manager.listener_modified",
                "listener_manager.listener_removed", "listener_manager.listener_in_place_updated",
                "cluster_manager.cluster_added", "cluster_manager.cluster_modified",
                "cluster_manager.cluster_removed", "listener_manager.lds.update_rejected",
                "cluster_manager.cds.update_rejected")


def changes(envoy) -> dict[str, int]:
    s = envoy.stats("listener_manager|cluster_manager")
    return {k: s.get(k, 0) for k in CHANGE_STATS}


def cert_serials(envoy) -> list[str]:
    """Serial numbers of the workload certificates Envoy holds (admin /certs)."""
    certs = json.loads(envoy.admin("/certs"))["certificates"]
    return sorted({c["serial_number"] for entry in certs for c in entry.get("cert_chain", [])})


def ads_counters(envoy) -> dict[str, int]:
    """The ADS connection's counters (the xds-grpc cluster): streams started, connections
    closed by meshd's side while a stream was open (a reset, not a gRPC status)."""
    s = envoy.stats("^cluster\\.xds-grpc\\.upstream_(rq_total|cx_destroy_remote_with_active_rq|cx_connect_fail)$")
    return {k.removeprefix("cluster.xds-grpc."): v for k, v in s.items()}


def stream_closes(envoy, since: int) -> tuple[list[str], list[str]]:
    """From Envoy's log (config:debug) after byte offset `since`: how each ADS stream
    ended ("<grpc status>, <message>") and the times of every (re)connection attempt."""
    text = envoy.process.log_path.read_text(errors="replace")[since:]
    closes = re.findall(r"StreamAggregatedResources gRPC config stream to xds-grpc closed: (\d+, [^\n]*)", text)
    attempts = re.findall(r"^\[([^\]]+)\].*Establishing new gRPC bidi stream to xds-grpc", text, re.M)
    return closes, attempts


def log_size(envoy) -> int:
    return len(envoy.process.log_path.read_text(errors="replace"))


def test_restart_loses_nothing_in_the_mesh(testbed, tmp_path: Path):
    config_dir, ca_dir = tmp_path / "config", tmp_path / "ca"
    config_dir.mkdir()
    pods = {name: testbed.add_pod(name, sidecar=PODS[name].sidecar) for name in PODS}
    vips = {name: testbed.service_ip() for name in ("webapp", "catalog")}
    (config_dir / "layout.yaml").write_text(layout(pods, vips))
    pods["webapp"].run_echo(http=[WEBAPP_PORT])
    pods["catalog"].run_echo(http=[CATALOG_PORT])
    secure = free_port("127.0.0.1")
    with meshd(config_dir, tmp_path, extra=["--ca-dir", str(ca_dir), "--secure-xds-port", str(secure),
                                            "--log-format", "json"]) as cp:
        envoys = {}
        for name, pod in pods.items():
            pod.forward_to_host(secure, pod_port=15012)
            boot = _bootstrap(tmp_path / f"{name}-bootstrap.yaml", name, pod, ca_dir)
            # config:debug: Envoy logs how each ADS stream ended and every reconnection attempt
            envoys[name] = pod.start_envoy(boot, admin_port=15000, extra_args=["--component-log-level", "config:debug"])
        for name, e in envoys.items():
            wait_for(e.ready, 30, what=f"{name} envoy ready")
        streams = {  # STRICT mTLS on every hop into a sidecar
            "sleep->webapp": (pods["sleep"], vips["webapp"], 80, None, "webapp"),
            "webapp->catalog": (pods["webapp"], vips["catalog"], 80, None, "catalog"),
            "gateway->webapp": (pods["gateway"], pods["gateway"].ip, GW_PORT, {"Host": GATEWAY_HOST}, "webapp"),
        }
        for name, (pod, host, port, headers, _) in streams.items():
            wait_for(lambda pod=pod, host=host, port=port, headers=headers:
                     pod.http_get(host, port, "/", headers=headers, timeout=2)[0] == 200, 20,
                     interval=0.2, what=f"first 200 {name}")
        wait_for(lambda: all(cert_serials(e) for e in envoys.values()), 10, what="workload certificates")
        time.sleep(0.5)
        versions_before = {n: versions(e) for n, e in envoys.items()}
        for n, v in versions_before.items():  # listeners, clusters, routes, endpoints, secrets
            assert {k.split("/")[0] for k in v} >= {"ListenersConfigDump", "ClustersConfigDump", "RoutesConfigDump",
                                                    "EndpointsConfigDump", "SecretsConfigDump"}, (n, v)
        changes_before = {n: changes(e) for n, e in envoys.items()}
        ads_before = {n: ads_counters(e) for n, e in envoys.items()}
        serials = {n: [cert_serials(e)] for n, e in envoys.items()}
        argv, current = cp.process.argv, cp.process
        restarted: list[Process] = []
        report: list[str] = []
        try:
            with Traffic(streams) as traffic:
                time.sleep(0.5)
                for i, sig in enumerate((signal.SIGKILL, signal.SIGTERM)):
                    offsets = {n: log_size(e) for n, e in envoys.items()}
                    t0 = time.monotonic()
                    current.stop(sig)
                    stopped = time.monotonic() - t0
                    if sig == signal.SIGTERM:
                        # graceful: every stream ended at once (not after the 2 s grace), exit 0
                        # (that the streams ended at once, not at the grace's end, is in
                        # how Envoy saw them close: checked below; the time is reported)
                        assert current.proc.returncode == 0, current.log_path.read_text()[-2000:]
                        closed = [json.loads(line) for line in current.log_path.read_text().splitlines()
                                  if line.startswith("{") and '"ads streams closed"' in line]
                        assert closed and closed[0]["streams"] == len(envoys), current.log_path.read_text()[-2000:]
                    else:
                        assert current.proc.returncode == -signal.SIGKILL
                    wait_for(lambda: all(e.stat("control_plane.connected_state") == 0 for e in envoys.values()),
                             10, interval=0.1, what="every envoy notices the control plane is gone")
                    down = time.monotonic()
                    current = Process("meshd", argv, tmp_path / f"meshd-restarted-{i}.log",
                                      env={**os.environ, "PYTHONPATH": str(REPO)})
                    restarted.append(current)
                    wait_for(lambda current=current: cp.ready() or not current.alive(), 30, what="restarted meshd /ready")
                    assert current.alive(), current.log()
                    wait_for(lambda: all(e.stat("control_plane.connected_state") == 1 for e in envoys.values()),
                             45, interval=0.1, what="every envoy reconnects")  # Envoy backoff: up to 30 s
                    reconnected = time.monotonic() - down
                    # the restarted meshd has no workload key in memory: each identity gets a new certificate
                    wait_for(lambda: all(cert_serials(e) != serials[n][-1] for n, e in envoys.items()), 10,
                             interval=0.1, what="new workload certificates")
                    for n, e in envoys.items():
                        serials[n].append(cert_serials(e))
                        closes, attempts = stream_closes(e, offsets[n])
                        # how the stream to the stopped meshd ended
                        if sig == signal.SIGTERM:
                            assert closes[0].startswith("14, meshd shutting down; reconnect"), closes
                        else:  # the connection went away under the stream: a reset
                            assert closes[0].startswith("13, upstream_reset_after_response_started"), closes
                        # retries while meshd was down are spaced by Envoy's backoff, not a tight loop.
                        # The backoff is fully jittered (the first retry within [0, 500 ms), then
                        # [0, 1 s), ...), so a retry that comes after the restarted meshd listens
                        # makes one attempt the whole story: a fast restart is not a failure.
                        assert 1 <= len(attempts) <= 15, attempts
                        report.append(f"{sig.name} {n}: meshd stopped in {stopped:.2f}s, stream closed "
                                      f"{closes[0]!r}, {len(attempts)} attempts {attempts[0][-12:]}.."
                                      f"{attempts[-1][-12:]}, all reconnected {reconnected:.1f}s after the restart")
                time.sleep(1.0)
            print("\n".join(report))
            print("requests ok:", traffic.ok)
            assert traffic.failures == [], traffic.failures[:10]
            assert all(n > 100 for n in traffic.ok.values()), traffic.ok

            for n, e in envoys.items():
                # the same content-derived versions again: Envoy changed no listener, cluster
                # or route; only the workload certificate (SDS `default`) is new
                now = versions(e)
                secret = "SecretsConfigDump/dynamic_active_secrets/default"
                assert now[secret] != versions_before[n][secret]
                assert {k: v for k, v in now.items() if k != secret} == \
                    {k: v for k, v in versions_before[n].items() if k != secret}, n
                assert changes(e) == changes_before[n], n
                assert {k: v for k, v in e.stats("update_rejected").items() if v} == {}, n
                # a new stream per restart (more when Envoy retried while the stopping meshd
                # was refusing streams); only the SIGKILL left a stream without a status
                ads = ads_counters(e)
                assert ads["upstream_rq_total"] >= ads_before[n]["upstream_rq_total"] + 2, (n, ads, ads_before[n])
                assert ads["upstream_cx_destroy_remote_with_active_rq"] == \
                    ads_before[n]["upstream_cx_destroy_remote_with_active_rq"] + 1, (n, ads, ads_before[n])
                assert len({tuple(s) for s in serials[n]}) == 3, serials[n]  # issued, re-issued, re-issued

            # a new mTLS connection, both sides with their re-issued certificates: the
            # catalog's sidecar has not called webapp before
            handshakes = envoys["catalog"].stats("ssl.handshake$")
            status, _, body = pods["catalog"].http_get(vips["webapp"], 80, "/", timeout=5)
            assert status == 200 and json.loads(body)["pod"] == "webapp", (status, body[:200])
            assert envoys["catalog"].stats("ssl.handshake$") != handshakes
        finally:
            for p in restarted:
                p.stop()
