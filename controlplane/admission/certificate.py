"""The webhook port's serving certificate, from meshd's CA.

The API server verifies it against the webhook configuration's `caBundle` (meshd's
root, patcher.py) and the name it dials: the Service `istiod.istio-system.svc` (istiod's
manifests register that Service), `istiod.<ns>.svc` and `meshd.<ns>.svc` for meshd's
own namespace, and the listen address when it is a specific one (a `clientConfig.url`
of `https://<ip>:<port>`). Renewed once half its lifetime has passed, and at once when
the CA's serving signer changes (a root rotation), as the secure xDS port's
(security/serving.py): `context()` is asked before every TLS handshake.
"""
from __future__ import annotations

import ipaddress
import os
import ssl
import tempfile
import threading
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any, Protocol

import structlog
from cryptography import x509

from ca import DEFAULT_WORKLOAD_TTL, KeyAndChain
from ca.clock import Clock, utc_now

log = structlog.get_logger("meshd.admission")


class ServerCertIssuer(Protocol):
    """What this reads of the CA (security/authority.py MeshCA)."""

    def issue_server_cert(self, dns_names: Sequence[str], ttl: timedelta) -> KeyAndChain: ...


def webhook_dns_names(namespace: str, listen_address: str = "") -> tuple[str, ...]:
    """The names the certificate carries (see the module docstring)."""
    names = ["istiod.istio-system.svc", f"istiod.{namespace}.svc", f"meshd.{namespace}.svc"]
    try:
        ip = ipaddress.ip_address(listen_address)
    except ValueError:
        ip = None
    if ip is not None and not ip.is_unspecified:
        names.append(str(ip))
    return tuple(dict.fromkeys(names))


class WebhookCertificate:
    def __init__(self, ca: ServerCertIssuer, dns_names: Sequence[str], ttl: timedelta = DEFAULT_WORKLOAD_TTL, *,
                 clock: Clock = utc_now):
        self._ca = ca
        self.dns_names = tuple(dns_names)
        self._ttl = ttl
        self._clock = clock
        self._lock = threading.Lock()
        self._context: ssl.SSLContext | None = None
        self._issued_at: datetime | None = None
        self._not_after: datetime | None = None
        self._signer: str | None = None
        self.issued = 0  # certificates issued so far
        self.chain_pem = b""

    def _signer_generation(self) -> str | None:
        fn: Any = getattr(self._ca, "serving_generation", None)
        return fn() if fn is not None else None

    def _due(self) -> bool:
        if self._context is None or self._issued_at is None or self._not_after is None:
            return True
        if self._signer_generation() != self._signer:
            return True
        return self._clock() >= self._issued_at + (self._not_after - self._issued_at) / 2

    def context(self) -> ssl.SSLContext:
        """The TLS context for the next handshake, with a fresh certificate when due. A
        failed renewal keeps the current one (logged; tried again at the next handshake)."""
        with self._lock:
            if self._due():
                try:
                    self._issue()
                except Exception:
                    if self._context is None:
                        raise
                    log.exception("webhook certificate renewal failed")
            assert self._context is not None
            return self._context

    def _issue(self) -> None:
        signer = self._signer_generation()
        kc = self._ca.issue_server_cert(self.dns_names, self._ttl)
        leaf = x509.load_pem_x509_certificate(kc.chain_pem)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        # ssl loads keys from files only: a private directory, removed at once.
        with tempfile.TemporaryDirectory(prefix="meshd-webhook-") as d:
            cert, key = os.path.join(d, "cert.pem"), os.path.join(d, "key.pem")
            with open(os.open(key, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb") as f:
                f.write(kc.key_pem)
            with open(cert, "wb") as f:
                f.write(kc.chain_pem)
            ctx.load_cert_chain(cert, key)
        self._context, self._signer, self.chain_pem = ctx, signer, kc.chain_pem
        self._issued_at, self._not_after = self._clock(), leaf.not_valid_after_utc
        self.issued += 1
        log.info("cert issued", kind="webhook server", identity=",".join(self.dns_names),
                 serial=f"{leaf.serial_number:x}", not_after=self._not_after.isoformat())
