"""The telemetry parts as `meshd serve` wires them (one call from app.py):

    telemetry = Telemetry.attach(registry, authenticators, mesh=lambda: ads.mesh)
    ... extra=(..., telemetry.add_to)   # the metrics service on the secure xDS port
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .istio_metrics import IstioMetricsCollector
from .store import TelemetryStore

if TYPE_CHECKING:
    import grpc

    from .service import MetricsService


@dataclass(frozen=True)
class Telemetry:
    store: TelemetryStore
    service: MetricsService | None  # None: no authenticated port, no metrics service

    @classmethod
    def attach(cls, registry: Any, authenticators: Sequence[Any] | None, mesh: Callable[[], Any],
               trust_domain: str = "cluster.local", max_proxies: int | None = None) -> Telemetry:
        store = TelemetryStore() if max_proxies is None else TelemetryStore(max_proxies)
        if registry is not None:
            registry.register(IstioMetricsCollector(store, mesh, trust_domain))
        service = None
        if authenticators:  # Envoy's metrics service protos only when it is served
            from .service import MetricsService

            service = MetricsService(store, authenticators)
        return cls(store, service)

    def add_to(self, server: grpc.aio.Server) -> None:
        if self.service is not None:
            from .service import add_metrics_servicer

            add_metrics_servicer(self.service, server)
