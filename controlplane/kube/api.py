"""JSON requests to the Kubernetes API server, for the writes meshd makes.

Typed API models would turn every answer into objects (and back), and disagree with the
API server on details such as MicroTime; meshd's writes are few and small, so they go
as plain JSON through the room's HTTP client (kube/http.py):

    api = KubeApi(http)                                  # a KubeHttp, or a `kubernetes` ApiClient
    lease = api.request("GET", "/apis/coordination.k8s.io/v1/namespaces/istio-system/leases/meshd-leader")
    await api.call("POST", path, body)          # the same, off the event loop

Authentication, TLS and the in-cluster token refresh are the client's. A non-2xx answer
raises `ApiError` with the API server's Status reason and message. Blocking calls run
on a small dedicated thread pool, so a slow API server never holds the event loop and
never starves the loop's default executor.
"""
from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import quote

from .http import TransportError, as_http

DEFAULT_TIMEOUT = 10.0

JSON = "application/json"
MERGE_PATCH = "application/merge-patch+json"


class ApiError(Exception):
    """The API server refused or failed a request (status 0: no answer at all)."""

    def __init__(self, status: int, reason: str = "", message: str = ""):
        super().__init__(f"HTTP {status} {reason}: {message}".strip(": ") if status else f"no answer: {message}")
        self.status = status
        self.reason = reason
        self.message = message

    @property
    def not_found(self) -> bool:
        return self.status == 404

    @property
    def conflict(self) -> bool:
        """409: AlreadyExists on create, Conflict on a stale resourceVersion."""
        return self.status == 409


def path(group: str, version: str, plural: str, namespace: str | None = None, name: str | None = None,
         subresource: str | None = None) -> str:
    """The REST path of a collection or object: /api/v1/... for the core group, else /apis/{group}/{version}/..."""
    out = f"/apis/{group}/{version}" if group else f"/api/{version}"
    if namespace is not None:
        out += f"/namespaces/{quote(namespace, safe='')}"
    out += f"/{plural}"
    if name is not None:
        out += f"/{quote(name, safe='')}"
    if subresource:
        out += f"/{subresource}"
    return out


class KubeApi:
    def __init__(self, api_client: Any, timeout: float = DEFAULT_TIMEOUT, workers: int = 4):
        self.api_client = api_client  # as handed over (the caller closes it)
        self.http = as_http(api_client)  # kube/http.py: meshd's client, or a `kubernetes` ApiClient wrapped
        self.timeout = timeout
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="k8s-call")

    def request(self, method: str, resource_path: str, body: Any = None, *, query: Mapping[str, Any] | None = None,
                content_type: str = JSON, timeout: float | None = None) -> dict[str, Any]:
        """One request; the decoded JSON answer (a dict), or ApiError."""
        headers = {"Accept": JSON}
        if body is not None:
            headers["Content-Type"] = content_type
        try:
            resp = self.http.request(method, resource_path, query=query, body=body, headers=headers,
                                     timeout=timeout or self.timeout)
            try:
                data = resp.read()
            finally:
                resp.release_conn()
        except TransportError as e:
            raise ApiError(0, "", str(e)[:500]) from None
        except Exception as e:  # urllib3 errors while reading the answer
            raise ApiError(0, type(e).__name__, str(e)[:500]) from None
        try:
            decoded = json.loads(data) if data else {}
        except ValueError:
            decoded = {}
        if not 200 <= resp.status < 300:
            if isinstance(decoded, dict) and decoded.get("kind") == "Status":
                raise ApiError(resp.status, str(decoded.get("reason") or resp.reason or ""), str(decoded.get("message") or ""))
            raise ApiError(resp.status, resp.reason or "", (data or b"")[:200].decode("utf-8", "replace"))
        return decoded if isinstance(decoded, dict) else {}

    async def call(self, method: str, resource_path: str, body: Any = None, **kw: Any) -> dict[str, Any]:
        """`request` on the pool, awaited."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, lambda: self.request(method, resource_path, body, **kw))

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
