"""meshd's own reader for plain kubeconfigs, so that start-up does not import the
`kubernetes` package's `config` module (oauthlib, requests, google-auth hooks: about
0.1 CPU-s, a tenth of meshd's start-up to ready; bench/README.md "Start-up").

Plain means what a cluster installer or `kubectl config` writes for a person or a
robot with static credentials: one file, a context naming a cluster (server, CA file
or data, or insecure-skip-tls-verify) and a user with a client certificate and key
(file or data) and/or a bearer token. Anything else (several files in $KUBECONFIG,
exec or auth-provider plugins, tokenFile, username/password, proxy-url,
tls-server-name, impersonation, a field this reader does not know) gives `None`, and
the caller uses the library's loader, which handles it or rejects it: an unknown field
is never dropped here.

    target = read_plain("~/.kube/config", context=None)   # PlainKubeconfig | None
    if target: api = client.plain_client(target)           # meshd's own HTTP client
"""
from __future__ import annotations

import atexit
import base64
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from ..ports import StartupError

# Fields of a plain cluster / user entry; one outside these sends the file to the library.
_CLUSTER_FIELDS = frozenset({"server", "certificate-authority", "certificate-authority-data",
                             "insecure-skip-tls-verify", "extensions"})
_USER_FIELDS = frozenset({"client-certificate", "client-certificate-data", "client-key", "client-key-data",
                          "token", "extensions"})
_CONTEXT_FIELDS = frozenset({"cluster", "user", "namespace", "extensions"})


class KubeconfigError(StartupError, ValueError):
    """A kubeconfig meshd cannot use, naming the file, the entry and the field (`meshd
    serve` prints it as one line and exits 2)."""


@dataclass(frozen=True)
class PemSource:
    """A PEM file: a path (relative paths resolved against the kubeconfig's directory)
    or inline base64 data."""

    path: Path | None = None
    data: bytes | None = None

    def file(self, what: str) -> str:
        """A path the TLS layer can read; inline data goes to a private temporary file
        (the library's loader does the same), removed at exit."""
        if self.path is not None:
            return str(self.path)
        fd, name = tempfile.mkstemp(prefix=f"meshd-kube-{what}-", suffix=".pem")  # mode 0600
        with os.fdopen(fd, "wb") as f:
            f.write(self.data or b"")
        atexit.register(_remove, name)
        return name


def _remove(name: str) -> None:
    try:
        os.unlink(name)
    except OSError:
        pass


@dataclass(frozen=True)
class PlainKubeconfig:
    """The parts of a plain kubeconfig's current context meshd connects with."""

    source: Path
    server: str
    ca: PemSource | None
    insecure: bool
    client_cert: PemSource | None
    client_key: PemSource | None
    token: str | None


def read_plain(path: str | os.PathLike[str], context: str | None = None) -> PlainKubeconfig | None:
    """The current (or named) context of the kubeconfig at `path` if it is plain, else
    None (use the library's loader). Raises KubeconfigError for a file that is plain in
    form but wrong (a context or cluster it names is missing, bad base64)."""
    source = Path(path).expanduser()
    try:
        doc = yaml.safe_load(source.read_text())
    except (OSError, yaml.YAMLError) as e:
        raise KubeconfigError(f"kubeconfig {source}: cannot read: {e}") from e
    if not isinstance(doc, dict):
        raise KubeconfigError(f"kubeconfig {source}: not a mapping")
    if set(doc) - {"apiVersion", "kind", "clusters", "users", "contexts", "current-context", "preferences"}:
        return None
    if doc.get("preferences"):
        return None
    name = context or doc.get("current-context")
    if not name:
        raise KubeconfigError(f"kubeconfig {source}: no current-context and no context given")
    ctx = _entry(source, doc, "contexts", "context", name)
    if set(ctx) - _CONTEXT_FIELDS:
        return None
    cluster = _entry(source, doc, "clusters", "cluster", ctx.get("cluster"))
    user = _entry(source, doc, "users", "user", ctx.get("user")) if ctx.get("user") else {}
    if set(cluster) - _CLUSTER_FIELDS or set(user) - _USER_FIELDS:
        return None
    server = cluster.get("server")
    if not isinstance(server, str) or not server:
        raise KubeconfigError(f"kubeconfig {source}: cluster {ctx.get('cluster')!r}: field 'server' is missing")
    has_cert = ("client-certificate" in user or "client-certificate-data" in user)
    has_key = ("client-key" in user or "client-key-data" in user)
    if has_cert != has_key:  # the library decides what half a key pair means
        return None
    where = f"kubeconfig {source}"
    return PlainKubeconfig(
        source=source, server=server.rstrip("/"),
        ca=_pem(source, cluster, "certificate-authority", f"{where}: cluster {ctx.get('cluster')!r}"),
        insecure=bool(cluster.get("insecure-skip-tls-verify", False)),
        client_cert=_pem(source, user, "client-certificate", f"{where}: user {ctx.get('user')!r}"),
        client_key=_pem(source, user, "client-key", f"{where}: user {ctx.get('user')!r}"),
        token=user.get("token") or None,
    )


def _entry(source: Path, doc: dict[str, Any], section: str, key: str, name: object) -> dict[str, Any]:
    for item in doc.get(section) or ():
        if isinstance(item, dict) and item.get("name") == name:
            body = item.get(key)
            if not isinstance(body, dict):
                raise KubeconfigError(f"kubeconfig {source}: {key} {name!r}: field {key!r} is not a mapping")
            return body
    raise KubeconfigError(f"kubeconfig {source}: {key} {name!r} is not in {section!r}")


def _pem(source: Path, entry: dict[str, Any], field: str, where: str) -> PemSource | None:
    data = entry.get(f"{field}-data")
    if data:
        try:
            return PemSource(data=base64.b64decode(data, validate=True))
        except (ValueError, TypeError) as e:
            raise KubeconfigError(f"{where}: field '{field}-data' is not base64: {e}") from e
    path = entry.get(field)
    if path:
        p = Path(path).expanduser()
        return PemSource(path=p if p.is_absolute() else source.parent / p)
    return None
