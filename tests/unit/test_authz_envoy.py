"""Real traffic through the authorization filters meshd builds, on a real Envoy with a
static bootstrap (no control plane): what Istio promises for each kind of policy is what
Envoy does with our filters."""
from __future__ import annotations

import contextlib
import http.client
import http.server
import socket
import textwrap
import threading
from concurrent import futures
from pathlib import Path

import grpc
import pytest
from envoy.service.auth.v3 import external_auth_pb2, external_auth_pb2_grpc
from google.rpc import code_pb2, status_pb2

from controlplane.generators.authz import builder
from controlplane.model.authorization import authz_policy, policies_for
from controlplane.model.meshconfig import parse_mesh_config
from tests.support.configs import objects_from_yaml
from tests.support.envoy import StaticEnvoy
from tests.support.harness import free_port, http_backend

pytestmark = pytest.mark.e2e

NS = "shop"
MESH = parse_mesh_config({})


def workload(*specs: str, annotations: str = "{}"):
    docs = [textwrap.dedent(f"""\
        apiVersion: security.istio.io/v1
        kind: AuthorizationPolicy
        metadata: {{name: p{i}, namespace: {NS}, annotations: {annotations}}}
        spec: {spec}
        """) for i, spec in enumerate(specs)]
    return policies_for([authz_policy(o) for o in objects_from_yaml("---\n".join(docs))], NS, {"app": "web"},
                        "istio-system")


def request(port: int, method: str = "GET", path: str = "/", headers: dict | None = None) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request(method, path, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def through_tcp(port: int) -> bytes:
    """An HTTP GET through a TCP listener; b"" when the connection is closed on us."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        try:
            s.sendall(b"GET /via-tcp HTTP/1.1\r\nHost: backend\r\nConnection: close\r\n\r\n")
            chunks = []
            while chunk := s.recv(65536):
                chunks.append(chunk)
            return b"".join(chunks)
        except ConnectionResetError:
            return b""


def test_envoy_enforces_the_policies_as_istio_documents(tmp_path: Path):
    static = StaticEnvoy(admin_port=free_port("127.0.0.1"))
    backend_port = free_port("127.0.0.1")
    static.add_cluster("backend", backend_port)

    # GET on /public/* is allowed, but never /public/admin*; everything is audited.
    rules = static.add_http(builder.http_filters(workload(
        "{action: ALLOW, rules: [{to: [{operation: {methods: [GET], paths: ['/public/*']}}]}]}",
        "{action: DENY, rules: [{to: [{operation: {paths: ['/public/admin*']}}]}]}",
        "{action: AUDIT, rules: [{}]}"), MESH), free_port("127.0.0.1"))
    # Istio's "deny all": an ALLOW policy with an empty spec.
    deny_all = static.add_http(builder.http_filters(workload("{}"), MESH), free_port("127.0.0.1"))
    # A token is required (no JWT filter here, so never present), or the x-team header says blue.
    who = static.add_http(builder.http_filters(workload(
        "{rules: [{from: [{source: {requestPrincipals: ['*']}}]}]}",
        "{rules: [{when: [{key: 'request.headers[x-team]', values: [blue]}]}]}"), MESH), free_port("127.0.0.1"))
    # CUSTOM with a provider the mesh config does not define: what it selects is denied.
    custom = static.add_http(builder.http_filters(workload(
        "{action: CUSTOM, provider: {name: nowhere}, rules: [{to: [{operation: {paths: [/custom]}}]}]}"), MESH),
        free_port("127.0.0.1"))
    # Dry-run: counted, not enforced.
    dry = static.add_http(builder.http_filters(workload("{action: DENY, rules: [{}]}",
                                                        annotations="{istio.io/dry-run: 'true'}"), MESH),
                          free_port("127.0.0.1"))
    # TCP: a DENY with an HTTP-only field matches more (the whole port); an ALLOW with one
    # allows nothing; an ALLOW on the source address lets the connection through.
    deny_port = free_port("127.0.0.1")
    tcp_deny = static.add_tcp(builder.network_filters(workload(
        f"{{action: DENY, rules: [{{to: [{{operation: {{ports: ['{deny_port}'], methods: [POST]}}}}]}}]}}"), MESH),
        "backend", deny_port)
    tcp_allow_http_only = static.add_tcp(builder.network_filters(workload(
        "{rules: [{to: [{operation: {methods: [GET]}}]}]}"), MESH), "backend", free_port("127.0.0.1"))
    tcp_allow_ip = static.add_tcp(builder.network_filters(workload(
        "{rules: [{from: [{source: {ipBlocks: [127.0.0.0/8]}}]}]}"), MESH), "backend", free_port("127.0.0.1"))

    with http_backend("127.0.0.1", backend_port, b"backend"), static.run(tmp_path) as envoy:
        assert request(rules, "GET", "/public/a") == (200, b"ok")
        assert request(rules, "POST", "/public/a") == (403, b"RBAC: access denied")
        assert request(rules, "GET", "/public/admin/users")[0] == 403
        assert request(rules, "GET", "/private")[0] == 403
        assert request(deny_all, "GET", "/")[0] == 403
        assert request(who, "GET", "/")[0] == 403
        assert request(who, "GET", "/", {"x-team": "blue"})[0] == 200
        assert request(custom, "GET", "/custom")[0] == 403
        assert request(custom, "GET", "/other")[0] == 200
        assert request(dry, "GET", "/")[0] == 200
        assert through_tcp(tcp_deny) == b""
        assert through_tcp(tcp_allow_http_only) == b""
        assert b"backend /via-tcp" in through_tcp(tcp_allow_ip)

        stats = envoy.stats("rbac")
        # The dry-run DENY counted the request it would have refused (Istio's stat prefix).
        assert stats["http.l4.rbac.istio_dry_run_deny_.shadow_denied"] == 1
        assert stats["tcp.rbac.denied"] == 2 and stats["tcp.rbac.allowed"] >= 1


class _HttpCheck(http.server.BaseHTTPRequestHandler):
    """An HTTP ext_authz service: allows requests carrying `x-allow: yes`."""

    protocol_version = "HTTP/1.1"
    seen: list[str] = []

    def do_GET(self):
        self.seen.append(self.path)
        status = 200 if self.headers.get("x-allow") == "yes" else 403
        self.send_response(status)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


class _GrpcCheck(external_auth_pb2_grpc.AuthorizationServicer):
    """A gRPC ext_authz service: allows requests carrying `x-allow: yes`."""

    def __init__(self):
        self.seen: list[str] = []

    def Check(self, request, context):
        http_req = request.attributes.request.http
        self.seen.append(http_req.path)
        ok = http_req.headers.get("x-allow") == "yes"
        return external_auth_pb2.CheckResponse(status=status_pb2.Status(code=0 if ok else code_pb2.PERMISSION_DENIED))


@contextlib.contextmanager
def _check_servers(http_port: int, grpc_port: int):
    _HttpCheck.seen = []
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", http_port), _HttpCheck)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    servicer = _GrpcCheck()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    external_auth_pb2_grpc.add_AuthorizationServicer_to_server(servicer, server)
    server.add_insecure_port(f"127.0.0.1:{grpc_port}")
    server.start()
    try:
        yield _HttpCheck.seen, servicer.seen
    finally:
        server.stop(0)
        srv.shutdown()
        srv.server_close()


def test_custom_asks_the_provider_only_for_what_its_rules_select(tmp_path: Path):
    """The shadow-rule mechanism on upstream Envoy: the RBAC filter records which CUSTOM
    rule matched, and only then does the provider's ext_authz filter run."""
    http_port, grpc_port = free_port("127.0.0.1"), free_port("127.0.0.1")
    mesh = parse_mesh_config({"extensionProviders": [
        {"name": "http-authz", "envoyExtAuthzHttp": {"service": "authz-http.shop.svc.cluster.local",
                                                     "port": http_port, "includeRequestHeadersInCheck": ["x-allow"]}},
        {"name": "grpc-authz", "envoyExtAuthzGrpc": {"service": "authz-grpc.shop.svc.cluster.local",
                                                     "port": grpc_port}}]})
    static = StaticEnvoy(admin_port=free_port("127.0.0.1"))
    static.add_cluster(f"outbound|{http_port}||authz-http.shop.svc.cluster.local", http_port)
    static.add_cluster(f"outbound|{grpc_port}||authz-grpc.shop.svc.cluster.local", grpc_port, http2=True)
    listener = static.add_http(builder.http_filters(workload(
        "{action: CUSTOM, provider: {name: http-authz}, rules: [{to: [{operation: {paths: ['/h/*']}}]}]}",
        "{action: CUSTOM, provider: {name: grpc-authz}, rules: [{to: [{operation: {paths: ['/g/*']}}]}]}"), mesh),
        free_port("127.0.0.1"))
    with _check_servers(http_port, grpc_port) as (http_seen, grpc_seen), static.run(tmp_path):
        assert request(listener, "GET", "/free")[0] == 200
        assert request(listener, "GET", "/h/1")[0] == 403
        assert request(listener, "GET", "/h/2", {"x-allow": "yes"})[0] == 200
        assert request(listener, "GET", "/g/1")[0] == 403
        assert request(listener, "GET", "/g/2", {"x-allow": "yes"})[0] == 200
        assert http_seen == ["/h/1", "/h/2"]
        assert grpc_seen == ["/g/1", "/g/2"]
