"""`meshd kube-inject -f pod.yaml`: the sidecar injected offline, as `istioctl kube-inject`.

    meshd kube-inject -f deployment.yaml | kubectl apply -f -
    meshd kube-inject -f app.yaml --mesh-config mesh.yaml --injection-config injector.yaml -o out.yaml

Every document of the input (files, or `-` for standard input) is written out in order:
Pods and the pod templates of Deployments, StatefulSets, DaemonSets, ReplicaSets,
ReplicationControllers, Jobs, CronJobs, DeploymentConfigs and `List`s of them get the
sidecar when Istio's rules say so (the pod's `sidecar.istio.io/inject`, the never/always
selectors, the policy; namespace labels are not read offline, as istioctl); other
documents pass through unchanged. Why a workload was skipped, and every Istio setting on it
that meshd does not apply, is printed on standard error. An invalid annotation is an
error naming the object, the annotation and the reason (exit 1, nothing written).

--mesh-config: MeshConfig YAML, or ConfigMap `istio` (its `mesh` key). --injection-config:
ConfigMap `istio-sidecar-injector` (its `values` and `config` keys), an IstioOperator
(spec.values) or the chart values themselves (docs/injection.md lists the keys honoured).
"""
from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TextIO

import yaml

from ..inject import InjectionConfig, InjectionConfigError
from ..inject.workloads import inject_object

STDIN = "-"


class KubeInjectError(ValueError):
    pass


def _read(path: str, stdin: Any = None) -> bytes:
    try:
        return (stdin or sys.stdin.buffer).read() if path == STDIN else Path(path).read_bytes()
    except OSError as e:
        raise KubeInjectError(f"{path}: cannot read file: {e.strerror or e}") from None


def _documents(path: str, stdin: Any = None) -> list[Any]:
    from ..sources.yamlfile import YamlError, load_documents

    try:
        return load_documents(_read(path, stdin))
    except YamlError as e:
        raise KubeInjectError(f"{path}: {e}") from None


def _single(path: str) -> Any:
    docs = [d for d in _documents(path) if d is not None]
    if len(docs) != 1:
        raise KubeInjectError(f"{path}: expected one YAML document, found {len(docs)}")
    return docs[0]


def mesh_config_of(doc: Any, where: str) -> dict[str, Any]:
    """The MeshConfig mapping of a file: MeshConfig YAML or ConfigMap istio (checked as
    `meshd serve` checks it)."""
    from ..names import ROOT_NAMESPACE
    from ..sources.meshconfig import MeshConfigSourceError, parse_document

    try:
        parse_document(doc, where, ROOT_NAMESPACE)
    except MeshConfigSourceError as e:
        raise KubeInjectError(str(e)) from None
    if isinstance(doc, Mapping) and doc.get("kind") == "ConfigMap":
        doc = yaml.safe_load((doc.get("data") or {}).get("mesh") or "")
    return dict(doc or {})


def injection_config(mesh_path: str | None, injection_path: str | None) -> InjectionConfig:
    mesh = mesh_config_of(_single(mesh_path), mesh_path) if mesh_path else None
    where = injection_path or "--mesh-config"
    try:
        if not injection_path:
            return InjectionConfig.from_sources(mesh, None)
        doc = _single(injection_path)
        if not isinstance(doc, Mapping):
            raise KubeInjectError(f"{injection_path}: must be a ConfigMap, an IstioOperator or a values mapping")
        if doc.get("kind") == "ConfigMap":
            return InjectionConfig.from_configmap(mesh, doc.get("data") or {})
        return InjectionConfig.from_sources(mesh, doc)
    except InjectionConfigError as e:
        raise KubeInjectError(f"{where}: {e}") from None


def _dump(docs: list[Any]) -> str:
    return "---\n".join(yaml.safe_dump(d, sort_keys=False, default_flow_style=False) for d in docs)


def kube_inject(paths: list[str], cfg: InjectionConfig, out: TextIO, err: TextIO, stdin: Any = None) -> int:
    results = []
    for path in paths:
        try:
            docs = _documents(path, stdin)
        except KubeInjectError as e:
            print(f"Error: {e}", file=err)
            return 1
        for i, doc in enumerate(docs):
            if doc is None:
                continue
            try:
                results.append(inject_object(doc, cfg))
            except ValueError as e:
                print(f"Error: {path}: document {i + 1}: {e}", file=err)
                return 1
    for r in results:
        for note in r.notes:
            print(f"meshd kube-inject: {note}", file=err)
    out.write(_dump([r.obj for r in results]))
    return 0


def _run(args: argparse.Namespace) -> int:
    try:
        cfg = injection_config(args.mesh_config, args.injection_config)
    except KubeInjectError as e:
        print(f"Error: {e}", file=sys.stderr)
        return 1
    for key in cfg.unread:
        print(f"meshd kube-inject: {key} is not honoured by meshd's injector", file=sys.stderr)
    if args.output:
        with open(args.output, "w", encoding="utf-8") as f:
            return kube_inject(args.filename, cfg, f, sys.stderr)
    return kube_inject(args.filename, cfg, sys.stdout, sys.stderr)


def register(sub: Any) -> None:
    p = sub.add_parser("kube-inject", help="inject the sidecar into Kubernetes YAML offline (as istioctl kube-inject)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-f", "--filename", action="append", required=True,
                   help="input YAML file, or - for standard input (repeatable)")
    p.add_argument("-o", "--output", help="write the injected YAML here instead of standard output")
    p.add_argument("--mesh-config", "--meshConfigFile", dest="mesh_config", metavar="FILE",
                   help="MeshConfig YAML or ConfigMap istio (defaultConfig, trustDomain)")
    p.add_argument("--injection-config", "--injectConfigFile", "--valuesFile", dest="injection_config",
                   metavar="FILE", help="ConfigMap istio-sidecar-injector, an IstioOperator, or the values YAML")
    p.set_defaults(func=_run)
