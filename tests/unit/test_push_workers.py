"""`meshd serve --workers N`: the workers' command line, and N processes answering on
one xDS port (SO_REUSEPORT) that all end with the first."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from bench.run import children
from controlplane import names
from controlplane.server.workers import WORKER_FLAG, worker_argv
from tests.support.ads import ads_fetch
from tests.support.harness import free_port, wait_for
from tests.support.paths import REPO


def test_worker_argv_keeps_the_serve_arguments_and_drops_the_monitoring_port():
    argv = ["serve", "--config-dir", "d", "--monitoring-port", "15014", "--workers=3", "--xds-port", "15010"]
    out = worker_argv(argv, 1)
    assert out[:5] == ["serve", "--config-dir", "d", "--xds-port", "15010"]
    assert out[5:] == ["--monitoring-port", "0", WORKER_FLAG, str(os.getpid()), "--workers", "1"]


@pytest.mark.e2e
def test_two_workers_serve_one_port_and_stop_together(tmp_path):
    xds, mon = free_port("127.0.0.1"), free_port("127.0.0.1")
    log = open(tmp_path / "meshd.log", "wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "controlplane", "serve", "--config-dir", str(REPO / "deploy" / "examples"),
         "--xds-port", str(xds), "--monitoring-port", str(mon), "--secure-xds-port", "0", "--listen-address",
         "127.0.0.1", "--ca-dir", str(tmp_path / "ca"), "--workers", "2"],
        stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONPATH": str(REPO)}, start_new_session=True)
    try:
        wait_for(lambda: set(children(proc.pid)), 20, what="a worker process")
        workers = set(children(proc.pid))
        wait_for(lambda: (tmp_path / "meshd.log").read_text().count("xds server listening") == 2, 30,
                 what="both processes listening")
        node = "router~127.0.0.1~gw-{}.istio-system~istio-system.svc.cluster.local"
        md = {"NAMESPACE": "istio-system", "LABELS": {"istio": "ingressgateway"}}
        for i in range(20):  # the kernel spreads the connections; every one is served
            resp = ads_fetch(xds, node.format(i), md, names.LISTENER, [])
            assert resp.type_url == names.LISTENER and len(resp.resources) == 1
        os.kill(proc.pid, signal.SIGTERM)
        proc.wait(20)
        wait_for(lambda: not any(Path(f"/proc/{w}").exists() for w in workers), 20, what="workers gone")
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        log.close()
