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

`ClientCertAuthenticator` (istiod's ClientCertAuthenticator) takes the identity from a
TLS client certificate this CA issued: the SPIFFE ID in its URI SAN, after checking
that it chains to a root of the current trust bundle. It needs the connection's
gRPC auth context; authenticators that do set `needs_auth_context = True` and take it
as a third argument. gRPC Python cannot ask for a client certificate without also
requiring one, so meshd offers it on its own port (`--ca-mtls-port`, see app.py).
"""
from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any, Protocol, TypeGuard

from cryptography import x509

from ca import Identity, TokenAuthority, TokenError
from ca.clock import Clock, utc_now
from ca.tokens import DEFAULT_AUDIENCE

# Lower-case keys, as gRPC delivers them.
Metadata = Sequence[tuple[str, str | bytes]]

AUTHORIZATION = "authorization"
BEARER = "bearer"


class AuthenticationError(Exception):
    """A credential was presented and rejected. The message never contains the credential."""


class Authenticator(Protocol):
    name: str

    def authenticate(self, metadata: Metadata, peer: str) -> Identity | None | Awaitable[Identity | None]: ...


class ContextAuthenticator(Protocol):
    """An authenticator that also reads the gRPC auth context (`needs_auth_context = True`)."""

    name: str
    needs_auth_context: bool

    def authenticate(self, metadata: Metadata, peer: str,
                     auth_context: AuthContext | None) -> Identity | None | Awaitable[Identity | None]: ...


def _needs_auth_context(authn: Authenticator) -> TypeGuard[ContextAuthenticator]:
    return bool(getattr(authn, "needs_auth_context", False))


def normalize_metadata(metadata: Iterable[Any] | None) -> list[tuple[str, str | bytes]]:
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


AuthContext = Mapping[str, Sequence[bytes]]


class ClientCertAuthenticator:
    """The identity of a verified TLS client certificate (URI SAN spiffe://<td>/ns/<ns>/sa/<sa>).

    gRPC has verified the handshake against the port's client roots; this checks again,
    against the CA's trust bundle as it is now (`roots()`), and the validity period."""

    name = "client-cert"
    needs_auth_context = True

    def __init__(self, roots: Callable[[], Sequence[x509.Certificate]], trust_domain: str, *, clock: Clock = utc_now):
        self._roots = roots
        self._trust_domain = trust_domain
        self._clock = clock

    def authenticate(self, metadata: Metadata, peer: str, auth_context: AuthContext | None = None) -> Identity | None:
        pems = list((auth_context or {}).get("x509_pem_cert") or ())
        if not pems:
            return None
        try:
            leaf = x509.load_pem_x509_certificate(pems[0])
        except ValueError:
            raise AuthenticationError("client certificate is not a PEM certificate") from None
        chain_pems = list((auth_context or {}).get("x509_pem_cert_chain") or ())
        chain: list[x509.Certificate] = []
        for blob in chain_pems:
            try:
                chain += x509.load_pem_x509_certificates(blob)
            except ValueError:
                pass
        now: datetime = self._clock()
        if not (leaf.not_valid_before_utc <= now < leaf.not_valid_after_utc):
            raise AuthenticationError("client certificate is expired or not yet valid")
        if not _chains_to(leaf, [c for c in chain if c != leaf], list(self._roots())):
            raise AuthenticationError("client certificate does not chain to a trusted root")
        try:
            san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        except x509.ExtensionNotFound:
            raise AuthenticationError("client certificate has no SPIFFE ID (no SAN)") from None
        uris = san.get_values_for_type(x509.UniformResourceIdentifier)
        if len(uris) != 1:
            raise AuthenticationError(f"client certificate must carry exactly one URI SAN, has {len(uris)}")
        try:
            identity = Identity.from_spiffe_uri(uris[0])
        except ValueError as e:
            raise AuthenticationError(f"client certificate: {e}") from None
        if identity.trust_domain != self._trust_domain:
            raise AuthenticationError(f"client certificate is for trust domain {identity.trust_domain!r}")
        return identity


def _chains_to(leaf: x509.Certificate, intermediates: list[x509.Certificate], roots: list[x509.Certificate]) -> bool:
    """Does `leaf` lead to one of `roots` through `intermediates` (signatures only; the
    TLS stack checked the rest of the path)?"""
    current, pool = leaf, list(intermediates)
    for _ in range(len(pool) + 1):
        for root in roots:
            if current.issuer == root.subject:
                try:
                    current.verify_directly_issued_by(root)
                    return True
                except Exception:  # wrong key / algorithm: try the others
                    pass
        nxt = None
        for cand in pool:
            if current.issuer == cand.subject:
                try:
                    current.verify_directly_issued_by(cand)
                    nxt = cand
                    break
                except Exception:
                    continue
        if nxt is None:
            return False
        pool.remove(nxt)
        current = nxt
    return False


async def authenticate_stream(authenticators: Sequence[Authenticator], metadata: Metadata, peer: str,
                              auth_context: AuthContext | None = None) -> Identity:
    """The first identity any authenticator vouches for; AuthenticationError (with every
    authenticator's reason) when none does."""
    reasons = []
    for authn in authenticators:
        try:
            if _needs_auth_context(authn):
                result = authn.authenticate(metadata, peer, auth_context)
            else:
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
