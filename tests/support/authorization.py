"""Helpers for the authorization e2e tests (no tests here): the JWKS server meshd fetches
an issuer's keys from, a TCP probe, and `meshd x authz check`.
"""
from __future__ import annotations

import contextlib
import http.server
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator

from tests.support import harness
from tests.support.jwt import Issuer
from tests.support.paths import REPO
from tests.testbed.bed import Pod, wait_for

# --- JWT (tokens from tests/support/jwt.py) --------------------------------------------------


class JwksServer:
    """The issuer's key set at http://127.0.0.1:<port>/jwks.json on the host, where meshd
    (not the Envoys: they cannot reach the host) fetches it. Counts the fetches."""

    def __init__(self, issuers: list[Issuer]):
        self.issuers = issuers
        self.fetches = 0
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                if self.path != "/jwks.json":
                    self.send_error(404)
                    return
                outer.fetches += 1
                body = json.dumps({"keys": [i.jwk() for i in outer.issuers]}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/jwks.json"

    @contextlib.contextmanager
    def running(self) -> Iterator[JwksServer]:
        with harness.serving(self.server):
            yield self


def bearer(token: str) -> dict:
    return {"Authorization": f"Bearer {token}"}


# --- TCP -------------------------------------------------------------------------------------

CLOSED = "closed"


def tcp_exchange(pod: Pod, host: str, port: int, line: str, timeout: float = 3.0) -> str:
    """Send `line` from inside `pod` and read one line back: the echoed text, or CLOSED
    when the connection is closed or reset without an answer ("refused", "timeout" and
    "partial: ..." otherwise: none of them is what a policy does)."""
    try:
        s = pod.connect(host, port, timeout)
    except ConnectionRefusedError:
        return "refused"
    except OSError as e:
        return f"connect failed: {e!r}"
    with s:
        data = b""
        try:
            s.sendall(line.encode() + b"\n")
            while not data.endswith(b"\n"):
                chunk = s.recv(4096)
                if not chunk:
                    return CLOSED if not data else f"partial: {data!r}"
                data += chunk
        except (ConnectionResetError, BrokenPipeError):
            return CLOSED if not data else f"partial: {data!r}"
        except TimeoutError:
            return "timeout"
        return data.decode(errors="replace").rstrip("\n")


def expect_tcp(pod: Pod, host: str, port: int, want: str, timeout: float = 10.0, why=lambda: "") -> None:
    """Wait until a TCP exchange from `pod` gives `want` (an echoed line or CLOSED), then
    check once more that it stays so."""
    line = f"{pod.name} to {port}"
    last = ""

    def ok() -> bool:
        nonlocal last
        last = tcp_exchange(pod, host, port, line)
        return last == want

    what = f"{pod.name} -> {host}:{port} over TCP: {want!r}"
    try:
        wait_for(ok, timeout, interval=0.2, what=what)
    except AssertionError:
        raise AssertionError(f"{what}: got {last!r}\n{why()}") from None
    again = tcp_exchange(pod, host, port, line)
    assert again == want, f"{what}: then {again!r}"


# --- meshd x authz check ----------------------------------------------------------------------


def meshd_cli(*args: str, pod: Pod | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    """`python -m controlplane ARGS` on the host, or inside `pod` (to reach its Envoy's admin)."""
    if pod is None:
        return harness.meshd_cli(*args, check=False, timeout=timeout)
    return pod.exec([sys.executable, "-m", "controlplane", *args], env={**os.environ, "PYTHONPATH": str(REPO)},
                    timeout=timeout)


def table_rows(text: str) -> list[list[str]]:
    """A tabwriter table's rows as cells (columns are at least two spaces apart)."""
    return [re.split(r"\s{2,}", line.strip()) for line in text.splitlines() if line.strip()]
