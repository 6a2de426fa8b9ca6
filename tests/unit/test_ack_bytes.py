"""SotW ACKs recognised on their bytes (controlplane/server/acks.py): a plain ACK is
recorded without decoding the request, and anything that is not one (new names, a
NACK, an old nonce, another version) still gets the full protocol handling."""
from __future__ import annotations

from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.service.discovery.v3 import discovery_pb2
from google.rpc import status_pb2

from controlplane import names
from controlplane.server import acks
from controlplane.server.caches import ServerCaches
from controlplane.server.subscription import Subscription
from tests.support.ads import names_of, run
from tests.support.ads_server import FakeMesh, Harness

EDS_NAMES = ["a", "b", "c"]
CACHES = ServerCaches()


def _sub(version: str = "v1", nonce: str = "0123456789abcdef", names_=EDS_NAMES) -> Subscription:
    sub = Subscription(names.ENDPOINT)
    sub.set_names(names_)
    sub.last_request = CACHES.request_body(discovery_pb2.DiscoveryRequest(
        type_url=names.ENDPOINT, resource_names=names_).SerializeToString())
    sub.record_sent(version, nonce)
    acks.expect(sub)
    return sub


def _request(version="v1", nonce="0123456789abcdef", names_=EDS_NAMES, error=None) -> bytes:
    req = discovery_pb2.DiscoveryRequest(type_url=names.ENDPOINT, resource_names=names_, version_info=version,
                                         response_nonce=nonce)
    if error:
        req.error_detail.CopyFrom(status_pb2.Status(code=13, message=error))
    return req.SerializeToString()


def test_an_envoy_ack_is_matched_on_its_bytes():
    sub = _sub()
    by_nonce = {sub.ack_fields[1]: sub}
    assert acks.match(_request(), by_nonce, 18) is sub
    # Version written after the rest (as some clients, and the benchmark, do).
    rest = discovery_pb2.DiscoveryRequest(type_url=names.ENDPOINT, resource_names=EDS_NAMES).SerializeToString()
    tail = discovery_pb2.DiscoveryRequest(version_info="v1", response_nonce="0123456789abcdef").SerializeToString()
    assert acks.match(rest + tail, by_nonce, 18) is sub


def test_what_is_not_a_plain_ack_is_not_matched():
    sub = _sub()
    by_nonce = {sub.ack_fields[1]: sub}
    assert acks.match(_request(names_=["a", "b"]), by_nonce, 18) is None  # names changed
    assert acks.match(_request(names_=["a", "b", "d"]), by_nonce, 18) is None  # same length, other name
    assert acks.match(_request(error="bad cluster"), by_nonce, 18) is None  # a NACK
    assert acks.match(_request(nonce="fedcba9876543210"), by_nonce, 18) is None  # not our nonce
    assert acks.match(_request(version="v0"), by_nonce, 18) is None  # another version
    assert acks.match(b"", by_nonce, 18) is None


def test_interned_bodies_are_shared():
    a = discovery_pb2.DiscoveryRequest(type_url=names.ENDPOINT, resource_names=EDS_NAMES).SerializeToString()
    b = discovery_pb2.DiscoveryRequest(type_url=names.ENDPOINT, resource_names=EDS_NAMES).SerializeToString()
    assert a is not b and CACHES.request_body(a) is CACHES.request_body(b)


def test_the_server_records_plain_acks_undecoded_and_handles_the_rest():
    async def main():
        async with Harness() as h:
            counting = h.ads.sotw  # counts the SotW requests it decodes
            h.ads.update(FakeMesh("v1"))
            s = h.stream()
            s.send(names.ENDPOINT, EDS_NAMES)
            resp = await s.recv()
            conn = h.ads.connections()[0]
            sub = conn.subscriptions[names.ENDPOINT]
            decoded = counting.decoded  # the first request
            s.ack(resp, EDS_NAMES)
            await s.barrier()
            assert sub.acked_nonce == resp.nonce  # recorded: SYNCED
            assert counting.decoded == decoded + 1  # only the barrier's LDS request was decoded

            # The same nonce with other names: decoded and answered with the new names.
            s.ack(resp, ["a", "b"])
            again = await s.recv()
            assert sorted(names_of(again, endpoint_pb2.ClusterLoadAssignment)) == ["a", "b"]

            # A NACK of the current response is recorded as one.
            s.send(names.ENDPOINT, ["a", "b"], version=resp.version_info, nonce=again.nonce, error="rejected")
            await s.barrier()
            assert sub.nack is not None and sub.nack.nonce == again.nonce and sub.status == "NACKED"

            # A push, then its ACK: recorded without decoding again.
            h.ads.update(FakeMesh("v2", endpoints=(("a", "10.0.0.9"), ("b", "10.0.0.2"), ("c", "10.0.0.3"))))
            pushed = await s.recv()
            assert pushed.type_url == names.ENDPOINT and names_of(pushed, endpoint_pb2.ClusterLoadAssignment) == ["a"]
            decoded = counting.decoded
            s.ack(pushed, ["a", "b"])
            await s.barrier()
            assert sub.acked_nonce == pushed.nonce and sub.status == "SYNCED"
            assert counting.decoded == decoded + 1  # the barrier only

    run(main())
