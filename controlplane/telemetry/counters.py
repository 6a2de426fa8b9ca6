"""One metrics report of an Envoy -> the counters meshd keeps (pure).

Envoy's `envoy.stat_sinks.metrics_service` sends every stat at every flush (a sidecar with
a few clusters: about 200 families, 20 KB). meshd reads only these, by their full Envoy
names (the bootstrap sets `emit_tags_as_labels: false`: Envoy's default tag extractors cut
Istio's cluster names at their first dot, `outbound|80||up.ns.svc.cluster.local` becoming
cluster `outbound|80||up`, so the full name is the one that can be read back):

| stat | what |
|---|---|
| `cluster.outbound|P|S|H.upstream_rq_total`, `.upstream_rq_Nxx` | requests sent to a service, by class |
| `cluster.outbound|P|S|H.upstream_cx_total` | connections opened to it |
| `cluster.outbound|P|S|H[.tlsMode-istio].ssl.handshake` | ... of which TLS (mTLS: meshd's clusters) |
| `http.inbound_0.0.0.0_P.downstream_rq_total`, `_Nxx` | requests received on workload port P |
| `http.inbound_0.0.0.0_P.downstream_cx_total`, `downstream_cx_ssl_total` | connections, of which TLS |
| `cluster.inbound|P||.upstream_cx_total` | connections to the app on port P (TCP ports too) |
| `listener.0.0.0.0_15006.no_filter_chain_match` | inbound connections no chain accepted (plaintext under STRICT) |

Everything else is skipped by name before its samples are read.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

CLASSES = ("1xx", "2xx", "3xx", "4xx", "5xx")
COUNTER = 0  # io.prometheus.client.MetricType.COUNTER
INBOUND_HCM = "http.inbound_0.0.0.0_"
VIRTUAL_INBOUND_REFUSED = "listener.0.0.0.0_15006.no_filter_chain_match"
_CLUSTER_STATS = {"upstream_rq_total": "requests", "upstream_cx_total": "connections",
                  **{f"upstream_rq_{c}": c for c in CLASSES}}
_HCM_STATS = {"downstream_rq_total": "requests", "downstream_cx_total": "connections",
              "downstream_cx_ssl_total": "tls", **{f"downstream_rq_{c}": c for c in CLASSES}}
_SSL_SUFFIXES = (".tlsMode-istio.ssl.handshake", ".ssl.handshake")
_STR_PREFIXES = ("cluster.outbound|", "cluster.inbound|", INBOUND_HCM, VIRTUAL_INBOUND_REFUSED)


@dataclass(frozen=True)
class Traffic:
    """Cumulative counters of one outbound cluster or one inbound port."""

    requests: int = 0
    by_class: Mapping[str, int] | None = None  # "2xx" -> count (classes seen only)
    connections: int = 0
    tls: int = 0  # connections that were TLS (handshakes)

    def count(self, cls: str) -> int:
        return (self.by_class or {}).get(cls, 0)

    def minus(self, older: Traffic | None) -> Traffic:
        """The increase since `older` (a counter that went down: Envoy restarted, so all of it)."""
        if older is None or self.requests < older.requests or self.connections < older.connections:
            return self
        classes = {c: self.count(c) - older.count(c) for c in (self.by_class or {})}
        return Traffic(self.requests - older.requests, {c: n for c, n in classes.items() if n},
                       self.connections - older.connections, max(0, self.tls - older.tls))


@dataclass(frozen=True)
class ProxyCounters:
    """What meshd keeps of one report. `truncated`: clusters or ports over the cap were
    dropped (the report names how many)."""

    outbound: Mapping[str, Traffic]  # by cluster name (outbound|port|subset|host)
    inbound: Mapping[int, Traffic]  # by workload port
    refused: int = 0  # virtualInbound connections no filter chain accepted
    truncated: int = 0


EMPTY = ProxyCounters({}, {})


def _outbound_split(rest: str) -> tuple[str, str] | None:
    """`outbound|80||h.ns.svc.cluster.local.upstream_rq_2xx` -> (cluster, stat key)."""
    for suffix in _SSL_SUFFIXES:
        if rest.endswith(suffix):
            return rest[: -len(suffix)], "tls"
    cluster, _, stat = rest.rpartition(".")
    key = _CLUSTER_STATS.get(stat)
    return (cluster, key) if key is not None and cluster else None


_PREFIXES = tuple(p.encode() for p in _STR_PREFIXES)
# The last dot-separated part of every name read: most families are rejected by it alone.
_LAST = frozenset(stat.encode() for stat in (*_CLUSTER_STATS, *_HCM_STATS, "handshake", "no_filter_chain_match"))


def _name_span(raw: bytes) -> tuple[int, int] | None:
    """Where a serialized MetricFamily's name is, when it comes first (field 1, as Envoy
    writes it); None otherwise (the family is then parsed in full)."""
    if len(raw) < 2 or raw[0] != 0x0A:
        return None
    n, i = raw[1], 2
    if n & 0x80:  # a two-byte length: names of 128 to 16383 bytes
        if len(raw) < 3 or raw[2] & 0x80:
            return None
        n, i = (n & 0x7F) | (raw[2] << 7), 3
    return i, i + n


def report_counters(report: bytes, max_clusters: int = 256) -> ProxyCounters:
    """The counters of a serialized StreamMetricsMessage."""
    from .._gen.meshd.telemetry.v1.metrics_sink_pb2 import StreamMetricsMessage

    return read_counters(StreamMetricsMessage.FromString(report).envoy_metrics, max_clusters)


def read_counters(families: Iterable[bytes], max_clusters: int = 256) -> ProxyCounters:
    """The counters meshd keeps from a report's metric families (each a serialized
    io.prometheus.client.MetricFamily). A family whose name meshd does not read is skipped
    by looking at its bytes; the others are parsed."""
    from .._gen.meshd.telemetry.v1.metrics_sink_pb2 import MetricFamily

    def counters() -> Iterable[tuple[str, int]]:
        for raw in families:
            span = _name_span(raw)
            if span is not None:
                a, b = span
                if raw[raw.rfind(b".", a, b) + 1:b] not in _LAST or not raw.startswith(_PREFIXES, a, b):
                    continue
            fam = MetricFamily.FromString(raw)
            if fam.type == COUNTER and fam.name.startswith(_STR_PREFIXES):
                yield fam.name, int(sum(m.counter.value for m in fam.metric))

    return _collect(counters(), max_clusters)


def _collect(counters: Iterable[tuple[str, int]], max_clusters: int) -> ProxyCounters:
    """(full stat name, value) pairs -> what meshd keeps. At most `max_clusters` outbound
    clusters and as many inbound ports (the first to arrive); the rest are counted."""
    out: dict[str, dict[str, int]] = {}
    inb: dict[int, dict[str, int]] = {}
    inbound_cx: dict[int, int] = {}
    refused = 0
    dropped: set[str] = set()
    for name, value in counters:
        if name.startswith("cluster.outbound|"):
            split = _outbound_split(name[8:])
            if split is None:
                continue
            cluster, key = split
            row = out.get(cluster)
            if row is None:
                if len(out) >= max_clusters:
                    dropped.add(cluster)
                    continue
                row = out[cluster] = {}
            row[key] = row.get(key, 0) + value
        elif name.startswith(INBOUND_HCM):
            port_text, _, stat = name[len(INBOUND_HCM):].partition(".")
            hcm_key = _HCM_STATS.get(stat)
            if hcm_key is None or not port_text.isdigit():
                continue
            port = int(port_text)
            if port not in inb and len(inb) >= max_clusters:
                dropped.add(f"port {port}")
                continue
            inb.setdefault(port, {})[hcm_key] = value
        elif name.startswith("cluster.inbound|") and name.endswith("||.upstream_cx_total"):
            port_text = name[len("cluster.inbound|"):-len("||.upstream_cx_total")]
            if port_text.isdigit():
                inbound_cx[int(port_text)] = value
        elif name == VIRTUAL_INBOUND_REFUSED:
            refused = value
    for port, cx in inbound_cx.items():  # TCP ports: connections only, TLS unknown (no HCM)
        if port not in inb and len(inb) < max_clusters:
            inb[port] = {"connections": cx, "tls": -1}
    return ProxyCounters({c: _traffic(row) for c, row in out.items()},
                         {p: _traffic(row) for p, row in inb.items()}, refused, len(dropped))


def _traffic(row: Mapping[str, int]) -> Traffic:
    return Traffic(row.get("requests", 0), {c: row[c] for c in CLASSES if row.get(c)},
                   row.get("connections", 0), row.get("tls", 0))
