"""What a client proxy (sidecar or gateway) sends to a destination: Istio mTLS, plaintext,
or the TLS a DestinationRule asks for (istiod's cluster_tls.go and endpoint mtlsChecker,
read not copied).

- A DestinationRule `tls` block (top level, port level or subset) decides outright:
  ISTIO_MUTUAL always sends Istio mTLS, DISABLE plaintext, SIMPLE/MUTUAL the given TLS.
- Without one, auto mTLS: the cluster offers two transport sockets and each endpoint picks
  one by its metadata. Endpoints of pods labelled `security.istio.io/tlsMode: istio` (a
  sidecar is there) get mTLS, the others plaintext. A destination whose namespace (or the
  mesh) runs PeerAuthentication DISABLE gets plaintext only; an endpoint whose own
  workload policy is DISABLE on its port is treated as having no sidecar.
- The client checks the server's SPIFFE identity against the service accounts of the
  service's endpoints (and a ServiceEntry's `subjectAltNames`), and sends istiod's SNI
  `outbound_.<port>_.<subset>_.<host>`.
- MESH_EXTERNAL ServiceEntry hosts never get auto mTLS (no sidecar there); a
  DestinationRule `tls` still applies (TLS origination). A SIMPLE/MUTUAL rule without
  `subjectAltNames` for a ServiceEntry host verifies the SE's `subjectAltNames`.
"""
from __future__ import annotations

from dataclasses import dataclass

from envoy.config.cluster.v3 import cluster_pb2
from envoy.extensions.transport_sockets.tls.v3 import tls_pb2
from google.protobuf import struct_pb2

from .. import names
from ..model import protocol
from ..model.destination_rules import selector_of
from ..model.mesh import MeshSnapshot
from ..model.peer_authentication import DISABLE
from ..model.proxy import SIDECAR, Proxy
from ..model.services import Endpoint, Service
from . import cluster_discovery, tls
from .destinations import OutboundCluster

# How a cluster's transport is chosen.
AUTO = "auto"  # transport_socket_matches: mTLS for tlsMode=istio endpoints, plaintext otherwise
ISTIO = "istio"  # Istio mTLS to every endpoint (DestinationRule ISTIO_MUTUAL)
PLAINTEXT = "plaintext"  # no TLS (DestinationRule DISABLE, or the destination disabled mTLS)
USER = "user"  # the DestinationRule's SIMPLE/MUTUAL settings

SERVICE_ENTRY = "ServiceEntry"  # Service.source of ServiceEntry hosts

MATCH_ISTIO = "tlsMode-" + names.TLS_MODE_ISTIO
MATCH_DISABLED = "tlsMode-disabled"


@dataclass(frozen=True)
class ClusterTls:
    kind: str
    context: tls_pb2.UpstreamTlsContext | None = None


def original_dst(oc: OutboundCluster, proxy: Proxy) -> bool:
    """Sidecars reach headless services (and ServiceEntry hosts with `resolution: NONE`)
    at the address the application dialled (istiod's Passthrough resolution); gateways
    cannot, and load balance over EDS instead."""
    return cluster_discovery.discovery_type(oc.service, proxy) == cluster_discovery.ORIGINAL_DST


def cluster_tls(mesh: MeshSnapshot, proxy: Proxy, oc: OutboundCluster) -> ClusterTls:
    settings = oc.policy.client_tls
    sni = tls.outbound_sni(oc.port.port, oc.subset, oc.service.hostname)
    http2 = protocol.is_http2(oc.protocol)
    if settings is not None:
        mode = settings.effective_mode
        if mode == "DISABLE":
            return ClusterTls(PLAINTEXT)
        if (
            mode in ("SIMPLE", "MUTUAL")
            and settings.credential_name
            and proxy.type == SIDECAR
            and (oc.rule is None or selector_of(oc.rule) is None)
        ):
            # istiod never hands a Secret to every sidecar a rule reaches: without a
            # workloadSelector the rule's credentialName leaves the cluster without TLS.
            return ClusterTls(PLAINTEXT)
        sans = service_accounts(mesh, oc.service)
        ctx = tls.client_tls(
            settings, sni=sni, sans=sans, http2=http2, own_cert=proxy.workload_cert,
            # istiod: a ServiceEntry's subjectAltNames (and its workloads' identities)
            # verify the TLS a rule originates when the rule names none.
            default_sans=sans if oc.service.source == SERVICE_ENTRY else (),
        )
        if ctx is None:
            return ClusterTls(PLAINTEXT)
        return ClusterTls(ISTIO if mode == "ISTIO_MUTUAL" else USER, ctx)
    if not mesh.mesh_config.enable_auto_mtls:
        # enableAutoMtls false: Istio mTLS only where a DestinationRule asks for it.
        return ClusterTls(PLAINTEXT)
    if not proxy.workload_cert or oc.service.mesh_external or service_mtls_disabled(mesh, oc):
        # A proxy that holds no workload certificate is a plaintext client, like a
        # workload outside the mesh; a MESH_EXTERNAL host has no sidecar to talk mTLS to.
        return ClusterTls(PLAINTEXT)
    alpn = tls.ALPN_IN_MESH_H2 if http2 else tls.ALPN_IN_MESH
    ctx = tls.istio_mutual_upstream(sni, service_accounts(mesh, oc.service), alpn)
    if original_dst(oc, proxy):
        # Endpoint metadata cannot choose for ORIGINAL_DST hosts: all or nothing
        # (service_mtls_disabled already required every endpoint to have a sidecar).
        return ClusterTls(ISTIO, ctx)
    return ClusterTls(AUTO, ctx)


def service_mtls_disabled(mesh: MeshSnapshot, oc: OutboundCluster) -> bool:
    """istiod's BestEffortInferServiceMTLSMode == DISABLE: the destination namespace (or the
    mesh) disables mTLS; for a headless service (or a ServiceEntry with `resolution: NONE`)
    also when any endpoint lacks a sidecar."""
    svc = oc.service
    if cluster_discovery.passthrough(svc):
        eps = mesh.service_endpoints(svc.hostname, oc.port.port)
        if not eps or any(not has_sidecar(ep) for ep in eps):
            return True
    return mesh.mtls_policy(svc.namespace, {}).mode == DISABLE


def has_sidecar(ep: Endpoint) -> bool:
    return ep.labels.get(names.TLS_MODE_LABEL) == names.TLS_MODE_ISTIO


def endpoint_wants_mtls(mesh: MeshSnapshot, oc: OutboundCluster, ep: Endpoint, ct: ClusterTls) -> bool:
    """Whether an EDS endpoint carries `tlsMode: istio` metadata. With auto mTLS, a sidecar
    whose own PeerAuthentication disables mTLS on the endpoint port is sent plaintext."""
    if not has_sidecar(ep):
        return False
    if ct.kind != AUTO:
        return True
    policy = mesh.mtls_policy(ep.namespace or oc.service.namespace, ep.labels)
    return policy.for_port(ep.port) != DISABLE


def endpoint_metadata() -> struct_pb2.Struct:
    s = struct_pb2.Struct()
    s.update({"tlsMode": names.TLS_MODE_ISTIO})
    return s


def apply(cluster: cluster_pb2.Cluster, ct: ClusterTls) -> None:
    if ct.context is None:
        return
    socket = tls.transport_socket(ct.context)
    if ct.kind != AUTO:
        cluster.transport_socket.CopyFrom(socket)
        return
    istio = cluster.transport_socket_matches.add(name=MATCH_ISTIO, transport_socket=socket)
    istio.match.update({"tlsMode": names.TLS_MODE_ISTIO})
    plain = cluster.transport_socket_matches.add(name=MATCH_DISABLED, transport_socket=tls.raw_buffer_socket())
    plain.match.SetInParent()


def service_accounts(mesh: MeshSnapshot, svc: Service) -> list[str]:
    """SPIFFE identities of the workloads behind a service (all ports, ready or not) and a
    ServiceEntry's `subjectAltNames`, as istiod's PushContext.ServiceAccounts, sorted;
    with trustDomainAliases each identity also under every alias (istiod's
    ExpandWithTrustDomains), so a server whose certificate names an alias is verified."""
    aliases = mesh.mesh_config.trust_domain_aliases
    return sorted({names.spiffe_id(ns, sa, td) for ns, sa in mesh.service_accounts(svc.hostname)
                   for td in (names.TRUST_DOMAIN, *aliases)} | set(svc.subject_alt_names))
