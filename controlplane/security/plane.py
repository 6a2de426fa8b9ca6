"""Everything `meshd serve` runs for workload identity, wired in one place (app.py calls
this; the parts live in their own modules):

- `MeshCA` (authority.py): the CA directory's signer and trust bundle, watched for
  rotations (polled every `ca_poll_interval` seconds; SIGHUP checks at once);
- `WorkloadSecrets` (sds.py): SDS `default`/`ROOTCA` per identity;
- `RotationScheduler` (rotation.py): renews certificates ahead of expiry and pushes them;
- `ServingCertificate` (serving.py): meshd's certificate on the secure port;
- `IstioCertificateService` (ca_service.py): the Istio CA API on the secure port, and on
  `--ca-mtls-port` for callers authenticating with a client certificate;
- one worker thread for all CA work (key generation, signing), off the event loop.

Security provides; it does not reach for the server or the debug endpoints: app.py hands
in what a gRPC port needs (the server's options, its address form) and serves the views
(`describe`, `live_root`) on /debug.
"""
from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import grpc
import structlog
from cryptography import x509

from ca import Identity
from ca.keys import KeyType

from .. import names
from .authn import Authenticator, ClientCertAuthenticator, JwtAuthenticator
from .authority import DEFAULT_POLL_INTERVAL, DEFAULT_PROPAGATION_TIMEOUT, MeshCA
from .ca_service import IstioCertificateService
from .cadir import open_tokens
from .rotation import DEFAULT_RATIO, RotationScheduler
from .sds import WorkloadSecrets
from .serving import ServingCertificate

# Chosen by measurement (bench/ca_issue.py, docs/ca.md "Key types"): ECDSA P-256 issues
# roughly 100x more certificates per second than RSA 2048, whose key generation dominates.
DEFAULT_KEY_TYPE: KeyType = "ec-p256"


@dataclass
class SecurityOptions:
    ca_dir: Path
    trust_domain: str = names.TRUST_DOMAIN
    workload_cert_ttl: timedelta = timedelta(hours=24)
    rotation_ratio: float = DEFAULT_RATIO
    workload_key_type: KeyType = DEFAULT_KEY_TYPE
    secure_xds_port: int = names.PORT_XDS_SECURE
    ca_mtls_port: int = 0  # 0: no client-certificate port for the CA API
    listen_address: str = "0.0.0.0"
    ca_poll_interval: float = DEFAULT_POLL_INTERVAL
    propagation_timeout: timedelta = DEFAULT_PROPAGATION_TIMEOUT
    # Who may authenticate, given meshd's own JWT authenticator: None is just that one;
    # in Kubernetes mode, kube/member.py adds TokenReview (ServiceAccount tokens).
    authenticators: Callable[[JwtAuthenticator], list[Authenticator]] | None = None


class _LiveRoot:
    """The active root as debug/certs.py reads it (serial, fingerprint, cert), always current."""

    def __init__(self, ca: MeshCA):
        self._ca = ca

    @property
    def cert(self) -> x509.Certificate:
        return self._ca.active.root

    @property
    def serial(self) -> int:
        return self.cert.serial_number

    @property
    def fingerprint(self) -> str:
        return self._ca.active.root_fingerprint


class SecurityPlane:
    def __init__(self, opts: SecurityOptions, metrics: Any, logger: Any = None) -> None:
        """Raises ca.CAStateError on unsafe or inconsistent CA files: better not to start
        than to mint a second root or use a key others could read."""
        self.opts = opts
        self.metrics = metrics
        self._log = logger if logger is not None else structlog.get_logger("meshd.ca")
        self.ca = MeshCA.open(opts.ca_dir, opts.trust_domain, metrics=metrics, key_type="ec-p256")
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="meshd-ca")
        self.tokens = open_tokens(opts.ca_dir)
        self.secrets = WorkloadSecrets(self.ca, opts.trust_domain, opts.workload_cert_ttl,
                                       key_type=opts.workload_key_type, metrics=metrics, executor=self.executor)
        jwt = JwtAuthenticator(self.tokens, opts.trust_domain)
        self.authenticators = list(opts.authenticators(jwt)) if opts.authenticators else [jwt]
        self.serving = ServingCertificate(self.ca, metrics=metrics) if opts.secure_xds_port else None
        self.ca_service = IstioCertificateService(
            self.ca, self.authenticators, trust_domain=opts.trust_domain, default_ttl=opts.workload_cert_ttl,
            executor=self.executor, metrics=metrics,
        )
        self.scheduler: RotationScheduler | None = None
        self._wake: asyncio.Event | None = None

    # --- wiring ---------------------------------------------------------------------------
    def attach(self, ads: Any) -> None:
        """Connect to the ADS server: rotated certificates and bundles are pushed through it."""

        def holders(identity: Identity) -> bool:
            return any(c.identity == identity for c in ads.connections())

        self.scheduler = scheduler = RotationScheduler(
            self.secrets, push=lambda identity: ads.push_secrets(identity, "secret rotation"), holders=holders,
            ratio=self.opts.rotation_ratio, metrics=self.metrics,
        )
        self.ca.propagation_check = lambda since: ads.secret_unsynced(names.SDS_ROOT, since)
        self.ca.on_bundle_change(lambda: ads.push_secrets(None, "trust bundle"))
        self.ca.on_signer_change(lambda _signer: scheduler.reissue_from_other_signers())

    # --- what /debug shows (app.py serves it: debug/certs.py and /debug/ca) -------------
    @property
    def live_root(self) -> _LiveRoot:
        """The active root, as debug/certs.py reads it."""
        return _LiveRoot(self.ca)

    def describe(self) -> dict[str, Any]:
        """/debug/ca: the CA's state, and each workload certificate with its renewal."""
        body = self.ca.describe()
        body["workload_certificates"] = [
            {"identity": c.identity.spiffe_uri, "serial": f"{c.serial:x}", "not_after": c.not_after.isoformat(),
             "root_fingerprint": c.root_fingerprint,
             "renewal_due": (d.isoformat() if self.scheduler and (d := self.scheduler.due_at(c.identity)) else None)}
            for c in self.secrets.certificates()
        ]
        return body

    def secure_servicers(self) -> list[Callable[[grpc.aio.Server], None]]:
        """Registered on the secure xDS port next to ADS."""
        return [self.ca_service.add_to_server]

    async def start_servers(self, options: Sequence[tuple[str, Any]],
                            address: Callable[[str, int], str]) -> list[grpc.aio.Server]:
        """The client-certificate port of the CA API, when configured, bound as every meshd
        gRPC port: with the server's `options` at `address(host, port)` (app.py passes
        server/grpc_server.py's)."""
        if not self.opts.ca_mtls_port:
            return []
        mtls_service = IstioCertificateService(
            self.ca, [ClientCertAuthenticator(self.ca.trusted_roots, self.opts.trust_domain), *self.authenticators],
            trust_domain=self.opts.trust_domain, default_ttl=self.opts.workload_cert_ttl, executor=self.executor,
            metrics=self.metrics,
        )
        serving = ServingCertificate(self.ca, metrics=self.metrics, client_roots=lambda: self.ca.trust_bundle_pem)
        server = grpc.aio.server(options=options)
        mtls_service.add_to_server(server)
        bind = address(self.opts.listen_address, self.opts.ca_mtls_port)
        if not server.add_secure_port(bind, serving.credentials()):
            raise RuntimeError(f"cannot bind the CA client-certificate port {bind}")
        await server.start()
        self._log.info("ca server listening", address=bind, client_certificates="required")
        return [server]

    def tasks(self, stop: asyncio.Event) -> list[asyncio.Task[None]]:
        self._wake = asyncio.Event()
        loop = asyncio.get_running_loop()
        try:
            loop.add_signal_handler(signal.SIGHUP, self._wake.set)
        except (NotImplementedError, RuntimeError, ValueError):  # not the main thread (tests)
            pass
        out = [asyncio.create_task(self.ca.run(stop, poll_interval=self.opts.ca_poll_interval,
                                               propagation_timeout=self.opts.propagation_timeout, wake=self._wake),
                                   name="meshd-ca-watch")]
        if self.scheduler is not None:
            out.append(asyncio.create_task(self.scheduler.run(stop), name="meshd-cert-rotation"))
        return out

    def close(self) -> None:
        self.executor.shutdown(wait=False, cancel_futures=True)
