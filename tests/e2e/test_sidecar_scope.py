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
import textwrap

import pytest

from tests.support.harness import wait_for
from tests.support.manifests import documents, service, service_entry
from tests.support.operator_view import run_cli
from tests.testbed.fixtures import require_testbed
from tests.testbed.mesh import Mesh, PodSpec, pods_yaml, run_mesh, tcp_line

pytestmark = pytest.mark.e2e

NS, OTHER = "shop", "other"
PORT = 9080  # the Services' port (and their pods')
EXT_HTTP, EXT_TCP = 8080, 9000  # the external server's


PODS = {
    "client": PodSpec(NS, "sidecar", "client", "app=client,security.istio.io/tlsMode=istio"),
    "reviews": PodSpec(NS, service_account="reviews", labels="app=reviews", http=(PORT,)),
    "ratings": PodSpec(OTHER, service_account="ratings", labels="app=ratings", http=(PORT,)),
    "external": PodSpec(NS, http=(EXT_HTTP,), tcp=(EXT_TCP,)),  # outside the mesh: no Pod object
}


def layout(pods: dict, vips: dict) -> str:
    return documents(
        service("reviews", NS, [("http", PORT, None)], cluster_ip=vips["reviews"]),
        service("ratings", OTHER, [("http", PORT, None)], cluster_ip=vips["ratings"]),
        service_entry("legacy", NS, ["legacy.external.test"], [(EXT_HTTP, "http", "HTTP", None)],
                      resolution="STATIC", addresses=[vips["legacy"]], endpoints=[pods["external"].ip]),
    ) + pods_yaml({n: PODS[n] for n in ("reviews", "ratings")}, pods)


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


def outbound(mesh: Mesh, mode: str) -> None:
    """Change the mesh config's outboundTrafficPolicy (meshd watches the file)."""
    path = mesh.config_dir.parent / MESH_CONFIG
    tmp = path.with_suffix(".tmp")
    tmp.write_text(f"outboundTrafficPolicy: {{mode: {mode}}}\n")
    tmp.replace(path)


def status(mesh: Mesh, address: str, port: int, host: str | None = None) -> int:
    try:
        code, _, _ = mesh.pods["client"].http_get(address, port, "/", headers={"Host": host} if host else None)
    except OSError:
        return 0
    return code


def service_status(mesh: Mesh, name: str) -> int:
    return status(mesh, mesh.vips[name], PORT)


def tcp(mesh: Mesh, port: int) -> bytes:
    """What the external server's TCP echo answers the client ("" when the sidecar
    drops the connection)."""
    try:
        return tcp_line(mesh.pods["client"], mesh.pods["external"].ip, port)
    except OSError:
        return b""


def clusters(mesh: Mesh) -> str:
    code, out = run_cli("proxy-config", "cluster", f"client-0.{NS}", "--meshd",
                        f"http://127.0.0.1:{mesh.cp.monitoring_port}")
    assert code == 0, out
    return out


def expect(what: str, check, timeout: float = 20) -> None:
    wait_for(check, timeout, interval=0.3, what=what)


MESH_CONFIG = "mesh.yaml"  # beside meshd's config directory


@pytest.fixture(scope="module")
def bed(tmp_path_factory):
    require_testbed()
    work = tmp_path_factory.mktemp("sidecar-scope")
    (work / MESH_CONFIG).write_text("outboundTrafficPolicy: {mode: ALLOW_ANY}\n")
    with run_mesh(work, PODS, layout, services=("reviews", "ratings", "legacy"),
                  meshd_args=["--mesh-config", str(work / MESH_CONFIG)]) as mesh:
        expect("reviews through the sidecar", lambda: service_status(mesh, "reviews") == 200)
        yield mesh


def test_registry_only_refuses_unknown_hosts_and_keeps_the_registry(bed):
    ext = bed.pods["external"].ip
    # ALLOW_ANY: a host the registry does not know passes through to where it was going
    assert status(bed, ext, EXT_HTTP, host="unknown.test") == 200
    assert tcp(bed, EXT_TCP) == b"external ping\n"
    outbound(bed, "REGISTRY_ONLY")
    expect("unknown HTTP host refused with 502", lambda: status(bed, ext, EXT_HTTP, host="unknown.test") == 502)
    expect("unknown TCP destination dropped (BlackHoleCluster)", lambda: tcp(bed, EXT_TCP) == b"")
    # the registry still works: the ServiceEntry host (by Host and by its address), the Services
    assert status(bed, ext, EXT_HTTP, host="legacy.external.test") == 200
    assert status(bed, bed.vips["legacy"], EXT_HTTP) == 200
    assert service_status(bed, "reviews") == 200 and service_status(bed, "ratings") == 200
    listeners = json.dumps(bed.envoys["client"].config_dump("dynamic_listeners"))
    assert "BlackHoleCluster" in listeners
    outbound(bed, "ALLOW_ANY")
    expect("unknown HTTP host passes through again", lambda: status(bed, ext, EXT_HTTP, host="unknown.test") == 200)


def test_a_sidecar_hides_another_namespace(bed):
    ratings = f"ratings.{OTHER}.svc.cluster.local"
    assert ratings in clusters(bed)
    bed.apply("sidecar", HIDE_OTHER)
    try:
        expect("ratings' clusters gone from the client", lambda: ratings not in clusters(bed))
        expect("ratings refused", lambda: service_status(bed, "ratings") == 502)
        assert f"reviews.{NS}.svc.cluster.local" in clusters(bed)
        assert service_status(bed, "reviews") == 200
        # the envoy itself holds no cluster of the hidden namespace
        assert ratings not in json.dumps(bed.envoys["client"].config_dump("dynamic_active_clusters"))
    finally:
        bed.apply("sidecar", None)
    expect("ratings back", lambda: ratings in clusters(bed) and service_status(bed, "ratings") == 200)


def test_export_to_hides_a_virtual_service_from_other_namespaces(bed):
    bed.apply("ratings-vs", ratings_fault("."))
    try:
        # exported to `other` only: the client in `shop` routes ratings without it
        wait_for(lambda: service_status(bed, "ratings") == 200, 10, interval=0.3, what="ratings without the fault")
        routes = json.dumps(bed.envoys["client"].config_dump("dynamic_route_configs"))
        assert "418" not in routes
        bed.apply("ratings-vs", ratings_fault("*"))
        expect("the exported VirtualService's fault reaches the client", lambda: service_status(bed, "ratings") == 418)
    finally:
        bed.apply("ratings-vs", None)
    expect("ratings without the VirtualService", lambda: service_status(bed, "ratings") == 200)


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
        code, headers, _ = bed.pods["client"].http_get("127.0.0.1", PORT,
                                                       headers={"Host": f"ratings.{OTHER}.svc.cluster.local"})
    except OSError:
        return 0, ""
    return code, headers.get("x-echo-pod", "")


def test_capture_none_lets_the_application_dial_its_sidecar_on_localhost(bed):
    assert _local(bed) == (0, "")  # nothing listens on the client's 127.0.0.1:9080
    bed.apply("sidecar", DIAL_LOCALHOST)
    try:
        expect("ratings through 127.0.0.1:9080", lambda: _local(bed) == (200, "ratings"))
        listeners = {lis["active_state"]["listener"]["name"]: lis["active_state"]["listener"]
                     for lis in bed.envoys["client"].config_dump("dynamic_listeners")["configs"] if "active_state" in lis}
        assert listeners[f"127.0.0.1_{PORT}"].get("bind_to_port") is True
    finally:
        bed.apply("sidecar", None)
    expect("the bound listener gone", lambda: _local(bed) == (0, ""))
    expect("reviews through its VIP again", lambda: service_status(bed, "reviews") == 200)
