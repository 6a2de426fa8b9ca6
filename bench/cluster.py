"""The benchmark's Kubernetes side: a real API server (../shared/k8s), the scenario's
objects loaded into it, the changes the measurements make, and Istio's own control plane
(../shared/istiod) started against it.

    cluster = Cluster.up(work)            # etcd + kube-apiserver on free ports
    cluster.load(scenario, work / "yaml")  # namespaces, Services, EndpointSlices, Istio config
    cluster.patch_rule(scenario, i, generation)        # a full push (DestinationRule)
    cluster.patch_endpoints(scenario, j, generation)   # an endpoint change (EndpointSlice)
    istiod = Istiod.start(cluster, work)   # pilot-discovery, configured for plain Envoy
    cluster.down()

The objects are what `Scenario.write` writes (so a scenario option that adds documents,
such as Sidecars, reaches the API server too), with three changes the API server needs:
Istio kinds as `v1beta1` (Istio 1.14's CRDs, which istiod needs, have no `v1`; meshd reads
any served version), Services without their fixed clusterIP (the server allocates one in
its range), and no Pods (nothing would schedule them or give them an address: the
EndpointSlices carry the addresses, without a targetRef, which would make istiod wait
for the Pod).
"""
from __future__ import annotations

import json
import os
import signal
import ssl
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from bench.run import free_port
from tests.support import paths

REPO = Path(__file__).resolve().parents[1]
SHARED = paths.SHARED  # ../shared beside the checkout

# kind -> (API prefix, plural)
PATHS = {
    "Namespace": ("/api/v1", "namespaces"),
    "Service": ("/api/v1", "services"),
    "EndpointSlice": ("/apis/discovery.k8s.io/v1", "endpointslices"),
    "Gateway": ("/apis/networking.istio.io/v1beta1", "gateways"),
    "VirtualService": ("/apis/networking.istio.io/v1beta1", "virtualservices"),
    "DestinationRule": ("/apis/networking.istio.io/v1beta1", "destinationrules"),
    "Sidecar": ("/apis/networking.istio.io/v1beta1", "sidecars"),
    "ServiceEntry": ("/apis/networking.istio.io/v1beta1", "serviceentries"),
    "PeerAuthentication": ("/apis/security.istio.io/v1beta1", "peerauthentications"),
}
SKIPPED = frozenset({"Pod"})


class ApiError(Exception):
    pass


@dataclass
class Cluster:
    state: Path
    kubeconfig: Path
    server: str

    @classmethod
    def up(cls, work: Path) -> Cluster:
        state = work / "k8s"
        for attempt in range(3):  # a port taken meanwhile, or a slow start on a busy machine
            port, etcd = free_port(), free_port()
            up = subprocess.run([str(SHARED / "k8s" / "up"), str(state), "--port", str(port), "--etcd-port", str(etcd),
                                 "--timeout", "180"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                timeout=400)
            if up.returncode == 0:
                break
            if attempt == 2:
                raise RuntimeError(f"k8s up failed:\n{up.stderr[-2000:]}")
        facts = json.loads((state / "up.json").read_text())
        return cls(state, Path(facts["kubeconfig"]), facts["server"])

    def down(self) -> None:
        subprocess.run([str(SHARED / "k8s" / "down"), str(self.state), "--rm"], check=False,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=60)

    # --- requests ---------------------------------------------------------------------
    def _context(self) -> ssl.SSLContext:
        ctx = getattr(self, "_ctx", None)
        if ctx is None:
            pki = self.state / "pki"
            ctx = ssl.create_default_context(cafile=str(pki / "ca.crt"))
            ctx.load_cert_chain(str(pki / "admin.crt"), str(pki / "admin.key"))
            self._ctx = ctx
        return ctx

    def request(self, method: str, path: str, body: Any = None,
                content_type: str = "application/json") -> dict[str, Any]:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.server + path, data=data, method=method,
                                     headers={"Content-Type": content_type, "Accept": "application/json"})
        try:
            with urllib.request.urlopen(req, context=self._context(), timeout=60) as r:
                return json.loads(r.read() or b"{}")
        except urllib.error.HTTPError as e:
            raise ApiError(f"{method} {path}: {e.code} {e.read()[:300]!r}") from None

    @staticmethod
    def path(kind: str, namespace: str, name: str = "") -> str:
        prefix, plural = PATHS[kind]
        base = f"{prefix}/{plural}" if kind == "Namespace" else f"{prefix}/namespaces/{namespace}/{plural}"
        return f"{base}/{name}" if name else base

    def create(self, doc: dict[str, Any]) -> None:
        md = doc["metadata"]
        self.request("POST", self.path(doc["kind"], md.get("namespace", "")), doc)

    def merge_patch(self, kind: str, namespace: str, name: str, patch: dict[str, Any]) -> None:
        self.request("PATCH", self.path(kind, namespace, name), patch, "application/merge-patch+json")

    # --- the scenario -----------------------------------------------------------------
    def load(self, sc: Any, root: Path, workers: int = 8) -> dict[str, int]:
        """Every object `sc.write` writes (see the module docstring), namespaces first;
        returns the count per kind."""
        sc.write(root)
        converted = [api_object(d) for f in sorted(root.rglob("*.yaml")) for d in yaml.safe_load_all(f.read_text()) if d]
        docs = [d for d in converted if d is not None]
        unknown = {d["kind"] for d in docs} - PATHS.keys()
        if unknown:
            raise ApiError(f"the scenario has kinds the benchmark cannot load: {sorted(unknown)}")
        namespaces = sorted({d["metadata"]["namespace"] for d in docs if d["metadata"].get("namespace")})
        existing = {n["metadata"]["name"] for n in self.request("GET", "/api/v1/namespaces").get("items", [])}
        for ns in namespaces:
            if ns not in existing:
                self.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
        with ThreadPoolExecutor(workers) as pool:
            list(pool.map(self.create, docs))
        counts: dict[str, int] = {}
        for d in docs:
            counts[d["kind"]] = counts.get(d["kind"], 0) + 1
        return counts

    def patch_rule(self, sc: Any, i: int, generation: int) -> None:
        """The DestinationRule of service `i` as Scenario.rules_yaml(i, generation) has it:
        every proxy's CDS changes."""
        for d in yaml.safe_load_all(sc.rules_yaml(i, generation)):
            if d["kind"] == "DestinationRule":
                self.merge_patch("DestinationRule", d["metadata"]["namespace"], d["metadata"]["name"], {"spec": d["spec"]})

    def patch_endpoints(self, sc: Any, j: int, generation: int) -> None:
        """Service `j`'s EndpointSlice as Scenario.endpoints_yaml(j, generation) has it."""
        for raw in yaml.safe_load_all(sc.endpoints_yaml(j, generation)):
            d = api_object(raw)
            if d is None:
                continue
            self.merge_patch("EndpointSlice", d["metadata"]["namespace"], d["metadata"]["name"],
                             {"endpoints": d["endpoints"]})


def api_object(doc: dict[str, Any]) -> dict[str, Any] | None:
    """The API server's form of a scenario document (None: not loaded)."""
    kind = doc.get("kind")
    if kind in SKIPPED:
        return None
    api = str(doc.get("apiVersion", ""))
    if api.startswith(("networking.istio.io/", "security.istio.io/")):
        doc = {**doc, "apiVersion": api.split("/")[0] + "/v1beta1"}
    if kind == "Service":
        spec = dict(doc.get("spec") or {})
        if spec.get("clusterIP") not in (None, "None"):
            spec.pop("clusterIP")
        doc = {**doc, "spec": spec}
    if kind == "EndpointSlice":
        # No Pods: istiod holds back an endpoint whose targetRef names a Pod it has not
        # seen (it would serve empty assignments), so the endpoints name none.
        doc = {**doc, "endpoints": [{k: v for k, v in ep.items() if k != "targetRef"} for ep in doc.get("endpoints") or []]}
    return doc


# --- istiod ---------------------------------------------------------------------------------

@dataclass
class Istiod:
    """pilot-discovery from ../shared/istiod, started with its `run` script (the settings
    its README gives for plain Envoy) on free ports; start-up is measured from the
    process's start (/proc) to /ready."""

    state: Path
    pid: int
    xds: str
    http: str
    ready_after: float

    @classmethod
    def start(cls, cluster: Cluster, work: Path, prepare: bool = True, timeout: float = 120) -> Istiod:
        state = work / "istiod"
        http = free_port()
        ports = ["--grpc-port", str(free_port()), "--secure-grpc-port", str(free_port()), "--http-port", str(http),
                 "--monitoring", str(free_port()), "--https-port", str(free_port()), "--ctrlz-port", str(free_port())]
        # PILOT_MAX_REQUESTS_PER_SECOND=0: no limit on new streams per second (default 25):
        # with it, 2,010 proxies connecting at once are refused by the thousand and reconnect
        # for minutes; meshd has no such limit. Pushes are throttled as usual (100 in flight).
        argv = [str(SHARED / "istiod" / "run"), str(state), "--kubeconfig", str(cluster.kubeconfig), *ports, "--no-wait",
                "--env", "PILOT_MAX_REQUESTS_PER_SECOND=0"]
        env = {**os.environ, "KUBECTL": str(cluster.state / "bin" / "kubectl")}
        out = subprocess.run(argv + (["--prepare"] if prepare else []), check=True, capture_output=True, text=True,
                             env=env, timeout=300).stdout
        facts = dict(line.removeprefix("export ").split("=", 1) for line in out.splitlines() if line.startswith("export "))
        pid = int(facts["ISTIOD_PID"])
        started = process_start(pid)
        deadline = time.time() + timeout
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{http}/ready", timeout=2) as r:
                    if r.status == 200:
                        break
            except (OSError, urllib.error.HTTPError):
                pass
            if time.time() > deadline:
                raise RuntimeError(f"istiod not ready after {timeout}s; log {state / 'istiod.log'}")
            time.sleep(0.02)
        return cls(state, pid, facts["ISTIOD_XDS"], f"http://127.0.0.1:{http}", time.time() - started)

    def stop(self) -> None:
        subprocess.run([str(SHARED / "istiod" / "down"), str(self.state)], check=False,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=60)
        try:
            os.kill(self.pid, 0)
        except OSError:
            return
        os.kill(self.pid, signal.SIGKILL)


def process_start(pid: int) -> float:
    """When `pid` started (wall clock), from /proc."""
    with open(f"/proc/{pid}/stat") as f:
        ticks = int(f.read().rsplit(")", 1)[1].split()[19])
    with open("/proc/uptime") as f:
        uptime = float(f.read().split()[0])
    return time.time() - uptime + ticks / os.sysconf("SC_CLK_TCK")


def scratch() -> Path:
    return Path(tempfile.mkdtemp(prefix="meshd-bench-k8s-"))
