"""The stand-in Kubernetes API server (see server.py): for what the real one
(tests/support/kube.py) cannot be made to do on demand."""
from .server import FakeApiServer, Request, ResourceType

__all__ = ["FakeApiServer", "Request", "ResourceType"]
