"""The initial lists asked for at the start of `meshd serve` (kube/prefetch.py), on the
stand-in API server: the source takes a prefetched list only for exactly its own
stream, watches from that list's resourceVersion (so nothing changed in between is
missed), and lists itself whenever the prefetch has nothing for it."""
from __future__ import annotations

import asyncio
import threading
import time

from controlplane.config.objects import Rejection
from controlplane.config.store import ConfigStore
from controlplane.kube.prefetch import Prefetch, PrefetchSettings
from controlplane.kube.source import KubernetesSource
from tests.support.kube_source import FAST, get, until, watch_threads_gone
from tests.support.manifests import service, virtual_service

PORTS = [("http", 80, 8080)]


def prefetched(kubeapi, tmp_path, parse: bool = True, **settings) -> Prefetch:
    """A prefetch as `meshd serve --kubeconfig` starts it, its lists done."""
    pre = Prefetch.start(PrefetchSettings(kubeconfig=str(kubeapi.kubeconfig(tmp_path / "kubeconfig")), **settings),
                         parse=parse)
    if parse:
        pre.enable_parsing()
    deadline = time.monotonic() + 10
    while any(t.name.startswith("k8s-prefetch-") for t in threading.enumerate()) and time.monotonic() < deadline:
        time.sleep(0.01)
    return pre


def lists_of(kubeapi, plural: str) -> int:
    return len(kubeapi.requests_for(plural, watch=False))


async def run_source(pre: Prefetch, store: ConfigStore, client=None, **kw):
    src = KubernetesSource(client or pre.client, store, options=FAST, prefetch=pre, **kw)
    stop = asyncio.Event()
    task = asyncio.create_task(src.run(stop))
    assert await src.wait_synced(5), "initial lists not synced within 5s"
    return src, stop, task


async def stop_source(stop: asyncio.Event, task: asyncio.Task, *clients) -> None:
    stop.set()
    await asyncio.wait_for(task, 10)
    for c in clients:
        c.close()
    await watch_threads_gone()


def test_the_source_takes_the_prefetched_lists_and_misses_nothing_changed_since(kubeapi, tmp_path):
    kubeapi.apply(service("web", "shop", PORTS))
    kubeapi.apply(virtual_service("vs", "shop", ["web.example.com"], "web"))
    pre = prefetched(kubeapi, tmp_path)
    assert lists_of(kubeapi, "services") == 1 and lists_of(kubeapi, "virtualservices") == 1
    # Changed after the prefetched lists, before the source starts: the watch from the
    # lists' resourceVersion brings it.
    kubeapi.apply(service("late", "shop", PORTS))
    kubeapi.delete("v1", "Service", "web", "shop")

    async def scenario():
        store = ConfigStore()
        src, stop, task = await run_source(pre, store)
        try:
            await until(lambda: get(store, "Service", "shop", "late") is not None
                        and get(store, "Service", "shop", "web") is None, "changes after the prefetch")
            assert get(store, "VirtualService", "shop", "vs") is not None
            # Not listed again: each stream took its prefetched list, and only watched.
            assert lists_of(kubeapi, "services") == 1 and lists_of(kubeapi, "virtualservices") == 1
            assert pre.taken >= 2 and pre.closed
        finally:
            await stop_source(stop, task, pre.client)

    asyncio.run(scenario())


def test_lists_made_for_other_settings_or_another_client_are_not_taken(kubeapi, tmp_path):
    kubeapi.apply(service("web", "shop", PORTS))
    kubeapi.apply(service("db", "data", PORTS))
    pre = prefetched(kubeapi, tmp_path, namespaces=["data"])  # the source watches every namespace

    async def scenario():
        store = ConfigStore()
        src, stop, task = await run_source(pre, store)
        try:
            assert get(store, "Service", "shop", "web") is not None and get(store, "Service", "data", "db") is not None
            assert lists_of(kubeapi, "services") == 2  # data's by the prefetch, all namespaces' by the source
        finally:
            await stop_source(stop, task, pre.client)
        other = kubeapi.api_client()  # another client: the source lists with its own
        pre2 = prefetched(kubeapi, tmp_path)
        before = lists_of(kubeapi, "services")
        src, stop, task = await run_source(pre2, ConfigStore(), client=other)
        try:
            assert lists_of(kubeapi, "services") == before + 1 and pre2.taken == 0
        finally:
            await stop_source(stop, task, other, pre2.client)

    asyncio.run(scenario())


def test_a_prefetch_that_could_not_list_leaves_the_lists_to_the_source(kubeapi, tmp_path):
    kubeapi.apply(service("web", "shop", PORTS))
    with kubeapi.outage():
        pre = prefetched(kubeapi, tmp_path)

    async def scenario():
        store = ConfigStore()
        src, stop, task = await run_source(pre, store)
        try:
            assert get(store, "Service", "shop", "web") is not None
            assert pre.taken == 0
        finally:
            await stop_source(stop, task, pre.client)

    asyncio.run(scenario())


def test_a_rejection_in_a_prefetched_list_is_reported_once_as_the_source_would(kubeapi, tmp_path):
    bad = virtual_service("bad", "shop", ["web.example.com"], "web")
    bad["spec"]["http"][0]["route"][0]["weight"] = "heavy"  # not an integer
    kubeapi.apply(bad)
    pre = prefetched(kubeapi, tmp_path)
    rejected: list[Rejection] = []

    async def scenario():
        store = ConfigStore(on_reject=rejected.append)
        src, stop, task = await run_source(pre, store)
        try:
            assert [r.key.name for r in rejected if r.key] == ["bad"]
            assert "weight" in rejected[0].field and get(store, "VirtualService", "shop", "bad") is None
        finally:
            await stop_source(stop, task, pre.client)

    asyncio.run(scenario())


def test_meshd_serve_prefetches_what_its_flags_say_and_nothing_without_a_cluster(tmp_path, capsys):
    from controlplane.cli import _start_kube_prefetch

    assert _start_kube_prefetch(["serve", "--config-dir", str(tmp_path)]) is None
    assert _start_kube_prefetch(["serve", "--kubeconfig"]) is None  # serve itself says what is wrong
    assert capsys.readouterr().err == ""
    missing = str(tmp_path / "nowhere")  # no client: nothing asked, serve reports the file
    pre = _start_kube_prefetch(["serve", "--kubeconfig", missing, "--namespaces", "a,b", "--label-selector", "x=y",
                                "--mesh-config", "mesh.yaml", "--webhook-port", "0", "--root-namespace", "root"])
    assert pre is not None and pre.client is None
    assert pre.settings == PrefetchSettings(kubeconfig=missing, namespaces=["a", "b"], label_selector="x=y",
                                            raw_namespace="root", raw_maps=())
    pre = _start_kube_prefetch(["serve", "--kubeconfig", missing])
    assert pre is not None and pre.settings.raw_maps == ("istio", "istio-sidecar-injector")


def test_lists_parsed_in_a_child_process_are_taken_and_nothing_changed_since_is_missed(kubeapi, tmp_path):
    """`meshd serve`'s prefetch: a forked child lists and parses, the results come back
    pickled; the source takes them as its own, watches on, and the child is reaped."""
    import os

    kubeapi.apply(service("web", "shop", PORTS))
    kubeapi.apply(virtual_service("vs", "shop", ["web.example.com"], "web"))
    pre = Prefetch.start_in_child(PrefetchSettings(kubeconfig=str(kubeapi.kubeconfig(tmp_path / "kubeconfig"))))
    pre.enable_parsing()
    deadline = time.monotonic() + 10
    while any(t.name == "k8s-prefetch-child" for t in threading.enumerate()) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not any(t.name == "k8s-prefetch-child" for t in threading.enumerate()), "the child's results never ended"
    assert pre.child is not None
    try:
        os.waitpid(pre.child, os.WNOHANG)  # reaped already: ChildProcessError
        raise AssertionError("the prefetch child was not reaped")
    except ChildProcessError:
        pass
    assert lists_of(kubeapi, "services") == 1 and lists_of(kubeapi, "virtualservices") == 1
    kubeapi.apply(service("late", "shop", PORTS))

    async def scenario():
        store = ConfigStore()
        src, stop, task = await run_source(pre, store)
        try:
            await until(lambda: get(store, "Service", "shop", "late") is not None, "a change after the prefetch")
            assert get(store, "Service", "shop", "web") is not None
            assert get(store, "VirtualService", "shop", "vs") is not None
            assert lists_of(kubeapi, "services") == 1 and lists_of(kubeapi, "virtualservices") == 1
            assert pre.taken >= 2
        finally:
            await stop_source(stop, task, pre.client)

    asyncio.run(scenario())


def test_held_watches_apply_the_parsed_lists_without_starting_their_threads_until_watching(kubeapi, tmp_path):
    """meshd's start (hold_watches): a list the prefetch parsed already is applied by the
    source itself, and its stream's thread starts only when watching starts; a change made
    meanwhile arrives then, and nothing is listed twice."""
    kubeapi.apply(service("web", "shop", PORTS))
    pre = prefetched(kubeapi, tmp_path)

    async def scenario():
        store = ConfigStore()
        src, stop, task = await run_source(pre, store, hold_watches=True)
        try:
            assert get(store, "Service", "shop", "web") is not None
            threads = {t.name for t in threading.enumerate()}
            assert "k8s-Service" not in threads and "k8s-VirtualService" not in threads
            assert pre.taken >= 2 and kubeapi.requests_for("services", watch=True) == []
            kubeapi.apply(service("late", "shop", PORTS))
            src.start_watching()
            await until(lambda: get(store, "Service", "shop", "late") is not None, "a change while held")
            assert "k8s-Service" in {t.name for t in threading.enumerate()}
            assert lists_of(kubeapi, "services") == 1
        finally:
            await stop_source(stop, task, pre.client)

    asyncio.run(scenario())


def test_an_adopted_list_is_held_once_by_its_source_not_again_by_its_reflector(kubeapi, tmp_path):
    """The source holds an adopted stream's thread until watching starts (or the hold's
    maximum); once started, the reflector watches at once instead of waiting a second
    hold: here its own watch_after is never set and the hold is a minute long."""
    import dataclasses

    import structlog

    from controlplane.kube.reflector import Reflector
    from controlplane.kube.resources import RESOURCES

    kubeapi.apply(service("web", "shop", PORTS))
    pre = prefetched(kubeapi, tmp_path)
    resource = next(r for r in RESOURCES if r.ident == "Service")
    stop, ops = threading.Event(), []
    r = Reflector(resource, None, pre.client, ops.append, stop, structlog.get_logger("test"),
                  options=dataclasses.replace(FAST, first_watch_hold=60), discovery=pre.discovery,
                  watch_after=threading.Event())
    got = pre.take_parsed(r.prefetch_key())
    assert got is not None
    r.adopt(*got)
    assert [type(op).__name__ for op in ops] == ["Sync"]
    thread = threading.Thread(target=r.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 5
        while not kubeapi.requests_for("services", watch=True) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert kubeapi.requests_for("services", watch=True), "the adopted stream waited a second hold"
        assert lists_of(kubeapi, "services") == 1
    finally:
        stop.set()
        r.interrupt()
        thread.join(10)
        pre.client.close()
    assert not thread.is_alive()
