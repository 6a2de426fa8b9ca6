"""The real Kubernetes API server for tests: ../shared/k8s's etcd and kube-apiserver.

See ../shared/k8s/README.md: no controllers, no scheduler, no nodes; new namespaces get no
ServiceAccount; a deleted namespace stays Terminating.
"""
from __future__ import annotations

import contextlib
import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from tests.support.harness import free_port
from tests.support.paths import shared


@dataclass(frozen=True)
class KubeCluster:
    """A running test cluster: a real etcd and kube-apiserver, nothing else (../shared/k8s/README.md)."""

    state: Path
    kubeconfig: Path
    server: str

    def api_client(self):
        from kubernetes import config

        return config.new_client_from_config(config_file=str(self.kubeconfig))


@contextlib.contextmanager
def kube_apiserver(workdir: Path) -> Iterator[KubeCluster]:
    """../shared/k8s's real kube-apiserver and etcd on free loopback ports, with the state
    under `workdir`; stopped (`down --rm`) however the test ends, also when `up` failed
    half way."""
    up, down = shared("k8s", "up"), shared("k8s", "down")
    state = workdir / "k8s"
    ports: list[int] = []
    while len(ports) < 3:
        p = free_port("127.0.0.1")
        if p not in ports:
            ports.append(p)
    try:
        cp = subprocess.run([sys.executable, str(up), str(state), "--port", str(ports[0]), "--etcd-port", str(ports[1]),
                             "--etcd-peer-port", str(ports[2]), "--bind-address", "127.0.0.1", "--fresh"],
                            capture_output=True, text=True, timeout=180)
        if cp.returncode != 0:
            raise AssertionError(f"k8s/up failed ({cp.returncode}):\n{cp.stderr[-4000:]}")
        info = json.loads((state / "up.json").read_text())
        yield KubeCluster(state, Path(info["kubeconfig"]), info["server"])
    finally:
        subprocess.run([sys.executable, str(down), str(state), "--rm"], capture_output=True, timeout=60)
