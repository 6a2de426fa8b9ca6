"""An ApiClient for the Kubernetes source: from a kubeconfig file, or in-cluster.

    api = kube_api_client("~/.kube/config")   # `meshd serve --kubeconfig PATH`
    api = kube_api_client(None)               # in a pod: service account token + CA

Kept out of the source itself so tests (and embedders) hand the source any client,
e.g. one pointed at a stand-in API server.
"""
from __future__ import annotations

import os

from kubernetes import client, config

# Every watch holds one HTTP connection for minutes; the client's default pool (5 per
# CPU) would otherwise discard connections with a warning on small machines.
_MIN_POOL = 32


def kube_api_client(kubeconfig: str | None = None, context: str | None = None, pool_size: int = _MIN_POOL) -> client.ApiClient:
    """Configuration from `kubeconfig` when given; else in-cluster when running in a pod;
    else the default kubeconfig ($KUBECONFIG or ~/.kube/config). `pool_size`: at least
    the number of watch streams (kinds x namespaces) plus a few."""
    cfg = client.Configuration()
    if kubeconfig:
        config.load_kube_config(config_file=os.path.expanduser(kubeconfig), context=context, client_configuration=cfg)
    elif os.environ.get("KUBERNETES_SERVICE_HOST"):
        config.load_incluster_config(client_configuration=cfg)
    else:
        config.load_kube_config(context=context, client_configuration=cfg)
    cfg.connection_pool_maxsize = max(cfg.connection_pool_maxsize or 0, pool_size)
    return client.ApiClient(cfg)
