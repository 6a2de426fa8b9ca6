"""/debug/configz's `gatewayAPI` section: the status meshd gives each Gateway API object it
handles (model/gateway_api/status.py), as `kubectl get -o yaml` would show it in
Kubernetes mode, where the leader writes it (kube/status.py). In directory mode this is
where an operator reads why a route did not attach or a reference did not resolve."""
from __future__ import annotations

from typing import Any

from ..config import kinds
from ..model.gateway_api.status import gateway_api_status
from ..names import GATEWAY_API_GROUP

# store kind -> the kind's own name (the Gateway API's Gateway is stored as KubernetesGateway)
_KIND = {k.key_kind: k.kind for k in kinds.GATEWAY_API_KINDS}


def gateway_api_section(mesh: Any) -> list[dict[str, Any]]:
    """One entry per object: its group, kind, namespace, name and status."""
    if mesh is None:
        return []
    statuses = gateway_api_status(mesh.gateway_api)
    return [{"group": GATEWAY_API_GROUP, "kind": _KIND.get(key.kind, key.kind), "namespace": key.namespace,
             "name": key.name, "status": status}
            for key, status in sorted(statuses.items(), key=lambda kv: (kv[0].kind, kv[0].namespace, kv[0].name))]
