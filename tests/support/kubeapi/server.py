"""A stand-in Kubernetes API server that speaks the real list/watch protocol.

The Kubernetes tests run against the real kube-apiserver of ../shared/k8s (tests/support/
kube.py). This one stays for what a real server cannot be made to do on demand: cut every
watch mid-stream, answer 410 Gone or an ERROR event at a chosen moment, fail the next
requests or all of them for a while (an outage), prefer an old or unknown version of a
group, review tokens the way a test needs (a user's, an account without its groups), and
log every request it received (a whole run of meshd processes, for the RBAC check). The
`kubernetes` client talks plain HTTP to it exactly as it would to an API server (same
paths, query parameters, list and watch bodies, status codes). What it implements:

- discovery: `/api`, `/api/v1`, `/apis`, `/apis/{group}` (with preferredVersion),
  `/apis/{group}/{version}` resource lists;
- list: `GET /api/v1/pods`, `/api/v1/namespaces/{ns}/pods`, `/apis/{g}/{v}/...`, with
  labelSelector, fieldSelector (metadata.name/namespace), limit/continue; items come
  without apiVersion/kind, as built-in lists send them;
- watch: `?watch=true&resourceVersion=N&allowWatchBookmarks=true&timeoutSeconds=T`:
  chunked JSON lines, events after N from a bounded global history (one resourceVersion
  counter for every kind, like etcd), BOOKMARK events every `bookmark_interval`, a clean
  end after timeoutSeconds; a version older than the history gets 410 Gone (an ERROR
  event, or an HTTP 410 with `gone="http"`); an object that stops matching the label
  selector arrives as DELETED, one that starts matching as ADDED (as the watch cache does);
- one object storage per kind served at several versions at once, the apiVersion
  rewritten to the version asked for.

- writes, as meshd's cluster code sends them: `POST` (create; 409 AlreadyExists),
  `PUT` (update; a stale metadata.resourceVersion is a 409 Conflict, as for Leases),
  `PATCH` (JSON merge patch; a resourceVersion in the patch is a precondition; an apply
  patch in JSON creates or merges, without field managers) and
  `DELETE`, on objects and on the `status` subresource of kinds that have one (a write
  to the object keeps its status, a write to /status changes only the status, and
  metadata.generation moves only when the spec does); Leases, Secrets, ConfigMaps and
  Events are ordinary stored kinds (watchable like the rest);
- `POST /apis/authentication.k8s.io/v1/tokenreviews`: tokens registered with
  `add_token` are reviewed as the API server would (user, groups, audiences), any other
  token is not authenticated.

Test hooks (Python calls, not HTTP): apply/delete objects, cut every open watch
mid-stream, compact the history, fail the next N requests, an outage during which every
request fails, change the versions a group serves, register tokens, and the log of
requests received (with the RBAC verb each one needs: `verbs()`).
"""
from __future__ import annotations

import base64
import contextlib
import copy
import json
import re
import socket
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from controlplane.config.kinds import GATEWAY_API_KINDS, WATCHED_UNSUPPORTED
from controlplane.kube.resources import RESOURCES
from tests.support.kube_log import TOKEN_REVIEW_PLURAL, Request, RequestLog

from .selectors import field_matcher, label_matcher

ISTIO_NET = ("v1", "v1beta1", "v1alpha3")
GATEWAY_API_PLURALS = {"GatewayClass": "gatewayclasses", "Gateway": "gateways", "HTTPRoute": "httproutes",
                       "GRPCRoute": "grpcroutes", "TCPRoute": "tcproutes", "TLSRoute": "tlsroutes",
                       "ReferenceGrant": "referencegrants"}
# Served kinds listed above (an older WATCHED_UNSUPPORTED may still name them).
_SERVED_HERE = frozenset({"serviceentries", "sidecars", "workloadentries", "workloadgroups"})


@dataclass
class ResourceType:
    group: str
    kind: str
    plural: str
    namespaced: bool
    versions: list[str]
    served: bool = True
    status: bool = False  # has a /status subresource (the Istio CRDs, Pods, Services)

    def api_version(self, version: str) -> str:
        return f"{self.group}/{version}" if self.group else version


def default_types() -> list[ResourceType]:
    out = [
        ResourceType("", "Namespace", "namespaces", False, ["v1"]),
        ResourceType("", "Service", "services", True, ["v1"], status=True),
        ResourceType("", "Pod", "pods", True, ["v1"], status=True),
        ResourceType("", "Node", "nodes", False, ["v1"], status=True),
        ResourceType("", "Secret", "secrets", True, ["v1"]),
        ResourceType("", "ConfigMap", "configmaps", True, ["v1"]),
        ResourceType("", "Event", "events", True, ["v1"]),
        ResourceType("discovery.k8s.io", "EndpointSlice", "endpointslices", True, ["v1"]),
        ResourceType("coordination.k8s.io", "Lease", "leases", True, ["v1"]),
        # what the leader writes for a Gateway of class istio (kube/gateway_deployment.py)
        ResourceType("", "ServiceAccount", "serviceaccounts", True, ["v1"]),
        ResourceType("apps", "Deployment", "deployments", True, ["v1"], status=True),
        ResourceType("networking.istio.io", "Gateway", "gateways", True, list(ISTIO_NET), status=True),
        ResourceType("networking.istio.io", "VirtualService", "virtualservices", True, list(ISTIO_NET), status=True),
        ResourceType("networking.istio.io", "DestinationRule", "destinationrules", True, list(ISTIO_NET), status=True),
        ResourceType("networking.istio.io", "ServiceEntry", "serviceentries", True, list(ISTIO_NET), status=True),
        ResourceType("networking.istio.io", "Sidecar", "sidecars", True, list(ISTIO_NET), status=True),
        ResourceType("networking.istio.io", "WorkloadEntry", "workloadentries", True, list(ISTIO_NET), status=True),
        ResourceType("networking.istio.io", "WorkloadGroup", "workloadgroups", True, list(ISTIO_NET), status=True),
        # The Gateway API's standard channel (meshd serves it, docs/gateway-api.md).
        *(ResourceType(k.group, k.kind, GATEWAY_API_PLURALS[k.kind], k.namespaced, list(k.versions), status=True)
          for k in GATEWAY_API_KINDS),
        ResourceType("security.istio.io", "PeerAuthentication", "peerauthentications", True, ["v1", "v1beta1"],
                     status=True),
        ResourceType("security.istio.io", "AuthorizationPolicy", "authorizationpolicies", True, ["v1", "v1beta1"],
                     status=True),
        ResourceType("security.istio.io", "RequestAuthentication", "requestauthentications", True,
                     ["v1", "v1beta1"], status=True),
        # Kinds meshd watches only to report their objects (the Istio CRDs, the Gateway API's).
        *(ResourceType(k.group, k.kind, plural, k.namespaced, list(k.versions), status=True)
          for k, plural in WATCHED_UNSUPPORTED if plural not in _SERVED_HERE),
    ]
    # Every other CRD kind meshd watches (a kind newly served keeps being served here).
    have = {(t.group, t.plural) for t in out}
    out += [ResourceType(r.group, r.kind.kind, r.plural, r.kind.namespaced, list(r.kind.versions), status=True)
            for r in RESOURCES if r.needs_discovery and (r.group, r.plural) not in have]
    return out


# Not stored: a TokenReview is answered, never kept (as the API server does).
TOKEN_REVIEW_GROUP = "authentication.k8s.io"

@dataclass
class _Event:
    rv: int
    rtype: ResourceType
    type: str  # ADDED | MODIFIED | DELETED
    obj: dict  # the object after the change (the last state for DELETED)
    old: dict | None


@dataclass(eq=False)  # kept in a set by identity
class _Watch:
    handler: Any
    plural: str
    query: dict[str, str]
    cut: bool = False
    error: int = 0  # send an ERROR event with this code, then end the watch


def status(code: int, reason: str, message: str) -> dict:
    return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": message, "reason": reason, "code": code}


class FakeApiServer(RequestLog):
    def __init__(self, port: int = 0, history: int = 1000, bookmark_interval: float = 0.2,
                 gone: str = "event", host: str = "127.0.0.1"):
        self.host, self.port = host, port
        self.history_size = history
        self.bookmark_interval = bookmark_interval
        self.gone = gone  # "event": 200 + ERROR 410 event (watch cache); "http": HTTP 410
        self._types = {(t.group, t.plural): t for t in default_types()}
        self._preferred: dict[str, str] = {"networking.istio.io": "v1", "security.istio.io": "v1"}
        self._objects: dict[tuple[str, str], dict[tuple[str, str], dict]] = {k: {} for k in self._types}
        self._cond = threading.Condition(threading.RLock())
        self._rv = 1
        self._compacted = 0  # watches from a version below this get 410
        self._history: deque[_Event] = deque()
        self._continues: dict[str, tuple[int, list[dict]]] = {}
        self._watches: set[_Watch] = set()
        self._conns: set[socket.socket] = set()
        self._fail: list = [0, 500]
        self._outage = False
        self._closing = False
        self.requests: list[Request] = []
        self._requests_lock = self._cond
        self._tokens: dict[str, dict] = {}  # bearer token -> what a TokenReview says about it
        self._httpd: ThreadingHTTPServer | None = None
        from tests.support.kube_fixtures import STAND_IN, note

        note(STAND_IN)  # the test report lists the tests that used the stand-in
        self._thread: threading.Thread | None = None

    # --- lifecycle ----------------------------------------------------------------
    def start(self) -> FakeApiServer:
        httpd = _HTTPServer((self.host, self.port), _Handler)
        httpd.api = self
        self._httpd = httpd
        self.port = httpd.server_address[1]
        self._closing = False
        self._thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                        name=f"kubeapi-{self.port}", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is None:
            return
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        self._httpd.shutdown()
        for conn in list(self._conns):  # idle keep-alive connections and open watches
            _shutdown(conn)
        self._httpd.server_close()  # joins the handler threads
        self._thread.join(5)
        self._httpd = None

    def __enter__(self) -> FakeApiServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def configuration(self):
        from kubernetes import client
        cfg = client.Configuration(host=self.url)
        cfg.connection_pool_maxsize = 64
        cfg.retries = False  # connection errors surface at once; the source retries itself
        return cfg

    def kubeconfig(self, path):
        """A kubeconfig file at `path` for this server (plain HTTP, a token it never checks)."""
        import yaml

        path.write_text(yaml.safe_dump({
            "apiVersion": "v1", "kind": "Config", "current-context": "stand-in",
            "clusters": [{"name": "stand-in", "cluster": {"server": self.url}}],
            "users": [{"name": "meshd", "user": {"token": "test"}}],
            "contexts": [{"name": "stand-in", "context": {"cluster": "stand-in", "user": "meshd"}}],
        }))
        return path

    def api_client(self):
        """A client for this server (as the real server's `Kube.api_client()`)."""
        from kubernetes import client
        return client.ApiClient(self.configuration())

    # --- test hooks: objects --------------------------------------------------------
    def apply(self, obj: dict) -> dict:
        """Create or update `obj` (apiVersion, kind, metadata.name[, namespace]);
        returns the stored object (with its new resourceVersion). Without a `status` of
        its own, an update keeps the stored status (as `kubectl apply` does); with one, it
        sets it (how tests give a Pod its IP)."""
        rtype = self._type_of(obj.get("apiVersion", ""), obj["kind"])
        new = copy.deepcopy(obj)
        new.pop("apiVersion", None)
        md = new.setdefault("metadata", {})
        if rtype.namespaced:
            md.setdefault("namespace", "default")
        else:
            md.pop("namespace", None)
        key = (md.get("namespace", ""), md["name"])
        with self._cond:
            store = self._objects[(rtype.group, rtype.plural)]
            old = store.get(key)
            if old is not None and rtype.status and "status" not in new and "status" in old:
                new["status"] = copy.deepcopy(old["status"])  # like kubectl apply: status is a subresource
            if old is not None:
                md["uid"] = old["metadata"]["uid"]
                md["creationTimestamp"] = old["metadata"]["creationTimestamp"]
                md["generation"] = old["metadata"].get("generation", 1) + 1
            else:
                md.setdefault("uid", str(uuid.uuid4()))
                md.setdefault("creationTimestamp", time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
                md["generation"] = 1
            self._rv += 1
            md["resourceVersion"] = str(self._rv)
            store[key] = new
            self._record(_Event(self._rv, rtype, "MODIFIED" if old else "ADDED", new, old))
            return self._render(new, rtype, rtype.versions[0])

    def delete(self, api_version: str, kind: str, name: str, namespace: str | None = None) -> bool:
        rtype = self._type_of(api_version, kind)
        key = ((namespace or "default") if rtype.namespaced else "", name)
        with self._cond:
            old = self._objects[(rtype.group, rtype.plural)].pop(key, None)
            if old is None:
                return False
            self._rv += 1
            last = copy.deepcopy(old)
            last["metadata"]["resourceVersion"] = str(self._rv)
            self._record(_Event(self._rv, rtype, "DELETED", last, old))
            return True

    def objects(self, kind: str) -> list[dict]:
        with self._cond:
            return [copy.deepcopy(o) for t, objs in self._objects.items() if self._types[t].kind == kind
                    for o in objs.values()]

    @property
    def resource_version(self) -> str:
        return str(self._rv)

    # --- test hooks: failures -------------------------------------------------------
    def cut_watches(self) -> int:
        """Drop every open watch connection mid-stream (no end of the chunked body)."""
        with self._cond:
            watches = list(self._watches)
            for w in watches:
                w.cut = True
            self._cond.notify_all()
        for w in watches:
            _shutdown(w.handler.connection)
        return len(watches)

    def error_watches(self, code: int = 500) -> int:
        """Send every open watch an ERROR event with `code` and end it (as the API server
        does when, say, its storage fails)."""
        with self._cond:
            watches = list(self._watches)
            for w in watches:
                w.error = code
            self._cond.notify_all()
        return len(watches)

    def compact(self) -> None:
        """Forget all history: a watch from any version before now gets 410 Gone."""
        with self._cond:
            self._history.clear()
            self._compacted = self._rv
            self._continues.clear()
            self._cond.notify_all()

    def fail_next(self, n: int, code: int = 500) -> None:
        with self._cond:
            self._fail = [n, code]

    @contextlib.contextmanager
    def outage(self):
        """Every request fails (503) inside the block; open watches are cut on entry."""
        with self._cond:
            self._outage = True
        self.cut_watches()
        try:
            yield self
        finally:
            with self._cond:
                self._outage = False

    def serve_group(self, group: str, versions: list[str] | None = None, preferred: str | None = None,
                    served: bool = True) -> None:
        """Change what a group serves (CRD versions, installed or not)."""
        with self._cond:
            for t in self._types.values():
                if t.group == group:
                    t.served = served
                    if versions is not None:
                        t.versions = list(versions)
            if preferred is not None:
                self._preferred[group] = preferred

    def open_watches(self, plural: str | None = None) -> int:
        with self._cond:
            return sum(1 for w in self._watches if plural is None or w.plural == plural)

    def wait_watches(self, count: int, plural: str | None = None, timeout: float = 5.0) -> None:
        deadline = time.monotonic() + timeout
        while self.open_watches(plural) < count:
            if time.monotonic() > deadline:
                raise AssertionError(f"{count} watches of {plural or 'any kind'} not open within {timeout}s "
                                     f"(open: {self.open_watches(plural)})")
            time.sleep(0.01)

    def get(self, api_version: str, kind: str, name: str, namespace: str | None = None) -> dict | None:
        """The stored object (rendered at the kind's first version), or None."""
        rtype = self._type_of(api_version, kind)
        key = ((namespace or "default") if rtype.namespaced else "", name)
        with self._cond:
            obj = self._objects[(rtype.group, rtype.plural)].get(key)
            return self._render(obj, rtype, rtype.versions[0]) if obj is not None else None

    # --- test hooks: TokenReview ----------------------------------------------------
    def add_token(self, token: str, username: str, *, audiences: list[str] | tuple[str, ...] = ("istio-ca",),
                  groups: list[str] | None = None, uid: str | None = None) -> None:
        """Make `token` valid for TokenReview: it authenticates as `username`, for
        `audiences`. A service account's groups are filled in as Kubernetes does."""
        if groups is None:
            groups = ["system:authenticated"]
            parts = username.split(":")
            if len(parts) == 4 and parts[:2] == ["system", "serviceaccount"]:
                groups = ["system:serviceaccounts", f"system:serviceaccounts:{parts[2]}", "system:authenticated"]
        with self._cond:
            self._tokens[token] = {"username": username, "uid": uid or str(uuid.uuid4()), "groups": list(groups),
                                   "audiences": list(audiences)}

    def revoke_token(self, token: str) -> None:
        with self._cond:
            self._tokens.pop(token, None)

    # --- internals: state ----------------------------------------------------------
    def _type_of(self, api_version: str, kind: str) -> ResourceType:
        group = api_version.rpartition("/")[0] if "/" in api_version else ""
        for t in self._types.values():
            if t.group == group and t.kind == kind:
                return t
        raise KeyError(f"stand-in API server has no kind {api_version} {kind}")

    def _record(self, ev: _Event) -> None:
        self._history.append(ev)
        while len(self._history) > self.history_size:
            self._compacted = self._history.popleft().rv
        self._cond.notify_all()

    @staticmethod
    def _render(obj: dict, rtype: ResourceType, version: str, bare: bool = False) -> dict:
        out = copy.deepcopy(obj)
        if bare:  # list items of built-in kinds carry no apiVersion/kind
            out.pop("kind", None)
            return out
        return {"apiVersion": rtype.api_version(version), "kind": rtype.kind,
                **{k: v for k, v in out.items() if k not in ("apiVersion", "kind")}}

    def _groups(self) -> dict[str, list[str]]:
        groups: dict[str, list[str]] = {}
        for t in self._types.values():
            if t.served and t.group:
                vs = groups.setdefault(t.group, [])
                vs.extend(v for v in t.versions if v not in vs)
        return groups

    def _group_json(self, name: str, versions: list[str]) -> dict:
        preferred = self._preferred.get(name, versions[0])
        if preferred not in versions:
            preferred = versions[0]
        return {"name": name,
                "versions": [{"groupVersion": f"{name}/{v}", "version": v} for v in versions],
                "preferredVersion": {"groupVersion": f"{name}/{preferred}", "version": preferred}}

    # --- internals: HTTP -----------------------------------------------------------
    def handle_get(self, h: _Handler) -> None:
        self.handle(h, "GET")

    def handle(self, h: _Handler, method: str) -> None:
        url = urlsplit(h.path)
        query = dict(parse_qsl(url.query, keep_blank_values=True))
        body: Any = None
        length = int(h.headers.get("Content-Length") or 0)
        raw = h.rfile.read(length) if length else b""  # always read: the connection is kept alive
        request = Request(url.path, query, method)
        h.request_record = request
        if method in ("POST", "PUT", "PATCH"):
            try:
                body = json.loads(raw or b"null")
            except ValueError:
                with self._cond:
                    self.requests.append(request)
                return _send(h, 400, status(400, "BadRequest", "request body is not JSON"))
        with self._cond:
            self.requests.append(request)
            if self._closing:
                return _send(h, 503, status(503, "ServiceUnavailable", "shutting down"))
            if self._outage:
                return _send(h, 503, status(503, "ServiceUnavailable", "outage (test hook)"))
            if self._fail[0] > 0:
                self._fail[0] -= 1
                code = self._fail[1]
                return _send(h, code, status(code, "InternalError", "injected failure (test hook)"))
        parts = [p for p in url.path.split("/") if p]
        try:
            if method == "GET":
                self._route(h, parts, query)
            else:
                self._route_write(h, method, parts, body, h.headers.get("Content-Type") or "")
        except _NotFound as e:
            _send(h, 404, status(404, "NotFound", str(e) or "the server could not find the requested resource"))
        except _Failure as e:
            _send(h, e.code, status(e.code, e.reason, e.message))

    def _route(self, h, parts: list[str], query: dict[str, str]) -> None:
        if parts == ["api"]:
            return _send(h, 200, {"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": [
                {"clientCIDR": "0.0.0.0/0", "serverAddress": f"{self.host}:{self.port}"}]})
        if parts == ["apis"]:
            with self._cond:
                groups = [self._group_json(g, vs) for g, vs in sorted(self._groups().items())]
            return _send(h, 200, {"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
        if len(parts) == 2 and parts[0] == "apis":
            with self._cond:
                versions = self._groups().get(parts[1])
                if not versions:
                    raise _NotFound()
                return _send(h, 200, {"kind": "APIGroup", "apiVersion": "v1", **self._group_json(parts[1], versions)})
        if len(parts) >= 2 and parts[0] == "api" and parts[1] == "v1":
            group, version, rest = "", "v1", parts[2:]
        elif len(parts) >= 3 and parts[0] == "apis":
            group, version, rest = parts[1], parts[2], parts[3:]
        else:
            raise _NotFound()
        if not rest:
            return self._resource_list(h, group, version)
        ns = None
        if rest[0] == "namespaces" and len(rest) >= 3:
            ns, rest = rest[1], rest[2:]
        if len(rest) > 3 or (len(rest) == 3 and rest[2] != "status"):
            raise _NotFound()
        with self._cond:
            rtype = self._types.get((group, rest[0]))
            if rtype is None or not rtype.served or version not in rtype.versions or (ns and not rtype.namespaced):
                raise _NotFound()
            if len(rest) == 3 and not rtype.status:
                raise _NotFound()
        if len(rest) >= 2:
            return self._get(h, rtype, version, ns, rest[1])
        if query.get("watch") in ("true", "1"):
            return self._watch(h, rtype, version, ns, query)
        return self._list(h, rtype, version, ns, query)

    def _resource_list(self, h, group: str, version: str) -> None:
        with self._cond:
            types = [t for t in self._types.values() if t.group == group and t.served and version in t.versions]
        if not types:
            raise _NotFound()
        _send(h, 200, {"kind": "APIResourceList", "apiVersion": "v1",
                       "groupVersion": f"{group}/{version}" if group else version,
                       "resources": [{"name": t.plural, "singularName": t.kind.lower(), "namespaced": t.namespaced,
                                      "kind": t.kind, "verbs": ["get", "list", "watch"]} for t in types]})

    def _get(self, h, rtype: ResourceType, version: str, ns: str | None, name: str) -> None:
        with self._cond:
            obj = self._objects[(rtype.group, rtype.plural)].get((ns or "", name))
        if obj is None:
            raise _NotFound(f'{rtype.plural} "{name}" not found')
        _send(h, 200, self._render(obj, rtype, version))

    # --- internals: writes -----------------------------------------------------------
    def _route_write(self, h, method: str, parts: list[str], body: Any, content_type: str) -> None:
        if parts == ["apis", TOKEN_REVIEW_GROUP, "v1", TOKEN_REVIEW_PLURAL]:
            if method != "POST":
                raise _Failure(405, "MethodNotAllowed", f"{method} is not supported on tokenreviews")
            return self._token_review(h, body)
        if len(parts) >= 2 and parts[0] == "api" and parts[1] == "v1":
            group, version, rest = "", "v1", parts[2:]
        elif len(parts) >= 3 and parts[0] == "apis":
            group, version, rest = parts[1], parts[2], parts[3:]
        else:
            raise _NotFound()
        ns = None
        if len(rest) >= 3 and rest[0] == "namespaces":
            ns, rest = rest[1], rest[2:]
        if not rest or len(rest) > 3 or (len(rest) == 3 and rest[2] != "status"):
            raise _NotFound()
        with self._cond:
            rtype = self._types.get((group, rest[0]))
            if rtype is None or not rtype.served or version not in rtype.versions or bool(ns) != rtype.namespaced:
                raise _NotFound()
        status_only = len(rest) == 3
        if status_only and not rtype.status:
            raise _NotFound()
        name = rest[1] if len(rest) > 1 else None
        if method == "POST":
            if name is not None:
                raise _Failure(405, "MethodNotAllowed", "create is a POST to the collection")
            return _send(h, 201, self._create(rtype, version, ns, body))
        if name is None:
            raise _Failure(405, "MethodNotAllowed", f"{method} needs an object name")
        if method == "PUT":
            return _send(h, 200, self._update(rtype, version, ns, name, body, status_only))
        if method == "PATCH" and content_type.startswith("application/apply-patch"):
            return _send(h, 200, self._server_side_apply(rtype, version, ns, name, body))
        if method == "PATCH":
            if not content_type.startswith(("application/merge-patch+json", "application/strategic-merge-patch+json")):
                raise _Failure(415, "UnsupportedMediaType", f"the stand-in only speaks merge patches, not {content_type!r}")
            return _send(h, 200, self._patch(rtype, version, ns, name, body, status_only))
        if method == "DELETE":
            return _send(h, 200, self._delete_http(rtype, version, ns, name))
        raise _Failure(405, "MethodNotAllowed", f"{method} is not supported")

    def _create(self, rtype: ResourceType, version: str, ns: str | None, body: Any) -> dict:
        new = self._incoming(rtype, version, ns, body)
        md = new["metadata"]
        if md.get("resourceVersion"):
            raise _Failure(400, "BadRequest", "resourceVersion should not be set on objects to be created")
        if not md.get("name"):
            if not md.get("generateName"):
                raise _Failure(422, "Invalid", f"{rtype.kind} is invalid: metadata.name: Required value: name or generateName is required")
            md["name"] = md["generateName"] + uuid.uuid4().hex[:5]
        _validate(rtype, new)
        key = (ns or "", md["name"])
        with self._cond:
            if key in self._objects[(rtype.group, rtype.plural)]:
                raise _Failure(409, "AlreadyExists", f'{_qualified(rtype)} "{md["name"]}" already exists')
            return self._render(self._put(rtype, key, new, None), rtype, version)

    def _update(self, rtype: ResourceType, version: str, ns: str | None, name: str, body: Any, status_only: bool) -> dict:
        new = self._incoming(rtype, version, ns, body)
        if new["metadata"].get("name") != name:
            raise _Failure(400, "BadRequest", "the name of the object does not match the name on the URL")
        key = (ns or "", name)
        with self._cond:
            old = self._objects[(rtype.group, rtype.plural)].get(key)
            if old is None:
                raise _NotFound(f'{_qualified(rtype)} "{name}" not found')
            self._precondition(rtype, name, old, new["metadata"].get("resourceVersion"))
            if status_only:
                merged = copy.deepcopy(old)
                merged["status"] = new.get("status")
                new = merged
            elif rtype.status:
                new.pop("status", None)
                if "status" in old:
                    new["status"] = copy.deepcopy(old["status"])
            _validate(rtype, new)
            return self._render(self._put(rtype, key, new, old), rtype, version)

    def _patch(self, rtype: ResourceType, version: str, ns: str | None, name: str, patch: Any, status_only: bool) -> dict:
        if not isinstance(patch, dict):
            raise _Failure(400, "BadRequest", "a merge patch must be a JSON object")
        key = (ns or "", name)
        with self._cond:
            old = self._objects[(rtype.group, rtype.plural)].get(key)
            if old is None:
                raise _NotFound(f'{_qualified(rtype)} "{name}" not found')
            self._precondition(rtype, name, old, (patch.get("metadata") or {}).get("resourceVersion"))
            patched = _merge_patch(copy.deepcopy(old), patch)
            if status_only:
                new = copy.deepcopy(old)
                if patched.get("status") is None:
                    new.pop("status", None)
                else:
                    new["status"] = patched["status"]
            else:
                new = patched
                new["metadata"] = {**patched.get("metadata", {}), "name": name}
                if rtype.status:
                    new.pop("status", None)
                    if "status" in old:
                        new["status"] = copy.deepcopy(old["status"])
            new.pop("apiVersion", None)
            _validate(rtype, new)
            return self._render(self._put(rtype, key, new, old), rtype, version)

    def _server_side_apply(self, rtype: ResourceType, version: str, ns: str | None, name: str, body: Any) -> dict:
        """An apply patch (JSON): creates the object when absent, else merges it in (field
        managers are not tracked: what an applier stops setting stays)."""
        if not isinstance(body, dict) or (body.get("metadata") or {}).get("name") != name:
            raise _Failure(400, "BadRequest", "an apply patch is the object, named as on the URL")
        with self._cond:
            exists = (ns or "", name) in self._objects[(rtype.group, rtype.plural)]
        if not exists:
            return self._create(rtype, version, ns, body)
        return self._patch(rtype, version, ns, name, body, False)

    def _delete_http(self, rtype: ResourceType, version: str, ns: str | None, name: str) -> dict:
        with self._cond:
            old = self._objects[(rtype.group, rtype.plural)].get((ns or "", name))
            if old is None:
                raise _NotFound(f'{_qualified(rtype)} "{name}" not found')
            self.delete(rtype.api_version(version), rtype.kind, name, ns)
            return self._render(old, rtype, version)

    def _incoming(self, rtype: ResourceType, version: str, ns: str | None, body: Any) -> dict:
        """A request body as a stored object (no apiVersion), checked against the URL."""
        if not isinstance(body, dict):
            raise _Failure(400, "BadRequest", "the body must be a JSON object")
        if body.get("kind") not in (None, rtype.kind):
            raise _Failure(400, "BadRequest", f"kind {body.get('kind')!r} does not match {rtype.kind}")
        if body.get("apiVersion") not in (None, rtype.api_version(version)):
            raise _Failure(400, "BadRequest", f"apiVersion {body.get('apiVersion')!r} does not match {rtype.api_version(version)}")
        new = copy.deepcopy(body)
        new.pop("apiVersion", None)
        new["kind"] = rtype.kind
        md = new.setdefault("metadata", {})
        if not isinstance(md, dict):
            raise _Failure(400, "BadRequest", "metadata must be an object")
        if rtype.namespaced:
            if md.get("namespace") not in (None, "", ns):
                raise _Failure(400, "BadRequest", "the namespace of the provided object does not match the namespace sent on the request")
            md["namespace"] = ns
        return new

    @staticmethod
    def _precondition(rtype: ResourceType, name: str, old: dict, rv: Any) -> None:
        if rv and str(rv) != old["metadata"]["resourceVersion"]:
            raise _Failure(409, "Conflict", f'Operation cannot be fulfilled on {_qualified(rtype)} "{name}": the object has '
                                            "been modified; please apply your changes to the latest version and try again")

    def _put(self, rtype: ResourceType, key: tuple[str, str], new: dict, old: dict | None) -> dict:
        """Store `new` (caller holds the lock): server-set metadata, a new resourceVersion,
        a watch event. metadata.generation moves when anything but metadata/status does."""
        md = new["metadata"]
        if old is not None:
            omd = old["metadata"]
            md["uid"], md["creationTimestamp"] = omd["uid"], omd["creationTimestamp"]
            changed = _content(new) != _content(old)
            md["generation"] = omd.get("generation", 1) + (1 if changed else 0)
        else:
            md["uid"] = str(uuid.uuid4())
            md["creationTimestamp"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
            md["generation"] = 1
        self._rv += 1
        md["resourceVersion"] = str(self._rv)
        self._objects[(rtype.group, rtype.plural)][key] = new
        self._record(_Event(self._rv, rtype, "MODIFIED" if old else "ADDED", new, old))
        return new

    def _token_review(self, h, body: Any) -> None:
        spec = (body or {}).get("spec") if isinstance(body, dict) else None
        token = (spec or {}).get("token")
        if not isinstance(token, str) or not token:
            raise _Failure(422, "Invalid", "TokenReview.authentication.k8s.io is invalid: spec.token: Required value")
        wanted = [a for a in (spec.get("audiences") or []) if isinstance(a, str)]
        with self._cond:
            info = copy.deepcopy(self._tokens.get(token))
        result: dict[str, Any] = {"user": {}}
        if info is None:
            result["error"] = "[invalid bearer token, token lookup failed]"
        else:
            audiences = [a for a in wanted if a in info["audiences"]] if wanted else info["audiences"]
            if wanted and not audiences:
                result["error"] = (f"[invalid bearer token, token audiences {json.dumps(info['audiences'])} is invalid "
                                   f"for the target audiences {json.dumps(wanted)}]")
            else:
                result = {"authenticated": True, "audiences": audiences,
                          "user": {"username": info["username"], "uid": info["uid"], "groups": info["groups"]}}
        _send(h, 201, {"kind": "TokenReview", "apiVersion": f"{TOKEN_REVIEW_GROUP}/v1",
                       "metadata": {"creationTimestamp": None}, "spec": spec, "status": result})

    def _matching(self, rtype: ResourceType, ns: str | None, query: dict[str, str]):
        labels, fields = label_matcher(query.get("labelSelector")), field_matcher(query.get("fieldSelector"))
        return lambda o: (ns is None or o["metadata"].get("namespace") == ns) and labels(o) and fields(o)

    def _list(self, h, rtype: ResourceType, version: str, ns: str | None, query: dict[str, str]) -> None:
        match = self._matching(rtype, ns, query)
        limit = int(query.get("limit") or 0)
        cont = query.get("continue")
        with self._cond:
            if cont:
                token, _, offset_s = cont.partition(":")
                snap = self._continues.get(token)
                if snap is None:
                    return _send(h, 410, status(410, "Expired", "The provided continue parameter is too old "
                                                "to display a consistent list result."))
                offset = int(offset_s)
            else:
                items = sorted((o for o in self._objects[(rtype.group, rtype.plural)].values() if match(o)),
                               key=lambda o: (o["metadata"].get("namespace", ""), o["metadata"]["name"]))
                snap, token, offset = (self._rv, [copy.deepcopy(o) for o in items]), uuid.uuid4().hex, 0
            rv, items = snap
            page = items[offset:offset + limit] if limit else items[offset:]
            meta: dict[str, Any] = {"resourceVersion": str(rv)}
            if limit and offset + limit < len(items):
                self._continues[token] = snap
                meta["continue"] = f"{token}:{offset + limit}"
                meta["remainingItemCount"] = len(items) - offset - limit
        body = {"kind": rtype.kind + "List", "apiVersion": rtype.api_version(version), "metadata": meta,
                "items": [self._render(o, rtype, version, bare=True) for o in page]}
        _send(h, 200, body)

    def _view(self, ev: _Event, ns: str | None, labels) -> tuple[str, dict] | None:
        """The event as one watcher sees it (namespace and label selector applied)."""
        if ns is not None and ev.obj["metadata"].get("namespace") != ns:
            return None
        now, before = labels(ev.obj), ev.old is not None and labels(ev.old)
        if ev.type == "MODIFIED":
            if now and before:
                return "MODIFIED", ev.obj
            if now:
                return "ADDED", ev.obj
            return ("DELETED", ev.obj) if before else None
        return (ev.type, ev.obj) if now else None

    def _watch(self, h, rtype: ResourceType, version: str, ns: str | None, query: dict[str, str]) -> None:
        labels = label_matcher(query.get("labelSelector"))
        fields = field_matcher(query.get("fieldSelector"))
        sel = lambda o: labels(o) and fields(o)
        timeout = float(query.get("timeoutSeconds") or 1800)
        bookmarks = query.get("allowWatchBookmarks") in ("true", "1")
        rv_param = query.get("resourceVersion", "")
        initial: list[tuple[str, dict]] = []
        with self._cond:
            if rv_param in ("", "0"):  # "start now": the current state as ADDED events first
                store = self._objects[(rtype.group, rtype.plural)]
                initial = [("ADDED", copy.deepcopy(o)) for o in store.values()
                           if (ns is None or o["metadata"].get("namespace") == ns) and sel(o)]
                pos = self._rv
            else:
                pos = int(rv_param)
            gone = pos < self._compacted
        if gone and self.gone == "http":
            return _send(h, 410, status(410, "Expired", f"too old resource version: {pos} ({self._compacted})"))
        if h.request_record is not None:
            h.request_record.status = 200
        h.send_response(200)
        h.send_header("Content-Type", "application/json")
        h.send_header("Transfer-Encoding", "chunked")
        h.end_headers()
        watch = _Watch(h, rtype.plural, query)
        with self._cond:
            self._watches.add(watch)
        try:
            out = list(initial)
            deadline = time.monotonic() + timeout
            next_bookmark = time.monotonic() + self.bookmark_interval
            while True:
                if watch.error:
                    _chunk(h, {"type": "ERROR", "object": status(watch.error, "InternalError", "injected (test hook)")})
                    _chunk_end(h)
                    return
                if gone:
                    _chunk(h, {"type": "ERROR", "object": status(
                        410, "Expired", f"too old resource version: {pos} ({self._compacted})")})
                    _chunk_end(h)
                    return
                for typ, obj in out:
                    _chunk(h, {"type": typ, "object": self._render(obj, rtype, version)})
                now = time.monotonic()
                if bookmarks and now >= next_bookmark:
                    _chunk(h, {"type": "BOOKMARK", "object": {"kind": rtype.kind, "apiVersion": rtype.api_version(version),
                                                              "metadata": {"resourceVersion": str(pos)}}})
                    next_bookmark = now + self.bookmark_interval
                if now >= deadline:
                    _chunk_end(h)
                    return
                with self._cond:
                    while True:
                        if self._closing or watch.cut:
                            h.close_connection = True
                            return
                        if watch.error:
                            break
                        if pos < self._compacted:
                            gone, out = True, []
                            break
                        out = []
                        for ev in self._history:
                            if ev.rv > pos and ev.rtype is rtype:
                                seen = self._view(ev, ns, sel)
                                if seen:
                                    out.append(seen)
                        pos = self._rv
                        now = time.monotonic()
                        if out or now >= deadline or (bookmarks and now >= next_bookmark):
                            break
                        wake = min(deadline, next_bookmark) if bookmarks else deadline
                        self._cond.wait(max(0.001, wake - now))
        except OSError:
            h.close_connection = True
        finally:
            with self._cond:
                self._watches.discard(watch)


class _NotFound(Exception):
    pass


class _Failure(Exception):
    def __init__(self, code: int, reason: str, message: str):
        super().__init__(message)
        self.code, self.reason, self.message = code, reason, message


def _qualified(rtype: ResourceType) -> str:
    return f"{rtype.plural}.{rtype.group}" if rtype.group else rtype.plural


def _content(obj: dict) -> dict:
    return {k: v for k, v in obj.items() if k not in ("metadata", "status", "apiVersion", "kind")}


def _merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    if not isinstance(target, dict):
        target = {}
    for k, v in patch.items():
        if v is None:
            target.pop(k, None)
        else:
            target[k] = _merge_patch(target.get(k), v)
    return target


_MICRO_TIME = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}(Z|[+-]\d{2}:\d{2})$")
_TIME = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})$")


def _validate(rtype: ResourceType, obj: dict) -> None:
    """The API server's validation of the kinds meshd writes, as far as a client can get it wrong."""
    def invalid(field: str, why: str) -> _Failure:
        return _Failure(422, "Invalid", f'{rtype.kind} "{obj["metadata"].get("name")}" is invalid: {field}: {why}')

    if rtype.kind == "Lease":
        spec = obj.get("spec") or {}
        if not isinstance(spec, dict):
            raise invalid("spec", "must be an object")
        for f in ("acquireTime", "renewTime"):
            if spec.get(f) is not None and not (isinstance(spec[f], str) and _MICRO_TIME.match(spec[f])):
                raise invalid(f"spec.{f}", f"{spec[f]!r} is not a MicroTime (RFC 3339 with microseconds)")
        for f in ("leaseDurationSeconds", "leaseTransitions"):
            v = spec.get(f)
            if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < (1 if f == "leaseDurationSeconds" else 0)):
                raise invalid(f"spec.{f}", f"{v!r} must be a {'positive' if f == 'leaseDurationSeconds' else 'non-negative'} integer")
        if spec.get("holderIdentity") is not None and not isinstance(spec["holderIdentity"], str):
            raise invalid("spec.holderIdentity", "must be a string")
    elif rtype.kind == "Secret":
        for k, v in (obj.get("data") or {}).items():
            try:
                base64.b64decode(v, validate=True)
            except (ValueError, TypeError):
                raise invalid(f"data[{k}]", "must be base64") from None
    elif rtype.kind == "ConfigMap":
        for k, v in (obj.get("data") or {}).items():
            if not isinstance(v, str):
                raise invalid(f"data[{k}]", "must be a string")
    elif rtype.kind == "Event":
        inv = obj.get("involvedObject")
        if not isinstance(inv, dict) or not inv.get("kind") or not inv.get("name"):
            raise invalid("involvedObject", "Required value: kind and name")
        if inv.get("namespace", obj["metadata"]["namespace"]) != obj["metadata"]["namespace"]:
            raise invalid("involvedObject.namespace", "does not match event.namespace")
        for f in ("firstTimestamp", "lastTimestamp"):
            if obj.get(f) is not None and not (isinstance(obj[f], str) and _TIME.match(obj[f])):
                raise invalid(f, f"{obj[f]!r} is not an RFC 3339 time")
        if obj.get("type") not in (None, "Normal", "Warning"):
            raise invalid("type", "must be Normal or Warning")
    if rtype.status and rtype.group.endswith("istio.io") and obj.get("status") is not None:
        st = obj["status"]
        if not isinstance(st, dict):
            raise invalid("status", "must be an object")
        for i, c in enumerate(st.get("conditions") or []):
            for f in ("type", "status", "reason", "message"):
                if c.get(f) is not None and not isinstance(c[f], str):
                    raise invalid(f"status.conditions[{i}].{f}", "must be a string")
            if c.get("lastTransitionTime") is not None and not _TIME.match(str(c["lastTransitionTime"])):
                raise invalid(f"status.conditions[{i}].lastTransitionTime", "must be a date-time")
        for i, m in enumerate(st.get("validationMessages") or []):
            if m.get("level") not in (None, "UNKNOWN", "ERROR", "WARNING", "INFO"):
                raise invalid(f"status.validationMessages[{i}].level", "Unsupported value")


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = False  # server_close() joins every handler thread
    block_on_close = True
    allow_reuse_address = True
    api: FakeApiServer

    def handle_error(self, request, client_address) -> None:
        pass  # clients going away mid-response are part of the tests


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive and chunked watches, as the client expects
    server: _HTTPServer

    def setup(self) -> None:
        super().setup()
        with self.server.api._cond:
            self.server.api._conns.add(self.connection)

    def finish(self) -> None:
        with self.server.api._cond:
            self.server.api._conns.discard(self.connection)
        try:
            super().finish()
        except OSError:
            pass

    request_record: Request | None = None

    def do_GET(self) -> None:
        self.server.api.handle(self, "GET")

    def do_POST(self) -> None:
        self.server.api.handle(self, "POST")

    def do_PUT(self) -> None:
        self.server.api.handle(self, "PUT")

    def do_PATCH(self) -> None:
        self.server.api.handle(self, "PATCH")

    def do_DELETE(self) -> None:
        self.server.api.handle(self, "DELETE")

    def log_message(self, format: str, *args) -> None:
        pass


def _send(h: _Handler, code: int, body: dict) -> None:
    if h.request_record is not None:
        h.request_record.status = code
    data = json.dumps(body).encode()
    h.send_response(code)
    h.send_header("Content-Type", "application/json")
    h.send_header("Content-Length", str(len(data)))
    h.end_headers()
    h.wfile.write(data)


def _chunk(h: _Handler, event: dict) -> None:
    data = json.dumps(event).encode() + b"\n"
    h.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))


def _chunk_end(h: _Handler) -> None:
    h.wfile.write(b"0\r\n\r\n")


def _shutdown(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
