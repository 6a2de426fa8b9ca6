"""A small application for test pods: HTTP echo, and optionally raw TCP echo.

    python echo.py --name webapp --http 8080 [--http 9080] [--tcp 9000]

Every HTTP request gets 200 and a JSON body naming the pod, the request and the
connection as the server saw it (`peer` is the client address the app sees, so a test can
tell a direct call from one relayed by the sidecar from 127.0.0.6). Listens on 0.0.0.0.
TCP echo sends back whatever it receives, prefixed with "<name> ". Standalone: standard
library only.
"""
from __future__ import annotations

import argparse
import http.server
import json
import signal
import socket
import socketserver
import sys
import threading


def http_handler(name: str):
    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True  # headers and body are two writes: no 40 ms delayed-ACK stall

        def _answer(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body_in = self.rfile.read(length) if length else b""
            payload = json.dumps({
                "pod": name,
                "method": self.command,
                "path": self.path,
                "headers": {k.lower(): v for k, v in self.headers.items()},
                "peer": "{}:{}".format(*self.client_address[:2]),
                "local": "{}:{}".format(*self.connection.getsockname()[:2]),
                "body": body_in.decode(errors="replace"),
            }).encode() + b"\n"
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.send_header("x-echo-pod", name)
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(payload)

        do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = _answer

        def log_message(self, fmt: str, *args) -> None:
            sys.stderr.write(f"{self.address_string()} {fmt % args}\n")

    return Handler


class TcpEcho(socketserver.BaseRequestHandler):
    name = ""

    def handle(self) -> None:
        prefix = self.name.encode() + b" "
        while data := self.request.recv(65536):
            self.request.sendall(prefix + data)


class _Threading(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--name", default=socket.gethostname())
    ap.add_argument("--http", type=int, action="append", default=[])
    ap.add_argument("--tcp", type=int, action="append", default=[])
    args = ap.parse_args(argv)
    servers: list[socketserver.BaseServer] = []
    for port in args.http:
        servers.append(http.server.ThreadingHTTPServer(("0.0.0.0", port), http_handler(args.name)))
    for port in args.tcp:
        servers.append(_Threading(("0.0.0.0", port), type("H", (TcpEcho,), {"name": args.name})))
    return serve(servers)


def serve(servers: list[socketserver.BaseServer]) -> int:
    """Run `servers` until SIGTERM/SIGINT, saying READY once they listen (echo_advanced.py too)."""
    for s in servers:
        threading.Thread(target=s.serve_forever, daemon=True).start()
    print("READY", flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    stop.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
