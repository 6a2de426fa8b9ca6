"""Small HTTP GET helper for the operator commands (meshd's debug port, Envoy's admin)."""
from __future__ import annotations

import argparse
import os
import urllib.error
import urllib.parse
import urllib.request

DEFAULT_MESHD = "http://127.0.0.1:15014"
DEFAULT_ENVOY = "http://127.0.0.1:15000"


class FetchError(Exception):
    pass


def add_dump_sources(p: argparse.ArgumentParser, file_help: str) -> None:
    """Where a command reads a proxy's config dump from: meshd (what it sent; default),
    the proxy's own Envoy admin, or a file; and the token for meshd's /debug."""
    src = p.add_mutually_exclusive_group()
    src.add_argument("--meshd", default=DEFAULT_MESHD, help="meshd's monitoring address (default %(default)s)")
    src.add_argument("--envoy", help="read the proxy's own Envoy admin instead, e.g. http://127.0.0.1:15000")
    src.add_argument("--file", "-f", help=file_help)
    p.add_argument("--token", help="bearer token for meshd's /debug (or @FILE); default $MESHD_TOKEN")


def get(base: str, path: str, params: dict | None = None, token: str | None = None, timeout: float = 10.0) -> bytes:
    url = base.rstrip("/") + path
    if params:
        url += ("&" if "?" in url else "?") + urllib.parse.urlencode(params)
    headers = {}
    token = token or os.environ.get("MESHD_TOKEN")
    if token:
        headers["Authorization"] = f"Bearer {token}"
    req = urllib.request.Request(url, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.read()
    except urllib.error.HTTPError as e:
        body = e.read().decode(errors="replace").strip()
        raise FetchError(f"GET {url}: {e.code} {e.reason}" + (f": {body}" if body else "")) from None
    except (urllib.error.URLError, OSError) as e:
        raise FetchError(f"GET {url}: {getattr(e, 'reason', e)}") from None


def read_token(value: str | None) -> str | None:
    """--token: the token itself, or @FILE to read it from a file."""
    if value and value.startswith("@"):
        with open(value[1:]) as f:
            return f.read().strip()
    return value
