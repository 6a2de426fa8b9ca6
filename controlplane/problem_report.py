"""Config meshd accepts but does not serve as written, made impossible to miss: the problems
found in each new mesh snapshot are logged once when they appear (again if they go and come
back), listed for `/debug/configz` (`status()`) and counted in a gauge.

One type for every such report (security/policy_report.py: AuthorizationPolicies meshd
fails closed on; telemetry/problem_report.py: Telemetry settings it does not serve). What
differs between them is a `ReportSpec`: the kind, the event, the gauge and its labels, the
extra fields of a row. Problems are found only when `input_key` of the snapshot changes
(one pass per changed input, not per snapshot or proxy).
"""
from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

import structlog
from prometheus_client import CollectorRegistry, Gauge


class Problem(Protocol):
    """What every reported problem has (a frozen dataclass: compared and hashed by value)."""

    @property
    def namespace(self) -> str: ...
    @property
    def name(self) -> str: ...
    @property
    def field(self) -> str: ...
    @property
    def reason(self) -> str: ...
    def message(self) -> str: ...


P = TypeVar("P", bound=Problem)


@dataclass(frozen=True)
class ReportSpec(Generic[P]):
    kind: str  # the object kind in rows and events
    event: str  # the structlog event of a problem that appears
    logger: str
    metric: str  # the gauge: problems by `labels`
    help: str
    labels: tuple[str, ...]
    label_values: Callable[[P], tuple[str, ...]]
    always: tuple[tuple[str, ...], ...] = ()  # label values exported even at 0
    details: Callable[[P], Mapping[str, Any]] = lambda _p: {}  # extra fields of events and rows


class ProblemReport(Generic[P]):
    """Fed with each new mesh snapshot (app.py: a MeshBuilder observer)."""

    def __init__(self, spec: ReportSpec[P], find: Callable[[Any], tuple[P, ...]],
                 input_key: Callable[[Any], Hashable], registry: CollectorRegistry | None = None):
        self.spec = spec
        self.current: tuple[P, ...] = ()
        self._find = find
        self._input_key = input_key
        self._input: Hashable | None = None
        self._log = structlog.get_logger(spec.logger)
        self._gauge: Gauge | None = None
        self._exported: set[tuple[str, ...]] = set(spec.always)
        if registry is not None:
            self._gauge = Gauge(spec.metric, spec.help, list(spec.labels), registry=registry)
            for values in spec.always:
                self._gauge.labels(*values).set(0)

    def update(self, mesh: Any) -> None:
        key = self._input_key(mesh)
        if key == self._input:
            return
        self._input = key
        found = self._find(mesh)
        seen = set(self.current)  # what was reported last time is not logged again
        for p in found:
            if p not in seen:
                self._log.warning(self.spec.event, kind=self.spec.kind, object=f"{p.namespace}/{p.name}",
                                  field=p.field or None, **self.spec.details(p), reason=p.reason,
                                  message=p.message())
        self.current = found
        if self._gauge is not None:
            counts: dict[tuple[str, ...], int] = {}
            for p in found:
                values = self.spec.label_values(p)
                counts[values] = counts.get(values, 0) + 1
            self._exported |= set(counts)
            for values in self._exported:
                self._gauge.labels(*values).set(counts.get(values, 0))

    def status(self) -> list[dict[str, Any]]:
        """The `/debug/configz` section: the problems of the latest snapshot."""
        return [{"kind": self.spec.kind, "namespace": p.namespace, "name": p.name, "field": p.field,
                 **self.spec.details(p), "reason": p.reason, "message": p.message()} for p in self.current]
