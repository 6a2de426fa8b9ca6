"""Incremental ADS (DeltaAggregatedResources), driven over real gRPC with a Python delta
client: wildcard and named subscriptions, per-resource versions, removed_resources,
initial_resource_versions on reconnect, NACKs, and SDS through the SecretProvider.

"Not answered" is checked with a barrier, as in test_ads.py: responses on a stream are
ordered, so if the answer to a later request arrives first, the earlier one got none.
The client and the in-process server are tests/support/ads.py and ads_server.py.
"""
from __future__ import annotations

from dataclasses import replace

import pytest
from envoy.config.cluster.v3 import cluster_pb2

from controlplane import names
from controlplane.generators.resources import pack
from controlplane.security.sds import SecretAnswer
from tests.support.ads import by_name, eventually, run
from tests.support.ads_server import CHANGED, DeltaHarness, FakeMesh


def test_wildcard_cds_gets_every_cluster_with_content_versions_and_ack_is_not_answered():
    async def main():
        async with DeltaHarness() as h:
            h.ads.update(FakeMesh("v1"))
            s = h.stream()
            s.send(names.CLUSTER)  # Envoy's wildcard: no names at all
            resp = await s.recv()
            assert sorted(by_name(resp)) == ["a", "b", "c"]
            expected = h.generator.generate(FakeMesh("v1"), None, names.CLUSTER)
            for r in resp.resources:
                assert r.version == expected[r.name].version  # the resource's content hash
                c = cluster_pb2.Cluster()
                r.resource.Unpack(c)
                assert c.name == r.name
            assert resp.nonce and not resp.removed_resources
            s.ack(resp)
            await s.barrier()

    run(main())


def test_push_sends_only_changed_and_removed_resources():
    async def main():
        async with DeltaHarness() as h:
            h.ads.update(FakeMesh("v1"))
            s = h.stream()
            s.send(names.CLUSTER)
            s.ack(await s.recv())
            await s.barrier()
            # "a" changes, "c" disappears, "d" appears
            h.ads.update(FakeMesh("v2", clusters=(("a", 2), ("b", 1), ("d", 1))))
            resp = await s.recv()
            assert resp.type_url == names.CLUSTER
            assert sorted(by_name(resp)) == ["a", "d"]
            assert list(resp.removed_resources) == ["c"]
            s.ack(resp)
            # nothing changes: nothing sent
            h.ads.update(FakeMesh("v3", clusters=(("a", 2), ("b", 1), ("d", 1))))
            await s.barrier()

    run(main())


def test_named_subscriptions_subscribe_unsubscribe_and_resubscribe():
    async def main():
        async with DeltaHarness() as h:
            h.ads.update(FakeMesh("v1"))
            s = h.stream()
            s.send(names.ENDPOINT, subscribe=["a", "b"])
            resp = await s.recv()
            assert sorted(by_name(resp)) == ["a", "b"]
            s.ack(resp)
            s.send(names.ENDPOINT, subscribe=["c"])
            resp = await s.recv()
            assert sorted(by_name(resp)) == ["c"]  # only the new one
            s.ack(resp)
            s.send(names.ENDPOINT, unsubscribe=["b"])  # unsubscribing needs no answer
            await s.barrier()
            # a name subscribed again is sent again, even at the version the client had
            s.send(names.ENDPOINT, subscribe=["b"])
            resp = await s.recv()
            assert sorted(by_name(resp)) == ["b"]
            # an unknown name: removed_resources says it does not exist
            s.send(names.ENDPOINT, subscribe=["zzz"], nonce=resp.nonce)
            resp = await s.recv()
            assert not resp.resources and list(resp.removed_resources) == ["zzz"]
            # a change to an unsubscribed resource is not sent; to a subscribed one it is
            s.send(names.ENDPOINT, unsubscribe=["c"], nonce=resp.nonce)
            eds = h.ads.connections()[0].subscriptions[names.ENDPOINT]
            await eventually(lambda: "c" not in eds.names)
            h.ads.update(FakeMesh("v2", endpoints=(("a", "10.0.0.1"), ("b", "10.0.0.2"), ("c", "10.9.9.9"))))
            await s.barrier()
            h.ads.update(FakeMesh("v3", endpoints=(("a", "10.0.0.7"), ("b", "10.0.0.2"), ("c", "10.9.9.9"))))
            resp = await s.recv()
            assert resp.type_url == names.ENDPOINT and sorted(by_name(resp)) == ["a"]

    run(main())


def test_reconnect_with_initial_resource_versions_resends_nothing_unchanged():
    async def main():
        async with DeltaHarness() as h:
            h.ads.update(FakeMesh("v1"))
            s = h.stream()
            s.send(names.CLUSTER)
            s.ack(await s.recv())
            s.send(names.ENDPOINT, subscribe=["a", "b", "c"])
            s.ack(await s.recv())
            held = {t: dict(v) for t, v in s.held.items()}
            await s.close()

            # same config: the new stream sends nothing for what the client holds
            again = h.stream()
            again.send(names.CLUSTER, initial=held[names.CLUSTER])
            again.send(names.ENDPOINT, subscribe=["a", "b", "c"], initial=held[names.ENDPOINT])
            await again.barrier()
            await again.close()

            # one cluster changed and one was deleted while the client was away
            h.ads.update(FakeMesh("v2", clusters=(("a", 5), ("b", 1))))
            third = h.stream()
            third.send(names.CLUSTER, initial=held[names.CLUSTER])
            resp = await third.recv()
            assert sorted(by_name(resp)) == ["a"] and list(resp.removed_resources) == ["c"]

    run(main())


def test_nack_is_recorded_and_not_answered():
    async def main():
        async with DeltaHarness() as h:
            h.ads.update(FakeMesh("v1"))
            s = h.stream()
            s.send(names.CLUSTER)
            resp = await s.recv()
            s.send(names.CLUSTER, nonce=resp.nonce, error="bad cluster a")
            await s.barrier()
            conn = h.ads.connections()[0]
            sub = conn.subscriptions[names.CLUSTER]
            assert sub.nack is not None and sub.nack.message == "bad cluster a" and sub.status == "NACKED"
            assert "pilot_total_xds_rejects" in h.metrics.render().decode()

    run(main())


def test_explicit_wildcard_and_unsubscribing_it():
    async def main():
        async with DeltaHarness() as h:
            h.ads.update(FakeMesh("v1"))
            s = h.stream()
            s.send(names.CLUSTER, subscribe=["a"])  # named first: not a wildcard
            resp = await s.recv()
            assert sorted(by_name(resp)) == ["a"]
            s.send(names.CLUSTER, subscribe=["*"], nonce=resp.nonce)
            resp = await s.recv()
            assert sorted(by_name(resp)) == ["b", "c"]  # "a" it already has
            s.send(names.CLUSTER, unsubscribe=["*"], nonce=resp.nonce)
            await s.barrier()  # also: the unsubscribe was processed
            h.ads.update(FakeMesh("v2", clusters=(("a", 1), ("b", 9), ("c", 1))))  # b: no longer wanted
            h.ads.update(FakeMesh("v3", clusters=(("a", 3), ("b", 9), ("c", 1))))
            resp = await s.recv()
            assert resp.type_url == names.CLUSTER and sorted(by_name(resp)) == ["a"]

    run(main())


class FakeSecrets:
    names = frozenset({names.SDS_DEFAULT, names.SDS_ROOT})

    def __init__(self):
        self.calls = []

    async def secrets(self, proxy, identity, requested):
        from envoy.extensions.transport_sockets.tls.v3 import secret_pb2

        self.calls.append((proxy.id, identity, tuple(requested)))
        out, withheld = [], {}
        for n in requested:
            if n == names.SDS_DEFAULT and identity is None:
                withheld[n] = "plaintext"
            else:
                out.append(pack(n, names.SECRET, secret_pb2.Secret(name=n)))
        return SecretAnswer(out, withheld)


def test_sds_over_delta_goes_through_the_secret_provider_with_the_stream_identity():
    async def main():
        secrets = FakeSecrets()
        async with DeltaHarness(secrets=secrets) as h:
            h.ads.update(FakeMesh("v1"))
            s = h.stream()
            s.send(names.SECRET, subscribe=[names.SDS_DEFAULT, names.SDS_ROOT])
            resp = await s.recv()
            # plaintext stream: no identity, so the key is withheld; ROOTCA is served
            assert sorted(by_name(resp)) == [names.SDS_ROOT]
            assert secrets.calls and secrets.calls[0][1] is None
            # a push for a rotation re-checks SDS (and only sends what changed: nothing)
            assert h.ads.push_secrets(None, "rotation") == 1
            await s.barrier()

    run(main())


def test_delta_and_sotw_streams_share_pushes():
    async def main():
        async with DeltaHarness() as h:
            h.ads.update(FakeMesh("v1"))
            d = h.stream()
            d.send(names.CLUSTER)
            d.ack(await d.recv())
            sotw = h.sotw()  # closed with the harness
            sotw.send(names.CLUSTER)
            first = await sotw.recv()
            sotw.ack(first)
            await eventually(lambda: len(h.ads.connections()) == 2)
            h.ads.update(CHANGED)
            delta_resp, sotw_resp = await d.recv(), await sotw.recv()
            assert sorted(by_name(delta_resp)) == ["a"]  # only the changed cluster
            assert len(sotw_resp.resources) == 3  # SotW CDS: the whole set
            assert {c.delta for c in h.ads.connections()} == {True, False}

    run(main())


def test_subscription_wildcard_rules_follow_the_spec():
    from controlplane.server.subscription import Subscription

    sub = Subscription(names.CLUSTER)
    sub.update_delta([], [], first=True)
    assert sub.wildcard  # legacy wildcard
    sub.update_delta(["A"], [], first=False)
    assert sub.wildcard and sub.names == {"A"}  # still wildcard, plus A
    sub.update_delta([], ["*"], first=False)
    assert not sub.wildcard and sub.names == {"A"}
    sub.update_delta([], ["A"], first=False)
    assert not sub.wildcard and not sub.names  # empty now means nothing, not wildcard

    sotw = Subscription(names.LISTENER)
    assert sotw.set_names([]) and sotw.wildcard
    sotw.set_names(["x"])
    assert not sotw.wildcard
    sotw.set_names([])
    assert not sotw.wildcard and not sotw.names  # after naming something, empty is nothing
    eds = Subscription(names.ENDPOINT)
    eds.set_names([])
    assert not eds.wildcard


@pytest.mark.parametrize("transport,api_type", [("sotw", "GRPC"), ("delta", "DELTA_GRPC")])
def test_bootstrap_chooses_the_transport(transport, api_type):
    from controlplane.bootstrap import BootstrapParams, build_bootstrap

    doc = build_bootstrap(replace(BootstrapParams("router", "istio-system", "gw-0", "10.0.0.1", "127.0.0.1:15010"),
                                  xds_transport=transport))
    assert doc["dynamic_resources"]["ads_config"]["api_type"] == api_type
