"""One proxy's generated resources as one static Envoy bootstrap, for `envoy --mode
validate` (tests/support/envoy.py envoy_validate): RDS inlined into the listeners, EDS
clusters made STATIC with their assignment, and SDS references made static secrets
(Envoy's validate mode crashes on SDS-over-ADS references).

Two ways with the secrets: `gateway_bootstrap` serves every secret a gateway names from
what meshd's SDS builder has for it (a name SDS would not serve fails the test), and
`sidecar_config` gives every referenced secret a throwaway self-signed certificate.
"""
from __future__ import annotations

from pathlib import Path

from envoy.config.bootstrap.v3 import bootstrap_pb2
from envoy.config.cluster.v3 import cluster_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2
from envoy.extensions.transport_sockets.tls.v3 import tls_pb2
from google.protobuf import json_format

from controlplane.generators import clusters, endpoints, listeners, routes, secrets
from tests.support.pki import Pem, make_ca, make_cert

HCM = "envoy.filters.network.http_connection_manager"


def by_name(items) -> dict:
    return {name: msg for name, msg in items}


def inline_bootstrap(mesh, proxy, node_cluster: str | None = None) -> bootstrap_pb2.Bootstrap:
    """The proxy's listeners with their route configurations inline, and its clusters with
    EDS replaced by STATIC clusters carrying their load assignment."""
    rds = by_name(routes.build(mesh, proxy))
    eds = by_name(endpoints.build(mesh, proxy))
    boot = bootstrap_pb2.Bootstrap()
    boot.node.id = proxy.id
    if node_cluster:
        boot.node.cluster = node_cluster
    for _, lst in listeners.build(mesh, proxy):
        lst = type(lst).FromString(lst.SerializeToString())
        for chain in [*lst.filter_chains, lst.default_filter_chain]:
            for f in chain.filters:
                if f.name != HCM:
                    continue
                hcm = hcm_pb2.HttpConnectionManager()
                f.typed_config.Unpack(hcm)
                if hcm.HasField("rds"):
                    hcm.route_config.CopyFrom(rds[hcm.rds.route_config_name])
                f.typed_config.Pack(hcm)
        boot.static_resources.listeners.append(lst)
    for name, c in clusters.build(mesh, proxy):
        c = type(c).FromString(c.SerializeToString())
        if c.type == cluster_pb2.Cluster.EDS:
            c.ClearField("eds_cluster_config")
            c.type = cluster_pb2.Cluster.STATIC
            c.load_assignment.CopyFrom(eds[name])
        boot.static_resources.clusters.append(c)
    return boot


def gateway_bootstrap(mesh, proxy, *, root: bytes | None = None, leaf: Pem | None = None,
                      node_cluster: str | None = None) -> bootstrap_pb2.Bootstrap:
    """Everything a gateway would get in one bootstrap. The secrets its TLS contexts name
    (listener chains, cluster transport socket matches) come from meshd's SDS builder for
    the proxy; the workload's own `default` and `ROOTCA` (the CA's, not in the mesh) are
    `leaf` and `root`, throwaway ones unless given. A name SDS would not serve fails."""
    boot = inline_bootstrap(mesh, proxy, node_cluster)
    sds = by_name(secrets.build(mesh, proxy))
    needed: set[str] = set()

    def strip(ctx) -> None:
        common = ctx.common_tls_context
        for s in common.tls_certificate_sds_secret_configs:
            s.ClearField("sds_config")
            needed.add(s.name)
        if common.HasField("combined_validation_context"):
            v = common.combined_validation_context.validation_context_sds_secret_config
            v.ClearField("sds_config")
            needed.add(v.name)

    for lst in boot.static_resources.listeners:
        for chain in lst.filter_chains:
            if chain.HasField("transport_socket"):
                ctx = tls_pb2.DownstreamTlsContext()
                chain.transport_socket.typed_config.Unpack(ctx)
                strip(ctx)
                chain.transport_socket.typed_config.Pack(ctx)
    for c in boot.static_resources.clusters:
        for m in c.transport_socket_matches:
            if m.transport_socket.name == "envoy.transport_sockets.tls":
                ctx = tls_pb2.UpstreamTlsContext()
                m.transport_socket.typed_config.Unpack(ctx)
                strip(ctx)
                m.transport_socket.typed_config.Pack(ctx)
    if {"ROOTCA", "default"} & (needed - set(sds)) and (root is None or leaf is None):
        ca = make_ca()
        root, leaf = root or ca.cert, leaf or make_cert(ca, ["workload.example.com"])
    for name in sorted(needed):
        if name in sds:
            boot.static_resources.secrets.append(sds[name])
        elif name == "ROOTCA":
            boot.static_resources.secrets.add(name=name).validation_context.trusted_ca.inline_bytes = root
        elif name == "default":
            s = boot.static_resources.secrets.add(name=name)
            s.tls_certificate.certificate_chain.inline_bytes = leaf.cert
            s.tls_certificate.private_key.inline_bytes = leaf.key
        else:
            raise AssertionError(f"listener references secret {name} that SDS does not serve")
    return boot


def self_signed(tmp_path: Path | None = None) -> tuple[str, str]:
    """A throwaway self-signed CA certificate and its key (PEM text); with `tmp_path`, also
    written there as cert.pem, key.pem and ca.pem (the files a DestinationRule of a test
    may name)."""
    ca = make_ca("cluster.local")
    cert_pem, key_pem = ca.cert.decode(), ca.key.decode()
    if tmp_path is not None:
        (tmp_path / "cert.pem").write_text(cert_pem)
        (tmp_path / "key.pem").write_text(key_pem)
        (tmp_path / "ca.pem").write_text(cert_pem)
    return cert_pem, key_pem


def _static_sds(node, found: set[str]) -> None:
    """SDS references without a config source (static secrets), collecting their names."""
    if isinstance(node, dict):
        if "sds_config" in node and "name" in node:
            found.add(node["name"])
            del node["sds_config"]
        for v in node.values():
            _static_sds(v, found)
    elif isinstance(node, list):
        for v in node:
            _static_sds(v, found)


def sidecar_config(mesh, proxy, tmp_path: Path) -> dict:
    """Everything a proxy (sidecar or router) would get in one bootstrap (a dict), its
    admin on 127.0.0.1:15000, every secret it references a self-signed certificate (also
    written to tmp_path, see self_signed)."""
    boot = inline_bootstrap(mesh, proxy, f"{proxy.pod}.{proxy.namespace}")
    boot.admin.address.socket_address.address = "127.0.0.1"
    boot.admin.address.socket_address.port_value = 15000
    config = json_format.MessageToDict(boot, preserving_proto_field_name=True)
    names: set[str] = set()
    _static_sds(config, names)
    cert_pem, key_pem = self_signed(tmp_path)
    config["static_resources"]["secrets"] = [
        {"name": s, "validation_context": {"trusted_ca": {"inline_string": cert_pem}}}
        if s == "ROOTCA" or s.endswith("-cacert")
        else {"name": s, "tls_certificate": {"certificate_chain": {"inline_string": cert_pem},
                                             "private_key": {"inline_string": key_pem}}}
        for s in sorted(names)
    ]
    return config
