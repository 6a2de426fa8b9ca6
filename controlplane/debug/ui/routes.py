"""/ui/ on the monitoring port: the page, its script and style (static/, shipped as
package data: no external asset), and /ui/model.json, which the page polls.

The handlers only gather the inputs (the ADS server's mesh snapshot and connections, the
telemetry store) and hand them to model.build_page; every /ui path is behind the same
access rule as /debug (handlers.protect).
"""
from __future__ import annotations

import json
import time
from collections.abc import Callable
from importlib import resources
from typing import Any

from ...telemetry.edges import edges
from ...telemetry.store import TelemetryStore
from ..monitoring import Handler, Request, Response
from ..status import syncz_entry
from ..times import rfc3339
from .model import ProxyState, build_page

STATIC = {"/ui/": ("index.html", "text/html; charset=utf-8"),
          "/ui/app.js": ("app.js", "text/javascript; charset=utf-8"),
          "/ui/style.css": ("style.css", "text/css; charset=utf-8")}
# The page is served from meshd itself: forbid anything from elsewhere.
SECURITY_HEADERS = {"Content-Security-Policy": "default-src 'self'; img-src 'self' data:", "Cache-Control": "no-store",
                    "X-Content-Type-Options": "nosniff"}


def page_model(ads: Any, telemetry: TelemetryStore | None, trust_domain: str = "cluster.local",
               clock: Callable[[], float] = time.time) -> dict[str, Any]:
    mesh = ads.mesh
    proxies = [ProxyState(c.proxy, syncz_entry(c)) for c in ads.connections()]
    calls = edges(telemetry.proxies(), mesh, telemetry.grew_recently, trust_domain) if telemetry is not None else ()
    model = build_page(mesh, proxies, calls, generated=rfc3339(clock()))
    model["telemetry"] = {"enabled": telemetry is not None, "proxiesReporting": len(telemetry) if telemetry else 0,
                          "recentSeconds": telemetry.recent if telemetry is not None else 0}
    return model


def ui_routes(ads: Any, telemetry: TelemetryStore | None, trust_domain: str = "cluster.local") -> dict[str, Handler]:
    files = resources.files(__package__) / "static"

    def static(path: str) -> Handler:
        name, content_type = STATIC[path]
        body = (files / name).read_bytes()

        def handler(_: Request) -> Response:
            return Response(200, body, content_type, SECURITY_HEADERS)

        return handler

    def model(_: Request) -> Response:
        body = json.dumps(page_model(ads, telemetry, trust_domain), indent=1) + "\n"
        return Response(200, body.encode(), "application/json", SECURITY_HEADERS)

    def redirect(_: Request) -> Response:
        return Response(301, b"", headers={"Location": "/ui/"})

    return {"/ui": redirect, **{p: static(p) for p in STATIC}, "/ui/model.json": model}
