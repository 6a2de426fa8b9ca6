"""The webhooks wired for `meshd serve` in Kubernetes mode (app.py calls this):

    webhooks = Webhooks(ca, store, member.kube, member.namespace, root_namespace=root)
    source = KubernetesSource(..., mesh_config=webhooks.follow_mesh_config(mesh_source.apply_configmap),
                              injector_config=webhooks.follow_injector_config)
    # or, with --mesh-config FILE, on each change of the file the mesh config source applies:
    webhooks.mesh_config_file_changed(path)
    webhooks.start(host, port)                        # binds: OSError when the port is taken
    member.add_leader_task("webhooks", webhooks.patcher.run)
    ...
    webhooks.stop()
"""
from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

import structlog
import yaml

from ..config.store import ConfigStore
from ..kube.api import KubeApi
from ..kube.resources import INJECTOR_CONFIGMAP_NAME
from ..names import ROOT_NAMESPACE
from ..sources.meshconfig import CONFIGMAP_NAME as MESH_CONFIGMAP
from . import inject, validate
from .certificate import WebhookCertificate, webhook_dns_names
from .inject import InjectionInputs
from .patcher import WebhookPatcher
from .review import AdmissionRequest, Verdict
from .server import WebhookServer

log = structlog.get_logger("meshd.admission")

NAMESPACE_WAIT = 2.0  # seconds a pod's namespace may take to reach the store


class _Unreadable(ValueError):
    """Mesh config that sources/meshconfig.py rejects (and reports) already."""


def mesh_config_mapping(doc: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """The MeshConfig mapping of ConfigMap `istio` (its `data.mesh` YAML) or of a
    --mesh-config file (the mapping itself, or such a ConfigMap); None when there is
    none or it is not a mapping (sources/meshconfig.py reports why)."""
    try:
        return _mesh_mapping(doc)
    except _Unreadable:
        return None


def _mesh_mapping(doc: Any) -> dict[str, Any] | None:
    """As mesh_config_mapping; _Unreadable when there is something but not a MeshConfig
    mapping (the last good one stays in force for injection, as for the mesh)."""
    if doc is None:
        return None
    if not isinstance(doc, Mapping):
        raise _Unreadable("not a mapping")
    if doc.get("kind") == "ConfigMap" or "data" in doc:
        text = (doc.get("data") or {}).get("mesh") if isinstance(doc.get("data"), Mapping) else None
        if not isinstance(text, str):
            raise _Unreadable("no data.mesh")
        try:
            doc = yaml.safe_load(text) or {}
        except yaml.YAMLError:
            raise _Unreadable("data.mesh is not YAML") from None
    if not isinstance(doc, Mapping):
        raise _Unreadable("not a mapping")
    return dict(doc)


class Webhooks:
    def __init__(self, ca: Any, store: ConfigStore, kube: KubeApi, namespace: str, *,
                 mesh_config: Mapping[str, Any] | None = None, mesh_config_origin: str = "defaults",
                 root_namespace: str = ROOT_NAMESPACE):
        self.ca = ca
        self.store = store
        self.namespace = namespace
        self.root_namespace = root_namespace  # where ConfigMaps istio and istio-sidecar-injector are read
        self.inputs = InjectionInputs(mesh_config_mapping(mesh_config), mesh_origin=mesh_config_origin)
        self.patcher = WebhookPatcher(kube, lambda: ca.trust_bundle_pem, namespace)
        ca.on_bundle_change(self.patcher.changed)
        self.server: WebhookServer | None = None

    def follow_mesh_config(self, apply: Callable[[Any], None]) -> Callable[[Any], None]:
        """The Kubernetes source's mesh config callback, also feeding injection."""
        def both(obj: Any) -> None:
            apply(obj)
            try:
                mesh = _mesh_mapping({**obj, "kind": "ConfigMap"}) if obj else None
            except _Unreadable:  # the mesh config source reports it; injection keeps its last good
                return
            origin = f"ConfigMap {self.root_namespace}/{MESH_CONFIGMAP}" if obj else "defaults"
            self.inputs.set_mesh_config(mesh, origin)
        return both

    def follow_injector_config(self, obj: Mapping[str, Any] | None) -> None:
        """The Kubernetes source's callback for ConfigMap istio-sidecar-injector."""
        self.inputs.set_injector_configmap(obj, f"{self.root_namespace}/{INJECTOR_CONFIGMAP_NAME}")

    def mesh_config_file_changed(self, path: str) -> None:
        """--mesh-config FILE changed (the mesh config source applied it): read it again
        for injection. A file that cannot be read now keeps what is in force (the mesh
        config source follows it and reports)."""
        try:
            with open(path, encoding="utf-8") as f:
                doc = yaml.safe_load(f)
            mesh = _mesh_mapping(doc)
        except (OSError, UnicodeDecodeError, yaml.YAMLError, _Unreadable) as e:
            log.warning("injection: mesh config file not read", path=path, error=str(e))
            return
        self.inputs.set_mesh_config(mesh, f"file {path}")

    def namespace_of(self, name: str) -> dict[str, Any] | None:
        """The Namespace as the config store has it (labels decide injection); a
        namespace created a moment ago is waited for a little (the watch brings it)."""
        deadline = time.monotonic() + NAMESPACE_WAIT
        while (obj := self.store.snapshot().get("Namespace", "", name)) is None and time.monotonic() < deadline:
            time.sleep(0.05)
        if obj is None:
            return None
        return {"apiVersion": "v1", "kind": "Namespace",
                "metadata": {"name": obj.name, "labels": dict(obj.labels), "annotations": dict(obj.annotations)}}

    def _inject(self, req: AdmissionRequest) -> Verdict:
        return inject.review(req, self.inputs, self.namespace_of)

    def start(self, host: str, port: int) -> WebhookServer:
        cert = WebhookCertificate(self.ca, webhook_dns_names(self.namespace, host))
        self.server = WebhookServer(host, port, cert, {"validate": validate.review, "inject": self._inject}).start()
        return self.server

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()
            self.server = None
