"""Fixtures shared by the unit tests."""
from __future__ import annotations

import pytest

from tests.support.kubeapi import FakeApiServer


@pytest.fixture
def kubeapi(request):
    """A stand-in Kubernetes API server (real list/watch over HTTP), always stopped.
    Bookmarks every 0.1 s, unless the test module sets KUBEAPI_BOOKMARKS (seconds, or
    None for the server's default interval)."""
    interval = getattr(request.module, "KUBEAPI_BOOKMARKS", 0.1)
    api = (FakeApiServer() if interval is None else FakeApiServer(bookmark_interval=interval)).start()
    try:
        yield api
    finally:
        api.stop()
