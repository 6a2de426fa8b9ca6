"""meshd's own certificate for the secure xDS port (15012), from its CA.

Shaped like istiod's: DNS SANs `istiod.istio-system.svc` (what Istio bootstraps verify
and send as SNI) and its fully qualified form. Kept fresh without restarting the gRPC
server: gRPC asks `fetch` before every TLS handshake (dynamic server credentials), and
once less than half of the lifetime remains a new certificate is issued and used from
the next handshake on. Streams already open keep their connection.

With a rotating CA (controlplane/security/authority.py, `MeshCA`), the certificate is
also re-issued as soon as the CA's serving signer changes (it is the oldest signer
whose root is still trusted, so proxies bootstrapped before a root rotation keep
reconnecting until the old root is dropped).

`fetch` is called from gRPC's own threads, hence the lock.
"""
from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from typing import Any

import grpc
import structlog
from cryptography import x509

from ca import DEFAULT_WORKLOAD_TTL, CertificateAuthority, KeyAndChain
from ca.clock import Clock, utc_now

from .authority import MeshCA

SERVER_DNS_NAMES = ("istiod.istio-system.svc", "istiod.istio-system.svc.cluster.local")


class ServingCertificate:
    def __init__(
        self,
        ca: CertificateAuthority | MeshCA,
        dns_names: Sequence[str] = SERVER_DNS_NAMES,
        ttl: timedelta = DEFAULT_WORKLOAD_TTL,
        *,
        clock: Clock = utc_now,
        metrics: Any = None,
        logger: Any = None,
        client_roots: Callable[[], bytes] | None = None,
    ) -> None:
        """`client_roots`: for a port that requires client certificates (the CA API's
        `--ca-mtls-port`), the PEM roots to verify them with, read before every handshake
        (the trust bundle changes during a root rotation)."""
        self._ca = ca
        self._client_roots = client_roots
        self._roots_handed_out: bytes | None = None
        self._dns_names = tuple(dns_names)
        self._ttl = ttl
        self._clock = clock
        self._metrics = metrics
        self._log = logger if logger is not None else structlog.get_logger("meshd.ca")
        self._lock = threading.Lock()
        self._current: KeyAndChain | None = None
        self._issued_at: datetime | None = None
        self._not_after: datetime | None = None
        self._generation = 0  # bumped per issuance
        self._handed_out = 0  # the generation gRPC was last given
        self._signer_generation: str | None = None  # the CA's serving signer when issued
        self._issue()
        self._handed_out = self._generation

    @property
    def chain_pem(self) -> bytes:
        assert self._current is not None
        return self._current.chain_pem

    def _ca_generation(self) -> str | None:
        fn = getattr(self._ca, "serving_generation", None)
        return fn() if fn is not None else None

    def _issue(self) -> None:
        now = self._clock()
        generation = self._ca_generation()
        kc = self._ca.issue_server_cert(self._dns_names, self._ttl)
        self._signer_generation = generation
        leaf = x509.load_pem_x509_certificate(kc.chain_pem)
        self._current, self._issued_at, self._not_after = kc, now, leaf.not_valid_after_utc
        self._generation += 1
        if self._metrics is not None:
            self._metrics.cert_issued("server")
        self._log.info(
            "cert issued", identity=",".join(self._dns_names), kind="xds server", serial=f"{leaf.serial_number:x}",
            not_after=self._not_after.isoformat(),
        )

    def _due(self) -> bool:
        assert self._issued_at is not None and self._not_after is not None
        if self._ca_generation() != self._signer_generation:
            return True
        return self._clock() >= self._issued_at + (self._not_after - self._issued_at) / 2

    def _config(self) -> grpc.ServerCertificateConfiguration:
        assert self._current is not None
        roots = self._client_roots() if self._client_roots is not None else None
        self._roots_handed_out = roots
        return grpc.ssl_server_certificate_configuration(
            [(self._current.key_pem, self._current.chain_pem)], root_certificates=roots)

    def refresh(self) -> bool:
        """Issue a new certificate if the current one is past half its lifetime; True if
        one was issued. Never raises: on failure the old one stays (retried next time)."""
        with self._lock:
            if not self._due():
                return False
            try:
                self._issue()
            except Exception:
                self._log.exception("xds server certificate renewal failed")
                return False
            return True

    def fetch(self) -> grpc.ServerCertificateConfiguration | None:
        """gRPC's certificate_configuration_fetcher, called before each handshake: the
        new configuration if gRPC does not have the newest certificate yet, else None
        (keep the one in use). Must not raise (gRPC would fail the handshake)."""
        self.refresh()
        with self._lock:
            try:
                roots_changed = self._client_roots is not None and self._client_roots() != self._roots_handed_out
            except Exception:  # must not raise into gRPC
                roots_changed = False
            if self._handed_out == self._generation and not roots_changed:
                return None
            self._handed_out = self._generation
            return self._config()

    def credentials(self) -> grpc.ServerCredentials:
        """TLS for the port; client certificates are required exactly when this was
        built with `client_roots` (the secure xDS port authenticates bearer tokens
        instead, as istiod's 15012 does)."""
        with self._lock:
            initial = self._config()
        # types-grpcio has the fetcher return a configuration; gRPC takes None as "no change".
        return grpc.dynamic_ssl_server_credentials(
            initial, self.fetch,  # type: ignore[arg-type]
            require_client_authentication=self._client_roots is not None)
