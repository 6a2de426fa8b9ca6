"""ServiceEntry hosts through real Envoys on the netns test bed, as in Istio's egress tasks.

A `client` pod with a sidecar (Istio's interception, `meshd bootstrap` with the CA) in
namespace `apps` calls hosts that are no Kubernetes Service:
- a STATIC entry (`legacy.external.test`, a VIP in `addresses`, the endpoint a server
  outside the mesh with no Pod object at all): HTTP by Host and TCP to the VIP;
- DNS entries (`api.dns.test` over HTTP, `tcp.dns.test` over TCP without an address, so
  on 0.0.0.0; `rr.dns.test` with DNS_ROUND_ROBIN): the client connects to an address nothing listens on, and its Envoy
  finds the server by resolving the name through the pod's hosts file
  (/etc/netns/<ns>/hosts, which `ip netns exec` mounts over /etc/hosts);
- a MESH_INTERNAL entry selecting a workload with a sidecar (STRICT mTLS there): auto
  mTLS, while MESH_EXTERNAL hosts get none;
- a NONE entry (`*.passthrough.test`, TCP without an address): connections to its port
  go where the application dialled, through the entry's ORIGINAL_DST cluster;
- TLS origination: the client speaks plain HTTP to `secure.external.test:80`, a
  DestinationRule (SIMPLE, sni) makes its sidecar speak TLS to the HTTPS server's 443,
  verified with the server's own CA and the entry's `subjectAltNames` (an entry whose
  subjectAltNames do not name the server's certificate gets 503);
- egress through an egress gateway (Istio's egress-gateway task): a Gateway on the
  `istio: egressgateway` pod and a VirtualService bound to `mesh` and to that Gateway
  send the client's request for `edition.external.test` to the gateway, which resolves
  the host (its own hosts file) and calls it; for `gw-secure.external.test` the gateway
  originates the TLS (Istio's egress gateway TLS origination task); the application's own
  HTTPS to `pass.external.test` is routed by SNI to the gateway, which passes it through
  (Gateway `tls.mode: PASSTHROUGH`, VirtualService `tls` routes); for
  `mtls.external.test` the sidecar talks Istio mTLS to the gateway (a DestinationRule
  subset with ISTIO_MUTUAL and sni, a Gateway HTTPS server with ISTIO_MUTUAL).
`meshd proxy-config cluster` shows each resolution's cluster type. Every Envoy rejects
nothing.
"""
from __future__ import annotations

import json
import shutil
import ssl
import sys
import textwrap
from pathlib import Path

import pytest

from tests.support.harness import wait_for
from tests.support.manifests import (
    destination,
    destination_rule,
    documents,
    gateway,
    gateway_server,
    peer_authentication,
    service,
    service_entry,
)
from tests.support.operator_view import run_cli
from tests.support.pki import make_ca, make_cert
from tests.testbed.fixtures import require_testbed
from tests.testbed.mesh import Mesh, PodSpec, pods_yaml, run_mesh, tcp_line

pytestmark = pytest.mark.e2e

NS = "apps"
TLS_ECHO = Path(__file__).resolve().parents[1] / "testbed" / "tls_echo.py"
MESHED = "security.istio.io/tlsMode=istio"
EGRESS_GW = "istio-egressgateway"  # the egress gateway's pod (istio-egressgateway-0)
EGRESS_HOST = "istio-egressgateway.istio-system.svc.cluster.local"
PODS = {
    "client": PodSpec(NS, "sidecar", "client", f"app=client,{MESHED}"),
    "internal": PodSpec(NS, "sidecar", "internal", f"app=internal,{MESHED}", http=(8080,)),
    "legacy": PodSpec(NS, http=(8080,), tcp=(9000, 9300)),
    "dnsapi": PodSpec(NS, http=(8080,), tcp=(9000,)),
    "secure": PodSpec(NS),  # the HTTPS server (tls_echo.py), started by the fixture
    "edition": PodSpec(NS, http=(80,)),
    EGRESS_GW: PodSpec("istio-system", "router", "istio-egressgateway", "istio=egressgateway"),
}
HTTP_TO_8080 = (80, "http", "HTTP", 8080)
HTTP_TO_443 = (80, "http", "HTTP", 443)  # the entry's HTTP port in front of an HTTPS server


def server_ca(pods: dict) -> Path:
    """The HTTPS server's own CA, in its pod's directory: a file every Envoy (uid 1337)
    reads, as a DestinationRule names it."""
    return pods["secure"].dir / "ca.pem"


def originate_tls(name: str, host: str, ca_path: Path) -> dict:
    """A DestinationRule making port 80 of `host` speak TLS (SIMPLE, sni
    secure.external.test) to the server, verified with its CA."""
    return destination_rule(name, NS, host, traffic_policy={"portLevelSettings": [{
        "port": {"number": 80},
        "tls": {"mode": "SIMPLE", "sni": "secure.external.test", "caCertificates": str(ca_path)}}]})


def layout(pods: dict, vips: dict) -> str:
    ca_path = server_ca(pods)
    return documents(
        service_entry("internal", NS, ["internal.mesh.test"], [HTTP_TO_8080], resolution="STATIC",
                      location="MESH_INTERNAL", workload_selector={"app": "internal"}),
        peer_authentication("internal-strict", NS, "STRICT", selector={"app": "internal"}),
        service("istio-egressgateway", "istio-system", [("http", 80, 8080), ("tls", 443, 8443)],
                selector={"istio": "egressgateway"}, cluster_ip=vips["egress"]),
        service_entry("legacy", NS, ["legacy.external.test"], [HTTP_TO_8080, (9000, "tcp", "TCP", None)],
                      resolution="STATIC", addresses=[vips["legacy"]], endpoints=[pods["legacy"].ip]),
        service_entry("dns-api", NS, ["api.dns.test"], [HTTP_TO_8080], resolution="DNS"),
        service_entry("dns-rr", NS, ["rr.dns.test"], [HTTP_TO_8080], resolution="DNS_ROUND_ROBIN"),
        service_entry("passthrough", NS, ["*.passthrough.test"], [(9300, "tcp", "TCP", None)], resolution="NONE"),
        service_entry("dns-tcp", NS, ["tcp.dns.test"], [(9100, "tcp", "TCP", 9000)], resolution="DNS"),
        service_entry("secure", NS, ["secure.external.test"], [HTTP_TO_443], resolution="DNS",
                      subject_alt_names=["secure.external.test"]),
        service_entry("wrongsan", NS, ["wrongsan.external.test"], [HTTP_TO_443], resolution="DNS",
                      subject_alt_names=["not-this.external.test"]),
        *(originate_tls(name, f"{name}.external.test", ca_path) for name in ("secure", "wrongsan")),
        *egress(ca_path),
    ) + pods_yaml({n: PODS[n] for n in ("client", "internal", EGRESS_GW)}, pods)


def via_egress_gateway(host: str, subset: str, gateway_port: int, weight: int | None = None) -> dict:
    """A VirtualService bound to `mesh` and the egress Gateway: the sidecar sends `host`:80
    to the gateway's `subset` on `gateway_port`, the gateway sends it on to `host`:80."""
    w = {"weight": weight} if weight else {}
    return {"apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
            "metadata": {"name": f"direct-{host.split('.')[0]}-through-egress-gateway", "namespace": NS},
            "spec": {"hosts": [host], "gateways": ["istio-egressgateway", "mesh"], "http": [
                {"match": [{"gateways": ["mesh"], "port": 80}],
                 "route": [{"destination": destination(EGRESS_HOST, subset=subset, port=gateway_port), **w}]},
                {"match": [{"gateways": ["istio-egressgateway"], "port": gateway_port}],
                 "route": [{"destination": destination(host, port=80), **w}]}]}}


def egress_gateway() -> dict:
    """The egress Gateway: HTTP for edition and gw-secure, TLS passed through for pass,
    Istio mTLS from the sidecars for mtls."""
    return gateway("istio-egressgateway", NS, ["edition.external.test", "gw-secure.external.test"],
                   selector={"istio": "egressgateway"}, more_servers=[
                       gateway_server(["pass.external.test"], 443, "TLS", "tls", {"mode": "PASSTHROUGH"}),
                       gateway_server(["mtls.external.test"], 443, "HTTPS", "https", {"mode": "ISTIO_MUTUAL"})])


# Istio's egress-gateway tasks, on hosts of the bed: edition.cnn.com through the egress
# gateway, and the gateway originating TLS (gw-secure: plain HTTP from the client, TLS
# from the gateway to the HTTPS server).
def egress(ca_path: Path) -> list[dict | str]:
    return [
        service_entry("edition", NS, ["edition.external.test"], [(80, "http-port", "HTTP", None)], resolution="DNS"),
        service_entry("gw-secure", NS, ["gw-secure.external.test"], [(80, "http-port", "HTTP", 443)],
                      resolution="DNS", subject_alt_names=["secure.external.test"]),
        originate_tls("originate-tls-for-gw-secure", "gw-secure.external.test", ca_path),
        egress_gateway(),
        textwrap.dedent(f"""
            apiVersion: networking.istio.io/v1
            kind: DestinationRule
            metadata: {{name: egressgateway-for-edition, namespace: {NS}}}
            spec:
              host: {EGRESS_HOST}
              subsets:
              - {{name: edition}}
              - name: mtls
                trafficPolicy:
                  portLevelSettings:
                  - port: {{number: 443}}
                    tls: {{mode: ISTIO_MUTUAL, sni: mtls.external.test}}
            """),
        service_entry("mtls", NS, ["mtls.external.test"], [(80, "http", "HTTP", None)], resolution="DNS"),
        via_egress_gateway("mtls.external.test", "mtls", 443),
        *(via_egress_gateway(f"{name}.external.test", "edition", 80, weight=100) for name in ("edition", "gw-secure")),
        service_entry("pass", NS, ["pass.external.test"], [(443, "tls", "TLS", None)], resolution="DNS"),
        textwrap.dedent(f"""
            apiVersion: networking.istio.io/v1
            kind: VirtualService
            metadata: {{name: direct-pass-through-egress-gateway, namespace: {NS}}}
            spec:
              hosts: [pass.external.test]
              gateways: [mesh, istio-egressgateway]
              tls:
              - match: [{{gateways: [mesh], port: 443, sniHosts: [pass.external.test]}}]
                route:
                - destination: {{host: {EGRESS_HOST}, subset: edition, port: {{number: 443}}}}
              - match: [{{gateways: [istio-egressgateway], port: 443, sniHosts: [pass.external.test]}}]
                route:
                - destination: {{host: pass.external.test, port: {{number: 443}}}}
                  weight: 100
            """),
    ]


def write_netns_files(netns_name: str, hosts: dict[str, str]) -> Path:
    """/etc/netns/<ns>/hosts (names the pod resolves) and a resolv.conf whose only server
    is the pod's own loopback, so no lookup ever leaves the pod."""
    d = Path("/etc/netns") / netns_name
    d.mkdir(parents=True, exist_ok=True)
    lines = ["127.0.0.1 localhost", *(f"{ip} {name}" for name, ip in sorted(hosts.items()))]
    (d / "hosts").write_text("\n".join(lines) + "\n")
    (d / "resolv.conf").write_text("nameserver 127.0.0.1\noptions timeout:1 attempts:1\n")
    return d


def get(mesh: Mesh, host: str, path: str = "/", address: str | None = None, port: int = 80):
    """GET from the client pod to `address` (default: an address nothing listens on,
    so only the sidecar's routing can reach a server) with Host `host`."""
    return mesh.pods["client"].http_get(address or mesh.vips["nowhere"], port, path, headers={"Host": host})


def https_get(mesh: Mesh, host: str, path: str) -> dict:
    """The application's own HTTPS (SNI `host`, verified with the server's CA) to an
    address nothing listens on, port 443."""
    ctx = ssl.create_default_context(cafile=str(server_ca(mesh.pods)))
    raw = mesh.pods["client"].connect(mesh.vips["nowhere"], 443)
    with ctx.wrap_socket(raw, server_hostname=host) as s:
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while chunk := s.recv(4096):
            data += chunk
    head, _, payload = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), head[:200]
    return json.loads(payload)


def tcp(mesh: Mesh, address: str, port: int) -> bytes:
    return tcp_line(mesh.pods["client"], address, port)


@pytest.fixture(scope="module")
def bed(tmp_path_factory):
    require_testbed()
    work = tmp_path_factory.mktemp("service-entry")
    netns_dirs: list[Path] = []

    def prepare(tb, pods: dict, vips: dict) -> None:
        ca = make_ca("secure.external.test CA")
        server = make_cert(ca, ["secure.external.test", "pass.external.test"])
        ca_path = server_ca(pods)
        ca_path.write_bytes(ca.cert)
        ca_path.chmod(0o644)
        (work / "server.pem").write_bytes(server.cert)
        (work / "server-key.pem").write_bytes(server.key)
        tls = pods["secure"].spawn([sys.executable, str(TLS_ECHO), "--name", "secure", "--port", "443",
                                    "--cert", str(work / "server.pem"), "--key", str(work / "server-key.pem")],
                                   name="tls-echo", stdout_pipe=True)
        tls.wait_line("READY", timeout=15)
        netns_dirs.append(write_netns_files(pods["client"].netns, {
            "api.dns.test": pods["dnsapi"].ip, "tcp.dns.test": pods["dnsapi"].ip, "rr.dns.test": pods["dnsapi"].ip,
            "late.dns.test": pods["dnsapi"].ip,
            "secure.external.test": pods["secure"].ip, "wrongsan.external.test": pods["secure"].ip,
        }))
        # No name the internal pod's Envoy looks up leaves the pod either (a lookup that
        # times out holds the proxy's readiness back).
        netns_dirs.append(write_netns_files(pods["internal"].netns, {}))
        netns_dirs.append(write_netns_files(pods[EGRESS_GW].netns, {
            "edition.external.test": pods["edition"].ip, "gw-secure.external.test": pods["secure"].ip,
            "pass.external.test": pods["secure"].ip, "mtls.external.test": pods["edition"].ip}))

    try:
        with run_mesh(work, PODS, layout, services=("legacy", "egress", "nowhere"), prepare=prepare) as mesh:
            wait_for(lambda: get(mesh, "legacy.external.test", address=mesh.vips["legacy"])[0] == 200, 20,
                     what="first request through the sidecar")
            yield mesh
    finally:
        for d in netns_dirs:
            shutil.rmtree(d, ignore_errors=True)


def body(resp) -> dict:
    status, _, raw = resp
    assert status == 200, (status, raw[:300])
    return json.loads(raw)


def test_static_entry_reaches_a_server_outside_the_mesh(bed):
    got = body(get(bed, "legacy.external.test", "/static", address=bed.vips["legacy"]))
    assert got["pod"] == "legacy" and got["path"] == "/static"
    # TCP to the entry's address goes to its endpoint too (listener <VIP>_9000).
    assert tcp(bed, bed.vips["legacy"], 9000) == b"legacy ping\n"


def test_dns_entry_is_resolved_by_the_sidecar_through_the_pods_hosts_file(bed):
    got = body(get(bed, "api.dns.test", "/dns"))
    assert got["pod"] == "dnsapi"
    # TCP without an address: every connection to port 9100 goes to the resolved host.
    assert tcp(bed, bed.vips["nowhere"], 9100) == b"dnsapi ping\n"
    clusters = bed.envoys["client"].admin("/clusters")
    assert f"outbound|80||api.dns.test::{bed.pods['dnsapi'].ip}:8080" in clusters
    # DNS_ROUND_ROBIN: one logical host, connections to the name's latest answer.
    assert body(get(bed, "rr.dns.test", "/rr"))["pod"] == "dnsapi"


def test_none_resolution_goes_where_the_application_dialled(bed):
    # resolution NONE, no address: 0.0.0.0_9300 to the entry's ORIGINAL_DST cluster.
    assert tcp(bed, bed.pods["legacy"].ip, 9300) == b"legacy ping\n"
    stats = bed.envoys["client"].stats("passthrough.test.upstream_cx_total")
    assert stats.get("cluster.outbound|9300||*.passthrough.test.upstream_cx_total", 0) >= 1, stats


def test_sidecar_originates_tls_to_an_https_server_with_its_own_ca(bed):
    got = body(get(bed, "secure.external.test", "/tls"))
    assert got["pod"] == "secure"
    assert got["sni"] == "secure.external.test" and got["tls"].startswith("TLSv1")
    assert got["host"] == "secure.external.test"
    # The entry's subjectAltNames are what the sidecar verifies: a name the server's
    # certificate lacks fails the handshake (503), never plaintext.
    status, _, raw = get(bed, "wrongsan.external.test", "/tls")
    assert status == 503, raw[:200]


def test_egress_through_the_egress_gateway(bed):
    got = body(get(bed, "edition.external.test", "/politics"))
    assert got["pod"] == "edition" and got["path"] == "/politics"
    # The server saw the egress gateway, not the client.
    assert got["peer"].split(":")[0] == bed.pods[EGRESS_GW].ip
    stats = bed.envoys[EGRESS_GW].stats("outbound|80||edition.external.test.upstream_rq_")
    assert stats.get("cluster.outbound|80||edition.external.test.upstream_rq_200", 0) >= 1, stats


def test_egress_gateway_originates_tls(bed):
    # Istio's "TLS origination with an egress gateway": the client's request goes to the
    # gateway in plain HTTP, the gateway's cluster for the host speaks TLS to its 443.
    got = body(get(bed, "gw-secure.external.test", "/gw-tls"))
    assert got["pod"] == "secure" and got["path"] == "/gw-tls"
    assert got["sni"] == "secure.external.test" and got["tls"].startswith("TLSv1")
    assert got["peer"].split(":")[0] == bed.pods[EGRESS_GW].ip


def test_operator_sees_each_resolutions_cluster_type(bed):
    code, out = run_cli("proxy-config", "cluster", "client-0.apps", "--meshd", f"http://127.0.0.1:{bed.cp.monitoring_port}")
    assert code == 0, out
    types = {(row.split()[0], row.split()[1]): row.split()[4] for row in out.splitlines()[1:] if row.strip()}
    assert types[("legacy.external.test", "80")] == "EDS"
    assert types[("api.dns.test", "80")] == "STRICT_DNS"
    assert types[("secure.external.test", "80")] == "STRICT_DNS"
    assert types[("rr.dns.test", "80")] == "LOGICAL_DNS"
    assert types[("*.passthrough.test", "9300")] == "ORIGINAL_DST"


def test_https_through_the_egress_gateway_by_sni(bed):
    # Istio's egress gateway for HTTPS: the application's own TLS, routed by SNI on the
    # sidecar (VirtualService `tls` bound to `mesh`) and passed through by the gateway.
    got = https_get(bed, "pass.external.test", "/pass")
    assert got["pod"] == "secure" and got["sni"] == "pass.external.test"
    assert got["peer"].split(":")[0] == bed.pods[EGRESS_GW].ip


def test_mesh_internal_entry_is_called_with_mutual_tls(bed):
    # MESH_INTERNAL, the workload selected by the entry has a sidecar: auto mTLS. Its
    # PeerAuthentication is STRICT, so only an mTLS request gets through; its sidecar
    # hands it to the application from 127.0.0.6.
    got = body(get(bed, "internal.mesh.test", "/internal"))
    assert got["pod"] == "internal" and got["peer"].startswith("127.0.0.6:")
    stats = bed.envoys["client"].stats("internal.mesh.test.ssl.handshake")
    assert stats.get("cluster.outbound|80||internal.mesh.test.ssl.handshake", 0) >= 1, stats
    # A MESH_EXTERNAL host never gets Istio mTLS: the legacy server answered in plaintext.
    assert bed.envoys["client"].stats("legacy.external.test.ssl.handshake").get(
        "cluster.outbound|80||legacy.external.test.ssl.handshake", 0) == 0


def test_sidecar_to_egress_gateway_is_istio_mutual_tls(bed):
    # Istio's egress gateway task with mTLS between sidecar and gateway: the rule's subset
    # sends ISTIO_MUTUAL (sni mtls.external.test) to the gateway's HTTPS server, which
    # requires the client's mesh certificate, then calls the host in plain HTTP.
    got = body(get(bed, "mtls.external.test", "/mtls"))
    assert got["pod"] == "edition" and got["path"] == "/mtls"
    assert got["peer"].split(":")[0] == bed.pods[EGRESS_GW].ip
    stats = bed.envoys["client"].stats("istio-egressgateway.istio-system.svc.cluster.local.ssl.handshake")
    assert stats.get("cluster.outbound|443|mtls|istio-egressgateway.istio-system.svc.cluster.local.ssl.handshake",
                     0) >= 1, stats


def test_entry_added_while_proxies_run_is_pushed(bed):
    # Before the entry exists the host is unknown: its request passes through to the
    # address the client dialled, where nothing listens (503 from the sidecar).
    assert get(bed, "late.dns.test", "/late")[0] == 503
    (bed.config_dir / "late.yaml").write_text(textwrap.dedent(f"""
        apiVersion: networking.istio.io/v1
        kind: ServiceEntry
        metadata: {{name: late, namespace: {NS}}}
        spec:
          hosts: [late.dns.test]
          location: MESH_EXTERNAL
          resolution: DNS
          ports: [{{number: 80, name: http, protocol: HTTP, targetPort: 8080}}]
        """))
    try:
        wait_for(lambda: get(bed, "late.dns.test", "/late")[0] == 200, 20, what="the new entry pushed to the sidecar")
        assert body(get(bed, "late.dns.test", "/late"))["pod"] == "dnsapi"
    finally:
        (bed.config_dir / "late.yaml").unlink()
    wait_for(lambda: get(bed, "late.dns.test", "/late")[0] == 503, 20, what="the removed entry gone from the sidecar")
