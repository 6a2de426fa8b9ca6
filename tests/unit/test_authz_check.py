"""`meshd x authz check`: istioctl's policy table byte for byte, the per-filter-chain
form (`--listeners`) on istiod's and meshd's inbound listeners, the three sources, and
meshd's /debug/mtlsz behind it."""
from __future__ import annotations

import dataclasses
import json

import pytest
import yaml
from envoy.config.core.v3 import address_pb2, base_pb2
from envoy.config.listener.v3 import listener_components_pb2 as lc
from envoy.config.listener.v3 import listener_pb2
from envoy.config.rbac.v3 import rbac_pb2
from envoy.extensions.filters.http.ext_authz.v3 import ext_authz_pb2
from envoy.extensions.filters.http.rbac.v3 import rbac_pb2 as http_rbac_pb2
from envoy.extensions.filters.http.router.v3 import router_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2
from envoy.extensions.filters.network.rbac.v3 import rbac_pb2 as net_rbac_pb2
from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2
from envoy.extensions.transport_sockets.tls.v3 import tls_pb2

from controlplane import names
from controlplane.cli import main
from controlplane.debug import authz_table
from controlplane.debug.configdump import ConfigDump, Sent, from_sent
from controlplane.debug.handlers import debug_routes
from controlplane.debug.monitoring import Request
from controlplane.debug.views import DebugViews
from controlplane.generators import listeners as lds
from controlplane.generators.resources import pack
from controlplane.model.proxy import parse_node
from tests.support.configs import mesh_from_yaml
from tests.support.paths import shared

GOLDEN = ("corpus", "istioctl-golden", "istioctl", "pkg", "authz", "testdata", "configdump.yaml")
# istioctl/pkg/authz/authz_test.go, TestAuthz, for `-f testdata/configdump.yaml`
GOLDEN_OUTPUT = (
    "ACTION   AuthorizationPolicy         RULES\n"
    "ALLOW    _anonymous_match_nothing_   1\n"
    "ALLOW    httpbin.default             1\n"
    "CUSTOM   ext-authz.default           1\n"
)


def check(capsys, *argv: str) -> tuple[int, str, str]:
    rc = main(list(argv))
    out = capsys.readouterr()
    return rc, out.out, out.err


# --- istioctl's golden ----------------------------------------------------------------


@pytest.mark.parametrize("spelling", [["x"], ["experimental"], ["exp"]])
def test_golden_config_dump_prints_istioctls_table_byte_for_byte(capsys, spelling):
    rc, out, err = check(capsys, *spelling, "authz", "check", "-f", str(shared(*GOLDEN)))
    assert (rc, out, err) == (0, GOLDEN_OUTPUT, "")


def test_a_yaml_dump_reads_as_the_json_one(capsys, tmp_path):
    doc = json.loads(shared(*GOLDEN).read_text())
    path = tmp_path / "dump.yaml"
    path.write_text(yaml.safe_dump(doc))
    assert check(capsys, "x", "authz", "check", "--file", str(path)) == (0, GOLDEN_OUTPUT, "")


def test_golden_dump_per_filter_chain(capsys):
    rc, out, _ = check(capsys, "x", "authz", "check", "-f", str(shared(*GOLDEN)), "--listeners")
    assert rc == 0
    lines = out.splitlines()
    assert lines[0] == "LISTENER[FilterChain]     CERTIFICATE      mTLS (MODE)          AuthZ (RULES)"
    rows = {line.split()[0]: line for line in lines[1:]}
    # inbound only (istiod marks the outbound listeners OUTBOUND): 8 chains of virtualInbound
    # and the HBONE listeners, which PeerAuthentication does not decide
    assert list(rows) == [f"virtualInbound[{i}]" for i in range(8)] + [
        "connect_terminate", "main_internal", "connect_originate"]
    assert rows["virtualInbound[0]"] == "virtualInbound[0]         none             no (none)            no (none)"
    # port 80: an mTLS chain and a plaintext one -> PERMISSIVE; ALLOW httpbin and CUSTOM ext-authz on both
    http = "yes (2: istio-ext-authz-ns[default]-policy[ext-authz]-rule[0], ns[default]-policy[httpbin]-rule[0])"
    assert rows["virtualInbound[6]"] == f"virtualInbound[6]         SDS: default     yes (PERMISSIVE)     {http}"
    assert rows["virtualInbound[7]"] == f"virtualInbound[7]         none             no (PERMISSIVE)      {http}"
    # the TCP passthrough chains carry the deny-all the HTTP-only ALLOW rule becomes on TCP
    assert rows["virtualInbound[4]"].endswith("no (PERMISSIVE)      yes (1: _anonymous_match_nothing_)")
    assert rows["main_internal"].split()[1:5] == ["none", "no", "(none)", "yes"]


# --- constructed dumps: every action, bad filters -----------------------------------------


def _policies(*names_: str) -> dict:
    return {n: rbac_pb2.Policy(permissions=[rbac_pb2.Permission(any=True)], principals=[rbac_pb2.Principal(any=True)])
            for n in names_}


def _http_filter(name: str, msg) -> hcm_pb2.HttpFilter:
    f = hcm_pb2.HttpFilter(name=name)
    f.typed_config.Pack(msg)
    return f


def _network_filter(name: str, msg) -> lc.Filter:
    f = lc.Filter(name=name)
    f.typed_config.Pack(msg)
    return f


def _http_rbac(action=None, policies=(), shadow=(), prefix="istio_dry_run_allow_") -> hcm_pb2.HttpFilter:
    msg = http_rbac_pb2.RBAC(shadow_rules_stat_prefix=prefix)
    if action is not None:
        msg.rules.CopyFrom(rbac_pb2.RBAC(action=action, policies=_policies(*policies)))
    if shadow:
        msg.shadow_rules.CopyFrom(rbac_pb2.RBAC(action=rbac_pb2.RBAC.DENY, policies=_policies(*shadow)))
    return _http_filter("envoy.filters.http.rbac", msg)


def _network_rbac(action, policies=()) -> lc.Filter:
    msg = net_rbac_pb2.RBAC(stat_prefix="tcp.", rules=rbac_pb2.RBAC(action=action, policies=_policies(*policies)))
    return _network_filter("envoy.filters.network.rbac", msg)


def _hcm(*http_filters) -> lc.Filter:
    hcm = hcm_pb2.HttpConnectionManager(stat_prefix="inbound_0.0.0.0_8080", http_filters=[
        *http_filters, _http_filter("envoy.filters.http.router", router_pb2.Router())])
    return _network_filter("envoy.filters.network.http_connection_manager", hcm)


def _tcp() -> lc.Filter:
    return _network_filter("envoy.filters.network.tcp_proxy", tcp_proxy_pb2.TcpProxy(stat_prefix="x", cluster="x"))


def _listener(name, port, chains, direction=base_pb2.INBOUND) -> listener_pb2.Listener:
    addr = address_pb2.Address(socket_address=address_pb2.SocketAddress(address="0.0.0.0", port_value=port))
    return listener_pb2.Listener(name=name, address=addr, filter_chains=chains, traffic_direction=direction)


def _dump(*listeners_) -> ConfigDump:
    res = tuple(pack(lis.name, names.LISTENER, lis) for lis in listeners_)
    return from_sent(None, [Sent(names.LISTENER, "v1", 0.0, res)])


def _write(tmp_path, dump: ConfigDump) -> str:
    path = tmp_path / "dump.json"
    path.write_text(dump.to_json())
    return str(path)


A, D, LOG = rbac_pb2.RBAC.ALLOW, rbac_pb2.RBAC.DENY, rbac_pb2.RBAC.LOG


def every_action() -> ConfigDump:
    http = _hcm(
        _http_rbac(prefix="istio_ext_authz_", shadow=["istio-ext-authz-ns[foo]-policy[ext]-rule[0]"]),
        _http_filter("envoy.filters.http.ext_authz", ext_authz_pb2.ExtAuthz()),
        _http_rbac(LOG, ["ns[foo]-policy[audit]-rule[0]"]),
        _http_rbac(D, ["ns[foo]-policy[deny-path]-rule[0]", "ns[foo]-policy[deny-path]-rule[1]"]),
        # dry-run rules are shadow rules: not enforced, not listed
        _http_rbac(A, ["ns[foo]-policy[allow]-rule[0]", "ns[foo]-policy[allow]-rule[2]"],
                   shadow=["ns[foo]-policy[dry]-rule[0]"]),
    )
    chains = [
        lc.FilterChain(name="0.0.0.0_8080", filters=[http]),
        lc.FilterChain(name="0.0.0.0_9000", filters=[
            _network_rbac(D), _network_rbac(A, ["ns[foo]-policy[allow]-rule[1]"]), _tcp()]),
    ]
    return _dump(_listener("virtualInbound", 15006, chains))


def test_every_action_in_istioctls_order_with_rules_counted_per_policy(capsys, tmp_path):
    rc, out, err = check(capsys, "x", "authz", "check", "-f", _write(tmp_path, every_action()))
    assert (rc, err) == (0, "")
    assert out == (
        "ACTION   AuthorizationPolicy         RULES\n"
        "DENY     _anonymous_match_nothing_   1\n"
        "DENY     deny-path.foo               2\n"
        "ALLOW    allow.foo                   3\n"
        "LOG      audit.foo                   1\n"
        "CUSTOM   ext.foo                     1\n"
    )


def test_a_dump_without_listeners_prints_nothing_as_istioctl(capsys, tmp_path):
    assert check(capsys, "x", "authz", "check", "-f", _write(tmp_path, _dump())) == (0, "", "")


def test_a_filter_that_is_not_what_its_name_says_is_reported_and_skipped(capsys, tmp_path):
    bogus = _http_filter("envoy.filters.http.rbac", router_pb2.Router())
    chain = lc.FilterChain(filters=[_hcm(bogus, _http_rbac(A, ["ns[foo]-policy[ok]-rule[0]"]))])
    rc, out, err = check(capsys, "x", "authz", "check", "-f", _write(tmp_path, _dump(_listener("l", 80, [chain]))))
    assert rc == 0
    assert [line.split() for line in out.splitlines()[1:]] == [["ALLOW", "ok.foo", "1"]]
    assert "listener l chain 0 envoy.filters.http.rbac" in err and "envoy.extensions.filters.http.router" in err


def test_unreadable_input_fails_with_the_file_named(capsys, tmp_path):
    rc, out, err = check(capsys, "x", "authz", "check", "-f", str(tmp_path / "nope.json"))
    assert (rc, out) == (1, "")
    assert err.startswith(f"Error: failed to get config dump from file {tmp_path / 'nope.json'}")
    (tmp_path / "bad.json").write_text('{"configs": 3}')
    rc, _, err = check(capsys, "x", "authz", "check", "-f", str(tmp_path / "bad.json"))
    assert rc == 1 and "not an Envoy config dump" in err


def test_meshd_source_needs_a_proxy(capsys):
    rc, _, err = check(capsys, "x", "authz", "check")
    assert rc == 1 and "authz check needs a proxy (node id or pod.namespace), --envoy or --file" in err


# --- the per-filter-chain form ------------------------------------------------------------


def _mtls_socket(sds=("default",), require=True, files=()) -> base_pb2.TransportSocket:
    common = tls_pb2.CommonTlsContext()
    for f in files:
        common.tls_certificates.add().certificate_chain.filename = f
    for name in sds:
        common.tls_certificate_sds_secret_configs.add(name=name)
    common.combined_validation_context.validation_context_sds_secret_config.name = "ROOTCA"
    ctx = tls_pb2.DownstreamTlsContext(common_tls_context=common)
    ctx.require_client_certificate.value = require
    ts = base_pb2.TransportSocket(name="envoy.transport_sockets.tls")
    ts.typed_config.Pack(ctx)
    return ts


def test_gateway_listeners_are_all_shown_without_a_peer_authentication_mode(tmp_path, capsys):
    mutual = lc.FilterChain(filters=[_hcm()], transport_socket=_mtls_socket(["kubernetes://cred"]))
    simple = lc.FilterChain(filters=[_hcm()], transport_socket=_mtls_socket([], require=False,
                                                                             files=["/etc/certs/tls.crt"]))
    plain = lc.FilterChain(filters=[_hcm(_http_rbac(D, ["ns[istio-system]-policy[deny-api]-rule[0]"]))])
    dump = _dump(_listener("0.0.0.0_8443", 8443, [mutual, simple], base_pb2.OUTBOUND),
                 _listener("0.0.0.0_8080", 8080, [plain], base_pb2.OUTBOUND))
    rc, out, _ = check(capsys, "x", "authz", "check", "-f", _write(tmp_path, dump), "--listeners")
    assert rc == 0
    assert out == (
        "LISTENER[FilterChain]     CERTIFICATE                mTLS (MODE)     AuthZ (RULES)\n"
        "0.0.0.0_8443[0]           SDS: kubernetes://cred     yes (none)      no (none)\n"
        "0.0.0.0_8443[1]           /etc/certs/tls.crt         no (none)       no (none)\n"
        "0.0.0.0_8080              none                       no (none)       "
        "yes (1: ns[istio-system]-policy[deny-api]-rule[0])\n"
    )


# meshd's own inbound listener under each PeerAuthentication: the mode read back from the
# chains equals the one meshd computed, chain by chain.
NS = "shop"
LAYOUT = f"""
apiVersion: v1
kind: Service
metadata: {{name: web, namespace: {NS}}}
spec:
  clusterIP: 10.96.0.10
  selector: {{app: web}}
  ports: [{{name: http, port: 80, targetPort: 8080}}]
---
apiVersion: v1
kind: Service
metadata: {{name: web-tcp, namespace: {NS}}}
spec:
  clusterIP: 10.96.0.11
  selector: {{app: web}}
  ports: [{{name: tcp, port: 9000, targetPort: 9000}}]
---
apiVersion: v1
kind: Pod
metadata: {{name: web-1, namespace: {NS}, labels: {{app: web}}}}
spec: {{serviceAccountName: web, containers: [{{name: web}}]}}
status: {{podIP: 10.1.0.10}}
"""
WEB = parse_node(f"sidecar~10.1.0.10~web-1.{NS}~{NS}.svc.cluster.local",
                 {"NAMESPACE": NS, "LABELS": {"app": "web"}, "SERVICE_ACCOUNT": "web", "INTERCEPTION_MODE": "REDIRECT"})


def _pa(namespace: str, mode: str, selector: bool = False, ports: dict | None = None) -> str:
    spec = {"mtls": {"mode": mode}}
    if selector:
        spec["selector"] = {"matchLabels": {"app": "web"}}
    if ports:
        spec["portLevelMtls"] = {str(p): {"mode": m} for p, m in ports.items()}
    return yaml.safe_dump({"apiVersion": "security.istio.io/v1", "kind": "PeerAuthentication",
                           "metadata": {"name": f"pa-{mode.lower()}", "namespace": namespace}, "spec": spec})


SCENARIOS = {
    "none (PERMISSIVE)": [],
    "mesh STRICT": [_pa("istio-system", "STRICT")],
    "namespace DISABLE": [_pa("istio-system", "STRICT"), _pa(NS, "DISABLE")],
    "workload STRICT, ports": [_pa(NS, "STRICT", True, {8080: "PERMISSIVE", 9000: "DISABLE", 7070: "PERMISSIVE"})],
}


@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_modes_read_back_from_meshds_inbound_chains_are_the_policys(scenario):
    mesh = mesh_from_yaml("\n---\n".join([LAYOUT, *SCENARIOS[scenario]]))
    policy = mesh.mtls_policy(NS, WEB.labels)
    listeners = authz_table.read_listeners(_dump(*(msg for _, msg in lds.build(mesh, WEB))))
    [inbound] = authz_table.shown_listeners(listeners)
    assert inbound.name == "virtualInbound"
    inferred = authz_table.inferred_modes(listeners)
    known = authz_table.known_modes(policy.mode, policy.port_modes)
    seen = set()
    for chain in inbound.chains:
        assert inferred(inbound, chain) == known(inbound, chain), (chain.name, chain.port)
        seen.add((chain.port, known(inbound, chain), chain.mtls))
    assert (15006, "none", False) in seen  # the blackhole chain
    if scenario == "mesh STRICT":
        assert {(m, t) for p, m, t in seen if p != 15006} == {("STRICT", True)}
    if scenario == "workload STRICT, ports":
        assert {p: m for p, m, _ in seen} == {15006: "none", 0: "STRICT", 8080: "PERMISSIVE", 9000: "DISABLE",
                                              7070: "PERMISSIVE"}


def test_meshd_source_shows_the_mode_meshd_computed(capsys, monkeypatch):
    """A sidecar without a workload certificate gets only plaintext chains: read from the
    chains they look DISABLE; meshd knows the workload is PERMISSIVE and says so."""
    mesh = mesh_from_yaml(LAYOUT)
    no_cert = dataclasses.replace(WEB, workload_cert=False)
    dump = _dump(*(msg for _, msg in lds.build(mesh, no_cert)))
    calls = []

    def fake_get(base, path, params=None, token=None, timeout=10.0):
        calls.append((base, path, params))
        if path == "/debug/config_dump":
            return dump.to_json().encode()
        assert path == "/debug/mtlsz"
        return json.dumps({"proxy": WEB.id, "type": "sidecar", "mode": "PERMISSIVE", "portModes": {},
                           "sources": []}).encode()

    monkeypatch.setattr("controlplane.commands.proxy_config.get", fake_get)
    monkeypatch.setattr("controlplane.commands.authz.get", fake_get)
    rc, out, _ = check(capsys, "x", "authz", "check", f"web-1.{NS}", "--listeners", "--meshd", "http://m:15014")
    assert rc == 0
    assert calls == [("http://m:15014", "/debug/config_dump", {"proxyID": f"web-1.{NS}"}),
                     ("http://m:15014", "/debug/mtlsz", {"proxyID": f"web-1.{NS}"})]
    modes = [line.split()[2:4] for line in out.splitlines()[1:]]
    assert modes[0] == ["no", "(none)"]  # blackhole
    assert modes[1:] and all(m == ["no", "(PERMISSIVE)"] for m in modes[1:])
    # the same chains from a file: inferred, and so DISABLE
    listeners = authz_table.read_listeners(dump)
    rows = authz_table.chain_rows(listeners, authz_table.inferred_modes(listeners))
    assert {r[2] for r in rows[1:]} == {"no (DISABLE)"}


# --- /debug/mtlsz ----------------------------------------------------------------------


class _Conn:
    def __init__(self, proxy):
        self.proxy, self.id, self.connected_at = proxy, "c1", 1.0


def test_mtlsz_reports_a_sidecars_effective_peer_authentication():
    mesh = mesh_from_yaml("\n---\n".join([LAYOUT, *SCENARIOS["workload STRICT, ports"]]))
    gw = parse_node("router~10.1.0.2~gw-1.istio-system~istio-system.svc.cluster.local", {"NAMESPACE": "istio-system"})
    ads = type("Ads", (), {"connections": lambda s: [_Conn(WEB), _Conn(gw)], "mesh": mesh})()
    route = debug_routes(DebugViews(ads))["/debug/mtlsz"]
    resp = route(Request("GET", "/debug/mtlsz", {"proxyID": f"web-1.{NS}"}, {}, "127.0.0.1"))
    assert resp.status == 200
    assert json.loads(resp.body) == {"proxy": WEB.id, "type": "sidecar", "mode": "STRICT",
                                     "portModes": {"7070": "PERMISSIVE", "8080": "PERMISSIVE", "9000": "DISABLE"},
                                     "sources": [f"{NS}/pa-strict"]}
    resp = route(Request("GET", "/debug/mtlsz", {"proxyID": "gw-1.istio-system"}, {}, "127.0.0.1"))
    assert json.loads(resp.body)["mode"] is None  # PeerAuthentication does not apply to gateways
    assert route(Request("GET", "/debug/mtlsz", {"proxyID": "nobody.x"}, {}, "127.0.0.1")).status == 404
    assert route(Request("GET", "/debug/mtlsz", {}, {}, "127.0.0.1")).status == 400
