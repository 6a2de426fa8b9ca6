"""Workload certificate rotation (controlplane/security/rotation.py): renewal at the
rotation ratio with jitter, pushed to the holders, never for identities nobody holds,
retried on failure, and re-issue spread after a signer change. Also: the proxy's
SDS stream receives the renewed certificate with no request of its own."""
from __future__ import annotations

import asyncio
import random
from datetime import timedelta
from pathlib import Path

import pytest
from envoy.extensions.transport_sockets.tls.v3 import secret_pb2
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2

from ca import Identity
from controlplane import names
from controlplane.security.rotation import RotationScheduler, check_ratio
from tests.support.sds import NS, TD, Plane, node_id

CATALOG = Identity(TD, NS, "catalog")
WEBAPP = Identity(TD, NS, "webapp")


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 60))


def test_ratio_must_be_a_fraction():
    for bad in (0, 1, -0.1, 1.5):
        with pytest.raises(ValueError):
            check_ratio(bad)
    assert check_ratio(0.8) == 0.8


def test_renewal_time_is_ratio_of_lifetime_with_jitter(tmp_path: Path):
    async def main():
        async with Plane(tmp_path, ttl=timedelta(hours=24)) as p:
            sched = RotationScheduler(p.secrets, push=lambda i: 0, holders=lambda i: True, ratio=0.5,
                                      clock=p.clock, rng=random.Random(7))
            certs = [await p.secrets.certificate(Identity(TD, NS, f"sa-{i}")) for i in range(20)]
            due = [sched.due_at(c.identity) - c.issued_at for c in certs]
            return due

    due = run(main())
    assert all(timedelta(hours=10, minutes=48) <= d <= timedelta(hours=13, minutes=12) for d in due), due
    assert len(set(due)) == len(due), "jitter: a fleet issued together does not renew together"


def test_due_certificates_are_renewed_and_pushed_to_holders_only(tmp_path: Path):
    async def main():
        async with Plane(tmp_path, ttl=timedelta(hours=1)) as p:
            pushed: list[Identity] = []
            held = {CATALOG}
            sched = RotationScheduler(p.secrets, push=lambda i: pushed.append(i) or 1, holders=lambda i: i in held,
                                      metrics=p.metrics, clock=p.clock, rng=random.Random(1))
            cat = await p.secrets.certificate(CATALOG)
            web = await p.secrets.certificate(WEBAPP)
            stop = asyncio.Event()
            task = asyncio.create_task(sched.run(stop))
            await asyncio.sleep(0.2)
            assert pushed == []  # nothing due yet
            # the request path does not renew any more: the scheduler does
            p.clock.advance(timedelta(minutes=40))
            assert (await p.secrets.certificate(CATALOG)).serial == cat.serial
            for _ in range(50):
                await asyncio.sleep(0.05)
                if pushed:
                    break
            stop.set()
            await task
            return p, cat, web, pushed

    p, cat, web, pushed = run(main())
    assert pushed == [CATALOG]
    renewed = p.secrets.cached(CATALOG)
    assert renewed.serial != cat.serial and renewed.issued_at == p.clock.now
    assert p.secrets.cached(WEBAPP) is None, "nobody holds webapp: forgotten, not renewed"
    assert p.metrics.cert_rotations.labels("rotation")._value.get() == 1


def test_failed_renewal_is_retried(tmp_path: Path):
    async def main():
        async with Plane(tmp_path, ttl=timedelta(hours=1)) as p:
            pushed = []
            sched = RotationScheduler(p.secrets, push=pushed.append, holders=lambda i: True, clock=p.clock)
            first = await p.secrets.certificate(CATALOG)
            real = p.secrets._ca
            p.secrets._ca = type("Broken", (), {"issue_workload": staticmethod(
                lambda *a: (_ for _ in ()).throw(RuntimeError("CA down"))), "root_cert_pem": real.root_cert_pem})()
            p.clock.advance(timedelta(minutes=35))
            stop = asyncio.Event()
            task = asyncio.create_task(sched.run(stop))
            await asyncio.sleep(0.3)
            assert pushed == [] and p.secrets.cached(CATALOG).serial == first.serial
            retry_at = sched.due_at(CATALOG)
            assert retry_at is not None and retry_at > p.clock.now
            p.secrets._ca = real
            p.clock.advance(timedelta(minutes=1))
            for _ in range(50):
                await asyncio.sleep(0.05)
                if pushed:
                    break
            stop.set()
            await task
            return pushed, p.metrics.cert_issue_failures.labels("workload")._value.get()

    pushed, failures = run(main())
    assert pushed == [CATALOG] and failures == 1


def test_new_signer_reissues_within_a_window(tmp_path: Path):
    async def main():
        async with Plane(tmp_path, ttl=timedelta(hours=24)) as p:
            sched = RotationScheduler(p.secrets, push=lambda i: 1, holders=lambda i: True, clock=p.clock,
                                      rng=random.Random(3))
            certs = [await p.secrets.certificate(Identity(TD, NS, f"sa-{i}")) for i in range(10)]
            # the CA now says another signer issues
            p.secrets.current_signer = lambda: "NEW"
            n = sched.reissue_from_other_signers(window=timedelta(seconds=30))
            return p, sched, certs, n

    p, sched, certs, n = run(main())
    assert n == 10
    dues = [sched.due_at(c.identity) - p.clock.now for c in certs]
    assert all(timedelta(0) <= d <= timedelta(seconds=30) for d in dues) and len(set(dues)) > 1


def test_stream_gets_the_renewed_certificate_without_asking(tmp_path: Path):
    async def main():
        async with Plane(tmp_path, ttl=timedelta(hours=1)) as p:
            sched = RotationScheduler(p.secrets, push=lambda i: p.ads.push_secrets(i), holders=lambda i: True,
                                      clock=p.clock)
            stub = ads_pb2_grpc.AggregatedDiscoveryServiceStub(p.channel(secure=True))
            q: asyncio.Queue = asyncio.Queue()

            async def reqs():
                while (r := await q.get()) is not None:
                    yield r

            call = stub.StreamAggregatedResources(reqs(), metadata=[("authorization", f"Bearer {p.token(NS, 'catalog')}")])
            first = discovery_pb2.DiscoveryRequest(type_url=names.SECRET, resource_names=[names.SDS_DEFAULT])
            first.node.id = node_id("catalog-0")
            first.node.metadata.update({"NAMESPACE": NS, "SERVICE_ACCOUNT": "catalog"})
            q.put_nowait(first)
            r1 = await asyncio.wait_for(call.read(), 10)
            q.put_nowait(discovery_pb2.DiscoveryRequest(type_url=names.SECRET, resource_names=[names.SDS_DEFAULT],
                                                        version_info=r1.version_info, response_nonce=r1.nonce))
            stop = asyncio.Event()
            task = asyncio.create_task(sched.run(stop))
            p.clock.advance(timedelta(minutes=40))
            r2 = await asyncio.wait_for(call.read(), 10)  # pushed: we sent no new request
            stop.set()
            await task
            q.put_nowait(None)
            call.cancel()
            return r1, r2

    r1, r2 = run(main())

    def chain(resp):
        s = secret_pb2.Secret()
        resp.resources[0].Unpack(s)
        return s.tls_certificate.certificate_chain.inline_bytes

    assert r2.version_info != r1.version_info and chain(r2) != chain(r1)
