"""Pytest fixtures for the Kubernetes tests, and the report of which API server each used.

- `kube_session` (session): the real kube-apiserver and etcd of ../shared/k8s, started on
  the first test that needs them, on free ports, Istio's CRDs and the Gateway API's
  standard-channel CRDs installed; stopped when the session ends.
- `kube` (function): the test's part of it (tests/support/kube.py `Kube`), the server put
  back as the session found it when the test ends, passed or failed.
- `kubeapi` (function): the stand-in API server (tests/support/kubeapi), for what a real
  one cannot be made to do on demand; a test that uses it says why in its docstring.

Every test that used an API server is listed under it in the terminal summary section
"Kubernetes API servers", and carries the user property `kube-apiserver` (junit XML).
"""
from __future__ import annotations

from collections import defaultdict

import pytest

from tests.support.paths import shared

REAL = "real"
STAND_IN = "stand-in"

_used: dict[str, dict[str, None]] = defaultdict(dict)  # server -> test node ids, in order
_current: list = []  # the item running now (for servers made inside a test body)
_real_version: list[str] = []


def note(server: str, item=None) -> None:
    """Record that the running test (or `item`) talks to `server` (REAL or STAND_IN)."""
    item = item if item is not None else (_current[-1] if _current else None)
    if item is None:
        return
    if item.nodeid not in _used[server]:
        _used[server][item.nodeid] = None
        label = f"real ({_describe_real()})" if server == REAL else "stand-in (tests/support/kubeapi)"
        item.user_properties.append(("kube-apiserver", label))


def _describe_real() -> str:
    return f"../shared/k8s {_real_version[0]}" if _real_version else "../shared/k8s"


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item, nextitem):
    _current.append(item)
    try:
        return (yield)
    finally:
        _current.pop()


@pytest.fixture(scope="session")
def kube_session(tmp_path_factory):
    from tests.support.kube import (
        GATEWAY_API_CRDS,
        HTTPROUTE_CRD,
        ISTIO_CRDS,
        KubeSession,
        install_crds,
        kube_apiserver,
    )

    with kube_apiserver(tmp_path_factory.mktemp("kube-apiserver")) as cluster:
        install_crds(cluster, shared(*ISTIO_CRDS), shared(*HTTPROUTE_CRD), *(shared(*c) for c in GATEWAY_API_CRDS))
        session = KubeSession(cluster)
        _real_version[:] = [session.version]
        try:
            yield session
        finally:
            session.close()


@pytest.fixture
def kube(kube_session, request):
    """This test's part of the session's real API server (tests/support/kube.py)."""
    note(REAL, request.node)
    k = kube_session.test(request.node.name)
    try:
        yield k
    finally:
        k.close()
        kube_session.reset()


@pytest.fixture
def kubeapi(request):
    """The stand-in API server (real list/watch over HTTP), always stopped. Bookmarks every
    0.1 s, unless the test module sets KUBEAPI_BOOKMARKS (seconds, or None for the
    server's default interval)."""
    from tests.support.kubeapi import FakeApiServer

    interval = getattr(request.module, "KUBEAPI_BOOKMARKS", 0.1)
    api = (FakeApiServer() if interval is None else FakeApiServer(bookmark_interval=interval)).start()
    try:
        yield api
    finally:
        api.stop()


def pytest_report_header(config) -> list[str]:
    return ["kube-apiserver: the Kubernetes tests use the real one of ../shared/k8s (one per session, started "
            "on first use), the stand-in tests/support/kubeapi only where a test says why; see the summary "
            "section 'Kubernetes API servers'"]


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:
    if not _used:
        return
    tr = terminalreporter
    tr.section("Kubernetes API servers")
    for server, label in ((REAL, f"real kube-apiserver ({_describe_real()})"),
                          (STAND_IN, "stand-in (tests/support/kubeapi)")):
        ids = list(_used.get(server, {}))
        if not ids:
            continue
        tr.write_line(f"{label}: {len(ids)} tests")
        by_module: dict[str, list[str]] = defaultdict(list)
        for nodeid in ids:
            module, _, name = nodeid.partition("::")
            by_module[module].append(name)
        for module, names in by_module.items():
            tr.write_line(f"  {module}: {', '.join(names)}")
