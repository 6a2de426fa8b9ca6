"""What the last pushes did, and the metrics istiod derives from the same events.

`PushTracker` is the ADS server's debug observer (`AdsServer.observer`): the server calls
`push_started` when a new mesh snapshot goes out, `sent` for every response written and
`proxy_pushed` when a connection has handled a push. From that it keeps the recent pushes
for `/debug/push_status` (time, trigger, duration, proxies and resources pushed) and
records istiod's `pilot_proxy_convergence_time` (trigger to the proxy having been sent
everything it needs).

`ConfigEvents` counts config store changes as istiod's `pilot_k8s_cfg_events{type,event}`
(add/update/delete per kind), for file and Kubernetes sources alike.
"""
from __future__ import annotations

import collections
import time
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram

from .times import rfc3339

# istiod's convergence buckets (pilot/pkg/xds/monitoring.go)
CONVERGENCE_BUCKETS = (0.1, 0.5, 1, 3, 5, 10, 20, 30)


@dataclass
class PushRecord:
    trigger: str
    started_wall: float
    started: float  # monotonic
    connections: int
    pending: set[str] = field(default_factory=set)  # connection ids not yet pushed
    proxies: set[str] = field(default_factory=set)  # connections sent at least one response
    resources: int = 0
    bytes: int = 0
    by_type: collections.Counter = field(default_factory=collections.Counter)
    finished: float = 0.0  # monotonic, when the last connection was done

    def as_dict(self) -> dict:
        done = not self.pending
        end = self.finished if done else time.monotonic()
        return {
            "time": rfc3339(self.started_wall),
            "trigger": self.trigger,
            "complete": done,
            "durationSeconds": round(end - self.started, 6),
            "connections": self.connections,
            "proxiesPushed": len(self.proxies),
            "proxiesPending": len(self.pending),
            "resourcesPushed": self.resources,
            "bytesPushed": self.bytes,
            "byType": dict(sorted(self.by_type.items())),
        }


class PushTracker:
    """ADS observer: recent pushes plus pilot_proxy_convergence_time."""

    def __init__(self, ads: Any, registry: CollectorRegistry | None = None, keep: int = 20):
        self._ads = ads
        self._recent: collections.deque[PushRecord] = collections.deque(maxlen=keep)
        self.convergence = None
        if registry is not None:
            self.convergence = Histogram(
                "pilot_proxy_convergence_time",
                "Delay in seconds between config change and a proxy receiving all required configuration.",
                buckets=CONVERGENCE_BUCKETS, registry=registry,
            )

    # --- observer interface (called by AdsServer) ---------------------------------
    def push_started(self, reason: str, n_connections: int) -> None:
        rec = PushRecord(reason, time.time(), time.monotonic(), n_connections)
        rec.pending = {c.id for c in self._ads.connections()}
        if not rec.pending:
            rec.finished = rec.started
        self._recent.append(rec)

    def sent(self, conn: Any, sub: Any, n_resources: int, size: int, request: bool) -> None:
        rec = self._current()
        if rec is None or request or conn.id not in rec.pending:
            return
        rec.proxies.add(conn.id)
        rec.resources += n_resources
        rec.bytes += size
        rec.by_type[sub.short] += n_resources

    def proxy_pushed(self, conn: Any) -> None:
        rec = self._current()
        if rec is None or conn.id not in rec.pending:
            return
        rec.pending.discard(conn.id)
        now = time.monotonic()
        if self.convergence is not None:
            self.convergence.observe(now - rec.started)
        if not rec.pending:
            rec.finished = now

    # --- views ----------------------------------------------------------------------
    def _current(self) -> PushRecord | None:
        return self._recent[-1] if self._recent else None

    def status(self) -> dict:
        live = {c.id for c in self._ads.connections()}
        for rec in self._recent:  # connections that left mid-push will never finish it
            if rec.pending - live:
                rec.pending &= live
                if not rec.pending:
                    rec.finished = time.monotonic()
        recent = [r.as_dict() for r in self._recent]
        return {"lastPush": recent[-1] if recent else None, "recentPushes": list(reversed(recent))}


class ConfigEvents:
    """pilot_k8s_cfg_events{type=<kind>,event=add|update|delete} from store changes."""

    def __init__(self, store: Any, registry: CollectorRegistry):
        self.counter = Counter("pilot_k8s_cfg_events", "Events from k8s config.", ["type", "event"],
                               registry=registry)
        self._generations = {k: o.generation for k, o in store.snapshot().objects.items()}
        store.subscribe(self._on_change)

    def _on_change(self, snapshot: Any, changed: Any) -> None:
        counts: collections.Counter[tuple[str, str]] = collections.Counter()  # one inc per series
        for key in changed:
            obj = snapshot.objects.get(key)
            if obj is None:
                if self._generations.pop(key, None) is not None:
                    counts[(key.kind, "delete")] += 1
                continue
            counts[(key.kind, "update" if key in self._generations else "add")] += 1
            self._generations[key] = obj.generation
        for (kind, event), n in counts.items():
            self.counter.labels(kind, event).inc(n)
