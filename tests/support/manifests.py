"""Kubernetes and Istio objects for tests, as small functions: each returns the object (a
dict, as the API server holds it and `kubectl get -o yaml` shows it), and `documents()`
turns objects into the YAML text of a config file. For what many tests write the same
way; a test that is about one field of an object writes that object out itself.

    write(cfg / "gateway.yaml", documents(ingress_gateway_service(8080),
                                          gateway("coolstore-gateway", "istioinaction", ["webapp.example.com"])))
    kube.apply(virtual_service("webapp", ns, ["webapp.example.com"], "webapp", gateways=["coolstore-gateway"]))
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import yaml

INGRESS = {"istio": "ingressgateway"}  # the ingress gateway's pod labels, as Istio's charts set them
MESHED = {"security.istio.io/tlsMode": "istio"}  # what the sidecar injector adds to a meshed pod's labels
NETWORKING = "networking.istio.io"
SECURITY = "security.istio.io"


def documents(*objects: Mapping[str, Any] | str) -> str:
    """The YAML text of a config file holding `objects` (dicts, or YAML text kept as is)."""
    parts = [o.strip("\n") if isinstance(o, str) else
             yaml.safe_dump(dict(o), sort_keys=False, default_flow_style=None, width=120).rstrip("\n")
             for o in objects]
    return "\n---\n".join(parts) + "\n"


def _meta(name: str, namespace: str | None = None, labels: Mapping[str, str] | None = None) -> dict:
    md: dict[str, Any] = {"name": name}
    if namespace is not None:
        md["namespace"] = namespace
    if labels:
        md["labels"] = dict(labels)
    return md


# --- Kubernetes ------------------------------------------------------------------------------


def namespace(name: str, **labels: str) -> dict:
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": _meta(name, labels=labels)}


def service(name: str, namespace: str, ports: Sequence[tuple[str, int, int | str | None]], *,
            selector: Mapping[str, str] | None = None, cluster_ip: str | None = None) -> dict:
    """A Service selecting `app: <name>` (unless `selector`), ports as (name, port,
    targetPort or None)."""
    spec: dict[str, Any] = {}
    if cluster_ip:
        spec["clusterIP"] = cluster_ip
    spec["selector"] = dict(selector) if selector is not None else {"app": name}
    spec["ports"] = [{"name": n, "port": p, **({"targetPort": t} if t is not None else {})} for n, p, t in ports]
    return {"apiVersion": "v1", "kind": "Service", "metadata": _meta(name, namespace), "spec": spec}


def ingress_gateway_service(target_port: int, *, namespace: str = "istio-system",
                            name: str = "istio-ingressgateway") -> dict:
    """The ingress gateway's Service: port 80 (http2) to the gateway Envoy's `target_port`."""
    return service(name, namespace, [("http2", 80, target_port)], selector=INGRESS)


def pod(name: str, namespace: str, ip: str, labels: Mapping[str, str], *, service_account: str | None = None,
        node: str | None = None, ready: bool | None = None) -> dict:
    """A Pod as the API server holds it once scheduled: its IP in the status (and a Ready
    condition when `ready` says)."""
    spec: dict[str, Any] = {}
    if service_account:
        spec["serviceAccountName"] = service_account
    if node:
        spec["nodeName"] = node
    container = name.rsplit("-", 1)[0]  # webapp-v1 -> webapp
    spec["containers"] = [{"name": container, "image": container}]
    status: dict[str, Any] = {"podIP": ip}
    if ready is not None:
        status = {"phase": "Running", "podIP": ip,
                  "conditions": [{"type": "Ready", "status": "True" if ready else "False"}]}
    return {"apiVersion": "v1", "kind": "Pod", "metadata": _meta(name, namespace, labels), "spec": spec,
            "status": status}


def endpoint_slice(name: str, namespace: str, service_name: str, port: int, addresses: Iterable[str], *,
                   port_name: str = "http", pods: Iterable[str] | None = None) -> dict:
    """An EndpointSlice of `service_name`: one ready endpoint per address (with its Pod's
    targetRef when `pods` names them)."""
    addresses = list(addresses)
    refs = list(pods) if pods is not None else [None] * len(addresses)
    return {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": _meta(name, namespace, {"kubernetes.io/service-name": service_name}),
            "addressType": "IPv4", "ports": [{"name": port_name, "port": port, "protocol": "TCP"}],
            "endpoints": [{"addresses": [a], "conditions": {"ready": True},
                           **({"targetRef": {"kind": "Pod", "name": r, "namespace": namespace}} if r else {})}
                          for a, r in zip(addresses, refs, strict=True)]}


# --- Istio networking ------------------------------------------------------------------------


def gateway_server(hosts: Sequence[str], port: int = 80, protocol: str = "HTTP", port_name: str = "http",
                   tls: Mapping[str, Any] | None = None) -> dict:
    """One server of a Gateway: `hosts` on `port`, with its `tls` settings."""
    server: dict[str, Any] = {"port": {"number": port, "name": port_name, "protocol": protocol}, "hosts": list(hosts)}
    if tls:
        server["tls"] = dict(tls)
    return server


def gateway(name: str, namespace: str, hosts: Sequence[str], *, port: int = 80, protocol: str = "HTTP",
            port_name: str = "http", tls: Mapping[str, Any] | None = None,
            selector: Mapping[str, str] = INGRESS, version: str = "v1",
            more_servers: Sequence[Mapping[str, Any]] = ()) -> dict:
    """A Gateway with one server (`hosts` on `port`), then `more_servers` (see
    gateway_server), on the pods `selector` picks."""
    servers = [gateway_server(hosts, port, protocol, port_name, tls), *(dict(s) for s in more_servers)]
    return {"apiVersion": f"{NETWORKING}/{version}", "kind": "Gateway", "metadata": _meta(name, namespace),
            "spec": {"selector": dict(selector), "servers": servers}}


def destination(host: str, *, port: int | None = None, subset: str | None = None) -> dict:
    out: dict[str, Any] = {"host": host}
    if port is not None:
        out["port"] = {"number": port}
    if subset:
        out["subset"] = subset
    return out


def virtual_service(name: str, namespace: str, hosts: Sequence[str], to: str | Sequence[Mapping[str, Any]], *,
                    gateways: Sequence[str] = (), port: int | None = None, subset: str | None = None,
                    version: str = "v1") -> dict:
    """A VirtualService with one HTTP route: to the host `to` (its `port`, `subset`), or
    to the weighted destinations `to` lists ({"destination": ..., "weight": ...})."""
    route = ([{"destination": destination(to, port=port, subset=subset)}] if isinstance(to, str)
             else [dict(r) for r in to])
    spec: dict[str, Any] = {"hosts": list(hosts)}
    if gateways:
        spec["gateways"] = list(gateways)
    spec["http"] = [{"route": route}]
    return {"apiVersion": f"{NETWORKING}/{version}", "kind": "VirtualService", "metadata": _meta(name, namespace),
            "spec": spec}


def destination_rule(name: str, namespace: str, host: str, *, subsets: Mapping[str, Mapping[str, str]] | None = None,
                     traffic_policy: Mapping[str, Any] | None = None) -> dict:
    """A DestinationRule for `host`: subsets by name -> labels, and a traffic policy."""
    spec: dict[str, Any] = {"host": host}
    if traffic_policy:
        spec["trafficPolicy"] = dict(traffic_policy)
    if subsets:
        spec["subsets"] = [{"name": n, "labels": dict(labels)} for n, labels in subsets.items()]
    return {"apiVersion": f"{NETWORKING}/v1", "kind": "DestinationRule", "metadata": _meta(name, namespace),
            "spec": spec}


def service_entry(name: str, namespace: str, hosts: Sequence[str], ports: Sequence[tuple[int, str, str, int | None]],
                  *, resolution: str, location: str = "MESH_EXTERNAL", addresses: Sequence[str] = (),
                  endpoints: Sequence[str] = (), subject_alt_names: Sequence[str] = (),
                  workload_selector: Mapping[str, str] | None = None) -> dict:
    """A ServiceEntry: ports as (number, name, protocol, targetPort or None), endpoints by
    address, or the workloads `workload_selector` picks."""
    spec: dict[str, Any] = {"hosts": list(hosts), "location": location, "resolution": resolution}
    if addresses:
        spec["addresses"] = list(addresses)
    spec["ports"] = [{"number": n, "name": pn, "protocol": proto, **({"targetPort": t} if t is not None else {})}
                     for n, pn, proto, t in ports]
    if endpoints:
        spec["endpoints"] = [{"address": a} for a in endpoints]
    if subject_alt_names:
        spec["subjectAltNames"] = list(subject_alt_names)
    if workload_selector:
        spec["workloadSelector"] = {"labels": dict(workload_selector)}
    return {"apiVersion": f"{NETWORKING}/v1", "kind": "ServiceEntry", "metadata": _meta(name, namespace),
            "spec": spec}


# --- Istio security --------------------------------------------------------------------------


def peer_authentication(name: str, namespace: str, mode: str | None, *, selector: Mapping[str, str] | None = None,
                        ports: Mapping[int, str] | None = None) -> dict:
    """A PeerAuthentication: `mode` for the namespace (or the pods `selector` picks), and
    per-port modes."""
    spec: dict[str, Any] = {}
    if selector:
        spec["selector"] = {"matchLabels": dict(selector)}
    if mode is not None:
        spec["mtls"] = {"mode": mode}
    if ports:
        spec["portLevelMtls"] = {p: {"mode": m} for p, m in ports.items()}
    return {"apiVersion": f"{SECURITY}/v1", "kind": "PeerAuthentication", "metadata": _meta(name, namespace),
            "spec": spec}


def authorization_policy(name: str, namespace: str, *, action: str | None = None,
                         selector: Mapping[str, str] | None = None, rules: Sequence[Mapping[str, Any]] | None = None,
                         provider: str | None = None) -> dict:
    """An AuthorizationPolicy (ALLOW unless `action`): `rules` as Istio writes them;
    without rules an ALLOW policy allows nothing."""
    spec: dict[str, Any] = {}
    if selector:
        spec["selector"] = {"matchLabels": dict(selector)}
    if action:
        spec["action"] = action
    if provider:
        spec["provider"] = {"name": provider}
    if rules is not None:
        spec["rules"] = [dict(r) for r in rules]
    return {"apiVersion": f"{SECURITY}/v1", "kind": "AuthorizationPolicy", "metadata": _meta(name, namespace),
            "spec": spec}
