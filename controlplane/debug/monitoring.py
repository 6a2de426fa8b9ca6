"""The monitoring HTTP port (15014, as istiod's): /ready and /metrics.

A deliberately tiny HTTP/1.1 server on asyncio streams: one request per connection
(`Connection: close`), bounded header size and read time, so a bad or slow client
costs one connection and nothing else. More routes (debug views) can be passed in.
"""
from __future__ import annotations

import asyncio
import dataclasses
import inspect
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Protocol
from urllib.parse import parse_qsl, urlsplit

import structlog


class Exposition(Protocol):
    """What /metrics serves: the registry's text and its content type (server.metrics.Metrics)."""

    content_type: str

    def render(self) -> bytes: ...


MAX_HEAD = 16 * 1024  # request line + headers
READ_TIMEOUT = 10.0
TEXT = "text/plain; charset=utf-8"


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    query: Mapping[str, str]
    headers: Mapping[str, str]  # lower-case names
    peer: str = ""  # the client's address ("" if unknown), for access checks on /debug


@dataclass(frozen=True)
class Response:
    status: int
    body: bytes = b""
    content_type: str = TEXT
    headers: Mapping[str, str] = field(default_factory=dict)


Handler = Callable[[Request], "Response | Awaitable[Response]"]


def _text(status: int, body: str) -> Response:
    return Response(status, body.encode())


async def start_monitoring(
    host: str,
    port: int,
    ready: Callable[[], bool],
    metrics: Exposition,
    routes: Mapping[str, Handler] | None = None,
    logger=None,
) -> asyncio.Server:
    """Serve GET /ready (200 once `ready()` is true, else 503), GET /metrics, and any
    extra `routes` (path -> handler). The bound port is
    `server.sockets[0].getsockname()[1]` (useful with port 0)."""
    log = logger if logger is not None else structlog.get_logger("meshd.monitoring")

    def ready_handler(_: Request) -> Response:
        return _text(200, "ready\n") if ready() else _text(503, "not ready\n")

    def metrics_handler(_: Request) -> Response:
        return Response(200, metrics.render(), metrics.content_type)

    table: dict[str, Handler] = {"/ready": ready_handler, "/metrics": metrics_handler}
    table.update(routes or {})

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            peername = writer.get_extra_info("peername")
            peer = str(peername[0]) if isinstance(peername, tuple) and peername else ""
            response, head_only = await _serve_one(reader, table, log, peer)
            if response is not None:
                writer.write(_encode(response, head_only))
                await writer.drain()
        except (TimeoutError, ConnectionError):
            pass
        except Exception:  # never let one request take the port down
            log.exception("monitoring request failed")
        finally:
            writer.close()
            try:
                await writer.wait_closed()
            except Exception:
                pass

    server = await asyncio.start_server(handle, host, port, limit=MAX_HEAD)
    log.info("monitoring server listening", host=host, port=server.sockets[0].getsockname()[1])
    return server


async def _serve_one(
    reader: asyncio.StreamReader, table: Mapping[str, Handler], log, peer: str = ""
) -> tuple[Response | None, bool]:
    try:
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), READ_TIMEOUT)
    except asyncio.LimitOverrunError:
        return _text(431, "request header too large\n"), False
    except asyncio.IncompleteReadError as e:
        # Closed before a full request: answer only if something was said.
        return (_text(400, "bad request\n") if e.partial.strip() else None), False
    except TimeoutError:
        return _text(408, "request timeout\n"), False

    request = _parse(head)
    if request is None:
        return _text(400, "bad request\n"), False
    request = dataclasses.replace(request, peer=peer)
    head_only = request.method == "HEAD"
    if request.method not in ("GET", "HEAD"):
        return Response(405, b"method not allowed\n", headers={"Allow": "GET, HEAD"}), False
    handler = table.get(request.path)
    if handler is None:
        return _text(404, "not found\n"), head_only
    try:
        result = handler(request)
        if inspect.isawaitable(result):
            result = await result
    except Exception:
        log.exception("monitoring handler failed", path=request.path)
        return _text(500, "internal error\n"), head_only
    return result, head_only


def _parse(head: bytes) -> Request | None:
    try:
        text = head.decode("latin-1")
    except UnicodeDecodeError:  # pragma: no cover - latin-1 decodes anything
        return None
    lines = text.split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1.") or not parts[0].isalpha() or not parts[1]:
        return None
    method, target, _ = parts
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if not line:
            continue
        name, sep, value = line.partition(":")
        if not sep or not name.strip():
            return None
        headers[name.strip().lower()] = value.strip()
    url = urlsplit(target)
    return Request(method.upper(), url.path or "/", dict(parse_qsl(url.query)), headers)


def _encode(response: Response, head_only: bool) -> bytes:
    try:
        reason = HTTPStatus(response.status).phrase
    except ValueError:
        reason = "Unknown"
    lines = [
        f"HTTP/1.1 {response.status} {reason}",
        f"Content-Type: {response.content_type}",
        f"Content-Length: {len(response.body)}",
        "Connection: close",
    ]
    lines += [f"{k}: {v}" for k, v in response.headers.items()]
    head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    return head if head_only else head + response.body
