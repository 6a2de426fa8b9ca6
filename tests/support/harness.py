"""Processes and helpers for end-to-end tests: meshd, small HTTP backends, waiting.

Everything started here is stopped by its context manager, also when a test fails,
and every port is picked free, so the suite can run twice in a row on one machine.
"""
from __future__ import annotations

import contextlib
import http.client
import http.server
import os
import signal
import socket
import socketserver
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from tests.support.paths import REPO

_handed_out: set[int] = set()


def free_port(host: str = "0.0.0.0") -> int:
    """A port free now that this process has not been given before: the kernel may hand
    the same ephemeral port to two successive binds once the first is closed, and two
    listeners of one test given the same port make Envoy refuse its bootstrap."""
    for _ in range(100):
        with socket.socket() as s:
            s.bind((host, 0))
            port = s.getsockname()[1]
        if port not in _handed_out:
            _handed_out.add(port)
            return port
    raise RuntimeError("no fresh free port in 100 tries")


def wait_for(predicate: Callable[[], object], timeout: float, interval: float = 0.05,
             what: str | Callable[[], str] = "condition"):
    """Poll `predicate` until it returns something true (returned) or `timeout` passes
    (AssertionError naming `what`; a callable `what` is asked then, so logs in it are
    those of the moment of failure). The predicate is tried once more at the deadline."""
    deadline = time.monotonic() + timeout
    last_exc: Exception | None = None
    while True:
        try:
            result = predicate()
            if result:
                return result
        except Exception as e:
            last_exc = e
        if time.monotonic() >= deadline:
            break
        time.sleep(interval)
    what = what() if callable(what) else what
    raise AssertionError(f"timed out after {timeout}s waiting for {what}" + (f" (last error: {last_exc!r})" if last_exc else ""))


def write(path: Path, text: str) -> None:
    """Replace `path` with `text` atomically (a temporary file renamed over it), as
    kubectl-style tools and ConfigMap volumes do: a watcher never reads half a file."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    tmp.replace(path)


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


def _flag_value(argv: list[str], flag: str) -> str | None:
    return argv[argv.index(flag) + 1] if flag in argv[:-1] else None


@contextlib.contextmanager
def meshd(config_dir: Path | None, workdir: Path, extra: list[str] | None = None,
          home: Path | None = None, fresh_ca_dir: bool = True) -> Iterator[MeshdHandle]:
    """meshd serve on free ports. Unless `extra` says otherwise, the secure xDS port is a
    free one too and the CA lives in a fresh directory under `workdir` (`fresh_ca_dir`
    False: no --ca-dir, meshd's default). Its state directory ($MESHD_HOME: the last
    good config, the file-mode CA) is `home`, else a fresh one under `workdir` (never
    ~/.meshd); a restart that should find its state passes `handle.env`."""
    extra = list(extra or [])
    xds, mon = free_port("127.0.0.1"), free_port("127.0.0.1")
    while mon == xds:  # free_port may hand out the port it just released
        mon = free_port("127.0.0.1")
    if "--secure-xds-port" not in extra:
        secure = free_port("127.0.0.1")
        while secure in (xds, mon):
            secure = free_port("127.0.0.1")
        extra += ["--secure-xds-port", str(secure)]
    if "--webhook-port" not in extra:  # Kubernetes mode serves the admission webhooks (15017 by default)
        extra += ["--webhook-port", str(free_port("127.0.0.1"))]
    if "--ca-dir" not in extra and fresh_ca_dir:
        extra += ["--ca-dir", str(workdir / f"meshd-ca-{xds}")]
    argv = [
        sys.executable, "-m", "controlplane", "serve",
        *(["--config-dir", str(config_dir)] if config_dir is not None else []),
        "--xds-port", str(xds),
        "--monitoring-port", str(mon),
        "--listen-address", "127.0.0.1",
        *extra,
    ]
    env = {**os.environ, "PYTHONPATH": str(REPO), "MESHD_HOME": str(home or workdir / f"meshd-home-{xds}")}
    p = Process("meshd", argv, workdir / f"meshd-{xds}.log", env=env)
    try:
        handle = MeshdHandle(p, xds, mon, secure_port=int(_flag_value(argv, "--secure-xds-port") or 0),
                             ca_dir=Path(_flag_value(argv, "--ca-dir") or ""), env=env)
        wait_for(lambda: handle.ready() or not p.alive(), 30, what="meshd /ready")
        assert p.alive(), f"meshd exited:\n{p.log()}"
        yield handle
    finally:
        p.stop()


def meshd_cli(*args: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
    """`python -m controlplane ARGS` (the `meshd` command of this checkout), its output captured."""
    return subprocess.run([sys.executable, "-m", "controlplane", *args], capture_output=True, text=True,
                          check=check, env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=timeout)


class MeshdHandle:
    def __init__(self, process: Process, xds_port: int, monitoring_port: int, *, secure_port: int = 0,
                 ca_dir: Path | None = None, env: dict | None = None):
        self.process = process
        self.env = env  # the process's environment (MESHD_HOME): what a restart needs too
        self.xds_port = xds_port
        self.monitoring_port = monitoring_port
        self.secure_port = secure_port  # TLS + bearer token (0: disabled)
        self.ca_dir = ca_dir  # holds root-cert.pem, the mesh's trust bundle

    @property
    def root_cert(self) -> Path:
        assert self.ca_dir is not None
        return self.ca_dir / "root-cert.pem"

    def token(self, namespace: str, service_account: str, ttl: str = "1h") -> str:
        """A bearer token for namespace/service_account from this meshd's CA (`meshd token`)."""
        cp = subprocess.run(
            [sys.executable, "-m", "controlplane", "token", "--namespace", namespace, "--service-account",
             service_account, "--ttl", ttl, "--ca-dir", str(self.ca_dir)],
            check=True, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)},
        )
        return cp.stdout.strip()

    def ready(self) -> bool:
        try:
            return http_get("127.0.0.1", self.monitoring_port, "/ready", timeout=1)[0] == 200
        except OSError:
            return False

    def metrics(self) -> str:
        return http_get("127.0.0.1", self.monitoring_port, "/metrics")[1].decode()

    def log(self) -> str:
        return self.process.log()


class Traffic:
    """GETs of `path` with Host `host` through 127.0.0.1:port in a loop on a background
    thread (bounded: it stops with the context, or after `max_seconds`), counting failures:
    anything but a 200 whose body starts with `expect` (is `expect`, when `exact`), each
    with the time it happened."""

    def __init__(self, port: int, host: str, expect: bytes, path: str = "/api/catalog", *, exact: bool = False,
                 interval: float = 0.01, max_seconds: float = 600.0):
        self.port, self.host, self.expect, self.path = port, host, expect, path
        self.exact, self.interval, self.max_seconds = exact, interval, max_seconds
        self.ok = 0
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="traffic")

    def _run(self):
        deadline = time.monotonic() + self.max_seconds
        while not self._stop.is_set() and time.monotonic() < deadline:
            try:
                status, body = http_get("127.0.0.1", self.port, self.path, headers={"Host": self.host})
                if status == 200 and (body == self.expect if self.exact else body.startswith(self.expect)):
                    self.ok += 1
                else:
                    self.failures.append(f"{time.strftime('%H:%M:%S')} HTTP {status} {body[:120]!r}")
            except OSError as e:
                self.failures.append(f"{time.strftime('%H:%M:%S')} {e!r}")
            self._stop.wait(self.interval)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(10)


class _Handler(http.server.BaseHTTPRequestHandler):
    body = b""
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body are two writes: no 40 ms delayed-ACK stall per request

    def do_GET(self):
        payload = self.body + b" " + self.path.encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args):  # quiet
        pass


@contextlib.contextmanager
def serving(srv: socketserver.BaseServer) -> Iterator[socketserver.BaseServer]:
    """`srv` answering from a thread for the block, shut down and closed however it ends."""
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        yield srv
    finally:
        srv.shutdown()
        srv.server_close()


@contextlib.contextmanager
def http_backend(host: str, port: int, body: bytes) -> Iterator[http.server.ThreadingHTTPServer]:
    """A tiny HTTP server answering every GET with `body` and the path."""
    handler = type("Handler", (_Handler,), {"body": body})
    srv = http.server.ThreadingHTTPServer((host, port), handler)
    srv.daemon_threads = True
    with serving(srv):
        yield srv


