"""Resources as `meshd analyze` sees them: any Kubernetes-shaped YAML document, with
the file and line it came from and the line of every field (for messages that point at
the offending field, as istioctl's do).

Unlike the server's config store, analysis reads every kind (Pods, Secrets,
ServiceEntries...) and never rejects a document: a schema problem is itself a finding.
"""
from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..config import kinds
from ..sources.yamlfile import field_lines

# Kinds without a namespace (the rest default to the analysis namespace).
CLUSTER_SCOPED = frozenset({
    "Namespace", "Node", "CustomResourceDefinition", "MutatingWebhookConfiguration",
    "ValidatingWebhookConfiguration", "ClusterRole", "ClusterRoleBinding", "PersistentVolume", "StorageClass",
    "GatewayClass", "MeshConfig", "MeshNetworks",
})
EXTENSIONS = (".yaml", ".yml", ".json")


@dataclass(frozen=True)
class Location:
    file: str
    line: int  # 1-based line of the document's first key (0 when unknown)
    index: int = 0  # document number in the file

    def __str__(self) -> str:
        return f"{self.file}:{self.line}" if self.line else self.file


@dataclass
class Resource:
    api_version: str
    kind: str
    namespace: str
    name: str
    doc: Mapping[str, Any]
    location: Location | None = None
    lines: Mapping[tuple, int] = field(default_factory=dict, repr=False)  # field path -> line
    # What istioctl assumes offline (default_resources): not the input's, so never the
    # reason for a finding about the registry meshd would build from the input.
    assumed: bool = False

    @property
    def group(self) -> str:
        return self.api_version.rpartition("/")[0] if "/" in self.api_version else ""

    @property
    def metadata(self) -> Mapping[str, Any]:
        md = self.doc.get("metadata")
        return md if isinstance(md, dict) else {}

    @property
    def labels(self) -> dict[str, str]:
        return {str(k): str(v) for k, v in (self.metadata.get("labels") or {}).items()}

    @property
    def annotations(self) -> dict[str, str]:
        return {str(k): str(v) for k, v in (self.metadata.get("annotations") or {}).items()}

    @property
    def spec(self) -> Mapping[str, Any]:
        s = self.doc.get("spec")
        return s if isinstance(s, dict) else {}

    @property
    def full_name(self) -> str:
        """resource.FullName.String(): `ns/name`, or `name` without a namespace."""
        return f"{self.namespace}/{self.name}" if self.namespace else self.name

    @property
    def friendly_name(self) -> str:
        return f"{self.kind} {self.full_name}"

    def line_of(self, *path: Any) -> int:
        """The line of a field (`line_of("spec", "gateways", 0)`), else the resource's own."""
        got = self.lines.get(tuple(path))
        if got:
            return got
        return self.location.line if self.location else 0


class LoadError(Exception):
    """A file that is not YAML: istioctl's 'errors parsing content'."""

    def __init__(self, file: str, line: int, reason: str):
        super().__init__(f"{file}:{line}: {reason}" if line else f"{file}: {reason}")
        self.file, self.line, self.reason = file, line, reason


def _as_json(v: Any) -> Any:
    """YAML values as the API server sees them: string keys, timestamps as strings."""
    if isinstance(v, dict):
        return {str(k).lower() if isinstance(k, bool) else str(k): _as_json(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_as_json(x) for x in v]
    if hasattr(v, "isoformat"):
        return v.isoformat()
    return v


def parse_text(text: str, file: str, default_namespace: str = "default") -> list[Resource]:
    """Every Kubernetes-shaped document of a YAML (or JSON) file. Raises LoadError."""
    out: list[Resource] = []
    loader = yaml.SafeLoader(text)
    try:
        index = 0
        while loader.check_node():
            node = loader.get_node()
            if node is None:
                continue
            data = loader.construct_document(node)
            lines = field_lines(node)
            index += 1
            if not isinstance(data, dict):
                continue
            data = _as_json(data)
            if data.get("kind") == "List" and isinstance(data.get("items"), list):
                # `kind: List` (kubectl get -o yaml): each item is a resource of its own
                for i, item in enumerate(data["items"]):
                    sub = {k[2:]: v for k, v in lines.items() if k[:2] == ("items", i)}
                    r = _resource(item, file, sub.get((), 0), index - 1, sub, default_namespace)
                    if r is not None:
                        out.append(r)
                continue
            r = _resource(data, file, node.start_mark.line + 1, index - 1, lines, default_namespace)
            if r is not None:
                out.append(r)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = mark.line + 1 if mark else 0
        problem = getattr(e, "problem", None) or " ".join(str(e).split())
        context = getattr(e, "context", None)
        reason = f"yaml: line {line}: {context + ', ' if context else ''}{problem}" if line else f"yaml: {problem}"
        raise LoadError(file, line, reason) from None
    finally:
        loader.dispose()
    return out


def _resource(data: Any, file: str, line: int, index: int, lines: dict, default_namespace: str) -> Resource | None:
    if not isinstance(data, dict) or not data.get("kind") or not data.get("apiVersion"):
        return None
    md = data.get("metadata")
    if not isinstance(md, dict):
        md = {}
    kind = str(data["kind"])
    ns = md.get("namespace")
    namespace = "" if kind in CLUSTER_SCOPED else (str(ns) if ns else default_namespace)
    return Resource(str(data["apiVersion"]), kind, namespace, str(md.get("name") or ""), data,
                    Location(file, line, index), lines)


# What istioctl analyze assumes exists when it does not look at a cluster
# (pkg/config/analysis/local/defaults.go): the default ingress gateway's pod and service.
DEFAULT_RESOURCES = """
apiVersion: v1
kind: Pod
metadata:
  labels:
    istio: ingressgateway
  name: istio-ingressgateway-dummypod
  namespace: istio-system
spec:
  containers:
    - args:
      name: istio-proxy
---
apiVersion: v1
kind: Service
metadata:
  name: istio-ingressgateway
  namespace: istio-system
spec:
  ports:
  - name: http2
    nodePort: 31380
    port: 80
    protocol: TCP
    targetPort: 80
  - name: https
    nodePort: 31390
    port: 443
    protocol: TCP
    targetPort: 443
  selector:
    istio: ingressgateway
"""


def default_resources() -> list[Resource]:
    out = parse_text(DEFAULT_RESOURCES, "", "")
    for r in out:
        r.location = None  # never reported with a file
        r.assumed = True
    return out


# Workload controllers: their pod template's labels are what their Pods will carry.
POD_TEMPLATE_KINDS = frozenset({"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet"})


def service_stand_ins(resources: Iterable[Resource]) -> list[Resource]:
    """A Pod per Service selector (labels = the selector) and per workload controller's pod
    template (its labels: a subset's `version` is there, not in the Service's selector),
    never reported on."""
    out = []
    for r in resources:
        if r.kind in POD_TEMPLATE_KINDS and r.group == "apps":
            template = r.spec.get("template")
            md = template.get("metadata") if isinstance(template, dict) else None
            labels = md.get("labels") if isinstance(md, dict) else None
            if isinstance(labels, dict) and labels:
                doc = {"apiVersion": "v1", "kind": "Pod",
                       "metadata": {"name": f"{r.name}-template", "namespace": r.namespace,
                                    "labels": {str(k): str(v) for k, v in labels.items()},
                                    "annotations": {"sidecar.istio.io/inject": "true"}}}
                out.append(Resource("v1", "Pod", r.namespace, f"{r.name}-template", doc, None, assumed=True))
            continue
        sel = r.spec.get("selector") if r.kind == "Service" and not r.group else None
        if isinstance(sel, dict) and sel:
            # A meshd workload has a sidecar: marked as injected, as Istio's analyzers check.
            doc = {"apiVersion": "v1", "kind": "Pod",
                   "metadata": {"name": f"{r.name}-workload", "namespace": r.namespace,
                                "labels": {str(k): str(v) for k, v in sel.items()},
                                "annotations": {"sidecar.istio.io/inject": "true"}}}
            out.append(Resource("v1", "Pod", r.namespace, f"{r.name}-workload", doc, None, assumed=True))
    return out


def files_under(paths: Iterable[str]) -> list[Path]:
    """Files to analyze: given files as is; directories recursively (YAML/JSON only)."""
    out: list[Path] = []
    for p in paths:
        path = Path(p)
        if path.is_dir():
            out += sorted(f for f in path.rglob("*") if f.is_file() and f.suffix in EXTENSIONS)
        else:
            out.append(path)
    return out


def load_paths(paths: Iterable[str], default_namespace: str = "default") -> tuple[list[Resource], list[LoadError]]:
    resources: list[Resource] = []
    errors: list[LoadError] = []
    for f in files_under(paths):
        try:
            text = f.read_text()
        except (OSError, UnicodeDecodeError) as e:
            errors.append(LoadError(str(f), 0, str(e)))
            continue
        try:
            resources += parse_text(text, str(f), default_namespace)
        except LoadError as e:
            errors.append(e)
    return resources, errors


_KIND_OF_STORE_KIND = {k.key_kind: k.kind for k in kinds.SERVED.values() if k.key_kind != k.kind}


def from_configz(configz: Mapping[str, Any]) -> list[Resource]:
    """Objects of a running meshd (/debug/configz?content=true) as resources."""
    out = []
    for o in configz.get("objects") or []:
        body = o.get("content")
        if not isinstance(body, dict):
            continue
        md = {"name": o["name"], "labels": body.get("labels") or {}, "annotations": body.get("annotations") or {}}
        if body.get("creationTimestamp"):
            md["creationTimestamp"] = body["creationTimestamp"]
        if o.get("namespace"):
            md["namespace"] = o["namespace"]
        kind = _KIND_OF_STORE_KIND.get(o["kind"], o["kind"])  # the Gateway API's Gateway is stored as KubernetesGateway
        doc = {"apiVersion": o["apiVersion"], "kind": kind, "metadata": md}
        if "spec" in body:
            doc["spec"] = body["spec"]
        doc.update(body.get("body") or {})
        origin = o.get("origin") or {}
        loc = Location(origin.get("location", ""), 0, origin.get("index", 0)) if origin.get("source") == "file" else None
        out.append(Resource(o["apiVersion"], kind, o.get("namespace", ""), o["name"], doc, loc))
    return out


def dumps(r: Resource) -> str:
    return json.dumps(r.doc, sort_keys=True)
