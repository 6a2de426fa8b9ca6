"""SDS secrets every Istio proxy asks for, served on its ADS stream.

- `ROOTCA`: the trust bundle, `validation_context.trusted_ca` = the root PEM. Not a
  secret; served on any connection.
- `default`: the proxy's own certificate and key, `tls_certificate` with
  `certificate_chain` = leaf + root PEM (what istio-agent serves: the CA's whole
  response chain, security/pkg/nodeagent/cache/secretcache.go generateNewSecret) and
  `private_key` = the PKCS#8 key PEM. Served only to a connection whose authenticated
  identity is the node's own (authz.identity_mismatch); otherwise withheld, and the
  reason reported to the caller for logging.

This is deliberately not part of the generator cache (generators are pure and share
output between proxies with the same config; a key must never be shared across
identities). Certificates are cached per identity instead: the proxies of one service
account share one certificate, reissued on a request once less than half of its
lifetime remains (rotation pushes come with a later issue). Issuance runs in a worker
thread (key generation and signing are CPU work) and concurrent requests for one
identity wait for a single issuance.

Resource versions are hashes of the certificate chain, never of the key.
"""
from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Protocol

import structlog
from cryptography import x509
from envoy.config.core.v3 import base_pb2
from envoy.extensions.transport_sockets.tls.v3 import common_pb2, secret_pb2
from google.protobuf import any_pb2

from ca import DEFAULT_WORKLOAD_TTL, CertificateAuthority, Identity
from ca.clock import Clock, utc_now
from ca.keys import KeyType
from ca.root import fingerprint

from .. import names
from ..generators.resources import Resource
from ..model.proxy import Proxy
from .authority import MeshCA
from .authz import identity_mismatch

PLAINTEXT_REASON = "connection is not authenticated (plaintext xDS port): workload keys are only sent over the secure port"


@dataclass(frozen=True)
class SecretAnswer:
    resources: list[Resource]
    withheld: Mapping[str, str] = field(default_factory=dict)  # secret name -> why not sent


class SecretProvider(Protocol):
    """What the ADS server asks for the SDS names it does not generate itself."""

    names: frozenset[str]

    async def secrets(self, proxy: Proxy, identity: Identity | None, requested: Sequence[str]) -> SecretAnswer: ...


@dataclass(frozen=True)
class IssuedCert:
    identity: Identity
    serial: int
    issued_at: datetime
    not_after: datetime
    resource: Resource = field(repr=False)  # the packed `default` Secret: holds the key
    signer_fingerprint: str = ""  # the CA certificate that signed it
    root_fingerprint: str = ""  # the root it chains to

    @property
    def lifetime(self) -> timedelta:
        return self.not_after - self.issued_at

    def due(self, now: datetime) -> bool:
        """Reissue once less than half of the lifetime remains."""
        return now >= self.issued_at + (self.not_after - self.issued_at) / 2


def _pack(name: str, msg: secret_pb2.Secret, version_source: bytes) -> Resource:
    data = msg.SerializeToString(deterministic=True)
    return Resource(
        name=name,
        type_url=names.SECRET,
        any=any_pb2.Any(type_url=names.SECRET, value=data),
        version=hashlib.sha256(version_source).hexdigest()[:16],
    )


def root_secret(root_pem: bytes, name: str = names.SDS_ROOT) -> Resource:
    msg = secret_pb2.Secret(
        name=name,
        validation_context=common_pb2.CertificateValidationContext(trusted_ca=base_pb2.DataSource(inline_bytes=root_pem)),
    )
    return _pack(name, msg, root_pem)


def key_secret(chain_pem: bytes, key_pem: bytes, name: str = names.SDS_DEFAULT) -> Resource:
    msg = secret_pb2.Secret(
        name=name,
        tls_certificate=common_pb2.TlsCertificate(
            certificate_chain=base_pb2.DataSource(inline_bytes=chain_pem),
            private_key=base_pb2.DataSource(inline_bytes=key_pem),
        ),
    )
    return _pack(name, msg, chain_pem)


class WorkloadSecrets:
    """`default` and `ROOTCA` from meshd's CA."""

    names = frozenset({names.SDS_DEFAULT, names.SDS_ROOT})

    def __init__(
        self,
        ca: CertificateAuthority | MeshCA,
        trust_domain: str,
        ttl: timedelta = DEFAULT_WORKLOAD_TTL,
        *,
        key_type: KeyType = "ec-p256",
        clock: Clock = utc_now,
        metrics: Any = None,
        logger: Any = None,
        renew_on_request: bool = True,
        executor: ThreadPoolExecutor | None = None,
    ) -> None:
        self._ca = ca
        self._trust_domain = trust_domain
        self._ttl = ttl
        self._key_type = key_type
        self._clock = clock
        self._metrics = metrics
        self._log = logger if logger is not None else structlog.get_logger("meshd.sds")
        self._root_pem = b""
        self._root = self._root_resource()
        self._certs: dict[Identity, IssuedCert] = {}
        self._inflight: dict[Identity, asyncio.Future[IssuedCert]] = {}
        # False once a rotation scheduler renews ahead of time (see module docstring).
        self.renew_on_request = renew_on_request
        self._executor = executor
        self._listeners: list[Callable[[IssuedCert], None]] = []

    @property
    def ttl(self) -> timedelta:
        return self._ttl

    @property
    def key_type(self) -> KeyType:
        return self._key_type

    def on_issued(self, fn: Callable[[IssuedCert], None]) -> None:
        """Call `fn(cert)` (on the event loop) after every workload certificate issued."""
        self._listeners.append(fn)

    def _root_resource(self) -> Resource:
        """ROOTCA for the CA's current trust bundle (re-packed only when it changed)."""
        pem = self._ca.root_cert_pem
        if pem != self._root_pem:
            self._root_pem = pem
            self._root = root_secret(pem)
        return self._root

    def current_signer(self) -> str | None:
        """Fingerprint of the CA certificate issuing now (None if the CA cannot say)."""
        return getattr(self._ca, "signer_fingerprint", None)

    def cached(self, identity: Identity) -> IssuedCert | None:
        return self._certs.get(identity)

    def forget(self, identity: Identity) -> None:
        """Drop the cached certificate (nobody holds it any more): the next request issues."""
        self._certs.pop(identity, None)

    @property
    def trust_domain(self) -> str:
        return self._trust_domain

    def certificates(self) -> list[IssuedCert]:
        """The cached certificates (for debug views: never print `resource`, it holds the key)."""
        return sorted(self._certs.values(), key=lambda c: c.identity)

    async def secrets(self, proxy: Proxy, identity: Identity | None, requested: Sequence[str]) -> SecretAnswer:
        out: list[Resource] = []
        withheld: dict[str, str] = {}
        for name in requested:
            if name == names.SDS_ROOT:
                out.append(self._root_resource())
            elif name == names.SDS_DEFAULT:
                reason = self._refuse(proxy, identity)
                if reason:
                    withheld[name] = reason
                else:
                    assert identity is not None
                    out.append((await self.certificate(identity, proxy.id)).resource)
        return SecretAnswer(out, withheld)

    def _refuse(self, proxy: Proxy, identity: Identity | None) -> str | None:
        if identity is None:
            return PLAINTEXT_REASON
        if identity.trust_domain != self._trust_domain:
            return f"identity {identity} is not in trust domain {self._trust_domain!r}"
        return identity_mismatch(proxy, identity)

    async def certificate(self, identity: Identity, requested_by: str = "") -> IssuedCert:
        """The current certificate of `identity`, issued (once, however many ask) when
        there is none, it expired, or (renew_on_request) less than half of its lifetime
        remains."""
        current = self._certs.get(identity)
        now = self._clock()
        if current is not None and now < current.not_after and not (self.renew_on_request and current.due(now)):
            return current
        return await self._issue_shared(identity, requested_by, current, "renewal" if current is not None else "first request")

    async def renew(self, identity: Identity, reason: str = "rotation") -> IssuedCert:
        """Issue a new certificate for `identity` now (the rotation scheduler's call);
        joins an issuance already running for it."""
        return await self._issue_shared(identity, reason, self._certs.get(identity), reason, fallback=False)

    async def _issue_shared(self, identity: Identity, requested_by: str, current: IssuedCert | None,
                            reason: str, *, fallback: bool = True) -> IssuedCert:
        fut = self._inflight.get(identity)
        if fut is None:
            fut = asyncio.ensure_future(self._issue(identity, requested_by, reason))
            self._inflight[identity] = fut

            def done(f: asyncio.Future[IssuedCert], identity: Identity = identity) -> None:
                if self._inflight.get(identity) is f:
                    del self._inflight[identity]
                if not f.cancelled():
                    f.exception()  # retrieved: waiters see it; no "never retrieved" warning

            fut.add_done_callback(done)
        try:
            # shield: a proxy disconnecting mid-issuance must not cancel it for the others.
            return await asyncio.shield(fut)
        except Exception as e:
            if fallback and current is not None and self._clock() < current.not_after:
                # A failed renewal is not an outage: the current certificate is still valid.
                self._log.warning("cert renewal failed, serving the current certificate",
                                  identity=identity.spiffe_uri, serial=f"{current.serial:x}", error=repr(e))
                return current
            raise

    async def _issue(self, identity: Identity, requested_by: str, reason: str) -> IssuedCert:
        issued_at = self._clock()
        try:
            kc = await asyncio.get_running_loop().run_in_executor(
                self._executor, self._ca.issue_workload, identity, self._ttl, self._key_type)
        except Exception:
            if self._metrics is not None:
                self._metrics.cert_issue_failed("workload")
            raise
        chain = x509.load_pem_x509_certificates(kc.chain_pem)  # leaf, intermediates..., root
        leaf = chain[0]
        cert = IssuedCert(
            identity=identity,
            serial=leaf.serial_number,
            issued_at=issued_at,
            not_after=leaf.not_valid_after_utc,
            resource=key_secret(kc.chain_pem, kc.key_pem),
            signer_fingerprint=fingerprint(chain[1]) if len(chain) > 1 else "",
            root_fingerprint=fingerprint(chain[-1]) if len(chain) > 1 else "",
        )
        self._certs[identity] = cert
        self._evict_expired(issued_at)
        if self._metrics is not None:
            self._metrics.cert_issued("workload")
        self._log.info(
            "cert issued", identity=identity.spiffe_uri, serial=f"{cert.serial:x}",
            not_after=cert.not_after.isoformat(), ttl_seconds=int(self._ttl.total_seconds()),
            reason=reason, proxy=requested_by, root_fingerprint=cert.root_fingerprint,
        )
        for fn in self._listeners:
            try:
                fn(cert)
            except Exception:
                self._log.exception("cert listener failed", identity=identity.spiffe_uri)
        return cert

    def _evict_expired(self, now: datetime) -> None:
        for identity in [i for i, c in self._certs.items() if c.not_after <= now]:
            del self._certs[identity]
