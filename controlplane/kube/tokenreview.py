"""Kubernetes mode: a proxy's ServiceAccount token, checked by the API server.

A pod's istio-proxy sends its projected ServiceAccount token (audience `istio-ca`) as
`authorization: Bearer <jwt>`. meshd cannot verify it by itself (the cluster's key signs
it), so it asks the API server, as istiod does (security/pkg/k8s/tokenreview):

    POST /apis/authentication.k8s.io/v1/tokenreviews
    {"spec": {"token": "<jwt>", "audiences": ["istio-ca"]}}

and accepts the caller only if the review says `authenticated: true`, the user is a
service account (`system:serviceaccount:<ns>:<sa>`, in group `system:serviceaccounts`)
and the API server vouches for the audience (`status.audiences` contains `istio-ca`:
an API server that is not audience-aware would accept a token minted for anything, see
the TokenReview API reference). The identity is then `spiffe://<td>/ns/<ns>/sa/<sa>`,
and the stream goes through the same authorization as a file-mode token
(security/authz.py: the node must claim that namespace and service account, else
PERMISSION_DENIED).

    authenticators = [MeshdTokens(JwtAuthenticator(...)), TokenReviewAuthenticator(kube_api, td)]

Both kinds of token can be in use at once (Kubernetes pods, and proxies bootstrapped
with `meshd token`). Each token goes to exactly one authenticator, chosen by its
(unverified) issuer: meshd's own tokens to the JWT check, every other token to the API
server, so meshd's tokens never leave meshd and a Kubernetes token is never judged by
a key that did not sign it. The issuer only routes: each path verifies everything.

Results: an accepted review is cached (keyed by the token's SHA-256, never the token)
for `cache_ttl`, at most until the token's own `exp`, so a reconnect storm of thousands
of proxies costs one review per token; rejections are not cached. An API server that
cannot be asked (down, 5xx, meshd not allowed to create TokenReviews) is an
AuthenticationError naming the failure: the proxy is refused (UNAUTHENTICATED) and
retries, as it would with istiod.
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import json
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Any

import structlog

from ca import Identity
from ca.tokens import DEFAULT_AUDIENCE, DEFAULT_ISSUER, MAX_TOKEN_BYTES

from ..security.authn import AuthenticationError, Authenticator, Metadata, bearer_token
from .api import ApiError, KubeApi

TOKEN_REVIEW_PATH = "/apis/authentication.k8s.io/v1/tokenreviews"
SERVICE_ACCOUNTS_GROUP = "system:serviceaccounts"
SERVICE_ACCOUNT_PREFIX = "system:serviceaccount:"

DEFAULT_CACHE_TTL = 60.0
DEFAULT_CACHE_SIZE = 10_000


def unverified_issuer(token: str) -> str | None:
    """The `iss` claim of a compact JWS, read without checking anything; None when the
    token is not a JWT with a string issuer. For routing only: never trust it."""
    parts = token.split(".")
    if len(parts) != 3 or len(token) > MAX_TOKEN_BYTES:
        return None
    claims = _claims(parts[1])
    iss = claims.get("iss") if claims else None
    return iss if isinstance(iss, str) else None


def _claims(segment: str) -> dict[str, Any] | None:
    try:
        value = json.loads(base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4)))
    except (binascii.Error, ValueError, UnicodeDecodeError, RecursionError):
        return None
    return value if isinstance(value, dict) else None


def _unverified_expiry(token: str) -> float | None:
    parts = token.split(".")
    claims = _claims(parts[1]) if len(parts) == 3 else None
    exp = claims.get("exp") if claims else None
    return float(exp) if isinstance(exp, (int, float)) and not isinstance(exp, bool) else None


class MeshdTokens:
    """Wraps meshd's JwtAuthenticator so that it only judges tokens meshd issued (the
    rest are "no credential of my kind" and go on to the next authenticator)."""

    def __init__(self, inner: Authenticator, issuer: str = DEFAULT_ISSUER):
        self._inner = inner
        self._issuer = issuer
        self.name = inner.name

    def authenticate(self, metadata: Metadata, peer: str) -> Identity | None | Awaitable[Identity | None]:
        token = bearer_token(metadata)
        if token is None or unverified_issuer(token) != self._issuer:
            return None
        return self._inner.authenticate(metadata, peer)


class TokenReviewAuthenticator:
    name = "tokenreview"
    awaits_io = True  # authenticate() is a coroutine: only for callers that await it

    def __init__(
        self,
        api: KubeApi,
        trust_domain: str,
        *,
        audience: str = DEFAULT_AUDIENCE,
        skip_issuer: str | None = DEFAULT_ISSUER,
        cache_ttl: float = DEFAULT_CACHE_TTL,
        cache_size: int = DEFAULT_CACHE_SIZE,
        timeout: float = 5.0,
        clock: Callable[[], float] = time.time,
        logger: Any = None,
    ):
        self._api = api
        self._trust_domain = trust_domain
        self._audience = audience
        self._skip_issuer = skip_issuer
        self._cache_ttl = cache_ttl
        self._cache_size = cache_size
        self._timeout = timeout
        self._clock = clock
        self._cache: OrderedDict[bytes, tuple[float, Identity]] = OrderedDict()
        self._log = logger if logger is not None else structlog.get_logger("meshd.authn")
        self.reviews = 0  # TokenReviews sent (for tests and metrics)

    async def authenticate(self, metadata: Metadata, peer: str) -> Identity | None:
        token = bearer_token(metadata)
        if token is None:
            return None
        if self._skip_issuer and unverified_issuer(token) == self._skip_issuer:
            return None  # meshd's own token: the JWT authenticator's to judge
        if len(token) > MAX_TOKEN_BYTES:
            raise AuthenticationError("token too long")
        digest = hashlib.sha256(token.encode()).digest()
        now = self._clock()
        hit = self._cache.get(digest)
        if hit is not None:
            if hit[0] > now:
                self._cache.move_to_end(digest)
                return hit[1]
            del self._cache[digest]
        identity = await self._review(token)
        if self._cache_ttl > 0:
            until = now + self._cache_ttl
            exp = _unverified_expiry(token)  # the API server said it is valid: exp is honest
            if exp is not None:
                until = min(until, exp)
            if until > now:
                self._cache[digest] = (until, identity)
                while len(self._cache) > self._cache_size:
                    self._cache.popitem(last=False)
        return identity

    async def _review(self, token: str) -> Identity:
        body = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview",
                "spec": {"token": token, "audiences": [self._audience]}}
        self.reviews += 1
        try:
            review = await self._api.call("POST", TOKEN_REVIEW_PATH, body, timeout=self._timeout)
        except ApiError as e:  # the message is the API server's, never the token
            self._log.warning("token review failed", status=e.status, reason=e.reason, error=e.message[:200])
            raise AuthenticationError(f"TokenReview failed: HTTP {e.status} {e.reason}".strip()) from None
        return self.identity_from_review(review)

    def identity_from_review(self, review: dict[str, Any]) -> Identity:
        """The identity a TokenReview answer vouches for, or AuthenticationError."""
        status = review.get("status") if isinstance(review, dict) else None
        if not isinstance(status, dict):
            raise AuthenticationError("TokenReview answer has no status")
        if status.get("error"):
            # The API server's reason ("invalid bearer token, token audiences ... is invalid ...").
            raise AuthenticationError(f"token rejected by the API server: {str(status['error'])[:300]}")
        if status.get("authenticated") is not True:
            raise AuthenticationError("token rejected by the API server: not authenticated")
        audiences = status.get("audiences")
        if not isinstance(audiences, list) or self._audience not in audiences:
            raise AuthenticationError(f"the API server did not confirm audience {self._audience!r} "
                                      f"(token audiences: {audiences!r})")
        user = status.get("user")
        user = user if isinstance(user, dict) else {}
        groups = user.get("groups")
        groups = groups if isinstance(groups, list) else []
        username = user.get("username")
        if SERVICE_ACCOUNTS_GROUP not in groups or not isinstance(username, str) \
                or not username.startswith(SERVICE_ACCOUNT_PREFIX):
            raise AuthenticationError(f"token is not a service account's (user {username!r})")
        parts = username.split(":")
        if len(parts) != 4:
            raise AuthenticationError(f"invalid service account user name {username!r}")
        try:
            return Identity(self._trust_domain, parts[2], parts[3])
        except ValueError as e:
            raise AuthenticationError(f"token names an invalid identity: {e}") from None
