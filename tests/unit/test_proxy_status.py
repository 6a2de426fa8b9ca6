"""`meshd proxy-status`: istioctl's status writer and comparator, against istioctl's goldens.

The status goldens (writer/pilot/testdata) come from istioctl's Go test, which builds its
input in code; the inputs are rebuilt here the same way (CSDS ClientConfigs per istiod).
The comparator goldens pair a config dump with itself (all "Match") and with a changed
copy (all "Don't Match").
"""
from __future__ import annotations

import contextlib
import http.server
import io
import json

import pytest
from envoy.service.discovery.v3 import discovery_pb2
from envoy.service.status.v3 import csds_pb2

from controlplane import cli
from controlplane.debug import status
from controlplane.debug.compare import compare
from controlplane.debug.configdump import ConfigDump
from tests.support.harness import serving
from tests.support.paths import SHARED

GOLDEN = SHARED / "corpus" / "istioctl-golden" / "istioctl" / "pkg"
PILOT = GOLDEN / "writer" / "pilot" / "testdata"
COMPARE = GOLDEN / "writer" / "compare" / "testdata"

TYPES = [
    ("type.googleapis.com/envoy.config.cluster.v3.Cluster", csds_pb2.STALE),
    ("type.googleapis.com/envoy.config.listener.v3.Listener", csds_pb2.SYNCED),
    ("type.googleapis.com/envoy.config.route.v3.RouteConfiguration", csds_pb2.NOT_SENT),
    ("type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment", csds_pb2.SYNCED),
    ("type.googleapis.com/envoy.config.core.v3.TypedExtensionConfig", csds_pb2.SYNCED),
]


def response(istiod: str, proxies) -> discovery_pb2.DiscoveryResponse:
    dr = discovery_pb2.DiscoveryResponse(version_info="1.1", type_url=status.CLIENT_CONFIG)
    dr.control_plane.identifier = json.dumps(
        {"Component": "istiod", "ID": istiod, "Info": {"version": "1.1", "revision": "", "golang_version": "",
                                                        "status": "", "tag": ""}}, separators=(",", ":"))
    for pid, cluster, version, ns, types in proxies:
        cc = csds_pb2.ClientConfig()
        cc.node.id = pid
        md = {"CLUSTER_ID": cluster, "ISTIO_VERSION": version}
        if ns:
            md["NAMESPACE"] = ns
        cc.node.metadata.update(md)
        for t, s in types:
            cc.generic_xds_configs.add(type_url=t, config_status=s)
        dr.resources.add().Pack(cc)
    return dr


def golden(name: str) -> str:
    path = PILOT / name
    if not path.exists():
        pytest.fail(f"istioctl golden file missing: {path}")
    return path.read_text()


def render(fn, *args, **kw) -> str:
    out = io.StringIO()
    if fn is status.print_status_dump:
        fn(args[0], out, *args[1:])
    else:
        fn(*args, out, **kw)
    return out.getvalue()


SINGLE = [response("istiod1", [("proxy1", "cluster1", "1.20", "", TYPES), ("proxy2", "cluster2", "1.20", "", TYPES)])]
MULTI = [
    response("istiod1", [("proxy1", "cluster1", "1.20", "", TYPES)]),
    response("istiod2", [("proxy2", "cluster2", "1.19", "", TYPES)]),
    response("istiod3", [("proxy3", "cluster3", "1.20", "", TYPES)]),
    response("istiod4", [("proxy4", "cluster4", "1.20", "", [])]),
]


def test_single_pilot_table():
    assert render(status.print_status, SINGLE) == golden("multiXdsStatusSinglePilot.txt")


def test_multi_pilot_table():
    assert render(status.print_status, MULTI) == golden("multiXdsStatusMultiPilot.txt")


def test_multi_pilot_verbose_for_one_proxy():
    got = render(status.print_status, MULTI, verbose=True, proxy="proxy1")
    assert got == golden("multiXdsStatusMultiPilot_verbose.txt")


@pytest.mark.parametrize("fmt", ["json", "yaml"])
def test_single_pilot_dump(fmt):
    one = response("istiod1", [("proxy1", "cluster1", "1.20", "", TYPES)])
    assert render(status.print_status_dump, one, fmt) == golden(f"multiXdsStatusSinglePilot.{fmt}")


def test_single_namespace_yaml():
    one = response("istiod1", [("proxy1", "cluster1", "1.20", "foo", TYPES)])
    # The golden file was saved without the final blank line istioctl prints.
    assert render(status.print_status_dump, one, "yaml").rstrip("\n") == \
        golden("multiXdsStatusSingleNamespace.yaml").rstrip("\n")


# --- meshd's /debug/syncz to istioctl's shapes ----------------------------------------

SYNCZ = {
    "controlPlane": {"id": "meshd-test", "version": "0.1.0"},
    "proxies": [
        {"proxy": "router~10.0.0.1~gw-0.istio-system~istio-system.svc.cluster.local", "name": "gw-0.istio-system",
         "namespace": "istio-system", "clusterID": "Kubernetes", "istioVersion": "",
         "types": [
             {"type": "CDS", "typeUrl": "type.googleapis.com/envoy.config.cluster.v3.Cluster", "status": "SYNCED",
              "sentVersion": "a", "nack": None},
             {"type": "LDS", "typeUrl": "type.googleapis.com/envoy.config.listener.v3.Listener", "status": "NACKED",
              "sentVersion": "b",
              "nack": {"version": "b", "nonce": "n", "message": "duplicate filter chain", "code": 13}},
         ]},
        {"proxy": "sidecar~10.0.0.2~web-0.default~default.svc.cluster.local", "name": "web-0.default",
         "namespace": "default", "clusterID": "Kubernetes", "istioVersion": "1.22",
         "types": [
             {"type": "CDS", "typeUrl": "type.googleapis.com/envoy.config.cluster.v3.Cluster", "status": "SYNCED"},
             {"type": "RDS", "typeUrl": "type.googleapis.com/envoy.config.route.v3.RouteConfiguration",
              "status": "NOT SENT"},
         ]},
    ],
}


def test_syncz_table_per_type_with_nack_message():
    out = render(status.print_status, [status.discovery_response(SYNCZ)], verbose=True)
    lines = out.splitlines()
    assert lines[0].split() == ["NAME", "CLUSTER", "CDS", "LDS", "RDS", "ISTIOD", "VERSION"]
    assert lines[1].split() == ["gw-0.istio-system", "Kubernetes", "SYNCED", "STALE", "meshd-test", "0.1.0"]
    assert lines[2].split() == ["web-0.default", "Kubernetes", "SYNCED", "NOT", "SENT", "meshd-test", "1.22"]
    assert "gw-0.istio-system LDS STALE: Envoy rejected version b: duplicate filter chain" in out
    brief = render(status.print_status, [status.discovery_response(SYNCZ)])
    assert brief.splitlines()[1].split()[-2:] == ["2", "(CDS,LDS)"]
    only_default = render(status.print_status, [status.discovery_response(SYNCZ)], namespace="default")
    assert "gw-0" not in only_default and "web-0.default" in only_default


@contextlib.contextmanager
def fake_meshd(routes: dict):
    class H(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            body = routes.get(self.path.split("?")[0])
            self.send_response(200 if body is not None else 404)
            self.end_headers()
            self.wfile.write((body or "{}").encode())

        def log_message(self, *a):
            pass

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
    with serving(srv):
        yield f"http://127.0.0.1:{srv.server_address[1]}"


def run(*argv: str) -> tuple[int, str]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = cli.main(list(argv))
    return code, out.getvalue()


def test_cli_reads_syncz_and_diffs_against_envoy():
    dump = (COMPARE / "configdump.json").read_text()
    diff = (COMPARE / "configdump_diff.json").read_text()
    with fake_meshd({"/debug/syncz": json.dumps(SYNCZ), "/debug/config_dump": dump}) as meshd, \
            fake_meshd({"/config_dump": dump}) as same_envoy, fake_meshd({"/config_dump": diff}) as other_envoy:
        code, out = run("proxy-status", "--meshd", meshd)
        assert code == 0 and "STALE" in out and "duplicate filter chain" in out
        code, out = run("proxy-status", "--meshd", meshd, "-o", "json")
        assert json.loads(out)["resources"][0]["node"]["id"].startswith("router~")
        code, out = run("proxy-status", "gw-0.istio-system", "--meshd", meshd, "--envoy", same_envoy)
        assert code == 0
        assert out.splitlines()[:2] == ["Clusters Match", "Listeners Match"]
        assert out.splitlines()[2].startswith("Routes Match")
        code, out = run("proxy-status", "gw-0.istio-system", "--meshd", meshd, "--envoy", other_envoy)
        assert "Clusters Don't Match" in out and "Listeners Don't Match" in out and "Routes Don't Match" in out
        assert "--- Meshd Clusters\n+++ Envoy Clusters\n" in out


def test_comparator_goldens():
    """istioctl's comparator_test: a dump against itself matches, against the changed copy not."""
    a = ConfigDump.from_json((COMPARE / "configdump.json").read_text())
    b = ConfigDump.from_json((COMPARE / "configdump_diff.json").read_text())
    out = io.StringIO()
    assert compare(a, a, out)
    text = out.getvalue()
    assert "Clusters Match" in text and "Listeners Match" in text and "Routes Match" in text
    out = io.StringIO()
    assert not compare(a, b, out)
    text = out.getvalue()
    assert "Clusters Don't Match" in text and "Listeners Don't Match" in text and "Routes Don't Match" in text
    assert '-            "name": "inbound-vip|9080|http|ratings.default.svc.cluster.local",' in text
