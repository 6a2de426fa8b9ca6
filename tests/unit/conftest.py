"""Fixtures shared by the unit tests."""
from __future__ import annotations

import pytest

from tests.kubeapi import FakeApiServer


@pytest.fixture
def kubeapi():
    """A stand-in Kubernetes API server (real list/watch over HTTP), bookmarks every 0.1 s;
    always stopped. Modules that need the default bookmark interval define their own."""
    api = FakeApiServer(bookmark_interval=0.1).start()
    try:
        yield api
    finally:
        api.stop()
