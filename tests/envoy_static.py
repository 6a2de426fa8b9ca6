"""Static Envoy bootstraps around generated filters: to check that Envoy accepts them
(`--mode validate`) and to send real traffic through them, without a control plane.

An HTTP listener runs its filters before the router, which answers every request itself
(200, body `ok`); a TCP listener runs its filters before `tcp_proxy` to a cluster.
"""
from __future__ import annotations

import contextlib
import json
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from google.protobuf import json_format
from google.protobuf.message import Message

from tests.harness import EnvoyHandle, Process, envoy_binary, wait_for


@dataclass
class StaticEnvoy:
    """Listeners and clusters of a static bootstrap; add_* return the listener's port."""

    admin_port: int = 0
    listeners: list[dict] = field(default_factory=list)
    clusters: list[dict] = field(default_factory=list)

    def add_http(self, filters: list[Message], port: int = 0) -> int:
        hcm = {"@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3."
                        "HttpConnectionManager",
               "stat_prefix": f"l{len(self.listeners)}",
               "route_config": {"virtual_hosts": [{"name": "all", "domains": ["*"], "routes": [
                   {"match": {"prefix": "/"}, "direct_response": {"status": 200, "body": {"inline_string": "ok"}}}]}]},
               "http_filters": [_json(f) for f in filters] + [
                   {"name": "envoy.filters.http.router", "typed_config": {
                       "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}]}
        return self._listener([{"name": "envoy.filters.network.http_connection_manager", "typed_config": hcm}], port)

    def add_tcp(self, filters: list[Message], cluster: str, port: int = 0) -> int:
        proxy = {"name": "envoy.filters.network.tcp_proxy", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
            "stat_prefix": f"l{len(self.listeners)}", "cluster": cluster}}
        return self._listener([_json(f) for f in filters] + [proxy], port)

    def add_cluster(self, name: str, port: int, http2: bool = False) -> None:
        c: dict = {"name": name, "type": "STATIC", "connect_timeout": "1s", "load_assignment": {
            "cluster_name": name, "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {
                "socket_address": {"address": "127.0.0.1", "port_value": port}}}}]}]}}
        if http2:
            c["typed_extension_protocol_options"] = {"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                "explicit_http_config": {"http2_protocol_options": {}}}}
        self.clusters.append(c)

    def _listener(self, filters: list[dict], port: int) -> int:
        self.listeners.append({"name": f"l{len(self.listeners)}", "address": {"socket_address": {
            "address": "127.0.0.1", "port_value": port}}, "filter_chains": [{"filters": filters}]})
        return port

    def bootstrap(self) -> dict:
        return {"admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": self.admin_port}}},
                "static_resources": {"listeners": self.listeners, "clusters": self.clusters}}

    def validate(self, path: Path) -> None:
        path.write_text(json.dumps(self.bootstrap()))
        proc = subprocess.run([envoy_binary(), "--mode", "validate", "-c", str(path), "--log-level", "warn",
                               "--use-dynamic-base-id"], capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]

    @contextlib.contextmanager
    def run(self, workdir: Path) -> Iterator[EnvoyHandle]:
        """Envoy running this bootstrap until the block ends (admin_port must be set)."""
        assert self.admin_port, "run() needs a fixed admin port"
        path = workdir / f"static-envoy-{self.admin_port}.json"
        path.write_text(json.dumps(self.bootstrap()))
        p = Process("envoy", [envoy_binary(), "-c", str(path), "--use-dynamic-base-id", "--concurrency", "1",
                              "-l", "warning"], workdir / f"static-envoy-{self.admin_port}.log")
        try:
            handle = EnvoyHandle(p, self.admin_port)
            wait_for(lambda: handle.admin_up() or not p.alive(), 20, what="envoy admin")
            assert p.alive(), f"envoy exited:\n{p.log()}"
            wait_for(lambda: handle.stats("listener_manager.total_listeners_active").get(
                "listener_manager.total_listeners_active") == len(self.listeners), 20, what="listeners active")
            yield handle
        finally:
            p.stop()


def _json(msg: Message) -> dict:
    return json.loads(json_format.MessageToJson(msg))
