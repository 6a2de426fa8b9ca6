"""The traffic the connected proxies reported: per proxy, its last two reports.

Bounded: at most `max_proxies` proxies (a stream over the cap is refused, and counted),
each with the clusters and ports `counters.read_counters` keeps (its own cap); a proxy's
entry goes when its metrics stream ends (the proxy went away or reconnected elsewhere).
Rates come from the last two reports; "recently" means a counter grew within `recent`
seconds, so an edge stays on the page between flushes and goes when traffic stops.
"""
from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from ..model.proxy import Proxy
from .counters import EMPTY, ProxyCounters, Traffic

DEFAULT_MAX_PROXIES = 10_000
DEFAULT_RECENT = 300.0


@dataclass(frozen=True)
class ProxyTraffic:
    """One proxy's view for readers: totals, the increase over the last window, and when
    each counter group last grew (monotonic seconds)."""

    proxy: Proxy
    principal: str  # spiffe://... the metrics stream authenticated as
    totals: ProxyCounters
    window: ProxyCounters  # increase between the last two reports
    window_seconds: float  # 0: one report so far
    last_grew: Mapping[str, float]  # "out|<cluster>", "in|<port>", "plain|<port>", "refused"
    reported_at: float


@dataclass
class _Entry:
    stream: object
    proxy: Proxy
    principal: str
    current: ProxyCounters = EMPTY
    current_at: float = 0.0
    previous: ProxyCounters | None = None
    previous_at: float = 0.0
    last_grew: dict[str, float] = field(default_factory=dict)


class TelemetryStore:
    """Written by the metrics service (event loop), read by the page and /metrics (any
    thread): a lock keeps readers from seeing a half-updated entry."""

    def __init__(self, max_proxies: int = DEFAULT_MAX_PROXIES, recent: float = DEFAULT_RECENT,
                 clock: Callable[[], float] = time.monotonic):
        self.max_proxies = max_proxies
        self.recent = recent
        self.refused_streams = 0
        self._clock = clock
        self._entries: dict[str, _Entry] = {}
        self._lock = threading.Lock()

    def open(self, stream: object, proxy: Proxy, principal: str) -> bool:
        """A metrics stream of `proxy` starts; False when the store is full."""
        with self._lock:
            if proxy.id not in self._entries and len(self._entries) >= self.max_proxies:
                self.refused_streams += 1
                return False
            self._entries[proxy.id] = _Entry(stream, proxy, principal)
            return True

    def report(self, stream: object, proxy_id: str, counters: ProxyCounters) -> None:
        now = self._clock()
        with self._lock:
            e = self._entries.get(proxy_id)
            if e is None or e.stream is not stream:  # replaced by a newer stream of the proxy
                return
            if e.current_at:
                _note_growth(e.last_grew, counters, e.current, now)
            elif e.previous is None:  # the first report: what was there before counts as seen now
                _note_growth(e.last_grew, counters, EMPTY, now)
            e.previous, e.previous_at = e.current, e.current_at
            e.current, e.current_at = counters, now

    def close(self, stream: object, proxy_id: str) -> None:
        with self._lock:
            e = self._entries.get(proxy_id)
            if e is not None and e.stream is stream:
                del self._entries[proxy_id]

    def __len__(self) -> int:
        return len(self._entries)

    def proxies(self) -> tuple[ProxyTraffic, ...]:
        with self._lock:
            entries = list(self._entries.values())
        out = []
        for e in entries:
            window = _window(e.current, e.previous) if e.previous is not None and e.previous_at else e.current
            out.append(ProxyTraffic(e.proxy, e.principal, e.current, window,
                                    e.current_at - e.previous_at if e.previous_at else 0.0,
                                    dict(e.last_grew), e.current_at))
        return tuple(sorted(out, key=lambda p: p.proxy.id))

    def grew_recently(self, p: ProxyTraffic, key: str) -> bool:
        at = p.last_grew.get(key)
        return at is not None and self._clock() - at <= self.recent


def _window(new: ProxyCounters, old: ProxyCounters) -> ProxyCounters:
    return ProxyCounters({c: t.minus(old.outbound.get(c)) for c, t in new.outbound.items()},
                         {p: t.minus(old.inbound.get(p)) for p, t in new.inbound.items()},
                         new.refused - old.refused if new.refused >= old.refused else new.refused,
                         new.truncated)


def _grew(new: Traffic, old: Traffic | None) -> bool:
    return old is None and (new.requests > 0 or new.connections > 0) or (
        old is not None and (new.requests != old.requests or new.connections != old.connections))


def _note_growth(seen: dict[str, float], new: ProxyCounters, old: ProxyCounters, now: float) -> None:
    for c, t in new.outbound.items():
        if _grew(t, old.outbound.get(c)):
            seen[f"out|{c}"] = now
    for p, t in new.inbound.items():
        o = old.inbound.get(p)
        if _grew(t, o):
            seen[f"in|{p}"] = now
        plain = t.connections - max(t.tls, 0) if t.tls >= 0 else 0
        old_plain = (o.connections - max(o.tls, 0)) if o is not None and o.tls >= 0 else 0
        if plain > old_plain or (plain and plain < old_plain):
            seen[f"plain|{p}"] = now
    if new.refused != old.refused and new.refused:
        seen["refused"] = now
    # keys of clusters or ports no longer reported go with them (bounded by the caps)
    live = {f"out|{c}" for c in new.outbound} | {f"{k}|{p}" for p in new.inbound for k in ("in", "plain")}
    for k in [k for k in seen if k != "refused" and k not in live]:
        del seen[k]
