"""What a sidecar sees (the Sidecar resource, exportTo, outboundTrafficPolicy) through real
Envoys on the netns test bed.

A `client` pod with a sidecar in namespace `shop` calls `reviews` (namespace `shop`),
`ratings` (namespace `other`), a ServiceEntry host `legacy.external.test` (a server
outside the mesh, no Pod object) and addresses the registry does not know (the same
server on another Host, or on a TCP port no listener claims):
- with the mesh config's outboundTrafficPolicy REGISTRY_ONLY (meshd `--mesh-config`,
  changed live), unknown HTTP hosts get a 502 and unknown TCP goes to BlackHoleCluster,
  while the ServiceEntry host and the Services keep working; back to ALLOW_ANY they
  pass through again;
- a Sidecar in `shop` importing `./*` and `istio-system/*` (REGISTRY_ONLY) hides
  `other`: `meshd proxy-config cluster` lists no cluster of `ratings`, and a request to
  it is refused (502) while `reviews` answers; removing the Sidecar brings both back;
- a VirtualService of `other` for `ratings` (a fault abort 418) exported to `.` only is
  not applied to the client in `shop`; exported to `*`, it is;
- a Sidecar whose egress listener on 9080 has `captureMode: NONE` makes the client's
  sidecar listen on 127.0.0.1:9080 (refused before), where the application reaches
  `ratings` by Host; removing the Sidecar closes that port again.
Every Envoy rejects nothing.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.support.harness import meshd, wait_for
from tests.support.operator_view import run_cli
from tests.support.paths import REPO
from tests.testbed.bed import TestBed
from tests.testbed.fixtures import require_testbed

pytestmark = pytest.mark.e2e

NS, OTHER = "shop", "other"
PORT = 9080  # the Services' port (and their pods')
EXT_HTTP, EXT_TCP = 8080, 9000  # the external server's


def layout(pods: dict, vips: dict) -> str:
    return textwrap.dedent(f"""
        apiVersion: v1
        kind: Service
        metadata: {{name: reviews, namespace: {NS}}}
        spec:
          clusterIP: {vips['reviews']}
          selector: {{app: reviews}}
          ports: [{{name: http, port: {PORT}}}]
        ---
        apiVersion: v1
        kind: Pod
        metadata: {{name: reviews-0, namespace: {NS}, labels: {{app: reviews}}}}
        spec: {{serviceAccountName: reviews, containers: [{{name: app}}]}}
        status: {{podIP: {pods['reviews'].ip}}}
        ---
        apiVersion: v1
        kind: Service
        metadata: {{name: ratings, namespace: {OTHER}}}
        spec:
          clusterIP: {vips['ratings']}
          selector: {{app: ratings}}
          ports: [{{name: http, port: {PORT}}}]
        ---
        apiVersion: v1
        kind: Pod
        metadata: {{name: ratings-0, namespace: {OTHER}, labels: {{app: ratings}}}}
        spec: {{serviceAccountName: ratings, containers: [{{name: app}}]}}
        status: {{podIP: {pods['ratings'].ip}}}
        ---
        apiVersion: networking.istio.io/v1
        kind: ServiceEntry
        metadata: {{name: legacy, namespace: {NS}}}
        spec:
          hosts: [legacy.external.test]
          addresses: [{vips['legacy']}]
          ports: [{{number: {EXT_HTTP}, name: http, protocol: HTTP}}]
          location: MESH_EXTERNAL
          resolution: STATIC
          endpoints: [{{address: {pods['external'].ip}}}]
        """)


def ratings_fault(export_to: str) -> str:
    return textwrap.dedent(f"""
        apiVersion: networking.istio.io/v1
        kind: VirtualService
        metadata: {{name: ratings, namespace: {OTHER}}}
        spec:
          hosts: [ratings.{OTHER}.svc.cluster.local]
          exportTo: ["{export_to}"]
          http:
          - fault: {{abort: {{httpStatus: 418, percentage: {{value: 100}}}}}}
            route: [{{destination: {{host: ratings.{OTHER}.svc.cluster.local}}}}]
        """)


HIDE_OTHER = textwrap.dedent(f"""
    apiVersion: networking.istio.io/v1
    kind: Sidecar
    metadata: {{name: default, namespace: {NS}}}
    spec:
      egress: [{{hosts: ["./*", "istio-system/*"]}}]
      outboundTrafficPolicy: {{mode: REGISTRY_ONLY}}
    """)


class Bed:
    def __init__(self, pods: dict, vips: dict, envoy, config_dir: Path, mesh_config: Path, meshd_url: str):
        self.pods, self.vips, self.envoy, self.config_dir = pods, vips, envoy, config_dir
        self.mesh_config, self.meshd_url = mesh_config, meshd_url

    def apply(self, name: str, text: str | None) -> None:
        path = self.config_dir / f"{name}.yaml"
        if text is None:
            path.unlink(missing_ok=True)
            return
        tmp = path.with_suffix(".tmp")
        tmp.write_text(text)
        tmp.replace(path)

    def outbound(self, mode: str) -> None:
        tmp = self.mesh_config.with_suffix(".tmp")
        tmp.write_text(f"outboundTrafficPolicy: {{mode: {mode}}}\n")
        tmp.replace(self.mesh_config)

    def status(self, address: str, port: int, host: str | None = None) -> int:
        try:
            status, _, _ = self.pods["client"].http_get(address, port, "/", headers={"Host": host} if host else None)
        except OSError:
            return 0
        return status

    def service(self, name: str) -> int:
        return self.status(self.vips[name], PORT)

    def tcp(self, port: int) -> bytes:
        """What the external server's TCP echo answers the client ("" when the sidecar
        drops the connection)."""
        try:
            s = self.pods["client"].connect(self.pods["external"].ip, port)
        except OSError:
            return b""
        try:
            s.sendall(b"ping\n")
            got = b""
            while not got.endswith(b"\n"):
                chunk = s.recv(4096)
                if not chunk:
                    break
                got += chunk
            return got
        except OSError:
            return b""
        finally:
            s.close()

    def clusters(self) -> str:
        code, out = run_cli("proxy-config", "cluster", f"client-0.{NS}", "--meshd", self.meshd_url)
        assert code == 0, out
        return out

    def expect(self, what: str, check, timeout: float = 20) -> None:
        wait_for(check, timeout, interval=0.3, what=what)


def _bootstrap(work: Path, pod, cp) -> Path:
    out = work / "client-bootstrap.yaml"
    subprocess.run([sys.executable, "-m", "controlplane", "bootstrap", "--type", "sidecar", "--namespace", NS,
                    "--service-account", "client", "--pod", "client-0", "--ip", pod.ip,
                    "--labels", "app=client,security.istio.io/tlsMode=istio", "--xds-address", "127.0.0.1:15012",
                    "--ca-dir", str(cp.ca_dir), "--admin-port", "15000", "--output", str(out)],
                   check=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    out.chmod(0o644)
    return out


@pytest.fixture(scope="module")
def bed(tmp_path_factory):
    require_testbed()
    work = tmp_path_factory.mktemp("sidecar-scope")
    config_dir = work / "config"
    config_dir.mkdir()
    mesh_config = work / "mesh.yaml"
    mesh_config.write_text("outboundTrafficPolicy: {mode: ALLOW_ANY}\n")
    with TestBed() as tb:
        pods = {n: tb.add_pod(n, sidecar=(n == "client")) for n in ("client", "reviews", "ratings", "external")}
        vips = {n: tb.service_ip() for n in ("reviews", "ratings", "legacy")}
        (config_dir / "layout.yaml").write_text(layout(pods, vips))
        pods["reviews"].run_echo(http=[PORT])
        pods["ratings"].run_echo(http=[PORT])
        pods["external"].run_echo(http=[EXT_HTTP], tcp=[EXT_TCP])
        with meshd(config_dir, work, extra=["--mesh-config", str(mesh_config)]) as cp:
            client = pods["client"]
            client.forward_to_host(cp.secure_port, pod_port=15012)
            envoy = client.start_envoy(_bootstrap(work, client, cp), admin_port=15000)
            wait_for(envoy.ready, 30, what="client envoy ready")
            b = Bed(pods, vips, envoy, config_dir, mesh_config, f"http://127.0.0.1:{cp.monitoring_port}")
            b.expect("reviews through the sidecar", lambda: b.service("reviews") == 200)
            yield b
            bad = {k: v for k, v in envoy.stats("update_rejected").items() if v}
            assert bad == {}, bad


def test_registry_only_refuses_unknown_hosts_and_keeps_the_registry(bed):
    ext = bed.pods["external"].ip
    # ALLOW_ANY: a host the registry does not know passes through to where it was going
    assert bed.status(ext, EXT_HTTP, host="unknown.test") == 200
    assert bed.tcp(EXT_TCP) == b"external ping\n"
    bed.outbound("REGISTRY_ONLY")
    bed.expect("unknown HTTP host refused with 502", lambda: bed.status(ext, EXT_HTTP, host="unknown.test") == 502)
    bed.expect("unknown TCP destination dropped (BlackHoleCluster)", lambda: bed.tcp(EXT_TCP) == b"")
    # the registry still works: the ServiceEntry host (by Host and by its address), the Services
    assert bed.status(ext, EXT_HTTP, host="legacy.external.test") == 200
    assert bed.status(bed.vips["legacy"], EXT_HTTP) == 200
    assert bed.service("reviews") == 200 and bed.service("ratings") == 200
    listeners = json.dumps(bed.envoy.config_dump("dynamic_listeners"))
    assert "BlackHoleCluster" in listeners
    bed.outbound("ALLOW_ANY")
    bed.expect("unknown HTTP host passes through again", lambda: bed.status(ext, EXT_HTTP, host="unknown.test") == 200)


def test_a_sidecar_hides_another_namespace(bed):
    ratings = f"ratings.{OTHER}.svc.cluster.local"
    assert ratings in bed.clusters()
    bed.apply("sidecar", HIDE_OTHER)
    try:
        bed.expect("ratings' clusters gone from the client", lambda: ratings not in bed.clusters())
        bed.expect("ratings refused", lambda: bed.service("ratings") == 502)
        assert f"reviews.{NS}.svc.cluster.local" in bed.clusters()
        assert bed.service("reviews") == 200
        # the envoy itself holds no cluster of the hidden namespace
        assert ratings not in json.dumps(bed.envoy.config_dump("dynamic_active_clusters"))
    finally:
        bed.apply("sidecar", None)
    bed.expect("ratings back", lambda: ratings in bed.clusters() and bed.service("ratings") == 200)


def test_export_to_hides_a_virtual_service_from_other_namespaces(bed):
    bed.apply("ratings-vs", ratings_fault("."))
    try:
        # exported to `other` only: the client in `shop` routes ratings without it
        wait_for(lambda: bed.service("ratings") == 200, 10, interval=0.3, what="ratings without the fault")
        routes = json.dumps(bed.envoy.config_dump("dynamic_route_configs"))
        assert "418" not in routes
        bed.apply("ratings-vs", ratings_fault("*"))
        bed.expect("the exported VirtualService's fault reaches the client", lambda: bed.service("ratings") == 418)
    finally:
        bed.apply("ratings-vs", None)
    bed.expect("ratings without the VirtualService", lambda: bed.service("ratings") == 200)


# captureMode NONE: the application dials the sidecar itself on 127.0.0.1 (loopback is never
# intercepted), the listener binds that port for real and routes by Host as usual.
DIAL_LOCALHOST = textwrap.dedent(f"""
    apiVersion: networking.istio.io/v1
    kind: Sidecar
    metadata: {{name: default, namespace: {NS}}}
    spec:
      egress:
      - port: {{number: {PORT}, protocol: HTTP, name: http}}
        captureMode: NONE
        hosts: ["{OTHER}/ratings.{OTHER}.svc.cluster.local"]
      - hosts: ["istio-system/*"]
    """)


def _local(bed) -> tuple[int, str]:
    try:
        status, headers, _ = bed.pods["client"].http_get("127.0.0.1", PORT,
                                                         headers={"Host": f"ratings.{OTHER}.svc.cluster.local"})
    except OSError:
        return 0, ""
    return status, headers.get("x-echo-pod", "")


def test_capture_none_lets_the_application_dial_its_sidecar_on_localhost(bed):
    assert _local(bed) == (0, "")  # nothing listens on the client's 127.0.0.1:9080
    bed.apply("sidecar", DIAL_LOCALHOST)
    try:
        bed.expect("ratings through 127.0.0.1:9080", lambda: _local(bed) == (200, "ratings"))
        listeners = {lis["active_state"]["listener"]["name"]: lis["active_state"]["listener"]
                     for lis in bed.envoy.config_dump("dynamic_listeners")["configs"] if "active_state" in lis}
        assert listeners[f"127.0.0.1_{PORT}"].get("bind_to_port") is True
    finally:
        bed.apply("sidecar", None)
    bed.expect("the bound listener gone", lambda: _local(bed) == (0, ""))
    bed.expect("reviews through its VIP again", lambda: bed.service("reviews") == 200)
