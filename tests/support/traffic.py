"""Backends for the traffic management tests: small servers that behave the way a test
needs (echo, fail first, slow, always 500, TLS-terminating, TCP echo), and curl.
Certificates are in pki.py.

Each backend answers with its own name in the body and in `x-backend`, and records the
requests it saw, so a test can tell which endpoint served a request and what reached it.
"""
from __future__ import annotations

import contextlib
import http.client
import http.server
import json
import socket
import socketserver
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from tests.support.harness import serving
from tests.support.pki import Pem


def write_files(workdir: Path, **files: bytes) -> dict[str, Path]:
    out = {}
    for name, data in files.items():
        p = workdir / name
        p.write_bytes(data)
        out[name] = p
    return out


# --- curl ------------------------------------------------------------------------------


def curl(*args: str, timeout: float = 10) -> subprocess.CompletedProcess:
    """curl with -s and a timeout; the caller reads returncode/stdout/stderr."""
    return subprocess.run(["curl", "-s", "--max-time", str(timeout), *args], capture_output=True, text=True,
                          timeout=timeout + 5)


# --- HTTP backends ---------------------------------------------------------------------


@dataclass
class Backend:
    name: str
    server: http.server.ThreadingHTTPServer
    requests: list[dict] = field(default_factory=list)
    seen: dict[str, int] = field(default_factory=dict)  # x-test-id -> attempts
    lock: threading.Lock = field(default_factory=threading.Lock)
    failing: bool = False  # set to make every answer a 500 (a backend going bad)

    def count(self, path_prefix: str = "") -> int:
        with self.lock:
            return sum(1 for r in self.requests if r["path"].startswith(path_prefix))

    def reset(self) -> None:
        with self.lock:
            self.requests.clear()
            self.seen.clear()


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body leave in separate writes: without this, Nagle and delayed ACKs
    # cost 40 ms per request on a kept-alive connection.
    disable_nagle_algorithm = True
    backend: Backend

    def _answer(self) -> None:
        b = self.backend
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        path = self.path
        req = {"method": self.command, "path": path, "headers": {k.lower(): v for k, v in self.headers.items()},
               "backend": b.name}
        with b.lock:
            b.requests.append(req)
            test_id = self.headers.get("x-test-id", "")
            attempts = b.seen[test_id] = b.seen.get(test_id, 0) + 1
        status = 200
        if path.startswith("/always-500") or b.name.endswith("-broken") or b.failing:
            status = 500
        elif "fail-first" in path and attempts == 1:
            status = 503
        elif path.startswith("/slow"):
            time.sleep(2.0)
        body = json.dumps({**req, "attempt": attempts}).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("x-backend", b.name)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = do_PUT = do_DELETE = do_OPTIONS = _answer

    def log_message(self, *args):  # quiet
        pass


@contextlib.contextmanager
def backend(name: str, host: str, port: int, tls_pem: Pem | None = None) -> Iterator[Backend]:
    """An HTTP (or, with `tls_pem`, HTTPS) backend at host:port answering every request
    with a JSON echo of what it received."""
    handler = type("Handler", (_Handler,), {})
    srv = http.server.ThreadingHTTPServer((host, port), handler)
    srv.daemon_threads = True
    b = Backend(name, srv)
    handler.backend = b
    if tls_pem is not None:
        import tempfile

        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        with tempfile.TemporaryDirectory() as d:
            files = write_files(Path(d), cert=tls_pem.cert, key=tls_pem.key)
            ctx.load_cert_chain(files["cert"], files["key"])
        srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
    with serving(srv):
        yield b


class _EchoHandler(socketserver.BaseRequestHandler):
    prefix = b""

    def handle(self):
        while True:
            data = self.request.recv(65536)
            if not data:
                return
            self.request.sendall(self.prefix + data)


@contextlib.contextmanager
def tcp_echo(host: str, port: int, prefix: bytes = b"hello ") -> Iterator[socketserver.ThreadingTCPServer]:
    """Istio's tcp-echo sample: every chunk comes back with `prefix` in front."""
    handler = type("Echo", (_EchoHandler,), {"prefix": prefix})
    socketserver.ThreadingTCPServer.allow_reuse_address = True
    srv = socketserver.ThreadingTCPServer((host, port), handler)
    srv.daemon_threads = True
    with serving(srv):
        yield srv


def tcp_roundtrip(host: str, port: int, payload: bytes, timeout: float = 5) -> bytes:
    with socket.create_connection((host, port), timeout=timeout) as s:
        s.sendall(payload)
        out = b""
        deadline = time.monotonic() + timeout
        while len(out) < len(payload) and time.monotonic() < deadline:
            chunk = s.recv(65536)
            if not chunk:
                break
            out += chunk
        return out


# --- manifests -------------------------------------------------------------------------


def service_yaml(name: str, namespace: str, ports: list[tuple[str, int, int]], endpoints: list[tuple[str, dict]],
                 app: str | None = None) -> str:
    """A Service (ports: (name, port, targetPort)) with one Pod per endpoint (ip, labels),
    in the shape `kubectl get -o yaml` gives (the Pods feed the endpoints)."""
    app = app or name
    ports_yaml = ", ".join(f"{{name: {n}, port: {p}, targetPort: {t}}}" for n, p, t in ports)
    docs = [f"""apiVersion: v1
kind: Service
metadata: {{name: {name}, namespace: {namespace}}}
spec:
  selector: {{app: {app}}}
  ports: [{ports_yaml}]"""]
    for i, (ip, labels) in enumerate(endpoints):
        lab = {"app": app, **labels}
        lab_yaml = ", ".join(f"{k}: {v}" for k, v in lab.items())
        docs.append(f"""apiVersion: v1
kind: Pod
metadata: {{name: {name}-{i}, namespace: {namespace}, labels: {{{lab_yaml}}}}}
spec: {{containers: [{{name: app, image: app}}]}}
status: {{podIP: {ip}}}""")
    return "\n---\n".join(docs) + "\n"


class Client:
    """Requests to 127.0.0.1:port (a gateway) with Host: `host` over a kept-alive connection."""

    def __init__(self, port: int, host: str):
        self.port, self.host = port, host
        self._conn: http.client.HTTPConnection | None = None

    def request(self, method: str, path: str, headers: dict | None = None, timeout: float = 10.0):
        for attempt in range(2):
            if self._conn is None:
                self._conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
            try:
                self._conn.request(method, path, headers={"Host": self.host, **(headers or {})})
                r = self._conn.getresponse()
                body = r.read()
                if r.getheader("connection", "").lower() == "close":
                    self.close()
                return r.status, {k.lower(): v for k, v in r.getheaders()}, body
            except (http.client.HTTPException, OSError):
                self.close()
                if attempt:
                    raise
        raise AssertionError("unreachable")

    def get(self, path: str, headers: dict | None = None):
        status, hdrs, body = self.request("GET", path, headers)
        return status, hdrs, body

    def json(self, path: str, headers: dict | None = None) -> dict:
        status, _, body = self.get(path, headers)
        assert status == 200, (status, body[:200])
        return json.loads(body)

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
