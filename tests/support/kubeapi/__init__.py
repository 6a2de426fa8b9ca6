"""A stand-in Kubernetes API server for the Kubernetes source's tests (see server.py)."""
from .server import FakeApiServer, Request, ResourceType

__all__ = ["FakeApiServer", "Request", "ResourceType"]
