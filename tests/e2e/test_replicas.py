"""Several meshd replicas against one cluster (the stand-in API server, see the test), as the Deployment
in deploy/kubernetes runs them: real `meshd serve --kubeconfig` processes that

- start at the same moment and end up with one root CA: one Secret istio-ca-secret is
  created, every replica serves its root;
- elect one leader through a coordination.k8s.io/v1 Lease; only the leader writes (status
  and Events of rejected Istio objects, the Gateway API's status, the istio-ca-root-cert
  ConfigMaps);
- hand over within the lease time when the leader is killed (SIGKILL), and at once when
  it stops gracefully (SIGTERM releases the Lease);
- follow a plug-in CA (Secret cacerts) created while they run: the trust bundle in every
  namespace's ConfigMap grows to both roots (a root rotation);

and the whole run's requests, as the API server saw them, are exactly what the RBAC
rules in deploy/kubernetes grant: nothing forbidden, nothing granted and unused."""
from __future__ import annotations

import base64
import contextlib
import re
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from envoy.extensions.transport_sockets.tls.v3 import secret_pb2

from controlplane import names
from tests.support.ads import ads_fetch
from tests.support.harness import meshd, wait_for
from tests.support.kubeapi import FakeApiServer
from tests.support.paths import REPO
from tests.support.pki import make_cacerts
from tests.support.rbac import load_manifests, rbac_mismatch

MANIFESTS = REPO / "deploy" / "kubernetes"


def deployment_args(kubeconfig_path: Path) -> list[str]:
    """The Deployment's `meshd serve` flags (deploy/kubernetes/04-deployment.yaml), pointed at
    the stand-in API server: what runs here is what the RBAC rules were written for. (Console
    logs instead of JSON, so the test can read them; ports and CA directory from the harness.)"""
    dep = next(d for d in load_manifests(MANIFESTS) if d["kind"] == "Deployment")
    args = list(dep["spec"]["template"]["spec"]["containers"][0]["args"])
    assert args[0] == "serve" and "--in-cluster" in args
    args = [a for a in args[1:] if a != "--in-cluster"]
    if "--log-format" in args:
        i = args.index("--log-format")
        del args[i:i + 2]
    return ["--kubeconfig", str(kubeconfig_path), *args]

pytestmark = pytest.mark.e2e

NS = "istioinaction"
LEASE_DURATION, RENEW_DEADLINE, RETRY = 3.0, 2.0, 0.5
ELECTION = ["--leader-lease-duration", f"{LEASE_DURATION}s", "--leader-renew-deadline", f"{RENEW_DEADLINE}s",
            "--leader-retry-period", f"{RETRY}s", "--ca-secrets-poll-interval", "0.5s"]
WEBAPP_TOKEN = "projected-token-of-webapp"


def bad_objects(suffix: str) -> list[dict]:
    """One rejected object of every Istio kind meshd serves (so every status is written)."""
    md = lambda kind: {"name": f"{kind.lower()}-{suffix}", "namespace": NS}
    return [
        {"apiVersion": "networking.istio.io/v1", "kind": "VirtualService", "metadata": md("VirtualService"),
         "spec": {"hosts": ["webapp.istioinaction.io"],
                  "http": [{"route": [{"destination": {"host": "webapp", "port": {"number": "eighty"}}}]}]}},
        {"apiVersion": "networking.istio.io/v1", "kind": "Gateway", "metadata": md("Gateway"),
         "spec": {"selector": {"istio": "ingressgateway"},
                  "servers": [{"port": {"number": 80, "name": "http", "protocol": "HTTP"}}]}},
        {"apiVersion": "networking.istio.io/v1", "kind": "DestinationRule", "metadata": md("DestinationRule"),
         "spec": {"host": "webapp", "trafficPolicy": {"tls": {"mode": "BOGUS"}}}},
        {"apiVersion": "security.istio.io/v1", "kind": "PeerAuthentication", "metadata": md("PeerAuthentication"),
         "spec": {"mtls": {"mode": "SOMETIMES"}}},
        {"apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy", "metadata": md("AuthorizationPolicy"),
         "spec": {"action": "SOMETIMES"}},
        {"apiVersion": "security.istio.io/v1", "kind": "RequestAuthentication",
         "metadata": md("RequestAuthentication"), "spec": {"jwtRules": [{"issuer": ""}]}},
        {"apiVersion": "networking.istio.io/v1", "kind": "Sidecar", "metadata": md("Sidecar"),
         "spec": {"egress": [{"hosts": ["no-namespace"]}]}},
        {"apiVersion": "networking.istio.io/v1", "kind": "ServiceEntry", "metadata": md("ServiceEntry"),
         "spec": {"hosts": []}},
        {"apiVersion": "networking.istio.io/v1", "kind": "WorkloadEntry", "metadata": md("WorkloadEntry"),
         "spec": {"address": ""}},
        {"apiVersion": "networking.istio.io/v1", "kind": "WorkloadGroup", "metadata": md("WorkloadGroup"),
         "spec": {"template": {"ports": {"http": "eighty"}}}},
    ]


def gateway_api_objects() -> list[dict]:
    """A Gateway of class istio with a listener for every route kind, and one route of each
    kind attached (their backends need not exist: the status says so), so that the leader
    writes the status of every Gateway API kind meshd controls."""
    api = "gateway.networking.k8s.io/v1"
    listeners = [{"name": "http", "port": 80, "protocol": "HTTP"},
                 {"name": "tls", "port": 443, "protocol": "TLS", "tls": {"mode": "Passthrough"}},
                 {"name": "tcp", "port": 9000, "protocol": "TCP"}]
    out: list[dict] = [
        {"apiVersion": api, "kind": "GatewayClass", "metadata": {"name": "istio"},
         "spec": {"controllerName": "istio.io/gateway-controller"}},
        {"apiVersion": api, "kind": "Gateway", "metadata": {"name": "gw", "namespace": NS},
         "spec": {"gatewayClassName": "istio", "listeners": listeners}},
    ]
    rules = [{"backendRefs": [{"name": "webapp", "port": 80}]}]
    for kind, section in (("HTTPRoute", "http"), ("GRPCRoute", "http"), ("TLSRoute", "tls"), ("TCPRoute", "tcp")):
        spec: dict = {"parentRefs": [{"name": "gw", "sectionName": section}], "rules": rules}
        if kind == "TLSRoute":
            spec["hostnames"] = ["webapp.istioinaction.io"]
        out.append({"apiVersion": api, "kind": kind, "metadata": {"name": kind.lower(), "namespace": NS}, "spec": spec})
    return out


def gateway_api_status(api: FakeApiServer, obj: dict) -> dict:
    got = api.get(obj["apiVersion"], obj["kind"], obj["metadata"]["name"], obj["metadata"].get("namespace", "")) or {}
    return got.get("status") or {}


def identity_of(handle) -> str:
    found = re.search(r"leader election starting\s.*?identity=(\S+)", handle.log())
    assert found, handle.log()[-2000:]
    return found.group(1)


def holder(api: FakeApiServer) -> str | None:
    lease = api.get("coordination.k8s.io/v1", "Lease", "meshd-leader", "istio-system")
    return lease["spec"].get("holderIdentity") if lease else None


def reason(api: FakeApiServer, obj: dict) -> str | None:
    got = api.get(obj["apiVersion"], obj["kind"], obj["metadata"]["name"], NS) or {}
    conds = (got.get("status") or {}).get("conditions") or []
    return next((c.get("reason") for c in conds if c.get("type") == "Reconciled"), None)


def root_cert_configmap(api: FakeApiServer, ns: str) -> str | None:
    cm = api.get("v1", "ConfigMap", "istio-ca-root-cert", ns)
    return cm["data"].get("root-cert.pem") if cm else None


def served_root(handle) -> bytes:
    """ROOTCA as this replica serves it (plaintext port: no token needed for the bundle)."""
    resp = ads_fetch(handle.xds_port, names.node_id("sidecar", "10.0.0.9", "probe-0", NS),
                     {"NAMESPACE": NS, "SERVICE_ACCOUNT": "probe"}, names.SECRET, ["ROOTCA"])
    s = secret_pb2.Secret()
    resp.resources[0].Unpack(s)
    return s.validation_context.trusted_ca.inline_bytes


def start_together(stack: contextlib.ExitStack, tmp_path: Path, args: list[str], labels: list[str]) -> list:
    """Several replicas started at the same moment (as a Deployment's pods are)."""
    cms = [meshd(None, tmp_path, extra=[*args, "--ca-dir", str(tmp_path / f"ca-{label}")]) for label in labels]
    with ThreadPoolExecutor(len(cms)) as ex:
        futures = [ex.submit(cm.__enter__) for cm in cms]
        handles = []
        for cm, f in zip(cms, futures, strict=True):
            handles.append(f.result())
            stack.push(cm)
    return handles


def test_replicas_share_one_ca_elect_one_leader_and_hand_over(tmp_path: Path):
    """The stand-in: the RBAC check at the end needs every request of the whole run as the
    API server saw it, and objects each Istio kind's CRD schema would refuse (so that meshd
    rejects one of every kind) must reach meshd."""
    with FakeApiServer() as api, contextlib.ExitStack() as stack:
        for ns in (NS, "istio-system"):
            api.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
        before = bad_objects("before")
        for obj in before + gateway_api_objects():
            api.apply(obj)
        api.add_token(WEBAPP_TOKEN, f"system:serviceaccount:{NS}:webapp")
        args = [*deployment_args(api.kubeconfig(tmp_path / "kubeconfig")), *ELECTION]

        # --- two replicas start together: one root Secret, one root everywhere ---------------
        a, b = start_together(stack, tmp_path, args, ["a", "b"])
        creates = api.writes("secrets", "POST")
        assert [r.status for r in creates if r.status == 201] == [201], [r.status for r in creates]
        root = base64.b64decode(api.get("v1", "Secret", "istio-ca-secret", "istio-system")["data"]["ca-cert.pem"])
        assert served_root(a) == served_root(b) == root

        # --- one leader; both serve --------------------------------------------------------------
        replicas = {identity_of(a): a, identity_of(b): b}
        leader_id = wait_for(lambda: holder(api) in replicas and holder(api), 10, what="a leader")
        leader = replicas[leader_id]
        follower_id, follower = next((i, r) for i, r in replicas.items() if i != leader_id)
        assert a.ready() and b.ready()
        assert len(api.writes("leases", "POST", status=201)) == 1

        # --- leader work: status + events of rejected objects, the root cert ConfigMaps ------------
        for obj in before:
            wait_for(lambda obj=obj: reason(api, obj) == "Rejected", 10, what=f"status of {obj['kind']}")
        wait_for(lambda: len(api.objects("Event")) == len(before), 5, what="one event per rejected object")
        for obj in gateway_api_objects():  # the Gateway API's status (conditions, route parents)
            wait_for(lambda obj=obj: gateway_api_status(api, obj).get("conditions" if "Route" not in obj["kind"]
                                                                       else "parents"), 10,
                     what=f"status of {obj['kind']}")
        for ns in (NS, "istio-system"):
            wait_for(lambda ns=ns: root_cert_configmap(api, ns) == root.decode(), 10, what=f"root cert in {ns}")
        wait_for(lambda: "status written" in leader.log(), 5, what="the leader logs its writes")
        time.sleep(1.0)
        assert len(api.writes("virtualservices", "PATCH")) == 1
        assert len(api.objects("Event")) == len(before)
        gateway_api_plurals = ("gatewayclasses", "gateways", "httproutes", "grpcroutes", "tlsroutes", "tcproutes")
        gateway_api_writes = sum(len(api.writes(p, "PATCH")) for p in gateway_api_plurals)
        assert len(api.writes("configmaps", "POST")) == 2
        assert "status written" not in follower.log() and "root cert published" not in follower.log()
        assert "leader elected" not in follower.log()
        # a namespace created later gets the bundle too
        api.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "late"}})
        wait_for(lambda: root_cert_configmap(api, "late") == root.decode(), 10, what="root cert in a new namespace")
        # the new namespace rebuilt the mesh: the Gateway API's status, unchanged, is not written again
        assert sum(len(api.writes(p, "PATCH")) for p in gateway_api_plurals) == gateway_api_writes

        # --- every replica authenticates ServiceAccount tokens with TokenReview ----------------------
        resp = ads_fetch(follower.secure_port, names.node_id("sidecar", "10.0.0.2", "webapp-0", NS),
                         {"NAMESPACE": NS, "SERVICE_ACCOUNT": "webapp"}, names.SECRET, ["default"],
                         root_pem=root, token=WEBAPP_TOKEN)
        assert len(resp.resources) == 1

        # --- SIGKILL the leader: no release; the follower takes over once the lease expired ----------
        renewals = len(api.writes("leases", "PUT", status=200))
        wait_for(lambda: len(api.writes("leases", "PUT", status=200)) > renewals, 5, what="a renewal")
        killed_at = time.monotonic()
        leader.process.stop(signal.SIGKILL)
        # Bound: the follower saw the last renewal within one (jittered, <= 2.2 x) retry period,
        # waits the lease duration from then, and acquires at its next attempt (one more).
        bound = LEASE_DURATION + 2 * 2.2 * RETRY + 0.5
        wait_for(lambda: holder(api) == follower_id, bound + 2, interval=0.05, what="the follower takes over")
        took = time.monotonic() - killed_at
        assert LEASE_DURATION - RETRY <= took <= bound, f"hand-over took {took:.2f}s"
        assert api.get("coordination.k8s.io/v1", "Lease", "meshd-leader", "istio-system")["spec"]["leaseTransitions"] == 1
        wait_for(lambda: "leader elected" in follower.log(), 5, what="the new leader knows")
        # the new leader does the leader work, and does not redo what was done
        after = bad_objects("after")
        for obj in after:
            api.apply(obj)
        for obj in after:
            wait_for(lambda obj=obj: reason(api, obj) == "Rejected", 10, what=f"status by the new leader ({obj['kind']})")
        wait_for(lambda: len(api.objects("Event")) == len(before) + len(after), 5, what="events by the new leader")
        assert len(api.writes("virtualservices", "PATCH")) == 2
        assert len(api.writes("configmaps", "POST")) == 3 and api.writes("configmaps", "PUT") == []

        # --- a plug-in CA appears (Secret cacerts): every namespace's bundle gets both roots -------
        plug_root, _ = make_cacerts(tmp_path / "cacerts")
        api.apply({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "cacerts", "namespace": "istio-system"},
                   "data": {n: base64.b64encode((tmp_path / "cacerts" / n).read_bytes()).decode()
                            for n in ("ca-cert.pem", "ca-key.pem", "cert-chain.pem", "root-cert.pem")}})
        from cryptography.hazmat.primitives.serialization import Encoding
        new_root = plug_root.public_bytes(Encoding.PEM).decode()
        for ns in (NS, "istio-system", "late"):
            wait_for(lambda ns=ns: (root_cert_configmap(api, ns) or "").count("BEGIN CERTIFICATE") == 2
                     and new_root in root_cert_configmap(api, ns) and root.decode() in root_cert_configmap(api, ns),
                     20, what=f"both roots published in {ns}")
        assert {r.status for r in api.writes("configmaps", "PUT")} <= {200, 409}
        wait_for(lambda: new_root.encode() in served_root(follower), 10, what="the replica serves both roots")

        # --- SIGTERM releases the Lease: a third replica takes over at its next retry -----------------
        c = stack.enter_context(meshd(None, tmp_path, extra=[*args, "--ca-dir", str(tmp_path / "ca-c")]))
        c_id = identity_of(c)
        time.sleep(2 * RETRY)
        assert holder(api) == follower_id
        stopped_at = time.monotonic()
        follower.process.stop(signal.SIGTERM)
        assert holder(api) in ("", c_id), "a stopped leader must release its lease"
        wait_for(lambda: holder(api) == c_id, LEASE_DURATION, interval=0.05, what="instant hand-over after release")
        assert time.monotonic() - stopped_at < LEASE_DURATION
        assert "leader released" in follower.process.log_path.read_text()  # (stopped: read its file)

        # --- RBAC: exactly the verbs this run used ------------------------------------------------------
        problems = rbac_mismatch(api, load_manifests(MANIFESTS))
        # (no VM joins here: auto-registration's writes are checked by test_autoregistration)
        problems = [p for p in problems if not (p.startswith("never used") and "/workloadentries" in p)]
        # (the Gateway's objects are created here, never changed or deleted: test_kube_gateway_deployment
        # checks those verbs on the real API server)
        problems = [p for p in problems if not (p.startswith(("never used: patch", "never used: delete")) and any(
            r in p for r in ("apps/deployments ", "core/serviceaccounts ", "core/services ")))]
        # (no webhook configuration is installed on the stand-in: the patch, and the dry run that
        # proves validation ready, are checked on the real API server by test_kube_webhooks)
        problems = [p for p in problems if not (p.startswith("never used") and (
            "webhookconfigurations" in p or p.startswith("never used: create networking.istio.io/gateways")))]
        assert problems == [], "\n".join(problems)
