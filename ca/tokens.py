"""Minimal JWTs (RFC 7519, compact JWS RFC 7515, ES256 only) for "file mode".

Without Kubernetes there is no API server to issue and review service account
tokens, so meshd issues its own, shaped like a projected service account token
(``sub: system:serviceaccount:<ns>:<sa>``, ``aud: ["istio-ca"]``, the
``kubernetes.io`` claim), and verifies them when a workload asks for a certificate.

Only ES256 is accepted: the algorithm is fixed by us, never chosen by the token
header, which rules out ``alg: none`` and HS256-with-the-public-key confusion.
The signing key lives in ``<ca_dir>/token-key.pem`` (0600), created once.
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any, Literal, overload

import structlog
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature, encode_dss_signature

from .clock import Clock, utc_now
from .errors import CAStateError, TokenError
from .keys import (
    ensure_private_dir,
    locked_dir,
    private_key_from_pem,
    private_key_to_pem,
    read_private,
    write_private,
)

TOKEN_KEY_FILE = "token-key.pem"
DEFAULT_ISSUER = "meshd"
DEFAULT_AUDIENCE = "istio-ca"  # what istio-agent's CA client asks for
DEFAULT_TOKEN_TTL = timedelta(hours=24)
MAX_TOKEN_BYTES = 8192  # far above a real token; bounds work done on garbage

_ALG = "ES256"
_SIG_BYTES = 64  # JWS ES256 signature: r || s, 32 bytes each (RFC 7518 3.4), not DER
_B64URL = re.compile(rb"[A-Za-z0-9_-]*")
_SA_SUBJECT = re.compile(r"system:serviceaccount:([^:]+):([^:]+)")


# --- encoding ----------------------------------------------------------------


def b64url_encode(data: bytes) -> bytes:
    return base64.urlsafe_b64encode(data).rstrip(b"=")


def b64url_decode(data: bytes) -> bytes:
    """Strict unpadded base64url (RFC 7515 2): no padding, no whitespace, no '+' or '/'."""
    if not _B64URL.fullmatch(data) or len(data) % 4 == 1:
        raise TokenError("malformed token: segment is not base64url")
    try:
        return base64.urlsafe_b64decode(data + b"=" * (-len(data) % 4))
    except (binascii.Error, ValueError):
        raise TokenError("malformed token: segment is not base64url") from None


def _json_segment(data: bytes, what: str) -> dict[str, Any]:
    def no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        # Two parsers disagreeing on which duplicate wins is a classic JWT bypass.
        obj = dict(pairs)
        if len(obj) != len(pairs):
            raise TokenError(f"malformed token: duplicate member in {what}")
        return obj

    try:
        value = json.loads(b64url_decode(data), object_pairs_hook=no_duplicates)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        raise TokenError(f"malformed token: {what} is not JSON") from None
    if not isinstance(value, dict):
        raise TokenError(f"malformed token: {what} is not a JSON object")
    return value


def _compact_json(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, separators=(",", ":"), sort_keys=False).encode()


def _key_id(public_key: ec.EllipticCurvePublicKey) -> str:
    """RFC 7638 JWK thumbprint: a stable name for the key, for a future key rotation."""
    nums = public_key.public_numbers()
    jwk = {"crv": "P-256", "kty": "EC",
           "x": b64url_encode(nums.x.to_bytes(32, "big")).decode(),
           "y": b64url_encode(nums.y.to_bytes(32, "big")).decode()}
    return b64url_encode(hashlib.sha256(json.dumps(jwk, separators=(",", ":"), sort_keys=True).encode()).digest()).decode()


@overload
def _numeric_date(claims: dict[str, Any], name: str, required: Literal[True]) -> int: ...
@overload
def _numeric_date(claims: dict[str, Any], name: str, required: bool) -> int | None: ...
def _numeric_date(claims: dict[str, Any], name: str, required: bool) -> int | None:
    value = claims.get(name)
    if value is None:
        if required:
            raise TokenError(f"token has no '{name}' claim")
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TokenError(f"token claim '{name}' is not a NumericDate")
    return int(value)


# --- the authority -------------------------------------------------------------


@dataclass
class TokenAuthority:
    """Issues and verifies meshd's service account tokens with one ES256 key."""

    key: ec.EllipticCurvePrivateKey = field(repr=False)
    issuer: str = DEFAULT_ISSUER
    clock: Clock = utc_now
    # Zero by default: meshd both issues and verifies, on one clock.
    leeway: timedelta = timedelta(0)
    kid: str = field(init=False)  # RFC 7638 thumbprint of the public key, sent as the JWS "kid"

    def __post_init__(self) -> None:
        if not isinstance(self.key, ec.EllipticCurvePrivateKey) or not isinstance(self.key.curve, ec.SECP256R1):
            raise ValueError("ES256 needs an ECDSA P-256 private key")
        self._public_key = self.key.public_key()
        self.kid = _key_id(self._public_key)

    def issue(
        self,
        namespace: str,
        service_account: str,
        *,
        audience: Sequence[str] = (DEFAULT_AUDIENCE,),
        ttl: timedelta = DEFAULT_TOKEN_TTL,
    ) -> str:
        for what, value in (("namespace", namespace), ("service account", service_account)):
            if not value or ":" in value:
                raise ValueError(f"invalid {what} {value!r}")
        if isinstance(audience, str):
            audience = [audience]
        now = int(self.clock().timestamp())
        header = {"alg": _ALG, "typ": "JWT", "kid": self.kid}
        claims = {
            "iss": self.issuer,
            "sub": f"system:serviceaccount:{namespace}:{service_account}",
            "aud": list(audience),
            "iat": now,
            "nbf": now,
            "exp": now + int(ttl.total_seconds()),
            "kubernetes.io": {"namespace": namespace, "serviceaccount": {"name": service_account}},
        }
        signing_input = b64url_encode(_compact_json(header)) + b"." + b64url_encode(_compact_json(claims))
        r, s = decode_dss_signature(self.key.sign(signing_input, ec.ECDSA(hashes.SHA256())))
        signature = r.to_bytes(32, "big") + s.to_bytes(32, "big")
        return (signing_input + b"." + b64url_encode(signature)).decode("ascii")

    def verify(self, token: str | bytes, audience: str = DEFAULT_AUDIENCE) -> tuple[str, str]:
        """Check ``token`` and return the (namespace, service_account) it vouches for.

        Raises TokenError for anything but a well-formed, correctly signed, current
        ES256 token from this issuer for ``audience``. Error messages never echo
        the token (it is a credential).
        """
        raw = token.encode("ascii", "replace") if isinstance(token, str) else bytes(token)
        if len(raw) > MAX_TOKEN_BYTES:
            raise TokenError("malformed token: too long")
        parts = raw.strip().split(b".")
        if len(parts) != 3:
            raise TokenError("malformed token: expected three dot-separated segments (compact JWS)")
        header_b64, claims_b64, sig_b64 = parts

        header = _json_segment(header_b64, "header")
        alg = header.get("alg")
        if alg != _ALG:
            raise TokenError(f"token algorithm {alg!r} not accepted (only {_ALG})")
        if "crit" in header:
            raise TokenError("token header has 'crit' extensions, none are supported")
        if "kid" in header and header["kid"] != self.kid:
            raise TokenError("token signed by an unknown key")

        signature = b64url_decode(sig_b64)
        if len(signature) != _SIG_BYTES:
            raise TokenError("bad token signature: ES256 signature must be 64 bytes")
        r, s = int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:], "big")
        try:
            self._public_key.verify(encode_dss_signature(r, s), header_b64 + b"." + claims_b64,
                                    ec.ECDSA(hashes.SHA256()))
        except (InvalidSignature, ValueError):
            raise TokenError("bad token signature") from None

        # Only now, with the signature checked, are the claims worth reading.
        claims = _json_segment(claims_b64, "claims")
        if claims.get("iss") != self.issuer:
            raise TokenError(f"token issuer {claims.get('iss')!r} is not {self.issuer!r}")
        aud = claims.get("aud")
        auds = [aud] if isinstance(aud, str) else aud
        if not isinstance(auds, list) or audience not in auds:
            raise TokenError(f"token audience {aud!r} does not include {audience!r}")
        now = self.clock().timestamp()
        leeway = self.leeway.total_seconds()
        exp = _numeric_date(claims, "exp", required=True)
        if now >= exp + leeway:
            raise TokenError("token expired")
        nbf = _numeric_date(claims, "nbf", required=False)
        if nbf is not None and now < nbf - leeway:
            raise TokenError("token not valid yet")
        _numeric_date(claims, "iat", required=False)

        sub = claims.get("sub")
        match = _SA_SUBJECT.fullmatch(sub) if isinstance(sub, str) else None
        if not match:
            raise TokenError("token subject is not a service account (system:serviceaccount:<ns>:<sa>)")
        namespace, service_account = match.groups()
        k8s = claims.get("kubernetes.io")
        if k8s is not None:
            sa = k8s.get("serviceaccount") if isinstance(k8s, dict) else None
            if not isinstance(sa, dict) or k8s.get("namespace") != namespace or sa.get("name") != service_account:
                raise TokenError("token 'kubernetes.io' claim disagrees with its subject")
        return namespace, service_account


def load_or_create_token_key(
    ca_dir: Path, *, logger: structlog.typing.FilteringBoundLogger | None = None
) -> ec.EllipticCurvePrivateKey:
    """The ES256 token signing key from ``<ca_dir>/token-key.pem``, created (0600) once."""
    log = logger or structlog.get_logger("meshd.ca")
    ca_dir = Path(ca_dir)
    ensure_private_dir(ca_dir)
    path = ca_dir / TOKEN_KEY_FILE
    with locked_dir(ca_dir):
        if path.exists():
            try:
                key = private_key_from_pem(read_private(path))
            except ValueError as e:
                raise CAStateError(f"{path}: {e}") from None
            if not isinstance(key, ec.EllipticCurvePrivateKey) or not isinstance(key.curve, ec.SECP256R1):
                raise CAStateError(f"{path}: token signing key must be ECDSA P-256 (ES256)")
            event = "token signing key loaded"
        else:
            key = ec.generate_private_key(ec.SECP256R1())  # generate_private_key("ec-p256"), typed
            write_private(path, private_key_to_pem(key))
            event = "token signing key created"
    log.info(event, key_path=str(path), kid=_key_id(key.public_key()))
    return key
