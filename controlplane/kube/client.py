"""The Kubernetes room's client (kube/http.py) for `meshd serve`: from a kubeconfig file,
or in-cluster.

    api = kube_api_client("~/.kube/config")   # `meshd serve --kubeconfig PATH`
    api = kube_api_client(None)               # in a pod: service account token + CA

A plain kubeconfig (kube/kubeconfig.py) and the in-cluster settings are read by meshd,
so `meshd serve` never imports the `kubernetes` package; any other kubeconfig (exec or
auth-provider users, several files in $KUBECONFIG, ...) goes through the library's
loader and ApiClient, imported only then. Kept out of the source itself so tests (and
embedders) hand the source any client, e.g. one pointed at a stand-in API server.
"""
from __future__ import annotations

import os
import ssl

from .http import DEFAULT_POOL, ApiClientHttp, Http, KubeHttp, StaticToken, TlsFiles, in_cluster
from .kubeconfig import KubeconfigError, PlainKubeconfig, read_plain


def kube_api_client(kubeconfig: str | None = None, context: str | None = None, pool_size: int = DEFAULT_POOL) -> Http:
    """From `kubeconfig` when given; else in-cluster when running in a pod; else the
    default kubeconfig ($KUBECONFIG or ~/.kube/config). `pool_size`: at least the number
    of watch streams (kinds x namespaces) plus a few."""
    if kubeconfig or not os.environ.get("KUBERNETES_SERVICE_HOST"):
        path = os.path.expanduser(kubeconfig) if kubeconfig else None
        if path is None:
            env = os.environ.get("KUBECONFIG", "")
            path = env if env and os.pathsep not in env else (None if env else os.path.expanduser("~/.kube/config"))
        plain = read_plain(path, context) if path is not None and os.path.isfile(path) else None
        if plain is not None:
            return plain_client(plain, pool_size)
        return _library_client(path, context, pool_size)
    return in_cluster(pool_size=pool_size)


def plain_client(plain: PlainKubeconfig, pool_size: int = DEFAULT_POOL) -> KubeHttp:
    """What the library's loader would connect with for this kubeconfig, by meshd's client.
    A CA or key pair TLS cannot load is a KubeconfigError naming the file (at start, not
    at the first request)."""
    try:
        return KubeHttp(plain.server, tls=plain_tls(plain), token=StaticToken(plain.token) if plain.token else None,
                        pool_size=pool_size)
    except (ssl.SSLError, OSError, ValueError) as e:
        raise KubeconfigError(f"kubeconfig {plain.source}: cannot use its TLS settings or server: {e}") from e


def plain_tls(plain: PlainKubeconfig) -> TlsFiles:
    """The TLS settings of a plain kubeconfig: its CA (file or data), client key pair
    (written to files when given as data) and insecure-skip-tls-verify."""
    return TlsFiles(
        ca_data=plain.ca.data.decode() if plain.ca is not None and plain.ca.data is not None else None,
        ca_file=str(plain.ca.path) if plain.ca is not None and plain.ca.path is not None else None,
        cert_file=plain.client_cert.file("cert") if plain.client_cert is not None else None,
        key_file=plain.client_key.file("key") if plain.client_key is not None else None,
        insecure=plain.insecure,
    )


def _library_client(path: str | None, context: str | None, pool_size: int) -> ApiClientHttp:
    from .libimport import skip_package_init

    skip_package_init()  # the client and config modules only, not the package's every part
    from kubernetes import client, config

    cfg = client.Configuration()
    config.load_kube_config(config_file=path, context=context, client_configuration=cfg)
    cfg.connection_pool_maxsize = max(cfg.connection_pool_maxsize or 0, pool_size)
    return ApiClientHttp(client.ApiClient(cfg))
