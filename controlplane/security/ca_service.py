"""The Istio CA API: `istio.v1.auth.IstioCertificateService/CreateCertificate`.

What istio-agent calls to get its workload certificate (protos/istio/v1/auth/ca.proto,
compiled by the package build into controlplane._gen). meshd serves it on the secure
port (15012, bearer token) and, when enabled, on the client-certificate port
(`--ca-mtls-port`, renewal with a certificate this CA issued).

The rules, in order (compare istiod's security/pkg/server/ca/server.go):

1. Authentication: the caller's identity comes from its credential, never from the CSR
   (bearer token via the configured authenticators, or a verified client certificate).
   None: UNAUTHENTICATED.
2. The CSR must parse and its signature verify (proof of possession), with an accepted
   key (ECDSA P-256/P-384, RSA >= 2048): otherwise INVALID_ARGUMENT with the reason.
3. Authorization: every SAN the CSR asks for must be the caller's own SPIFFE ID (the
   proto's contract: the server verifies the caller is authorized for all SANs). A
   CSR naming another identity, or a DNS/IP/e-mail name: PERMISSION_DENIED. A CSR
   without SANs is fine: the certificate carries the caller's ID regardless.
4. Lifetime: `validity_duration` seconds; 0 or less takes the default workload TTL;
   above the CA's maximum (90 days, Istio's MAX_WORKLOAD_CERT_TTL): INVALID_ARGUMENT
   (istiod's TTL error maps to the same code).
5. Signing runs on the CA's worker thread. The answer is the chain one PEM per element,
   leaf first, then intermediates (plug-in CA), root last.

Every request is counted (citadel_server_csr_count and friends, see metrics.py) and
every issue logged as `cert issued` (identity, serial, not_after; never key material).
"""
from __future__ import annotations

import asyncio
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from typing import Any, NoReturn, TypeAlias

import grpc
import structlog
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from ca import CSRError, Identity
from ca.issuer import DEFAULT_WORKLOAD_TTL, load_csr
from ca.keys import check_public_key

from .authn import AuthenticationError, Authenticator, authenticate_stream, normalize_metadata

try:
    from controlplane._gen.istio.v1.auth import ca_pb2, ca_pb2_grpc
except ImportError as e:  # pragma: no cover - a checkout that was never built
    raise ImportError(
        "controlplane._gen is missing: the Istio CA API is compiled from protos/ by the package build; "
        "run `pip install -e .` (or `python setup.py build_py`)"
    ) from e

SERVICE = "istio.v1.auth.IstioCertificateService"
METHOD = f"/{SERVICE}/CreateCertificate"

# A string: grpc's runtime class is not subscriptable, only its stubs' is.
_Context: TypeAlias = "grpc.aio.ServicerContext[ca_pb2.IstioCertificateRequest, ca_pb2.IstioCertificateResponse]"


def _auth_context(context: _Context) -> dict[str, Any]:
    try:
        return dict(context.auth_context() or {})
    except Exception:  # plaintext or a test double without TLS
        return {}


def csr_sans(csr: x509.CertificateSigningRequest) -> list[tuple[str, str]]:
    """The SANs a CSR asks for, as (kind, value). CSRError if the extension is garbage."""
    try:
        ext = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        return []
    except (ValueError, x509.DuplicateExtension) as e:
        raise CSRError(f"malformed CSR extensions: {e}") from None
    out: list[tuple[str, str]] = []
    for name in ext.value:
        if isinstance(name, x509.UniformResourceIdentifier):
            out.append(("URI", name.value))
        elif isinstance(name, x509.DNSName):
            out.append(("DNS", name.value))
        elif isinstance(name, x509.IPAddress):
            out.append(("IP", str(name.value)))
        elif isinstance(name, x509.RFC822Name):
            out.append(("email", name.value))
        else:
            out.append((type(name).__name__, str(getattr(name, "value", name))))
    return out


class IstioCertificateService(ca_pb2_grpc.IstioCertificateServiceServicer):
    def __init__(
        self,
        ca: Any,  # MeshCA (or a CertificateAuthority): sign_csr(csr_pem, identity, ttl), max_ttl
        authenticators: Sequence[Authenticator],
        *,
        trust_domain: str,
        default_ttl: timedelta = DEFAULT_WORKLOAD_TTL,
        executor: ThreadPoolExecutor | None = None,
        metrics: Any = None,
        logger: Any = None,
    ) -> None:
        if not authenticators:
            raise ValueError("the CA service needs at least one authenticator")
        self._ca = ca
        self._authenticators = tuple(authenticators)
        self._trust_domain = trust_domain
        self._default_ttl = default_ttl
        self._executor = executor
        self._metrics = metrics
        self._log = logger if logger is not None else structlog.get_logger("meshd.ca")

    def add_to_server(self, server: grpc.aio.Server) -> None:
        ca_pb2_grpc.add_IstioCertificateServiceServicer_to_server(self, server)

    def _count(self, what: str, *args: Any) -> None:
        if self._metrics is not None:
            getattr(self._metrics, what)(*args)

    async def _fail(self, context: _Context, code: grpc.StatusCode, label: str, message: str,
                    **log: Any) -> NoReturn:
        self._count("csr_failed", label)
        self._log.warning("csr refused", code=code.name, reason=message, **log)
        await context.abort(code, message)
        raise AssertionError("context.abort returned")  # it raises; never go on to sign

    async def CreateCertificate(
        self, request: ca_pb2.IstioCertificateRequest, context: _Context
    ) -> ca_pb2.IstioCertificateResponse:
        self._count("csr_received")
        peer = context.peer()
        # 1. who is asking
        try:
            identity: Identity = await authenticate_stream(
                self._authenticators, normalize_metadata(context.invocation_metadata()), peer, _auth_context(context)
            )
        except AuthenticationError as e:
            self._count("csr_auth_failed")
            await self._fail(context, grpc.StatusCode.UNAUTHENTICATED, "unauthenticated",
                             f"authentication failed: {e}", peer=peer)
        except Exception as e:  # an authenticator's own failure
            self._log.exception("ca authenticator failed", peer=peer)
            await self._fail(context, grpc.StatusCode.UNAUTHENTICATED, "unauthenticated",
                             f"authentication failed: authenticator error: {type(e).__name__}", peer=peer)
        who = {"identity": identity.spiffe_uri, "peer": peer}

        # 2. the CSR itself
        try:
            csr = load_csr(request.csr.encode("utf-8", "replace"))
            try:
                check_public_key(csr.public_key())
            except ValueError as e:
                raise CSRError(f"CSR key not accepted: {e}") from None
            sans = csr_sans(csr)
        except CSRError as e:
            self._count("csr_malformed")
            await self._fail(context, grpc.StatusCode.INVALID_ARGUMENT, "malformed_csr", str(e), **who)

        # 3. may the caller have what it asks for?
        foreign = [f"{kind}:{value}" for kind, value in sans if not (kind == "URI" and value == identity.spiffe_uri)]
        if foreign:
            await self._fail(
                context, grpc.StatusCode.PERMISSION_DENIED, "permission_denied",
                f"the CSR asks for {', '.join(foreign)}; the caller is authenticated as {identity.spiffe_uri} "
                "and may only request its own identity", **who,
            )

        # 4. how long
        max_ttl: timedelta = getattr(self._ca, "max_ttl", timedelta(days=90))
        if request.validity_duration <= 0:
            ttl = self._default_ttl
        else:
            ttl = timedelta(seconds=request.validity_duration)
            if ttl > max_ttl:
                await self._fail(
                    context, grpc.StatusCode.INVALID_ARGUMENT, "ttl",
                    f"requested TTL {int(ttl.total_seconds())}s is greater than the max allowed TTL "
                    f"{int(max_ttl.total_seconds())}s", **who,
                )
    
        # 5. sign, off the event loop
        csr_pem = csr.public_bytes(serialization.Encoding.PEM)
        try:
            chain_pem = await asyncio.get_running_loop().run_in_executor(
                self._executor, self._ca.sign_csr, csr_pem, identity, ttl)
        except (CSRError, ValueError) as e:
            await self._fail(context, grpc.StatusCode.INVALID_ARGUMENT, "sign", str(e), **who)
        except Exception as e:
            self._count("cert_issue_failed", "csr")
            self._log.exception("csr signing failed", **who)
            await self._fail(context, grpc.StatusCode.INTERNAL, "internal", f"signing failed: {type(e).__name__}", **who)
        certs = x509.load_pem_x509_certificates(chain_pem)
        leaf = certs[0]
        self._count("csr_issued")
        self._log.info("cert issued", kind="csr", identity=identity.spiffe_uri, serial=f"{leaf.serial_number:x}",
                       not_after=leaf.not_valid_after_utc.isoformat(), ttl_seconds=int(ttl.total_seconds()),
                       peer=peer, chain_length=len(certs))
        return ca_pb2.IstioCertificateResponse(
            cert_chain=[c.public_bytes(serialization.Encoding.PEM).decode() for c in certs]
        )
