"""The injected pod: a pure function of the pod, its owner and the InjectionConfig.

What istiod's sidecar template adds, without istio-agent (meshd has none):
- init container `istio-init` (the meshd image): `meshd pod-init` with Istio's
  istio-iptables flags, then writes the Envoy bootstrap into the `istio-envoy` emptyDir from
  the downward API (env POD_NAME, INSTANCE_IP, ..., labels in /etc/istio/pod/labels);
- `istio-proxy` (an upstream Envoy image), UID 1337, `envoy -c /etc/istio/proxy/envoy.json`,
  readiness on 15021 `/healthz/ready`; a native sidecar (init container with restartPolicy
  Always and a startup probe) unless disabled; otherwise a plain container, placed first
  with a postStart hook that waits for readiness when holdApplicationUntilProxyStarts;
- Istio's volumes (projected token `istio-token` for audience istio-ca, ConfigMap
  istio-ca-root-cert as `istiod-ca-cert`, `istio-envoy`, downward API `istio-podinfo`),
  labels (tlsMode, canonical name/revision) and annotations (`sidecar.istio.io/status`, the
  default container, Prometheus scraping of Envoy's 15090).

Every annotation of Istio's injection that is not applied comes back as a warning.
"""
from __future__ import annotations

import copy
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import yaml

from ..model.meshconfig import PROXY_CONFIG_FIELDS, MeshConfigError, ProxyConfig, parse_mesh_config
from ..proxy_settings import envoy_args
from .config import InjectionConfig, Resources
from .selection import INJECT, STATUS, TEMPLATES
from .traffic import HONOURED as TRAFFIC_ANNOTATIONS
from .traffic import STATUS_PORT, AnnotationError, interception_mode, iptables_args

INIT = "istio-init"
PROXY = "istio-proxy"
PROXY_UID = 1337
PROXY_GID = 1337
BOOTSTRAP_PATH = "/etc/istio/proxy/envoy.json"
TOKEN_DIR = "/var/run/secrets/tokens"
TOKEN_PATH = f"{TOKEN_DIR}/istio-token"
ROOT_CERT_DIR = "/var/run/secrets/istio"
ROOT_CERT_PATH = f"{ROOT_CERT_DIR}/root-cert.pem"
PODINFO_DIR = "/etc/istio/pod"
ENVOY_DIR = "/etc/istio/proxy"
VOLUMES = ("istio-envoy", "istio-podinfo", "istio-token", "istiod-ca-cert")
TOKEN_AUDIENCE = "istio-ca"
TOKEN_EXPIRATION_SECONDS = 43200
HEALTH_PORT = 15021
ADMIN_PORT = 15000
STATS_PORT = 15090

PROXY_CONFIG = "proxy.istio.io/config"
PROXY_IMAGE = "sidecar.istio.io/proxyImage"
NATIVE_SIDECAR = "sidecar.istio.io/nativeSidecar"
REWRITE_PROBES = "sidecar.istio.io/rewriteAppHTTPProbers"
USER_VOLUME = "sidecar.istio.io/userVolume"
USER_VOLUME_MOUNT = "sidecar.istio.io/userVolumeMount"
LOG_LEVEL = "sidecar.istio.io/logLevel"
COMPONENT_LOG_LEVEL = "sidecar.istio.io/componentLogLevel"
DISCOVERY_ADDRESS = "sidecar.istio.io/discoveryAddress"
DEFAULT_CONTAINER = "kubectl.kubernetes.io/default-container"
DEFAULT_LOGS_CONTAINER = "kubectl.kubernetes.io/default-logs-container"
REVISION = "istio.io/rev"
RESOURCE_ANNOTATIONS = (("sidecar.istio.io/proxyCPU", "requests", "cpu"),
                        ("sidecar.istio.io/proxyMemory", "requests", "memory"),
                        ("sidecar.istio.io/proxyCPULimit", "limits", "cpu"),
                        ("sidecar.istio.io/proxyMemoryLimit", "limits", "memory"))
READINESS_ANNOTATIONS = {"readiness.status.sidecar.istio.io/initialDelaySeconds": "initialDelaySeconds",
                         "readiness.status.sidecar.istio.io/periodSeconds": "periodSeconds",
                         "readiness.status.sidecar.istio.io/failureThreshold": "failureThreshold"}
# Read elsewhere (selection) or written here: not reported.
_HANDLED = frozenset({INJECT, STATUS, PROXY_CONFIG, PROXY_IMAGE, NATIVE_SIDECAR, REWRITE_PROBES, USER_VOLUME,
                      USER_VOLUME_MOUNT, LOG_LEVEL, COMPONENT_LOG_LEVEL, DISCOVERY_ADDRESS, TEMPLATES,
                      *(a for a, _, _ in RESOURCE_ANNOTATIONS), *READINESS_ANNOTATIONS, *TRAFFIC_ANNOTATIONS})
# Annotation prefixes of Istio's injection: any other key under them is reported.
_ISTIO_PREFIXES = ("sidecar.istio.io/", "proxy.istio.io/", "status.sidecar.istio.io/",
                   "readiness.status.sidecar.istio.io/", "traffic.sidecar.istio.io/", "inject.istio.io/",
                   "prometheus.istio.io/")
# ProxyConfig fields applied besides those the bootstrap reads (model/meshconfig.py).
_PROXY_CONFIG_APPLIED = PROXY_CONFIG_FIELDS | {"discoveryAddress", "interceptionMode", "terminationDrainDuration"}
_CANONICAL_NAME = "service.istio.io/canonical-name"
_CANONICAL_REVISION = "service.istio.io/canonical-revision"
_TLS_MODE = "security.istio.io/tlsMode"


class InjectionError(ValueError):
    """The pod cannot be injected: the message names the pod, the field and the reason."""


@dataclass(frozen=True)
class Owner:
    """The workload a pod belongs to (Istio's DeploymentMeta + TypeMeta)."""
    api_version: str
    kind: str
    name: str
    namespace: str = ""


@dataclass(frozen=True)
class Injected:
    pod: dict[str, Any]
    warnings: tuple[str, ...] = ()


def owner_of(pod: Mapping[str, Any]) -> Owner:
    """The pod's workload from its controller owner reference, as istiod derives it: a
    ReplicaSet named <deployment>-<pod-template-hash> is its Deployment, a Job named
    <cronjob>-<8 to 10 digits> its CronJob; without a controller the pod itself."""
    meta = pod.get("metadata") or {}
    ns = str(meta.get("namespace") or "")
    for ref in meta.get("ownerReferences") or []:
        if not ref.get("controller"):
            continue
        kind, name, api = str(ref.get("kind")), str(ref.get("name")), str(ref.get("apiVersion"))
        template_hash = (meta.get("labels") or {}).get("pod-template-hash")
        if kind == "ReplicaSet" and template_hash and name.endswith("-" + template_hash):
            return Owner("apps/v1", "Deployment", name[:-len(template_hash) - 1], ns)
        if kind == "Job" and re.fullmatch(r".+-\d{8,10}", name):  # the CronJob's scheduled-time suffix
            return Owner("batch/v1", "CronJob", name.rsplit("-", 1)[0], ns)
        return Owner(api, kind, name, ns)
    name = meta.get("name") or ""
    if not name and meta.get("generateName"):
        name = str(meta["generateName"]).rstrip("-")
    return Owner("v1", "Pod", str(name), ns)


def _truncate_label(value: str) -> str:
    """A label value: at most 63 characters, ending alphanumeric (Istio truncates too)."""
    return re.sub(r"[^A-Za-z0-9]+$", "", value[:63])


def _merged_proxy_config(cfg: InjectionConfig, annotations: Mapping[str, str],
                         who: str) -> tuple[dict[str, Any], ProxyConfig, list[str]]:
    """The mesh's defaultConfig with the pod's proxy.istio.io/config over it (proxyMetadata
    merged key by key, other fields replaced), checked as a ProxyConfig."""
    merged = copy.deepcopy(dict(cfg.default_proxy_config))
    warnings = []
    raw = annotations.get(PROXY_CONFIG)
    if raw:
        try:
            override = yaml.safe_load(raw)
        except yaml.YAMLError as e:
            raise InjectionError(f"pod {who}: annotation {PROXY_CONFIG}: not YAML: {e}") from None
        if not isinstance(override, Mapping):
            raise InjectionError(f"pod {who}: annotation {PROXY_CONFIG}: must be a ProxyConfig mapping")
        for key, value in override.items():
            if key == "proxyMetadata" and isinstance(value, Mapping):
                merged["proxyMetadata"] = {**(merged.get("proxyMetadata") or {}), **value}
            else:
                merged[key] = value
        warnings += [f"annotation {PROXY_CONFIG}: field {k} has no effect (meshd has no istio-agent)"
                     for k in sorted(override) if k not in _PROXY_CONFIG_APPLIED]
    try:
        parsed = parse_mesh_config({"defaultConfig": merged}).default_config
    except MeshConfigError as e:
        raise InjectionError(f"pod {who}: annotation {PROXY_CONFIG}: {e}") from None
    return merged, parsed, warnings


def _resources(annotations: Mapping[str, str], default: Resources) -> dict[str, Any]:
    """Istio's rule: any resource annotation replaces the values' resources entirely."""
    if not any(a in annotations for a, _, _ in RESOURCE_ANNOTATIONS):
        return default.to_dict()
    out: dict[str, dict[str, str]] = {}
    for annotation, section, resource in RESOURCE_ANNOTATIONS:
        if annotation in annotations:
            out.setdefault(section, {})[resource] = str(annotations[annotation])
    return out


def _env_field(name: str, path: str) -> dict[str, Any]:
    return {"name": name, "valueFrom": {"fieldRef": {"fieldPath": path}}}


def _init_env(pod: Mapping[str, Any], cfg: InjectionConfig, owner: Owner, mode: str,
              proxy_config: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The downward-API environment the init step builds the bootstrap from (the names
    istio-agent reads)."""
    spec = pod.get("spec") or {}
    containers = spec.get("containers") or []
    ports = [p for c in containers for p in c.get("ports") or []]
    env = [_env_field("POD_NAME", "metadata.name"), _env_field("POD_NAMESPACE", "metadata.namespace"),
           _env_field("INSTANCE_IP", "status.podIP"), _env_field("SERVICE_ACCOUNT", "spec.serviceAccountName"),
           _env_field("HOST_IP", "status.hostIP"),
           {"name": "ISTIO_META_POD_PORTS", "value": json.dumps(ports, separators=(",", ":"))},
           {"name": "ISTIO_META_APP_CONTAINERS", "value": ",".join(str(c.get("name")) for c in containers)},
           {"name": "ISTIO_META_CLUSTER_ID", "value": cfg.cluster_id},
           _env_field("ISTIO_META_NODE_NAME", "spec.nodeName"),
           {"name": "ISTIO_META_INTERCEPTION_MODE", "value": mode}]
    if cfg.network:
        env.append({"name": "ISTIO_META_NETWORK", "value": cfg.network})
    if owner.name:
        env.append({"name": "ISTIO_META_WORKLOAD_NAME", "value": owner.name})
        ns = owner.namespace or "default"
        env.append({"name": "ISTIO_META_OWNER",
                    "value": f"kubernetes://apis/{owner.api_version}/namespaces/{ns}/{owner.kind.lower()}s/{owner.name}"})
    env.append({"name": "ISTIO_META_MESH_ID", "value": cfg.effective_mesh_id})
    env.append({"name": "TRUST_DOMAIN", "value": cfg.trust_domain})
    for key, value in sorted((proxy_config.get("proxyMetadata") or {}).items()):
        env.append({"name": str(key), "value": str(value)})
    return env


def _probe(annotations: Mapping[str, str], cfg: InjectionConfig) -> dict[str, Any]:
    probe: dict[str, Any] = {"httpGet": {"path": "/healthz/ready", "port": HEALTH_PORT},
                             "periodSeconds": cfg.readiness.period_seconds,
                             "failureThreshold": cfg.readiness.failure_threshold, "timeoutSeconds": 3}
    if cfg.readiness.initial_delay_seconds is not None:
        probe["initialDelaySeconds"] = cfg.readiness.initial_delay_seconds
    for annotation, key in READINESS_ANNOTATIONS.items():
        if annotation in annotations:
            value = str(annotations[annotation])
            if not value.isdigit():
                raise AnnotationError(annotation, value, "must be a non-negative integer")
            probe[key] = int(value)
    return probe


def _bash(script: str) -> dict[str, Any]:
    return {"exec": {"command": ["bash", "-c", script]}}


def wait_ready_script(port: int = HEALTH_PORT) -> str:
    """Waits (up to 2 minutes) for Envoy's readiness with bash alone (the Envoy image has
    no curl). Each attempt runs in a subshell, so that a refused connection fails only it;
    HTTP/1.1, since Envoy's listeners refuse HTTP/1.0."""
    request = "GET /healthz/ready HTTP/1.1\\r\\nHost: localhost\\r\\nConnection: close\\r\\n\\r\\n"
    return (f"for i in $(seq 240); do (exec 3<>/dev/tcp/127.0.0.1/{port} && printf '{request}' >&3 && "
            "read -r s <&3 && [[ $s == *' 200 '* ]]) 2>/dev/null && exit 0; sleep 0.5; done; exit 1")


def drain_script(seconds: int, port: int = ADMIN_PORT) -> str:
    """Stop accepting inbound connections (Envoy's graceful drain of its inbound listeners,
    as pilot-agent asks on shutdown), print Envoy's answer, then wait."""
    request = ("POST /drain_listeners?graceful&inboundonly HTTP/1.1\\r\\nHost: localhost\\r\\n"
               "Connection: close\\r\\nContent-Length: 0\\r\\n\\r\\n")
    return (f"(exec 3<>/dev/tcp/127.0.0.1/{port} && printf '{request}' >&3 && read -r s <&3 && echo \"$s\" >&2); "
            f"sleep {seconds}")


def _proxy_container(cfg: InjectionConfig, annotations: Mapping[str, str], pc: ProxyConfig, native: bool,
                     hold: bool) -> dict[str, Any]:
    args = ["-c", BOOTSTRAP_PATH, "--disable-hot-restart", *envoy_args(pc),
            "--log-level", str(annotations.get(LOG_LEVEL) or cfg.log_level),
            "--component-log-level", str(annotations.get(COMPONENT_LOG_LEVEL) or cfg.component_log_level)]
    drain_seconds = max(1, round(pc.termination_drain_duration.total_nanos / 1e9))
    container: dict[str, Any] = {
        "name": PROXY,
        "image": str(annotations.get(PROXY_IMAGE) or cfg.proxy_image),
        "command": ["envoy"],
        "args": args,
        "ports": [{"containerPort": STATS_PORT, "name": "http-envoy-prom", "protocol": "TCP"}],
        "resources": _resources(annotations, cfg.proxy_resources),
        "lifecycle": {"preStop": _bash(drain_script(drain_seconds))},
        "securityContext": {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]},
                            "privileged": False, "readOnlyRootFilesystem": True, "runAsGroup": PROXY_GID,
                            "runAsNonRoot": True, "runAsUser": PROXY_UID},
        "volumeMounts": _mounts(),
    }
    if cfg.image_pull_policy:
        container["imagePullPolicy"] = cfg.image_pull_policy
    status_port = str(annotations.get(STATUS_PORT, cfg.traffic.status_port))
    if status_port != "0":
        container["readinessProbe"] = _probe(annotations, cfg)
        if native:
            container["startupProbe"] = {"httpGet": {"path": "/healthz/ready", "port": HEALTH_PORT},
                                         "periodSeconds": 1, "failureThreshold": 600, "timeoutSeconds": 3}
    if native:
        container["restartPolicy"] = "Always"
    elif hold:
        container["lifecycle"]["postStart"] = _bash(wait_ready_script())
    return container


def _init_container(pod: Mapping[str, Any], cfg: InjectionConfig, annotations: Mapping[str, str], owner: Owner,
                    mode: str, proxy_config: Mapping[str, Any]) -> dict[str, Any]:
    xds = str(annotations.get(DISCOVERY_ADDRESS) or proxy_config.get("discoveryAddress") or cfg.xds_address)
    args = ["pod-init", *iptables_args(annotations, cfg, mode), "--bootstrap-out", BOOTSTRAP_PATH,
            "--xds-address", xds, "--root-cert", ROOT_CERT_PATH, "--token-path", TOKEN_PATH]
    if proxy_config:
        args += ["--proxy-config-json", json.dumps(proxy_config, sort_keys=True, separators=(",", ":"))]
    container: dict[str, Any] = {
        "name": INIT,
        "image": cfg.meshd_image,
        "command": ["meshd"],
        "args": args,
        "env": _init_env(pod, cfg, owner, mode, proxy_config),
        "resources": _resources(annotations, cfg.init_resources),
        "securityContext": {"allowPrivilegeEscalation": False,
                            "capabilities": {"add": ["NET_ADMIN", "NET_RAW"], "drop": ["ALL"]},
                            "privileged": False, "readOnlyRootFilesystem": False, "runAsGroup": 0,
                            "runAsNonRoot": False, "runAsUser": 0},
        "volumeMounts": _mounts(),
    }
    if cfg.image_pull_policy:
        container["imagePullPolicy"] = cfg.image_pull_policy
    return container


def _mounts() -> list[dict[str, Any]]:
    """Both containers mount the same: the root, the bootstrap, the token, the pod's labels."""
    return [{"mountPath": ROOT_CERT_DIR, "name": "istiod-ca-cert"}, {"mountPath": ENVOY_DIR, "name": "istio-envoy"},
            {"mountPath": TOKEN_DIR, "name": "istio-token"}, {"mountPath": PODINFO_DIR, "name": "istio-podinfo"}]


def _volumes() -> list[dict[str, Any]]:
    return [
        {"name": "istio-envoy", "emptyDir": {"medium": "Memory"}},
        {"name": "istio-podinfo", "downwardAPI": {"items": [
            {"path": "labels", "fieldRef": {"fieldPath": "metadata.labels"}},
            {"path": "annotations", "fieldRef": {"fieldPath": "metadata.annotations"}}]}},
        {"name": "istio-token", "projected": {"sources": [{"serviceAccountToken": {
            "audience": TOKEN_AUDIENCE, "expirationSeconds": TOKEN_EXPIRATION_SECONDS, "path": "istio-token"}}]}},
        {"name": "istiod-ca-cert", "configMap": {"name": "istio-ca-root-cert"}},
    ]


_MERGE_KEYS = {"env": "name", "volumeMounts": "mountPath", "ports": "containerPort"}


def _strategic_merge(base: Any, override: Any, key: str = "") -> Any:
    """The pod's own fields over the injected container (Kubernetes strategic merge for the
    lists with a merge key; other lists are replaced)."""
    if isinstance(base, dict) and isinstance(override, dict):
        out = dict(base)
        for k, v in override.items():
            out[k] = _strategic_merge(base.get(k), v, k) if k in base else v
        return out
    if isinstance(base, list) and isinstance(override, list) and key in _MERGE_KEYS:
        merge_key = _MERGE_KEYS[key]
        out_list = list(base)
        index = {item.get(merge_key): i for i, item in enumerate(out_list) if isinstance(item, dict)}
        for item in override:
            k = item.get(merge_key) if isinstance(item, dict) else None
            if k in index:
                out_list[index[k]] = _strategic_merge(out_list[index[k]], item)
            else:
                out_list.append(item)
        return out_list
    return override


def _take(containers: list[dict[str, Any]], name: str) -> dict[str, Any] | None:
    for i, c in enumerate(containers):
        if c.get("name") == name:
            return containers.pop(i)
    return None


def _json_annotation(annotations: Mapping[str, str], name: str, who: str) -> dict[str, Any]:
    raw = annotations.get(name)
    if not raw:
        return {}
    try:
        value = json.loads(raw)
    except ValueError as e:
        raise InjectionError(f"pod {who}: annotation {name}: not JSON: {e}") from None
    if not isinstance(value, dict) or not all(isinstance(v, dict) for v in value.values()):
        raise InjectionError(f"pod {who}: annotation {name}: must be a JSON object of name -> object")
    return value


def _has_probes(containers: list[dict[str, Any]]) -> list[str]:
    return [f"{c.get('name')}.{p}" for c in containers for p in ("livenessProbe", "readinessProbe", "startupProbe")
            if isinstance(c.get(p), dict) and any(k in c[p] for k in ("httpGet", "tcpSocket", "grpc"))]


def _flag(annotations: Mapping[str, str], name: str, default: bool) -> bool:
    value = annotations.get(name)
    if value is None:
        return default
    if str(value).lower() not in ("true", "false"):
        raise AnnotationError(name, str(value), "must be true or false")
    return str(value).lower() == "true"


def inject_pod(pod: Mapping[str, Any], cfg: InjectionConfig, owner: Owner | None = None) -> Injected:
    """The pod with the sidecar (a new object; `pod` is not changed) and the warnings: what
    of Istio's injection settings it carries is not applied. Raises InjectionError (a
    ValueError) naming the pod and the field when it cannot be. The webhook sets
    metadata.namespace from the AdmissionRequest first (a created pod often has none):
    the owner's namespace in ISTIO_META_OWNER comes from it. `owner` defaults to the
    pod's controller (owner_of)."""
    out = copy.deepcopy(dict(pod))
    meta = out.setdefault("metadata", {})
    spec = out.setdefault("spec", {})
    owner = owner or owner_of(out)
    who = f"{meta.get('namespace') or owner.namespace or 'default'}/{meta.get('name') or owner.name}"
    annotations: dict[str, str] = dict(meta.get("annotations") or {})
    labels: dict[str, str] = dict(meta.get("labels") or {})
    try:
        return _inject(out, meta, spec, annotations, labels, cfg, owner, who)
    except AnnotationError as e:
        raise InjectionError(f"pod {who}: {e}") from None


def _inject(out: dict[str, Any], meta: dict[str, Any], spec: dict[str, Any], annotations: dict[str, str],
            labels: dict[str, str], cfg: InjectionConfig, owner: Owner, who: str) -> Injected:
    if STATUS in annotations:
        raise InjectionError(f"pod {who}: already injected ({STATUS} is set)")
    proxy_config, pc, warnings = _merged_proxy_config(cfg, annotations, who)
    mode = interception_mode(annotations, proxy_config)
    hold = bool(proxy_config.get("holdApplicationUntilProxyStarts")) or cfg.hold_application_until_proxy_starts
    native = _flag(annotations, NATIVE_SIDECAR, cfg.native_sidecars)
    warnings += _report_annotations(annotations, spec, cfg)

    containers: list[dict[str, Any]] = list(spec.get("containers") or [])
    inits: list[dict[str, Any]] = list(spec.get("initContainers") or [])
    own_proxy = _take(containers, PROXY) or _take(inits, PROXY)
    own_init = _take(inits, INIT)
    init = _init_container(out, cfg, annotations, owner, mode, proxy_config)
    proxy = _proxy_container(cfg, annotations, pc, native, hold)
    user_volumes = _json_annotation(annotations, USER_VOLUME, who)
    for name, mount in _json_annotation(annotations, USER_VOLUME_MOUNT, who).items():
        proxy["volumeMounts"].append({"name": name, **mount})
    if own_proxy is not None:
        if own_proxy.get("image") == "auto":
            own_proxy = {k: v for k, v in own_proxy.items() if k != "image"}
        proxy = _strategic_merge(proxy, own_proxy)
    if own_init is not None:
        touched = sorted(k for k in ("command", "args", "image") if k in own_init)
        if touched:
            warnings.append(f"container {INIT}: the pod's own {', '.join(touched)} replace meshd's: the init step "
                            "(interception rules, the Envoy bootstrap) may not run")
        init = _strategic_merge(init, own_init)

    # The rules let the proxy's own traffic out uncaptured by its UID: a pod that runs
    # istio-proxy as another user moves the exception with it (as Istio does).
    uid = (proxy.get("securityContext") or {}).get("runAsUser", PROXY_UID)
    if uid != PROXY_UID and init["args"][:1] == ["pod-init"]:
        at = init["args"].index("-u") + 1
        init["args"] = [*init["args"][:at], str(uid), *init["args"][at + 1:]]
    if native:
        inits = [init, proxy, *inits]
    else:
        inits = [init, *inits]
        containers = [proxy, *containers] if hold else [*containers, proxy]
    spec["initContainers"] = inits
    spec["containers"] = containers
    injected_volumes = [*_volumes(), *({"name": n, **v} for n, v in user_volumes.items())]
    names = {v["name"] for v in injected_volumes}
    spec["volumes"] = [v for v in spec.get("volumes") or [] if v.get("name") not in names] + injected_volumes
    secrets = [s.get("name") for s in spec.get("imagePullSecrets") or []]
    added_secrets = [s for s in cfg.image_pull_secrets if s not in secrets]
    if added_secrets:
        spec["imagePullSecrets"] = [*(spec.get("imagePullSecrets") or []), *({"name": s} for s in added_secrets)]

    app = [c.get("name") for c in containers if c.get("name") != PROXY]
    if app:
        annotations.setdefault(DEFAULT_CONTAINER, str(app[0]))
        annotations.setdefault(DEFAULT_LOGS_CONTAINER, annotations[DEFAULT_CONTAINER])
    annotations.setdefault(REVISION, cfg.revision)
    if any(k.startswith("prometheus.io") for k in annotations):
        warnings.append("the pod's prometheus.io annotations are kept: Envoy's metrics (port 15090, "
                        "/stats/prometheus) are not merged with the application's (no istio-agent)")
    else:
        annotations.update({"prometheus.io/path": "/stats/prometheus", "prometheus.io/port": str(STATS_PORT),
                            "prometheus.io/scrape": "true"})
    for key, value in cfg.injected_annotations:
        annotations.setdefault(key, value)
    annotations[STATUS] = json.dumps({
        "initContainers": [c["name"] for c in inits if c["name"] in (INIT, PROXY)],
        "containers": [PROXY] if not native else None,
        "volumes": [v["name"] for v in injected_volumes],
        "imagePullSecrets": added_secrets or None,
        "revision": cfg.revision,
    }, separators=(",", ":"))
    labels.setdefault(_TLS_MODE, "istio")
    if cfg.network:
        labels.setdefault("topology.istio.io/network", cfg.network)
    labels.setdefault(_CANONICAL_NAME, _truncate_label(
        labels.get("app.kubernetes.io/name") or labels.get("app") or owner.name))
    labels.setdefault(_CANONICAL_REVISION, _truncate_label(
        labels.get("app.kubernetes.io/version") or labels.get("version") or "latest"))
    meta["annotations"] = annotations
    meta["labels"] = labels
    return Injected(out, tuple(warnings))


def _report_annotations(annotations: Mapping[str, str], spec: Mapping[str, Any], cfg: InjectionConfig) -> list[str]:
    """Warnings for Istio injection settings on the pod that meshd does not apply."""
    out = []
    templates = [t.strip() for t in str(annotations.get(TEMPLATES, "sidecar")).split(",") if t.strip()]
    if set(templates) != {"sidecar"}:
        out.append(f"annotation {TEMPLATES}={annotations[TEMPLATES]!r}: meshd applies only its sidecar "
                   "(Istio's other injection templates are not applied)")
    if cfg.rewrite_app_http_probers and _flag(annotations, REWRITE_PROBES, True):
        probes = _has_probes(list(spec.get("containers") or []))
        if probes:
            out.append(f"probes {', '.join(probes)} are not rewritten ({REWRITE_PROBES}): meshd has no istio-agent "
                       "to forward them; the kubelet's probes pass the sidecar's inbound capture as plaintext and "
                       "fail under STRICT mTLS (exclude their ports with traffic.sidecar.istio.io/excludeInboundPorts)")
    for key in sorted(annotations):
        if key in _HANDLED or not key.startswith(_ISTIO_PREFIXES):
            continue
        if key == "prometheus.istio.io/merge-metrics" and str(annotations[key]).lower() == "false":
            continue  # meshd never merges: what the annotation asks for
        out.append(f"annotation {key}: not applied by meshd's injector")
    return out
