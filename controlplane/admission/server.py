"""The HTTPS server on the webhook port (istiod's 15017), in threads of its own: the API
server's calls never wait for the xDS event loop, and a slow review never stalls it.

    POST /validate        Istio objects (validate.py)
    POST /inject          pods; also /inject/<Istio's path params>, e.g.
                          /inject/cluster/Kubernetes/net/network1 (inject.py)
    GET  /ready           200 once serving

Each connection is wrapped with the TLS context `WebhookCertificate.context()` gives at
that moment, so a renewed certificate serves from the next connection on. Whatever the
body, a POST is answered 200 with an AdmissionReview (a body that is not one is denied
with the reason); only a wrong path (404), method (405) or size (413) is an HTTP error.
"""
from __future__ import annotations

import http.server
import json
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

import structlog

from . import review as rv
from .certificate import WebhookCertificate

log = structlog.get_logger("meshd.admission")

MAX_BODY = 8 << 20  # an object is at most ~1.5 MiB in etcd; a review holds two
CONNECTION_TIMEOUT = 30.0

Handler = Callable[[rv.AdmissionRequest], rv.Verdict]


def route(path: str) -> str | None:
    """The handler name for a request path: Istio's injection path params are accepted
    (meshd reads the cluster and network from its own config, not from the path)."""
    path = path.split("?", 1)[0]
    if path in ("/validate", "/validate/"):
        return "validate"
    if path == "/inject" or path.startswith("/inject/"):
        return "inject"
    return None


def answer(body: bytes, handler: Handler) -> dict[str, Any]:
    """The AdmissionReview answering `body` (pure apart from the handler)."""
    req = rv.parse(body)
    if isinstance(req, rv.BadReview):
        log.warning("admission review refused", reason=req.reason)
        return rv.respond_bad(req)
    try:
        verdict = handler(req)
    except Exception as e:  # a handler bug answers as a denial naming it, never as a 500
        log.exception("admission handler failed", kind=req.kind, namespace=req.namespace, name=req.name)
        verdict = rv.Verdict.deny(f"meshd failed to review {req.kind} {req.namespace}/{req.name}: {e}", 500)
    return rv.respond(req.api_version, req.uid, verdict)


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], certificate: WebhookCertificate,
                 handlers: dict[str, Handler]):
        self.certificate = certificate
        self.handlers = handlers
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        super().__init__(address, _RequestHandler)

    def get_request(self) -> tuple[Any, Any]:
        sock, addr = self.socket.accept()
        sock.settimeout(CONNECTION_TIMEOUT)
        try:
            ctx = self.certificate.context()
        except Exception as e:  # no certificate yet: this caller is refused, the server goes on
            sock.close()
            log.error("webhook certificate unavailable", error=str(e))
            raise OSError(f"webhook certificate unavailable: {e}") from e
        # The handshake happens on the connection's own thread (first read), not here.
        return ctx.wrap_socket(sock, server_side=True, do_handshake_on_connect=False), addr

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.debug("webhook connection error", client=str(client_address), exc_info=True)


class _RequestHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def _send(self, status: int, body: bytes, content_type: str = "application/json") -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        if self.path.split("?", 1)[0] == "/ready":
            self._send(200, b"ok\n", "text/plain")
        elif route(self.path) is not None:
            self._send(405, b"use POST with an AdmissionReview\n", "text/plain")
        else:
            self._send(404, b"not found\n", "text/plain")

    def do_POST(self) -> None:
        name = route(self.path)
        if name is None or name not in self.server.handlers:
            self._send(404, b"not found\n", "text/plain")
            return
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = -1
        if length < 0 or length > MAX_BODY:
            self.close_connection = True
            self._send(413, b"body too large or without a valid Content-Length\n", "text/plain")
            return
        body = self.rfile.read(length)
        started = time.perf_counter()
        out = answer(body, self.server.handlers[name])
        self._send(200, json.dumps(out, separators=(",", ":")).encode())
        response = out["response"]
        log.debug("admission reviewed", path=name, allowed=response["allowed"],
                  ms=round((time.perf_counter() - started) * 1000, 2))

    def log_message(self, format: str, *args: Any) -> None:  # structlog instead
        pass


class WebhookServer:
    """Start with `start()` (binds, then serves on a daemon thread); `stop()` closes it."""

    def __init__(self, host: str, port: int, certificate: WebhookCertificate, handlers: dict[str, Handler]):
        self._server = _Server((host, port), certificate, handlers)
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, name="meshd-webhook", daemon=True)

    def start(self) -> WebhookServer:
        """Bind and serve. The first certificate is issued by `prepare()` (meshd's warm-up,
        after ready: an RSA key takes tens of milliseconds) or by the first caller."""
        self._thread.start()
        log.info("webhook server listening", port=self.port, paths=sorted(self._server.handlers),
                 dns_names=list(self._server.certificate.dns_names))
        return self

    def prepare(self) -> None:
        """The first certificate, before the first caller if called early enough."""
        self._server.certificate.context()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)
