"""The gateway meshd deploys for a Kubernetes Gateway of class istio, on the real
kube-apiserver of ../shared/k8s (`meshd serve --kubeconfig`, the leader; no
controller-manager, no kubelet: the Deployment never gets pods, and nothing but meshd
deletes what the Gateway owned), as an operator would check it with kubectl:

- the Gateway gets ServiceAccount, Service and Deployment `<gateway>-istio`, labelled and
  owned (ownerReferences with the Gateway's uid) as istiod's deployment controller does;
  the Service has the status port and one port per listener, type LoadBalancer; the pod
  runs Envoy after `meshd bootstrap --type router`;
- a listener added adds a Service port; infrastructure labels reach every object, and leave
  it when taken out of the Gateway;
- the Gateway's status: Programmed False AddressNotAssigned while the load balancer has no
  address, then (the address written into the Service's status, as a cloud's controller
  would) that address in status.addresses and Programmed True;
- a Service of that name meshd did not make is never changed;
- a parametersRef to a ConfigMap that does not exist: Accepted False InvalidParameters and
  nothing deployed; once it exists, its overlay (replicas 2) is in the Deployment;
- deleting the Gateway deletes its objects;
- every request meshd made for this is allowed by deploy/kubernetes' RBAC rules, and every
  rule the gateway deployment added was used.
"""
from __future__ import annotations

import json

import pytest
import yaml
from kubernetes import client

from controlplane.config.objects import ConfigObject, Origin
from controlplane.config.parse import parse_document
from controlplane.model.gateway_api import deployment
from tests.support.echo_basic import echo_pod
from tests.support.envoy import envoy_binary
from tests.support.harness import Process, free_port, http_get, meshd, meshd_cli, wait_for, write
from tests.support.kube import RecordingProxy
from tests.support.paths import REPO
from tests.support.rbac import load_manifests, rbac_mismatch

pytestmark = pytest.mark.e2e

GW = ("gateway.networking.k8s.io", "v1")
MANAGED = "gateway.istio.io/managed"
NAME_LABEL = "gateway.networking.k8s.io/gateway-name"


def gateway(name: str, ns: str, listeners: list[dict], **spec) -> dict:
    return {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway", "metadata": {"name": name, "namespace": ns},
            "spec": {"gatewayClassName": "istio", "listeners": listeners, **spec}}


def conditions(status: dict) -> dict[str, tuple[str, str]]:
    return {c["type"]: (c["status"], c["reason"]) for c in status.get("conditions") or []}


def test_a_gateway_of_class_istio_gets_its_deployment_service_and_account_and_loses_them(kube, tmp_path):
    system, ns = kube.ns("istio-system"), kube.ns("shop")
    api = kube.api_client()
    custom, core, apps = client.CustomObjectsApi(api), client.CoreV1Api(api), client.AppsV1Api(api)
    http = [{"name": "http", "port": 80, "protocol": "HTTP"}]
    custom.create_namespaced_custom_object(*GW, ns, "gateways", gateway("web", ns, http))
    # a Service of the name the next Gateway's would have, made by hand: never meshd's to change
    core.create_namespaced_service(ns, {"metadata": {"name": "manual-istio"},
                                        "spec": {"ports": [{"name": "mine", "port": 9999}]}})
    custom.create_namespaced_custom_object(*GW, ns, "gateways", gateway("manual", ns, http))
    custom.create_namespaced_custom_object(*GW, ns, "gateways", gateway(
        "tuned", ns, http, infrastructure={"parametersRef": {"group": "", "kind": "ConfigMap", "name": "tuned-params"}}))

    def status(name: str) -> dict:
        return custom.get_namespaced_custom_object(*GW, ns, "gateways", name).get("status") or {}

    def get(kind: str, name: str) -> dict | None:
        return kube.get("apps/v1" if kind == "Deployment" else "v1", kind, name, ns)

    with RecordingProxy(kube.cluster) as proxy, meshd(None, tmp_path, extra=[
            "--kubeconfig", str(proxy.kubeconfig(tmp_path / "kubeconfig")), "--leader-election-namespace", system,
            "--root-namespace", system]) as m:
        logs = lambda: "meshd log:\n" + m.log()[-3000:]
        wait_for(lambda: get("Deployment", "web-istio") is not None, 30, what=lambda: f"the Deployment; {logs()}")
        uid = custom.get_namespaced_custom_object(*GW, ns, "gateways", "web")["metadata"]["uid"]
        for kind in ("ServiceAccount", "Service", "Deployment"):
            obj = get(kind, "web-istio")
            assert obj is not None, kind
            labels = obj["metadata"]["labels"]
            assert (labels[NAME_LABEL], labels["gateway.networking.k8s.io/gateway-class-name"], labels[MANAGED]) == (
                "web", "istio", "istio.io-gateway-controller"), kind
            owner, = obj["metadata"]["ownerReferences"]
            assert (owner["apiVersion"], owner["kind"], owner["name"], owner["uid"]) == (
                "gateway.networking.k8s.io/v1", "Gateway", "web", uid), kind
        svc = core.read_namespaced_service("web-istio", ns)
        assert svc.spec.type == "LoadBalancer" and svc.spec.selector == {NAME_LABEL: "web"}
        assert [(p.name, p.port, p.app_protocol) for p in svc.spec.ports] == [("status-port", 15021, "tcp"),
                                                                              ("http", 80, "http")]
        dep = apps.read_namespaced_deployment("web-istio", ns)
        assert dep.spec.replicas == 1 and dep.spec.selector.match_labels == {NAME_LABEL: "web"}
        pod = dep.spec.template.spec
        assert pod.service_account_name == "web-istio"
        assert pod.init_containers[0].args[:3] == ["bootstrap", "--type", "router"]
        assert pod.containers[0].name == "istio-proxy" and pod.containers[0].command == ["envoy"]

        # --- the status: the load balancer's address, once it has one -----------------------------
        wait_for(lambda: conditions(status("web")).get("Programmed") == ("False", "AddressNotAssigned"), 30,
                 what=lambda: f"Programmed waiting for the load balancer: {status('web')}; {logs()}")
        core.patch_namespaced_service_status("web-istio", ns, {"status": {"loadBalancer": {"ingress": [
            {"ip": "203.0.113.10"}]}}})
        wait_for(lambda: status("web").get("addresses") == [{"type": "IPAddress", "value": "203.0.113.10"}], 30,
                 what=lambda: f"the load balancer's address: {status('web')}")
        assert conditions(status("web"))["Programmed"] == ("True", "Programmed")

        # what the API server defaulted is still what meshd wants: nothing rewritten since creation
        assert "gateway object updated" not in m.log()

        # --- a listener added, infrastructure labels: every object follows --------------------------
        custom.patch_namespaced_custom_object(*GW, ns, "gateways", "web", {"spec": {
            "listeners": [*http, {"name": "tcp", "port": 9000, "protocol": "TCP"}],
            "infrastructure": {"labels": {"team": "shop"}}}})
        wait_for(lambda: [p.port for p in core.read_namespaced_service("web-istio", ns).spec.ports] == [15021, 80, 9000],
                 30, what=lambda: f"the new listener's port; {logs()}")
        wait_for(lambda: all((get(k, "web-istio") or {}).get("metadata", {}).get("labels", {}).get("team") == "shop"
                             for k in ("ServiceAccount", "Service", "Deployment")), 30, what="the infrastructure label")
        # ... and what meshd stops setting is removed (server-side apply: the field was meshd's)
        custom.patch_namespaced_custom_object(*GW, ns, "gateways", "web", {"spec": {"infrastructure": None}})
        wait_for(lambda: all("team" not in (get(k, "web-istio") or {}).get("metadata", {}).get("labels", {})
                             for k in ("ServiceAccount", "Service", "Deployment")), 30, what="the label removed")

        # --- what meshd did not make stays as it is -------------------------------------------------
        wait_for(lambda: get("Deployment", "manual-istio") is not None, 30, what="the second Gateway's Deployment")
        manual = core.read_namespaced_service("manual-istio", ns)
        assert [(p.name, p.port) for p in manual.spec.ports] == [("mine", 9999)] and not (manual.metadata.labels or {})
        assert "is not meshd's: left alone" in m.log()

        # --- parametersRef: a missing ConfigMap, then one that scales the Deployment -----------------
        wait_for(lambda: conditions(status("tuned")).get("Accepted") == ("False", "InvalidParameters"), 30,
                 what=lambda: f"InvalidParameters: {status('tuned')}")
        assert get("Deployment", "tuned-istio") is None
        core.create_namespaced_config_map(ns, {"metadata": {"name": "tuned-params"},
                                               "data": {"deployment": "spec:\n  replicas: 2\n"}})
        # ConfigMaps are not watched: the next resync (30 s) or a change of the Gateway reads it
        custom.patch_namespaced_custom_object(*GW, ns, "gateways", "tuned", {"metadata": {"annotations": {"touch": "1"}}})
        wait_for(lambda: (get("Deployment", "tuned-istio") or {}).get("spec", {}).get("replicas") == 2, 30,
                 what=lambda: f"the overlay's replicas; {logs()}")
        wait_for(lambda: conditions(status("tuned")).get("Accepted") == ("True", "Accepted"), 30,
                 what=lambda: f"accepted again: {status('tuned')}")

        # --- deleting the Gateway deletes what it owned (there is no garbage collector here) ---------
        custom.delete_namespaced_custom_object(*GW, ns, "gateways", "web")
        wait_for(lambda: all(get(k, "web-istio") is None for k in ("ServiceAccount", "Service", "Deployment")), 30,
                 what=lambda: f"the objects deleted; {logs()}")
        assert get("Deployment", "manual-istio") is not None  # the other Gateways keep theirs

    # --- RBAC: allowed, and the gateway deployment's rules all used ----------------------------------
    # (the manifests' Role is for namespace istio-system, this test's is istio-system-<tag>: only
    # the cluster-wide rules the gateway deployment uses are checked here; test_replicas checks the rest)
    problems = rbac_mismatch(proxy, load_manifests(REPO / "deploy" / "kubernetes"))
    mine = ("apps/deployments ", "core/serviceaccounts ", "core/services ", "gateway.networking.k8s.io/gateways ",
            "get core/configmaps ")
    assert [p for p in problems if any(r in p for r in mine) and "istio-ca-root-cert" not in p] == []


def test_the_deployed_pod_run_as_written_serves_the_gateways_route(tmp_path):
    """No kubelet runs the Deployment on the test API server, so its pod is run here as a
    kubelet would: the init container's `meshd <args>` with the downward API's values, then
    the proxy container's command, the real Envoy. Only what the host shares is changed:
    the addresses of meshd's xDS port, root certificate and token (the pod's volumes), free
    ports instead of 15021/15090 and a dynamic base id (other Envoys run on this host)."""
    listener, backend = free_port("127.0.0.1"), free_port("127.0.3.9")
    gw_doc = {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
              "metadata": {"name": "web", "namespace": "shop"},
              "spec": {"gatewayClassName": "istio", "listeners": [{"name": "http", "port": listener,
                                                                    "protocol": "HTTP"}]}}
    cfg = tmp_path / "config"
    cfg.mkdir()
    write(cfg / "shop.yaml", yaml.safe_dump_all([
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "shop"}},
        gw_doc,
        {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute", "metadata": {"name": "web", "namespace": "shop"},
         "spec": {"parentRefs": [{"name": "web"}], "rules": [{"backendRefs": [{"name": "backend", "port": 80}]}]}},
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "backend", "namespace": "shop"},
         "spec": {"selector": {"app": "backend"}, "clusterIP": "10.96.5.5",
                  "ports": [{"name": "http", "port": 80, "targetPort": backend}]}},
        {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "backend-0", "namespace": "shop",
                                                         "labels": {"app": "backend"}},
         "spec": {"containers": [{"name": "echo", "image": "echo-basic"}]}, "status": {"podIP": "127.0.3.9"}},
    ]))
    gw = parse_document(gw_doc, Origin("test", "gw"))
    assert isinstance(gw, ConfigObject)
    with meshd(cfg, tmp_path) as m, echo_pod("shop", "backend-0", "127.0.3.9", backend):
        settings = deployment.Settings(xds_address=f"127.0.0.1:{m.secure_port}")
        pod = next(d for d in deployment.objects(gw, "uid", settings) if d["kind"] == "Deployment")
        spec = pod["spec"]["template"]["spec"]
        init, proxy = spec["initContainers"][0], spec["containers"][0]
        token = tmp_path / "istio-token"
        token.write_text(meshd_cli("token", "--ca-dir", str(m.ca_dir), "--namespace", "shop",
                                   "--service-account", spec["serviceAccountName"]).stdout.strip())
        bootstrap = tmp_path / "envoy.yaml"
        downward = {"$(POD_NAME)": "web-istio-5d8f9-0", "$(POD_NAMESPACE)": "shop", "$(INSTANCE_IP)": "127.0.0.1",
                    "$(SERVICE_ACCOUNT)": spec["serviceAccountName"]}
        host = {deployment.ROOT_CERT: str(m.root_cert), deployment.TOKEN: str(token), deployment.BOOTSTRAP: str(bootstrap),
                str(deployment.STATUS_PORT): str(free_port("127.0.0.1")), str(deployment.STATS_PORT): "0"}
        args = [host.get(a, downward.get(a, a)) for a in init["args"]]
        meshd_cli(*args, "--admin-port", str(admin := free_port("127.0.0.1")))
        argv = [envoy_binary(), *[host.get(a, a) for a in proxy["args"]], "--use-dynamic-base-id"]
        assert proxy["command"] == ["envoy"]
        envoy = Process("envoy", argv, tmp_path / "gateway-envoy.log")
        try:
            def answer() -> dict:
                status, body = http_get("127.0.0.1", listener, "/hello", timeout=2)
                return json.loads(body) if status == 200 else {}

            wait_for(lambda: envoy.alive() and _quiet(answer).get("pod") == "backend-0", 30,
                     what=lambda: f"the route through the gateway's Envoy:\n{envoy.log()[-2000:]}\n{m.log()[-2000:]}")
            assert answer()["namespace"] == "shop"
            status, body = http_get("127.0.0.1", admin, "/server_info")
            assert status == 200 and b"router~127.0.0.1~web-istio-5d8f9-0.shop~shop.svc.cluster.local" in body
        finally:
            envoy.stop()


def _quiet(fn):
    try:
        return fn()
    except (OSError, ValueError):
        return {}
