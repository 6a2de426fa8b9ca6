"""Istio's names and Envoy's type URLs, in one place.

Anyone who knows istiod should recognise every name meshd sends, so the
formats here follow Istio exactly (see pilot/pkg/model and pkg/util in istio).
"""
from __future__ import annotations

# --- xDS type URLs (envoy.service.discovery.v3) ---------------------------------
CLUSTER = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
ENDPOINT = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"
LISTENER = "type.googleapis.com/envoy.config.listener.v3.Listener"
ROUTE = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"
SECRET = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"

# The order resources must reach Envoy in (make-before-break): clusters before the
# endpoints that fill them, listeners before the routes they name.
PUSH_ORDER = (CLUSTER, ENDPOINT, LISTENER, ROUTE, SECRET)

SHORT = {CLUSTER: "CDS", ENDPOINT: "EDS", LISTENER: "LDS", ROUTE: "RDS", SECRET: "SDS"}
BY_SHORT = {v: k for k, v in SHORT.items()}

# Types whose SotW request with no names means "everything" (wildcard).
WILDCARD_TYPES = frozenset({CLUSTER, LISTENER})

# --- Istio constants ---------------------------------------------------------
DOMAIN_SUFFIX = "cluster.local"
ROOT_NAMESPACE = "istio-system"
DEFAULT_NAMESPACE = "default"

BLACKHOLE_CLUSTER = "BlackHoleCluster"
PASSTHROUGH_CLUSTER = "PassthroughCluster"
INBOUND_PASSTHROUGH_CLUSTER = "InboundPassthroughCluster"
BLACKHOLE_ROUTE = "block_all"

PORT_XDS = 15010
PORT_XDS_SECURE = 15012
PORT_MONITORING = 15014
PORT_ENVOY_ADMIN = 15000
PORT_OUTBOUND = 15001
PORT_INBOUND = 15006
PORT_HEALTH = 15021
PORT_STATS = 15090


# SDS secret names every sidecar/gateway asks for (istio-agent's names).
SDS_DEFAULT = "default"  # the proxy's own certificate chain and key
SDS_ROOT = "ROOTCA"  # the trust bundle
TRUST_DOMAIN = DOMAIN_SUFFIX

# Pod label the injector sets on meshed workloads; endpoint metadata auto mTLS keys on.
TLS_MODE_LABEL = "security.istio.io/tlsMode"
# The Kubernetes Gateway API's group, and the label Istio puts on the pods of a Gateway it
# deploys (a policy's targetRef to that Gateway selects them).
GATEWAY_API_GROUP = "gateway.networking.k8s.io"
GATEWAY_NAME_LABEL = "gateway.networking.k8s.io/gateway-name"
TLS_MODE_ISTIO = "istio"
TRANSPORT_SOCKET_MATCH = "envoy.transport_socket_match"

# Where a workload runs: the topology labels of Kubernetes (and their deprecated forms)
# and Istio's subzone label, on pods and Nodes (model/locality.py reads them; a Node's
# are all meshd keeps of it, config/parse.py).
REGION_LABEL = "topology.kubernetes.io/region"
ZONE_LABEL = "topology.kubernetes.io/zone"
SUBZONE_LABEL = "topology.istio.io/subzone"
OLD_REGION_LABEL = "failure-domain.beta.kubernetes.io/region"
OLD_ZONE_LABEL = "failure-domain.beta.kubernetes.io/zone"
TOPOLOGY_LABELS = (REGION_LABEL, ZONE_LABEL, SUBZONE_LABEL, OLD_REGION_LABEL, OLD_ZONE_LABEL)

# WorkloadGroup auto-registration (sources/autoregistration.py): the node metadata key
# naming the group, and istiod's annotations on the WorkloadEntry it makes.
META_AUTO_REGISTER_GROUP = "AUTO_REGISTER_GROUP"
AUTO_REGISTRATION_GROUP_ANNOTATION = "istio.io/autoRegistrationGroup"
WORKLOAD_CONTROLLER_ANNOTATION = "istio.io/workloadController"
CONNECTED_AT_ANNOTATION = "istio.io/connectedAt"
DISCONNECTED_AT_ANNOTATION = "istio.io/disconnectedAt"

# ALPN values Istio's sidecars speak to each other over mTLS.
ALPN_ISTIO_HTTP = ("istio-http/1.0", "istio-http/1.1", "istio-h2")
ALPN_ISTIO = "istio"


def fqdn(name: str, namespace: str, domain: str = DOMAIN_SUFFIX) -> str:
    """Service `name` in `namespace` as a fully qualified host."""
    return f"{name}.{namespace}.svc.{domain}"


def resolve_host(host: str, namespace: str, domain: str = DOMAIN_SUFFIX) -> str:
    """Istio's short-name rule: a host without a dot is a Service in the
    config's own namespace; anything with a dot (or a wildcard) is taken as is."""
    if host == "*" or "." in host:
        return host
    return fqdn(host, namespace, domain)


def cluster_name(direction: str, port: int, subset: str, host: str) -> str:
    """`outbound|80|v1|reviews.default.svc.cluster.local` (Istio's BuildSubsetKey)."""
    return f"{direction}|{port}|{subset}|{host}"


def parse_cluster_name(name: str) -> tuple[str, int, str, str] | None:
    parts = name.split("|")
    if len(parts) != 4 or not parts[1].isdigit():
        return None
    return parts[0], int(parts[1]), parts[2], parts[3]


def outbound_cluster(port: int, host: str, subset: str = "") -> str:
    return cluster_name("outbound", port, subset, host)


def gateway_listener_name(port: int, bind: str = "0.0.0.0") -> str:
    return f"{bind}_{port}"


def gateway_http_route_name(port: int) -> str:
    return f"http.{port}"


def virtual_host_name(host: str, port: int) -> str:
    return f"{host}:{port}"


def virtual_service_path(namespace: str, name: str, version: str = "v1") -> str:
    """Route metadata `istio.config`, as istiod writes it."""
    return f"/apis/networking.istio.io/{version}/namespaces/{namespace}/virtual-service/{name}"


def node_id(proxy_type: str, ip: str, pod: str, namespace: str, domain: str = DOMAIN_SUFFIX) -> str:
    """`router~10.0.0.1~gw-abc.istio-system~istio-system.svc.cluster.local`."""
    return f"{proxy_type}~{ip}~{pod}.{namespace}~{namespace}.svc.{domain}"


def inbound_cluster(port: int) -> str:
    """`inbound|8080||`: istiod's inbound cluster names carry only the workload port."""
    return cluster_name("inbound", port, "", "")


def spiffe_id(namespace: str, service_account: str, trust_domain: str = TRUST_DOMAIN) -> str:
    return f"spiffe://{trust_domain}/ns/{namespace}/sa/{service_account}"


def sds_credential(name: str) -> str:
    return f"kubernetes://{name}"
