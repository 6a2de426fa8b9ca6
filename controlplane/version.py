"""meshd's version: the installed package's (importlib.metadata), one answer everywhere
(`meshd --version`, /debug/syncz, the ISTIO_VERSION a `meshd bootstrap` proxy reports)."""
from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

UNKNOWN = "0.0.0+unknown"  # run from a source tree that was never installed


def meshd_version() -> str:
    try:
        return version("meshd")
    except PackageNotFoundError:
        return UNKNOWN
