"""The "Istio in Action" chapter 9 mesh on the test bed, for the e2e security tests.

`webapp` and `catalog` in `istioinaction` with sidecars, `legacy` beside them without
one, `sleep` in `default` without one, the ingress gateway in `istio-system` routing
`webapp.istioinaction.io` to webapp; meshd on the host with its secure port and a CA
directory; every Envoy a real one started from `python -m controlplane bootstrap`.

    with run_mesh(work, CHAPTER9_PODS, chapter9_layout) as mesh:
        mesh.apply("pa-mesh", "...PeerAuthentication...")   # a file in meshd's config dir
        mesh.expect("sleep", mesh.url("catalog", CATALOG_PORT), 56, "000")

A module adds pods (`PodSpec`), Services and objects of its own through the `pods` and
`layout` it passes. On exit the bed checks that no Envoy rejected an update (the
`update_rejected` counters), then stops every process and removes every namespace.
"""
from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from tests.support.harness import free_port, meshd
from tests.support.manifests import documents, gateway, ingress_gateway_service, service, virtual_service
from tests.support.paths import REPO

from .bed import Pod, TestBed, wait_for

NS = "istioinaction"
WEBAPP_PORT, CATALOG_PORT, CATALOG_ADMIN_PORT, LEGACY_PORT = 8080, 3000, 3001, 9000
GW_PORT = 8080  # the gateway's listener (Gateway port 80 -> Service targetPort 8080)
GATEWAY_HOST = "webapp.istioinaction.io"
ENVOY_ADMIN = 15000


@dataclass(frozen=True)
class PodSpec:
    """A pod of the layout: where it lives, what runs in it, and its proxy if any."""

    namespace: str
    proxy: str | None = None  # "sidecar" (with istio-init's rules) or "router" (a gateway); None: no Envoy
    service_account: str = "default"
    labels: str = ""  # k=v,k2=v2, as `meshd bootstrap --labels` takes them
    http: tuple[int, ...] = ()  # echo app ports
    tcp: tuple[int, ...] = ()
    plaintext_xds: bool = False  # the proxy talks to meshd's plaintext xDS port: no CA, no identity

    @property
    def sidecar(self) -> bool:
        return self.proxy == "sidecar"


MESHED = "security.istio.io/tlsMode=istio"
CHAPTER9_PODS: dict[str, PodSpec] = {
    "webapp": PodSpec(NS, "sidecar", "webapp", f"app=webapp,{MESHED}", http=(WEBAPP_PORT,)),
    "catalog": PodSpec(NS, "sidecar", "catalog", f"app=catalog,{MESHED}", http=(CATALOG_PORT, CATALOG_ADMIN_PORT)),
    "sleep": PodSpec("default", labels="app=sleep"),
    "legacy": PodSpec(NS, service_account="legacy", labels="app=legacy", http=(LEGACY_PORT,)),
    "gateway": PodSpec("istio-system", "router", "istio-ingressgateway-service-account",
                       "istio=ingressgateway,app=istio-ingressgateway"),
}
CHAPTER9_SERVICES = ("webapp", "catalog", "legacy")


def bootstrap(path: Path, kind: str, namespace: str, sa: str, pod: Pod, labels: str, ca_dir: Path | None,
              extra: Sequence[str] = (), xds_address: str = "127.0.0.1:15012") -> Path:
    """`meshd bootstrap` for a pod of the bed, talking TLS to 127.0.0.1:15012 (forwarded to
    meshd); with `ca_dir` None, no CA (a proxy on meshd's plaintext port, e.g. 15010);
    `extra`: more flags (e.g. `--xds-transport delta`)."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    ca = ["--ca-dir", str(ca_dir)] if ca_dir is not None else []
    subprocess.run(
        [sys.executable, "-m", "controlplane", "bootstrap", "--type", kind, "--namespace", namespace,
         "--service-account", sa, "--pod", f"{pod.name}-0", "--ip", pod.ip, "--labels", labels,
         "--xds-address", xds_address, "--admin-port", str(ENVOY_ADMIN), *ca,
         *extra, "--output", str(path)],
        check=True, env=env,
    )
    return path


def pod_yaml(name: str, spec: PodSpec, ip: str) -> str:
    """The Kubernetes Pod object of a bed pod (`<name>-0`), as the API server would hold it."""
    labels = ", ".join(f"{k}: {v}" for k, v in (kv.split("=", 1) for kv in spec.labels.split(",") if kv))
    return textwrap.dedent(f"""
        ---
        apiVersion: v1
        kind: Pod
        metadata: {{name: {name}-0, namespace: {spec.namespace}, labels: {{{labels}}}}}
        spec: {{serviceAccountName: {spec.service_account}, containers: [{{name: {name}}}]}}
        status: {{podIP: {ip}}}
        """)


def pods_yaml(specs: Mapping[str, PodSpec], pods: Mapping[str, Pod]) -> str:
    return "".join(pod_yaml(name, spec, pods[name].ip) for name, spec in specs.items())


def gateway_to_webapp() -> list[dict]:
    """The ingress gateway's Service (port 80 to GW_PORT), the coolstore Gateway for
    GATEWAY_HOST and its VirtualService to webapp."""
    return [ingress_gateway_service(GW_PORT), gateway("coolstore-gateway", NS, [GATEWAY_HOST]),
            virtual_service("webapp-vs-from-gw", NS, [GATEWAY_HOST], "webapp", gateways=["coolstore-gateway"], port=80)]


def chapter9_layout(pods: Mapping[str, Pod], vips: Mapping[str, str]) -> str:
    """Kubernetes objects for the chapter 9 pods, as the API server would hold them."""
    return documents(
        service("webapp", NS, [("http", 80, WEBAPP_PORT)], cluster_ip=vips["webapp"]),
        service("catalog", NS, [("http", 80, CATALOG_PORT), ("http-admin", 81, CATALOG_ADMIN_PORT)],
                cluster_ip=vips["catalog"]),
        service("legacy", NS, [("http", 80, LEGACY_PORT)], cluster_ip=vips["legacy"]),
        *gateway_to_webapp()) + pods_yaml(CHAPTER9_PODS, pods)


def tcp_line(pod: Pod, host: str, port: int, data: bytes = b"ping\n") -> bytes:
    """Send `data` from `pod` over a new TCP connection and read the answer up to its first
    newline (less when the peer closes first); a refused or reset connection raises OSError."""
    s = pod.connect(host, port)
    with s, s.makefile("rb") as answer:
        s.sendall(data)
        return answer.readline()


def ssl_handshakes(envoy, prefix: str) -> int:
    """TLS handshakes of an Envoy's listeners whose stats start with `prefix`."""
    return sum(v for k, v in envoy.stats("ssl.handshake").items() if k.startswith(prefix))


@dataclass(frozen=True)
class Reply:
    """What curl saw: its exit code (0, 56 for a reset...), the HTTP status ("000": none),
    the body and curl's error text."""

    exit_code: int
    status: str
    body: str
    stderr: str

    def __iter__(self):  # (exit, status, stderr), the shape Mesh.curl has always returned
        return iter((self.exit_code, self.status, self.stderr))


class Mesh:
    """The running layout, with helpers that poll until an expected outcome holds
    (pushes are asynchronous) and then assert it with curl's exit code and status."""

    def __init__(self, bed: TestBed, config_dir: Path, pods: dict, vips: dict, envoys: dict, cp):
        self.bed, self.config_dir, self.pods, self.vips, self.envoys, self.cp = bed, config_dir, pods, vips, envoys, cp
        self.applied: set[str] = set()  # config files written by apply() and still there

    def apply(self, name: str, text: str | None) -> None:
        """Write (or with None remove) `<config_dir>/<name>.yaml`; meshd picks it up live."""
        path = self.config_dir / f"{name}.yaml"
        if text is None:
            path.unlink(missing_ok=True)
            self.applied.discard(name)
            return
        tmp = path.with_suffix(".tmp")
        tmp.write_text(textwrap.dedent(text))
        tmp.replace(path)
        self.applied.add(name)

    def request(self, client: str, url: str, headers: dict | None = None, method: str = "GET") -> Reply:
        """One curl from `client`'s pod (through its sidecar's interception, if it has one)."""
        args = ["-o", "-", "-w", "\n%{http_code}", "-X", method]
        for k, v in (headers or {}).items():
            args += ["-H", f"{k}: {v}"]
        cp = self.pods[client].curl(url, *args, timeout=5)
        body, _, status = cp.stdout.rpartition("\n")
        return Reply(cp.returncode, status.strip(), body, cp.stderr.strip())

    def curl(self, client: str, url: str, headers: dict | None = None) -> tuple[int, str, str]:
        r = self.request(client, url, headers)
        return r.exit_code, r.status, r.stderr

    def expect(self, client: str, url: str, exit_code: int, http_code: str, headers: dict | None = None,
               timeout: float = 10.0, stderr_part: str = "", method: str = "GET", body_part: str = "") -> Reply:
        """Wait until `client` -> `url` gives curl exit `exit_code` and status `http_code`
        (and the given stderr/body fragments), then check once more that it stays so."""
        last: Reply | None = None
        what = f"{client} {method} {url}: exit {exit_code}, http {http_code}"
        what += f", body ~ {body_part!r}" if body_part else ""

        def holds(r: Reply) -> bool:
            return (r.exit_code == exit_code and r.status == http_code and stderr_part in r.stderr
                    and body_part in r.body)

        def ok():
            nonlocal last
            last = self.request(client, url, headers, method)
            return holds(last)

        try:
            wait_for(ok, timeout, interval=0.2, what=what)
        except AssertionError:
            raise AssertionError(f"{what}: got {last}\n{self.diagnosis()}") from None
        # and it stays that way (not a flap during a push)
        got = self.request(client, url, headers, method)
        assert holds(got), f"{what}: then {got}"
        return got

    def rejected_updates(self) -> dict[str, dict[str, int]]:
        """Each Envoy's non-zero `update_rejected` counters (empty: it took every update)."""
        out = {}
        for name, e in self.envoys.items():
            bad = {k: v for k, v in e.stats("update_rejected").items() if v}
            if bad:
                out[name] = bad
        return out

    def diagnosis(self) -> str:
        """What an operator would look at when an outcome does not come: the rejected
        updates of each Envoy and the tail of meshd's log."""
        try:
            rejected = repr(self.rejected_updates())
        except Exception as e:
            rejected = f"(unreadable: {e!r})"
        return f"envoy update_rejected: {rejected}\nmeshd log tail:\n{self.cp.log()[-3000:]}"

    def url(self, pod: str, port: int, path: str = "/") -> str:
        return f"http://{self.pods[pod].ip}:{port}{path}"

    def vip(self, svc: str, port: int = 80, path: str = "/") -> str:
        return f"http://{self.vips[svc]}:{port}{path}"

    def gateway_url(self, path: str = "/") -> str:
        return self.url("gateway", GW_PORT, path)


@contextlib.contextmanager
def run_mesh(work: Path, pods: Mapping[str, PodSpec], layout: Callable[[dict, dict], str],
             services: Sequence[str] = CHAPTER9_SERVICES, meshd_args: Sequence[str] = (),
             prepare: Callable[[TestBed, dict, dict], None] | None = None,
             bootstrap_args: Sequence[str] = ()) -> Iterator[Mesh]:
    """The bed with `pods`, a VIP per name of `services`, `layout(pods, vips)` as meshd's
    first config file, each pod's echo app, then meshd and the Envoys (all ready, each
    bootstrapped with `bootstrap_args` too).
    `prepare(bed, pods, vips)` runs before meshd starts (servers a test needs in pods).
    On exit: no Envoy may have rejected an update; everything is stopped and removed."""
    config_dir, ca_dir = work / "config", work / "ca"
    config_dir.mkdir()
    with TestBed() as bed:
        bed_pods = {name: bed.add_pod(name, sidecar=spec.sidecar) for name, spec in pods.items()}
        vips = {name: bed.service_ip() for name in services}
        (config_dir / "layout.yaml").write_text(layout(bed_pods, vips))
        for name, spec in pods.items():
            if spec.http or spec.tcp:
                bed_pods[name].run_echo(http=spec.http, tcp=spec.tcp)
        if prepare is not None:
            prepare(bed, bed_pods, vips)
        secure = free_port("127.0.0.1")
        with meshd(config_dir, work, extra=["--ca-dir", str(ca_dir), "--secure-xds-port", str(secure),
                                            *meshd_args]) as cp:
            envoys = {}
            for name, spec in pods.items():
                if spec.proxy is None:
                    continue
                pod = bed_pods[name]
                host_port, pod_port, ca = (cp.xds_port, 15010, None) if spec.plaintext_xds else (secure, 15012, ca_dir)
                pod.forward_to_host(host_port, pod_port=pod_port)
                boot = bootstrap(work / f"{name}-bootstrap.yaml", spec.proxy, spec.namespace, spec.service_account,
                                 pod, spec.labels, ca, bootstrap_args, xds_address=f"127.0.0.1:{pod_port}")
                envoys[name] = pod.start_envoy(boot, admin_port=ENVOY_ADMIN)
            for name, e in envoys.items():
                wait_for(e.ready, 30, what=lambda name=name: f"{name} envoy ready\n{envoys[name].log(40)}")
            yield Mesh(bed, config_dir, bed_pods, vips, envoys, cp)
            # Envoy accepted everything meshd sent, across every scenario of the module.
            for name, e in envoys.items():
                bad = {k: v for k, v in e.stats("update_rejected").items() if v}
                assert bad == {}, f"{name} rejected config: {bad}\n{e.log(60)}"
