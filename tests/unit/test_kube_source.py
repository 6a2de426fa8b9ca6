"""The Kubernetes source against the real API server (the `kube` fixture: each test in
namespaces of its own): the real client, the real list/watch protocol, the real store
and parse gate. What a real server cannot be made to do on demand (cut watches, fail
requests, ERROR events, 410 Gone, a group preferring an old or unknown version, no
server at all) runs on the stand-in (tests/support/kubeapi), and each such test says so."""
from __future__ import annotations

import asyncio
import contextlib
import threading
import time

import pytest
from kubernetes import client

from controlplane.config.objects import Rejection
from controlplane.config.store import ConfigStore
from controlplane.kube.source import KubernetesSource
from controlplane.model.mesh import build_mesh
from tests.support.harness import free_port
from tests.support.kube_source import FAST, THREADS_END_WITHIN, Changes, get, running, until, watch_threads_gone
from tests.support.kubeapi import FakeApiServer

# --- objects -------------------------------------------------------------------------

def namespace(name, **labels):
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels}}


def service(name, ns, port=80, selector=None, **labels):
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": ns, "labels": labels},
            "spec": {"selector": selector or {"app": name}, "ports": [{"name": "http", "port": port, "targetPort": 8080}]}}


def pod(name, ns, ip, app="web", **labels):
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": ns, "labels": {"app": app, **labels}},
            "spec": {"containers": [{"name": "app", "image": "app:1", "ports": [{"containerPort": 8080}]}]},
            "status": {"phase": "Running", "podIP": ip, "conditions": [{"type": "Ready", "status": "True"}]}}


def slice_(name, ns, svc, ip):
    return {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": name, "namespace": ns, "labels": {"kubernetes.io/service-name": svc}},
            "addressType": "IPv4", "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
            "endpoints": [{"addresses": [ip], "conditions": {"ready": True}}]}


def gateway(name, ns, host="web.example.com", version="v1"):
    return {"apiVersion": f"networking.istio.io/{version}", "kind": "Gateway", "metadata": {"name": name, "namespace": ns},
            "spec": {"selector": {"istio": "ingressgateway"},
                     "servers": [{"port": {"number": 80, "name": "http", "protocol": "HTTP"}, "hosts": [host]}]}}


def virtual_service(name, ns, dest="web", version="v1", **labels):
    return {"apiVersion": f"networking.istio.io/{version}", "kind": "VirtualService",
            "metadata": {"name": name, "namespace": ns, "labels": labels},
            "spec": {"hosts": ["web.example.com"], "gateways": ["gw"],
                     "http": [{"route": [{"destination": {"host": dest, "port": {"number": 80}}}]}]}}


def destination_rule(name, ns, mode="ISTIO_MUTUAL"):
    return {"apiVersion": "networking.istio.io/v1", "kind": "DestinationRule", "metadata": {"name": name, "namespace": ns},
            "spec": {"host": "web", "trafficPolicy": {"tls": {"mode": mode}}}}


def peer_auth(name, ns, mode="STRICT"):
    return {"apiVersion": "security.istio.io/v1", "kind": "PeerAuthentication", "metadata": {"name": name, "namespace": ns},
            "spec": {"mtls": {"mode": mode}}}


# --- harness -------------------------------------------------------------------------

@pytest.fixture(autouse=True)
def no_threads_left():
    """Every server, handler and watch thread a test starts is gone when it ends."""
    before = set(threading.enumerate())
    yield
    deadline = time.monotonic() + THREADS_END_WITHIN
    while (left := [t.name for t in set(threading.enumerate()) - before if t.is_alive()]) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert left == [], f"threads left running: {left}"


# --- tests ---------------------------------------------------------------------------

def test_every_kind_added_updated_deleted_reaches_the_store(kube):
    shop, blog, system = kube.name("shop"), kube.name("blog"), kube.ns("istio-system")
    seeded = [namespace(shop), service("web", shop), pod("web-1", shop, "10.0.0.1"),
              slice_("web-abc", shop, "web", "10.0.0.1"), gateway("gw", shop),
              virtual_service("vs", shop), destination_rule("dr", shop), peer_auth("default", system)]
    for obj in seeded:
        kube.apply(obj)

    async def scenario():
        async with running(kube) as (src, store):
            snap = store.snapshot()
            for kind, ns, name in [("Namespace", "", shop), ("Service", shop, "web"), ("Pod", shop, "web-1"),
                                   ("EndpointSlice", shop, "web-abc"), ("Gateway", shop, "gw"),
                                   ("VirtualService", shop, "vs"), ("DestinationRule", shop, "dr"),
                                   ("PeerAuthentication", system, "default")]:
                obj = snap.get(kind, ns, name)
                assert obj is not None, f"{kind} {ns}/{name} missing after the initial list"
                assert obj.origin.source == "kubernetes"
            assert snap.get("VirtualService", shop, "vs").origin.location == \
                f"k8s:/apis/networking.istio.io/v1/namespaces/{shop}/virtualservices/vs"
            assert snap.get("Namespace", "", shop).origin.location == f"k8s:/api/v1/namespaces/{shop}"

            # added while watching
            added = [namespace(blog), service("api", blog), pod("api-1", blog, "10.0.1.1", app="api"),
                     slice_("api-x", blog, "api", "10.0.1.1"), gateway("gw2", blog), virtual_service("vs2", blog),
                     destination_rule("dr2", blog), peer_auth("ns-wide", blog)]
            for obj in added:
                kube.apply(obj)
            await until(lambda: all(get(store, o["kind"], o["metadata"].get("namespace", "") if o["kind"] != "Namespace" else "",
                                        o["metadata"]["name"]) for o in added), "added objects")

            # updated
            kube.apply(service("web", shop, port=8000))
            kube.apply(pod("web-1", shop, "10.0.0.9"))
            kube.apply(slice_("web-abc", shop, "web", "10.0.0.9"))
            kube.apply(gateway("gw", shop, host="new.example.com"))
            kube.apply(virtual_service("vs", shop, dest="web2"))
            kube.apply(destination_rule("dr", shop, mode="DISABLE"))
            kube.apply(peer_auth("default", system, mode="PERMISSIVE"))
            kube.apply(namespace(shop, team="a"))
            checks = [
                lambda: get(store, "Service", shop, "web").spec["spec"]["ports"][0]["port"] == 8000,
                lambda: get(store, "Pod", shop, "web-1").spec["status"]["podIP"] == "10.0.0.9",
                lambda: get(store, "EndpointSlice", shop, "web-abc").spec["endpoints"][0]["addresses"] == ["10.0.0.9"],
                lambda: get(store, "Gateway", shop, "gw").spec["servers"][0]["hosts"] == ["new.example.com"],
                lambda: get(store, "VirtualService", shop, "vs").spec["http"][0]["route"][0]["destination"]["host"] == "web2",
                lambda: get(store, "DestinationRule", shop, "dr").spec["trafficPolicy"]["tls"]["mode"] == "DISABLE",
                lambda: get(store, "PeerAuthentication", system, "default").spec["mtls"]["mode"] == "PERMISSIVE",
                # (the server adds kubernetes.io/metadata.name to every Namespace itself)
                lambda: get(store, "Namespace", "", shop).labels.get("team") == "a",
            ]
            await until(lambda: all(c() for c in checks), "updates")

            # deleted (of the cluster's objects, only this test's count)
            for obj in seeded:
                md = obj["metadata"]
                assert kube.delete(obj["apiVersion"], obj["kind"], md["name"], md.get("namespace"))
            await until(lambda: {(o.kind, o.namespace) for o in kube.mine(store.snapshot())} ==
                        {(o["kind"], o["metadata"].get("namespace", "")) for o in added}, "deletions")
            assert src.stats()["Pod"].objects == 1

    asyncio.run(scenario())


def test_a_cut_watch_resumes_from_the_last_resource_version(kubeapi):
    """The stand-in: every open watch is cut mid-stream at a chosen moment, and the test counts
    the lists and watches the server received."""
    for i in range(5):
        kubeapi.apply(pod(f"p{i}", "shop", f"10.0.0.{i}"))

    async def scenario():
        async with running(kubeapi) as (src, store):
            changes = Changes(store)
            kubeapi.apply(pod("p0", "shop", "10.0.1.0"))
            await until(lambda: get(store, "Pod", "shop", "p0").spec["status"]["podIP"] == "10.0.1.0", "first update")
            seen_rv = int(kubeapi.resource_version)
            lists_before = len(kubeapi.requests_for("pods", watch=False))
            watches_before = len(kubeapi.requests_for("pods", watch=True))

            assert kubeapi.cut_watches() >= 8  # one per kind
            kubeapi.apply(pod("p1", "shop", "10.0.1.1"))  # made while the watch is down
            kubeapi.delete("v1", "Pod", "p2", "shop")
            kubeapi.apply(pod("p9", "shop", "10.0.1.9"))
            await until(lambda: get(store, "Pod", "shop", "p9") is not None and get(store, "Pod", "shop", "p2") is None
                        and get(store, "Pod", "shop", "p1").spec["status"]["podIP"] == "10.0.1.1", "changes after the cut")
            await asyncio.sleep(0.3)  # room for any duplicate to show up

            assert len(changes.keys) == 4, changes.keys  # 4 changes, each seen once
            assert src.stats()["Pod"].events == 4
            assert len(kubeapi.requests_for("pods", watch=False)) == lists_before, "resumed without a relist"
            resumed = kubeapi.requests_for("pods", watch=True)[watches_before:]
            assert resumed and int(resumed[0].query["resourceVersion"]) >= seen_rv
            assert resumed[0].query["allowWatchBookmarks"] == "true"

    asyncio.run(scenario())


def test_server_errors_back_off_and_resume_without_relisting(kubeapi):
    """The stand-in: the server fails the next requests with 500 on demand and cuts every watch."""
    kubeapi.apply(pod("p0", "shop", "10.0.0.1"))

    async def scenario():
        async with running(kubeapi) as (src, store):
            lists_before = len(kubeapi.requests_for("pods", watch=False))
            kubeapi.fail_next(20)  # every stream's next attempts fail with 500
            kubeapi.cut_watches()
            kubeapi.apply(pod("p1", "shop", "10.0.0.2"))
            await until(lambda: get(store, "Pod", "shop", "p1") is not None, "change after errors", timeout=5)
            assert src.errors() > 0
            assert len(kubeapi.requests_for("pods", watch=False)) == lists_before

    asyncio.run(scenario())


def test_an_error_event_is_retried_from_the_last_resource_version(kubeapi):
    """The stand-in: every open watch gets an ERROR event on demand."""
    kubeapi.apply(pod("p0", "shop", "10.0.0.1"))

    async def scenario():
        async with running(kubeapi) as (src, store):
            lists_before = len(kubeapi.requests_for("pods", watch=False))
            kubeapi.wait_watches(8)
            assert kubeapi.error_watches(500) >= 8
            kubeapi.apply(pod("p1", "shop", "10.0.0.2"))
            await until(lambda: get(store, "Pod", "shop", "p1") is not None, "change after the ERROR event")
            await until(lambda: src.errors() >= 8, "every stream saw its ERROR event")
            assert len(kubeapi.requests_for("pods", watch=False)) == lists_before
            assert src.stats()["Pod"].events == 1

    asyncio.run(scenario())


@pytest.mark.parametrize("gone", ["event", "http"])
def test_410_gone_forces_a_relist_that_diffs_against_the_store(kubeapi, gone):
    """The stand-in: an outage while objects change and the history is compacted, so the
    resumed watch meets 410 Gone at a chosen moment (as an event or as the HTTP status)."""
    kubeapi.gone = gone
    for i in range(1, 4):
        kubeapi.apply(pod(f"p{i}", "shop", f"10.0.0.{i}"))

    async def scenario():
        async with running(kubeapi) as (src, store):
            changes = Changes(store)
            lists_before = len(kubeapi.requests_for("pods", watch=False))
            with kubeapi.outage():  # disconnected while things change and history is compacted
                kubeapi.delete("v1", "Pod", "p2", "shop")
                kubeapi.apply(pod("p3", "shop", "10.0.9.3"))
                kubeapi.apply(pod("p4", "shop", "10.0.0.4"))
                kubeapi.compact()
                await asyncio.sleep(0.1)
            await until(lambda: get(store, "Pod", "shop", "p4") is not None, "relist after 410")
            await asyncio.sleep(0.3)
            names = sorted(o.name for o in store.snapshot().of_kind("Pod"))
            assert names == ["p1", "p3", "p4"]
            assert get(store, "Pod", "shop", "p3").spec["status"]["podIP"] == "10.0.9.3"
            assert sorted(k.name for k in changes.keys) == ["p2", "p3", "p4"]  # p1 unchanged: no event
            assert len(kubeapi.requests_for("pods", watch=False)) > lists_before
            assert src.stats()["Pod"].objects == 3

    asyncio.run(scenario())


def test_a_pod_ip_change_moves_the_endpoint_of_a_service_without_slices(kube):
    shop = kube.ns("shop")
    kube.apply(service("web", shop))
    kube.apply(pod("web-1", shop, "10.0.0.1"))
    kube.apply(pod("other", shop, "10.0.0.7", app="other"))
    host = f"web.{shop}.svc.cluster.local"

    async def scenario():
        async with running(kube) as (_, store):
            mesh = build_mesh(store.snapshot())
            assert [(e.address, e.port) for e in mesh.service_endpoints(host, 80)] == [("10.0.0.1", 8080)]
            kube.apply(pod("web-1", shop, "10.0.0.2"))
            await until(lambda: get(store, "Pod", shop, "web-1").spec["status"]["podIP"] == "10.0.0.2", "pod update")
            mesh = build_mesh(store.snapshot())
            assert [e.address for e in mesh.service_endpoints(host, 80)] == ["10.0.0.2"]

    asyncio.run(scenario())


def test_a_crd_served_at_two_versions_is_one_object_watched_at_the_preferred_version(kubeapi):
    """The stand-in: a group whose preferred version is not its newest (on a real server
    Istio's CRDs make v1 the preferred version of their groups)."""
    kubeapi.serve_group("networking.istio.io", versions=["v1", "v1beta1"], preferred="v1beta1")
    kubeapi.apply(virtual_service("vs", "shop", version="v1"))

    async def scenario():
        async with running(kubeapi) as (_, store):
            vss = store.snapshot().of_kind("VirtualService")
            assert len(vss) == 1 and vss[0].version == "v1beta1"
            assert vss[0].origin.location == "k8s:/apis/networking.istio.io/v1/namespaces/shop/virtualservices/vs"
            paths = {r.path for r in kubeapi.requests_for("virtualservices")}
            assert paths == {"/apis/networking.istio.io/v1beta1/virtualservices"}
            kubeapi.apply(virtual_service("vs", "shop", dest="web2", version="v1beta1"))
            await until(lambda: get(store, "VirtualService", "shop", "vs").spec["http"][0]["route"][0]["destination"]["host"] == "web2",
                        "update")
            assert len(store.snapshot().of_kind("VirtualService")) == 1

    asyncio.run(scenario())


def test_falls_back_to_an_older_version_when_the_preferred_one_is_unknown(kubeapi):
    """The stand-in: a group that prefers a version meshd does not know (v2), which no Istio
    CRD defines."""
    # A future version meshd does not know is preferred: use the newest one it knows.
    kubeapi.serve_group("networking.istio.io", versions=["v2", "v1beta1", "v1alpha3"], preferred="v2")
    kubeapi.apply(gateway("gw", "shop", version="v1beta1"))

    async def scenario():
        async with running(kubeapi) as (_, store):
            assert get(store, "Gateway", "shop", "gw").version == "v1beta1"

    asyncio.run(scenario())


def test_crds_installed_after_start_are_picked_up(kube):
    """Istio's security.istio.io CRDs are deleted from the real server before the source
    starts, and created again while it runs."""
    system = kube.ns("istio-system")
    with kube.crds_removed("security.istio.io") as install:
        async def scenario():
            async with running(kube) as (_, store):  # synced: an absent kind has no objects
                assert get(store, "PeerAuthentication", system, "default") is None
                install()
                kube.apply(peer_auth("default", system))
                await until(lambda: get(store, "PeerAuthentication", system, "default") is not None, "rediscovery",
                            timeout=15)

        asyncio.run(scenario())


def test_namespaces_limit_what_is_seen(kube):
    a, b, c = (kube.ns(n) for n in ("a", "b", "c"))
    for ns in (a, b, c):
        kube.apply(service("web", ns))
        kube.apply(virtual_service("vs", ns))

    async def scenario():
        async with running(kube, namespaces=[a, c]) as (_, store):
            kube.apply(pod("p", b, "10.0.0.2"))
            kube.apply(pod("p", c, "10.0.0.3"))
            kube.apply(namespace(b, team="x"))
            await until(lambda: get(store, "Pod", c, "p") is not None, "pod in c")
            await asyncio.sleep(0.2)
            seen = sorted((o.kind, o.namespace, o.name) for o in store.snapshot())
            assert seen == [("Namespace", "", a), ("Namespace", "", c), ("Pod", c, "p"),
                            ("Service", a, "web"), ("Service", c, "web"),
                            ("VirtualService", a, "vs"), ("VirtualService", c, "vs")]
            watched = {r.path for r in kube.requests_for("services", watch=True)}
            assert watched == {f"/api/v1/namespaces/{a}/services", f"/api/v1/namespaces/{c}/services"}

    asyncio.run(scenario())


def test_label_selector_limits_what_is_seen(kube):
    shop = kube.ns("shop")
    kube.apply(virtual_service("on", shop, mesh="on"))
    kube.apply(virtual_service("off", shop))

    async def scenario():
        async with running(kube, label_selector="mesh=on") as (_, store):
            assert [o.name for o in store.snapshot().of_kind("VirtualService")] == ["on"]
            kube.apply(virtual_service("on", shop))  # label removed: leaves the selection
            kube.apply(virtual_service("off", shop, mesh="on"))  # joins it
            await until(lambda: [o.name for o in store.snapshot().of_kind("VirtualService")] == ["off"], "relabel")

    asyncio.run(scenario())


def test_invalid_objects_are_rejected_and_the_last_good_version_kept(kube):
    shop = kube.ns("shop")
    rejected: list[Rejection] = []
    store = ConfigStore(on_reject=rejected.append)
    # valid for the CRD's schema (a uint32 port), invalid for meshd (and Istio): no such port
    bad = virtual_service("vs", shop)
    bad["spec"]["http"][0]["route"][0]["destination"]["port"]["number"] = 70000

    async def scenario():
        async with running(kube, store=store) as (_, store_):
            kube.apply(bad)
            await until(lambda: rejected, "rejection")
            assert get(store_, "VirtualService", shop, "vs") is None
            assert rejected[0].origin.location == f"k8s:/apis/networking.istio.io/v1/namespaces/{shop}/virtualservices/vs"
            assert "70000" in rejected[0].message()
            kube.apply(virtual_service("vs", shop, dest="good"))
            await until(lambda: get(store_, "VirtualService", shop, "vs") is not None, "fixed object")
            kube.apply(bad)
            await until(lambda: len(rejected) == 2, "second rejection")
            assert get(store_, "VirtualService", shop, "vs").spec["http"][0]["route"][0]["destination"]["host"] == "good"

    asyncio.run(scenario())


def test_api_server_down_at_start_is_retried_and_synced_only_after_the_lists():
    """The stand-in: no API server listening at first (an outage), then one on that port."""
    api = FakeApiServer(port=free_port("127.0.0.1"), bookmark_interval=0.1)
    api.apply(service("web", "shop"))
    api.apply(virtual_service("vs", "shop"))

    async def scenario():
        store = ConfigStore()
        api_client = client.ApiClient(api.configuration())
        src = KubernetesSource(api_client, store, options=FAST)
        stop = asyncio.Event()
        task = asyncio.create_task(src.run(stop))
        synced_with: list = []
        try:
            await asyncio.sleep(0.5)  # nothing listening: connection refused, retried
            assert not src.synced and not task.done()
            assert not await src.wait_synced(0.05)
            assert src.errors() > 0
            api.start()

            async def watch_sync():
                await src.wait_synced()
                synced_with.extend(sorted(o.kind for o in store.snapshot()))
            await asyncio.wait_for(watch_sync(), 5)
            assert synced_with == ["Service", "VirtualService"]
        finally:
            stop.set()
            await asyncio.wait_for(task, 10)
            api_client.close()
            api.stop()
        await watch_threads_gone()

    asyncio.run(scenario())


def test_cancelling_run_stops_the_watch_threads(kube):
    async def scenario():
        api_client = kube.api_client()
        src = KubernetesSource(api_client, ConfigStore(), options=FAST)
        task = asyncio.create_task(src.run(asyncio.Event()))
        assert await src.wait_synced(5)
        kube.wait_watches(8)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        api_client.close()
        await watch_threads_gone()

    asyncio.run(scenario())


def test_a_kubeconfig_file_points_the_source_at_the_cluster(kube):
    """The real server's kubeconfig (client certificates, its CA), as `meshd serve
    --kubeconfig` reads it."""
    from controlplane.kube.client import kube_api_client

    shop = kube.ns("shop")
    kube.apply(service("web", shop))

    async def scenario():
        api_client = kube_api_client(str(kube.cluster.kubeconfig))
        store = ConfigStore()
        src = KubernetesSource(api_client, store, options=FAST)
        stop = asyncio.Event()
        task = asyncio.create_task(src.run(stop))
        try:
            assert await src.wait_synced(5)
            assert get(store, "Service", shop, "web") is not None
        finally:
            stop.set()
            await asyncio.wait_for(task, 10)
            api_client.close()

    asyncio.run(scenario())


def test_secrets_are_watched_only_on_request(kube):
    system = kube.ns("istio-system")
    kube.apply({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "cred", "namespace": system},
                "type": "kubernetes.io/tls", "data": {"tls.crt": "", "tls.key": ""}})

    async def scenario():
        async with running(kube) as (src, _):
            assert "Secret" not in src.stats()
            assert not kube.requests_for("secrets")
        async with running(kube, watch_secrets=True) as (src, store):
            # Listed and watched; the parse gate skips Secrets quietly until it learns them.
            assert kube.requests_for("secrets", watch=False)
            assert src.stats()["Secret"].objects == 1  # the cluster holds no other Secret
            # [] today; the Secret itself once the parse gate serves TLS Secrets.
            assert [o.name for o in store.snapshot().of_kind("Secret")] in ([], ["cred"])

    asyncio.run(scenario())


def test_held_watches_wait_for_start_watching_and_then_miss_nothing(kubeapi):
    """meshd's start (hold_watches): every stream lists, none watches until start_watching()
    (the stand-in counts the watch requests); a change made meanwhile is delivered once
    they watch, from the lists' resourceVersion, without a second list."""
    kubeapi.apply(pod("p0", "shop", "10.0.0.1"))

    async def scenario():
        async with running(kubeapi, hold_watches=True) as (src, store):
            assert get(store, "Pod", "shop", "p0") is not None
            kubeapi.apply(pod("p1", "shop", "10.0.0.2"))
            await asyncio.sleep(0.3)  # room for a watch that must not be made
            assert kubeapi.requests_for("pods", watch=True) == []
            assert get(store, "Pod", "shop", "p1") is None
            lists = len(kubeapi.requests_for("pods", watch=False))
            src.start_watching()
            await until(lambda: get(store, "Pod", "shop", "p1") is not None, "the change made while held")
            assert len(kubeapi.requests_for("pods", watch=False)) == lists
            assert len(kubeapi.requests_for("pods", watch=True)) == 1

    asyncio.run(scenario())


def test_held_watches_start_after_the_hold_maximum_and_a_held_source_stops_at_once(kubeapi):
    """A start that is never told to watch (it never got ready) watches anyway after
    first_watch_hold; one stopped while held ends its threads (running() checks)."""
    import dataclasses

    kubeapi.apply(pod("p0", "shop", "10.0.0.1"))

    async def scenario():
        async with running(kubeapi, hold_watches=True, options=dataclasses.replace(FAST, first_watch_hold=0.5)) \
                as (_src, store):
            kubeapi.apply(pod("p1", "shop", "10.0.0.2"))
            await until(lambda: get(store, "Pod", "shop", "p1") is not None, "a change after the hold's maximum")
        async with running(kubeapi, hold_watches=True, options=dataclasses.replace(FAST, first_watch_hold=60)):
            pass

    asyncio.run(scenario())


def test_held_watches_on_the_real_api_server_deliver_what_changed_while_held(kube):
    """The same on the real API server: no watch request while held; the Service created
    meanwhile arrives once watching starts, from the list's resourceVersion (no relist)."""
    shop = kube.ns("shop")
    kube.apply(service("web", shop))

    async def scenario():
        async with running(kube, namespaces=[shop], hold_watches=True) as (src, store):
            assert get(store, "Service", shop, "web") is not None
            kube.apply(service("late", shop))
            await asyncio.sleep(0.3)  # room for a watch that must not be made
            assert kube.requests_for("services", watch=True) == []
            assert get(store, "Service", shop, "late") is None
            lists = len(kube.requests_for("services", watch=False))
            src.start_watching()
            await until(lambda: get(store, "Service", shop, "late") is not None, "the Service made while held")
            assert len(kube.requests_for("services", watch=False)) == lists

    asyncio.run(scenario())
