"""What the Kubernetes source watches: one entry per kind, how to list/watch it, which
API version to use, the store location of each object and how an API object becomes a
document for the parse gate.

Kept apart from the list/watch loop (reflector.py) so the table is easy to read and
to extend (Secrets are in it already, watched only on request until the parse gate
learns them).
"""
from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..config import kinds
from ..names import GATEWAY_API_GROUP
from .api import path
from .http import Http, StatusError, as_http

# Not a served kind yet: the parse gate skips Secrets quietly, so watching them is
# harmless, but it costs memory and needs RBAC on Secrets; hence opt-in (watch_secrets).
SECRET = kinds.Kind("", "Secret", ("v1",))

# Fields that change without the object's configuration changing. Dropping them keeps
# the content hash (ConfigObject.generation) stable across relists and restarts, so a
# relist of unchanged objects is not seen as a change and xDS versions stay the same.
_VOLATILE_METADATA = ("managedFields", "resourceVersion")

Lister = Callable[..., Any]  # (**query) -> urllib3 response, not preloaded; StatusError for a non-2xx answer


@dataclass(frozen=True)
class KubeResource:
    kind: kinds.Kind
    plural: str
    # Whether `--namespaces` and `--label-selector` limit what is watched. Not for Nodes:
    # they are where pods run, not configuration, and a pod's Node is needed whatever it
    # is labelled.
    scoped: bool = True
    # Watched only to report its objects (a kind meshd does not serve): a cluster without
    # its CRD is the common case, not worth a warning.
    optional: bool = False
    # Served, but its CRDs are often not installed (the Gateway API): a missing CRD is
    # logged at debug level, as for the optional kinds.
    crd_optional: bool = False

    @property
    def group(self) -> str:
        return self.kind.group

    @property
    def name(self) -> str:
        return self.kind.kind

    @property
    def ident(self) -> str:
        """The name of its watch streams and stats: the kind, qualified by its group when
        only reported or of the Gateway API (which has a Gateway too)."""
        return f"{self.name}.{self.group}" if self.optional or self.group == GATEWAY_API_GROUP else self.name

    @property
    def needs_discovery(self) -> bool:
        # CRDs may be installed at any subset of versions; built-in kinds are fixed.
        return kinds.is_mesh_group(self.group)

    def api_version(self, version: str) -> str:
        return f"{self.group}/{version}" if self.group else version

    def location(self, namespace: str | None, name: str) -> str:
        """The store location of one object: its API path at the kind's canonical
        (first-listed) version, whatever version is watched. The API server serves one
        object at every version, so the location must not depend on the version, or a
        change of watched version would show the same object twice."""
        version = self.kind.versions[0]
        base = f"/apis/{self.group}/{version}" if self.group else f"/api/{version}"
        if self.kind.namespaced:
            return f"k8s:{base}/namespaces/{namespace or ''}/{self.plural}/{name}"
        return f"k8s:{base}/{self.plural}/{name}"

    def list_path(self, version: str, namespace: str | None) -> str:
        """The collection of this kind at `version`, in `namespace` or all."""
        return path(self.group, version, self.plural, namespace if namespace is not None and self.kind.namespaced else None)

    def lister(self, api: Http, version: str, namespace: str | None) -> Lister:
        """A list/watch of this kind (all namespaces, or one) by path, returning the raw
        response: the JSON as the API server sent it keeps camelCase field names, which
        is what the parse gate and Istio's schemas expect, and no typed models are made
        only to be turned back into dicts."""
        return _path_lister(api, self.list_path(version, namespace))


# list/watch keywords (as client-go and the generated clients name them) -> query parameters
_QUERY = {"label_selector": "labelSelector", "field_selector": "fieldSelector", "limit": "limit",
          "_continue": "continue", "resource_version": "resourceVersion", "watch": "watch",
          "allow_watch_bookmarks": "allowWatchBookmarks", "timeout_seconds": "timeoutSeconds"}


def _path_lister(api: Http, path: str) -> Lister:
    """A list/watch of `path` with those keywords: the urllib3 response of a 2xx answer
    (not preloaded), StatusError for any other (its connection handed back)."""
    def call(_request_timeout: Any = None, **query: Any) -> Any:
        resp = api.request("GET", path, query=[(_QUERY[k], v) for k, v in query.items()], timeout=_request_timeout)
        if not 200 <= resp.status <= 299:
            try:
                body = resp.read()
            finally:
                resp.release_conn()
            raise StatusError(resp.status, resp.reason or "", body or b"")
        return resp
    return call


def _resource(kind: kinds.Kind, plural: str, scoped: bool = True) -> KubeResource:
    return KubeResource(kind, plural, scoped)


RESOURCES: tuple[KubeResource, ...] = (
    _resource(kinds.NAMESPACE, "namespaces"),
    _resource(kinds.SERVICE, "services"),
    _resource(kinds.POD, "pods"),
    _resource(kinds.ENDPOINT_SLICE, "endpointslices"),
    _resource(kinds.NODE, "nodes", scoped=False),  # name + topology labels only (endpoint locality)
    _resource(kinds.GATEWAY, "gateways"),
    _resource(kinds.VIRTUAL_SERVICE, "virtualservices"),
    _resource(kinds.DESTINATION_RULE, "destinationrules"),
    _resource(kinds.SIDECAR, "sidecars"),
    _resource(kinds.SERVICE_ENTRY, "serviceentries"),
    _resource(kinds.WORKLOAD_ENTRY, "workloadentries"),
    _resource(kinds.WORKLOAD_GROUP, "workloadgroups"),
    _resource(kinds.PEER_AUTHENTICATION, "peerauthentications"),
    _resource(kinds.AUTHORIZATION_POLICY, "authorizationpolicies"),
    _resource(kinds.REQUEST_AUTHENTICATION, "requestauthentications"),
) + tuple(KubeResource(kind, plural, crd_optional=True) for kind, plural in (
    (kinds.ENVOY_FILTER, "envoyfilters"),  # optional: an install without Istio's CRD has none
    (kinds.TELEMETRY, "telemetries"),
    (kinds.GATEWAY_CLASS, "gatewayclasses"),
    (kinds.K8S_GATEWAY, "gateways"),
    (kinds.HTTP_ROUTE, "httproutes"),
    (kinds.GRPC_ROUTE, "grpcroutes"),
    (kinds.TCP_ROUTE, "tcproutes"),
    (kinds.TLS_ROUTE, "tlsroutes"),
    (kinds.REFERENCE_GRANT, "referencegrants"),
)) + tuple(KubeResource(kind, plural, optional=True) for kind, plural in kinds.WATCHED_UNSUPPORTED)
SECRETS = _resource(SECRET, "secrets")
# The mesh config: ConfigMap `istio` of the root namespace (read raw, never through the
# parse gate or the store: sources/meshconfig.py turns it into a MeshConfig).
CONFIG_MAP = kinds.Kind("", "ConfigMap", ("v1",))
MESH_CONFIG_MAP = _resource(CONFIG_MAP, "configmaps", scoped=False)
MESH_CONFIGMAP_NAME = "istio"  # sources/meshconfig.py CONFIGMAP_NAME (not imported: kube/prefetch.py's path)
# The injection values (`values`, `config`), read raw the same way (admission/inject.py).
INJECTOR_CONFIGMAP_NAME = "istio-sidecar-injector"


def read_json(resp: Any) -> Any:
    """Body of a raw (_preload_content=False) response, connection handed back to the pool."""
    try:
        return json.loads(resp.data)
    finally:
        resp.release_conn()


class ListStopped(Exception):
    """`list_pages` was told to stop between pages."""


def list_pages(lister: Lister, query: dict[str, Any], page_size: int, request_timeout: float,
               stopped: Callable[[], bool] = lambda: False) -> tuple[list[dict[str, Any]], str]:
    """A complete (paged) list: every item and the list's resourceVersion. A continue token
    that expired between pages (410) starts the list again, once; any other answer than
    2xx raises StatusError."""
    items: list[dict[str, Any]] = []
    cont: str | None = None
    restarted = False
    while True:
        if stopped():  # a long paged list must not outlive its caller
            raise ListStopped()
        page = {**query, "_request_timeout": request_timeout}
        if page_size:
            page["limit"] = page_size
        if cont:
            page["_continue"] = cont
        try:
            body = read_json(lister(**page))
        except StatusError as e:
            if e.status == 410 and cont and not restarted:
                items, cont, restarted = [], None, True
                continue
            raise
        items.extend(body.get("items") or [])
        meta = body.get("metadata") or {}
        cont = meta.get("continue") or None
        if not cont:
            return items, str(meta.get("resourceVersion") or "")


def named_in(names: frozenset[str]) -> Callable[[dict[str, Any]], bool]:
    """A client-side filter: objects of these names only."""
    return lambda obj: (obj.get("metadata") or {}).get("name") in names


@dataclass(frozen=True)
class StreamSpec:
    """One list+watch: a kind, in one namespace or all, with the server-side selectors and
    (Namespaces limited by --namespaces) a client-side filter."""

    resource: KubeResource
    namespace: str | None
    label_selector: str | None = None
    field_selector: str | None = None
    allowed_names: frozenset[str] | None = None  # accept only objects of these names
    raw_name: str = ""  # a ConfigMap read raw (by name), not config of the store

    def key(self) -> tuple[str, str, str, str]:
        """What identifies its list, whatever API version is served: kind, namespace, selectors."""
        return (self.resource.ident, self.namespace or "", self.label_selector or "", self.field_selector or "")


def stream_specs(resources: tuple[KubeResource, ...], namespaces: list[str] | None, label_selector: str | None,
                 raw_maps: tuple[str, ...], raw_namespace: str) -> list[StreamSpec]:
    """The streams a source with these settings watches (kube/source.py), also what the
    prefetch asks for (kube/prefetch.py). Nodes and other unscoped kinds are watched whole,
    whatever the namespaces and label selector say."""
    out: list[StreamSpec] = []
    for res in resources:
        selector = label_selector if res.scoped else None
        if namespaces is not None and res.scoped:
            if res.kind.namespaced:
                out += [StreamSpec(res, ns, selector) for ns in namespaces]
            else:  # Namespaces are cluster-scoped: one watch, filtered here
                out.append(StreamSpec(res, None, selector, allowed_names=frozenset(namespaces)))
        else:
            out.append(StreamSpec(res, None, selector))
    out += [StreamSpec(MESH_CONFIG_MAP, raw_namespace, field_selector=f"metadata.name={name}",
                       allowed_names=frozenset({name}), raw_name=name) for name in raw_maps]
    return out


class Discovery:
    """Discovery documents (`/apis`, `/apis/<group>/<version>`) shared by the reflectors of
    one source, each fetched once and kept `max_age` seconds: at start some twenty Istio
    and Gateway API kinds would otherwise each fetch `/apis` and their group's resource
    list (forty requests and parses where six do, on the start-up path). Thread-safe: a
    reflector asking for a document being fetched waits for that fetch. A failed fetch
    is not kept."""

    def __init__(self, api: Http, max_age: float = 5.0):
        self._api = as_http(api)
        self.max_age = max_age
        self._lock = threading.Lock()
        self._paths: dict[str, threading.Lock] = {}  # one fetch of a path at a time
        self._docs: dict[str, tuple[float, Any]] = {}  # path -> (when fetched, document)
        self.fetches = 0

    def documents(self) -> dict[str, tuple[float, Any]]:
        """What was fetched: path -> (time.monotonic() when, document), for `seed`."""
        with self._lock:
            return dict(self._docs)

    def seed(self, documents: dict[str, tuple[float, Any]]) -> None:
        """Documents fetched by another Discovery of this machine (the prefetch's child:
        time.monotonic() is the system's, so their age holds here)."""
        with self._lock:
            for path_, got in documents.items():
                if path_ not in self._docs:
                    self._docs[path_] = got

    def get(self, path_: str, request_timeout: float) -> Any:
        with self._lock:
            fetching = self._paths.setdefault(path_, threading.Lock())
        with fetching:
            got = self._docs.get(path_)
            if got is not None and time.monotonic() - got[0] < self.max_age:
                return got[1]
            self.fetches += 1
            doc = read_json(_path_lister(self._api, path_)(_request_timeout=request_timeout))
            self._docs[path_] = (time.monotonic(), doc)
            return doc


def served_version(api: Http, res: KubeResource, request_timeout: float,
                   discovery: Discovery | None = None) -> str | None:
    """The version to watch `res` at, or None if the cluster does not serve it (CRD not
    installed). The group's preferredVersion when meshd understands it, else the first
    of the kind's versions (v1, v1beta1, v1alpha3) the group serves; a version counts
    only if its resource list names the kind's plural (a group can outlive a CRD).
    `discovery`: documents shared with other reflectors (else fetched here)."""
    if not res.needs_discovery:
        return res.kind.versions[0]

    def fetch(path_: str) -> Any:
        if discovery is not None:
            return discovery.get(path_, request_timeout)
        return read_json(_path_lister(as_http(api), path_)(_request_timeout=request_timeout))

    groups = fetch("/apis")
    group = next((g for g in groups.get("groups") or [] if g.get("name") == res.group), None)
    if group is None:
        return None
    served = [v.get("version") for v in group.get("versions") or []]
    preferred = (group.get("preferredVersion") or {}).get("version")
    candidates: list[str] = [preferred] if preferred in res.kind.versions else []
    candidates += [v for v in res.kind.versions if v in served and v != preferred]
    for version in candidates:
        try:
            listing = fetch(f"/apis/{res.group}/{version}")
        except StatusError as e:
            if e.status == 404:
                continue
            raise
        if any(r.get("name") == res.plural for r in listing.get("resources") or []):
            return version
    return None


def as_document(obj: dict[str, Any], api_version: str, kind: str) -> dict[str, Any]:
    """An API object as the parse gate wants it. List items come without apiVersion and
    kind (the list carries them), so they are filled in from the version we asked for.
    An Istio (or Gateway API) object's `status` is dropped: controllers (meshd's leader among them, see
    status.py) write it, meshd never reads it, and a status write must not count as a
    change of the object. Of a Node only its name and topology labels
    are kept (config/parse.py node_essentials): the rest is big and changes all the time."""
    if kind == kinds.NODE.kind and not kinds.split_api_version(api_version)[0]:
        # Imported here: this module is on the prefetch's path (kube/prefetch.py), which
        # starts before the parse gate's modules are imported.
        from ..config.parse import node_essentials

        return node_essentials({**obj, "apiVersion": obj.get("apiVersion") or api_version, "kind": kind})
    doc = dict(obj)
    if not doc.get("apiVersion"):
        doc["apiVersion"] = api_version
    if not doc.get("kind"):
        doc["kind"] = kind
    group = kinds.split_api_version(api_version)[0]
    if kinds.is_istio_group(group) or group == GATEWAY_API_GROUP:  # meshd's leader writes these
        doc.pop("status", None)
    md = doc.get("metadata")
    if isinstance(md, dict):
        doc["metadata"] = {k: v for k, v in md.items() if k not in _VOLATILE_METADATA}
    return doc


@dataclass(frozen=True)
class ObjectInfo:
    """What the cluster says about an (Istio) object beyond its content: enough to write
    its status and name it in an Event."""

    api_version: str  # the version it was read at (its status is written at the same)
    namespace: str
    name: str
    uid: str
    generation: int | None
    resource_version: str
    status: dict[str, Any]


def object_info(obj: dict[str, Any], api_version: str) -> ObjectInfo:
    md = obj.get("metadata")
    if not isinstance(md, dict):
        md = {}
    generation = md.get("generation")
    status = obj.get("status")
    return ObjectInfo(
        api_version=api_version,
        namespace=str(md.get("namespace") or ""),
        name=str(md.get("name") or ""),
        uid=str(md.get("uid") or ""),
        generation=generation if isinstance(generation, int) and not isinstance(generation, bool) else None,
        resource_version=str(md.get("resourceVersion") or ""),
        status=status if isinstance(status, dict) else {},
    )


def object_ref(obj: Any) -> tuple[str | None, str | None, str | None]:
    """(namespace, name, resourceVersion) of an API object, None where missing."""
    md = obj.get("metadata") if isinstance(obj, dict) else None
    if not isinstance(md, dict):
        return None, None, None
    return md.get("namespace"), md.get("name"), md.get("resourceVersion")
