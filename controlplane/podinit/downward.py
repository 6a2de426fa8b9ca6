"""The pod as its init container sees it (Kubernetes' downward API), and its bootstrap.

The injector gives the init container what pilot-agent reads in an Istio pod: env
POD_NAME, POD_NAMESPACE, INSTANCE_IP, SERVICE_ACCOUNT and ISTIO_META_* entries, and the
pod's labels as the downward-API file `/etc/istio/pod/labels` (`key="value"` lines).
`pod_info` reads them (every problem names the variable or the file line); `bootstrap`
turns them into the Envoy bootstrap `meshd bootstrap --type sidecar` writes (the same
`build_bootstrap`), node id `sidecar~<INSTANCE_IP>~<POD_NAME>.<POD_NAMESPACE>~
<POD_NAMESPACE>.svc.cluster.local`, TLS to meshd with the mounted root, and the projected
token referenced by path so that Envoy re-reads it when the kubelet rotates it.

ISTIO_META_<KEY> entries become node metadata <KEY> as pilot-agent sends them; CLUSTER_ID,
NETWORK and WORKLOAD_NAME fill the bootstrap's own fields. An entry that contradicts what
the bootstrap sets from the pod (NAMESPACE, LABELS, INTERCEPTION_MODE ...) is an error.
"""
from __future__ import annotations

import ipaddress
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import names
from ..bootstrap import XDS_SERVER_NAME, BootstrapParams, XdsTls, build_bootstrap
from ..model.meshconfig import MeshConfigError, ProxyConfig, parse_mesh_config
from ..proxy_settings import ignored_metadata

META_PREFIX = "ISTIO_META_"
LABELS_FILE = "/etc/istio/pod/labels"
REQUIRED_ENV = ("POD_NAME", "POD_NAMESPACE", "INSTANCE_IP", "SERVICE_ACCOUNT")
# ISTIO_META_ keys that set a bootstrap field rather than being copied as metadata.
META_FIELDS = ("CLUSTER_ID", "NETWORK", "WORKLOAD_NAME")
# Metadata that asks for something done by istio-agent, which a meshd pod does not run.
AGENT_ONLY_META = {
    "DNS_CAPTURE": "istio-agent's DNS proxy",
    "DNS_AUTO_ALLOCATE": "istio-agent's DNS proxy",
}


# ProxyConfig fields the injector applies itself (the xDS address, the -m flag, the
# proxy container's drain): present in --proxy-config-json, not to be reported here.
APPLIED_BY_INJECTOR = frozenset({"discoveryAddress", "interceptionMode", "terminationDrainDuration"})


class PodInfoError(ValueError):
    """The downward API input is missing or malformed: names the variable or file."""


@dataclass(frozen=True)
class PodInfo:
    name: str
    namespace: str
    ip: str
    service_account: str
    labels: Mapping[str, str] = field(default_factory=dict)
    meta: Mapping[str, str] = field(default_factory=dict)  # ISTIO_META_<KEY> as KEY -> value


def pod_info(env: Mapping[str, str], labels_text: str, labels_source: str = LABELS_FILE) -> PodInfo:
    missing = [k for k in REQUIRED_ENV if not env.get(k, "").strip()]
    if missing:
        raise PodInfoError(f"env {', '.join(missing)}: not set (the injector sets them from the downward API)")
    ip = env["INSTANCE_IP"].strip()
    try:
        version = ipaddress.ip_address(ip).version
    except ValueError:
        raise PodInfoError(f"env INSTANCE_IP {ip!r}: not an IP address") from None
    if version != 4:
        raise PodInfoError(f"env INSTANCE_IP {ip!r}: IPv6 pods are not supported (IPv4 rules only)")
    meta = {k[len(META_PREFIX):]: v for k, v in sorted(env.items()) if k.startswith(META_PREFIX) and len(k) > len(META_PREFIX)}
    return PodInfo(name=env["POD_NAME"].strip(), namespace=env["POD_NAMESPACE"].strip(), ip=ip,
                   service_account=env["SERVICE_ACCOUNT"].strip(), labels=parse_labels_file(labels_text, labels_source),
                   meta=meta)


def parse_labels_file(text: str, source: str = LABELS_FILE) -> dict[str, str]:
    """The downward API's `key="value"` lines (value quoted as Go's %q) -> dict."""
    out: dict[str, str] = {}
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        key, sep, quoted = line.partition("=")
        if not sep or not key or not (len(quoted) >= 2 and quoted[0] == quoted[-1] == '"'):
            raise PodInfoError(f'{source}:{n}: {line!r} is not key="value"')
        try:
            value = json.loads(quoted)  # label values are [A-Za-z0-9_.-]: Go's and JSON's quoting agree
        except ValueError:
            raise PodInfoError(f"{source}:{n}: value of {key!r} is not a quoted string") from None
        out[key] = value
    return out


def parse_proxy_config(text: str) -> ProxyConfig:
    """--proxy-config-json (ProxyConfig: the mesh's defaultConfig merged with the pod's
    proxy.istio.io/config annotation) through the mesh config's own gate."""
    try:
        raw = json.loads(text)
    except ValueError as e:
        raise PodInfoError(f"--proxy-config-json: not JSON: {e}") from None
    try:
        return parse_mesh_config({"defaultConfig": raw}).default_config
    except MeshConfigError as e:
        raise PodInfoError(f"--proxy-config-json: {e.field.removeprefix('defaultConfig.')}: {e.reason}") from None


def unsupported(pod: PodInfo, pc: ProxyConfig | None) -> list[str]:
    """What the pod asks for that has no effect without istio-agent (to report)."""
    out = [f"ISTIO_META_{k}={pod.meta[k]}: has no effect ({why}; meshd has no agent)"
           for k, why in AGENT_ONLY_META.items() if pod.meta.get(k, "").lower() in ("true", "1")]
    if pc is not None:
        out += [f"proxy config {f}: has no effect (pilot-agent's; meshd has no agent)" for f in pc.unread
                if f not in APPLIED_BY_INJECTOR]
        out += [f"proxy config proxyMetadata.{k}: has no effect (pilot-agent's; meshd has no agent)"
                for k in ignored_metadata(pc)]
    return out


def bootstrap(pod: PodInfo, xds_address: str, root_cert: Path, token_path: Path,
              proxy_config: ProxyConfig | None = None, admin_port: int = names.PORT_ENVOY_ADMIN,
              server_name: str = XDS_SERVER_NAME) -> dict[str, Any]:
    """The sidecar's bootstrap (see the module docstring); ValueError naming the input."""
    from ..bootstrap import _check_root_pem

    try:
        pem = _check_root_pem(root_cert.read_text(), f"--root-cert {root_cert}")
    except OSError as e:
        raise PodInfoError(f"--root-cert {root_cert}: {e.strerror or e}") from None
    _check_token_file(token_path)
    params = BootstrapParams(
        proxy_type="sidecar", namespace=pod.namespace, pod=pod.name, ip=pod.ip, xds_address=xds_address,
        labels=dict(pod.labels), admin_port=admin_port, service_account=pod.service_account,
        cluster_id=pod.meta.get("CLUSTER_ID") or BootstrapParams.cluster_id,
        network=pod.meta.get("NETWORK", ""), workload_name=pod.meta.get("WORKLOAD_NAME", ""),
        tls=XdsTls(root_cert_pem=pem, server_name=server_name, token_path=str(token_path)),
        proxy_config=proxy_config,
    )
    doc = build_bootstrap(params)
    metadata = doc["node"]["metadata"]
    for key, value in pod.meta.items():
        if key in META_FIELDS:
            continue
        have = metadata.get(key)
        if have is not None and have != value and key != "MESH_ID":
            raise PodInfoError(f"env ISTIO_META_{key}={value!r} contradicts the bootstrap's {key}={have!r}")
        metadata[key] = value  # MESH_ID: the injector's (the mesh config's trust domain) wins
    return doc


def _check_token_file(path: Path) -> None:
    """The projected token must be there when the init step runs (the kubelet mounts it
    before any container starts); Envoy reads it again for every connection."""
    try:
        token = path.read_text()
    except OSError as e:
        raise PodInfoError(f"--token-path {path}: {e.strerror or e}") from None
    if token != token.strip():
        # Envoy sends the file's bytes as they are: a newline would end up in the header.
        raise PodInfoError(f"--token-path {path}: the token has surrounding white space (a newline?); "
                           "write it without, as the kubelet does")
    if token.count(".") != 2 or any(c.isspace() for c in token):
        raise PodInfoError(f"--token-path {path}: does not hold a JWT (header.claims.signature)")
