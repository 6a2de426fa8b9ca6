"""A port `meshd serve` needs that is taken ends start-up with one line naming the port
and the flag to change, exit code 2 (issue 16 item 6): never a traceback, for every
port flag of serve; and nothing was started or created before the check."""
from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from controlplane.app import _listening
from controlplane.debug.monitoring import start_monitoring
from controlplane.ports import ServePort, StartupError, check_free
from controlplane.server.metrics import Metrics
from tests.support.harness import free_port
from tests.support.paths import REPO

PORT_FLAGS = ["--xds-port", "--secure-xds-port", "--monitoring-port", "--ca-mtls-port"]


def taken_port() -> socket.socket:
    """A listening socket on a free loopback port, as another server would hold it."""
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("127.0.0.1", 0))
    s.listen()
    return s


def serve(tmp_path: Path, ports: dict[str, int]) -> subprocess.CompletedProcess:
    argv = [sys.executable, "-m", "controlplane", "serve", "--listen-address", "127.0.0.1",
            "--ca-dir", str(tmp_path / "ca")]
    for flag, port in ports.items():
        argv += [flag, str(port)]
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, cwd=tmp_path,
                          env={**os.environ, "PYTHONPATH": str(REPO), "MESHD_HOME": str(tmp_path / "home")})


@pytest.mark.parametrize("flag", PORT_FLAGS)
def test_a_port_in_use_is_one_line_naming_the_port_and_its_flag(tmp_path, flag):
    with taken_port() as busy:
        port = busy.getsockname()[1]
        ports = {f: free_port("127.0.0.1") for f in PORT_FLAGS}
        ports[flag] = port
        cp = serve(tmp_path, ports)
    assert cp.returncode == 2, cp.stderr
    assert cp.stderr == f"meshd: port {port} ({flag}) is already in use\n"
    assert not (tmp_path / "ca").exists()  # checked before the CA is created, or anything else started


def test_one_port_given_to_two_flags_is_named(tmp_path):
    port = free_port("127.0.0.1")
    cp = serve(tmp_path, {"--xds-port": port, "--monitoring-port": port, "--secure-xds-port": free_port("127.0.0.1")})
    assert cp.returncode == 2
    assert cp.stderr == f"meshd: port {port} is given to both --xds-port and --monitoring-port\n"


def test_an_address_this_machine_lacks_names_the_listen_address():
    with pytest.raises(StartupError, match=r"cannot listen on 192\.0\.2\.1:\d+ \(--xds-port\): this machine has no "
                                           r"address 192\.0\.2\.1 \(--listen-address\)"):
        check_free("192.0.2.1", [ServePort("--xds-port", free_port("127.0.0.1"))])


def test_a_port_taken_after_the_check_is_the_same_one_line():
    """Between the check and the bind another process may take the port: the server's own
    bind error becomes the same line."""
    async def start(port: int):
        return await _listening("127.0.0.1", ServePort("--monitoring-port", port),
                                start_monitoring("127.0.0.1", port, lambda: True, Metrics()))

    with taken_port() as busy:
        port = busy.getsockname()[1]
        with pytest.raises(StartupError) as err:
            asyncio.run(start(port))
    assert str(err.value) == f"port {port} (--monitoring-port) is already in use"
