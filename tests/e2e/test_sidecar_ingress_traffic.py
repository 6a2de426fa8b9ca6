"""Sidecar ingress listeners through a real Envoy sidecar on the netns test bed.

An `app` pod in namespace `shop` with a sidecar (istio-init's rules, 9080 excluded from
inbound interception as `traffic.sidecar.istio.io/excludeInboundPorts` would) runs the echo
application on 127.0.0.1-reachable ports 8080 (HTTP) and 7000 (TCP); a `client` pod outside
the mesh calls it. The namespace's Sidecar has these ingress listeners:
- 9443 HTTPS with `tls: SIMPLE` (certificate files in the pod) and a PeerAuthentication
  turning mTLS off on that port, as Istio's "Ingress Sidecar TLS Termination" task does:
  the client gets HTTPS with the certificate of its own CA (and nothing in plaintext);
- 9444 HTTPS with `tls: MUTUAL` (port mTLS DISABLE too): only a client presenting a
  certificate of the CA file is served;
- 9080 HTTP with `captureMode: NONE` and `bind: <pod IP>`: a listener of the sidecar bound
  to that address (nothing else listens on 9080), reached without iptables;
- 9000 TCP with `connectionPool.tcp.maxConnections: 1`: while one connection is open a
  second one overflows (Envoy's upstream_cx_overflow counts it) and is closed; raised to 2
  in the Sidecar file, the running proxy gets the new limit;
- 9001 HTTP with `defaultEndpoint: unix://<path>`: the application listens on a Unix
  domain socket only;
- 9002 HTTP with `defaultEndpoint: 0.0.0.0:8080`: the application is reached on the pod IP,
  from 127.0.0.6 (else istio-iptables would send the sidecar's own connection back to 15006).
Every Envoy rejects nothing.
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.support.harness import meshd, wait_for
from tests.support.paths import REPO
from tests.support.pki import make_ca, make_cert
from tests.testbed.bed import TestBed
from tests.testbed.fixtures import require_testbed

pytestmark = pytest.mark.e2e

NS = "shop"
HOST = "app.shop.test"  # the name in the server certificate
HTTPS, MUTUAL, BOUND, TCP, UDS, OWN = 9443, 9444, 9080, 9000, 9001, 9002
APP_HTTP, APP_TCP = 8080, 7000


def config(app_ip: str, cert: Path, key: Path, ca: Path, sock: Path) -> str:
    return textwrap.dedent(f"""
        apiVersion: networking.istio.io/v1
        kind: Sidecar
        metadata: {{name: default, namespace: {NS}}}
        spec:
          ingress:
          - port: {{number: {HTTPS}, protocol: HTTPS, name: https}}
            defaultEndpoint: 127.0.0.1:{APP_HTTP}
            tls: {{mode: SIMPLE, serverCertificate: {cert}, privateKey: {key}}}
          - port: {{number: {MUTUAL}, protocol: HTTPS, name: https-mutual}}
            defaultEndpoint: 127.0.0.1:{APP_HTTP}
            tls: {{mode: MUTUAL, serverCertificate: {cert}, privateKey: {key}, caCertificates: {ca}}}
          - port: {{number: {BOUND}, protocol: HTTP, name: http}}
            bind: {app_ip}
            captureMode: NONE
            defaultEndpoint: 127.0.0.1:{APP_HTTP}
          - port: {{number: {TCP}, protocol: TCP, name: tcp}}
            defaultEndpoint: 127.0.0.1:{APP_TCP}
            connectionPool: {{tcp: {{maxConnections: 1}}}}
          - port: {{number: {UDS}, protocol: HTTP, name: http-uds}}
            defaultEndpoint: unix://{sock}
          - port: {{number: {OWN}, protocol: HTTP, name: http-own}}
            defaultEndpoint: 0.0.0.0:{APP_HTTP}
          egress: [{{hosts: ["./*"]}}]
        ---
        apiVersion: security.istio.io/v1
        kind: PeerAuthentication
        metadata: {{name: app, namespace: {NS}}}
        spec:
          selector: {{matchLabels: {{app: app}}}}
          mtls: {{mode: PERMISSIVE}}
          portLevelMtls: {{{HTTPS}: {{mode: DISABLE}}, {MUTUAL}: {{mode: DISABLE}}}}
        """)


# An HTTP server on a Unix domain socket only, answering "uds" (the socket writable by the proxy uid).
UDS_SERVER = """
import http.server, os, socketserver, sys
class Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True
class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Length", "3")
        self.end_headers()
        self.wfile.write(b"uds")
    def address_string(self):
        return "uds"
server = Server(sys.argv[1], Handler)
os.chmod(sys.argv[1], 0o666)
print("READY", flush=True)
server.serve_forever()
"""


def _bootstrap(work: Path, pod, cp) -> Path:
    out = work / "app-bootstrap.yaml"
    subprocess.run([sys.executable, "-m", "controlplane", "bootstrap", "--type", "sidecar", "--namespace", NS,
                    "--service-account", "app", "--pod", "app-0", "--ip", pod.ip,
                    "--labels", "app=app,security.istio.io/tlsMode=istio", "--xds-address", "127.0.0.1:15012",
                    "--ca-dir", str(cp.ca_dir), "--admin-port", "15000", "--output", str(out)],
                   check=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    out.chmod(0o644)
    return out


class Bed:
    def __init__(self, app, client, envoy, ca: Path, sidecar: Path):
        self.app, self.client, self.envoy, self.ca, self.sidecar = app, client, envoy, ca, sidecar

    def edit_sidecar(self, old: str, new: str) -> None:
        text = self.sidecar.read_text()
        assert old in text
        tmp = self.sidecar.with_suffix(".tmp")
        tmp.write_text(text.replace(old, new))
        tmp.replace(self.sidecar)

    def max_connections(self, cluster: str) -> int:
        dump = self.envoy.config_dump("dynamic_active_clusters")["configs"]
        [c] = [c["cluster"] for c in dump if c["cluster"]["name"] == cluster]
        return c["circuit_breakers"]["thresholds"][0]["max_connections"]

    def https(self, *args: str, port: int = HTTPS) -> subprocess.CompletedProcess:
        return self.client.curl(f"https://{HOST}:{port}/", "--resolve", f"{HOST}:{port}:{self.app.ip}",
                                "-o", "/dev/null", "-w", "%{http_code}", *args, timeout=5)

    def http(self, port: int) -> int:
        try:
            status, _, _ = self.client.http_get(self.app.ip, port, "/")
        except OSError:
            return 0
        return status

    def echo(self, s: socket.socket) -> bytes:
        """One line through the TCP port ("" when the sidecar closed the connection)."""
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

    def listeners(self) -> dict:
        return {lis["active_state"]["listener"]["name"]: lis["active_state"]["listener"]
                for lis in self.envoy.config_dump("dynamic_listeners")["configs"] if "active_state" in lis}


@pytest.fixture(scope="module")
def bed(tmp_path_factory):
    require_testbed()
    work = tmp_path_factory.mktemp("sidecar-ingress")
    config_dir = work / "config"
    config_dir.mkdir()
    with TestBed() as tb:
        app = tb.add_pod("app", sidecar=True, exclude_inbound_ports=(15020, 15021, 15090, BOUND))
        client = tb.add_pod("client")
        ca = make_ca()
        server = make_cert(ca, [HOST])
        user = make_cert(ca, ["client.shop.test"], client=True)
        cert, key, ca_file = app.dir / "cert.pem", app.dir / "key.pem", client.dir / "ca.pem"
        app_ca = app.dir / "ca.pem"
        for path, data in ((cert, server.cert), (key, server.key), (ca_file, ca.cert), (app_ca, ca.cert),
                           (client.dir / "client.pem", user.cert), (client.dir / "client-key.pem", user.key)):
            path.write_bytes(data)
            path.chmod(0o644)  # read by Envoy as the proxy uid
        sock = app.dir / "app.sock"
        (config_dir / "sidecar.yaml").write_text(config(app.ip, cert, key, app_ca, sock))
        app.run_echo(http=[APP_HTTP], tcp=[APP_TCP])
        app.spawn([sys.executable, "-c", UDS_SERVER, str(sock)], name="uds", stdout_pipe=True).wait_line("READY", timeout=15)
        with meshd(config_dir, work) as cp:
            app.forward_to_host(cp.secure_port, pod_port=15012)
            envoy = app.start_envoy(_bootstrap(work, app, cp), admin_port=15000)
            wait_for(envoy.ready, 30, what="app envoy ready")
            b = Bed(app, client, envoy, ca_file, config_dir / "sidecar.yaml")
            yield b
            bad = {k: v for k, v in envoy.stats("update_rejected").items() if v}
            assert bad == {}, bad


def test_tls_simple_serves_https_to_a_client_that_trusts_the_ca(bed):
    wait_for(lambda: bed.https("--cacert", str(bed.ca)).stdout == "200", 20, interval=0.3,
             what="HTTPS through the sidecar's own certificate")
    # the certificate is the one of the Sidecar's files: a client without that CA refuses it
    untrusted = bed.https()
    assert untrusted.returncode == 60, (untrusted.returncode, untrusted.stderr)  # curl: peer certificate not trusted
    # and the port speaks nothing but TLS
    assert bed.http(HTTPS) == 0


def test_tls_mutual_serves_a_client_with_a_certificate_of_the_ca(bed):
    mine = ("--cacert", str(bed.ca), "--cert", str(bed.client.dir / "client.pem"),
            "--key", str(bed.client.dir / "client-key.pem"))
    wait_for(lambda: bed.https(*mine, port=MUTUAL).stdout == "200", 20, interval=0.3,
             what="HTTPS with a client certificate")
    anonymous = bed.https("--cacert", str(bed.ca), port=MUTUAL)
    assert anonymous.stdout != "200" and anonymous.returncode != 0, (anonymous.returncode, anonymous.stderr)


def test_capture_none_with_a_bind_serves_on_that_address(bed):
    name = f"{bed.app.ip}_{BOUND}"
    wait_for(lambda: bed.http(BOUND) == 200, 20, interval=0.3, what="HTTP on the bound address")
    lis = bed.listeners()[name]
    assert lis["address"]["socket_address"] == {"address": bed.app.ip, "port_value": BOUND}
    # not through iptables (9080 is not intercepted; nothing but the sidecar listens there)
    assert bed.envoy.stat(f"listener.{bed.app.ip}_{BOUND}.downstream_cx_total") >= 1
    assert not [c for c in bed.listeners()["virtualInbound"]["filter_chains"]
                if c.get("filter_chain_match", {}).get("destination_port") == BOUND]


def test_connection_pool_limits_the_inbound_cluster(bed):
    cluster = f"inbound|{TCP}||"
    assert bed.max_connections(cluster) == 1
    first = bed.client.connect(bed.app.ip, TCP)
    try:
        assert bed.echo(first) == b"app ping\n"
        before = bed.envoy.stat(f"cluster.{cluster}.upstream_cx_overflow")
        second = bed.client.connect(bed.app.ip, TCP)
        try:
            assert bed.echo(second) == b""  # closed by the sidecar: the pool is full
        finally:
            second.close()
        assert bed.envoy.stat(f"cluster.{cluster}.upstream_cx_overflow") == before + 1
        assert bed.echo(first) == b"app ping\n"  # the first one is untouched
        # the limit raised in the Sidecar reaches the running proxy: a second connection now passes
        bed.edit_sidecar("maxConnections: 1", "maxConnections: 2")
        wait_for(lambda: bed.max_connections(cluster) == 2, 20, interval=0.3, what="the new limit pushed")
        # the updated cluster counts its own connections (the first one stays with the old one): two
        # pass, a third overflows
        more = [bed.client.connect(bed.app.ip, TCP) for _ in range(3)]
        try:
            assert sorted(bed.echo(s) for s in more) == [b"", b"app ping\n", b"app ping\n"]
        finally:
            for s in more:
                s.close()
    finally:
        first.close()
        if "maxConnections: 2" in bed.sidecar.read_text():
            bed.edit_sidecar("maxConnections: 2", "maxConnections: 1")
    wait_for(lambda: bed.max_connections(cluster) == 1, 20, interval=0.3, what="the limit back to 1")

    def fresh() -> bool:
        s = bed.client.connect(bed.app.ip, TCP)
        try:
            return bed.echo(s) == b"app ping\n"
        finally:
            s.close()
    wait_for(fresh, 10, interval=0.3, what="a new connection once the others are closed")


def test_a_unix_socket_default_endpoint(bed):
    def body() -> bytes:
        try:
            status, _, data = bed.client.http_get(bed.app.ip, UDS, "/")
        except OSError:
            return b""
        return data if status == 200 else b""
    wait_for(lambda: body() == b"uds", 20, interval=0.3, what="the application on its Unix socket")


def test_a_default_endpoint_on_the_pod_ip(bed):
    def seen() -> dict:
        try:
            status, _, data = bed.client.http_get(bed.app.ip, OWN, "/")
        except OSError:
            return {}
        return json.loads(data) if status == 200 else {}
    wait_for(lambda: seen().get("local") == f"{bed.app.ip}:{APP_HTTP}", 20, interval=0.3,
             what="the application on the pod IP")
    # straight to the application from 127.0.0.6, not looped through virtualInbound's passthrough
    before = bed.envoy.stat("cluster.InboundPassthroughCluster.upstream_rq_total")
    assert seen()["peer"].startswith("127.0.0.6:")
    assert bed.envoy.stat("cluster.InboundPassthroughCluster.upstream_rq_total") == before
