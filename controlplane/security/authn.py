"""Authenticating an xDS stream: gRPC metadata (and the peer) -> an `Identity`.

The interface is istiod's (pkg/security Authenticator) made small:

    authenticate(metadata, peer) -> Identity | None     (may also be awaitable)

- return an Identity: the caller is that workload;
- return None: this authenticator found no credential of its kind (the next one tries);
- raise AuthenticationError: a credential was presented and is not acceptable.

`authenticate_stream` runs a list of authenticators as istiod does: the first identity
wins, and only when none produces one is the stream refused (UNAUTHENTICATED). A
Kubernetes TokenReview authenticator will do I/O, so results may be awaitables.

File mode uses `JwtAuthenticator`: `authorization: Bearer <jwt>` signed by meshd's own
token key (ca.tokens.TokenAuthority, as minted by `meshd token`), audience `istio-ca`
(what istio-agent's CA client asks Kubernetes for).
"""
from __future__ import annotations

import inspect
from typing import Awaitable, Iterable, Protocol, Sequence, Union

from ca import Identity, TokenAuthority, TokenError
from ca.tokens import DEFAULT_AUDIENCE

# Lower-case keys, as gRPC delivers them.
Metadata = Sequence[tuple[str, Union[str, bytes]]]

AUTHORIZATION = "authorization"
BEARER = "bearer"


class AuthenticationError(Exception):
    """A credential was presented and rejected. The message never contains the credential."""


class Authenticator(Protocol):
    name: str

    def authenticate(self, metadata: Metadata, peer: str) -> "Identity | None | Awaitable[Identity | None]": ...


def normalize_metadata(metadata: Iterable) -> list[tuple[str, str | bytes]]:
    """gRPC metadata (tuples or _Metadatum items) as (lower-case key, value) pairs."""
    return [(str(k).lower(), v) for k, v in (tuple(m) for m in (metadata or ()))]


def bearer_token(metadata: Metadata) -> str | None:
    """The token of `authorization: Bearer <token>`; None if there is no authorization
    header. Anything else that is not exactly one bearer token is an AuthenticationError."""
    values = [v for k, v in metadata if k == AUTHORIZATION]
    if not values:
        return None
    if len(values) > 1:
        raise AuthenticationError("more than one authorization header")
    value = values[0]
    if isinstance(value, bytes):
        value = value.decode("ascii", "replace")
    scheme, _, token = value.strip().partition(" ")
    if scheme.lower() != BEARER or not token.strip():
        raise AuthenticationError("authorization header is not 'Bearer <token>'")
    return token.strip()


class JwtAuthenticator:
    """File mode: meshd-signed service account tokens."""

    name = "jwt"

    def __init__(self, tokens: TokenAuthority, trust_domain: str, audience: str = DEFAULT_AUDIENCE):
        self._tokens = tokens
        self._trust_domain = trust_domain
        self._audience = audience

    def authenticate(self, metadata: Metadata, peer: str) -> Identity | None:
        token = bearer_token(metadata)
        if token is None:
            return None
        try:
            namespace, service_account = self._tokens.verify(token, audience=self._audience)
            return Identity(self._trust_domain, namespace, service_account)
        except TokenError as e:  # messages never echo the token
            raise AuthenticationError(str(e)) from None
        except ValueError as e:  # a validly signed token naming an impossible identity
            raise AuthenticationError(f"token names an invalid identity: {e}") from None


async def authenticate_stream(authenticators: Sequence[Authenticator], metadata: Metadata, peer: str) -> Identity:
    """The first identity any authenticator vouches for; AuthenticationError (with every
    authenticator's reason) when none does."""
    reasons = []
    for authn in authenticators:
        try:
            result = authn.authenticate(metadata, peer)
            if inspect.isawaitable(result):
                result = await result
        except AuthenticationError as e:
            reasons.append(f"{authn.name}: {e}")
            continue
        if result is not None:
            return result
        reasons.append(f"{authn.name}: no credential")
    raise AuthenticationError("; ".join(reasons) or "no authenticator configured")
