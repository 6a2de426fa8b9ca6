"""The gateway istiod's deployment controller would run for a Kubernetes Gateway, as a
pure function of the Gateway (pilot/pkg/config/kube/gatewaycommon/deploymentcontroller.go
and the `kube-gateway` template, read not copied):

    objects(gateway, uid, settings)   -> [ServiceAccount, Service, Deployment] (JSON)
    with_parameters(objects, data)    -> the objects with a parametersRef ConfigMap's overlays
    reported(config, reports)         -> Gateway reports with the Service's addresses

Names and labels are istiod's: `<gateway>-<class>` (annotations
`gateway.istio.io/name-override`, `gateway.istio.io/service-account`), labels
`gateway.networking.k8s.io/gateway-name`, `gateway.networking.k8s.io/gateway-class-name`,
`gateway.istio.io/managed: istio.io-gateway-controller` (the mark of what the controller
may change and delete), `istio.io/dataplane-mode: none`; the Gateway's labels and
annotations (or `spec.infrastructure.labels/annotations` when set) are copied onto every
object; owner references name the Gateway. The Service has the status port 15021 and one
port per listener port (name, appProtocol), type LoadBalancer unless
`networking.istio.io/service-type` says otherwise.

What differs from istiod, because meshd has no istio-agent: the pod runs the upstream
Envoy image; an init container from meshd's image writes Envoy's bootstrap with
`meshd bootstrap --type router` from the downward API (docs/gateway-deployment.md: the
image contract). Prometheus scrapes Envoy itself on 15090.

kube/gateway_deployment.py writes these objects (leader only); the model reports the
addresses of the Service it finds (`reported`, called by conversion.convert).
"""
from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ...config import kinds
from ...config.objects import ConfigObject
from ...config.snapshot import ConfigSnapshot
from ...names import (
    DOMAIN_SUFFIX,
    GATEWAY_API_GROUP,
    GATEWAY_NAME_LABEL,
    PORT_HEALTH,
    PORT_STATS,
    PORT_XDS_SECURE,
    fqdn,
)
from ..workloads import is_ip

if TYPE_CHECKING:  # conversion.py calls `reported`: its types only
    from .conversion import Condition, GatewayReport

MANAGED_LABEL = "gateway.istio.io/managed"
MANAGED_VALUE = "istio.io-gateway-controller"
CLASS_LABEL = "gateway.networking.k8s.io/gateway-class-name"
DATAPLANE_MODE_LABEL = "istio.io/dataplane-mode"
SERVICE_TYPE_ANNOTATION = "networking.istio.io/service-type"
NAME_OVERRIDE_ANNOTATION = "gateway.istio.io/name-override"
SERVICE_ACCOUNT_ANNOTATION = "gateway.istio.io/service-account"
# Not copied onto the objects (istiod's template omits them).
_OMITTED_ANNOTATIONS = frozenset({"kubectl.kubernetes.io/last-applied-configuration", NAME_OVERRIDE_ANNOTATION,
                                  SERVICE_ACCOUNT_ANNOTATION, "gateway.istio.io/controller-version"})
STATUS_PORT = PORT_HEALTH  # the readiness listener `meshd bootstrap` writes
STATS_PORT = PORT_STATS
GATEWAY_API_VERSION = f"{GATEWAY_API_GROUP}/v1"
# What a parametersRef ConfigMap may overlay (istiod also takes horizontalPodAutoscaler and
# podDisruptionBudget, which meshd does not create: reported, never ignored).
OVERLAY_KEYS = {"serviceAccount": "ServiceAccount", "service": "Service", "deployment": "Deployment"}
BOOTSTRAP = "/etc/istio/proxy/envoy.yaml"
ROOT_CERT = "/var/run/secrets/istio/root-cert.pem"
TOKEN = "/var/run/secrets/tokens/istio-token"


@dataclass(frozen=True)
class Settings:
    """What the operator chooses for every deployed gateway (docs/gateway-deployment.md)."""

    envoy_image: str = "envoyproxy/envoy:v1.40-latest"  # the Envoy meshd is tested with
    init_image: str = "meshd:latest"  # holds `meshd bootstrap`
    xds_address: str = f"istiod.istio-system.svc:{PORT_XDS_SECURE}"  # meshd's Service, named as istiod's
    image_pull_policy: str = ""  # "": the cluster's default


@dataclass(frozen=True)
class ParametersRef:
    group: str
    kind: str
    name: str


@dataclass(frozen=True)
class Infrastructure:
    """`spec.infrastructure` of a Gateway (Gateway API v1.1)."""

    labels: Mapping[str, str] | None = None  # None: not set (the Gateway's own are copied)
    annotations: Mapping[str, str] | None = None
    parameters_ref: ParametersRef | None = None


def infrastructure(gw: ConfigObject) -> Infrastructure:
    raw = gw.spec.get("infrastructure") if isinstance(gw.spec, Mapping) else None
    if not isinstance(raw, Mapping):
        return Infrastructure()
    ref = raw.get("parametersRef")

    def strings(value: Any) -> Mapping[str, str] | None:
        return {str(k): str(v) for k, v in value.items()} if isinstance(value, Mapping) else None

    return Infrastructure(strings(raw.get("labels")), strings(raw.get("annotations")),
                          ParametersRef(str(ref.get("group") or ""), str(ref.get("kind") or ""), str(ref.get("name") or ""))
                          if isinstance(ref, Mapping) else None)


def parameters_problem(gw: ConfigObject) -> str:
    """Why the Gateway's parametersRef is invalid whatever the cluster holds ("" if it is not):
    only a ConfigMap of the core group can be a Gateway's parameters, as in istiod."""
    ref = infrastructure(gw).parameters_ref
    if ref is None or (ref.group in ("", "core") and ref.kind == "ConfigMap"):
        return ""
    return f"Unsupported parametersRef group/kind {ref.group}/{ref.kind}, only ConfigMap is supported"


def parameters_configmap(gw: ConfigObject) -> tuple[str, str] | None:
    """(namespace, name) of the ConfigMap the Gateway's parametersRef names (its own namespace)."""
    ref = infrastructure(gw).parameters_ref
    if ref is None or parameters_problem(gw):
        return None
    return gw.namespace, ref.name


def is_managed(gw: ConfigObject) -> bool:
    """istiod's IsManaged: no address, or one IPAddress (the Service's loadBalancerIP). A
    Gateway naming its Service (a Hostname address) runs on a deployment of its own."""
    addresses = gw.typed.addresses
    return not addresses or (len(addresses) == 1 and addresses[0].type == "IPAddress")


def deployment_name(gw: ConfigObject) -> str:
    return gw.annotations.get(NAME_OVERRIDE_ANNOTATION) or f"{gw.name}-{gw.typed.gateway_class_name}"


def service_account_name(gw: ConfigObject) -> str:
    return gw.annotations.get(SERVICE_ACCOUNT_ANNOTATION) or f"{gw.name}-{gw.typed.gateway_class_name}"


def service_ports(gw: ConfigObject) -> list[dict[str, Any]]:
    """The status port, then one port per distinct listener port (the first listener's name,
    made a valid port name; appProtocol the protocol in lower case)."""
    ports = [{"name": "status-port", "port": STATUS_PORT, "protocol": "TCP", "appProtocol": "tcp"}]
    seen: set[int] = set()
    for i, ln in enumerate(gw.typed.listeners):
        if ln.port in seen:
            continue
        seen.add(ln.port)
        name = ln.name.replace(".", "-")[:63] or f"{ln.protocol.lower()}-{i}"
        ports.append({"name": name, "port": ln.port, "protocol": "TCP", "appProtocol": ln.protocol.lower()})
    return ports


def _infra(gw: ConfigObject) -> tuple[dict[str, str], dict[str, str]]:
    """The labels and annotations copied onto every object: spec.infrastructure's (less the
    Gateway API's own prefix), else the Gateway's."""
    infra = infrastructure(gw)

    def pick(own: Mapping[str, str] | None, fallback: Mapping[str, str]) -> dict[str, str]:
        if own is not None:
            return {k: v for k, v in own.items() if not k.startswith("gateway.networking.k8s.io/")}
        return dict(fallback)

    labels = pick(infra.labels, gw.labels)
    labels.setdefault(DATAPLANE_MODE_LABEL, "none")  # a gateway is never captured by ambient
    annotations = {k: v for k, v in pick(infra.annotations, gw.annotations).items() if k not in _OMITTED_ANNOTATIONS}
    return labels, annotations


def objects(gw: ConfigObject, uid: str, settings: Settings = Settings()) -> list[dict[str, Any]]:
    """The ServiceAccount, Service and Deployment of a managed Gateway, in the order they are
    written (the pods need the account; the Service first so the address is there early)."""
    name, account = deployment_name(gw), service_account_name(gw)
    labels, annotations = _infra(gw)
    ours = {**labels, GATEWAY_NAME_LABEL: gw.name, CLASS_LABEL: gw.typed.gateway_class_name, MANAGED_LABEL: MANAGED_VALUE}
    owner = [{"apiVersion": GATEWAY_API_VERSION, "kind": "Gateway", "name": gw.name, "uid": uid}]

    def meta(object_name: str) -> dict[str, Any]:
        return {"name": object_name, "namespace": gw.namespace, "labels": dict(ours), "annotations": dict(annotations),
                "ownerReferences": owner}

    service_type = gw.annotations.get(SERVICE_TYPE_ANNOTATION) or "LoadBalancer"
    service: dict[str, Any] = {"ipFamilyPolicy": "PreferDualStack", "ports": service_ports(gw),
                               "selector": {GATEWAY_NAME_LABEL: gw.name}, "type": service_type}
    if gw.typed.addresses and service_type == "LoadBalancer":
        service["loadBalancerIP"] = gw.typed.addresses[0].value
    pod_labels = {"sidecar.istio.io/inject": "false", "service.istio.io/canonical-name": name,
                  "service.istio.io/canonical-revision": "latest", **ours}
    pod_annotations = {**annotations, "istio.io/rev": "default", "prometheus.io/path": "/stats/prometheus",
                       "prometheus.io/port": str(STATS_PORT), "prometheus.io/scrape": "true"}
    return [
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": meta(account)},
        {"apiVersion": "v1", "kind": "Service", "metadata": meta(name), "spec": service},
        {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": meta(name), "spec": {
            "selector": {"matchLabels": {GATEWAY_NAME_LABEL: gw.name}},
            "template": {"metadata": {"labels": pod_labels, "annotations": pod_annotations},
                         "spec": _pod_spec(gw, name, account, settings)}}},
    ]


def _field_env(name: str, path: str) -> dict[str, Any]:
    return {"name": name, "valueFrom": {"fieldRef": {"fieldPath": path}}}


def _pod_spec(gw: ConfigObject, name: str, account: str, settings: Settings) -> dict[str, Any]:
    pull = {"imagePullPolicy": settings.image_pull_policy} if settings.image_pull_policy else {}
    env = [_field_env("POD_NAME", "metadata.name"), _field_env("POD_NAMESPACE", "metadata.namespace"),
           _field_env("INSTANCE_IP", "status.podIP"), _field_env("SERVICE_ACCOUNT", "spec.serviceAccountName")]
    bootstrap = [
        "bootstrap", "--type", "router", "--namespace", "$(POD_NAMESPACE)", "--pod", "$(POD_NAME)",
        "--ip", "$(INSTANCE_IP)", "--service-account", "$(SERVICE_ACCOUNT)",
        # the labels the derived Istio Gateway selects its proxies by (conversion.py)
        "--labels", f"{GATEWAY_NAME_LABEL}={gw.name}", "--workload-name", name,
        "--xds-address", settings.xds_address, "--root-cert", ROOT_CERT,
        # Envoy reads the projected token at every connection: it keeps connecting after rotation
        "--token-path", TOKEN,
        "--health-port", str(STATUS_PORT), "--stats-port", str(STATS_PORT), "--output", BOOTSTRAP,
    ]
    probe = {"httpGet": {"path": "/healthz/ready", "port": STATUS_PORT, "scheme": "HTTP"}, "timeoutSeconds": 1,
             "successThreshold": 1}
    mounts = [{"name": "istio-envoy", "mountPath": "/etc/istio/proxy"},
              {"name": "istio-token", "mountPath": "/var/run/secrets/tokens"},
              {"name": "istiod-ca-cert", "mountPath": "/var/run/secrets/istio"}]
    unprivileged = {"capabilities": {"drop": ["ALL"]}, "allowPrivilegeEscalation": False, "privileged": False,
                    "readOnlyRootFilesystem": True, "runAsUser": 1337, "runAsGroup": 1337, "runAsNonRoot": True}
    return {
        "serviceAccountName": account,
        # listener ports below 1024 without privileges (istiod's template)
        "securityContext": {"sysctls": [{"name": "net.ipv4.ip_unprivileged_port_start", "value": "0"}]},
        "initContainers": [{"name": "meshd-bootstrap", "image": settings.init_image, **pull, "args": bootstrap,
                            "env": env, "securityContext": unprivileged, "volumeMounts": mounts}],
        "containers": [{
            "name": "istio-proxy", "image": settings.envoy_image, **pull,
            "command": ["envoy"], "args": ["-c", BOOTSTRAP, "--service-cluster", name, "--log-level", "warning"],
            "ports": [{"containerPort": STATUS_PORT, "name": "status-port", "protocol": "TCP"},
                      {"containerPort": STATS_PORT, "name": "http-envoy-prom", "protocol": "TCP"}],
            "readinessProbe": {**probe, "failureThreshold": 4, "periodSeconds": 15},
            "startupProbe": {**probe, "failureThreshold": 30, "initialDelaySeconds": 1, "periodSeconds": 1},
            "securityContext": unprivileged, "volumeMounts": mounts[:2]}],
        "volumes": [
            {"name": "istio-envoy", "emptyDir": {"medium": "Memory"}},
            {"name": "istio-token", "projected": {"sources": [{"serviceAccountToken": {
                "audience": "istio-ca", "expirationSeconds": 43200, "path": "istio-token"}}]}},
            {"name": "istiod-ca-cert", "configMap": {"name": "istio-ca-root-cert"}},
        ],
    }


# --- parametersRef ConfigMap overlays ---------------------------------------------------


def _merge(base: Any, overlay: Any) -> Any:
    """A strategic-merge-like overlay: maps merge key by key (null deletes), lists of named
    objects (containers, env, ports, volumes...) merge by name, other lists are replaced."""
    if isinstance(base, dict) and isinstance(overlay, dict):
        out = dict(base)
        for k, v in overlay.items():
            if v is None:
                out.pop(k, None)
            else:
                out[k] = _merge(base.get(k), v)
        return out
    if isinstance(base, list) and isinstance(overlay, list) and all(isinstance(i, dict) and "name" in i
                                                                   for i in [*base, *overlay]):
        merged = {i["name"]: i for i in base}
        for item in overlay:
            merged[item["name"]] = _merge(merged.get(item["name"]), item)
        return list(merged.values())
    return overlay


def with_parameters(docs: list[dict[str, Any]], data: Mapping[str, str]) -> tuple[list[dict[str, Any]], str]:
    """The objects with the ConfigMap's overlays applied, and the reason they cannot be
    ("": none). Keys other than serviceAccount, service and deployment are refused, as is
    an overlay changing the objects' name, namespace or owners (istiod's rules)."""
    unknown = sorted(set(data) - set(OVERLAY_KEYS))
    if unknown:
        return docs, (f"parametersRef ConfigMap: unsupported key(s) {', '.join(unknown)} "
                      f"(meshd overlays {', '.join(OVERLAY_KEYS)})")
    out = []
    for doc in docs:
        key = next((k for k, kind in OVERLAY_KEYS.items() if kind == doc["kind"]), None)
        text = data.get(key) if key else None
        if not text:
            out.append(doc)
            continue
        import yaml  # only for a parametersRef overlay: not at start-up

        try:
            overlay = yaml.safe_load(text)
        except yaml.YAMLError as e:
            return docs, f"parametersRef ConfigMap: key {key}: not YAML: {e}"
        if not isinstance(overlay, dict):
            return docs, f"parametersRef ConfigMap: key {key}: not a mapping"
        merged = _merge(doc, overlay)
        fixed = ("name", "namespace", "ownerReferences")
        if any(merged.get("metadata", {}).get(f) != doc["metadata"].get(f) for f in fixed) \
                or merged.get("kind") != doc["kind"]:
            return docs, f"parametersRef ConfigMap: key {key}: the kind, name, namespace and owners cannot change"
        out.append(json.loads(json.dumps(merged)))  # plain JSON (YAML dates, ...)
    return out, ""


# --- the status the deployed Service gives a Gateway ------------------------------------


def _service_addresses(svc: ConfigObject, host: str) -> tuple[list[tuple[str, str]], str]:
    """The addresses a Service makes a Gateway reachable at -- its load balancer's IPs and
    host names, else its cluster IP, else its DNS name -- and why it is not ready yet ("":
    it is)."""
    spec, status = _mapping(svc.spec.get("spec")), _mapping(svc.spec.get("status"))
    balancer = _mapping(status.get("loadBalancer"))
    ingress = [i for i in balancer.get("ingress") or () if isinstance(i, Mapping)]
    external = [str(i.get("ip") or i.get("hostname")) for i in ingress if i.get("ip") or i.get("hostname")]
    if external:
        return [("IPAddress" if is_ip(a) else "Hostname", a) for a in external], ""
    cluster_ip = str(spec.get("clusterIP") or "")
    found = [("IPAddress", cluster_ip)] if is_ip(cluster_ip) else [("Hostname", host)]
    if spec.get("type") == "LoadBalancer":
        return found, f'address pending for hostname "{host}"'
    return found, ""


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _set(conditions: tuple[Condition, ...], kind: str, status: bool, reason: str, message: str
         ) -> tuple[Condition, ...]:
    return tuple(dataclasses.replace(c, status=status, reason=reason, message=message) if c.type == kind else c
                 for c in conditions)


def reported(config: ConfigSnapshot, reports: list[GatewayReport], domain: str = DOMAIN_SUFFIX) -> list[GatewayReport]:
    """The Gateway reports (conversion.py's, which always say Accepted and Programmed) with
    what deployment adds: Accepted False InvalidParameters for a parametersRef that cannot
    name parameters, and, for a Gateway without addresses whose Service (`<gateway>-<class>`)
    exists, that Service's addresses and a Programmed condition that waits for its load
    balancer (AddressNotAssigned while the address is pending)."""
    out = []
    for report in reports:
        gw = config.get(report.key.kind, report.key.namespace, report.key.name)
        if gw is None:
            out.append(report)
            continue
        conditions = report.conditions
        problem = parameters_problem(gw)
        if problem:
            conditions = _set(conditions, "Accepted", False, "InvalidParameters", problem)
        svc = config.get(kinds.SERVICE.kind, gw.namespace, deployment_name(gw)) if not gw.typed.addresses else None
        if svc is None:
            out.append(dataclasses.replace(report, conditions=conditions))
            continue
        host = fqdn(svc.name, svc.namespace, domain)
        addresses, pending = _service_addresses(svc, host)
        if pending:
            conditions = _set(conditions, "Programmed", False, "AddressNotAssigned",
                              f"Assigned to service(s) {host}, but failed to assign to all requested addresses: {pending}")
        else:
            conditions = _set(conditions, "Programmed", True, "Programmed",
                              f"Resource programmed, assigned to service(s) {host}")
        out.append(dataclasses.replace(report, conditions=conditions, addresses=tuple(addresses)))
    return out


@dataclass(frozen=True)
class Wanted:
    """One Gateway's objects as the controller should write them (or why it must not)."""

    gateway: ConfigObject
    configmap: tuple[str, str] | None = None  # the parametersRef ConfigMap to read first
    names: frozenset[tuple[str, str]] = field(default_factory=frozenset)  # (kind, name) of its objects


def wanted(gw: ConfigObject) -> Wanted:
    return Wanted(gw, parameters_configmap(gw), frozenset({("ServiceAccount", service_account_name(gw)),
                                                          ("Service", deployment_name(gw)),
                                                          ("Deployment", deployment_name(gw))}))
