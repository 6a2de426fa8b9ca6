"""Time as the CA sees it: injectable so tests can issue and expire on demand."""
from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta

Clock = Callable[[], datetime]

# Istio backdates NotBefore by this much (security/pkg/pki/util/generate_cert.go,
# ClockSkewGracePeriod) so a workload whose clock runs a little behind the CA's
# does not reject a certificate it just received as "not yet valid".
CLOCK_SKEW_GRACE = timedelta(minutes=2)


def utc_now() -> datetime:
    # X.509 times have one-second resolution; dropping microseconds keeps what we
    # compute equal to what ends up in the certificate.
    return datetime.now(UTC).replace(microsecond=0)
