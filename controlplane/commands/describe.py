"""`meshd x describe pod <pod>[.<namespace>]`: the configuration that affects a pod, in
the shape of `istioctl x describe pod` (istioctl/pkg/describe/describe.go):

    Pod: <pod>                     revision, ports, warnings and suggestions
    --------------------
    Service: <svc>                 each Service selecting the pod, its ports' protocols,
    DestinationRule: ... for "h"   then per port the DestinationRule (subsets the pod
    VirtualService: ...            matches, TLS mode, policies) and the VirtualServices
    --------------------           routing to it
    Effective PeerAuthentication:  the mTLS mode (and per-port modes) meshd applies,
    Applied PeerAuthentication:    the policies selecting the pod, and (meshd's
    Applied AuthorizationPolicy:   addition) the AuthorizationPolicies in force

Where istioctl reads Kubernetes and the pod's Envoy, this reads meshd's config store
(`--meshd`, its /debug/configz) or YAML files (`-f`), and asks meshd's own model which
DestinationRule and PeerAuthentications apply: the answer is what meshd serves.
`x describe service <svc>` prints the Service part for the service's first pod.
"""
from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TextIO

from .http import DEFAULT_MESHD, FetchError, get, read_token

L0, L1, L2 = "", "   ", "      "
DEPLOYMENT_REQUIREMENTS = "https://istio.io/latest/docs/ops/deployment/application-requirements/"


class DescribeError(Exception):
    pass


@dataclass(frozen=True)
class PodInfo:
    name: str
    namespace: str
    labels: Mapping[str, str]
    annotations: Mapping[str, str]
    containers: tuple[tuple[str, tuple[tuple[int, str, str], ...]], ...]  # (name, ((port, protocol, port name),))
    phase: str
    meshed: bool


def _pod(obj: Any) -> PodInfo:
    body = obj.spec if isinstance(obj.spec, Mapping) else {}
    spec = body.get("spec") or {}
    containers = []
    for c in spec.get("containers") or []:
        ports = tuple((int(p.get("containerPort", 0)), str(p.get("protocol") or "TCP"), str(p.get("name") or ""))
                      for p in c.get("ports") or [])
        containers.append((str(c.get("name", "")), ports))
    names = {c[0] for c in containers}
    labels = dict(obj.labels)
    meshed = "istio-proxy" in names or labels.get("security.istio.io/tlsMode") == "istio"
    return PodInfo(obj.name, obj.namespace, labels, dict(obj.annotations), tuple(containers),
                   str((body.get("status") or {}).get("phase") or "Running"), meshed)


def revision(annotations: Mapping[str, str], labels: Mapping[str, str]) -> str:
    """istio.io/rev, else the revision in the sidecar.istio.io/status annotation."""
    if "istio.io/rev" in annotations:
        return annotations["istio.io/rev"]
    try:
        return str(json.loads(annotations.get("sidecar.istio.io/status", "")).get("revision") or "")
    except (ValueError, AttributeError):
        return ""


class Describer:
    """Prints istioctl's describe sections from a config snapshot and meshd's model of it."""

    def __init__(self, snapshot: Any, mesh: Any, namespace: str, out: TextIO):
        self.snap, self.mesh, self.namespace, self.out = snapshot, mesh, namespace, out

    def kname(self, name: str, namespace: str) -> str:
        return name if namespace == self.namespace else f"{name}.{namespace}"

    def w(self, text: str) -> None:
        self.out.write(text + "\n")

    # --- objects ------------------------------------------------------------------
    def of_kind(self, kind: str) -> list[Any]:
        return sorted(self.snap.of_kind(kind), key=lambda o: (o.namespace, o.name))

    def find_pod(self, name: str, namespace: str) -> PodInfo:
        for o in self.of_kind("Pod"):
            if o.name == name and o.namespace == namespace:
                return _pod(o)
        raise DescribeError(f'pods "{name}" not found')

    def services_selecting(self, pod: PodInfo) -> list[Any]:
        from ..model.services import labels_match

        out = []
        for s in self.mesh.services.values():
            if s.namespace == pod.namespace and s.selector and labels_match(s.selector, pod.labels) \
                    and s.source == "Kubernetes":
                out.append(s)
        return sorted(out, key=lambda s: s.name)

    def pods_of(self, svc: Any) -> list[PodInfo]:
        from ..model.services import labels_match

        return [_pod(o) for o in self.of_kind("Pod")
                if o.namespace == svc.namespace and svc.selector and labels_match(svc.selector, o.labels)]

    # --- sections -----------------------------------------------------------------
    def pod(self, pod: PodInfo) -> None:
        ports = [f"{p}{'' if proto == 'TCP' else '/' + proto} ({cname})"
                 for cname, cports in pod.containers for p, proto, _ in cports]
        self.w(f"Pod: {self.kname(pod.name, pod.namespace)}")
        self.w(f"   Pod Revision: {revision(pod.annotations, pod.labels)}")
        self.w(f"   Pod Ports: {', '.join(ports)}" if ports else "   Pod does not expose ports")
        if pod.phase != "Running":
            self.w(f"   Pod is not Running ({pod.phase})")
            return
        if not pod.meshed:
            self.w(f"WARNING: {self.kname(pod.name, pod.namespace)} is not part of mesh; no Istio sidecar")
            return
        if not any(k in pod.labels for k in ("service.istio.io/canonical-name", "app.kubernetes.io/name", "app")):
            self.w(f"Suggestion: add required service name label for Istio telemetry. See {DEPLOYMENT_REQUIREMENTS}.")
        if not any(k in pod.labels for k in ("service.istio.io/canonical-revision", "app.kubernetes.io/version",
                                             "version")):
            self.w(f"Suggestion: add required service revision label for Istio telemetry. "
                   f"See {DEPLOYMENT_REQUIREMENTS}.")

    def service(self, svc: Any, pods: Sequence[PodInfo]) -> None:
        from ..model.protocol import UDP, of_service_port

        self.w(f"Service: {self.kname(svc.name, svc.namespace)}")
        for sp in svc.ports:
            if sp.protocol.upper() == UDP:
                continue  # not served by Istio
            target = _target_port(sp, pods[0]) if pods else None
            if target is None:
                self.w(f"   no matching port for {sp.target_port!r} in pod {pods[0].name}" if pods else
                       "   no pod")
                continue
            proto = "auto-detect" if not sp.name and not sp.app_protocol else of_service_port(sp)
            self.w(f"   Port: {sp.name} {sp.port}/{proto} targets pod port {target}")
        many = len(svc.ports) > 1
        indent = L1 if many else L0
        labels = [p.labels for p in pods]
        for sp in svc.ports:
            if many:
                self.w(f"{sp.port}:")
            dr = self.mesh.destination_rule(svc.hostname, svc.namespace)
            matching: list[str] = []
            nonmatching: list[str] = []
            if dr is not None:
                matching, nonmatching = _subsets(dr, labels)
                self.destination_rule(indent, dr, matching, nonmatching)
            for vs in self.virtual_services_for(svc):
                self.virtual_service(indent, vs, svc, matching, nonmatching, dr)

    def destination_rule(self, indent: str, dr: Any, matching: list[str], nonmatching: list[str]) -> None:
        spec = _spec(dr)
        self.w(f"{indent}DestinationRule: {self.kname(dr.name, dr.namespace)} for \"{spec.get('host', '')}\"")
        if matching or nonmatching:
            if not matching:
                self.w(f"{indent}{L1}WARNING POD DOES NOT MATCH ANY SUBSETS.  (Non matching subsets "
                       f"{','.join(nonmatching)})")
            self.w(f"{indent}{L1}Matching subsets: {','.join(matching)}")
            if nonmatching:
                self.w(f"{indent}{L2}(Non-matching subsets {','.join(nonmatching)})")
        tp = spec.get("trafficPolicy")
        if not tp:
            self.w(f"{indent}{L1}No Traffic Policy")
            return
        if (tp.get("tls") or {}).get("mode") is not None or "tls" in tp:
            self.w(f"{indent}{L1}Traffic Policy TLS Mode: {(tp.get('tls') or {}).get('mode', 'DISABLE')}")
        short = _short_policies(tp)
        if short:
            self.w(f"{indent}{L1}{short}")
        if tp.get("portLevelSettings"):
            self.w(f"{indent}{L1}Port Level Settings:")
            for ps in tp["portLevelSettings"]:
                self.w(f"    {(ps.get('port') or {}).get('number', 0)}:")
                if "tls" in ps:
                    self.w(f"{indent}{L2}TLS Mode: {(ps.get('tls') or {}).get('mode', 'DISABLE')}")
                short = _short_policies(ps)
                if short:
                    self.w(f"{indent}{L2}{short}")

    def virtual_services_for(self, svc: Any) -> list[Any]:
        """VirtualServices with a route to the service (any gateway: traffic through an
        ingress gateway reaches the pod as well)."""
        out = []
        for vs in self.of_kind("VirtualService"):
            spec = _spec(vs)
            dests = [d.get("destination") or {} for r in (spec.get("http") or []) + (spec.get("tcp") or [])
                     + (spec.get("tls") or []) for d in r.get("route") or []]
            if any(_fqdn(d.get("host", ""), vs.namespace) == svc.hostname for d in dests):
                out.append(vs)
        return out

    def virtual_service(self, indent: str, vs: Any, svc: Any, matching: list[str], nonmatching: list[str],
                        dr: Any) -> None:
        spec = _spec(vs)
        self.w(f"{indent}VirtualService: {self.kname(vs.name, vs.namespace)}")
        http, tcp = spec.get("http") or [], spec.get("tcp") or []
        matches = facts = 0
        mismatch: list[str] = []
        for route in http:
            hit, new = _http_route_facts(vs, route, svc, matching, nonmatching, dr)
            if hit:
                matches += 1
                for f in new:
                    self.w(f"{indent}{L1}{f}")
                    facts += 1
            else:
                mismatch += new
        for route in tcp:
            if any(_fqdn((d.get("destination") or {}).get("host", ""), vs.namespace) == svc.hostname
                   for d in route.get("route") or []):
                matches += 1
                for m in route.get("match") or []:
                    self.w(f"{indent}{L1}{_compact(m)}")
                    facts += 1
        if matches == 0:
            if http:
                self.w(f"{indent}{L1}WARNING: No destinations match pod subsets (checked {len(http)} HTTP routes)")
            if tcp:
                self.w(f"{indent}{L1}WARNING: No destinations match pod subsets (checked {len(tcp)} TCP routes)")
            for m in mismatch:
                self.w(f"{indent}{L2}{m}")
            return
        possible = len(http) + len(spec.get("tls") or []) + len(tcp)
        if matches < possible:
            self.w(f"{indent}{L1}{possible - matches} additional destination(s) that will not reach this pod")
            if facts == 0:
                for m in mismatch:
                    self.w(f"{indent}{L2}{m}")
            return
        if facts == 0:
            if http:
                self.w(f"{indent}{L1}{len(http)} HTTP route(s)")
            if tcp:
                self.w(f"{indent}{L1}{len(tcp)} TCP route(s)")

    def peer_authentication(self, pod: PodInfo) -> None:
        from ..model.services import labels_match

        root = self.mesh.mesh_config.root_namespace if hasattr(self.mesh, "mesh_config") else "istio-system"
        policy = self.mesh.mtls_policy(pod.namespace, pod.labels)
        self.w("Effective PeerAuthentication:")
        self.w(f"   Workload mTLS mode: {policy.mode}")
        if policy.port_modes:
            self.w("   Port Level mTLS mode:")
            for port, mode in sorted(policy.port_modes.items()):
                self.w(f"      {port}: {mode}")
        applied = []
        for ns in dict.fromkeys((root, pod.namespace)):
            for pa in self.of_kind("PeerAuthentication"):
                sel = ((_spec(pa).get("selector") or {}).get("matchLabels")) or {}
                if pa.namespace == ns and labels_match(sel, pod.labels):
                    applied.append(f"{pa.name}.{pa.namespace}")
        if applied:
            self.w("Applied PeerAuthentication:")
            self.w(f"   {', '.join(applied)}")

    def authorization(self, pod: PodInfo) -> None:
        """meshd's addition: the AuthorizationPolicies in force for the pod's workload."""
        from ..model.proxy import Proxy
        from ..model.security import authz_policies_for

        proxy = Proxy(id=f"sidecar~~{pod.name}.{pod.namespace}~{pod.namespace}.svc.cluster.local", type="sidecar",
                      ip="", pod=pod.name, namespace=pod.namespace, labels=dict(pod.labels))
        chosen = authz_policies_for(self.mesh, proxy).all()
        if chosen:
            self.w("Applied AuthorizationPolicy:")
            self.w("   " + ", ".join(f"{p.name}.{p.namespace} ({p.action}{', dry run' if p.dry_run else ''})"
                                     for p in chosen))

    def ingress(self, services: Sequence[Any]) -> None:
        from ..model.services import labels_match

        gw_pods = [o for o in self.of_kind("Pod") if o.labels.get("istio") == "ingressgateway"]
        if not gw_pods:
            self.w("Skipping Gateway information (no ingress gateway pods)")
            return
        gateways = {(g.namespace, g.name): g for g in self.of_kind("Gateway")}
        for svc in services:
            for vs in self.virtual_services_for(svc):
                for gname in _spec(vs).get("gateways") or []:
                    if gname == "mesh":
                        continue
                    gns, _, name = gname.rpartition("/")
                    gw = gateways.get((gns or vs.namespace, name))
                    if gw is None:  # no gateway serves it (`meshd analyze` reports the reference)
                        continue
                    sel = _spec(gw).get("selector") or {}
                    if any(labels_match(sel, p.labels) for p in gw_pods):
                        self.w("--------------------")
                        self.w("Exposed on Ingress Gateway http://unknown")
                        self.virtual_service(L0, vs, svc, [], [], None)


def _spec(o: Any) -> Mapping[str, Any]:
    body = o.spec if isinstance(o.spec, Mapping) else {}
    inner = body.get("spec")
    return inner if isinstance(inner, Mapping) else body


def _fqdn(host: str, namespace: str) -> str:
    if not host or host.startswith("*") or "." in host and host.endswith(".svc.cluster.local"):
        return host
    parts = host.split(".")
    if len(parts) == 1:
        return f"{host}.{namespace}.svc.cluster.local"
    if len(parts) == 2:
        return f"{host}.svc.cluster.local"
    return host


def _target_port(sp: Any, pod: PodInfo) -> int | None:
    t = sp.target_port
    if t is None or t == "":
        return int(sp.port)
    if isinstance(t, int) or str(t).isdigit():
        return int(t)
    for _c, ports in pod.containers:
        for number, _proto, name in ports:
            if name == t:
                return number
    return None


def _subsets(dr: Any, pods_labels: Sequence[Mapping[str, str]]) -> tuple[list[str], list[str]]:
    from ..model.services import labels_match

    matching, nonmatching = [], []
    for s in _spec(dr).get("subsets") or []:
        if any(labels_match(s.get("labels") or {}, labels) for labels in pods_labels):
            matching.append(s.get("name", ""))
        else:
            nonmatching.append(s.get("name", ""))
    return matching, nonmatching


def _short_policies(tp: Mapping[str, Any]) -> str:
    extra = [n for k, n in (("loadBalancer", "load balancer"), ("connectionPool", "connection pool"),
                            ("outlierDetection", "outlier detection")) if tp.get(k) is not None]
    return f"Policies: {'/'.join(extra)}" if extra else ""


def _string_match(m: Mapping[str, Any] | None) -> str:
    if not m:
        return ""
    if "exact" in m:
        return str(m["exact"])
    if "prefix" in m:
        return f"{m['prefix']}*"
    return _compact(m)


def _compact(m: Any) -> str:
    return json.dumps(m, separators=(",", ":"), sort_keys=True)


def _render_match(m: Mapping[str, Any]) -> str:
    out = "Match: "
    if m.get("uri"):
        out += _string_match(m["uri"])
        if m.get("ignoreUriCase"):
            out += " uncased"
    if m.get("headers"):
        out += " when headers are " + "; ".join(f"{k}={_string_match(v)}" for k, v in sorted(m["headers"].items()))
    return out.strip()


def _http_route_facts(vs: Any, route: Mapping[str, Any], svc: Any, matching: list[str], nonmatching: list[str],
                      dr: Any) -> tuple[bool, list[str]]:
    facts: list[str] = []
    notes: list[str] = []
    hit = False
    for d in route.get("route") or []:
        dest = d.get("destination") or {}
        host, subset, weight = dest.get("host", ""), dest.get("subset", ""), int(d.get("weight") or 0)
        if _fqdn(host, vs.namespace) == svc.hostname:
            if subset:
                if subset in nonmatching:
                    notes.append(f"Route to non-matching subset {subset} for "
                                 f"({', '.join(_render_match(m) for m in route.get('match') or []) or 'everything'})")
                    continue
                if subset not in matching:
                    notes.append(f"Warning: Route to subset {subset} but NO DESTINATION RULE defining subsets!"
                                 if dr is None else
                                 f"Warning: Route to UNKNOWN subset {subset}; check DestinationRule "
                                 f"{dr.name}.{dr.namespace}")
                    continue
            hit = True
            if weight > 0:
                fact = f'Route to host "{host}"' + (f' subset "{subset}"' if subset else "")
                facts.append(f"{fact} with weight {weight}%")
        elif not subset:
            facts.append(f'Route to host "{host}" with weight {weight}%')
        else:
            facts.append(f"Route to {host} with invalid config")
    if hit:
        conds = ([f"Fault injection {_compact(route['fault'])}"] if route.get("fault") else []) + \
            [_render_match(m) for m in route.get("match") or []]
        if conds:
            facts.append(", ".join(conds))
    if not hit and notes:
        facts += notes
    return hit, facts


# --- sources ------------------------------------------------------------------------


def load(args: argparse.Namespace) -> tuple[Any, Any]:
    """(config snapshot, mesh snapshot) from files (-f) or a running meshd (--meshd)."""
    from ..analysis.resources import from_configz, load_paths
    from ..config.objects import ConfigObject, Origin, Rejection
    from ..config.parse import parse_document
    from ..config.store import ConfigStore
    from ..model.mesh import build_mesh

    if args.file:
        resources, errors = load_paths(args.file)
        if errors:
            raise DescribeError("; ".join(str(e) for e in errors))
        where = "files"
    else:
        configz = json.loads(get(args.meshd, "/debug/configz", {"content": "true"}, token=read_token(args.token)))
        resources, where = from_configz(configz), args.meshd
    objects = []
    for i, r in enumerate(resources):
        parsed = parse_document(dict(r.doc), Origin("file", str(r.location or where), i))
        if isinstance(parsed, Rejection):
            print(f"Warning: {parsed.message()}", file=sys.stderr)
        elif isinstance(parsed, ConfigObject):
            objects.append(parsed)
    store = ConfigStore()
    store.replace_location("describe", objects)
    snap = store.snapshot()
    root = args.istio_namespace or "istio-system"
    return snap, build_mesh(snap, root)


def run(args: argparse.Namespace) -> int:
    if not args.name:
        print(f"Error: expecting {args.resource} name", file=sys.stderr)
        return 1
    name, _, ns = args.name.partition(".")
    ns = ns or args.namespace or "default"
    try:
        snap, mesh = load(args)
        d = Describer(snap, mesh, args.namespace or "default", sys.stdout)
        if args.resource == "pod":
            pod = d.find_pod(name, ns)
            d.pod(pod)
            services = d.services_selecting(pod)
            if not services and not args.ignore_unmeshed:
                d.w(f"Warning: No Kubernetes Services select pod {d.kname(pod.name, pod.namespace)} "
                    "(see https://istio.io/docs/setup/kubernetes/additional-setup/requirements/ )")
            d.w("--------------------")
            for i, svc in enumerate(services):
                if i:
                    d.w("--------------------")
                d.service(svc, [pod])
            d.w("--------------------")
            d.peer_authentication(pod)
            d.authorization(pod)
            d.ingress(services)
        else:
            host = f"{name}.{ns}.svc.cluster.local"
            svc = mesh.services.get(host)
            if svc is None:
                raise DescribeError(f'services "{name}" not found')
            pods = [p for p in d.pods_of(svc) if p.meshed]
            if not pods:
                all_pods = d.pods_of(svc)
                if not all_pods:
                    d.w(f'Service "{d.kname(svc.name, svc.namespace)}" has no pods.')
                else:
                    d.w(f'Service "{d.kname(svc.name, svc.namespace)}" has no Istio pods.  '
                        f"({len(all_pods)} pods in service).")
                return 0
            d.service(svc, pods)
            d.ingress([svc])
    except (DescribeError, FetchError, OSError, ValueError) as e:
        print(f"Error: {e}", file=sys.stderr)
        return 1
    return 0


def register(xsub: argparse._SubParsersAction) -> None:
    """`describe` under `meshd experimental|x`."""
    p = xsub.add_parser("describe", aliases=["des"], help="the configuration that affects a pod or service "
                        "(istioctl x describe)", formatter_class=argparse.RawDescriptionHelpFormatter,
                        description=__doc__)
    p.add_argument("resource", choices=["pod", "po", "service", "svc"])
    p.add_argument("name", nargs="?", help="POD[.NAMESPACE] or SERVICE[.NAMESPACE]")
    p.add_argument("--namespace", "-n", help="the namespace (default: default)")
    p.add_argument("--istio-namespace", "-i", default="istio-system", help="the root namespace (default %(default)s)")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--meshd", default=DEFAULT_MESHD, help="meshd's monitoring address (default %(default)s)")
    src.add_argument("--file", "-f", action="append", help="read the configuration from YAML files or directories")
    p.add_argument("--token", help="bearer token for meshd's /debug (or @FILE); default $MESHD_TOKEN")
    p.add_argument("--ignoreUnmeshed", dest="ignore_unmeshed", action="store_true",
                   help="suppress warnings for unmeshed pods")

    def normalized(args: argparse.Namespace) -> int:
        args.resource = {"po": "pod", "svc": "service"}.get(args.resource, args.resource)
        return run(args)

    p.set_defaults(func=normalized)
