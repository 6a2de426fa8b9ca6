"""The SotW ADS server, driven over real gRPC on 127.0.0.1 with a Python ADS client
(tests/support/ads.py, ads_server.py).

"Not answered" is checked with a barrier where possible: responses on a stream are
strictly ordered, so if the answer to a later request arrives first, the earlier
request was not answered.
"""
from __future__ import annotations

import asyncio
import re
from dataclasses import replace

import grpc
import pytest
import structlog
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.service.discovery.v3 import discovery_pb2
from structlog.testing import capture_logs

from controlplane import names
from controlplane.server.connection import EventQueue, Push
from controlplane.server.host import byte_count
from controlplane.server.subscription import make_nonce
from tests.support.ads import NODE_ID, eventually, names_of, run
from tests.support.ads_server import CHANGED, FakeMesh, Harness


# --- tests --------------------------------------------------------------------------
def test_requests_wait_until_first_update():
    async def main():
        async with Harness() as h:
            s = h.stream()
            s.send(names.CLUSTER)
            await s.expect_nothing(0.5)
            assert not h.ads.ready
            await eventually(lambda: len(h.ads.connections()) == 1)
            h.ads.update(FakeMesh("v1"))
            assert h.ads.ready
            resp = await s.recv()
            assert resp.type_url == names.CLUSTER
            assert names_of(resp, cluster_pb2.Cluster) == ["a", "b", "c"]

    run(main())


def test_client_leaving_before_first_update_is_cleaned_up():
    async def main():
        async with Harness() as h:
            s = h.stream()
            s.send(names.CLUSTER)
            await eventually(lambda: len(h.ads.connections()) == 1)
            s._out.put_nowait(None)  # half-close: the client is done sending
            await eventually(lambda: not h.ads.connections())
            assert h.metrics.registry.get_sample_value("pilot_xds") == 0

    run(main())


def test_cds_wildcard_answered_with_all_and_ack_not_answered():
    async def main():
        async with Harness() as h:
            h.ads.update(FakeMesh("v1"))
            s = h.stream()
            s.send(names.CLUSTER)  # wildcard: empty resource_names
            r1 = await s.recv()
            assert len(r1.resources) == 3 and r1.version_info and r1.nonce
            s.ack(r1)
            await s.barrier()
            sub = h.ads.connections()[0].subscriptions[names.CLUSTER]
            assert sub.wildcard and sub.acked_version == r1.version_info and sub.status == "SYNCED"

    run(main())


def test_stale_nonce_ignored():
    async def main():
        async with Harness() as h:
            h.ads.update(FakeMesh("v1"))
            s = h.stream()
            s.send(names.ENDPOINT, ["a"])
            e1 = await s.recv()
            h.ads.update(FakeMesh("v2", endpoints=(("a", "10.9.9.9"), ("b", "10.0.0.2"))))
            e2 = await s.recv()
            assert e2.nonce != e1.nonce and e2.version_info != e1.version_info
            # Answers e1 (superseded) and asks for more names: stale, so ignored.
            s.send(names.ENDPOINT, ["a", "b"], version=e1.version_info, nonce=e1.nonce)
            await s.barrier()
            assert h.metrics.registry.get_sample_value("pilot_xds_expired_nonce_total", {"type": "eds"}) == 1
            # The same with the current nonce is answered.
            s.send(names.ENDPOINT, ["a", "b"], version=e2.version_info, nonce=e2.nonce)
            e3 = await s.recv()
            assert sorted(names_of(e3, endpoint_pb2.ClusterLoadAssignment)) == ["a", "b"]

    run(main())


def test_nack_recorded_and_not_answered():
    async def main():
        with capture_logs() as logs:
            async with Harness(logger=structlog.get_logger("test")) as h:
                h.ads.update(FakeMesh("v1"))
                s = h.stream()
                s.send(names.CLUSTER)
                r1 = await s.recv()
                s.send(names.CLUSTER, version="", nonce=r1.nonce, error="cluster a: bad timeout")
                await s.barrier()
                sub = h.ads.connections()[0].subscriptions[names.CLUSTER]
                assert sub.nack is not None
                assert sub.nack.message == "cluster a: bad timeout"
                assert sub.nack.version == r1.version_info and sub.nack.nonce == r1.nonce
                assert sub.status == "NACKED"
                reg = h.metrics.registry
                assert reg.get_sample_value("pilot_total_xds_rejects_total", {"type": "cds"}) == 1
                assert reg.get_sample_value("pilot_xds_cds_reject", {"node": NODE_ID, "err": "Internal"}) == 1
                # Same content again (new snapshot version): nothing resent, no loop.
                h.ads.update(FakeMesh("v1-again"))
                await s.barrier()
                # New content: pushed.
                h.ads.update(CHANGED)
                r2 = await s.recv()
                assert r2.type_url == names.CLUSTER and r2.version_info != r1.version_info
                assert sub.status == "STALE"
                s.ack(r2)
                await s.barrier()
                assert sub.status == "SYNCED"
        nacks = [e for e in logs if e["event"] == "ads NACK"]
        assert len(nacks) == 1
        n = nacks[0]
        assert n["log_level"] == "warning"
        assert n["proxy"] == NODE_ID and n["type"] == "CDS"
        assert n["version"] == r1.version_info and n["nonce"] == r1.nonce
        assert n["error"] == "cluster a: bad timeout"

    run(main())


def test_changed_update_pushes_new_version_identical_does_not():
    async def main():
        async with Harness() as h:
            h.ads.update(FakeMesh("v1"))
            s = h.stream()
            s.send(names.CLUSTER)
            r1 = await s.recv()
            s.ack(r1)
            h.ads.update(FakeMesh("v1b"))  # new snapshot, same content
            await s.barrier()
            h.ads.update(CHANGED)
            r2 = await s.recv()
            assert r2.type_url == names.CLUSTER
            assert r2.version_info != r1.version_info and r2.nonce != r1.nonce
            assert h.metrics.registry.get_sample_value("pilot_xds_pushes_total", {"type": "cds"}) == 2

    run(main())


async def synced_cds_eds(h: Harness, eds: list[str]):
    """A stream that holds and ACKed FakeMesh v1's clusters and the assignments `eds`."""
    h.ads.update(FakeMesh("v1"))
    s = h.stream()
    s.send(names.CLUSTER)
    c1 = await s.recv()
    s.send(names.ENDPOINT, eds)
    e1 = await s.recv()
    s.ack(c1)
    s.ack(e1, eds)
    await s.barrier()
    return s, e1


def test_eds_ack_lookalike_after_cds_push_is_answered():
    async def main():
        async with Harness() as h:
            s, e1 = await synced_cds_eds(h, ["a", "b"])
            h.ads.update(CHANGED)  # cluster a changed, its endpoints did not
            c2 = await s.recv()
            assert c2.type_url == names.CLUSTER
            # Envoy re-requests EDS exactly like the previous ACK; it must be answered,
            # with the assignment of the updated cluster (warming in Envoy) and nothing
            # else: Envoy keeps b's.
            s.ack(e1, ["a", "b"])
            e2 = await s.recv()
            assert e2.type_url == names.ENDPOINT
            assert e2.version_info == e1.version_info and e2.nonce != e1.nonce
            assert names_of(e2, endpoint_pb2.ClusterLoadAssignment) == ["a"]
            # The ACK of that answer is a plain ACK again.
            s.ack(e2, ["a", "b"])
            await s.expect_nothing(0.3)

    run(main())


def test_eds_push_racing_the_re_request_carries_the_updated_clusters():
    """An endpoint change pushed after a CDS response but before Envoy's EDS re-request:
    Envoy's re-request then carries a stale nonce and is ignored, so the push itself
    must bring the updated cluster's assignment along with the changed one."""
    async def main():
        async with Harness() as h:
            s, e1 = await synced_cds_eds(h, ["a", "b", "c"])
            h.ads.update(CHANGED)  # cluster a updated
            c2 = await s.recv()
            assert c2.type_url == names.CLUSTER
            h.ads.update(replace(CHANGED, version="v3",
                                             endpoints=(("a", "10.0.0.1"), ("b", "10.0.0.9"), ("c", "10.0.0.3"))))
            e2 = await s.recv()
            assert e2.type_url == names.ENDPOINT
            assert names_of(e2, endpoint_pb2.ClusterLoadAssignment) == ["a", "b"]
            s.ack(e1, ["a", "b", "c"])  # the re-request, sent before e2 arrived: stale
            await s.expect_nothing(0.3)
            # A request naming a new set is answered with all of it.
            s.send(names.ENDPOINT, ["a", "b"], version=e2.version_info, nonce=e2.nonce)
            e3 = await s.recv()
            assert names_of(e3, endpoint_pb2.ClusterLoadAssignment) == ["a", "b"]
            s.send(names.ENDPOINT, ["a", "b", "c"], version=e3.version_info, nonce=e3.nonce)
            e4 = await s.recv()
            assert names_of(e4, endpoint_pb2.ClusterLoadAssignment) == ["a", "b", "c"]

    run(main())


def test_eds_named_request_returns_only_named():
    async def main():
        async with Harness() as h:
            h.ads.update(FakeMesh("v1"))
            s = h.stream()
            s.send(names.ENDPOINT, ["b", "missing"])
            e1 = await s.recv()
            assert names_of(e1, endpoint_pb2.ClusterLoadAssignment) == ["b"]
            # Changing the names (same nonce) is answered with the new set.
            s.send(names.ENDPOINT, ["a", "c"], version=e1.version_info, nonce=e1.nonce)
            e2 = await s.recv()
            assert sorted(names_of(e2, endpoint_pb2.ClusterLoadAssignment)) == ["a", "c"]
            sub = h.ads.connections()[0].subscriptions[names.ENDPOINT]
            assert not sub.wildcard and sub.sent_names == ("a", "c")

    run(main())


def test_versions_and_nonces_identical_across_restarts():
    async def one_server():
        async with Harness() as h:
            h.ads.update(FakeMesh("v1"))
            s = h.stream()
            s.send(names.CLUSTER)
            c = await s.recv()
            s.send(names.ENDPOINT, ["a"])
            e = await s.recv()
            return (c.version_info, c.nonce, e.version_info, e.nonce)

    async def main():
        first = await one_server()
        second = await one_server()
        assert first == second
        # A reconnect carrying the version it already holds is still answered.
        async with Harness() as h:
            h.ads.update(FakeMesh("v1"))
            s = h.stream()
            s.send(names.CLUSTER, version=first[0])
            c = await s.recv()
            assert c.version_info == first[0]

    run(main())


def test_bad_node_rejected_with_invalid_argument():
    async def main():
        with capture_logs() as logs:
            async with Harness(logger=structlog.get_logger("test")) as h:
                h.ads.update(FakeMesh("v1"))
                s = h.stream()
                s.send(names.CLUSTER, node_id="not-a-node-id")
                with pytest.raises(grpc.aio.AioRpcError) as err:
                    await s.recv()
                assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
                assert "not-a-node-id" in err.value.details()

                s2 = h.stream()
                s2._sent_node = True  # first request without a node
                s2.send(names.CLUSTER)
                with pytest.raises(grpc.aio.AioRpcError) as err2:
                    await s2.recv()
                assert err2.value.code() == grpc.StatusCode.INVALID_ARGUMENT
                assert "node" in err2.value.details()
                assert h.ads.connections() == []
        assert [e["event"] for e in logs].count("ads connection rejected") == 2

    run(main())


def test_push_log_lines_read_like_istiod():
    async def main():
        with capture_logs() as logs:
            async with Harness(logger=structlog.get_logger("test")) as h:
                h.ads.update(FakeMesh("v1"))
                s = h.stream()
                s.send(names.CLUSTER)
                r1 = await s.recv()
                s.ack(r1)
                h.ads.update(CHANGED)
                r2 = await s.recv()
                await s.close()
                await eventually(lambda: not h.ads.connections())
        pushes = [e for e in logs if "PUSH" in e["event"]]
        assert len(pushes) == 2
        size1 = sum(len(a.value) for a in r1.resources)
        assert pushes[0]["event"] == f"ads CDS: PUSH request for node:gw-abc.istio-system resources:3 size:{size1}B"
        assert re.fullmatch(r"ads CDS: PUSH for node:gw-abc\.istio-system resources:3 size:\d+B", pushes[1]["event"])
        assert pushes[0]["type"] == "CDS" and pushes[0]["proxy"] == NODE_ID
        assert pushes[0]["version"] == r1.version_info and pushes[0]["nonce"] == r1.nonce
        assert pushes[1]["nonce"] == r2.nonce and pushes[1]["reason"] == "config"
        assert pushes[0]["log_level"] == "info"
        events = [e["event"] for e in logs]
        assert "ads connect" in events and "ads disconnect" in events
        connect = next(e for e in logs if e["event"] == "ads connect")
        assert connect["proxy"] == NODE_ID and connect["proxy_type"] == "router" and connect["peer"]

    run(main())


def test_metrics_count_connected_proxies():
    async def main():
        async with Harness() as h:
            h.ads.update(FakeMesh("v1"))
            s1, s2 = h.stream(), h.stream()
            for s in (s1, s2):
                s.send(names.CLUSTER)
                await s.recv()
            text = h.metrics.render().decode()
            assert "\npilot_xds 2.0\n" in text
            assert 'pilot_xds_pushes{type="cds"} 2.0' in text
            assert "# TYPE pilot_xds_pushes counter" in text
            assert "pilot_xds_pushes_total" not in text and "_created" not in text
            assert "pilot_xds_push_time_bucket" in text
            h.metrics.config_rejected("Gateway")
            assert 'meshd_config_rejections_total{kind="Gateway"} 1.0' in h.metrics.render().decode()
            await s1.close()
            await eventually(lambda: len(h.ads.connections()) == 1)
            assert "\npilot_xds 1.0\n" in h.metrics.render().decode()

    run(main())


def test_delta_stream_without_node_is_rejected():
    # Delta xDS is served (tests/unit/test_delta.py); its first request needs the node too.
    async def main():
        async with Harness() as h:

            async def reqs():
                yield discovery_pb2.DeltaDiscoveryRequest(type_url=names.CLUSTER)

            call = h.stub.DeltaAggregatedResources(reqs())
            with pytest.raises(grpc.aio.AioRpcError) as err:
                async for _ in call:
                    pass
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT

    run(main())


def test_byte_count_matches_istiod():
    assert byte_count(0) == "0B"
    assert byte_count(34) == "34B"
    assert byte_count(999) == "999B"
    assert byte_count(1000) == "1.0kB"
    assert byte_count(1234) == "1.2kB"
    assert byte_count(999_999) == "1000.0kB"
    assert byte_count(3_400_000) == "3.4MB"
    assert byte_count(5 * 10**9) == "5.0GB"


def test_nonce_differs_per_response_and_is_reproducible():
    a = make_nonce(names.CLUSTER, "v", 1)
    assert a == make_nonce(names.CLUSTER, "v", 1)
    assert a != make_nonce(names.CLUSTER, "v", 2) != make_nonce(names.ENDPOINT, "v", 2)


def test_event_queue_coalesces_pushes_and_bounds_requests():
    async def main():
        q = EventQueue(max_requests=2)
        assert q.push("config") is True
        assert q.push("endpoints") is False  # merged
        r = discovery_pb2.DiscoveryRequest(type_url=names.CLUSTER)
        await q.put_request(r)
        await q.put_request(r)
        blocked = asyncio.create_task(q.put_request(r))
        await asyncio.sleep(0.05)
        assert not blocked.done()  # back-pressure on the reader, not on pushes
        assert q.push("again") is False
        first = await q.get()
        assert isinstance(first, Push) and first.reasons == {"config", "endpoints", "again"}
        assert await q.get() is r
        await asyncio.wait_for(blocked, 1)
        assert q.push("later") is True  # a new push once the previous was taken
        q.close()
        assert await q.get() is None

    run(main())


def test_close_all_ends_streams_with_unavailable_at_once():
    """Shutdown (SIGTERM): every stream ends now with UNAVAILABLE and the reason, not
    after gRPC's grace period; a stream opened afterwards is refused the same way."""
    async def main():
        async with Harness() as h:
            h.ads.update(FakeMesh("v1"))
            s = h.stream()
            s.send(names.CLUSTER)
            await s.recv()
            await eventually(lambda: len(h.ads.connections()) == 1)
            assert h.ads.close_all() == 1
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await s.recv(2.0)
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE
            assert "meshd shutting down" in err.value.details()
            await eventually(lambda: h.ads.connections() == [])
            late = h.stream()
            late.send(names.CLUSTER)
            with pytest.raises(grpc.aio.AioRpcError) as err2:
                await late.recv(2.0)
            assert err2.value.code() == grpc.StatusCode.UNAVAILABLE

    run(main())
