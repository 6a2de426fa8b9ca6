"""Limits against a real meshd process, on both ports: one client cannot exhaust the server.

- a request naming ten thousand resources, or one name of a megabyte, ends its stream with
  RESOURCE_EXHAUSTED and a reason (SotW and delta); a message over 16 MiB likewise;
- streams per connection are capped: the streams beyond the cap wait, they are not served
  and do not cost the server anything;
- after all that meshd is alive, `/ready` and serves a normal request.
"""
from __future__ import annotations

import asyncio

import grpc
import pytest
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2

from controlplane import names
from controlplane.server import grpc_server, limits
from tests.support.ads import ads_fetch
from tests.support.harness import meshd, wait_for

NS = "istioinaction"
NODE = names.node_id("sidecar", "127.0.0.2", "webapp-0", NS)
MD = {"NAMESPACE": NS, "SERVICE_ACCOUNT": "webapp"}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("limits")
    (tmp / "config").mkdir()
    with meshd(tmp / "config", tmp) as m:
        yield m


def _ports(m):
    root = m.root_cert.read_bytes()
    return {"plaintext": dict(port=m.xds_port), "secure": dict(port=m.secure_port, root_pem=root,
                                                               token=m.token(NS, "webapp"))}


@pytest.mark.parametrize("port", ["plaintext", "secure"])
@pytest.mark.parametrize("what, resource_names, reason", [
    ("ten thousand names", [f"outbound|80||svc-{i}.{NS}.svc.cluster.local" for i in range(10_000)], "more than the limit"),
    ("a megabyte name", ["x" * (1 << 20)], "more than the limit"),
    ("a 17 MiB message", ["y" * (17 << 20)], "larger than max"),
])
def test_oversized_requests_get_an_error(server, port, what, resource_names, reason):
    kw = _ports(server)[port]
    p = kw.pop("port")
    for type_url in (names.CLUSTER, names.ENDPOINT, names.SECRET):
        with pytest.raises(grpc.RpcError) as err:
            ads_fetch(p, NODE, MD, type_url, resource_names, **kw)
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, (what, err.value)
        assert reason in err.value.details()
    assert server.process.alive() and server.ready()
    # and the server goes on serving normal requests
    resp = ads_fetch(p, NODE, MD, names.CLUSTER, [], **kw)
    assert resp.type_url == names.CLUSTER


def test_delta_request_over_the_limits_gets_an_error(server):
    channel = grpc.insecure_channel(f"127.0.0.1:{server.xds_port}")
    try:
        for subscribe in ([f"n{i}" for i in range(limits.MAX_RESOURCE_NAMES + 1)], ["z" * (1 << 20)]):
            req = discovery_pb2.DeltaDiscoveryRequest(type_url=names.ENDPOINT, resource_names_subscribe=subscribe)
            req.node.id = NODE
            req.node.metadata.update(MD)
            call = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel).DeltaAggregatedResources(iter([req]), timeout=10)
            with pytest.raises(grpc.RpcError) as err:
                next(call)
            assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "more than the limit" in err.value.details()
    finally:
        channel.close()
    assert server.ready()
    assert "ads request refused" in server.log()


def _connected(m) -> float:
    for line in m.metrics().splitlines():
        if line.startswith("pilot_xds{") or line.startswith("pilot_xds "):
            return float(line.split()[-1])
    return 0.0


def test_streams_per_connection_are_capped(server):
    cap = grpc_server.MAX_STREAMS_PER_CONNECTION
    wanted = cap + 72

    async def run() -> tuple[int, float]:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.xds_port}") as ch:
            stub = ads_pb2_grpc.AggregatedDiscoveryServiceStub(ch)
            calls = []
            answered = 0

            async def one(i):
                nonlocal answered
                req = discovery_pb2.DiscoveryRequest(type_url=names.CLUSTER)
                req.node.id = names.node_id("sidecar", "127.0.0.9", f"greedy-{i}", NS)
                req.node.metadata.update({"NAMESPACE": NS})
                call = stub.StreamAggregatedResources()
                calls.append(call)
                await call.write(req)
                await call.read()
                answered += 1

            tasks = [asyncio.ensure_future(one(i)) for i in range(wanted)]
            await asyncio.wait(tasks, timeout=5)
            connected = await asyncio.to_thread(_connected, server)
            for c in calls:
                c.cancel()
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            return answered, connected

    answered, connected = asyncio.run(run())
    assert answered == cap
    assert connected <= cap
    wait_for(lambda: _connected(server) == 0, 10, what="streams closed")
    assert server.ready()


def test_both_ports_have_keepalive_idle_and_size_limits():
    opts = dict(grpc_server.SERVER_OPTIONS)
    assert opts["grpc.keepalive_time_ms"] <= 60_000 and opts["grpc.keepalive_timeout_ms"] <= 20_000
    assert 0 < opts["grpc.max_connection_idle_ms"] <= 600_000
    assert opts["grpc.max_receive_message_length"] == 16 * 1024 * 1024
    assert opts["grpc.max_concurrent_streams"] == grpc_server.MAX_STREAMS_PER_CONNECTION
    # the plaintext, secure and CA ports are all built with them
    import inspect

    from controlplane import app
    from controlplane.security import plane
    assert inspect.getsource(grpc_server.build_xds_server).count("options=server_options(") == 1
    assert inspect.getsource(grpc_server.build_secure_xds_server).count("options=server_options(") == 1
    # the CA port: app.py hands the server's options to security/plane.py, which binds it
    assert "plane.start_servers(\n                server_options(opts.share_ports)" in inspect.getsource(app.serve)
    assert "grpc.aio.server(options=options)" in inspect.getsource(plane.SecurityPlane.start_servers)
    # --workers only adds SO_REUSEPORT
    assert dict(grpc_server.server_options(share_ports=True)) == {**opts, "grpc.so_reuseport": 1}
