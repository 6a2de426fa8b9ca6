"""meshd's version: the installed package's (importlib.metadata), one answer everywhere
(`meshd --version`, /debug/syncz, the ISTIO_VERSION a `meshd bootstrap` proxy reports)."""
from __future__ import annotations

import functools

UNKNOWN = "0.0.0+unknown"  # run from a source tree that was never installed


@functools.cache
def meshd_version() -> str:
    # importlib.metadata on first use: it is a sixtieth of `meshd serve`'s start-up and
    # the server asks only when a debug view does.
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("meshd")
    except PackageNotFoundError:
        return UNKNOWN
