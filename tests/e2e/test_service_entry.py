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
import os
import shutil
import ssl
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import pytest

from tests.support.harness import meshd, wait_for
from tests.support.operator_view import run_cli
from tests.support.paths import REPO
from tests.support.pki import make_ca, make_cert
from tests.testbed.bed import TestBed
from tests.testbed.fixtures import require_testbed

pytestmark = pytest.mark.e2e

NS = "apps"
TLS_ECHO = Path(__file__).resolve().parents[1] / "testbed" / "tls_echo.py"


def layout(pods: dict, vips: dict, ca_path: Path) -> str:
    return textwrap.dedent(f"""
        apiVersion: v1
        kind: Pod
        metadata: {{name: client-0, namespace: {NS}, labels: {{app: client, security.istio.io/tlsMode: istio}}}}
        spec: {{serviceAccountName: client, containers: [{{name: app}}]}}
        status: {{podIP: {pods['client'].ip}}}
        ---
        apiVersion: v1
        kind: Pod
        metadata: {{name: internal-0, namespace: {NS}, labels: {{app: internal, security.istio.io/tlsMode: istio}}}}
        spec: {{serviceAccountName: internal, containers: [{{name: app}}]}}
        status: {{podIP: {pods['internal'].ip}}}
        ---
        apiVersion: networking.istio.io/v1
        kind: ServiceEntry
        metadata: {{name: internal, namespace: {NS}}}
        spec:
          hosts: [internal.mesh.test]
          location: MESH_INTERNAL
          resolution: STATIC
          ports: [{{number: 80, name: http, protocol: HTTP, targetPort: 8080}}]
          workloadSelector: {{labels: {{app: internal}}}}
        ---
        apiVersion: security.istio.io/v1
        kind: PeerAuthentication
        metadata: {{name: internal-strict, namespace: {NS}}}
        spec:
          selector: {{matchLabels: {{app: internal}}}}
          mtls: {{mode: STRICT}}
        ---
        apiVersion: v1
        kind: Service
        metadata: {{name: istio-egressgateway, namespace: istio-system}}
        spec:
          clusterIP: {vips['egress']}
          selector: {{istio: egressgateway}}
          ports: [{{name: http, port: 80, targetPort: 8080}}, {{name: tls, port: 443, targetPort: 8443}}]
        ---
        apiVersion: v1
        kind: Pod
        metadata: {{name: istio-egressgateway-0, namespace: istio-system, labels: {{istio: egressgateway}}}}
        spec: {{serviceAccountName: istio-egressgateway, containers: [{{name: istio-proxy}}]}}
        status: {{podIP: {pods['egress'].ip}}}
        ---
        apiVersion: networking.istio.io/v1
        kind: ServiceEntry
        metadata: {{name: legacy, namespace: {NS}}}
        spec:
          hosts: [legacy.external.test]
          addresses: [{vips['legacy']}]
          location: MESH_EXTERNAL
          resolution: STATIC
          ports:
          - {{number: 80, name: http, protocol: HTTP, targetPort: 8080}}
          - {{number: 9000, name: tcp, protocol: TCP}}
          endpoints: [{{address: {pods['legacy'].ip}}}]
        ---
        apiVersion: networking.istio.io/v1
        kind: ServiceEntry
        metadata: {{name: dns-api, namespace: {NS}}}
        spec:
          hosts: [api.dns.test]
          location: MESH_EXTERNAL
          resolution: DNS
          ports: [{{number: 80, name: http, protocol: HTTP, targetPort: 8080}}]
        ---
        apiVersion: networking.istio.io/v1
        kind: ServiceEntry
        metadata: {{name: dns-rr, namespace: {NS}}}
        spec:
          hosts: [rr.dns.test]
          location: MESH_EXTERNAL
          resolution: DNS_ROUND_ROBIN
          ports: [{{number: 80, name: http, protocol: HTTP, targetPort: 8080}}]
        ---
        apiVersion: networking.istio.io/v1
        kind: ServiceEntry
        metadata: {{name: passthrough, namespace: {NS}}}
        spec:
          hosts: ["*.passthrough.test"]
          location: MESH_EXTERNAL
          resolution: NONE
          ports: [{{number: 9300, name: tcp, protocol: TCP}}]
        ---
        apiVersion: networking.istio.io/v1
        kind: ServiceEntry
        metadata: {{name: dns-tcp, namespace: {NS}}}
        spec:
          hosts: [tcp.dns.test]
          location: MESH_EXTERNAL
          resolution: DNS
          ports: [{{number: 9100, name: tcp, protocol: TCP, targetPort: 9000}}]
        ---
        apiVersion: networking.istio.io/v1
        kind: ServiceEntry
        metadata: {{name: secure, namespace: {NS}}}
        spec:
          hosts: [secure.external.test]
          location: MESH_EXTERNAL
          resolution: DNS
          subjectAltNames: [secure.external.test]
          ports: [{{number: 80, name: http, protocol: HTTP, targetPort: 443}}]
        ---
        apiVersion: networking.istio.io/v1
        kind: ServiceEntry
        metadata: {{name: wrongsan, namespace: {NS}}}
        spec:
          hosts: [wrongsan.external.test]
          location: MESH_EXTERNAL
          resolution: DNS
          subjectAltNames: [not-this.external.test]
          ports: [{{number: 80, name: http, protocol: HTTP, targetPort: 443}}]
        """) + "".join(textwrap.dedent(f"""
        ---
        apiVersion: networking.istio.io/v1
        kind: DestinationRule
        metadata: {{name: {name}, namespace: {NS}}}
        spec:
          host: {name}.external.test
          trafficPolicy:
            portLevelSettings:
            - port: {{number: 80}}
              tls: {{mode: SIMPLE, sni: secure.external.test, caCertificates: {ca_path}}}
        """) for name in ("secure", "wrongsan")) + egress(ca_path)


# Istio's egress-gateway tasks, on hosts of the bed: edition.cnn.com through the egress
# gateway, and the gateway originating TLS (gw-secure: plain HTTP from the client, TLS
# from the gateway to the HTTPS server).
def egress(ca_path: Path) -> str:
    return textwrap.dedent(f"""
        ---
        apiVersion: networking.istio.io/v1
        kind: ServiceEntry
        metadata: {{name: edition, namespace: {NS}}}
        spec:
          hosts: [edition.external.test]
          location: MESH_EXTERNAL
          resolution: DNS
          ports: [{{number: 80, name: http-port, protocol: HTTP}}]
        ---
        apiVersion: networking.istio.io/v1
        kind: ServiceEntry
        metadata: {{name: gw-secure, namespace: {NS}}}
        spec:
          hosts: [gw-secure.external.test]
          location: MESH_EXTERNAL
          resolution: DNS
          subjectAltNames: [secure.external.test]
          ports: [{{number: 80, name: http-port, protocol: HTTP, targetPort: 443}}]
        ---
        apiVersion: networking.istio.io/v1
        kind: DestinationRule
        metadata: {{name: originate-tls-for-gw-secure, namespace: {NS}}}
        spec:
          host: gw-secure.external.test
          trafficPolicy:
            portLevelSettings:
            - port: {{number: 80}}
              tls: {{mode: SIMPLE, sni: secure.external.test, caCertificates: {ca_path}}}
        ---
        apiVersion: networking.istio.io/v1
        kind: Gateway
        metadata: {{name: istio-egressgateway, namespace: {NS}}}
        spec:
          selector: {{istio: egressgateway}}
          servers:
          - port: {{number: 80, name: http, protocol: HTTP}}
            hosts: [edition.external.test, gw-secure.external.test]
          - port: {{number: 443, name: tls, protocol: TLS}}
            hosts: [pass.external.test]
            tls: {{mode: PASSTHROUGH}}
          - port: {{number: 443, name: https, protocol: HTTPS}}
            hosts: [mtls.external.test]
            tls: {{mode: ISTIO_MUTUAL}}
        ---
        apiVersion: networking.istio.io/v1
        kind: DestinationRule
        metadata: {{name: egressgateway-for-edition, namespace: {NS}}}
        spec:
          host: istio-egressgateway.istio-system.svc.cluster.local
          subsets:
          - {{name: edition}}
          - name: mtls
            trafficPolicy:
              portLevelSettings:
              - port: {{number: 443}}
                tls: {{mode: ISTIO_MUTUAL, sni: mtls.external.test}}
        ---
        apiVersion: networking.istio.io/v1
        kind: ServiceEntry
        metadata: {{name: mtls, namespace: {NS}}}
        spec:
          hosts: [mtls.external.test]
          location: MESH_EXTERNAL
          resolution: DNS
          ports: [{{number: 80, name: http, protocol: HTTP}}]
        ---
        apiVersion: networking.istio.io/v1
        kind: VirtualService
        metadata: {{name: direct-mtls-through-egress-gateway, namespace: {NS}}}
        spec:
          hosts: [mtls.external.test]
          gateways: [istio-egressgateway, mesh]
          http:
          - match: [{{gateways: [mesh], port: 80}}]
            route:
            - destination: {{host: istio-egressgateway.istio-system.svc.cluster.local, subset: mtls, port: {{number: 443}}}}
          - match: [{{gateways: [istio-egressgateway], port: 443}}]
            route:
            - destination: {{host: mtls.external.test, port: {{number: 80}}}}
        """) + "".join(textwrap.dedent(f"""
        ---
        apiVersion: networking.istio.io/v1
        kind: VirtualService
        metadata: {{name: direct-{name}-through-egress-gateway, namespace: {NS}}}
        spec:
          hosts: [{name}.external.test]
          gateways: [istio-egressgateway, mesh]
          http:
          - match: [{{gateways: [mesh], port: 80}}]
            route:
            - destination: {{host: istio-egressgateway.istio-system.svc.cluster.local, subset: edition, port: {{number: 80}}}}
              weight: 100
          - match: [{{gateways: [istio-egressgateway], port: 80}}]
            route:
            - destination: {{host: {name}.external.test, port: {{number: 80}}}}
              weight: 100
        """) for name in ("edition", "gw-secure")) + textwrap.dedent(f"""
        ---
        apiVersion: networking.istio.io/v1
        kind: ServiceEntry
        metadata: {{name: pass, namespace: {NS}}}
        spec:
          hosts: [pass.external.test]
          location: MESH_EXTERNAL
          resolution: DNS
          ports: [{{number: 443, name: tls, protocol: TLS}}]
        ---
        apiVersion: networking.istio.io/v1
        kind: VirtualService
        metadata: {{name: direct-pass-through-egress-gateway, namespace: {NS}}}
        spec:
          hosts: [pass.external.test]
          gateways: [mesh, istio-egressgateway]
          tls:
          - match: [{{gateways: [mesh], port: 443, sniHosts: [pass.external.test]}}]
            route:
            - destination: {{host: istio-egressgateway.istio-system.svc.cluster.local, subset: edition, port: {{number: 443}}}}
          - match: [{{gateways: [istio-egressgateway], port: 443, sniHosts: [pass.external.test]}}]
            route:
            - destination: {{host: pass.external.test, port: {{number: 443}}}}
              weight: 100
        """)


def write_netns_files(netns_name: str, hosts: dict[str, str]) -> Path:
    """/etc/netns/<ns>/hosts (names the pod resolves) and a resolv.conf whose only server
    is the pod's own loopback, so no lookup ever leaves the pod."""
    d = Path("/etc/netns") / netns_name
    d.mkdir(parents=True, exist_ok=True)
    lines = ["127.0.0.1 localhost", *(f"{ip} {name}" for name, ip in sorted(hosts.items()))]
    (d / "hosts").write_text("\n".join(lines) + "\n")
    (d / "resolv.conf").write_text("nameserver 127.0.0.1\noptions timeout:1 attempts:1\n")
    return d


def bootstrap(work: Path, name: str, args: list[str]) -> Path:
    out = work / f"{name}-bootstrap.yaml"
    subprocess.run([sys.executable, "-m", "controlplane", "bootstrap", *args, "--admin-port", "15000",
                    "--output", str(out)], check=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    out.chmod(0o644)
    return out


class Bed:
    def __init__(self, pods: dict, vips: dict, envoys: dict, meshd_url: str, ca_path: Path, config_dir: Path):
        self.pods, self.vips, self.envoys, self.meshd_url, self.ca_path = pods, vips, envoys, meshd_url, ca_path
        self.config_dir = config_dir

    def get(self, host: str, path: str = "/", address: str | None = None, port: int = 80):
        """GET from the client pod to `address` (default: an address nothing listens on,
        so only the sidecar's routing can reach a server) with Host `host`."""
        return self.pods["client"].http_get(address or self.vips["nowhere"], port, path, headers={"Host": host})

    def https_get(self, host: str, path: str) -> dict:
        """The application's own HTTPS (SNI `host`, verified with the server's CA) to an
        address nothing listens on, port 443."""
        ctx = ssl.create_default_context(cafile=str(self.ca_path))
        raw = self.pods["client"].connect(self.vips["nowhere"], 443)
        with ctx.wrap_socket(raw, server_hostname=host) as s:
            s.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
            data = b""
            while chunk := s.recv(4096):
                data += chunk
        head, _, payload = data.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200"), head[:200]
        return json.loads(payload)

    def tcp(self, address: str, port: int, data: bytes = b"ping\n") -> bytes:
        s = self.pods["client"].connect(address, port)
        try:
            s.sendall(data)
            got = b""
            while not got.endswith(b"\n"):
                chunk = s.recv(4096)
                if not chunk:
                    break
                got += chunk
            return got
        finally:
            s.close()


@pytest.fixture(scope="module")
def bed(tmp_path_factory):
    require_testbed()
    work = tmp_path_factory.mktemp("service-entry")
    config_dir = work / "config"
    config_dir.mkdir()
    # The HTTPS server's own CA: a file Envoy (uid 1337) reads, as a DestinationRule names it.
    ca_dir = Path(tempfile.mkdtemp(prefix="meshd-se-ca-"))
    ca_dir.chmod(0o755)
    netns_dirs: list[Path] = []
    try:
        ca = make_ca("secure.external.test CA")
        server = make_cert(ca, ["secure.external.test", "pass.external.test"])
        ca_path = ca_dir / "ca.pem"
        ca_path.write_bytes(ca.cert)
        ca_path.chmod(0o644)
        (work / "server.pem").write_bytes(server.cert)
        (work / "server-key.pem").write_bytes(server.key)
        with TestBed() as tb:
            pods = {n: tb.add_pod(n, sidecar=(n in ("client", "internal")))
                    for n in ("client", "internal", "legacy", "dnsapi", "secure", "edition", "egress")}
            vips = {n: tb.service_ip() for n in ("legacy", "egress", "nowhere")}
            (config_dir / "mesh.yaml").write_text(layout(pods, vips, ca_path))
            pods["legacy"].run_echo(http=[8080], tcp=[9000, 9300])
            pods["dnsapi"].run_echo(http=[8080], tcp=[9000])
            pods["edition"].run_echo(http=[80])
            pods["internal"].run_echo(http=[8080])
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
            netns_dirs.append(write_netns_files(pods["egress"].netns, {
                "edition.external.test": pods["edition"].ip, "gw-secure.external.test": pods["secure"].ip,
                "pass.external.test": pods["secure"].ip, "mtls.external.test": pods["edition"].ip}))
            with meshd(config_dir, work) as cp:
                client, egress, internal = pods["client"], pods["egress"], pods["internal"]
                client.forward_to_host(cp.secure_port, pod_port=15012)
                internal.forward_to_host(cp.secure_port, pod_port=15012)
                egress.forward_to_host(cp.secure_port, pod_port=15012)
                client_boot = bootstrap(work, "client", [
                    "--type", "sidecar", "--namespace", NS, "--service-account", "client", "--pod", "client-0",
                    "--ip", client.ip, "--labels", "app=client,security.istio.io/tlsMode=istio",
                    "--xds-address", "127.0.0.1:15012", "--ca-dir", str(cp.ca_dir)])
                internal_boot = bootstrap(work, "internal", [
                    "--type", "sidecar", "--namespace", NS, "--service-account", "internal", "--pod", "internal-0",
                    "--ip", internal.ip, "--labels", "app=internal,security.istio.io/tlsMode=istio",
                    "--xds-address", "127.0.0.1:15012", "--ca-dir", str(cp.ca_dir)])
                egress_boot = bootstrap(work, "egress", [
                    "--type", "router", "--namespace", "istio-system", "--pod", "istio-egressgateway-0",
                    "--service-account", "istio-egressgateway", "--ip", egress.ip, "--labels", "istio=egressgateway",
                    "--xds-address", "127.0.0.1:15012", "--ca-dir", str(cp.ca_dir)])
                envoys = {"client": client.start_envoy(client_boot, admin_port=15000),
                          "internal": internal.start_envoy(internal_boot, admin_port=15000),
                          "egress": egress.start_envoy(egress_boot, admin_port=15000)}
                for name, e in envoys.items():
                    wait_for(e.ready, 30, what=f"{name} envoy ready")
                b = Bed(pods, vips, envoys, f"http://127.0.0.1:{cp.monitoring_port}", ca_path, config_dir)
                wait_for(lambda: b.get("legacy.external.test", address=vips["legacy"])[0] == 200, 20,
                         what="first request through the sidecar")
                yield b
                for name, e in envoys.items():
                    bad = {k: v for k, v in e.stats("update_rejected").items() if v}
                    assert bad == {}, (name, bad)
    finally:
        shutil.rmtree(ca_dir, ignore_errors=True)
        for d in netns_dirs:
            shutil.rmtree(d, ignore_errors=True)


def body(resp) -> dict:
    status, _, raw = resp
    assert status == 200, (status, raw[:300])
    return json.loads(raw)


def test_static_entry_reaches_a_server_outside_the_mesh(bed):
    got = body(bed.get("legacy.external.test", "/static", address=bed.vips["legacy"]))
    assert got["pod"] == "legacy" and got["path"] == "/static"
    # TCP to the entry's address goes to its endpoint too (listener <VIP>_9000).
    assert bed.tcp(bed.vips["legacy"], 9000) == b"legacy ping\n"


def test_dns_entry_is_resolved_by_the_sidecar_through_the_pods_hosts_file(bed):
    got = body(bed.get("api.dns.test", "/dns"))
    assert got["pod"] == "dnsapi"
    # TCP without an address: every connection to port 9100 goes to the resolved host.
    assert bed.tcp(bed.vips["nowhere"], 9100) == b"dnsapi ping\n"
    clusters = bed.envoys["client"].admin("/clusters")
    assert f"outbound|80||api.dns.test::{bed.pods['dnsapi'].ip}:8080" in clusters
    # DNS_ROUND_ROBIN: one logical host, connections to the name's latest answer.
    assert body(bed.get("rr.dns.test", "/rr"))["pod"] == "dnsapi"


def test_none_resolution_goes_where_the_application_dialled(bed):
    # resolution NONE, no address: 0.0.0.0_9300 to the entry's ORIGINAL_DST cluster.
    assert bed.tcp(bed.pods["legacy"].ip, 9300) == b"legacy ping\n"
    stats = bed.envoys["client"].stats("passthrough.test.upstream_cx_total")
    assert stats.get("cluster.outbound|9300||*.passthrough.test.upstream_cx_total", 0) >= 1, stats


def test_sidecar_originates_tls_to_an_https_server_with_its_own_ca(bed):
    got = body(bed.get("secure.external.test", "/tls"))
    assert got["pod"] == "secure"
    assert got["sni"] == "secure.external.test" and got["tls"].startswith("TLSv1")
    assert got["host"] == "secure.external.test"
    # The entry's subjectAltNames are what the sidecar verifies: a name the server's
    # certificate lacks fails the handshake (503), never plaintext.
    status, _, raw = bed.get("wrongsan.external.test", "/tls")
    assert status == 503, raw[:200]


def test_egress_through_the_egress_gateway(bed):
    got = body(bed.get("edition.external.test", "/politics"))
    assert got["pod"] == "edition" and got["path"] == "/politics"
    # The server saw the egress gateway, not the client.
    assert got["peer"].split(":")[0] == bed.pods["egress"].ip
    stats = bed.envoys["egress"].stats("outbound|80||edition.external.test.upstream_rq_")
    assert stats.get("cluster.outbound|80||edition.external.test.upstream_rq_200", 0) >= 1, stats


def test_egress_gateway_originates_tls(bed):
    # Istio's "TLS origination with an egress gateway": the client's request goes to the
    # gateway in plain HTTP, the gateway's cluster for the host speaks TLS to its 443.
    got = body(bed.get("gw-secure.external.test", "/gw-tls"))
    assert got["pod"] == "secure" and got["path"] == "/gw-tls"
    assert got["sni"] == "secure.external.test" and got["tls"].startswith("TLSv1")
    assert got["peer"].split(":")[0] == bed.pods["egress"].ip


def test_operator_sees_each_resolutions_cluster_type(bed):
    code, out = run_cli("proxy-config", "cluster", "client-0.apps", "--meshd", bed.meshd_url)
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
    got = bed.https_get("pass.external.test", "/pass")
    assert got["pod"] == "secure" and got["sni"] == "pass.external.test"
    assert got["peer"].split(":")[0] == bed.pods["egress"].ip


def test_mesh_internal_entry_is_called_with_mutual_tls(bed):
    # MESH_INTERNAL, the workload selected by the entry has a sidecar: auto mTLS. Its
    # PeerAuthentication is STRICT, so only an mTLS request gets through; its sidecar
    # hands it to the application from 127.0.0.6.
    got = body(bed.get("internal.mesh.test", "/internal"))
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
    got = body(bed.get("mtls.external.test", "/mtls"))
    assert got["pod"] == "edition" and got["path"] == "/mtls"
    assert got["peer"].split(":")[0] == bed.pods["egress"].ip
    stats = bed.envoys["client"].stats("istio-egressgateway.istio-system.svc.cluster.local.ssl.handshake")
    assert stats.get("cluster.outbound|443|mtls|istio-egressgateway.istio-system.svc.cluster.local.ssl.handshake",
                     0) >= 1, stats


def test_entry_added_while_proxies_run_is_pushed(bed):
    # Before the entry exists the host is unknown: its request passes through to the
    # address the client dialled, where nothing listens (503 from the sidecar).
    assert bed.get("late.dns.test", "/late")[0] == 503
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
        wait_for(lambda: bed.get("late.dns.test", "/late")[0] == 200, 20, what="the new entry pushed to the sidecar")
        assert body(bed.get("late.dns.test", "/late"))["pod"] == "dnsapi"
    finally:
        (bed.config_dir / "late.yaml").unlink()
    wait_for(lambda: bed.get("late.dns.test", "/late")[0] == 503, 20, what="the removed entry gone from the sidecar")
