"""Envoy bootstrap for a proxy that gets its configuration from meshd.

The node id and metadata follow what pilot-agent writes for Istio proxies, so meshd
(and anyone reading /debug or logs) sees the same identity istiod would. Static parts
mirror Istio's bootstrap: the `xds-grpc` ADS cluster, admin on loopback, the Prometheus
listener (15090) and the readiness listener (15021, answered from Envoy's own /ready
because there is no pilot-agent here).

Secure xDS (`XdsTls`): the `xds-grpc` cluster speaks TLS to meshd's secure port (15012),
verifies meshd's certificate against the mesh root (copied into the bootstrap, so
Envoy, running as UID 1337, never needs to read the CA directory) with SNI and SAN
`istiod.istio-system.svc` as Istio's proxies do, and sends the workload's token as
gRPC metadata `authorization: Bearer <jwt>` on the ADS stream: meshd answers SDS
`default` (the workload key) only to a stream authenticated that way. The token is a
credential: a bootstrap carrying one is written 0600 (see cli.py).

A token that rotates (`XdsTls.token_path`: the pod's projected service-account token,
which the kubelet replaces before it expires) is not copied: the ADS service becomes
Envoy's `google_grpc` client with the `envoy.grpc_credentials.file_based_metadata` call
credential, which reads the file again for every new stream, so a proxy that reconnects
(meshd restarted, the stream cut) presents the current token. Envoy's own gRPC client
(`envoy_grpc`, static `initial_metadata`) cannot do that. The xds-grpc cluster stays
for the operator's eye (same address) but carries no traffic then.

Sidecars get the pod label the injector adds, `security.istio.io/tlsMode: istio`, in
LABELS unless given otherwise (auto mTLS and PeerAuthentication read it), and
`INTERCEPTION_MODE: REDIRECT`.
"""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import names, proxy_settings
from .model.meshconfig import ProxyConfig
from .version import meshd_version

XDS_SERVER_NAME = "istiod.istio-system.svc"  # SNI and verified SAN of the secure xDS port

HTTP2_OPTIONS = {
    "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
        "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
        "explicit_http_config": {"http2_protocol_options": {}},
    }
}
ROUTER_FILTER = {
    "name": "envoy.filters.http.router",
    "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"},
}


@dataclass
class BootstrapParams:
    proxy_type: str  # "router" | "sidecar"
    namespace: str
    pod: str
    ip: str
    xds_address: str  # host:port
    labels: dict[str, str] = field(default_factory=dict)
    admin_port: int = names.PORT_ENVOY_ADMIN
    service_account: str = "default"
    cluster_id: str = "Kubernetes"
    stats_port: int = names.PORT_STATS  # 0: no Prometheus listener
    health_port: int = names.PORT_HEALTH  # 0: no readiness listener
    xds_transport: str = "sotw"  # "sotw" (api_type GRPC) | "delta" (DELTA_GRPC, incremental xDS)
    tls: XdsTls | None = None  # None: plaintext xDS (port 15010)
    locality: str = ""  # "region/zone/subzone": the node's locality (locality load balancing)
    # A VM joining through a WorkloadGroup (docs/vm.md): node metadata AUTO_REGISTER_GROUP
    # makes meshd register it as a WorkloadEntry while it is connected.
    auto_register_group: str = ""
    workload_name: str = ""  # WORKLOAD_NAME ("": the app label, else the pod name)
    network: str = ""  # NETWORK: the network the proxy is on ("": the default one)
    # Stream Envoy's counters to meshd's metrics service (telemetry/service.py) every
    # `metrics_flush_interval` seconds; 0: no stats sink. Needs `tls` (the authenticated port).
    metrics_flush_interval: float = 0.0
    # The mesh config's defaultConfig (`meshd bootstrap --mesh-config`): stats matcher and
    # node metadata (proxy_settings.py). None: Envoy's defaults, all stats kept.
    proxy_config: ProxyConfig | None = None


@dataclass(frozen=True)
class XdsTls:
    root_cert_pem: str  # the mesh root: verifies meshd's serving certificate
    token: str = field(default="", repr=False)  # bearer token for the ADS stream ("" : none)
    server_name: str = XDS_SERVER_NAME
    token_path: str = ""  # a token file Envoy reads on every (re)connection instead of `token`


def _check_root_pem(pem: str, source: str) -> str:
    from cryptography import x509

    try:
        x509.load_pem_x509_certificate(pem.encode())
    except ValueError:
        raise ValueError(f"{source} is not a PEM certificate") from None
    return pem


def xds_tls_from_ca_dir(ca_dir: Path, namespace: str, service_account: str, token_ttl, server_name: str = XDS_SERVER_NAME) -> XdsTls:
    """Root from `<ca_dir>/root-cert.pem` (written by `meshd serve`), and a fresh token
    for namespace/service_account signed with the CA directory's token key."""
    from .security.cadir import open_tokens, trust_bundle_path

    root = trust_bundle_path(ca_dir)  # every trusted root: survives a root rotation
    if not root.is_file():
        raise ValueError(f"{root} does not exist: start `meshd serve --ca-dir {ca_dir}` once to create the CA")
    pem = _check_root_pem(root.read_text(), str(root))
    token = open_tokens(ca_dir).issue(namespace, service_account, ttl=token_ttl)
    return XdsTls(root_cert_pem=pem, token=token, server_name=server_name)


def xds_tls_from_files(root_cert: Path, token_file: Path | None, server_name: str = XDS_SERVER_NAME) -> XdsTls:
    pem = _check_root_pem(Path(root_cert).read_text(), str(root_cert))
    token = ""
    if token_file is not None:
        token = Path(token_file).read_text().strip()
        if token.count(".") != 2 or any(c.isspace() for c in token):
            raise ValueError(f"{token_file} does not hold a JWT (header.claims.signature)")
    return XdsTls(root_cert_pem=pem, token=token, server_name=server_name)


def _xds_transport_socket(tls: XdsTls) -> dict[str, Any]:
    return {
        "name": "envoy.transport_sockets.tls",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
            "sni": tls.server_name,
            "common_tls_context": {
                "alpn_protocols": ["h2"],
                "validation_context": {
                    "trusted_ca": {"inline_string": tls.root_cert_pem},
                    "match_typed_subject_alt_names": [{"san_type": "DNS", "matcher": {"exact": tls.server_name}}],
                },
            },
        },
    }


@dataclass(frozen=True)
class GroupMember:
    """What a proxy joining a WorkloadGroup claims (istioctl x workload entry configure):
    the group's namespace, the template's service account, the labels its entries get."""

    group: str
    namespace: str
    service_account: str
    labels: dict[str, str]


def read_workload_group(path: Path) -> GroupMember:
    """The WorkloadGroup of a YAML file (the one applied to the mesh), through the parse
    gate; ValueError naming the file, field and reason when it is not one valid group."""
    from .config.objects import ConfigObject, Origin
    from .config.parse import parse_document
    from .sources.yamlfile import YamlError, load_located

    try:
        docs = load_located(path.read_bytes())
    except YamlError as e:
        raise ValueError(f"--workload-group {path}: {e}") from None
    groups: list[ConfigObject] = []
    for i, d in enumerate(docs):
        parsed = parse_document(d.data, Origin("file", str(path), i, d.line))
        if isinstance(parsed, ConfigObject) and parsed.kind == "WorkloadGroup":
            groups.append(parsed)
        elif parsed is not None and not isinstance(parsed, ConfigObject):
            raise ValueError(f"--workload-group: {parsed.message()}")
    if len(groups) != 1:
        raise ValueError(f"--workload-group {path}: want exactly one WorkloadGroup, found {len(groups)}")
    g = groups[0]
    wg = g.typed
    return GroupMember(g.name, g.namespace, wg.template.service_account or "default",
                       {**wg.template.labels, **wg.labels})


def parse_labels(text: str) -> dict[str, str]:
    """`k=v,k2=v2` -> dict; raises ValueError naming the bad item."""
    out: dict[str, str] = {}
    for item in filter(None, (p.strip() for p in text.split(","))):
        k, sep, v = item.partition("=")
        if not sep or not k:
            raise ValueError(f"label {item!r} is not key=value")
        out[k] = v
    return out


def _address_cluster(name: str, host: str, port: int, http2: bool = False) -> dict[str, Any]:
    try:
        ipaddress.ip_address(host)
        kind = "STATIC"
    except ValueError:
        kind = "STRICT_DNS"
    c: dict[str, Any] = {
        "name": name,
        "type": kind,
        "connect_timeout": "1s",
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {"socket_address": {"address": host, "port_value": port}}}}]}],
        },
    }
    if http2:
        c["typed_extension_protocol_options"] = HTTP2_OPTIONS
    return c


def _static_listener(name: str, port: int, prefix: str, cluster: str, rewrite: str | None = None) -> dict[str, Any]:
    route: dict[str, Any] = {"cluster": cluster}
    if rewrite:
        route["prefix_rewrite"] = rewrite
    return {
        "name": name,
        "address": {"socket_address": {"address": "0.0.0.0", "port_value": port}},
        "filter_chains": [
            {
                "filters": [
                    {
                        "name": "envoy.filters.network.http_connection_manager",
                        "typed_config": {
                            "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                            "stat_prefix": name,
                            "route_config": {
                                "virtual_hosts": [
                                    {"name": "backend", "domains": ["*"], "routes": [{"match": {"prefix": prefix}, "route": route}]}
                                ]
                            },
                            "http_filters": [ROUTER_FILTER],
                        },
                    }
                ]
            }
        ],
    }


def build_bootstrap(p: BootstrapParams) -> dict[str, Any]:
    host, _, port = p.xds_address.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"--xds-address {p.xds_address!r} is not host:port")
    host = host.strip("[]")
    node_id = names.node_id(p.proxy_type, p.ip, p.pod, p.namespace)
    labels = dict(p.labels)
    if p.proxy_type == "sidecar":
        labels.setdefault(names.TLS_MODE_LABEL, names.TLS_MODE_ISTIO)
    app = labels.get("app") or labels.get("istio") or p.pod
    metadata: dict[str, Any] = {
        "NAMESPACE": p.namespace,
        "NAME": p.pod,
        "POD_NAME": p.pod,
        "LABELS": labels,
        "INSTANCE_IPS": p.ip,
        "SERVICE_ACCOUNT": p.service_account,
        "CLUSTER_ID": p.cluster_id,
        "MESH_ID": names.DOMAIN_SUFFIX,
        "WORKLOAD_NAME": p.workload_name or app,
        # The agent's version, as pilot-agent reports Istio's: `proxy-status` shows it.
        "ISTIO_VERSION": meshd_version(),
    }
    if p.proxy_type == "sidecar":
        metadata["INTERCEPTION_MODE"] = "REDIRECT"
    if p.auto_register_group:
        metadata[names.META_AUTO_REGISTER_GROUP] = p.auto_register_group
    if p.network:
        metadata["NETWORK"] = p.network
    if p.proxy_config is not None:
        metadata.update(proxy_settings.node_metadata(p.proxy_config))
    ads_source = {"ads": {}, "resource_api_version": "V3", "initial_fetch_timeout": "0s"}
    api_type = "DELTA_GRPC" if p.xds_transport == "delta" else "GRPC"
    clusters = [_address_cluster("xds-grpc", host, int(port), http2=True)]
    listeners = []
    if p.stats_port or p.health_port:
        clusters.append(_address_cluster("prometheus_stats", "127.0.0.1", p.admin_port))
    if p.stats_port:
        listeners.append(_static_listener(f"0.0.0.0_{p.stats_port}", p.stats_port, "/stats/prometheus", "prometheus_stats"))
    if p.health_port:
        listeners.append(_static_listener(f"0.0.0.0_{p.health_port}", p.health_port, "/healthz/ready", "prometheus_stats", rewrite="/ready"))
    # The xds-grpc cluster gets generous circuit breakers, as in Istio's bootstrap:
    # thousands of resources are pushed over one connection.
    clusters[0]["circuit_breakers"] = {"thresholds": [{"priority": "DEFAULT", "max_connections": 100000, "max_pending_requests": 100000, "max_requests": 100000}]}
    clusters[0]["upstream_connection_options"] = {"tcp_keepalive": {"keepalive_time": 300}}
    grpc_service: dict[str, Any] = {"envoy_grpc": {"cluster_name": "xds-grpc"}}
    if p.tls is not None:
        clusters[0]["transport_socket"] = _xds_transport_socket(p.tls)
        if p.tls.token_path:
            grpc_service = _rotating_token_grpc_service(p.tls, p.xds_address)
        elif p.tls.token:
            grpc_service["initial_metadata"] = [{"key": "authorization", "value": f"Bearer {p.tls.token}"}]
    node: dict[str, Any] = {"id": node_id, "cluster": f"{app}.{p.namespace}", "metadata": metadata}
    metrics = _metrics_sink(p, grpc_service) if p.metrics_flush_interval else {}
    if p.locality:
        parts = (p.locality.split("/", 2) + ["", ""])[:3]
        if not parts[0].strip():
            raise ValueError(f"--locality {p.locality!r} is not region[/zone[/subzone]]")
        node["locality"] = {k: v.strip() for k, v in zip(("region", "zone", "sub_zone"), parts, strict=True) if v.strip()}
    return {
        "node": node,
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": p.admin_port}}},
        "dynamic_resources": {
            "ads_config": {
                "api_type": api_type,
                "transport_api_version": "V3",
                "grpc_services": [grpc_service],
                "set_node_on_first_message_only": True,
            },
            "cds_config": ads_source,
            "lds_config": ads_source,
        },
        "static_resources": {"clusters": clusters, "listeners": listeners},
        "layered_runtime": {
            "layers": [{"name": "global config", "static_layer": {"overload.global_downstream_max_connections": 2147483647}}]
        },
        **metrics,
        **(proxy_settings.stats_config(p.proxy_config) if p.proxy_config is not None else {}),
    }


def _rotating_token_grpc_service(tls: XdsTls, address: str) -> dict[str, Any]:
    """ADS over Envoy's google_grpc client, authenticated with the token file as it is
    when each stream starts (the kubelet rotates a projected token in place)."""
    if tls.token:
        raise ValueError("give the token inline or as a file to re-read (token_path), not both")
    return {
        "google_grpc": {
            "target_uri": address,
            "stat_prefix": "xds-grpc",
            "channel_credentials": {"ssl_credentials": {"root_certs": {"inline_string": tls.root_cert_pem}}},
            "call_credentials": [{
                "from_plugin": {
                    "name": "envoy.grpc_credentials.file_based_metadata",
                    "typed_config": {
                        "@type": "type.googleapis.com/envoy.config.grpc_credential.v3.FileBasedMetadataConfig",
                        "secret_data": {"filename": tls.token_path},
                        "header_prefix": "Bearer ",
                    },
                },
            }],
            "credentials_factory_name": "envoy.grpc_credentials.file_based_metadata",
            # The address may be an IP or a local forwarder: verify meshd's certificate
            # for its service name, as the envoy_grpc cluster does with SNI and SAN.
            "channel_args": {"args": {"grpc.ssl_target_name_override": {"string_value": tls.server_name}}},
        }
    }


def _metrics_sink(p: BootstrapParams, grpc_service: dict[str, Any]) -> dict[str, Any]:
    """Envoy's metrics service sink to meshd over the ADS cluster and credentials.
    `emit_tags_as_labels: false`: stats keep their full names, because Envoy's default tag
    extractors cut Istio's cluster names at the first dot (`outbound|80||a.ns.svc...`
    becomes cluster `outbound|80||a`), and meshd reads the names (telemetry/counters.py)."""
    if p.tls is None:
        raise ValueError("--metrics-service needs the authenticated xDS port (--ca-dir, --secure or --root-cert): "
                         "meshd serves the metrics service only there")
    if p.metrics_flush_interval < 1:
        raise ValueError(f"--metrics-flush-interval {p.metrics_flush_interval:g}s: want at least 1s")
    return {
        "stats_flush_interval": f"{p.metrics_flush_interval:g}s",
        "stats_sinks": [{
            "name": "envoy.stat_sinks.metrics_service",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.config.metrics.v3.MetricsServiceConfig",
                "transport_api_version": "V3",
                "emit_tags_as_labels": False,
                "grpc_service": grpc_service,
            },
        }],
    }
