"""Injected pods on the test bed: the init step as the injector writes it, then real Envoy
carrying the pods' traffic with mTLS, and a projected token that rotates.

No kubelet runs. What it would do is done here by hand, and only that:
- each pod is a network namespace of the test bed (tests/testbed); the pod object is
  the injector's output (`inject_pod`) for a plain pod with the annotation
  `sidecar.istio.io/discoveryAddress: 127.0.0.1:15012` (meshd's secure port, forwarded
  into the pod: there is no Service DNS);
- the istio-init container's command and args run as root inside the pod's namespace,
  exactly as injected, with its env resolved as the downward API would (fieldRefs to the
  pod's name, namespace, IP, service account); volume mounts are directories of the pod
  (no mount namespace), so the container paths in the args are mapped to them: the
  projected token (minted by `meshd token`, written without a newline like the kubelet's),
  the root certificate (the istio-ca-root-cert ConfigMap), the labels file (as the
  downward API writes it) and the istio-envoy emptyDir holding the bootstrap;
- Envoy then runs as UID 1337 with that bootstrap (the test bed's Envoy flags, not the
  injected container's: one worker, short drain).
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest

from controlplane import names
from controlplane.inject.config import InjectionConfig
from controlplane.inject.pod import INIT, inject_pod
from tests.support.ads import ads_fetch
from tests.support.harness import MeshdHandle, free_port, meshd
from tests.support.manifests import documents, service
from tests.support.paths import REPO
from tests.testbed import iptables as bed_iptables
from tests.testbed.bed import Envoy, Pod, TestBed, wait_for
from tests.testbed.fixtures import require_testbed

pytestmark = pytest.mark.e2e

NS = "istioinaction"
WEBAPP_PORT, CATALOG_PORT = 8080, 3000
SHORT_TTL = "30s"  # webapp's first token: expires during the rotation test
# The container paths of the injected mounts -> a directory of the bed's pod.
MOUNTS = {"/var/run/secrets/istio": "istiod-ca-cert", "/etc/istio/proxy": "istio-envoy",
          "/var/run/secrets/tokens": "istio-token", "/etc/istio/pod": "istio-podinfo"}


@dataclass
class App:
    name: str
    service_account: str
    port: int
    ttl: str
    pod: Pod | None = None
    injected: dict[str, Any] = field(default_factory=dict)
    envoy: Envoy | None = None

    @property
    def pod_name(self) -> str:
        return f"{self.name}-0"

    @property
    def node_id(self) -> str:
        assert self.pod is not None
        return names.node_id("sidecar", self.pod.ip, self.pod_name, NS)

    @property
    def spiffe(self) -> str:
        return f"spiffe://cluster.local/ns/{NS}/sa/{self.service_account}"

    def path(self, container_path: str) -> Path:
        """Where a container path of the injected mounts lives in the bed's pod."""
        assert self.pod is not None
        for mount, volume in MOUNTS.items():
            if container_path.startswith(mount + "/"):
                return self.pod.dir / volume / container_path[len(mount) + 1:]
        raise AssertionError(f"{container_path}: not under an injected mount")


@dataclass
class Cluster:
    bed: TestBed
    apps: dict[str, App]
    vips: dict[str, str]
    work: Path
    meshd_args: list[str]
    cp: MeshdHandle | None = None
    restarts: list[Any] = field(default_factory=list)

    def start_meshd(self) -> MeshdHandle:
        ctx = meshd(self.work / "config", self.work, extra=self.meshd_args, home=self.work / "home")
        self.cp = ctx.__enter__()
        self.restarts.append(ctx)
        return self.cp

    def restart_meshd(self) -> MeshdHandle:
        self.restarts[-1].__exit__(None, None, None)
        return self.start_meshd()

    def stop(self) -> None:
        for ctx in reversed(self.restarts):
            ctx.__exit__(None, None, None)


def plain_pod(app: App) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": app.pod_name, "namespace": NS, "labels": {"app": app.name},
                         "annotations": {"sidecar.istio.io/discoveryAddress": "127.0.0.1:15012"}},
            "spec": {"serviceAccountName": app.service_account,
                     "containers": [{"name": app.name, "image": "app", "ports": [{"containerPort": app.port}]}]}}


def registry_pod(app: App) -> dict[str, Any]:
    """The injected pod as meshd's config directory holds it (what the API server would)."""
    assert app.pod is not None
    meta = app.injected["metadata"]
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": meta["name"], "namespace": NS, "labels": meta["labels"]},
            "spec": {"serviceAccountName": app.service_account, "containers": [{"name": app.name}]},
            "status": {"podIP": app.pod.ip}}


def downward_value(app: App, env: dict[str, Any]) -> str:
    """An env entry of the injected container, resolved as the kubelet would."""
    if "value" in env:
        return str(env["value"])
    assert app.pod is not None
    path = env["valueFrom"]["fieldRef"]["fieldPath"]
    fields = {"metadata.name": app.pod_name, "metadata.namespace": NS, "status.podIP": app.pod.ip,
              "spec.serviceAccountName": app.service_account, "status.hostIP": "", "spec.nodeName": ""}
    return fields[path]


def write_token(path: Path, token: str) -> None:
    """As the kubelet's atomic writer: the whole new token appears at once, no newline."""
    tmp = path.with_name(f".{path.name}.new")
    tmp.write_text(token)
    tmp.chmod(0o644)
    tmp.replace(path)


def iptables_flags() -> list[str]:
    """The bed may run iptables-legacy (a kernel without nf_tables): pod-init must write
    with the same backend as the bed reads. Empty when `iptables` already is it."""
    version = subprocess.run(["iptables", "--version"], capture_output=True, text=True).stdout
    default = "nft" if "nf_tables" in version else "legacy"
    name = bed_iptables.backend().name
    return [] if name == default else ["--force-iptables-binary", f"iptables-{name}"]


def run_init(app: App, cp: MeshdHandle) -> list[str]:
    """The volumes the kubelet would mount, then istio-init as injected; returns its argv."""
    assert app.pod is not None
    (init,) = [c for c in app.injected["spec"]["initContainers"] if c["name"] == INIT]
    args = [str(a) for a in init["args"]]
    for volume in MOUNTS.values():
        d = app.pod.dir / volume
        d.mkdir(mode=0o755, exist_ok=True)
    token = app.path(args[args.index("--token-path") + 1])
    write_token(token, cp.token(NS, app.service_account, ttl=app.ttl))
    shutil.copyfile(cp.root_cert, app.path(args[args.index("--root-cert") + 1]))
    labels = app.injected["metadata"]["labels"]
    (app.pod.dir / "istio-podinfo" / "labels").write_text(
        "".join(f"{k}={json.dumps(v)}\n" for k, v in sorted(labels.items())))
    mapped = [str(app.path(a)) if a.startswith(tuple(MOUNTS)) else a for a in args]
    mapped += ["--labels-file", str(app.pod.dir / "istio-podinfo" / "labels"), *iptables_flags()]
    env = {"PATH": os.environ["PATH"], "PYTHONPATH": str(REPO),
           **{e["name"]: downward_value(app, e) for e in init["env"]}}
    assert init["command"] == ["meshd"]  # this checkout's meshd: python -m controlplane
    cp_init = app.pod.exec([sys.executable, "-m", "controlplane", *mapped], env=env, timeout=60)
    assert cp_init.returncode == 0, f"{app.name} istio-init: exit {cp_init.returncode}\n{cp_init.stderr}"
    return mapped


@pytest.fixture(scope="module")
def cluster(tmp_path_factory) -> Iterator[Cluster]:
    require_testbed()
    work = tmp_path_factory.mktemp("injected")
    apps = {"webapp": App("webapp", "webapp", WEBAPP_PORT, SHORT_TTL),
            "catalog": App("catalog", "catalog", CATALOG_PORT, "1h")}
    cfg = InjectionConfig.from_sources({}, {})
    for app in apps.values():
        result = inject_pod(plain_pod(app), cfg)
        assert result.warnings == ()
        app.injected = result.pod
    secure = free_port("127.0.0.1")
    (work / "config").mkdir()
    with TestBed() as bed:
        c = Cluster(bed, apps, {}, work, ["--ca-dir", str(work / "ca"), "--secure-xds-port", str(secure)])
        for app in apps.values():
            app.pod = bed.add_pod(app.name)  # no rules yet: the init step installs them
            app.pod.run_echo(http=[app.port])
        c.vips = {name: bed.service_ip() for name in apps}
        (work / "config" / "mesh.yaml").write_text(documents(
            *(service(a.name, NS, [("http", 80, a.port)], cluster_ip=c.vips[a.name]) for a in apps.values()),
            *(registry_pod(a) for a in apps.values())))
        try:
            cp = c.start_meshd()
            for app in apps.values():
                assert app.pod is not None
                app.pod.forward_to_host(secure, pod_port=15012)
                args = run_init(app, cp)
                app.envoy = app.pod.start_envoy(app.path("/etc/istio/proxy/envoy.json"),
                                                admin_port=names.PORT_ENVOY_ADMIN)
                assert "--bootstrap-out" in args
            for app in apps.values():
                assert app.envoy is not None
                envoy = app.envoy
                wait_for(envoy.ready, 30, what=lambda envoy=envoy: f"envoy ready\n{envoy.log(40)}")
            yield c
        finally:
            c.stop()


def request(c: Cluster, client: str, server: str) -> dict:
    """The echo app's view of one request `client` -> `server`'s VIP (waits until answered)."""
    pod = c.apps[client].pod
    assert pod is not None
    last: list[subprocess.CompletedProcess] = []

    def answered() -> bool:
        cp = pod.curl(f"http://{c.vips[server]}:80/hello", timeout=5)
        last[:] = [cp]
        return cp.returncode == 0 and cp.stdout.startswith("{")

    wait_for(answered, 30, interval=0.3, what=lambda: f"{client} -> {server}: {last}")
    return json.loads(last[0].stdout)


def redirected(pod: Pod, chain: str) -> int:
    """Packets the pod's REDIRECT chain sent to Envoy (`iptables -L -v`, as an operator reads it)."""
    return sum(n for n, _ in bed_iptables.counters(pod, chain))


def test_the_init_step_installs_istios_rules_and_writes_the_bootstrap(cluster: Cluster):
    app = cluster.apps["webapp"]
    assert app.pod is not None
    saved = app.pod.iptables_save()
    for rule in ("-A PREROUTING -p tcp -j ISTIO_INBOUND", "-A OUTPUT -p tcp -j ISTIO_OUTPUT",
                 "-A ISTIO_IN_REDIRECT -p tcp -j REDIRECT --to-ports 15006",
                 "-A ISTIO_REDIRECT -p tcp -j REDIRECT --to-ports 15001",
                 "-A ISTIO_OUTPUT -m owner --uid-owner 1337 -j RETURN"):
        assert rule in saved, saved
    boot = json.loads(app.path("/etc/istio/proxy/envoy.json").read_text())
    assert boot["node"]["id"] == app.node_id
    assert boot["node"]["metadata"]["LABELS"]["security.istio.io/tlsMode"] == "istio"
    token_path = app.path("/var/run/secrets/tokens/istio-token")
    assert token_path.read_text() not in json.dumps(boot)  # referenced, never copied


def test_intercepted_request_is_carried_with_mtls_and_answered(cluster: Cluster):
    web, catalog = cluster.apps["webapp"], cluster.apps["catalog"]
    assert web.pod is not None and catalog.pod is not None
    seen = request(cluster, "webapp", "catalog")
    assert seen["pod"] == "catalog" and seen["path"] == "/hello"
    # intercepted on both sides: the client's connection went through the pod-init rules to
    # 15001, the server's to 15006, and the server's sidecar relayed it to the app from the
    # inbound passthrough address
    assert redirected(web.pod, "ISTIO_REDIRECT") > 0 and redirected(catalog.pod, "ISTIO_IN_REDIRECT") > 0
    assert seen["peer"].startswith("127.0.0.6:"), seen["peer"]
    # mTLS: the server's sidecar saw webapp's certificate and says so to the app
    xfcc = seen["headers"].get("x-forwarded-client-cert", "")
    assert f"URI={web.spiffe}" in xfcc and f"By={catalog.spiffe}" in xfcc, xfcc


def test_the_proxy_reconnects_after_its_projected_token_rotates(cluster: Cluster):
    """webapp's first token expires; the file is replaced as the kubelet does; meshd
    restarts: webapp's Envoy is refused while the file still holds the expired token, and
    is served once it holds the new one, without a restart of Envoy."""
    web = cluster.apps["webapp"]
    assert cluster.cp is not None and web.envoy is not None
    token_path = web.path("/var/run/secrets/tokens/istio-token")
    old = token_path.read_text()
    root = cluster.cp.root_cert.read_bytes()

    def refused(token: str) -> bool:
        assert cluster.cp is not None
        try:
            ads_fetch(cluster.cp.secure_port, web.node_id, {"NAMESPACE": NS}, names.CLUSTER, [],
                      root_pem=root, token=token, timeout=5)
        except grpc.RpcError as e:
            return e.code() == grpc.StatusCode.UNAUTHENTICATED
        return False

    wait_for(lambda: refused(old), 60, interval=1, what="webapp's first token expired")

    cp = cluster.restart_meshd()
    wait_for(lambda: "token expired" in cp.log(), 60, interval=0.5,
             what="webapp's Envoy retrying with the expired token from its file")
    assert f"ads connect proxy={web.node_id}" not in cp.log()

    write_token(token_path, cp.token(NS, web.service_account, ttl="1h"))
    wait_for(lambda: f"ads connect proxy={web.node_id}" in cp.log(), 60, interval=0.5,
             what=lambda: f"webapp reconnected with the rotated token\n{cp.log()[-2000:]}")
    connect = next(ln for ln in cp.log().splitlines() if f"ads connect proxy={web.node_id}" in ln)
    assert f"identity={web.spiffe}" in connect
    wait_for(lambda: web.envoy is not None and web.envoy.stat("control_plane.connected_state") == 1, 30,
             what="webapp's Envoy connected")
    # served again: its certificate is fresh from this meshd and traffic still flows with mTLS
    seen = request(cluster, "webapp", "catalog")
    assert f"URI={web.spiffe}" in seen["headers"].get("x-forwarded-client-cert", "")
