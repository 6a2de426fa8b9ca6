"""meshd in the test's own process (in a thread) with a generator the test can break, and
the config of the operator's-view tests (test_debug_operator_view, test_resilience_nack):
an ingress gateway for webapp.istioinaction.io with webapp v1 behind it, and a sidecar
`catalog` at 127.0.0.5."""
from __future__ import annotations

import asyncio
import contextlib
import io
import json
import threading

from controlplane import app as meshd_app
from controlplane import cli, names
from controlplane.generators import Generator
from controlplane.generators.resources import ResourceSet, pack
from tests.support.harness import http_get, wait_for
from tests.support.manifests import MESHED, destination_rule, documents, gateway, ingress_gateway_service, pod, service

NS = "istioinaction"
HOST = "webapp.istioinaction.io"
SIDECAR_IP = "127.0.0.5"
CATALOG_PORT = 3000


def config(gw_port: int, backend_port: int) -> str:
    return documents(
        ingress_gateway_service(gw_port),
        gateway("coolstore-gateway", NS, [HOST]),
        service("webapp", NS, [("http", 80, backend_port)]),
        pod("webapp-v1", NS, "127.0.0.1", {"app": "webapp", "version": "v1"}),
        destination_rule("webapp", NS, "webapp", subsets={"v1": {"version": "v1"}}),
        service("catalog", NS, [("http", 80, CATALOG_PORT)]),
        pod("catalog-0", NS, SIDECAR_IP, {"app": "catalog", **MESHED}, service_account="catalog"))


def vs(subset: str) -> str:
    return f"""
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: webapp, namespace: istioinaction}}
spec:
  hosts: ["{HOST}"]
  gateways: [coolstore-gateway]
  http:
  - route:
    - destination: {{host: webapp, port: {{number: 80}}, subset: {subset}}}
"""


class BreakableGenerator(Generator):
    """Test-only: when `broken` is set, every listener sent to a router gets its first
    filter chain twice, which Envoy rejects (duplicate filter chain match)."""

    broken = threading.Event()

    def generate(self, mesh, proxy, type_url, key=None):
        rs = super().generate(mesh, proxy, type_url)
        if not (self.broken.is_set() and type_url == names.LISTENER and proxy.type == "router"):
            return rs
        from envoy.config.listener.v3 import listener_pb2

        items = []
        for r in rs.values():
            l = listener_pb2.Listener()
            r.any.Unpack(l)
            if l.filter_chains:
                l.filter_chains.append(l.filter_chains[0])
            items.append(pack(r.name, type_url, l))
        return ResourceSet(type_url, items)


@contextlib.contextmanager
def inprocess_meshd(opts: meshd_app.ServeOptions):
    loop = asyncio.new_event_loop()
    holder: dict = {}

    def run() -> None:
        asyncio.set_event_loop(loop)
        holder["stop"] = asyncio.Event()
        try:
            loop.run_until_complete(meshd_app.serve(opts, holder["stop"]))
        except Exception as e:
            holder["error"] = e

    t = threading.Thread(target=run, name="meshd", daemon=True)
    t.start()
    try:
        wait_for(lambda: "error" in holder or quiet_get(opts.monitoring_port, "/ready")[0] == 200, 30, what="meshd ready")
        assert "error" not in holder, holder.get("error")
        yield
    finally:
        if "stop" in holder:
            loop.call_soon_threadsafe(holder["stop"].set)
        t.join(15)


def quiet_get(port: int, path: str) -> tuple[int, bytes]:
    """GET 127.0.0.1:port/path; (0, b"") while nothing answers there."""
    try:
        return http_get("127.0.0.1", port, path, timeout=5)
    except OSError:
        return 0, b""


def run_cli(*argv: str) -> tuple[int, str]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = cli.main(list(argv))
    return code, out.getvalue()


def syncz(mon: int) -> dict:
    status, body = quiet_get(mon, "/debug/syncz")
    assert status == 200, body
    return json.loads(body)
