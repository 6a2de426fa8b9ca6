"""An ApiClient for the Kubernetes source: from a kubeconfig file, or in-cluster.

    api = kube_api_client("~/.kube/config")   # `meshd serve --kubeconfig PATH`
    api = kube_api_client(None)               # in a pod: service account token + CA

Kept out of the source itself so tests (and embedders) hand the source any client,
e.g. one pointed at a stand-in API server.
"""
from __future__ import annotations

import os

from kubernetes import client

from .kubeconfig import read_plain

# Every watch holds one HTTP connection for minutes; the client's default pool (5 per
# CPU) would otherwise discard connections with a warning on small machines.
_MIN_POOL = 32


def kube_api_client(kubeconfig: str | None = None, context: str | None = None, pool_size: int = _MIN_POOL) -> client.ApiClient:
    """Configuration from `kubeconfig` when given; else in-cluster when running in a pod;
    else the default kubeconfig ($KUBECONFIG or ~/.kube/config). `pool_size`: at least
    the number of watch streams (kinds x namespaces) plus a few."""
    cfg = client.Configuration()
    if kubeconfig or not os.environ.get("KUBERNETES_SERVICE_HOST"):
        _load_kubeconfig(cfg, kubeconfig, context)
    else:
        from kubernetes import config  # in a pod: the library's loader refreshes the rotating token

        config.load_incluster_config(client_configuration=cfg)
    cfg.connection_pool_maxsize = max(cfg.connection_pool_maxsize or 0, pool_size)
    return client.ApiClient(cfg)


def _load_kubeconfig(cfg: client.Configuration, kubeconfig: str | None, context: str | None) -> None:
    """A plain kubeconfig by meshd's reader (the library's `config` module is not imported);
    anything else (exec or auth-provider users, several files in $KUBECONFIG, ...) by the
    library's loader."""
    path = os.path.expanduser(kubeconfig) if kubeconfig else None
    if path is None:
        env = os.environ.get("KUBECONFIG", "")
        path = env if env and os.pathsep not in env else (None if env else os.path.expanduser("~/.kube/config"))
    plain = read_plain(path, context) if path is not None and os.path.isfile(path) else None
    if plain is not None:
        plain.configure(cfg)
        return
    from kubernetes import config

    config.load_kube_config(config_file=path, context=context, client_configuration=cfg)
