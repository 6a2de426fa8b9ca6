"""The real Kubernetes API server for tests: ../shared/k8s's etcd and kube-apiserver.

See ../shared/k8s/README.md: no controllers, no scheduler, no nodes; new namespaces get no
ServiceAccount; a deleted namespace stays Terminating until someone finalizes it.

The suite starts one server per session, on first use (`kube_cluster`, conftest), with
Istio's CRDs and the Gateway API's standard-channel CRDs installed, and hands each test a `Kube`:
its own corner of that server. A test makes its namespaces with `kube.ns("shop")` (a name
no other test uses), writes and reads objects as the stand-in API server's hooks do
(`apply`, `get`, `delete`, `objects`), talks to the server through `kube.api_client()`
(which records every request it sends: `requests_for`, `writes`, `verbs`, as the stand-in
logs what it receives), and gets ServiceAccount tokens the server signs (`token`). When
the test ends, however it ends, the server is put back as the session found it: every
object made since (by the test or by meshd) is deleted, its namespaces finalized away.
"""
from __future__ import annotations

import contextlib
import copy
import itertools
import json
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from tests.support.harness import free_port, wait_for
from tests.support.kube_log import Request, RequestLog
from tests.support.paths import shared

ISTIO_CRDS = ("corpus", "crds", "crd-all.gen.yaml")
HTTPROUTE_CRD = ("corpus", "gateway-api", "config", "crd", "standard", "gateway.networking.k8s.io_httproutes.yaml")
# The Gateway API's standard channel, the kinds meshd serves (docs/gateway-api.md)
GATEWAY_API_CRDS = tuple(("corpus", "gateway-api", "config", "crd", "standard", f"gateway.networking.k8s.io_{plural}.yaml")
                         for plural in ("gatewayclasses", "gateways", "grpcroutes", "tcproutes", "tlsroutes",
                                        "referencegrants"))
CRD_PATH = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions"


@dataclass(frozen=True)
class KubeCluster:
    """A running test cluster: a real etcd and kube-apiserver, nothing else (../shared/k8s/README.md)."""

    state: Path
    kubeconfig: Path
    server: str

    def api_client(self):
        from kubernetes import config

        return config.new_client_from_config(config_file=str(self.kubeconfig))

    def kubectl(self, *args: str, input: str | None = None, check: bool = True,
                timeout: float = 120) -> subprocess.CompletedProcess:
        """The state directory's kubectl (same version as the server) on this cluster."""
        cp = subprocess.run([str(self.state / "bin" / "kubectl"), "--kubeconfig", str(self.kubeconfig), *args],
                            input=input, capture_output=True, text=True, timeout=timeout)
        if check and cp.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} failed ({cp.returncode}):\n{cp.stderr[-2000:]}")
        return cp

    def version(self) -> str:
        """The server's gitVersion (GET /version)."""
        api = self.api_client()
        try:
            return json.loads(_raw(api, "GET", "/version"))["gitVersion"]
        finally:
            api.close()


@contextlib.contextmanager
def kube_apiserver(workdir: Path) -> Iterator[KubeCluster]:
    """../shared/k8s's real kube-apiserver and etcd on free loopback ports, with the state
    under `workdir`; stopped (`down --rm`) however the test ends, also when `up` failed
    half way."""
    up, down = shared("k8s", "up"), shared("k8s", "down")
    state = workdir / "k8s"
    ports: list[int] = []
    while len(ports) < 3:
        p = free_port("127.0.0.1")
        if p not in ports:
            ports.append(p)
    try:
        cp = subprocess.run([sys.executable, str(up), str(state), "--port", str(ports[0]), "--etcd-port", str(ports[1]),
                             "--etcd-peer-port", str(ports[2]), "--bind-address", "127.0.0.1", "--fresh"],
                            capture_output=True, text=True, timeout=180)
        if cp.returncode != 0:
            raise AssertionError(f"k8s/up failed ({cp.returncode}):\n{cp.stderr[-4000:]}")
        info = json.loads((state / "up.json").read_text())
        yield KubeCluster(state, Path(info["kubeconfig"]), info["server"])
    finally:
        subprocess.run([sys.executable, str(down), str(state), "--rm"], capture_output=True, timeout=60)


def install_crds(cluster: KubeCluster, *files: Path, timeout: float = 60) -> None:
    """Create the CRDs in `files` (as `kubectl create -f`) and wait until each is Established."""
    import yaml

    api = cluster.api_client()
    try:
        names = []
        for f in files:
            for doc in yaml.safe_load_all(f.read_text()):
                if doc:
                    _raw(api, "POST", CRD_PATH, doc)
                    names.append(doc["metadata"]["name"])

        def established(name: str) -> bool:
            crd = json.loads(_raw(api, "GET", f"{CRD_PATH}/{name}"))
            return any(c["type"] == "Established" and c["status"] == "True"
                       for c in (crd.get("status") or {}).get("conditions") or [])

        wait_for(lambda: all(established(n) for n in names), timeout, what=f"CRDs established: {names}")
    finally:
        api.close()


# --- requests ------------------------------------------------------------------------------


def _raw(api_client, method: str, path: str, body: Any = None, query: dict | None = None,
         content_type: str = "application/json") -> bytes:
    """One request through `api_client`; the body of a 2xx answer, else KubeError."""
    headers = {"Accept": "application/json"}
    if body is not None:
        headers["Content-Type"] = content_type
    method_, url, headers, body_, post = api_client.param_serialize(
        method=method, resource_path=path, query_params=list((query or {}).items()), header_params=headers,
        body=body, auth_settings=["BearerToken"])
    resp = api_client.call_api(method_, url, header_params=headers, body=body_, post_params=post,
                               _request_timeout=30)
    data = resp.read()
    if not 200 <= resp.status < 300:
        raise KubeError(resp.status, f"{method} {path}: {resp.status} {(data or b'')[:300].decode(errors='replace')}")
    return data


class KubeError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


class Recorder(RequestLog):
    """Every request the clients made with it sent, with the answer's status."""

    def __init__(self) -> None:
        self.requests: list[Request] = []
        self._requests_lock = threading.Lock()

    def client(self, cluster: KubeCluster):
        """An ApiClient for `cluster` whose requests land in this log."""
        from kubernetes import client, config

        cfg = client.Configuration()
        config.load_kube_config(config_file=str(cluster.kubeconfig), client_configuration=cfg)
        cfg.connection_pool_maxsize = 64
        recorder = self

        class RecordingApiClient(client.ApiClient):
            def call_api(self, method, url, *args, **kwargs):
                parts = urlsplit(url)
                req = Request(parts.path, dict(parse_qsl(parts.query)), method.upper())
                try:
                    resp = super().call_api(method, url, *args, **kwargs)
                except client.ApiException as e:
                    req.status = e.status or 0
                    raise
                except Exception:
                    req.status = 0  # no answer: a transport error
                    raise
                finally:
                    with recorder._requests_lock:
                        recorder.requests.append(req)
                req.status = resp.status
                return resp

        return RecordingApiClient(cfg)


class RecordingProxy(RequestLog):
    """A plain-HTTP front for the real API server that logs every request passing through
    it (with the answer's status) and streams the answers, watches included: for a meshd
    process, whose requests a recording client cannot see. Upstream it authenticates as
    the cluster's admin (so RBAC is not the server's to apply here: tests/support/rbac.py
    checks the log against meshd's manifests instead).

        with RecordingProxy(kube.cluster) as proxy:
            meshd(..., extra=["--kubeconfig", str(proxy.kubeconfig(tmp_path / "kubeconfig"))])
            proxy.writes("tokenreviews", "POST")
    """

    HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "proxy-connection", "host",
           "authorization", "content-length"}

    def __init__(self, cluster: KubeCluster):
        import http.server
        import ssl

        self.requests: list[Request] = []
        self._requests_lock = threading.Lock()
        upstream = urlsplit(cluster.server)
        pki = cluster.state / "pki"
        ctx = ssl.create_default_context(cafile=str(pki / "ca.crt"))
        ctx.load_cert_chain(str(pki / "admin.crt"), str(pki / "admin.key"))
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _forward(self) -> None:
                import http.client

                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                parts = urlsplit(self.path)
                req = Request(parts.path, dict(parse_qsl(parts.query)), self.command)
                conn = http.client.HTTPSConnection(upstream.hostname, upstream.port, context=ctx, timeout=600)
                try:
                    conn.request(self.command, self.path, body=body,
                                 headers={k: v for k, v in self.headers.items() if k.lower() not in proxy.HOP})
                    resp = conn.getresponse()
                    req.status = resp.status
                    with proxy._requests_lock:
                        proxy.requests.append(req)
                    self.send_response(resp.status, resp.reason)
                    for k, v in resp.getheaders():
                        if k.lower() not in proxy.HOP:
                            self.send_header(k, v)
                    self.send_header("Transfer-Encoding", "chunked")
                    self.end_headers()
                    while chunk := resp.read1(65536):  # as it comes: a watch is one long answer
                        self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                        self.wfile.flush()
                    self.wfile.write(b"0\r\n\r\n")
                except OSError:  # the client went away (a watch it stopped), or the server did
                    self.close_connection = True
                finally:
                    conn.close()

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _forward

            def log_message(self, *args):  # quiet
                pass

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True, name="kube-proxy")

    def kubeconfig(self, path: Path) -> Path:
        """A kubeconfig file at `path` pointing at this proxy."""
        import yaml

        path.write_text(yaml.safe_dump({
            "apiVersion": "v1", "kind": "Config", "current-context": "proxy",
            "clusters": [{"name": "proxy", "cluster": {"server": self.url}}],
            "users": [{"name": "meshd", "user": {"token": "unused"}}],
            "contexts": [{"name": "proxy", "context": {"cluster": "proxy", "user": "meshd"}}]}))
        return path

    def __enter__(self) -> RecordingProxy:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(10)


# --- kinds ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Kind:
    group: str
    kind: str
    plural: str
    namespaced: bool
    version: str  # the version to list at (any served one)
    status: bool = False  # has a /status subresource

    def path(self, namespace: str | None = None, name: str | None = None, version: str | None = None) -> str:
        v = version or self.version
        base = f"/api/{v}" if not self.group else f"/apis/{self.group}/{v}"
        if self.namespaced and namespace:
            base += f"/namespaces/{namespace}"
        base += f"/{self.plural}"
        return base + (f"/{name}" if name else "")


BUILT_IN = [
    Kind("", "Namespace", "namespaces", False, "v1"),
    Kind("", "Node", "nodes", False, "v1", status=True),
    Kind("", "Service", "services", True, "v1", status=True),
    Kind("", "Pod", "pods", True, "v1", status=True),
    Kind("", "Secret", "secrets", True, "v1"),
    Kind("", "ConfigMap", "configmaps", True, "v1"),
    Kind("", "Event", "events", True, "v1"),
    Kind("", "ServiceAccount", "serviceaccounts", True, "v1"),
    Kind("", "Endpoints", "endpoints", True, "v1"),
    Kind("discovery.k8s.io", "EndpointSlice", "endpointslices", True, "v1"),
    Kind("coordination.k8s.io", "Lease", "leases", True, "v1"),
    Kind("apps", "Deployment", "deployments", True, "v1", status=True),  # meshd deploys Gateways' gateways
]


def crd_kinds(api_client) -> list[Kind]:
    """The kinds the cluster's CRDs define (at their storage version)."""
    crds = json.loads(_raw(api_client, "GET", CRD_PATH))
    out = []
    for crd in crds["items"]:
        spec = crd["spec"]
        storage = next(v for v in spec["versions"] if v.get("storage"))
        out.append(Kind(spec["group"], spec["names"]["kind"], spec["names"]["plural"], spec["scope"] == "Namespaced",
                        storage["name"], status="status" in (storage.get("subresources") or {})))
    return out


# --- the session's server and each test's part of it -------------------------------------------


class KubeSession:
    """The session's real API server (CRDs installed) and what it held before any test:
    the baseline every test's cleanup returns to."""

    def __init__(self, cluster: KubeCluster):
        self.cluster = cluster
        self.version = cluster.version()
        self._admin = cluster.api_client()
        self.kinds = BUILT_IN + crd_kinds(self._admin)
        self.baseline = self._uids()
        self._tags = itertools.count(1)

    def close(self) -> None:
        self._admin.close()

    def kind(self, api_version: str, kind: str) -> Kind:
        group = api_version.rpartition("/")[0] if "/" in api_version else ""
        for k in self.kinds:
            if k.group == group and k.kind == kind:
                return k
        raise KeyError(f"the test cluster has no kind {api_version} {kind}")

    def test(self, name: str) -> Kube:
        return Kube(self, f"k{next(self._tags)}", name)

    def _uids(self) -> set[str]:
        return {item["metadata"]["uid"] for _, items in self._list_all() for item in items}

    def _list_all(self) -> list[tuple[Kind, list[dict]]]:
        """Every object of every kind, listed in parallel (a CRD's first list takes the
        server a second to serve)."""
        with ThreadPoolExecutor(8) as pool:
            lists = pool.map(lambda k: json.loads(_raw(self._admin, "GET", k.path()))["items"], self.kinds)
            return list(zip(self.kinds, lists, strict=True))

    def reset(self) -> list[str]:
        """Delete every object made since the session started (Pods at once, as if their
        kubelet confirmed it; namespaces finalized, as the namespace controller would once
        they are empty). Returns what it deleted, as kind ns/name."""
        gone: list[str] = []
        namespaces: list[str] = []
        for k, items in self._list_all():
            for item in items:
                md = item["metadata"]
                if md["uid"] in self.baseline:
                    continue
                if k.kind == "Namespace":
                    namespaces.append(md["name"])
                    continue
                query = {"gracePeriodSeconds": "0"} if k.kind == "Pod" else None
                with contextlib.suppress(KubeError):
                    _raw(self._admin, "DELETE", k.path(md.get("namespace"), md["name"]), query=query)
                gone.append(f"{k.kind} {md.get('namespace', '')}/{md['name']}".replace(" /", " "))
        for ns in namespaces:
            with contextlib.suppress(KubeError):
                _raw(self._admin, "DELETE", f"/api/v1/namespaces/{ns}")
            with contextlib.suppress(KubeError):
                _raw(self._admin, "PUT", f"/api/v1/namespaces/{ns}/finalize",
                     {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}, "spec": {"finalizers": []}})
            gone.append(f"Namespace {ns}")
        return gone


class Kube(RequestLog):
    """One test's part of the session's real API server (see the module's docstring)."""

    server = "real"

    def __init__(self, session: KubeSession, tag: str, test: str):
        self.session, self.cluster, self.tag, self.test = session, session.cluster, tag, test
        self.requests: list[Request] = []
        self._requests_lock = threading.Lock()
        self._recorder = Recorder()
        self._recorder.requests, self._recorder._requests_lock = self.requests, self._requests_lock
        self._clients: list = []
        self._admin = self.api_client(record=False)
        self.namespaces: list[str] = []

    # --- names and clients ---------------------------------------------------------------
    def ns(self, base: str, **labels: str) -> str:
        """A new namespace for this test only, `<base>-<tag>`, with its `default`
        ServiceAccount (the server has no controller to make it)."""
        name = self.name(base)
        self.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels}})
        self._ensure_service_account(name, "default")
        self.namespaces.append(name)
        return name

    def name(self, base: str) -> str:
        """A name for a namespace this test makes itself (`<base>-<tag>`), not made yet."""
        return f"{base}-{self.tag}"

    def mine(self, objects) -> list:
        """The ConfigObjects among `objects` that this test made: in its namespaces, or its
        namespaces themselves (the cluster has its own: default, kube-system...)."""
        suffix = f"-{self.tag}"
        return [o for o in objects if (o.namespace or (o.name if o.kind == "Namespace" else "")).endswith(suffix)]

    def wait_watches(self, n: int, plural: str | None = None, timeout: float = 10) -> None:
        """Until this test's clients have opened `n` watches (of `plural`, if given)."""
        wait_for(lambda: len([r for r in self.requests if r.watch and (plural is None or (r.resource() or ("", ""))[1]
                                                                        == plural)]) >= n,
                 timeout, what=f"{n} watches of {plural or 'any kind'}")

    def api_client(self, record: bool = True):
        """An ApiClient for the server (closed when the test ends); with `record`, its
        requests land in this test's log (`requests_for`, `writes`, `verbs`)."""
        if record:
            c = self._recorder.client(self.cluster)
        else:
            c = self.cluster.api_client()
        self._clients.append(c)
        return c

    # --- objects -------------------------------------------------------------------------
    def _request(self, method: str, path: str, body: Any = None, query: dict | None = None) -> dict:
        data = _raw(self._admin, method, path, body, query)
        return json.loads(data) if data else {}

    def apply(self, obj: dict) -> dict:
        """Create or replace `obj`, as the stand-in's apply does: without a `status` of its
        own an update keeps the stored status; with one (and a /status subresource) the
        status is written too, as a kubelet or a controller would. Pods get the
        ServiceAccount they name; an update of a Pod changes its labels, annotations and
        status (its spec is immutable). Returns the stored object."""
        k = self.session.kind(obj["apiVersion"], obj["kind"])
        version = obj["apiVersion"].rpartition("/")[2]
        md = obj["metadata"]
        ns = md.get("namespace") if k.namespaced else None
        body = copy.deepcopy(obj)
        status = body.pop("status", None) if k.status else None
        if k.kind == "Pod":
            self._ensure_service_account(ns, (obj.get("spec") or {}).get("serviceAccountName") or "default")
        try:
            current = self._request("GET", k.path(ns, md["name"], version))
        except KubeError as e:
            if e.status != 404:
                raise
            stored = self._request("POST", k.path(ns, version=version), body)
        else:
            body["metadata"]["resourceVersion"] = current["metadata"]["resourceVersion"]
            if k.kind == "Pod":  # a Pod's spec is immutable (and defaulted by the server): keep it
                body["spec"] = current["spec"]
            stored = self._request("PUT", k.path(ns, md["name"], version), body)
        if status is not None:
            stored = self._request("PUT", k.path(ns, md["name"], version) + "/status", {**stored, "status": status})
        return stored

    def get(self, api_version: str, kind: str, name: str, namespace: str | None = None) -> dict | None:
        k = self.session.kind(api_version, kind)
        try:
            return self._request("GET", k.path(namespace, name, api_version.rpartition("/")[2]))
        except KubeError as e:
            if e.status == 404:
                return None
            raise

    def delete(self, api_version: str, kind: str, name: str, namespace: str | None = None) -> bool:
        """Delete an object: a Pod at once (as if its kubelet confirmed it), a Namespace
        finalized at once (as the namespace controller does once it is empty)."""
        k = self.session.kind(api_version, kind)
        try:
            self._request("DELETE", k.path(namespace, name, api_version.rpartition("/")[2]),
                          query={"gracePeriodSeconds": "0"} if kind == "Pod" else None)
        except KubeError as e:
            if e.status == 404:
                return False
            raise
        if kind == "Namespace":
            self._request("PUT", f"/api/v1/namespaces/{name}/finalize",
                          {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}, "spec": {"finalizers": []}})
        return True

    def objects(self, kind: str, namespace: str | None = None) -> list[dict]:
        """Every object of `kind` (at its listing version), in `namespace` if given."""
        k = next(k for k in self.session.kinds if k.kind == kind)
        return self._request("GET", k.path(namespace))["items"]

    def token(self, namespace: str, service_account: str, audiences: tuple[str, ...] = ("istio-ca",),
              seconds: int = 3600) -> str:
        """A token the server signs for namespace/service_account (the TokenRequest API, as
        `kubectl create token` and a projected volume get it); the account is made if
        missing."""
        self._ensure_service_account(namespace, service_account)
        got = self._request("POST", f"/api/v1/namespaces/{namespace}/serviceaccounts/{service_account}/token",
                            {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
                             "spec": {"audiences": list(audiences), "expirationSeconds": seconds}})
        return got["status"]["token"]

    def review(self, token: str, audiences: tuple[str, ...] = ("istio-ca",)) -> dict:
        """What the server's TokenReview says of `token` now (its status), asked outside
        the test's recorded clients."""
        got = self._request("POST", "/apis/authentication.k8s.io/v1/tokenreviews",
                            {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview",
                             "spec": {"token": token, "audiences": list(audiences)}})
        return got.get("status") or {}

    def _ensure_service_account(self, namespace: str, name: str) -> None:
        try:
            self._request("POST", f"/api/v1/namespaces/{namespace}/serviceaccounts",
                          {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": name}})
        except KubeError as e:
            if e.status != 409:
                raise

    @contextlib.contextmanager
    def crds_removed(self, group: str) -> Iterator[Callable[[], None]]:
        """The CRDs of `group` (Istio's) deleted, with their objects, until the block ends
        or it calls the function it gets, which creates them again (as an operator
        installing Istio's CRDs while meshd runs): the cluster is whole again either way."""
        import yaml

        docs = [d for d in yaml.safe_load_all(shared(*ISTIO_CRDS).read_text()) if d and d["spec"]["group"] == group]
        names = [d["metadata"]["name"] for d in docs]
        for n in names:
            self._request("DELETE", f"{CRD_PATH}/{n}")

        wait_for(lambda: all(self._crd_gone(n) for n in names), 60, what=f"the {group} CRDs deleted")
        restored: list[bool] = []

        def restore() -> None:
            if not restored:
                restored.append(True)
                for d in docs:
                    self._request("POST", CRD_PATH, d)
                wait_for(lambda: all(self._crd_established(n) for n in names), 60, what=f"the {group} CRDs back")

        try:
            yield restore
        finally:
            restore()

    def _crd_gone(self, name: str) -> bool:
        try:
            self._request("GET", f"{CRD_PATH}/{name}")
        except KubeError as e:
            return e.status == 404
        return False

    def _crd_established(self, name: str) -> bool:
        try:
            crd = self._request("GET", f"{CRD_PATH}/{name}")
        except KubeError:
            return False
        return any(c["type"] == "Established" and c["status"] == "True"
                   for c in (crd.get("status") or {}).get("conditions") or [])

    # --- the end -------------------------------------------------------------------------
    def close(self) -> None:
        for c in self._clients:
            with contextlib.suppress(Exception):
                c.close()
        self._clients.clear()
