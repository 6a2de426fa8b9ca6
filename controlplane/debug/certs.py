"""`GET /debug/certs` on the monitoring port: the CA root and the workload certificates
meshd currently holds per identity (what `istioctl proxy-config secret` would show for
the proxies of each identity). Certificates only: keys never leave through here."""
from __future__ import annotations

import json
from collections.abc import Callable
from typing import Protocol

from cryptography import x509

from ..security.sds import WorkloadSecrets
from .monitoring import Request, Response


class ShownRoot(Protocol):
    """What is shown of the root: a ca.RootCA, or security/plane.py's view of the active one."""

    @property
    def cert(self) -> x509.Certificate: ...
    @property
    def serial(self) -> int: ...
    @property
    def fingerprint(self) -> str: ...


def certs_handler(root: ShownRoot, secrets: WorkloadSecrets) -> Callable[[Request], Response]:
    def handle(_: Request) -> Response:
        body = {
            "root": {
                "serial": f"{root.serial:x}",
                "fingerprint_sha256": root.fingerprint,
                "not_after": root.cert.not_valid_after_utc.isoformat(),
                "subject": root.cert.subject.rfc4514_string(),
            },
            "trust_domain": secrets.trust_domain,
            "workload_certificates": [
                {
                    "identity": c.identity.spiffe_uri,
                    "serial": f"{c.serial:x}",
                    "issued_at": c.issued_at.isoformat(),
                    "not_after": c.not_after.isoformat(),
                }
                for c in secrets.certificates()
            ],
        }
        return Response(200, (json.dumps(body, indent=1) + "\n").encode(), "application/json")

    return handle
