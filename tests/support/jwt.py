"""JSON Web Tokens for tests: an issuer with an RSA (RS256) or EC P-256 (ES256) key, its
JWKS, and tokens signed with it (or forged, or expired), made with `cryptography`.

    issuer = Issuer("https://issuer.example", "RS256")
    token = issuer.token(sub="alice", group="admins")
    issuer.jwks()          # the JWKS document (JSON text) with the public key
    server = KeyServer(); server.routes["/jwks"] = (200, issuer.jwks())   # at server.url + "/jwks"
"""
from __future__ import annotations

import base64
import http.server
import json
import threading
import time
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _int(i: int, size: int | None = None) -> str:
    return b64url(i.to_bytes(size or (i.bit_length() + 7) // 8, "big"))


class Issuer:
    def __init__(self, iss: str, alg: str = "RS256", kid: str = "k1"):
        self.iss, self.alg, self.kid = iss, alg, kid
        if alg == "RS256":
            self._key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        elif alg == "ES256":
            self._key = ec.generate_private_key(ec.SECP256R1())
        else:
            raise ValueError(alg)

    def jwk(self) -> dict:
        pub = self._key.public_key().public_numbers()
        if self.alg == "RS256":
            return {"kty": "RSA", "kid": self.kid, "alg": "RS256", "use": "sig", "n": _int(pub.n), "e": _int(pub.e)}
        return {"kty": "EC", "kid": self.kid, "alg": "ES256", "use": "sig", "crv": "P-256",
                "x": _int(pub.x, 32), "y": _int(pub.y, 32)}

    def jwks(self) -> str:
        return json.dumps({"keys": [self.jwk()]})

    def sign(self, claims: dict[str, Any]) -> str:
        header = {"alg": self.alg, "typ": "JWT", "kid": self.kid}
        signing_input = f"{b64url(json.dumps(header).encode())}.{b64url(json.dumps(claims).encode())}".encode()
        if self.alg == "RS256":
            sig = self._key.sign(signing_input, padding.PKCS1v15(), hashes.SHA256())
        else:
            r, s = decode_dss_signature(self._key.sign(signing_input, ec.ECDSA(hashes.SHA256())))
            sig = r.to_bytes(32, "big") + s.to_bytes(32, "big")  # JWS: raw r || s
        return f"{signing_input.decode()}.{b64url(sig)}"

    def token(self, sub: str = "alice", *, expires_in: float = 3600, **claims: Any) -> str:
        now = int(time.time())
        return self.sign({"iss": self.iss, "sub": sub, "iat": now, "exp": now + int(expires_in), **claims})


def forged(token: str, **changes: Any) -> str:
    """`token` with its payload changed and the signature kept: no key verifies it."""
    header, payload, sig = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims.update(changes)
    return f"{header}.{b64url(json.dumps(claims).encode())}.{sig}"


class KeyServer:
    """A local HTTP server for key sets: `routes` maps a path to (status, body); `/hang`
    never answers until the server stops. `hits` counts requests per path."""

    def __init__(self):
        self.routes: dict[str, tuple[int, str]] = {}
        self.hits: dict[str, int] = {}
        self._release = threading.Event()
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                server.hits[self.path] = server.hits.get(self.path, 0) + 1
                if self.path == "/hang":
                    server._release.wait(10)
                    return
                status, body = server.routes.get(self.path, (404, "not found"))
                data = body.encode()
                self.send_response(status)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def close(self):
        self._release.set()
        self.httpd.shutdown()
        self.httpd.server_close()
