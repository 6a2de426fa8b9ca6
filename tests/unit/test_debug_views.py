"""meshd's /debug pages: what the ADS server records, the views built from it, access
control, and the Go-compatible writers underneath (tabwriter, jsonpb, go-yaml)."""
from __future__ import annotations

import asyncio
import io
import json

import grpc
import pytest
import structlog
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.extensions.transport_sockets.tls.v3 import secret_pb2
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2
from google.protobuf import duration_pb2, struct_pb2
from google.rpc import status_pb2

from controlplane import names
from controlplane.config.objects import Origin
from controlplane.config.parse import parse_document
from controlplane.config.store import ConfigStore
from controlplane.debug import gojson, goscalars, goyaml
from controlplane.debug.configdump import REDACTED, ConfigDump
from controlplane.debug.handlers import DebugAccess, install, is_loopback
from controlplane.debug.monitoring import Request, start_monitoring
from controlplane.debug.push_status import ConfigEvents, PushTracker
from controlplane.debug.tabwriter import render
from controlplane.debug.views import DebugViews
from controlplane.generators.resources import ResourceSet, pack
from controlplane.server.grpc_server import build_xds_server
from controlplane.server.host import AdsServer
from controlplane.server.metrics import Metrics

NODE_ID = "router~10.0.0.1~gw-abc.istio-system~istio-system.svc.cluster.local"
TIMEOUT = 5.0


# --- Go's text/tabwriter ---------------------------------------------------------------

def test_tabwriter_columns_padding_and_trailing_empty_cells():
    out = render(["A\tBB\tC", "aaaa\tb\t", "x\ty\tz"], padding=2)
    assert out == "A     BB  C\naaaa  b   \nx     y   z\n"


def test_tabwriter_line_without_tabs_ends_the_column_block():
    out = render(["a\tb", "headline", "longer\tc"], padding=1)
    assert out == "a b\nheadline\nlonger c\n"


def test_tabwriter_ragged_rows_format_like_go():
    # column 1 only spans the lines that have a terminated cell there
    out = render(["a\tb\tc", "dd\te", "f\tgggg\th"], padding=1)
    assert out == "a  b c\ndd e\nf  gggg h\n"


# --- Go encoders ----------------------------------------------------------------------

def test_jsonpb_struct_quirk_and_field_order():
    md = struct_pb2.Struct()
    md.update({"b": "x", "a": 1})
    from envoy.config.core.v3 import base_pb2

    node = base_pb2.Node(id="n", metadata=md)
    text = gojson.jsonpb(node, "    ")
    assert text == '{\n    "id": "n",\n    "metadata": {\n            "a": 1,\n            "b": "x"\n        }\n}'


def test_go_json_escapes_and_floats():
    assert goscalars.go_string("<a&b>\u2028") == '"\\u003ca\\u0026b\\u003e\\u2028"'
    assert [goscalars.go_float(f) for f in (1.0, 0.5, 1e21, 1e-7)] == ["1", "0.5", "1e+21", "1e-7"]
    c = cluster_pb2.Cluster(name="c", connect_timeout=duration_pb2.Duration(seconds=1, nanos=500_000_000))
    assert gojson.jsonpb(c) == '{"name":"c","connectTimeout":"1.500s"}'


def test_go_yaml_quoting_and_key_order():
    text = goyaml.to_yaml('{"b": "1.20", "@type": "x", "a10": 1, "a9": true, "s": "yes", "t": "2024-01-01", "e": ""}')
    assert text == "'@type': x\na9: true\na10: 1\nb: \"1.20\"\ne: \"\"\ns: \"yes\"\nt: \"2024-01-01\"\n"


# --- config dumps of what was sent ------------------------------------------------------

class FakeMesh:
    version = "m1"
    services: dict = {}
    endpoints: dict = {}


class FakeGenerator:
    broken = False

    def types(self):
        return (names.CLUSTER, names.LISTENER, names.SECRET)

    def generate(self, mesh, proxy, type_url, key=None):
        if type_url == names.CLUSTER:
            items = [pack("outbound|80||web.default.svc.cluster.local", type_url,
                          cluster_pb2.Cluster(name="outbound|80||web.default.svc.cluster.local",
                                              type=cluster_pb2.Cluster.EDS))]
        elif type_url == names.LISTENER:
            items = [pack("0.0.0.0_8080", type_url, listener_pb2.Listener(name="0.0.0.0_8080"))]
        else:
            s = secret_pb2.Secret(name="kubernetes://cred")
            s.tls_certificate.certificate_chain.inline_bytes = b"CERT"
            s.tls_certificate.private_key.inline_bytes = b"SECRET-KEY"
            items = [pack("kubernetes://cred", type_url, s)]
        return ResourceSet(type_url, items)


def _request(type_url, names_=(), version="", nonce="", first=False, error=None):
    req = discovery_pb2.DiscoveryRequest(type_url=type_url, resource_names=list(names_), version_info=version,
                                         response_nonce=nonce)
    if first:
        req.node.id = NODE_ID
        md = struct_pb2.Struct()
        md.update({"NAMESPACE": "istio-system", "LABELS": {"istio": "ingressgateway"}, "ISTIO_VERSION": "1.22"})
        req.node.metadata.CopyFrom(md)
        req.node.user_agent_build_version.version.major_number = 1
        req.node.extensions.add(name="envoy.filters.http.router")
    if error:
        req.error_detail.CopyFrom(status_pb2.Status(code=13, message=error))
    return req


async def _session():
    """A real AdsServer on a gRPC port; one stream that takes CDS, NACKs LDS and ACKs SDS."""
    metrics = Metrics()
    ads = AdsServer(FakeGenerator(), metrics, structlog.get_logger("test"))
    tracker = PushTracker(ads, metrics.registry)
    ads.observer = tracker
    server, port = build_xds_server(ads, "127.0.0.1", 0)
    await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    out: asyncio.Queue = asyncio.Queue()

    async def requests():
        while (r := await out.get()) is not None:
            yield r

    call = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel).StreamAggregatedResources(requests())
    ads.update(FakeMesh(), reason="test")
    out.put_nowait(_request(names.CLUSTER, first=True))
    cds = await asyncio.wait_for(call.read(), TIMEOUT)
    out.put_nowait(_request(names.CLUSTER, version=cds.version_info, nonce=cds.nonce))
    out.put_nowait(_request(names.LISTENER))
    lds = await asyncio.wait_for(call.read(), TIMEOUT)
    out.put_nowait(_request(names.LISTENER, nonce=lds.nonce, error="duplicate filter chain"))
    out.put_nowait(_request(names.SECRET, ["kubernetes://cred"]))
    sds = await asyncio.wait_for(call.read(), TIMEOUT)
    out.put_nowait(_request(names.SECRET, ["kubernetes://cred"], version=sds.version_info, nonce=sds.nonce))
    for _ in range(50):  # until the server has read the last ACK
        conns = ads.connections()
        if conns and conns[0].subscriptions[names.SECRET].acked_nonce == sds.nonce:
            break
        await asyncio.sleep(0.02)
    return ads, tracker, metrics, (server, channel, call, out)


async def _close(handles):
    server, channel, call, out = handles
    out.put_nowait(None)
    call.cancel()
    await channel.close()
    await server.stop(None)


def test_views_of_a_live_stream():
    async def scenario():
        ads, tracker, metrics, handles = await _session()
        try:
            views = DebugViews(ads, None, tracker, instance="meshd-test", version="9.9")
            sz = views.syncz()
            assert sz["controlPlane"] == {"id": "meshd-test", "version": "9.9"}
            (p,) = sz["proxies"]
            assert p["name"] == "gw-abc.istio-system" and p["istioVersion"] == "1.22"
            status = {t["type"]: t for t in p["types"]}
            assert status["CDS"]["status"] == "SYNCED" and status["CDS"]["ackedVersion"] == status["CDS"]["sentVersion"]
            assert status["LDS"]["status"] in ("NACKED", "STALE")  # a NACK of the latest response
            assert status["LDS"]["nack"]["message"] == "duplicate filter chain"
            assert status["SDS"]["status"] == "SYNCED"

            adsz = views.adsz()
            assert adsz["totalClients"] == 1
            assert adsz["clients"][0]["watches"]["SDS"]["resourceNames"] == ["kubernetes://cred"]

            for key in (NODE_ID, "gw-abc.istio-system", "gw-abc", adsz["clients"][0]["connectionID"]):
                assert views.find_connection(key) is not None, key
            assert views.config_dump("nobody") is None
            dump = views.config_dump("gw-abc.istio-system")
            text = dump.to_json()
            back = ConfigDump.from_json(text)  # our own output parses back
            assert [c.name for c in back.clusters()] == ["outbound|80||web.default.svc.cluster.local"]
            assert [l.name for l in back.listeners()] == ["0.0.0.0_8080"]
            secret = back.secrets().dynamic_active_secrets[0]
            s = secret_pb2.Secret()
            secret.secret.Unpack(s)
            assert s.tls_certificate.private_key.inline_bytes == REDACTED  # never the key
            assert b"SECRET-KEY" not in text.encode()
            node = back.bootstrap().bootstrap.node
            assert node.id == NODE_ID and not node.extensions  # the extension list is dropped

            push = views.push_status()
            assert push["lastPush"]["trigger"] == "test"
            metrics_text = metrics.render().decode()
            assert 'pilot_total_xds_rejects{type="lds"} 1.0' in metrics_text
        finally:
            await _close(handles)

    asyncio.run(asyncio.wait_for(scenario(), 30))


def test_push_tracker_counts_a_push_and_convergence():
    async def scenario():
        ads, tracker, metrics, handles = await _session()
        try:
            ads.update(type("M", (), {"version": "m2", "services": {}, "endpoints": {}})(), reason="config change")
            for _ in range(100):
                last = tracker.status()["lastPush"]
                if last["trigger"] == "config change" and last["complete"]:
                    break
                await asyncio.sleep(0.02)
            assert last["complete"] and last["connections"] == 1 and last["proxiesPending"] == 0
            assert "pilot_proxy_convergence_time_count 1.0" in metrics.render().decode()
        finally:
            await _close(handles)

    asyncio.run(asyncio.wait_for(scenario(), 30))


# --- configz and config events ------------------------------------------------------------

def _store_with(docs: dict[str, list[dict]]) -> ConfigStore:
    store = ConfigStore(logger=structlog.get_logger("test"))
    for loc, items in docs.items():
        store.replace_location(loc, [parse_document(d, Origin("file", loc, i)) for i, d in enumerate(items)])
    return store


VS = {"apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
      "metadata": {"name": "web", "namespace": "default"},
      "spec": {"hosts": ["web"], "http": [{"route": [{"destination": {"host": "web"}}]}]}}


def test_configz_objects_origin_status_and_rejections():
    store = _store_with({"a.yaml": [VS]})
    bad = json.loads(json.dumps(VS))
    bad["spec"]["http"][0]["route"][0]["destination"]["host"] = ""
    store.replace_location("a.yaml", [parse_document(bad, Origin("file", "a.yaml", 0, line=4))])
    cz = DebugViews(type("Ads", (), {"connections": lambda s: [], "mesh": None})(), store).configz(content=True)
    (obj,) = cz["objects"]
    assert obj["kind"] == "VirtualService" and obj["origin"]["location"] == "a.yaml"
    assert obj["status"].startswith("Accepted (last good version")
    assert obj["content"]["spec"]["hosts"] == ["web"]
    (rej,) = cz["rejections"]
    assert rej["object"] == "VirtualService default/web" and rej["inForce"] and "a.yaml:4: VirtualService default/web: " in rej["message"]


def test_config_events_add_update_delete():
    metrics = Metrics()
    store = ConfigStore(logger=structlog.get_logger("test"))
    ConfigEvents(store, metrics.registry)
    store.replace_location("a.yaml", [parse_document(VS, Origin("file", "a.yaml", 0))])
    changed = json.loads(json.dumps(VS))
    changed["spec"]["hosts"] = ["web2"]
    store.replace_location("a.yaml", [parse_document(changed, Origin("file", "a.yaml", 0))])
    store.remove_location("a.yaml")
    text = metrics.render().decode()
    for event in ("add", "update", "delete"):
        assert f'pilot_k8s_cfg_events{{event="{event}",type="VirtualService"}} 1.0' in text, text


# --- access to /debug --------------------------------------------------------------------

class FakeIdentity:
    def __init__(self, namespace):
        self.namespace = namespace

    def __str__(self):
        return f"spiffe://cluster.local/ns/{self.namespace}/sa/x"


class FakeAuthenticator:
    def authenticate(self, metadata, peer):
        token = dict(metadata)["authorization"].removeprefix("Bearer ")
        if token == "bad":
            raise ValueError("token expired")
        return FakeIdentity(token)


def _req(peer, auth=None):
    return Request("GET", "/debug/syncz", {}, {"authorization": auth} if auth else {}, peer)


def test_access_modes():
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("::ffff:127.0.0.1")
    assert not is_loopback("10.0.0.1") and not is_loopback("")
    local = DebugAccess("localhost")
    assert local.refusal(_req("127.0.0.1")) is None
    assert "loopback" in local.refusal(_req("10.1.2.3"))
    auth = DebugAccess("authenticated", [FakeAuthenticator()], "istio-system")
    assert auth.refusal(_req("127.0.0.1")) is None
    assert auth.refusal(_req("10.1.2.3", "Bearer istio-system")) is None
    assert "not in namespace istio-system" in auth.refusal(_req("10.1.2.3", "Bearer default"))
    assert "token expired" in auth.refusal(_req("10.1.2.3", "Bearer bad"))
    assert "bearer token" in auth.refusal(_req("10.1.2.3"))
    assert DebugAccess("open").refusal(_req("10.1.2.3")) is None
    with pytest.raises(ValueError):
        DebugAccess("everyone")


def test_routes_are_guarded_and_served_over_http():
    async def scenario():
        ads = type("Ads", (), {"connections": lambda s: [], "mesh": None})()
        views = DebugViews(ads, _store_with({"a.yaml": [VS]}))
        routes = install({"/debug/certs": lambda r: None}, views, DebugAccess("localhost"))
        assert set(routes) >= {"/debug", "/debug/syncz", "/debug/config_dump", "/debug/adsz", "/debug/registryz",
                               "/debug/endpointz", "/debug/configz", "/debug/push_status", "/debug/certs"}
        # a caller from elsewhere is refused on every /debug path, certs included
        for path in ("/debug/syncz", "/debug/certs", "/debug"):
            assert routes[path](Request("GET", path, {}, {}, "192.0.2.7")).status == 403
        server = await start_monitoring("127.0.0.1", 0, lambda: True, Metrics(), routes=routes)
        port = server.sockets[0].getsockname()[1]
        try:
            async def get(path):
                r, w = await asyncio.open_connection("127.0.0.1", port)
                w.write(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
                data = await r.read()
                w.close()
                head, _, body = data.partition(b"\r\n\r\n")
                return int(head.split()[1]), body

            status, body = await get("/debug/configz")
            assert status == 200 and json.loads(body)["objects"][0]["name"] == "web"
            status, body = await get("/debug/config_dump")
            assert status == 400
            status, body = await get("/debug/config_dump?proxyID=x.y")
            assert status == 404 and "not connected" in json.loads(body)["error"]
            status, body = await get("/debug")
            assert "/debug/syncz" in json.loads(body)["endpoints"]
        finally:
            server.close()

    asyncio.run(asyncio.wait_for(scenario(), 30))


def test_registryz_and_endpointz_from_the_mesh():
    from controlplane.model.mesh import build_mesh

    svc = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web", "namespace": "default"},
           "spec": {"selector": {"app": "web"}, "ports": [{"name": "http", "port": 80, "targetPort": 8080}]}}
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "web-0", "namespace": "default",
                                                           "labels": {"app": "web"}},
           "spec": {"containers": [{"name": "web"}]}, "status": {"podIP": "10.0.0.9"}}
    store = _store_with({"a.yaml": [svc, pod]})
    mesh = build_mesh(store.snapshot())
    views = DebugViews(type("Ads", (), {"connections": lambda s: [], "mesh": mesh})(), store)
    (reg,) = views.registryz()
    assert reg["hostname"] == "web.default.svc.cluster.local" and reg["ports"][0]["targetPort"] == 8080
    (ep,) = views.endpointz()
    assert ep["service"] == "web.default.svc.cluster.local" and ep["port"] == 80
    assert ep["endpoints"][0]["address"] == "10.0.0.9" and ep["endpoints"][0]["pod"] == "web-0"


def test_cli_status_table_renders_from_writer():
    from controlplane.debug.status import discovery_response, print_status

    out = io.StringIO()
    print_status([discovery_response({"controlPlane": {"id": "m"}, "proxies": []})], out, verbose=True)
    assert out.getvalue() == "NAME     CLUSTER     ISTIOD     VERSION\n"
