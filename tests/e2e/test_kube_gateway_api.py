"""Gateway API status on the real kube-apiserver of ../shared/k8s (the session's, with the
Gateway API's standard-channel CRDs installed): `meshd serve --kubeconfig`, the leader,
writes the conditions the spec defines, and `kubectl get -o yaml` would show them:

- accepted: GatewayClass `istio` Accepted; Gateway Accepted (reason ListenersNotValid: some
  listeners below are not) and Programmed, its listener
  Accepted/ResolvedRefs/Programmed with attachedRoutes counting the routes attached and
  supportedKinds; the HTTPRoute's parent (controllerName istio.io/gateway-controller)
  Accepted and ResolvedRefs; every condition with the object's observedGeneration;
- unresolved: a backend Service that does not exist (ResolvedRefs False BackendNotFound),
  a backend in another namespace without a ReferenceGrant (RefNotPermitted; True once the
  grant is applied), a TLS listener's Secret in another namespace without a grant (the
  listener's ResolvedRefs False RefNotPermitted, Programmed False);
- conflicting: two listeners on one port with different protocols (both Conflicted True
  ProtocolConflict, not Programmed; the CRD itself refuses one port, protocol and hostname
  twice), a route whose parentRef names a listener that does not exist
  (Accepted False NoMatchingParent);
- a route of another controller's parent keeps that controller's entry.
"""
from __future__ import annotations

import pytest
from kubernetes import client

from controlplane.names import GATEWAY_API_CONTROLLER
from tests.support.harness import meshd, wait_for

pytestmark = pytest.mark.e2e

GW = ("gateway.networking.k8s.io", "v1")
OTHER_CONTROLLER = "example.com/another-controller"


@pytest.fixture
def cluster(kube):
    system, ns, other = kube.ns("istio-system"), kube.ns("shop"), kube.ns("backends")
    api = kube.api_client()
    return kube.cluster, client.CustomObjectsApi(api), client.CoreV1Api(api), system, ns, other


def service(name: str, ns: str) -> dict:
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": ns},
            "spec": {"selector": {"app": name}, "ports": [{"name": "http", "port": 80, "targetPort": 8080}]}}


def gateway(ns: str, other: str) -> dict:
    # ClusterIP: meshd deploys this Gateway's Service, and a LoadBalancer one would keep it
    # Programmed False (AddressNotAssigned) on this cluster, which has no load balancer
    return {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
            "metadata": {"name": "gw", "namespace": ns, "annotations": {"networking.istio.io/service-type": "ClusterIP"}},
            "spec": {"gatewayClassName": "istio", "listeners": [
                {"name": "http", "port": 80, "protocol": "HTTP", "allowedRoutes": {"namespaces": {"from": "Same"}}},
                # one port, two protocols (the CRD refuses one port, protocol and hostname twice)
                {"name": "web-9000", "port": 9000, "protocol": "HTTP"},
                {"name": "tcp-9000", "port": 9000, "protocol": "TCP"},
                {"name": "https", "port": 443, "protocol": "HTTPS", "hostname": "shop.example.com",
                 "tls": {"mode": "Terminate", "certificateRefs": [{"name": "shop-cert", "namespace": other}]}}]}}


def route(name: str, ns: str, backend: str, backend_ns: str | None = None, section: str = "http",
          extra_parents: tuple[dict, ...] = ()) -> dict:
    ref = {"name": backend, "port": 80, **({"namespace": backend_ns} if backend_ns else {})}
    return {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
            "metadata": {"name": name, "namespace": ns},
            "spec": {"parentRefs": [{"name": "gw", "sectionName": section}, *extra_parents],
                     "hostnames": [f"{name}.example.com"], "rules": [{"backendRefs": [ref]}]}}


def conditions(status: dict) -> dict[str, tuple[str, str]]:
    return {c["type"]: (c["status"], c["reason"]) for c in status.get("conditions") or []}


def test_gateway_api_status_accepted_unresolved_and_conflicting(cluster, tmp_path):
    c, custom, core, system, ns, other = cluster
    for name, where in (("web", ns), ("store", other)):
        core.create_namespaced_service(where, service(name, where))
    custom.create_namespaced_custom_object(*GW, ns, "gateways", gateway(ns, other))
    routes = {
        "ok": route("ok", ns, "web"),
        "missing": route("missing", ns, "nope"),
        "cross": route("cross", ns, "store", backend_ns=other),
        "nosection": route("nosection", ns, "web", section="grpc"),
        # a parent of another implementation: its entry is not meshd's to touch
        "shared": route("shared", ns, "web", extra_parents=({"name": "elsewhere"},)),
    }
    for r in routes.values():
        custom.create_namespaced_custom_object(*GW, ns, "httproutes", r)
    theirs = {"parentRef": {"name": "elsewhere"}, "controllerName": OTHER_CONTROLLER,
              "conditions": [{"type": "Accepted", "status": "True", "reason": "Accepted", "message": "theirs",
                              "lastTransitionTime": "2026-01-01T00:00:00Z", "observedGeneration": 1}]}
    custom.patch_namespaced_custom_object_status(*GW, ns, "httproutes", "shared", {"status": {"parents": [theirs]}})

    def status(plural: str, name: str) -> dict:
        return custom.get_namespaced_custom_object(*GW, ns, plural, name).get("status") or {}

    def parent(name: str, controller: str = GATEWAY_API_CONTROLLER) -> dict:
        return next((p for p in status("httproutes", name).get("parents") or []
                     if p.get("controllerName") == controller), {})

    with meshd(None, tmp_path, extra=["--kubeconfig", str(c.kubeconfig), "--leader-election-namespace", system,
                                      "--root-namespace", system]) as m:
        logs = lambda: "meshd log:\n" + m.log()[-3000:]
        # --- accepted --------------------------------------------------------------------------------
        wait_for(lambda: conditions(parent("ok")).get("Accepted") == ("True", "Accepted"), 30,
                 what=lambda: f"the route accepted: {status('httproutes', 'ok')}; {logs()}")
        assert conditions(parent("ok"))["ResolvedRefs"] == ("True", "ResolvedRefs")
        assert parent("ok")["parentRef"]["name"] == "gw"
        gw = status("gateways", "gw")
        # accepted, saying that some listeners (the conflicting and the unresolved ones below) are not valid
        assert conditions(gw)["Accepted"] == ("True", "ListenersNotValid") and conditions(gw)["Programmed"][0] == "True", gw
        generation = custom.get_namespaced_custom_object(*GW, ns, "gateways", "gw")["metadata"]["generation"]
        assert {cond["observedGeneration"] for cond in gw["conditions"]} == {generation}
        listeners = {ln["name"]: ln for ln in gw["listeners"]}
        http = listeners["http"]
        assert conditions(http)["Accepted"] == ("True", "Accepted") and conditions(http)["Programmed"][0] == "True"
        assert http["attachedRoutes"] == 4  # ok, missing, cross, shared (nosection names no listener)
        assert {k["kind"] for k in http["supportedKinds"]} == {"HTTPRoute", "GRPCRoute"}

        # --- unresolved ------------------------------------------------------------------------------
        assert conditions(parent("missing"))["ResolvedRefs"] == ("False", "BackendNotFound")
        assert conditions(parent("missing"))["Accepted"] == ("True", "Accepted")  # attached, but no backend
        assert conditions(parent("cross"))["ResolvedRefs"] == ("False", "RefNotPermitted")
        https = listeners["https"]
        assert conditions(https)["ResolvedRefs"] == ("False", "RefNotPermitted"), https
        assert conditions(https)["Programmed"][0] == "False"

        # --- conflicting -----------------------------------------------------------------------------
        for name in ("web-9000", "tcp-9000"):
            assert conditions(listeners[name])["Conflicted"] == ("True", "ProtocolConflict"), listeners[name]
            assert conditions(listeners[name])["Programmed"][0] == "False"
        assert conditions(http)["Conflicted"] == ("False", "NoConflicts")
        assert conditions(parent("nosection"))["Accepted"] == ("False", "NoMatchingParent")

        # --- another controller's parent kept --------------------------------------------------------
        assert conditions(parent("shared"))["Accepted"] == ("True", "Accepted")
        kept = parent("shared", OTHER_CONTROLLER)
        assert (kept["parentRef"]["name"], kept["conditions"][0]["message"]) == ("elsewhere", "theirs"), kept

        # --- the ReferenceGrant resolves the cross-namespace backend ---------------------------------
        custom.create_namespaced_custom_object(*GW, other, "referencegrants", {
            "apiVersion": "gateway.networking.k8s.io/v1", "kind": "ReferenceGrant",
            "metadata": {"name": "shop-routes", "namespace": other},
            "spec": {"from": [{"group": "gateway.networking.k8s.io", "kind": "HTTPRoute", "namespace": ns}],
                     "to": [{"group": "", "kind": "Service"}]}})
        wait_for(lambda: conditions(parent("cross")).get("ResolvedRefs") == ("True", "ResolvedRefs"), 30,
                 what=lambda: f"the grant honoured: {status('httproutes', 'cross')}")
        assert conditions(status("gateways", "gw")["listeners"][3])["ResolvedRefs"] == ("False", "RefNotPermitted")

        # --- a fix moves observedGeneration and the conditions -----------------------------------------
        fixed = custom.get_namespaced_custom_object(*GW, ns, "httproutes", "missing")
        fixed["spec"]["rules"][0]["backendRefs"][0]["name"] = "web"
        custom.replace_namespaced_custom_object(*GW, ns, "httproutes", "missing", fixed)
        wait_for(lambda: conditions(parent("missing")).get("ResolvedRefs") == ("True", "ResolvedRefs"), 30,
                 what=lambda: f"the fixed route resolved: {status('httproutes', 'missing')}")
        assert {cond["observedGeneration"] for cond in parent("missing")["conditions"]} == {2}
