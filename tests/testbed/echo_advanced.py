"""The echo backend of the Gateway API mesh (GAMMA) conformance tests, reporting what the
suite's echo-advanced reports: the request as the server saw it and where it landed.

    python echo_advanced.py --pod echo-v1-0 --namespace gateway-conformance-mesh --version v1 --http 8080

Every request gets 200 and a JSON body: path (with the query), host, method, proto,
headers (name as sent -> every value, in order), namespace, pod, version. Prints READY once
it listens. Standard library only, and echo.py beside it (run as a script: its directory is
on the path).
"""
from __future__ import annotations

import argparse
import http.server
import json
import sys

from echo import serve  # tests/testbed/echo.py


def handler(pod: str, namespace: str, version: str):
    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True

        def _answer(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            if length:
                self.rfile.read(length)
            headers: dict[str, list[str]] = {}
            for name, value in self.headers.items():
                headers.setdefault(name, []).append(value)
            body = json.dumps({
                "path": self.path, "host": self.headers.get("Host", ""), "method": self.command,
                "proto": self.request_version, "headers": headers,
                "namespace": namespace, "pod": pod, "version": version,
            }).encode() + b"\n"
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = do_PATCH = _answer

        def log_message(self, fmt: str, *args) -> None:
            sys.stderr.write(f"{self.address_string()} {fmt % args}\n")

    return Handler


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pod", required=True)
    ap.add_argument("--namespace", required=True)
    ap.add_argument("--version", default="")
    ap.add_argument("--http", type=int, action="append", default=[])
    args = ap.parse_args(argv)
    servers = [http.server.ThreadingHTTPServer(("0.0.0.0", p), handler(args.pod, args.namespace, args.version))
               for p in args.http]
    return serve(servers)


if __name__ == "__main__":
    sys.exit(main())
