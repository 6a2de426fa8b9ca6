"""The requests a Kubernetes API server received, as the tests read them: the stand-in
server logs what reaches it (kubeapi/server.py), a RecordingApiClient what a client sent
to the real one (kube.py). Both answer the same questions: requests to a resource, the
writes and their outcome, the RBAC verbs they need, the TokenReviews asked for."""
from __future__ import annotations

import threading
from dataclasses import dataclass

TOKEN_REVIEW_PLURAL = "tokenreviews"
_VERB_OF = {"POST": "create", "PUT": "update", "PATCH": "patch", "DELETE": "delete"}


@dataclass
class Request:
    path: str
    query: dict[str, str]
    method: str = "GET"
    status: int = 0  # the response code (0 until answered; a watch: 200 once streaming)

    @property
    def watch(self) -> bool:
        return self.query.get("watch") in ("true", "1")

    def resource(self) -> tuple[str, str, str, str | None] | None:
        """(group, resource, subresource, name) of a resource request; None for discovery."""
        parts = [p for p in self.path.split("/") if p]
        if len(parts) >= 2 and parts[0] == "api" and parts[1] == "v1":
            group, rest = "", parts[2:]
        elif len(parts) >= 3 and parts[0] == "apis":
            group, rest = parts[1], parts[3:]
        else:
            return None
        if len(rest) >= 2 and rest[0] == "namespaces" and len(rest) != 2:
            rest = rest[2:]  # /namespaces/{ns}/{plural}...; a lone /namespaces/{name} is the Namespace
        if not rest:
            return None
        return group, rest[0], rest[2] if len(rest) > 2 else "", rest[1] if len(rest) > 1 else None

    @property
    def namespace(self) -> str | None:
        """The namespace in the path (/namespaces/{ns}/...), None for cluster-wide requests."""
        parts = [p for p in self.path.split("/") if p]
        base = 2 if parts[:1] == ["api"] else 3
        rest = parts[base:]
        return rest[1] if len(rest) >= 3 and rest[0] == "namespaces" else None

    @property
    def verb(self) -> str | None:
        """The RBAC verb this request needs (get/list/watch/create/update/patch/delete)."""
        res = self.resource()
        if res is None:
            return None
        if self.method == "GET":
            return "watch" if self.watch else ("get" if res[3] is not None else "list")
        return _VERB_OF.get(self.method)


class RequestLog:
    """Queries over `self.requests` (a list of Request), under `self._requests_lock`."""

    requests: list[Request]
    _requests_lock: threading.Lock | threading.RLock | threading.Condition

    def requests_for(self, plural: str, watch: bool | None = None, method: str = "GET") -> list[Request]:
        with self._requests_lock:
            return [r for r in self.requests if r.path.rstrip("/").endswith("/" + plural)
                    and r.method == method and (watch is None or r.watch == watch)]

    def verbs(self) -> set[tuple[str, str, str]]:
        """Every (apiGroup, resource[/subresource], verb) requested so far: what the
        caller's RBAC role must grant. Discovery requests (/api, /apis/...) need none."""
        with self._requests_lock:
            out = set()
            for r in self.requests:
                res = r.resource()
                if res is not None and r.verb:
                    group, plural, sub, _ = res
                    out.add((group, f"{plural}/{sub}" if sub else plural, r.verb))
            return out

    def writes(self, plural: str, method: str | None = None, name: str | None = None,
               status: int | None = None) -> list[Request]:
        """Write requests (not GET) to `plural`, optionally of one method / object / outcome."""
        with self._requests_lock:
            out = []
            for r in self.requests:
                res = r.resource()
                if r.method == "GET" or res is None or res[1] != plural:
                    continue
                if (method is None or r.method == method) and (name is None or res[3] == name) \
                        and (status is None or r.status == status):
                    out.append(r)
            return out

    def token_reviews(self) -> int:
        with self._requests_lock:
            return sum(1 for r in self.requests if r.method == "POST" and r.path.endswith("/" + TOKEN_REVIEW_PLURAL))
