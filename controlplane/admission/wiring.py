"""The webhooks wired for `meshd serve` in Kubernetes mode (app.py calls this):

    webhooks = Webhooks(ca, store, member.kube, member.namespace)
    source = KubernetesSource(..., mesh_config=webhooks.follow_mesh_config(mesh_source.apply_configmap))
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
from . import inject, validate
from .certificate import WebhookCertificate, webhook_dns_names
from .inject import InjectionInputs
from .patcher import WebhookPatcher
from .review import AdmissionRequest, Verdict
from .server import WebhookServer

log = structlog.get_logger("meshd.admission")

NAMESPACE_WAIT = 2.0  # seconds a pod's namespace may take to reach the store


def mesh_config_mapping(doc: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """The MeshConfig mapping of ConfigMap `istio` (its `data.mesh` YAML) or of a
    --mesh-config file (the mapping itself, or such a ConfigMap); None when there is
    none or it is not a mapping (sources/meshconfig.py reports why)."""
    if not isinstance(doc, Mapping):
        return None
    if doc.get("kind") == "ConfigMap" or "data" in doc:
        text = (doc.get("data") or {}).get("mesh") if isinstance(doc.get("data"), Mapping) else None
        try:
            doc = yaml.safe_load(text) if isinstance(text, str) else None
        except yaml.YAMLError:
            return None
    return dict(doc) if isinstance(doc, Mapping) else None


class Webhooks:
    def __init__(self, ca: Any, store: ConfigStore, kube: KubeApi, namespace: str, *,
                 mesh_config: Mapping[str, Any] | None = None):
        self.ca = ca
        self.store = store
        self.namespace = namespace
        self.inputs = InjectionInputs(mesh_config_mapping(mesh_config))
        self.patcher = WebhookPatcher(kube, lambda: ca.trust_bundle_pem, namespace)
        ca.on_bundle_change(self.patcher.changed)
        self.server: WebhookServer | None = None

    def follow_mesh_config(self, apply: Callable[[Any], None]) -> Callable[[Any], None]:
        """The Kubernetes source's mesh config callback, also feeding injection."""
        def both(obj: Any) -> None:
            self.inputs.set_mesh_config(mesh_config_mapping({**obj, "kind": "ConfigMap"}) if obj else None)
            apply(obj)
        return both

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
