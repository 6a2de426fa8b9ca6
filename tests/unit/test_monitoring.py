"""The monitoring HTTP port: /ready, /metrics, 404, and robustness against bad clients."""
from __future__ import annotations

import asyncio

from controlplane.debug.monitoring import Response, start_monitoring
from controlplane.server.metrics import Metrics


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 60))


class Monitoring:
    def __init__(self, routes=None):
        self.is_ready = False
        self.metrics = Metrics()
        self.routes = routes

    async def __aenter__(self) -> Monitoring:
        self.server = await start_monitoring("127.0.0.1", 0, lambda: self.is_ready, self.metrics, routes=self.routes)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc) -> None:
        self.server.close()
        await self.server.wait_closed()

    async def raw(self, data: bytes, *, eof: bool = False) -> bytes:
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        try:
            writer.write(data)
            await writer.drain()
            if eof:
                writer.write_eof()
            return await asyncio.wait_for(reader.read(), 5)
        finally:
            writer.close()

    async def get(self, path: str, method: str = "GET") -> tuple[int, dict[str, str], bytes]:
        resp = await self.raw(f"{method} {path} HTTP/1.1\r\nHost: localhost\r\nUser-Agent: test\r\n\r\n".encode())
        head, _, body = resp.partition(b"\r\n\r\n")
        lines = head.decode().split("\r\n")
        status = int(lines[0].split()[1])
        headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
        return status, headers, body


def test_ready_flips_from_503_to_200():
    async def main():
        async with Monitoring() as m:
            status, _, body = await m.get("/ready")
            assert status == 503 and body == b"not ready\n"
            m.is_ready = True
            status, headers, body = await m.get("/ready")
            assert status == 200 and body == b"ready\n"
            assert headers["content-length"] == "6" and headers["connection"] == "close"

    run(main())


def test_metrics_served_in_prometheus_text_format():
    async def main():
        async with Monitoring() as m:
            m.metrics.set_connections(3)
            m.metrics.pushed("type.googleapis.com/envoy.config.cluster.v3.Cluster", 0.002)
            status, headers, body = await m.get("/metrics?format=text")
            assert status == 200
            assert headers["content-type"].startswith("text/plain")
            text = body.decode()
            assert "# TYPE pilot_xds gauge" in text and "\npilot_xds 3.0\n" in text
            assert 'pilot_xds_pushes{type="cds"} 1.0' in text
            assert int(headers["content-length"]) == len(body)

    run(main())


def test_unknown_path_is_404_and_head_has_no_body():
    async def main():
        async with Monitoring() as m:
            status, _, _ = await m.get("/nope")
            assert status == 404
            status, headers, body = await m.get("/metrics", method="HEAD")
            assert status == 200 and body == b"" and int(headers["content-length"]) > 0
            status, _, _ = await m.get("/ready", method="POST")
            assert status == 405

    run(main())


def test_garbage_and_concurrent_requests_do_not_hurt_the_server():
    async def main():
        async with Monitoring() as m:
            m.is_ready = True
            garbage = await m.raw(b"\x00\x01\xffnot http at all\r\n\r\n")
            assert garbage.startswith(b"HTTP/1.1 400")
            # Half a request, then EOF.
            assert (await m.raw(b"GET /ready HT", eof=True)).startswith(b"HTTP/1.1 400")
            # Connect and leave without a word.
            assert await m.raw(b"", eof=True) == b""
            # A header section larger than the limit.
            # (The server answers 431 and closes with the rest unread, so the kernel may
            # reset the connection before the client reads the answer.)
            big = b"GET /ready HTTP/1.1\r\nX: " + b"a" * 40_000 + b"\r\n\r\n"
            try:
                answer = await m.raw(big)
            except ConnectionResetError:
                answer = b""
            assert answer == b"" or answer.startswith(b"HTTP/1.1 431")
            # Bad header line.
            assert (await m.raw(b"GET /ready HTTP/1.1\r\nno-colon\r\n\r\n")).startswith(b"HTTP/1.1 400")
            results = await asyncio.gather(*(m.get("/ready" if i % 2 else "/metrics") for i in range(40)))
            assert all(status == 200 for status, _, _ in results)

    run(main())


def test_extra_routes_and_failing_handler():
    async def main():
        def boom(_req):
            raise RuntimeError("handler bug")

        async def hello(req):
            return Response(200, f"hello {req.query.get('name', '')}\n".encode())

        async with Monitoring(routes={"/debug/hello": hello, "/debug/boom": boom}) as m:
            status, _, body = await m.get("/debug/hello?name=mesh")
            assert status == 200 and body == b"hello mesh\n"
            status, _, _ = await m.get("/debug/boom")
            assert status == 500
            status, _, _ = await m.get("/ready")
            assert status == 503

    run(main())
