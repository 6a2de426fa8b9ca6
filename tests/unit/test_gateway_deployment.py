"""The gateway meshd deploys for a Kubernetes Gateway (model/gateway_api/deployment.py),
compared with istiod's deployment controller goldens (../shared/corpus/istio/pilot/pkg/
config/kube/gatewaycommon/testdata/deployment/, inputs from its deploymentcontroller_test.go),
the status its Service gives the Gateway, parametersRef, and the leader's controller
(kube/gateway_deployment.py) against an in-memory API."""
from __future__ import annotations

import asyncio
import copy
from typing import Any

import pytest
import yaml

from controlplane.config.objects import ConfigKey, ConfigObject, Origin
from controlplane.config.parse import parse_document
from controlplane.config.snapshot import ConfigSnapshot
from controlplane.kube.api import ApiError
from controlplane.kube.gateway_deployment import GatewayDeployer, covers, settings_from_env, with_problems
from controlplane.model.gateway_api import deployment
from controlplane.model.gateway_api.status import gateway_api_status
from tests.support.configs import mesh_from_yaml
from tests.support.paths import shared

GOLDENS = ("corpus", "istio", "pilot", "pkg", "config", "kube", "gatewaycommon", "testdata", "deployment")


def gateway(name: str = "default", namespace: str = "default", *, labels: dict | None = None,
            annotations: dict | None = None, cls: str = "istio", listeners: list | None = None,
            addresses: list | None = None, infrastructure: dict | None = None) -> ConfigObject:
    spec: dict[str, Any] = {"gatewayClassName": cls, "listeners": listeners or []}
    if addresses is not None:
        spec["addresses"] = addresses
    if infrastructure is not None:
        spec["infrastructure"] = infrastructure
    if spec["listeners"]:
        doc = {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
               "metadata": {"name": name, "namespace": namespace, "labels": labels or {},
                            "annotations": annotations or {}}, "spec": spec}
        obj = parse_document(doc, Origin("test", "gw"))
        assert isinstance(obj, ConfigObject), obj
        return obj
    # istiod's goldens have Gateways without listeners, which the CRD would refuse
    return ConfigObject("KubernetesGateway", "gateway.networking.k8s.io", "v1", namespace, name, labels or {},
                        annotations or {}, spec, Origin("test", "gw"))


HTTP = [{"name": "http", "port": 80, "protocol": "HTTP"}]
# istiod's test inputs (deploymentcontroller_test.go), by golden file
CASES = {
    "simple": gateway(labels={"should": "see"}, annotations={"should": "see"}),
    "manual-sa": gateway(annotations={"gateway.istio.io/service-account": "custom-sa"}),
    "manual-ip": gateway(annotations={"gateway.istio.io/name-override": "default"},
                         addresses=[{"type": "IPAddress", "value": "1.2.3.4"}]),
    "cluster-ip": gateway(annotations={"networking.istio.io/service-type": "ClusterIP",
                                       "gateway.istio.io/name-override": "default"}, listeners=HTTP),
    "custom-class": gateway(cls="custom"),
    "infrastructure-labels-annotations": gateway(
        labels={"should-not": "see"}, annotations={"should-not": "see"},
        infrastructure={"labels": {"foo": "bar", "gateway.networking.k8s.io/ignore": "true"},
                        "annotations": {"fizz": "buzz", "gateway.networking.k8s.io/ignore": "true"}}),
}


def golden(case: str) -> dict[str, dict]:
    docs = yaml.safe_load_all(shared(*GOLDENS, f"{case}.yaml").read_text())
    return {d["kind"]: d for d in docs if d and d["kind"] in ("ServiceAccount", "Service", "Deployment")}


def _meta(doc: dict) -> dict:
    md = doc["metadata"]
    return {"name": md["name"], "namespace": md["namespace"], "labels": md.get("labels") or {},
            "annotations": md.get("annotations") or {},
            "owners": [(o["apiVersion"], o["kind"], o["name"]) for o in md.get("ownerReferences") or []]}


@pytest.mark.parametrize("case", sorted(CASES))
def test_objects_are_named_labelled_and_owned_as_istiods_goldens(case):
    ours = {d["kind"]: d for d in deployment.objects(CASES[case], "uid-1")}
    theirs = golden(case)
    assert set(ours) == set(theirs) == {"ServiceAccount", "Service", "Deployment"}
    for kind in ours:
        assert _meta(ours[kind]) == _meta(theirs[kind]), kind
        assert ours[kind]["metadata"]["ownerReferences"][0]["uid"] == "uid-1"
    assert ours["Service"]["spec"] == theirs["Service"]["spec"]
    dep, want = ours["Deployment"]["spec"], theirs["Deployment"]["spec"]
    assert dep["selector"] == want["selector"]
    assert dep["template"]["metadata"]["labels"] == want["template"]["metadata"]["labels"]
    # Prometheus scrapes Envoy itself (15090): there is no istio-agent serving 15020
    annotations = {**want["template"]["metadata"]["annotations"], "prometheus.io/port": "15090"}
    assert dep["template"]["metadata"]["annotations"] == annotations
    assert dep["template"]["spec"]["serviceAccountName"] == want["template"]["spec"]["serviceAccountName"]
    assert dep["template"]["spec"]["securityContext"] == want["template"]["spec"]["securityContext"]


def test_the_pod_runs_envoy_with_the_bootstrap_meshd_writes_from_the_downward_api():
    gw = gateway("web", "shop", listeners=HTTP)
    settings = deployment.Settings(envoy_image="envoyproxy/envoy:v1.40.0", init_image="meshd:9",
                                   xds_address="istiod.mesh.svc:15012")
    pod = deployment.objects(gw, "u", settings)[2]["spec"]["template"]["spec"]
    init, = pod["initContainers"]
    proxy, = pod["containers"]
    assert init["image"] == "meshd:9" and proxy["image"] == "envoyproxy/envoy:v1.40.0"
    args = init["args"]
    flag = {args[i]: args[i + 1] for i in range(1, len(args) - 1, 2)}
    assert args[0] == "bootstrap" and flag["--type"] == "router"
    assert flag["--labels"] == "gateway.networking.k8s.io/gateway-name=web"
    assert flag["--xds-address"] == "istiod.mesh.svc:15012"
    # the projected token is read by Envoy at every connection (it rotates), so Envoy mounts it too
    assert flag["--token-path"] == "/var/run/secrets/tokens/istio-token"
    assert {"name": "istio-token", "mountPath": "/var/run/secrets/tokens"} in proxy["volumeMounts"]
    assert (flag["--pod"], flag["--ip"], flag["--namespace"]) == ("$(POD_NAME)", "$(INSTANCE_IP)", "$(POD_NAMESPACE)")
    env = {e["name"]: e["valueFrom"]["fieldRef"]["fieldPath"] for e in init["env"]}
    assert env["INSTANCE_IP"] == "status.podIP" and env["SERVICE_ACCOUNT"] == "spec.serviceAccountName"
    assert proxy["args"][:2] == ["-c", flag["--output"]]
    assert proxy["readinessProbe"]["httpGet"]["port"] == 15021 == int(flag["--health-port"])
    assert proxy["securityContext"]["runAsUser"] == 1337
    token = next(v for v in pod["volumes"] if v["name"] == "istio-token")
    assert token["projected"]["sources"][0]["serviceAccountToken"]["audience"] == "istio-ca"


def test_service_ports_follow_the_listeners_one_port_each():
    gw = gateway(listeners=[{"name": "http", "port": 80, "protocol": "HTTP"},
                            {"name": "http.alt", "port": 80, "protocol": "HTTP", "hostname": "a.example.com"},
                            {"name": "tls.passthrough", "port": 443, "protocol": "TLS",
                             "tls": {"mode": "Passthrough"}}])
    assert [(p["name"], p["port"], p["appProtocol"]) for p in deployment.service_ports(gw)] == [
        ("status-port", 15021, "tcp"), ("http", 80, "http"), ("tls-passthrough", 443, "tls")]


def test_a_gateway_naming_its_service_is_not_deployed():
    assert deployment.is_managed(gateway())
    assert deployment.is_managed(gateway(addresses=[{"type": "IPAddress", "value": "1.2.3.4"}]))
    assert not deployment.is_managed(gateway(addresses=[{"type": "Hostname", "value": "ingress"}]))


# --- parametersRef -------------------------------------------------------------------------


def test_parameters_ref_of_another_kind_is_invalid_parameters_in_the_status():
    """Istio's golden gateway-invalid-parameters-ref: the first Gateway's ref is no ConfigMap."""
    text = shared("corpus", "istio", "pilot", "pkg", "config", "kube", "gateway", "testdata",
                  "gateway-invalid-parameters-ref.yaml").read_text()
    ingress = ("apiVersion: v1\nkind: Service\nmetadata: {name: istio-ingressgateway, namespace: istio-system}\n"
               "spec: {selector: {istio: ingressgateway}, clusterIP: 10.96.0.2, ports: [{port: 80}]}\n")
    mesh = mesh_from_yaml(text + "\n---\n" + ingress)
    statuses = gateway_api_status(mesh.gateway_api)

    def accepted(name: str) -> tuple[str, str, str]:
        c = next(c for c in statuses[ConfigKey("KubernetesGateway", "istio-system", name)]["conditions"]
                 if c["type"] == "Accepted")
        return c["status"], c["reason"], c["message"]

    assert accepted("invalid-parameters-type") == (
        "False", "InvalidParameters",
        "Unsupported parametersRef group/kind invalid.io/InvalidParameters, only ConfigMap is supported")
    # a ConfigMap: what the cluster holds decides (the controller), the model cannot know
    assert accepted("valid-parameters-configmap")[:2] == ("True", "Accepted")


def test_a_configmap_overlays_the_objects_and_what_meshd_cannot_apply_is_refused():
    docs = deployment.objects(gateway(listeners=HTTP), "u")
    data = {"deployment": "spec:\n  replicas: 2\n  template:\n    spec:\n      containers:\n"
                          "      - name: istio-proxy\n        resources: {limits: {memory: 1Gi}}\n",
            "service": "metadata:\n  annotations: {cloud.example/internal: 'true'}\n"}
    out, problem = deployment.with_parameters(docs, data)
    assert problem == ""
    dep = out[2]["spec"]
    assert dep["replicas"] == 2
    proxy, = dep["template"]["spec"]["containers"]  # merged by name, not replaced
    assert proxy["resources"] == {"limits": {"memory": "1Gi"}} and proxy["image"] == deployment.Settings().envoy_image
    assert out[1]["metadata"]["annotations"]["cloud.example/internal"] == "true"
    assert out[0] == docs[0]

    _, problem = deployment.with_parameters(docs, {"horizontalPodAutoscaler": "spec: {maxReplicas: 3}"})
    assert "unsupported key(s) horizontalPodAutoscaler" in problem
    _, problem = deployment.with_parameters(docs, {"service": "metadata: {name: other}"})
    assert "cannot change" in problem
    _, problem = deployment.with_parameters(docs, {"deployment": "[1, 2]"})
    assert "not a mapping" in problem


def test_the_clusters_parameters_problem_replaces_accepted():
    key = ConfigKey("KubernetesGateway", "shop", "web")
    statuses = {key: {"conditions": [{"type": "Accepted", "status": "True", "reason": "Accepted", "message": ""},
                                     {"type": "Programmed", "status": "True", "reason": "Programmed", "message": ""}]}}
    out = with_problems(statuses, {key: "parametersRef ConfigMap shop/p does not exist"})
    assert [(c["type"], c["status"], c["reason"]) for c in out[key]["conditions"]] == [
        ("Accepted", "False", "InvalidParameters"), ("Programmed", "True", "Programmed")]
    assert statuses[key]["conditions"][0]["status"] == "True"  # the model's own is left as it was


# --- the status the Service gives ----------------------------------------------------------

GW_YAML = """
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: web, namespace: shop}
spec:
  gatewayClassName: istio
  listeners: [{name: http, port: 80, protocol: HTTP}]
"""


def service_yaml(spec: str, status: str = "{}") -> str:
    return f"""
---
apiVersion: v1
kind: Service
metadata: {{name: web-istio, namespace: shop, labels: {{gateway.istio.io/managed: istio.io-gateway-controller}}}}
spec: {spec}
status: {status}
"""


def gateway_status(text: str) -> dict:
    return gateway_api_status(mesh_from_yaml(text).gateway_api)[ConfigKey("KubernetesGateway", "shop", "web")]


def programmed(status: dict) -> tuple[str, str]:
    c = next(c for c in status["conditions"] if c["type"] == "Programmed")
    return c["status"], c["reason"]


def test_addresses_are_the_load_balancers_once_it_has_them():
    spec = "{type: LoadBalancer, clusterIP: 10.96.0.40, selector: {app: x}, ports: [{port: 80}]}"
    pending = gateway_status(GW_YAML + service_yaml(spec))
    assert programmed(pending) == ("False", "AddressNotAssigned")
    assert pending["addresses"] == [{"type": "IPAddress", "value": "10.96.0.40"}]
    ready = gateway_status(GW_YAML + service_yaml(
        spec, "{loadBalancer: {ingress: [{ip: 203.0.113.7}, {hostname: lb.example.com}]}}"))
    assert programmed(ready) == ("True", "Programmed")
    assert ready["addresses"] == [{"type": "IPAddress", "value": "203.0.113.7"},
                                  {"type": "Hostname", "value": "lb.example.com"}]


def test_a_cluster_ip_service_gives_its_cluster_ip_else_its_dns_name():
    with_ip = gateway_status(GW_YAML + service_yaml("{type: ClusterIP, clusterIP: 10.96.0.41, ports: [{port: 80}]}"))
    assert programmed(with_ip) == ("True", "Programmed")
    assert with_ip["addresses"] == [{"type": "IPAddress", "value": "10.96.0.41"}]
    no_ip = gateway_status(GW_YAML + service_yaml("{ports: [{port: 80}]}"))
    assert no_ip["addresses"] == [{"type": "Hostname", "value": "web-istio.shop.svc.cluster.local"}]


# --- the controller against an in-memory API -------------------------------------------------


class MemoryApi:
    """Enough of the API server for the controller: objects by path, GET/POST/PATCH/DELETE,
    a collection GET with a label selector, uids and resourceVersions."""

    def __init__(self) -> None:
        self.objects: dict[str, dict] = {}
        self.calls: list[tuple[str, str]] = []
        self.applies: list[str] = []
        self._n = 0

    def put(self, resource_path: str, obj: dict) -> dict:
        self._n += 1
        obj = copy.deepcopy(obj)
        md = obj.setdefault("metadata", {})
        md.setdefault("uid", f"uid-{self._n}")
        md["resourceVersion"] = str(self._n)
        self.objects[resource_path] = obj
        return obj

    async def call(self, method: str, resource_path: str, body: Any = None, **kw: Any) -> dict:
        self.calls.append((method, resource_path))
        if method == "GET" and resource_path in self.objects:
            return copy.deepcopy(self.objects[resource_path])
        if method == "GET" and "query" in kw:  # a collection, by label selector
            key, _, value = kw["query"]["labelSelector"].partition("=")
            prefix = resource_path.rsplit("/", 1)[-1]
            return {"items": [copy.deepcopy(o) for p, o in self.objects.items()
                              if p.split("/")[-2] == prefix and (o["metadata"].get("labels") or {}).get(key) == value]}
        if method == "POST":
            name = body["metadata"]["name"]
            return self.put(f"{resource_path}/{name}", body)
        if method == "PATCH" and kw.get("content_type") == "application/apply-patch+yaml":
            self.applies.append(resource_path)
            current = self.objects.get(resource_path)
            if current is not None and body["metadata"].get("resourceVersion") != current["metadata"]["resourceVersion"]:
                raise ApiError(409, "Conflict", resource_path)
            md = {**body["metadata"], "uid": (current or {}).get("metadata", {}).get("uid") or f"uid-{self._n + 1}"}
            return self.put(resource_path, {**body, "metadata": md})  # the applied fields, nothing else
        if resource_path not in self.objects:
            raise ApiError(404, "NotFound", resource_path)
        if method == "PATCH":
            current = self.objects[resource_path]
            if body["metadata"].get("resourceVersion") != current["metadata"]["resourceVersion"]:
                raise ApiError(409, "Conflict", resource_path)
            merged = {**current, **{k: v for k, v in body.items() if k != "metadata"},
                      "metadata": {**current["metadata"], **body["metadata"]}}
            return self.put(resource_path, merged)
        if method == "DELETE":
            assert body["preconditions"]["uid"] == self.objects[resource_path]["metadata"]["uid"]
            return self.objects.pop(resource_path)
        raise AssertionError(method)

    def writes(self) -> list[tuple[str, str]]:
        return [c for c in self.calls if c[0] != "GET"]


GW_PATH = "/apis/gateway.networking.k8s.io/v1/namespaces/shop/gateways/web"
OBJECTS = {"ServiceAccount": "/api/v1/namespaces/shop/serviceaccounts/web-istio",
           "Service": "/api/v1/namespaces/shop/services/web-istio",
           "Deployment": "/apis/apps/v1/namespaces/shop/deployments/web-istio"}


def config_of(*objs: ConfigObject) -> ConfigSnapshot:
    return ConfigSnapshot({o.key: o for o in objs})


def run(coro):
    return asyncio.run(coro)


def test_the_leader_creates_the_objects_once_and_leaves_them_while_they_say_the_same():
    api = MemoryApi()
    gw = gateway("web", "shop", listeners=HTTP)
    api.put(GW_PATH, {"metadata": {"name": "web", "namespace": "shop", "uid": "gw-uid"}})
    deployer = GatewayDeployer(api, deployment.Settings())  # type: ignore[arg-type]
    assert run(deployer.reconcile(config_of(gw)))
    # server-side apply creates them (field manager meshd)
    assert sorted(api.writes()) == sorted(("PATCH", p) for p in OBJECTS.values())
    for kind, p in OBJECTS.items():
        owner, = api.objects[p]["metadata"]["ownerReferences"]
        assert (owner["kind"], owner["name"], owner["uid"]) == ("Gateway", "web", "gw-uid"), kind
    # the API server adds its defaults: still what meshd wants, nothing written
    api.objects[OBJECTS["Service"]]["spec"]["clusterIP"] = "10.96.0.9"
    api.objects[OBJECTS["Service"]]["spec"]["ports"][1]["targetPort"] = 80
    before = len(api.writes())
    assert run(deployer.reconcile(config_of(gw)))
    assert len(api.writes()) == before

    # a listener added: the Service is patched (at the version read) with the new port
    gw2 = gateway("web", "shop", listeners=[*HTTP, {"name": "tcp", "port": 443, "protocol": "TCP"}])
    assert run(deployer.reconcile(config_of(gw2)))
    assert ("PATCH", OBJECTS["Service"]) in api.writes()
    assert [p["port"] for p in api.objects[OBJECTS["Service"]]["spec"]["ports"]] == [15021, 80, 443]


def test_objects_meshd_did_not_make_are_never_touched_and_the_gateways_are_deleted_with_it():
    api = MemoryApi()
    gw = gateway("web", "shop", listeners=HTTP)
    api.put(GW_PATH, {"metadata": {"name": "web", "namespace": "shop", "uid": "gw-uid"}})
    hand_made = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web-istio", "namespace": "shop"},
                 "spec": {"ports": [{"port": 9999}]}}
    api.put(OBJECTS["Service"], hand_made)
    # managed by someone, but owned by no Gateway: not meshd's to delete either
    api.put("/apis/apps/v1/namespaces/shop/deployments/loose", {"metadata": {
        "name": "loose", "namespace": "shop", "labels": {deployment.MANAGED_LABEL: deployment.MANAGED_VALUE}}})
    deployer = GatewayDeployer(api, deployment.Settings())  # type: ignore[arg-type]
    assert run(deployer.reconcile(config_of(gw)))
    assert api.objects[OBJECTS["Service"]]["spec"] == {"ports": [{"port": 9999}]}
    assert OBJECTS["Deployment"] in api.objects and OBJECTS["ServiceAccount"] in api.objects

    del api.objects[GW_PATH]
    assert run(deployer.reconcile(config_of()))  # the Gateway is gone from the snapshot
    assert OBJECTS["Deployment"] not in api.objects and OBJECTS["ServiceAccount"] not in api.objects
    assert OBJECTS["Service"] in api.objects  # the hand-made one stays
    assert "/apis/apps/v1/namespaces/shop/deployments/loose" in api.objects
    assert deployer.deletes == 2


def test_a_missing_parameters_configmap_stops_the_deployment_and_says_invalid_parameters():
    api = MemoryApi()
    gw = gateway("web", "shop", listeners=HTTP, infrastructure={"parametersRef": {
        "group": "", "kind": "ConfigMap", "name": "web-params"}})
    api.put(GW_PATH, {"metadata": {"name": "web", "namespace": "shop", "uid": "gw-uid"}})
    deployer = GatewayDeployer(api, deployment.Settings())  # type: ignore[arg-type]
    published: list[dict] = []
    deployer.on_status = published.append
    key = ConfigKey("KubernetesGateway", "shop", "web")
    base = {key: {"conditions": [{"type": "Accepted", "status": "True", "reason": "Accepted", "message": ""}]}}
    assert deployer.with_status(base) == base
    assert run(deployer.reconcile(config_of(gw)))
    assert api.writes() == []
    accepted = published[-1][key]["conditions"][0]
    assert (accepted["status"], accepted["reason"], accepted["message"]) == (
        "False", "InvalidParameters", "parametersRef ConfigMap shop/web-params does not exist")

    api.put("/api/v1/namespaces/shop/configmaps/web-params",
            {"metadata": {"name": "web-params"}, "data": {"deployment": "spec: {replicas: 3}"}})
    assert run(deployer.reconcile(config_of(gw)))
    assert api.objects[OBJECTS["Deployment"]]["spec"]["replicas"] == 3
    assert published[-1] == base  # Accepted again
    # the overlay taken out again: applied without it, so the field is meshd's no more
    api.objects["/api/v1/namespaces/shop/configmaps/web-params"]["data"] = {}
    assert run(deployer.reconcile(config_of(gw)))
    assert "replicas" not in api.objects[OBJECTS["Deployment"]]["spec"]


def test_covers_tolerates_what_the_api_server_adds_but_not_a_changed_list():
    want = {"spec": {"ports": [{"port": 80}], "selector": {"a": "b"}}, "metadata": {"annotations": {}}}
    assert covers({"spec": {"ports": [{"port": 80, "targetPort": 80}], "selector": {"a": "b"}, "clusterIP": "x"},
                   "metadata": {}}, want)
    assert not covers({"spec": {"ports": [{"port": 80}, {"port": 81}], "selector": {"a": "b"}}}, want)
    assert not covers({"spec": {"ports": [{"port": 80}], "selector": {"a": "c"}}}, want)
    # the API server omits zero values: `initialDelaySeconds: 0` comes back absent
    assert covers({"probe": {"periodSeconds": 15}}, {"probe": {"periodSeconds": 15, "initialDelaySeconds": 0}})
    assert not covers({"probe": {}}, {"probe": {"periodSeconds": 15}})


def test_images_come_from_meshds_environment():
    s = settings_from_env("mesh-system", environ={"MESHD_GATEWAY_ENVOY_IMAGE": "mirror/envoy:1",
                                                  "MESHD_GATEWAY_INIT_IMAGE": "mirror/meshd:1"})
    assert (s.envoy_image, s.init_image, s.xds_address) == ("mirror/envoy:1", "mirror/meshd:1",
                                                            "istiod.mesh-system.svc:15012")
