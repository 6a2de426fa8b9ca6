"""An in-process stand-in for the Gateway API conformance suite's echo-basic backend.

Every request gets a JSON body with what echo-basic reports: path (with the query), host,
method, proto, headers (canonical name -> values), namespace, pod. As echo-basic does it
honours `?delay=<n>s|ms` (sleeps first) and the request header `X-Echo-Set-Header:
Name:value,Name2:value2` (response headers to add). Each server records what it saw, so a
test can tell that a mirrored copy arrived.
"""
from __future__ import annotations

import base64
import contextlib
import hashlib
import http.server
import json
import socketserver
import ssl
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from concurrent import futures
from dataclasses import dataclass, field
from typing import Any

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
        if self.headers.get("Upgrade", "").lower() == "websocket":
            self._websocket()
            return
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

    def _websocket(self) -> None:
        """echo-basic's websocket echo: every message comes back as it was sent (RFC 6455)."""
        key = self.headers.get("Sec-WebSocket-Key", "")
        self.send_response(101)
        self.send_header("Upgrade", "websocket")
        self.send_header("Connection", "Upgrade")
        self.send_header("Sec-WebSocket-Accept", websocket_accept(key))
        self.end_headers()
        self.wfile.flush()
        with self.pod.lock:
            self.pod.seen.append({"path": self.path, "websocket": True})
        while True:
            frame = read_ws_frame(self.rfile)
            if frame is None:
                break
            opcode, payload = frame
            self.wfile.write(ws_frame(opcode, payload))
            self.wfile.flush()
            if opcode == WS_CLOSE:
                break
        self.close_connection = True

    do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = do_PATCH = do_OPTIONS = _answer

    def log_message(self, fmt: str, *args) -> None:
        pass


# --- websocket frames (RFC 6455), for the echo above and the tests' client ----------------

WS_TEXT, WS_BINARY, WS_CLOSE = 0x1, 0x2, 0x8


def websocket_accept(key: str) -> str:
    return base64.b64encode(hashlib.sha1((key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11").encode()).digest()).decode()


def ws_frame(opcode: int, payload: bytes, mask: bytes = b"") -> bytes:
    """One final frame; a client's is masked (`mask`: 4 bytes), a server's is not."""
    head = bytes([0x80 | opcode])
    flag = 0x80 if mask else 0
    n = len(payload)
    if n < 126:
        head += bytes([flag | n])
    elif n < 1 << 16:
        head += bytes([flag | 126]) + n.to_bytes(2, "big")
    else:
        head += bytes([flag | 127]) + n.to_bytes(8, "big")
    if mask:
        payload = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return head + mask + payload


def read_ws_frame(reader: Any) -> tuple[int, bytes] | None:
    """(opcode, unmasked payload) of the next frame; None at the end of the stream."""
    head = reader.read(2)
    if len(head) < 2:
        return None
    opcode, masked, n = head[0] & 0x0F, head[1] & 0x80, head[1] & 0x7F
    if n == 126:
        n = int.from_bytes(reader.read(2), "big")
    elif n == 127:
        n = int.from_bytes(reader.read(8), "big")
    mask = reader.read(4) if masked else b""
    payload = reader.read(n)
    if mask:
        payload = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return opcode, payload


class _TlsHTTPServer(http.server.ThreadingHTTPServer):
    daemon_threads = True
    ctx: ssl.SSLContext

    def get_request(self):  # type: ignore[no-untyped-def]
        sock, addr = super().get_request()
        # the handshake happens in the request's thread, on its first read
        return self.ctx.wrap_socket(sock, server_side=True, do_handshake_on_connect=False), addr


@contextlib.contextmanager
def echo_pod(namespace: str, pod: str, ip: str, port: int, tls_port: int | None = None,
             cert: tuple[str, str] | None = None) -> Iterator[EchoPod]:
    """echo-basic of `namespace`/`pod` listening on ip:port for the block (and, as with
    TLS_SERVER_CERT, HTTPS on ip:tls_port with `cert`: (certificate file, key file))."""
    state = EchoPod(namespace, pod)
    handler = type("Handler", (_Handler,), {"pod": state})
    srv = http.server.ThreadingHTTPServer((ip, port), handler)
    srv.daemon_threads = True
    with contextlib.ExitStack() as stack:
        stack.enter_context(serving(srv))
        if tls_port is not None and cert is not None:
            secure = _TlsHTTPServer((ip, tls_port), handler)
            secure.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            secure.ctx.load_cert_chain(*cert)
            stack.enter_context(serving(secure))
        yield state


# --- echo-basic's TCP mode (TCP_ECHO_SERVER=1) --------------------------------------------
# On connect it greets with WELCOME; a line `TEST` is answered with one JSON line (namespace,
# pod, isTLS and, over TLS, tls.serverName: the SNI the backend saw), `IS_TLS` with
# true/false, `PING` with PONG. Plain TCP on one port, TLS (when given a certificate) on
# another, as echo-basic listens on TCP_PORT and TLS_PORT.

TCP_WELCOME = b"Gateway API Test TCP Server\n"


class _TcpHandler(socketserver.StreamRequestHandler):
    pod: EchoPod
    cert: tuple[str, str] | None = None  # (certificate file, key file): this port speaks TLS

    def handle(self) -> None:
        sock, names = self.connection, []
        if self.cert is not None:
            # a context per connection: its SNI callback records this connection's name
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(*self.cert)

            def remember(_sock: ssl.SSLObject, name: str | None, _ctx: ssl.SSLContext) -> None:
                names.append(name or "")
            ctx.sni_callback = remember
            try:
                sock = ctx.wrap_socket(sock, server_side=True)
            except (ssl.SSLError, OSError):
                return
        answer: dict[str, object] = {"namespace": self.pod.namespace, "pod": self.pod.pod,
                                     "isTLS": self.cert is not None}
        if self.cert is not None:
            answer["tls"] = {"serverName": names[0] if names else ""}
        with self.pod.lock:
            self.pod.seen.append({"path": "", **answer})
        reader = sock.makefile("rb")
        try:
            sock.sendall(TCP_WELCOME)
            for line in reader:
                word = line.strip()
                if word == b"TEST":
                    sock.sendall(json.dumps(answer).encode() + b"\n")
                elif word == b"IS_TLS":
                    sock.sendall(b"true\n" if self.cert is not None else b"false\n")
                elif word == b"PING":
                    sock.sendall(b"PONG\n")
        except OSError:
            pass
        finally:
            reader.close()


class _TcpServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True


@contextlib.contextmanager
def tcp_echo_pod(namespace: str, pod: str, ip: str, port: int, tls_port: int | None = None,
                 cert_file: str = "", key_file: str = "") -> Iterator[EchoPod]:
    """echo-basic of `namespace`/`pod` in TCP mode on ip:port (and TLS on ip:tls_port with
    that certificate) for the block."""
    state = EchoPod(namespace, pod)
    with contextlib.ExitStack() as stack:
        plain = _TcpServer((ip, port), type("Handler", (_TcpHandler,), {"pod": state}))
        stack.enter_context(serving(plain))
        if tls_port is not None:
            secure = _TcpServer((ip, tls_port), type("Handler", (_TcpHandler,),
                                                     {"pod": state, "cert": (cert_file, key_file)}))
            stack.enter_context(serving(secure))
        yield state


# --- echo-basic's gRPC mode (GRPC_ECHO_SERVER=1) -------------------------------------------
# Any method (gateway_api_conformance.echo_basic.grpcecho.GrpcEcho/Echo, EchoTwo, ...) is
# answered with what the backend saw, as JSON bytes rather than echo-basic's protobuf (the
# gateway routes on the method path and metadata only): method, authority, metadata,
# namespace, pod.

GRPC_SERVICE = "gateway_api_conformance.echo_basic.grpcecho.GrpcEcho"


@contextlib.contextmanager
def grpc_echo_pod(namespace: str, pod: str, ip: str, port: int) -> Iterator[EchoPod]:
    """echo-basic of `namespace`/`pod` in gRPC mode (h2c) on ip:port for the block."""
    import grpc  # only the gRPC cases need it

    state = EchoPod(namespace, pod)

    def answer(method: str) -> Callable[[bytes, grpc.ServicerContext], bytes]:
        def echo(request: bytes, context: grpc.ServicerContext) -> bytes:
            headers: dict[str, list[str]] = {}
            for k, v in context.invocation_metadata():
                headers.setdefault(k, []).append(v if isinstance(v, str) else v.decode())
            seen = {"path": method, "method": method.rsplit("/", 1)[-1], "headers": headers,
                    "namespace": namespace, "pod": pod}
            with state.lock:
                state.seen.append(seen)
            return json.dumps(seen).encode()
        return echo

    class AnyMethod(grpc.GenericRpcHandler):
        def service(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler:
            return grpc.unary_unary_rpc_method_handler(answer(details.method))

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8), handlers=[AnyMethod()])
    server.add_insecure_port(f"{ip}:{port}")
    server.start()
    try:
        yield state
    finally:
        server.stop(None)
