"""The injected istio-proxy's lifecycle hooks against a real Envoy: the postStart wait of
holdApplicationUntilProxyStarts and the preStop drain are bash scripts (the Envoy image has
no curl); they must speak HTTP as Envoy's listeners accept it (HTTP/1.1: Envoy refuses
HTTP/1.0 by default). Envoy runs the bootstrap meshd writes for a sidecar (its 15021
readiness listener), without xDS so that it is ready at once."""
from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest

from controlplane.bootstrap import BootstrapParams, build_bootstrap
from controlplane.inject.pod import drain_script, wait_ready_script
from tests.support.envoy import envoy_binary
from tests.support.harness import Process, free_port, http_get, wait_for

pytestmark = pytest.mark.e2e  # a real Envoy process


def _bootstrap(tmp_path: Path, admin: int, health: int) -> Path:
    doc = build_bootstrap(BootstrapParams("sidecar", "shop", "web-1", "127.0.0.1", f"127.0.0.1:{free_port()}",
                                          admin_port=admin, health_port=health, stats_port=free_port("127.0.0.1")))
    doc.pop("dynamic_resources", None)  # no control plane: Envoy is ready as soon as it runs
    path = tmp_path / "envoy.json"
    path.write_text(json.dumps(doc))
    return path


def test_post_start_waits_for_envoy_then_pre_stop_drains(tmp_path):
    admin, health = free_port("127.0.0.1"), free_port()
    boot = _bootstrap(tmp_path, admin, health)
    # The hook starts before Envoy listens: it must keep trying.
    hook = subprocess.Popen(["bash", "-c", wait_ready_script(health)])
    time.sleep(1)  # Envoy starts later than the hook, as in a pod
    assert hook.poll() is None, "the wait ended before Envoy ran"
    envoy = Process("envoy", [envoy_binary(), "-c", str(boot), "--use-dynamic-base-id", "--concurrency", "1",
                              "-l", "warning"], tmp_path / "envoy.log")
    try:
        assert hook.wait(timeout=60) == 0, envoy.log()
        assert http_get("127.0.0.1", health, "/healthz/ready")[0] == 200
        started = time.monotonic()
        drained = subprocess.run(["bash", "-c", drain_script(1, admin)], capture_output=True, text=True, timeout=30)
        assert drained.returncode == 0
        assert drained.stderr.startswith("HTTP/1.1 200"), drained.stderr
        assert time.monotonic() - started >= 1  # then waits terminationDrainDuration
        wait_for(lambda: envoy.alive(), 5, what="envoy still running after the drain request")
    finally:
        hook.kill()
        envoy.stop()
