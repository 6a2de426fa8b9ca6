"""Who called whom, from the proxies' reports and the mesh snapshot (pure).

Two reporters, as Istio's telemetry has them:
- source: a proxy's outbound cluster `outbound|port|subset|host` is a call from the proxy's
  workload to the service `host`; its TLS handshakes against its connections say whether
  the calls were mutual TLS (meshd's clusters only ever originate Istio mTLS);
- destination: a sidecar's inbound port counts its connections and which of them were TLS;
  the plaintext ones came from outside the mesh (a meshed client would have used mTLS
  unless a policy disabled it), and connections no inbound chain accepted (plaintext to a
  STRICT port) are calls that were refused. Their source is unknown: Envoy's stats do not
  say who the peer was.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from ..model.proxy import Proxy
from .counters import Traffic
from .store import ProxyTraffic

UNKNOWN = "unknown"
MUTUAL_TLS, NONE, MIXED, REFUSED = "mutual_tls", "none", "mixed", "refused"


@dataclass(frozen=True)
class Workload:
    name: str
    namespace: str
    principal: str = UNKNOWN

    @property
    def known(self) -> bool:
        return self.name != UNKNOWN


OUTSIDE = Workload(UNKNOWN, UNKNOWN)


@dataclass(frozen=True)
class Edge:
    reporter: str  # "source" | "destination"
    source: Workload
    destination: Workload  # OUTSIDE when the service has no single workload
    service: str  # destination service host ("" for inbound reports)
    port: int
    security: str  # mutual_tls | none | mixed | refused | unknown
    totals: Traffic
    window: Traffic
    window_seconds: float
    recent: bool  # traffic within the store's `recent` seconds
    by: Proxy | None = None  # the reporting proxy (its Telemetry metrics settings apply)

    def rate(self) -> float:
        """Requests (or, without requests, connections) per second over the last window."""
        if not self.window_seconds:
            return 0.0
        n = self.window.requests or self.window.connections
        return n / self.window_seconds

    def error_rate(self) -> float:
        """Share of the window's requests answered 5xx."""
        return self.window.count("5xx") / self.window.requests if self.window.requests else 0.0


def workload_name(labels: Mapping[str, str], pod: str, metadata: Mapping[str, Any] | None = None) -> str:
    """Istio's workload name as far as meshd can tell: the node's WORKLOAD_NAME, the app
    label, else the pod name without its replica suffix."""
    md = metadata or {}
    name = md.get("WORKLOAD_NAME") or labels.get("app") or labels.get("app.kubernetes.io/name")
    return str(name) if name else pod.rsplit("-", 1)[0] if "-" in pod else pod


def proxy_workload(p: ProxyTraffic) -> Workload:
    return Workload(workload_name(p.proxy.labels, p.proxy.pod, p.proxy.metadata), p.proxy.namespace, p.principal)


def parse_outbound(cluster: str) -> tuple[int, str, str] | None:
    """`outbound|80|v1|h.ns.svc.cluster.local` -> (80, "v1", host)."""
    parts = cluster.split("|")
    if len(parts) != 4 or parts[0] != "outbound" or not parts[1].isdigit():
        return None
    return int(parts[1]), parts[2], parts[3]


def service_workloads(mesh: Any, host: str, port: int, trust_domain: str = "cluster.local") -> tuple[Workload, ...]:
    """The workloads behind a service port (endpoints with a pod), each once."""
    if mesh is None:
        return ()
    seen: dict[tuple[str, str], Workload] = {}
    for e in mesh.endpoints.get((host, port), ()):
        if not e.pod and not e.labels:
            continue
        name = workload_name(e.labels, e.pod)
        ns = e.namespace or (host.split(".")[1] if "." in host else "")
        principal = f"spiffe://{trust_domain}/ns/{ns}/sa/{e.service_account}" if e.service_account else UNKNOWN
        seen.setdefault((ns, name), Workload(name, ns, principal))
    return tuple(seen[k] for k in sorted(seen))


def security(t: Traffic) -> str:
    if t.tls < 0 or not t.connections:
        return UNKNOWN
    if t.tls >= t.connections:
        return MUTUAL_TLS
    return NONE if t.tls == 0 else MIXED


def _plain(t: Traffic) -> Traffic:
    n = t.connections - t.tls
    return Traffic(requests=0, by_class=None, connections=max(n, 0), tls=0)


def edges(traffic: Iterable[ProxyTraffic], mesh: Any, recent: Any = None,
          trust_domain: str = "cluster.local") -> tuple[Edge, ...]:
    """Every call the reports show. `recent(p, key)` says whether a counter group grew
    lately (TelemetryStore.grew_recently); None: everything counts as recent."""
    out: list[Edge] = []
    behind_cache: dict[tuple[str, int], tuple[Workload, ...]] = {}  # thousands of proxies call the same services

    def is_recent(p: ProxyTraffic, key: str) -> bool:
        return True if recent is None else bool(recent(p, key))

    for p in traffic:
        me = proxy_workload(p)
        for cluster, total in p.totals.outbound.items():
            parsed = parse_outbound(cluster)
            if parsed is None or not (total.requests or total.connections):
                continue
            port, _subset, host = parsed
            behind = behind_cache.get((host, port))
            if behind is None:
                behind = behind_cache[(host, port)] = service_workloads(mesh, host, port, trust_domain)
            dest = behind[0] if len(behind) == 1 else OUTSIDE
            window = p.window.outbound.get(cluster, Traffic())
            sec = security(window) if window.connections else security(total)
            out.append(Edge("source", me, dest, host, port, sec, total, window, p.window_seconds,
                            is_recent(p, f"out|{cluster}"), p.proxy))
        if p.proxy.type != "sidecar":
            continue
        for port, total in p.totals.inbound.items():
            if total.tls < 0 or total.connections <= total.tls:
                continue
            window = p.window.inbound.get(port, Traffic())
            out.append(Edge("destination", OUTSIDE, me, "", port, NONE, _plain(total),
                            _plain(window) if window.tls >= 0 else Traffic(), p.window_seconds,
                            is_recent(p, f"plain|{port}"), p.proxy))
        if p.totals.refused:
            out.append(Edge("destination", OUTSIDE, me, "", 0, REFUSED, Traffic(connections=p.totals.refused),
                            Traffic(connections=p.window.refused), p.window_seconds, is_recent(p, "refused"),
                            p.proxy))
    return tuple(out)
