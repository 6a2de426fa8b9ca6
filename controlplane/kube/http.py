"""meshd's own HTTP client for the Kubernetes API server: what the reflectors, the
discovery and the JSON writes need (GET with a query, list pages, watch streams,
POST/PUT/PATCH/DELETE of JSON), on one urllib3 pool with one TLS context.

Why not the `kubernetes` package's ApiClient: importing it (pydantic, dateutil, its
Configuration) and making one TLS context per connection cost about 0.15 CPU-s of a
0.9-1.3 CPU-s start-up (bench/README.md "Start-up"), for requests meshd builds by path
anyway. The library stays for what meshd does not read itself: kubeconfigs with exec
or auth-provider users, several files in $KUBECONFIG (kube/client.py hands its
ApiClient to `ApiClientHttp`, which sends through it, token refresh included).

    http = KubeHttp("https://10.0.0.1:6443", tls=TlsFiles(ca_data=pem), token=StaticToken("..."))
    resp = http.request("GET", "/api/v1/services", query={"limit": 500}, timeout=30.0)
    http.request("POST", path, body={...}, headers={"Content-Type": MERGE_PATCH})   # JSON bodies
    resp.status, resp.data                  # a urllib3 response, not preloaded
    http.close()

`request` returns the response whatever its status (callers decide what a 404 or a 410
means); a request that gets no answer raises `TransportError`. Both clients (ours and
the adapter) answer the same three calls: `request`, `host`, `close`.
"""
from __future__ import annotations

import json
import os
import ssl
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlencode, urlsplit

import urllib3

# Every watch holds one connection for minutes: the pool must hold one per stream
# (kinds x namespaces) plus a few for lists and writes, or connections are discarded.
DEFAULT_POOL = 32

Timeout = float | tuple[float, float] | None  # total, or (connect, read)

# In a pod: the service account's files and the API server's address (client-go's rest.InClusterConfig).
SERVICE_ACCOUNT_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")


class TransportError(Exception):
    """No answer from the API server (connection refused or reset, TLS failure, timeout)."""


class StatusError(Exception):
    """An answer other than 2xx where the caller needs one (a list, a discovery document)."""

    def __init__(self, status: int, reason: str = "", body: bytes = b""):
        super().__init__(f"HTTP {status} {reason}".strip())
        self.status = status
        self.reason = reason
        self.body = body


class Http(Protocol):
    """What the Kubernetes room sends requests through (KubeHttp, or ApiClientHttp)."""

    @property
    def host(self) -> str: ...

    def request(self, method: str, path: str, *, query: Mapping[str, Any] | Sequence[tuple[str, Any]] | None = None,
                body: Any = None, headers: Mapping[str, str] | None = None,
                timeout: Timeout = None) -> Any: ...

    def close(self) -> None: ...


class StaticToken:
    def __init__(self, token: str):
        self._header = f"Bearer {token}"

    def header(self) -> str:
        return self._header


class FileToken:
    """A bearer token read from a file and read again once it changes (a projected service
    account token is rotated by the kubelet), checked at most every `recheck` seconds."""

    def __init__(self, path: Path, recheck: float = 10.0):
        self.path = path
        self.recheck = recheck
        self._lock = threading.Lock()
        self._checked = -recheck
        self._mtime: float | None = None
        self._header = ""

    def header(self) -> str:
        now = time.monotonic()
        with self._lock:
            if now - self._checked >= self.recheck:
                self._checked = now
                mtime = self.path.stat().st_mtime
                if mtime != self._mtime:
                    self._header = f"Bearer {self.path.read_text().strip()}"
                    self._mtime = mtime
            return self._header


class Token(Protocol):
    def header(self) -> str: ...


@dataclass(frozen=True)
class TlsFiles:
    """How to trust the server and who we are: a CA (file or PEM text), a client
    certificate and key (files), or no verification at all (insecure-skip-tls-verify)."""

    ca_file: str | None = None
    ca_data: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    insecure: bool = False

    def context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=self.ca_file, cadata=self.ca_data)
        if self.insecure:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        if self.cert_file and self.key_file:
            ctx.load_cert_chain(self.cert_file, self.key_file)
        return ctx


def _timeout(timeout: Timeout) -> urllib3.Timeout:
    if isinstance(timeout, tuple):
        return urllib3.Timeout(connect=timeout[0], read=timeout[1])
    return urllib3.Timeout(total=timeout)


def _url(path: str, query: Mapping[str, Any] | Sequence[tuple[str, Any]] | None) -> str:
    if not query:
        return path
    items = query.items() if isinstance(query, Mapping) else query
    return f"{path}?{urlencode([(k, _query_value(v)) for k, v in items if v is not None])}"


def _query_value(v: Any) -> str:
    return str(v).lower() if isinstance(v, bool) else str(v)


class KubeHttp:
    """Requests to one API server over one connection pool (one TLS context for all its
    connections). Thread-safe: the reflectors share it."""

    def __init__(self, server: str, *, tls: TlsFiles | None = None, token: Token | None = None,
                 pool_size: int = DEFAULT_POOL):
        parts = urlsplit(server)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"API server {server!r}: not an http(s) URL")
        self._server = server.rstrip("/")
        self._token = token
        if parts.scheme == "https":
            tls = tls or TlsFiles()
            self._pool: urllib3.PoolManager = urllib3.PoolManager(
                num_pools=2, maxsize=pool_size, ssl_context=tls.context(),
                cert_reqs=ssl.CERT_NONE if tls.insecure else ssl.CERT_REQUIRED,
                assert_hostname=False if tls.insecure else None)
        else:
            self._pool = urllib3.PoolManager(num_pools=2, maxsize=pool_size)

    @property
    def host(self) -> str:
        return self._server

    def request(self, method: str, path: str, *, query: Mapping[str, Any] | Sequence[tuple[str, Any]] | None = None,
                body: Any = None, headers: Mapping[str, str] | None = None,
                timeout: Timeout = None) -> urllib3.BaseHTTPResponse:
        all_headers = {"Accept": "application/json", "User-Agent": "meshd", **(headers or {})}
        if self._token is not None:
            all_headers["Authorization"] = self._token.header()
        data = None
        if body is not None:
            data = json.dumps(body, separators=(",", ":")).encode()
            all_headers.setdefault("Content-Type", "application/json")
        try:
            return self._pool.request(method, self._server + _url(path, query), body=data, headers=all_headers,
                                      timeout=_timeout(timeout), preload_content=False, redirect=False)
        except urllib3.exceptions.HTTPError as e:
            raise TransportError(f"{type(e).__name__}: {e}") from e

    def close(self) -> None:
        self._pool.clear()


class ApiClientHttp:
    """Requests through a `kubernetes` ApiClient (its auth, TLS, token refresh and
    proxies): for the kubeconfigs meshd does not read itself, and for callers that hand
    the Kubernetes room an ApiClient (tests, embedders)."""

    def __init__(self, api_client: Any):
        self.api_client = api_client

    @property
    def host(self) -> str:
        return str(self.api_client.configuration.host)

    def request(self, method: str, path: str, *, query: Mapping[str, Any] | Sequence[tuple[str, Any]] | None = None,
                body: Any = None, headers: Mapping[str, str] | None = None,
                timeout: Timeout = None) -> Any:
        items = query.items() if isinstance(query, Mapping) else (query or ())
        params = [(k, _query_value(v)) for k, v in items if v is not None]
        all_headers = {"Accept": "application/json", **(headers or {})}
        try:
            method_, url, all_headers, _, post = self.api_client.param_serialize(
                method=method, resource_path=path, query_params=params, header_params=all_headers,
                auth_settings=["BearerToken"])
            resp = self.api_client.call_api(method_, url, header_params=all_headers, body=body, post_params=post,
                                            _request_timeout=timeout)
        except urllib3.exceptions.HTTPError as e:
            raise TransportError(f"{type(e).__name__}: {e}") from e
        except Exception as e:
            if hasattr(e, "status") and hasattr(e, "reason"):  # the library's ApiException (status 0: no answer)
                raise TransportError(f"{e.reason}: {str(getattr(e, 'body', '') or '')[:300]}") from e
            raise
        return resp.response  # the urllib3 response (the library's calls never preload it here)

    def close(self) -> None:
        self.api_client.close()


def as_http(api: Any) -> Http:
    """A client of this room from what a caller handed over: ours as it is, a `kubernetes`
    ApiClient wrapped."""
    if isinstance(api, (KubeHttp, ApiClientHttp)):
        return api
    if hasattr(api, "param_serialize") and hasattr(api, "call_api"):
        return ApiClientHttp(api)
    raise TypeError(f"not a Kubernetes client: {type(api).__name__}")


def in_cluster(sa_dir: Path = SERVICE_ACCOUNT_DIR, env: Mapping[str, str] = os.environ,
               pool_size: int = DEFAULT_POOL) -> KubeHttp:
    """The API server as a pod sees it: KUBERNETES_SERVICE_HOST/PORT, the service
    account's CA and its token (read again when the kubelet rotates it)."""
    host, port = env.get("KUBERNETES_SERVICE_HOST", ""), env.get("KUBERNETES_SERVICE_PORT", "")
    if not host or not port:
        raise TransportError("in-cluster: KUBERNETES_SERVICE_HOST and KUBERNETES_SERVICE_PORT must be set")
    token = sa_dir / "token"
    if not token.is_file():
        raise TransportError(f"in-cluster: no service account token at {token}")
    server = f"https://[{host}]:{port}" if ":" in host else f"https://{host}:{port}"
    return KubeHttp(server, tls=TlsFiles(ca_file=str(sa_dir / "ca.crt")), token=FileToken(token),
                    pool_size=pool_size)
