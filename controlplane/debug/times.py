"""Times as the debug views print them (istioctl's RFC 3339 in UTC, seconds)."""
from __future__ import annotations

import datetime as _dt


def rfc3339(t: float) -> str:
    return _dt.datetime.fromtimestamp(t, _dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ") if t else ""
