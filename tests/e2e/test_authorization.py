"""Authorization end to end (issue 15): AuthorizationPolicy and RequestAuthentication
enforced by real Envoy sidecars and an ingress gateway, policies changed live.

The chapter 9 mesh of tests/testbed/mesh.py (webapp and catalog with sidecars in
istioinaction, legacy without one beside them, sleep outside the mesh in default, the
ingress gateway in istio-system), plus:
- `reviewer`, a sidecar in istioinaction with its own service account, and `outsider`,
  a sidecar in default: callers that an ALLOW by principal or by namespace must stop;
- catalog also serves raw TCP on 9000 and 9001 (Service `tcp-echo`, ports `tcp` and
  `tcp-other`) and on 9002, and HTTP on 3002, two ports no Service declares (the
  passthrough chains), as in istio.io's authz-tcp task;
- `ext-authz`, an HTTP authorization service (tests/testbed/ext_authz.py) in its own
  namespace, registered in the mesh config's `extensionProviders` for CUSTOM;
- a JWKS server on the host, where meshd fetches an issuer's keys from (`jwksUri`).

Each test applies its policies as files in meshd's config directory; the `open_mesh`
fixture removes them after the test, also when it fails, and waits until the mesh is
open again, so every test starts from no policy at all. The bed checks at teardown that
no Envoy rejected an update.
"""
from __future__ import annotations

import json
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from tests.support.authorization import CLOSED, JwksServer, bearer, expect_tcp, meshd_cli, table_rows
from tests.support.jwt import Issuer, forged
from tests.support.paths import REPO
from tests.testbed.bed import wait_for
from tests.testbed.fixtures import require_testbed
from tests.testbed.mesh import (
    CATALOG_PORT,
    CHAPTER9_PODS,
    CHAPTER9_SERVICES,
    ENVOY_ADMIN,
    GATEWAY_HOST,
    GW_PORT,
    MESHED,
    NS,
    WEBAPP_PORT,
    Mesh,
    PodSpec,
    chapter9_layout,
    pods_yaml,
    run_mesh,
)

pytestmark = pytest.mark.e2e

DENIED = "RBAC: access denied"  # the body of Envoy's RBAC 403
GW = {"Host": GATEWAY_HOST}
TCP_PORT, TCP_OTHER_PORT, TCP_UNDECLARED_PORT = 9000, 9001, 9002
HTTP_UNDECLARED_PORT = 3002
EXT_AUTHZ_NS, EXT_AUTHZ_PORT, EXT_AUTHZ_PROVIDER = "ext-authz", 8000, "sample-ext-authz-http"
ISSUER = "https://issuer.meshd.test"
EXT_AUTHZ_APP = REPO / "tests" / "testbed" / "ext_authz.py"

PODS: dict[str, PodSpec] = {
    **CHAPTER9_PODS,
    "catalog": replace(CHAPTER9_PODS["catalog"], http=(*CHAPTER9_PODS["catalog"].http, HTTP_UNDECLARED_PORT),
                       tcp=(TCP_PORT, TCP_OTHER_PORT, TCP_UNDECLARED_PORT)),
    "reviewer": PodSpec(NS, "sidecar", "reviewer", f"app=reviewer,{MESHED}"),
    "outsider": PodSpec("default", "sidecar", "outsider", f"app=outsider,{MESHED}"),
    "ext-authz": PodSpec(EXT_AUTHZ_NS, service_account="ext-authz", labels="app=ext-authz"),
}
EXTRA_PODS = {n: PODS[n] for n in ("reviewer", "outsider", "ext-authz")}

MESH_CONFIG = f"""
extensionProviders:
- name: {EXT_AUTHZ_PROVIDER}
  envoyExtAuthzHttp:
    service: ext-authz.{EXT_AUTHZ_NS}.svc.cluster.local
    port: {EXT_AUTHZ_PORT}
    includeRequestHeadersInCheck: [x-ext-authz]
"""


def layout(pods: dict, vips: dict) -> str:
    return chapter9_layout(pods, vips) + pods_yaml(EXTRA_PODS, pods) + f"""
---
apiVersion: v1
kind: Service
metadata: {{name: tcp-echo, namespace: {NS}}}
spec:
  clusterIP: {vips['tcp-echo']}
  selector: {{app: catalog}}
  ports:
  - {{name: tcp, port: {TCP_PORT}, targetPort: {TCP_PORT}}}
  - {{name: tcp-other, port: {TCP_OTHER_PORT}, targetPort: {TCP_OTHER_PORT}}}
---
apiVersion: v1
kind: Service
metadata: {{name: ext-authz, namespace: {EXT_AUTHZ_NS}}}
spec:
  clusterIP: {vips['ext-authz']}
  selector: {{app: ext-authz}}
  ports: [{{name: http, port: {EXT_AUTHZ_PORT}, targetPort: {EXT_AUTHZ_PORT}}}]
"""


def _meshd_reads_mesh_config() -> bool:
    cp = meshd_cli("serve", "--help")
    return "--mesh-config" in cp.stdout


@pytest.fixture(scope="module")
def mesh(tmp_path_factory):
    require_testbed()
    work = tmp_path_factory.mktemp("authz")
    meshd_args: list[str] = []
    # Without `--mesh-config` meshd still serves everything else; the CUSTOM test then
    # fails on its own assertions instead of the whole module erroring.
    if _meshd_reads_mesh_config():
        (work / "mesh.yaml").write_text(MESH_CONFIG)
        meshd_args += ["--mesh-config", str(work / "mesh.yaml")]

    def start_ext_authz(bed, pods, vips) -> None:
        p = pods["ext-authz"].spawn([sys.executable, str(EXT_AUTHZ_APP), "--port", str(EXT_AUTHZ_PORT)],
                                    name="ext-authz", stdout_pipe=True)
        p.wait_line("READY", timeout=15)

    with run_mesh(work, PODS, layout, services=(*CHAPTER9_SERVICES, "tcp-echo", "ext-authz"),
                  meshd_args=meshd_args, prepare=start_ext_authz) as m:
        m.mesh_config_read = bool(meshd_args)
        yield m


def expect_open(mesh: Mesh) -> None:
    """No policy in force: what the other tests deny answers again."""
    mesh.expect("sleep", mesh.url("catalog", CATALOG_PORT), 0, "200", timeout=20)
    mesh.expect("webapp", mesh.vip("catalog"), 0, "200")
    mesh.expect("reviewer", mesh.vip("catalog"), 0, "200")
    mesh.expect("sleep", mesh.gateway_url("/api/catalog"), 0, "200", headers=GW)
    expect_tcp(mesh.pods["webapp"], mesh.vips["tcp-echo"], TCP_PORT, f"catalog webapp to {TCP_PORT}")


@pytest.fixture(autouse=True)
def open_mesh(mesh: Mesh):
    """Each test starts with no policy and leaves none behind (also when it fails); no
    Envoy rejects an update meshd sends for it (checked per test, so a rejection is
    blamed on the policies that caused it)."""
    rejected = mesh.rejected_updates()
    yield mesh
    for name in list(mesh.applied):
        mesh.apply(name, None)
    expect_open(mesh)
    now = mesh.rejected_updates()
    assert now == rejected, f"Envoy rejected updates during the test: {now} (before: {rejected})\n" + "\n".join(
        f"--- {n} envoy log\n{mesh.envoys[n].log(15)}" for n in now)


def policy(name: str, namespace: str, spec: str) -> str:
    return f"""
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: {name}, namespace: {namespace}}}
spec:
{spec}"""


CATALOG = "  selector: {matchLabels: {app: catalog}}\n"
GATEWAY = "  selector: {matchLabels: {istio: ingressgateway}}\n"


def echoed(client: str, port: int) -> str:
    return f"catalog {client} to {port}"


def _why(mesh: Mesh):
    return mesh.diagnosis


def authz_check(mesh: Mesh, pod: str, *, envoy: bool = False, file: Path | None = None,
                listeners: bool = False) -> str:
    """`meshd x authz check` for a pod of the bed: from what meshd sent it (default), from
    its Envoy's admin (`--envoy`, run inside the pod to reach it) or from a dump file."""
    if envoy:
        args = ["--envoy", f"http://127.0.0.1:{ENVOY_ADMIN}"]
    elif file is not None:
        args = ["--file", str(file)]
    else:
        args = [f"{pod}-0.{PODS[pod].namespace}", "--meshd", f"http://127.0.0.1:{mesh.cp.monitoring_port}"]
    args += ["--listeners"] if listeners else []
    cp = meshd_cli("x", "authz", "check", *args, pod=mesh.pods[pod] if envoy else None)
    assert cp.returncode == 0, f"meshd x authz check {' '.join(args)}: exit {cp.returncode}\n{cp.stderr}{cp.stdout}"
    return cp.stdout


# --- 1. deny-all ---------------------------------------------------------------------------


def test_mesh_wide_deny_all(mesh: Mesh):
    # Istio's "deny all": an empty spec in the root namespace, an ALLOW that matches nothing
    mesh.apply("deny-all", policy("deny-all", "istio-system", "  {}\n"))
    # the gateway answers 403 itself
    r = mesh.expect("sleep", mesh.gateway_url("/api/catalog"), 0, "403", headers=GW, body_part=DENIED)
    assert r.body.strip() == DENIED, r
    # sidecar to sidecar stops, whoever calls
    r = mesh.expect("webapp", mesh.vip("catalog"), 0, "403", body_part=DENIED)
    assert r.body.strip() == DENIED, r
    mesh.expect("reviewer", mesh.vip("webapp"), 0, "403", body_part=DENIED)
    mesh.expect("outsider", mesh.vip("catalog"), 0, "403", body_part=DENIED)
    # from outside the mesh too (plaintext, PERMISSIVE)
    mesh.expect("sleep", mesh.url("catalog", CATALOG_PORT), 0, "403", body_part=DENIED)
    mesh.expect("sleep", mesh.url("webapp", WEBAPP_PORT), 0, "403", body_part=DENIED)
    # the passthrough chains (ports no Service declares): HTTP found by sniffing, raw TCP
    mesh.expect("sleep", mesh.url("catalog", HTTP_UNDECLARED_PORT), 0, "403", body_part=DENIED)
    cat = mesh.pods["catalog"].ip
    expect_tcp(mesh.pods["sleep"], cat, TCP_UNDECLARED_PORT, CLOSED, why=_why(mesh))
    # and the declared TCP ports, sidecar to sidecar
    expect_tcp(mesh.pods["webapp"], mesh.vips["tcp-echo"], TCP_PORT, CLOSED, why=_why(mesh))
    # removed: open again
    mesh.apply("deny-all", None)
    mesh.expect("webapp", mesh.vip("catalog"), 0, "200")
    mesh.expect("sleep", mesh.gateway_url("/api/catalog"), 0, "200", headers=GW)
    mesh.expect("sleep", mesh.url("catalog", HTTP_UNDECLARED_PORT), 0, "200")
    expect_tcp(mesh.pods["sleep"], cat, TCP_UNDECLARED_PORT, echoed("sleep", TCP_UNDECLARED_PORT), why=_why(mesh))


# --- 2. ALLOW by principal, by namespace -----------------------------------------------------


def test_allow_from_one_principal_then_one_namespace(mesh: Mesh):
    mesh.apply("catalog-allow", policy("catalog-allow", NS, CATALOG + """\
  action: ALLOW
  rules:
  - from: [{source: {principals: ["cluster.local/ns/istioinaction/sa/webapp"]}}]
"""))
    mesh.expect("reviewer", mesh.vip("catalog"), 0, "403", body_part=DENIED)
    mesh.expect("webapp", mesh.vip("catalog"), 0, "200")
    mesh.expect("outsider", mesh.vip("catalog"), 0, "403", body_part=DENIED)
    # plaintext carries no principal
    mesh.expect("sleep", mesh.url("catalog", CATALOG_PORT), 0, "403", body_part=DENIED)
    # only catalog is selected: webapp still answers everyone
    mesh.expect("reviewer", mesh.vip("webapp"), 0, "200")

    mesh.apply("catalog-allow", policy("catalog-allow", NS, CATALOG + """\
  action: ALLOW
  rules:
  - from: [{source: {namespaces: [istioinaction]}}]
"""))
    mesh.expect("reviewer", mesh.vip("catalog"), 0, "200")
    mesh.expect("webapp", mesh.vip("catalog"), 0, "200")
    mesh.expect("outsider", mesh.vip("catalog"), 0, "403", body_part=DENIED)
    mesh.expect("sleep", mesh.url("catalog", CATALOG_PORT), 0, "403", body_part=DENIED)


# --- 3. methods and paths --------------------------------------------------------------------


def test_methods_and_paths(mesh: Mesh):
    mesh.apply("catalog-no-delete", policy("catalog-no-delete", NS, CATALOG + """\
  action: DENY
  rules:
  - to: [{operation: {methods: [DELETE]}}]
"""))
    mesh.apply("catalog-items", policy("catalog-items", NS, CATALOG + """\
  action: ALLOW
  rules:
  - to: [{operation: {methods: [GET, DELETE], paths: ["/items*"]}}]
"""))
    items = mesh.vip("catalog", path="/items")
    mesh.expect("webapp", mesh.vip("catalog", path="/other"), 0, "403", body_part=DENIED)
    mesh.expect("webapp", items, 0, "200")
    mesh.expect("webapp", mesh.vip("catalog", path="/items/42"), 0, "200")
    mesh.expect("webapp", items, 0, "403", method="POST", body_part=DENIED)
    # the ALLOW names DELETE, the DENY wins
    mesh.expect("webapp", items, 0, "403", method="DELETE", body_part=DENIED)
    mesh.apply("catalog-no-delete", None)
    mesh.expect("webapp", items, 0, "200", method="DELETE")
    mesh.expect("webapp", items, 0, "403", method="POST", body_part=DENIED)


# --- 4. DENY on a path at the gateway --------------------------------------------------------


def test_gateway_deny_path(mesh: Mesh):
    mesh.apply("gw-deny-api", policy("deny-api", "istio-system", GATEWAY + """\
  action: DENY
  rules:
  - to: [{operation: {paths: ["/api/*"]}}]
"""))
    r = mesh.expect("sleep", mesh.gateway_url("/api/catalog"), 0, "403", headers=GW, body_part=DENIED)
    assert r.body.strip() == DENIED, r
    mesh.expect("sleep", mesh.gateway_url("/other"), 0, "200", headers=GW)
    mesh.expect("sleep", mesh.gateway_url("/api"), 0, "200", headers=GW)  # "/api/*" is the prefix "/api/"
    # the policy selects the gateway only: webapp itself still serves /api/
    mesh.expect("sleep", mesh.url("webapp", WEBAPP_PORT, "/api/catalog"), 0, "200")


# --- 5. remoteIpBlocks at the gateway --------------------------------------------------------


def _xff_trusted_hops(mesh: Mesh) -> int:
    """xff_num_trusted_hops of the gateway's HTTP connection manager on its 8080 listener."""
    dump = mesh.envoys["gateway"].config_dump("dynamic_listeners")
    for entry in dump.get("configs", []):
        lis = entry.get("active_state", {}).get("listener", {})
        if lis.get("address", {}).get("socket_address", {}).get("port_value") != GW_PORT:
            continue
        for chain in lis.get("filter_chains", []):
            for f in chain.get("filters", []):
                if f.get("name") == "envoy.filters.network.http_connection_manager":
                    return int(f["typed_config"].get("xff_num_trusted_hops", 0))
    raise AssertionError(f"no HTTP connection manager on the gateway's {GW_PORT} listener: {json.dumps(dump)[:2000]}")


def test_gateway_remote_ip_blocks(mesh: Mesh):
    sleep_ip, legacy_ip = mesh.pods["sleep"].ip, mesh.pods["legacy"].ip
    url = mesh.gateway_url("/api/catalog")
    mesh.apply("gw-ip", policy("by-ip", "istio-system", GATEWAY + f"""\
  action: ALLOW
  rules:
  - from: [{{source: {{remoteIpBlocks: ["{sleep_ip}"]}}}}]
"""))
    mesh.expect("legacy", url, 0, "403", headers=GW, body_part=DENIED)
    mesh.expect("sleep", url, 0, "200", headers=GW)

    mesh.apply("gw-ip", policy("by-ip", "istio-system", GATEWAY + f"""\
  action: DENY
  rules:
  - from: [{{source: {{remoteIpBlocks: ["{sleep_ip}/32"]}}}}]
"""))
    mesh.expect("sleep", url, 0, "403", headers=GW, body_part=DENIED)
    mesh.expect("legacy", url, 0, "200", headers=GW)

    # X-Forwarded-For: the gateway trusts as many hops of it as its HCM says.
    hops = _xff_trusted_hops(mesh)
    if hops == 0:
        # Istio's default (numTrustedProxies 0): the peer address is the client's, and a
        # client cannot claim another's by sending the header.
        mesh.expect("legacy", url, 0, "200", headers={**GW, "X-Forwarded-For": sleep_ip})
        mesh.expect("sleep", url, 0, "403", headers={**GW, "X-Forwarded-For": legacy_ip}, body_part=DENIED)
    else:
        # the client address is the hops-th address from the right of the header
        filler = ["192.0.2.1"] * (hops - 1)
        mesh.expect("legacy", url, 0, "403", headers={**GW, "X-Forwarded-For": ", ".join([sleep_ip, *filler])},
                    body_part=DENIED)
        mesh.expect("sleep", url, 0, "200", headers={**GW, "X-Forwarded-For": ", ".join([legacy_ip, *filler])})


# --- 6. TCP ----------------------------------------------------------------------------------


def test_tcp_ports(mesh: Mesh):
    """istio.io's authz-tcp task, on catalog's raw TCP ports: 9000 and 9001 declared by
    the tcp-echo Service, 9002 reached through the passthrough chains."""
    echo, cat = mesh.vips["tcp-echo"], mesh.pods["catalog"].ip
    why = _why(mesh)

    def tcp(port: int, want_open: bool, client: str = "webapp", host: str = echo) -> None:
        expect_tcp(mesh.pods[client], host, port, echoed(client, port) if want_open else CLOSED, why=why)

    def apply(action: str, rule: str) -> None:
        mesh.apply("tcp-policy", policy("tcp-policy", NS, CATALOG + f"  action: {action}\n  rules:\n  - {rule}\n"))

    # ALLOW by port: 9000 and 9001 open, 9002 closed
    apply("ALLOW", '{to: [{operation: {ports: ["9000", "9001"]}}]}')
    tcp(TCP_UNDECLARED_PORT, False, host=cat)
    tcp(TCP_PORT, True)
    tcp(TCP_OTHER_PORT, True)
    # an HTTP-only field in an ALLOW rule: the rule matches nothing on a TCP port
    apply("ALLOW", '{to: [{operation: {methods: ["GET"], ports: ["9000"]}}]}')
    tcp(TCP_PORT, False)
    tcp(TCP_OTHER_PORT, False)
    # in a DENY rule it matches more: every TCP connection (HTTP keeps the method)
    apply("DENY", '{to: [{operation: {methods: ["GET"]}}]}')
    mesh.expect("webapp", mesh.vip("catalog"), 0, "200", method="POST")  # in force (the ALLOW is gone)
    mesh.expect("webapp", mesh.vip("catalog"), 0, "403", body_part=DENIED)
    tcp(TCP_OTHER_PORT, False)
    tcp(TCP_PORT, False)
    tcp(TCP_UNDECLARED_PORT, False, host=cat)
    # ... but its TCP-compatible fields still narrow it
    apply("DENY", '{to: [{operation: {methods: ["GET"], ports: ["9000"]}}]}')
    tcp(TCP_OTHER_PORT, True)
    tcp(TCP_PORT, False)
    # a TCP-compatible source: one principal
    apply("ALLOW", '{from: [{source: {principals: ["cluster.local/ns/istioinaction/sa/webapp"]}}]}')
    tcp(TCP_PORT, True)
    tcp(TCP_PORT, False, client="reviewer")
    tcp(TCP_PORT, False, client="sleep", host=cat)  # plaintext: no principal


# --- 7. JWT ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def issuer():
    return Issuer(ISSUER, "RS256", kid="k1")


@pytest.fixture(scope="module")
def jwks(issuer):
    server = JwksServer([issuer])
    with server.running():
        yield server


def _request_authentication(jwks_url: str) -> str:
    return f"""
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {{name: catalog-jwt, namespace: {NS}}}
spec:
  selector: {{matchLabels: {{app: catalog}}}}
  jwtRules:
  - issuer: "{ISSUER}"
    jwksUri: "{jwks_url}"
"""


def test_jwt_required_by_request_principals(mesh: Mesh, issuer: Issuer, jwks: JwksServer):
    url = mesh.vip("catalog")
    valid = issuer.token(sub="alice")
    other_key = Issuer(ISSUER, "RS256", kid="k1").token(sub="alice")  # same issuer and kid, another key
    tampered = forged(valid, sub="mallory")
    expired = issuer.token(sub="alice", expires_in=-600)
    mesh.apply("catalog-jwt", _request_authentication(jwks.url))
    # RequestAuthentication alone: a bad token is refused; a valid one passes once meshd
    # has fetched the key set (until then the issuer's tokens are refused); no token passes
    mesh.expect("webapp", url, 0, "401", headers=bearer(other_key))
    mesh.expect("webapp", url, 0, "200", headers=bearer(valid), timeout=20)
    assert jwks.fetches >= 1, "meshd never fetched the jwksUri"
    mesh.expect("webapp", url, 0, "200")
    # requestPrincipals ["*"] makes a token mandatory
    mesh.apply("catalog-require-jwt", policy("require-jwt", NS, CATALOG + """\
  action: ALLOW
  rules:
  - from: [{source: {requestPrincipals: ["*"]}}]
"""))
    mesh.expect("webapp", url, 0, "403", body_part=DENIED)
    mesh.expect("webapp", url, 0, "401", headers=bearer(other_key))
    mesh.expect("webapp", url, 0, "401", headers=bearer(tampered))
    mesh.expect("webapp", url, 0, "401", headers=bearer(expired))
    mesh.expect("webapp", url, 0, "200", headers=bearer(valid))
    # one principal, `<iss>/<sub>`
    mesh.apply("catalog-require-jwt", policy("require-jwt", NS, CATALOG + f"""\
  action: ALLOW
  rules:
  - from: [{{source: {{requestPrincipals: ["{ISSUER}/alice"]}}}}]
"""))
    mesh.expect("webapp", url, 0, "403", headers=bearer(issuer.token(sub="bob")), body_part=DENIED)
    mesh.expect("webapp", url, 0, "200", headers=bearer(valid))


def test_jwt_claims_rule(mesh: Mesh, issuer: Issuer, jwks: JwksServer):
    url = mesh.vip("catalog")
    mesh.apply("catalog-jwt", _request_authentication(jwks.url))
    mesh.apply("catalog-admins", policy("admins", NS, CATALOG + """\
  action: ALLOW
  rules:
  - from: [{source: {requestPrincipals: ["*"]}}]
    when:
    - key: request.auth.claims[group]
      values: [admins]
"""))
    mesh.expect("webapp", url, 0, "403", body_part=DENIED)  # in force: no token, no principal
    mesh.expect("webapp", url, 0, "200", headers=bearer(issuer.token(group="admins")), timeout=20)
    mesh.expect("webapp", url, 0, "403", headers=bearer(issuer.token(group="users")), body_part=DENIED)
    # a claim holding a list matches when one of its values does
    mesh.expect("webapp", url, 0, "200", headers=bearer(issuer.token(group=["dev", "admins"])))
    mesh.expect("webapp", url, 0, "403", headers=bearer(issuer.token()), body_part=DENIED)


# --- 8. CUSTOM -------------------------------------------------------------------------------


def test_custom_ext_authz(mesh: Mesh):
    assert mesh.mesh_config_read, "meshd serve has no --mesh-config: no extensionProviders, no CUSTOM"
    mesh.apply("catalog-ext-authz", policy("ext-authz", NS, CATALOG + f"""\
  action: CUSTOM
  provider: {{name: {EXT_AUTHZ_PROVIDER}}}
  rules:
  - to: [{{operation: {{paths: ["/ext/*"]}}}}]
"""))
    url = mesh.vip("catalog", path="/ext/data")
    # the decision is the ext_authz server's: its status and body
    mesh.expect("webapp", url, 0, "403", body_part="denied by ext_authz")
    mesh.expect("webapp", url, 0, "200", headers={"x-ext-authz": "allow"})
    mesh.expect("webapp", url, 0, "403", headers={"x-ext-authz": "deny"}, body_part="denied by ext_authz")
    # requests the rules do not name never reach the provider
    mesh.expect("webapp", mesh.vip("catalog", path="/other"), 0, "200")
    log = next(p for p in mesh.pods["ext-authz"].processes if p.name.endswith("/ext-authz")).log(500)
    assert "check GET /ext/data x-ext-authz=allow -> 200" in log, log
    assert "/other" not in log, log


# --- 9. AUDIT --------------------------------------------------------------------------------


def _inbound_rbac_allowed(mesh: Mesh) -> int:
    return sum(v for k, v in mesh.envoys["catalog"].stats(r"inbound_0\.0\.0\.0_3000\.rbac\.allowed").items())


def test_audit_leaves_traffic_alone(mesh: Mesh):
    mesh.apply("catalog-audit", policy("audit-get", NS, CATALOG + """\
  action: AUDIT
  rules:
  - to: [{operation: {methods: [GET]}}]
"""))
    # in force: catalog's Envoy holds an RBAC filter with the LOG action for it
    last = ""

    def logged() -> bool:
        nonlocal last
        last = authz_check(mesh, "catalog", envoy=True)
        return ["LOG", "audit-get.istioinaction", "1"] in table_rows(last)

    wait_for(logged, 15, interval=0.3, what=lambda: f"a LOG row for the AUDIT policy in {last!r}\n{mesh.diagnosis()}")
    # it evaluates every request and denies none: AUDIT is not an ALLOW (no deny-by-default)
    before = _inbound_rbac_allowed(mesh)
    mesh.expect("webapp", mesh.vip("catalog"), 0, "200")
    mesh.expect("webapp", mesh.vip("catalog"), 0, "200", method="POST")
    mesh.expect("sleep", mesh.url("catalog", CATALOG_PORT), 0, "200")
    mesh.expect("outsider", mesh.vip("catalog"), 0, "200")
    assert _inbound_rbac_allowed(mesh) >= before + 4, mesh.envoys["catalog"].stats("rbac")


# --- 10. meshd x authz check, live ------------------------------------------------------------


def test_authz_check_live(mesh: Mesh, tmp_path: Path):
    mesh.apply("pa-catalog", f"""
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {{name: catalog, namespace: {NS}}}
spec:
  selector: {{matchLabels: {{app: catalog}}}}
  mtls: {{mode: STRICT}}
""")
    mesh.apply("catalog-viewers", policy("catalog-viewers", NS, CATALOG + """\
  action: ALLOW
  rules:
  - from: [{source: {namespaces: [istioinaction]}}]
"""))
    mesh.expect("sleep", mesh.url("catalog", CATALOG_PORT), 56, "000")
    mesh.expect("outsider", mesh.vip("catalog"), 0, "403", body_part=DENIED)
    mesh.expect("webapp", mesh.vip("catalog"), 0, "200")

    dump = tmp_path / "catalog-config-dump.json"

    def tables() -> tuple[str, str, str]:
        dump.write_text(mesh.envoys["catalog"].admin("/config_dump"))
        return (authz_check(mesh, "catalog"), authz_check(mesh, "catalog", envoy=True),
                authz_check(mesh, "catalog", file=dump))

    last: tuple = ()

    def same() -> bool:
        nonlocal last
        last = tables()
        return last[0] == last[1] == last[2]

    # meshd's table (what it sent) and istioctl's logic on the Envoy's own dump agree once
    # the Envoy holds what meshd sent
    wait_for(same, 20, interval=0.5, what=lambda: f"the same table from meshd, --envoy and --file: {last}")
    rows = table_rows(last[0])
    assert rows[0] == ["ACTION", "AuthorizationPolicy", "RULES"], last[0]
    assert ["ALLOW", "catalog-viewers.istioinaction", "1"] in rows[1:], last[0]
    assert all(r[1] != "_anonymous_match_nothing_" for r in rows[1:]), last[0]

    # the per-filter-chain form: every inbound chain PeerAuthentication governs requires
    # mTLS under STRICT and carries the policy
    for source in ("meshd", "envoy"):
        text = authz_check(mesh, "catalog", envoy=source == "envoy", listeners=True)
        rows = table_rows(text)
        assert rows[0] == ["LISTENER[FilterChain]", "CERTIFICATE", "mTLS (MODE)", "AuthZ (RULES)"], text
        inbound = [r for r in rows[1:] if r[0].startswith("virtualInbound")]
        governed = [r for r in inbound if not r[2].endswith("(none)")]
        assert len(governed) >= 4, text  # 3000, 3001 (HTTP), 9000, 9001 (TCP) and the passthrough chains
        for r in governed:
            assert r[2] == "yes (STRICT)", (source, r, text)
            assert r[3].startswith("yes (1: ") and "catalog-viewers" in r[3], (source, r, text)
            assert r[1] != "none", (source, r, text)
