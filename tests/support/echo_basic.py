"""An in-process stand-in for the Gateway API conformance suite's echo-basic backend.

Every request gets a JSON body with what echo-basic reports: path (with the query), host,
method, proto, headers (canonical name -> values), namespace, pod. As echo-basic does it
honours `?delay=<n>s|ms` (sleeps first) and the request header `X-Echo-Set-Header:
Name:value,Name2:value2` (response headers to add). Each server records what it saw, so a
test can tell that a mirrored copy arrived.
"""
from __future__ import annotations

import contextlib
import http.server
import json
import threading
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass, field

from tests.support.harness import serving


@dataclass
class EchoPod:
    namespace: str
    pod: str
    seen: list[dict] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def saw(self, path_part: str) -> int:
        with self.lock:
            return sum(1 for r in self.seen if path_part in r["path"])


def _duration(value: str) -> float:
    if value.endswith("ms"):
        return float(value[:-2]) / 1000
    return float(value.rstrip("s"))


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    pod: EchoPod

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        headers: dict[str, list[str]] = {}
        for name, value in self.headers.items():
            headers.setdefault("-".join(p.capitalize() for p in name.split("-")), []).append(value)
        seen = {"path": self.path, "host": self.headers.get("Host", ""), "method": self.command,
                "proto": self.request_version, "headers": headers,
                "namespace": self.pod.namespace, "pod": self.pod.pod}
        with self.pod.lock:
            self.pod.seen.append(seen)
        query = urllib.parse.parse_qs(urllib.parse.urlsplit(self.path).query)
        if "delay" in query:
            time.sleep(_duration(query["delay"][0]))
        body = json.dumps(seen).encode() + b"\n"
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        for item in (self.headers.get("X-Echo-Set-Header") or "").split(","):
            if ":" in item:
                name, value = item.split(":", 1)
                self.send_header(name.strip(), value.strip())
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = do_PATCH = do_OPTIONS = _answer

    def log_message(self, fmt: str, *args) -> None:
        pass


@contextlib.contextmanager
def echo_pod(namespace: str, pod: str, ip: str, port: int) -> Iterator[EchoPod]:
    """echo-basic of `namespace`/`pod` listening on ip:port for the block."""
    state = EchoPod(namespace, pod)
    srv = http.server.ThreadingHTTPServer((ip, port), type("Handler", (_Handler,), {"pod": state}))
    srv.daemon_threads = True
    with serving(srv):
        yield state
