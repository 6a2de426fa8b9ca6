"""A small HTTP authorization service for Envoy's ext_authz filter, for test pods.

    python ext_authz.py --port 8000

Envoy's HTTP ext_authz asks with the original method and path (after the provider's path
prefix) and the headers the provider lets through. A request carrying `x-ext-authz: allow`
is allowed (200, `x-ext-authz-check-result: allowed`); any other is denied with 403 and a
body naming this server, so a test can tell its decision from Envoy's own RBAC denial.
Each check is logged on stderr as `check <METHOD> <path> x-ext-authz=<value> -> <status>`.
Prints "READY" once listening. Standalone: standard library only.
"""
from __future__ import annotations

import argparse
import http.server
import signal
import sys
import threading

HEADER = "x-ext-authz"
ALLOW = "allow"
DENIED_BODY = b"denied by ext_authz\n"


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True

    def _check(self) -> None:
        value = self.headers.get(HEADER, "")
        allowed = value == ALLOW
        body = b"" if allowed else DENIED_BODY
        self.send_response(200 if allowed else 403)
        self.send_header("x-ext-authz-check-result", "allowed" if allowed else "denied")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)
        sys.stderr.write(f"check {self.command} {self.path} {HEADER}={value} -> {200 if allowed else 403}\n")
        sys.stderr.flush()

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = _check

    def log_message(self, fmt: str, *args) -> None:  # the check line above says it all
        pass


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, default=8000)
    args = ap.parse_args(argv)
    server = http.server.ThreadingHTTPServer(("0.0.0.0", args.port), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    print("READY", flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    stop.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
