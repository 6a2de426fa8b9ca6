"""Services and their endpoints, built from Kubernetes Service, EndpointSlice and Pod
(and Node, for where each pod runs: locality.py).

Endpoints come from EndpointSlices. A Service that has no EndpointSlice at all gets its
endpoints from the Pods its selector matches, the way the Kubernetes endpoints controller
would compute them (status.podIP; targetPort by number or by container port name).
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ..config.objects import ConfigObject
from ..names import fqdn
from .locality import NO_LOCALITY, Locality, workload_locality

# Who sees a Kubernetes Service (Istio's annotation): namespaces, ".", "*" or "~".
EXPORT_TO_ANNOTATION = "networking.istio.io/exportTo"


@dataclass(frozen=True)
class ServicePort:
    name: str
    port: int
    target_port: int | str | None
    protocol: str = "TCP"  # L4 protocol from the Service
    app_protocol: str = ""


@dataclass(frozen=True)
class Service:
    name: str
    namespace: str
    hostname: str
    ports: tuple[ServicePort, ...]
    selector: Mapping[str, str]
    labels: Mapping[str, str]
    cluster_ip: str = ""  # an IP, "None" (headless) or "" (not given, e.g. a static file)
    created: str = ""  # metadata.creationTimestamp; istiod resolves listener conflicts oldest first
    # Where the service comes from and how clients reach it, as istiod's model.Service
    # says it (Kubernetes Services keep the defaults; ServiceEntry hosts set them).
    source: str = "Kubernetes"  # "Kubernetes" | "ServiceEntry"
    resolution: str = "ClientSideLB"  # istiod's Resolution: ClientSideLB | Passthrough | DNS | DNSRoundRobin
    mesh_external: bool = False
    addresses: tuple[str, ...] = ()  # a ServiceEntry's addresses (VIPs, CIDRs); Kubernetes: cluster_ip
    # Namespaces that see the service (`networking.istio.io/exportTo`, a ServiceEntry's
    # exportTo): () means the mesh config's defaultServiceExportTo.
    export_to: tuple[str, ...] = ()
    subject_alt_names: tuple[str, ...] = ()  # identities clients verify besides the endpoints'

    @property
    def headless(self) -> bool:
        """`clusterIP: None`: clients reach the pods directly (Istio's Passthrough resolution)."""
        return self.cluster_ip == "None"

    @property
    def vip(self) -> str:
        """The cluster IP clients dial, or "" for headless Services and Services without one."""
        return "" if self.headless else self.cluster_ip

    def port(self, number: int) -> ServicePort | None:
        for p in self.ports:
            if p.port == number:
                return p
        return None


@dataclass(frozen=True)
class Endpoint:
    address: str
    port: int  # the port on the endpoint (target port)
    labels: Mapping[str, str] = field(default_factory=dict)
    pod: str = ""  # "name" of the backing pod, when known
    namespace: str = ""
    service_account: str = ""
    ready: bool = True
    locality: Locality = NO_LOCALITY  # from the pod's labels, else its Node's (locality.py)
    network: str = ""  # a ServiceEntry endpoint's or WorkloadEntry's `network`
    weight: int = 0  # a ServiceEntry endpoint's or WorkloadEntry's `weight` (0: not given)


def labels_match(selector: Mapping[str, str], labels: Mapping[str, str]) -> bool:
    """Kubernetes equality selector; an empty selector matches everything."""
    return all(labels.get(k) == v for k, v in selector.items())


def build_service(obj: ConfigObject) -> Service:
    spec = obj.spec.get("spec") or {}
    ports = []
    for p in spec.get("ports") or []:
        ports.append(
            ServicePort(
                name=str(p.get("name") or ""),
                port=int(p["port"]),
                target_port=p.get("targetPort"),
                protocol=str(p.get("protocol") or "TCP"),
                app_protocol=str(p.get("appProtocol") or ""),
            )
        )
    return Service(
        name=obj.name,
        namespace=obj.namespace,
        hostname=fqdn(obj.name, obj.namespace),
        ports=tuple(ports),
        selector=dict(spec.get("selector") or {}),
        labels=dict(obj.labels),
        cluster_ip=str(spec.get("clusterIP") or ""),
        created=str(obj.extra.get("creationTimestamp") or ""),
        export_to=export_annotation(obj.annotations.get(EXPORT_TO_ANNOTATION)),
    )


def export_annotation(value: Any) -> tuple[str, ...]:
    """`networking.istio.io/exportTo: "ns1,ns2"` as its entries; () when absent (the mesh
    default applies)."""
    if not isinstance(value, str):
        return ()
    return tuple(e.strip() for e in value.split(",") if e.strip())


def _pod_ip(pod: ConfigObject) -> str:
    status = pod.spec.get("status") or {}
    return str(status.get("podIP") or "")


def _pod_ready(pod: ConfigObject) -> bool:
    status = pod.spec.get("status") or {}
    if status.get("phase") in ("Succeeded", "Failed"):
        return False
    for cond in status.get("conditions") or []:
        if cond.get("type") == "Ready":
            return str(cond.get("status")) == "True"
    return True  # no conditions reported (static config): treat as ready


def _service_account(pod: ConfigObject | None) -> str:
    if pod is None:
        return ""
    spec = pod.spec.get("spec") or {}
    return str(spec.get("serviceAccountName") or spec.get("serviceAccount") or "default")


def _container_port(pod: ConfigObject, name: str) -> int | None:
    for c in (pod.spec.get("spec") or {}).get("containers") or []:
        for p in c.get("ports") or []:
            if p.get("name") == name and p.get("containerPort") is not None:
                return int(p["containerPort"])
    return None


def _target_port_on_pod(sp: ServicePort, pod: ConfigObject) -> int | None:
    tp = sp.target_port
    if tp is None or tp == "":
        return sp.port
    if isinstance(tp, int) or (isinstance(tp, str) and tp.isdigit()):
        return int(tp)
    return _container_port(pod, tp)


def _node_name(pod: ConfigObject) -> str:
    return str((pod.spec.get("spec") or {}).get("nodeName") or "")


def pod_locality(pod: ConfigObject, nodes: Mapping[str, Mapping[str, str]]) -> Locality:
    """Where `pod` runs: its own labels, else the topology labels of its Node (`nodes`:
    Node name -> labels)."""
    return workload_locality(pod.labels, nodes.get(_node_name(pod)))


def _endpoint_for_pod(pod: ConfigObject | None, address: str, port: int, ready: bool,
                      nodes: Mapping[str, Mapping[str, str]]) -> Endpoint:
    labels = dict(pod.labels) if pod else {}
    return Endpoint(
        address=address,
        port=port,
        labels=labels,
        pod=pod.name if pod else "",
        namespace=pod.namespace if pod else "",
        service_account=_service_account(pod),
        ready=ready,
        locality=pod_locality(pod, nodes) if pod else NO_LOCALITY,
    )


class PodIndex:
    """Pods by (namespace, name) and by IP, to give endpoints their labels; and the labels
    of Nodes by name (`nodes`), to give them their locality."""

    def __init__(self, pods: Iterable[ConfigObject], nodes: Mapping[str, Mapping[str, str]] | None = None):
        self.nodes: Mapping[str, Mapping[str, str]] = nodes or {}
        self.by_name: dict[tuple[str, str], ConfigObject] = {}
        self.by_ip: dict[str, ConfigObject] = {}
        for p in pods:
            self.by_name[(p.namespace, p.name)] = p
            ip = _pod_ip(p)
            if ip:
                self.by_ip.setdefault(ip, p)

    def for_endpoint(self, ep: Mapping[str, Any], namespace: str, address: str) -> ConfigObject | None:
        ref = ep.get("targetRef") or {}
        if ref.get("kind", "Pod") == "Pod" and ref.get("name"):
            pod = self.by_name.get((ref.get("namespace") or namespace, ref["name"]))
            if pod is not None:
                return pod
        return self.by_ip.get(address)


def endpoints_from_slices(svc: Service, slices: list[ConfigObject], pods: PodIndex) -> dict[int, tuple[Endpoint, ...]]:
    """Service port number -> endpoints, from the EndpointSlices of `svc`.
    A slice port is matched to the service port by name, as kube-proxy does."""
    out: dict[int, list[Endpoint]] = {p.port: [] for p in svc.ports}
    for sl in slices:
        body = sl.spec
        if body.get("addressType", "IPv4") not in ("IPv4", "IPv6"):
            continue
        slice_ports = {str(p.get("name") or ""): p.get("port") for p in body.get("ports") or []}
        for sp in svc.ports:
            target = slice_ports.get(sp.name)
            if target is None:
                continue
            for ep in body.get("endpoints") or []:
                cond = ep.get("conditions") or {}
                ready = cond.get("ready", True) is not False
                for addr in ep.get("addresses") or []:
                    pod = pods.for_endpoint(ep, svc.namespace, addr)
                    out[sp.port].append(_endpoint_for_pod(pod, addr, int(target), ready, pods.nodes))
    return {k: tuple(v) for k, v in out.items()}


def endpoints_from_pods(svc: Service, pods: Iterable[ConfigObject],
                        nodes: Mapping[str, Mapping[str, str]] | None = None) -> dict[int, tuple[Endpoint, ...]]:
    """What the endpoints controller would compute for a Service without slices (`nodes`:
    Node name -> labels, for the endpoints' locality)."""
    nodes = nodes or {}
    out: dict[int, list[Endpoint]] = {p.port: [] for p in svc.ports}
    if not svc.selector:  # selector-less Services only get endpoints from slices
        return {k: () for k in out}
    for pod in pods:
        if pod.namespace != svc.namespace or not labels_match(svc.selector, pod.labels):
            continue
        ip = _pod_ip(pod)
        if not ip:
            continue
        ready = _pod_ready(pod)
        for sp in svc.ports:
            port = _target_port_on_pod(sp, pod)
            if port is not None:
                out[sp.port].append(_endpoint_for_pod(pod, ip, port, ready, nodes))
    return {k: tuple(v) for k, v in out.items()}
