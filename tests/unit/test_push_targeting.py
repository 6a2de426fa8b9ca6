"""Who a push reaches and what it sends, with the real generator over real gRPC:

- a Gateway change pushes to the gateway and nothing to sidecars;
- an endpoint change pushes only EDS, only the changed ClusterLoadAssignments, and only
  to the proxies subscribed to them (SotW and delta alike);
- a change that alters nothing a proxy receives sends it nothing.
"""
from __future__ import annotations

from envoy.config.endpoint.v3 import endpoint_pb2

from controlplane import names
from controlplane.generators import Generator
from tests.support.ads import by_name, eventually, run
from tests.support.ads_server import Harness
from tests.support.chapter9 import NS, endpoints_v2, mesh

CATALOG_80 = f"outbound|80||catalog.{NS}.svc.cluster.local"
CATALOG_81 = f"outbound|81||catalog.{NS}.svc.cluster.local"
WEBAPP_80 = f"outbound|80||webapp.{NS}.svc.cluster.local"

SIDECAR = (f"sidecar~10.1.0.10~webapp-1.{NS}~{NS}.svc.cluster.local",
           {"NAMESPACE": NS, "LABELS": {"app": "webapp", "security.istio.io/tlsMode": "istio"},
            "SERVICE_ACCOUNT": "webapp", "INTERCEPTION_MODE": "REDIRECT"})
SLEEP = ("sidecar~10.1.0.20~sleep-1.default~default.svc.cluster.local",
         {"NAMESPACE": "default", "LABELS": {"app": "sleep"}})
GATEWAY = ("router~10.1.0.2~gw-1.istio-system~istio-system.svc.cluster.local",
           {"NAMESPACE": "istio-system", "LABELS": {"istio": "ingressgateway"}})

SECOND_GATEWAY = """
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: second, namespace: istioinaction}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 81, name: http, protocol: HTTP}
    hosts: ["other.example.com"]
"""


def server() -> Harness:
    """meshd's Generator behind an in-process ADS server (tests/support/ads_server.py)."""
    return Harness(Generator())


def cla_names(resp) -> list[str]:
    out = []
    for a in resp.resources:
        cla = endpoint_pb2.ClusterLoadAssignment()
        a.Unpack(cla)
        out.append(cla.cluster_name)
    return sorted(out)


def test_a_gateway_change_pushes_to_gateways_and_nothing_to_sidecars():
    async def main():
        async with server() as s:
            s.ads.update(mesh())
            sidecar, gateway = s.sotw(*SIDECAR), s.sotw(*GATEWAY)
            await sidecar.sync([CATALOG_80])
            await gateway.sync([WEBAPP_80])
            await eventually(lambda: len(s.ads.connections()) == 2)
            queued = s.ads.update(mesh(SECOND_GATEWAY))
            assert queued == 1  # the gateway's connection only
            lds = await gateway.recv()
            assert lds.type_url == names.LISTENER and len(lds.resources) == 2
            await sidecar.route_barrier()  # nothing arrived before the barrier's answer

    run(main())


def test_an_endpoint_change_pushes_only_the_changed_assignments_to_their_subscribers():
    async def main():
        async with server() as s:
            s.ads.update(mesh())
            webapp, sleep, gateway = s.sotw(*SIDECAR), s.sotw(*SLEEP), s.sotw(*GATEWAY)
            await webapp.sync([CATALOG_80, CATALOG_81, WEBAPP_80])
            await sleep.sync([WEBAPP_80])  # not subscribed to catalog's endpoints
            await gateway.sync([WEBAPP_80, CATALOG_80])
            await eventually(lambda: len(s.ads.connections()) == 3)
            s.ads.update(mesh(endpoints_v2("10.1.0.13")))  # one more catalog pod
            eds = await webapp.recv()
            assert eds.type_url == names.ENDPOINT
            assert cla_names(eds) == [CATALOG_80, CATALOG_81]  # not webapp's: unchanged
            webapp.ack(eds, [CATALOG_80, CATALOG_81, WEBAPP_80])
            gw_eds = await gateway.recv()
            assert gw_eds.type_url == names.ENDPOINT and cla_names(gw_eds) == [CATALOG_80]
            for c in (webapp, sleep, gateway):
                await c.route_barrier()  # no CDS, LDS or RDS pushed to anyone, nothing to sleep

    run(main())


def test_an_endpoint_change_over_delta_sends_one_resource():
    async def main():
        async with server() as s:
            s.ads.update(mesh())
            d = s.delta()
            d.send(names.CLUSTER)
            d.ack(await d.recv())
            d.send(names.ENDPOINT, subscribe=[CATALOG_80, WEBAPP_80])
            d.ack(await d.recv())
            s.ads.update(mesh(endpoints_v2("10.1.0.13")))
            resp = await d.recv()
            assert resp.type_url == names.ENDPOINT and list(by_name(resp)) == [CATALOG_80]
            assert not resp.removed_resources

    run(main())


def test_an_unrelated_change_queues_no_push():
    async def main():
        async with server() as s:
            s.ads.update(mesh())
            sleep = s.sotw(*SLEEP)
            await sleep.sync([WEBAPP_80])
            await eventually(lambda: len(s.ads.connections()) == 1)
            unrelated = """
apiVersion: v1
kind: Pod
metadata: {name: job-1, namespace: default, labels: {app: job}}
spec: {containers: [{name: job}]}
status: {podIP: 10.1.0.99}
"""
            assert s.ads.update(mesh(unrelated)) == 0
            await sleep.route_barrier()
            # and re-pushing the same snapshot re-checks everyone (an explicit push)
            assert s.ads.update(s.ads.mesh, "manual") == 1

    run(main())
