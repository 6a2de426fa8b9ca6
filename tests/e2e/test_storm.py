"""Reconnect storm: 1,000 simulated proxies (bench/loadgen.py, Envoy's xDS sequence, one
gRPC channel each, in a separate process) connect at once, ten times over, to a real
meshd process.

Each cycle: every proxy is served its full configuration (CDS, EDS, LDS, RDS ACKed),
`/ready` keeps answering within a second throughout, and after they all disconnect meshd
holds no connection. Memory (RSS from /proc) after the last cycle stays within a generous
bound of what it was after the second one: no per-connection leak.
"""
from __future__ import annotations

import multiprocessing
import threading
import time
from pathlib import Path

import pytest

from bench.loadgen import process_main
from bench.scenario import ProxySpec
from tests.support.harness import free_port, http_get, meshd, wait_for, write
from tests.support.ingress import backends_yaml, gateway_yaml, one_subset, vs_yaml

pytestmark = pytest.mark.e2e

PROXIES = int(__import__("os").environ.get("STORM_PROXIES", "1000"))
CYCLES = int(__import__("os").environ.get("STORM_CYCLES", "10"))


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def connected(m) -> float:
    for line in m.metrics().splitlines():
        if line.startswith("pilot_xds ") or line.startswith("pilot_xds{"):
            return float(line.split()[-1])
    return 0.0


class ReadyProbe:
    """Polls /ready all along; records the slowest answer and any failure."""

    def __init__(self, port: int):
        self.port, self.worst, self.failures = port, 0.0, []
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            t0 = time.monotonic()
            try:
                status, _ = http_get("127.0.0.1", self.port, "/ready", timeout=5)
                if status != 200:
                    self.failures.append(status)
            except OSError as e:
                self.failures.append(repr(e))
            self.worst = max(self.worst, time.monotonic() - t0)
            time.sleep(0.1)

    def __enter__(self):
        self._t.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join(10)


def test_thousand_proxies_reconnecting_ten_times(tmp_path: Path):
    cfg = tmp_path / "config"
    cfg.mkdir()
    write(cfg / "gateway.yaml", gateway_yaml(free_port()))
    write(cfg / "backends.yaml", backends_yaml(free_port()))
    write(cfg / "virtualservice.yaml", vs_yaml(one_subset("v1")))
    specs = [ProxySpec("sidecar", "istioinaction", f"storm-{i}", f"10.{i // 250}.{i % 250}.1",
                       {"app": f"storm{i % 10}"}, service_account=f"sa{i % 10}") for i in range(PROXIES)]
    ctx = multiprocessing.get_context("spawn")
    with meshd(cfg, tmp_path) as m:
        pid = m.process.proc.pid
        rss: list[int] = []
        leftover: list[int] = []  # streams still open 8 s after their clients exited, per cycle
        with ReadyProbe(m.monitoring_port) as probe:
            for cycle in range(CYCLES):
                parent, child = ctx.Pipe()
                gen = ctx.Process(target=process_main, args=(specs, f"127.0.0.1:{m.xds_port}", "sotw", child),
                                  daemon=True)
                gen.start()
                try:
                    last: dict = {}

                    def synced(parent=parent, last=last):
                        parent.send(("synced",))
                        last.update(parent.recv())
                        return dict(last) if last["synced"] == PROXIES else None

                    s = wait_for(synced, 120, interval=0.5, what=f"cycle {cycle}: all {PROXIES} proxies served ({last})")
                    assert s["errors"] == 0, s
                    assert connected(m) >= PROXIES
                finally:
                    parent.send(("stop",))
                    parent.recv()
                    gen.join(30)
                    if gen.is_alive():
                        gen.kill()
                deadline = time.monotonic() + 8
                while (n := connected(m)) != 0 and time.monotonic() < deadline:
                    time.sleep(0.2)
                leftover.append(int(n))
                time.sleep(0.5)
                rss.append(rss_kib(pid))
                print(f"cycle {cycle}: rss {rss[-1]} KiB, /ready worst {probe.worst:.2f}s, left open {leftover[-1]}")
        assert m.process.alive()
        assert probe.failures == [], probe.failures[:5]
        assert probe.worst < 2.0, probe.worst
        # no leak: after cycle 10 within a generous bound of after cycle 2
        assert rss[-1] <= rss[1] * 1.25 + 20_000, rss
        assert "Traceback" not in m.log()
        # every stream of an exited client is forgotten (`ads disconnect`, out of pilot_xds)
        assert not any(leftover), f"streams of exited clients still open, per cycle: {leftover}"
