"""HTTP handlers for the /debug pages on the monitoring port, and who may read them.

`--debug-access` decides who gets an answer from any /debug path:
- `localhost` (default): callers on a loopback address only;
- `authenticated`: loopback callers, and callers presenting `Authorization: Bearer <jwt>`
  with a token meshd's CA issued for a service account in the root namespace
  (`meshd token --namespace istio-system ...`), as istiod limits its debug views to the
  control plane's namespace;
- `open`: anyone who can reach the port (istiod's default; only on trusted networks).

Config dumps never carry private keys (they are `[redacted]` as in Envoy's admin), but
they show the whole mesh's routing, hence the default.
"""
from __future__ import annotations

import ipaddress
import json
from collections.abc import Mapping, Sequence
from typing import Any

from .monitoring import Handler, Request, Response
from .views import DebugViews

ACCESS_MODES = ("localhost", "authenticated", "open")
JSON = "application/json"


def _json(data: Any, status: int = 200) -> Response:
    return Response(status, (json.dumps(data, indent=2) + "\n").encode(), JSON)


def is_loopback(peer: str) -> bool:
    try:
        ip = ipaddress.ip_address(peer.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_loopback


class DebugAccess:
    def __init__(self, mode: str = "localhost", authenticators: Sequence[Any] = (), namespace: str = "istio-system"):
        if mode not in ACCESS_MODES:
            raise ValueError(f"debug access must be one of {', '.join(ACCESS_MODES)}, not {mode!r}")
        self.mode = mode
        self.authenticators = list(authenticators)
        self.namespace = namespace

    def refusal(self, req: Request) -> str | None:
        """None when the caller may read /debug; otherwise why not."""
        if self.mode == "open" or is_loopback(req.peer):
            return None
        if self.mode == "localhost":
            return "debug endpoints answer loopback callers only (meshd serve --debug-access)"
        auth = req.headers.get("authorization", "")
        if not auth:
            return "debug endpoints need a bearer token (Authorization: Bearer <token from meshd token>)"
        for a in self.authenticators:
            try:
                ident = a.authenticate([("authorization", auth)], req.peer)
            except Exception as e:  # AuthenticationError and friends
                return f"debug access denied: {e}"
            if ident is None:
                continue
            if getattr(ident, "namespace", None) == self.namespace:
                return None
            return f"debug access denied: {ident} is not in namespace {self.namespace}"
        return "debug access denied: no authenticator accepted the token"

    def guard(self, handler: Handler) -> Handler:
        def guarded(req: Request):
            why = self.refusal(req)
            if why is not None:
                return Response(403, (why + "\n").encode())
            return handler(req)

        return guarded


def debug_routes(views: DebugViews) -> dict[str, Handler]:
    def syncz(_: Request) -> Response:
        return _json(views.syncz())

    def adsz(_: Request) -> Response:
        return _json(views.adsz())

    def registryz(_: Request) -> Response:
        return _json(views.registryz())

    def endpointz(_: Request) -> Response:
        return _json(views.endpointz())

    def configz(req: Request) -> Response:
        return _json(views.configz(content=req.query.get("content", "") in ("1", "true", "yes")))

    def push_status(_: Request) -> Response:
        return _json(views.push_status())

    def config_dump(req: Request) -> Response:
        proxy = req.query.get("proxyID") or req.query.get("proxy") or ""
        if not proxy:
            return _json({"error": "want ?proxyID=<node id, connection id or pod.namespace>",
                          "connected": sorted({c.proxy.short for c in views.ads.connections()})}, 400)
        dump = views.config_dump(proxy)
        if dump is None:
            return _json({"error": f"proxy {proxy!r} is not connected to this meshd",
                          "connected": sorted({c.proxy.short for c in views.ads.connections()})}, 404)
        return Response(200, (dump.to_json("  ") + "\n").encode(), JSON)

    def mtlsz(req: Request) -> Response:
        proxy = req.query.get("proxyID") or req.query.get("proxy") or ""
        data = views.mtlsz(proxy) if proxy else None
        if data is None:
            return _json({"error": f"proxy {proxy!r} is not connected to this meshd" if proxy else "want ?proxyID=",
                          "connected": sorted({c.proxy.short for c in views.ads.connections()})}, 404 if proxy else 400)
        return _json(data)

    routes: dict[str, Handler] = {
        "/debug/syncz": syncz,
        "/debug/config_dump": config_dump,
        "/debug/mtlsz": mtlsz,
        "/debug/adsz": adsz,
        "/debug/registryz": registryz,
        "/debug/endpointz": endpointz,
        "/debug/configz": configz,
        "/debug/push_status": push_status,
    }
    return routes


def with_index(routes: Mapping[str, Handler]) -> dict[str, Handler]:
    """Add GET /debug listing every debug path."""
    paths = sorted(p for p in routes if p.startswith("/debug/"))

    def index(_: Request) -> Response:
        return _json({"endpoints": paths})

    return {**routes, "/debug": index}


def protect(routes: Mapping[str, Handler], access: DebugAccess) -> dict[str, Handler]:
    """Every /debug and /ui path behind the access check; other paths untouched."""
    return {p: (access.guard(h) if p in ("/debug", "/ui") or p.startswith(("/debug/", "/ui/")) else h)
            for p, h in routes.items()}


def install(routes: dict[str, Handler], views: DebugViews, access: DebugAccess) -> dict[str, Handler]:
    """The monitoring port's extra routes: existing ones (e.g. /debug/certs) plus the debug
    views, all /debug paths guarded."""
    merged = with_index({**routes, **debug_routes(views)})
    return protect(merged, access)


__all__: Sequence[str] = ["DebugAccess", "ACCESS_MODES", "debug_routes", "install", "is_loopback", "protect",
                          "with_index"]
