"""An HTTPS echo for test pods: a server outside the mesh with a certificate of its own CA.

    python tls_echo.py --name secure --port 443 --cert cert.pem --key key.pem

Every request gets 200 and a JSON body naming the pod, the request, the SNI the client
sent and the TLS version, so a test can tell that a sidecar originated TLS (and with
which server name). Prints READY once it listens. Standard library only.
"""
from __future__ import annotations

import argparse
import http.server
import json
import socketserver
import ssl
import sys


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--name", required=True)
    ap.add_argument("--port", type=int, default=443)
    ap.add_argument("--cert", required=True)
    ap.add_argument("--key", required=True)
    args = ap.parse_args()

    sni_seen: dict[int, str] = {}

    def remember_sni(sock: ssl.SSLSocket, server_name: str | None, _ctx: ssl.SSLContext) -> None:
        sni_seen[id(sock)] = server_name or ""

    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(args.cert, args.key)
    ctx.sni_callback = remember_sni

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            conn = self.connection
            payload = json.dumps({
                "pod": args.name,
                "path": self.path,
                "host": self.headers.get("Host", ""),
                "sni": sni_seen.get(id(conn), ""),
                "tls": conn.version() if isinstance(conn, ssl.SSLSocket) else "",
                "peer": "{}:{}".format(*self.client_address[:2]),
            }).encode() + b"\n"
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, fmt: str, *a: object) -> None:
            sys.stderr.write(f"{self.address_string()} {fmt % a}\n")

    class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
        daemon_threads = True
        allow_reuse_address = True

        def get_request(self):  # type: ignore[no-untyped-def]
            sock, addr = super().get_request()
            return ctx.wrap_socket(sock, server_side=True), addr

    srv = Server(("0.0.0.0", args.port), Handler)
    print("READY", flush=True)
    srv.serve_forever()


if __name__ == "__main__":
    main()
