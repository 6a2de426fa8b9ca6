"""Wiring of the operator's view into `meshd serve` (one call from app.py).

    routes = operator_view(ads, store, metrics, routes, access="localhost", ...)

installs the ADS push observer (push status, pilot_proxy_convergence_time), counts config
events (pilot_k8s_cfg_events), and returns the monitoring routes with the /debug pages
added and every /debug path behind the access check. Call it before the sources load,
so the initial objects count as `add` events as they do in istiod.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from .handlers import DebugAccess, install
from .monitoring import Handler
from .push_status import ConfigEvents, PushTracker
from .views import DebugViews


def operator_view(ads: Any, store: Any, metrics: Any, routes: Mapping[str, Handler] | None = None, *,
                  access: str = "localhost", authenticators: Sequence[Any] = (),
                  root_namespace: str = "istio-system",
                  configz_sections: Mapping[str, Any] | None = None) -> dict[str, Handler]:
    registry = getattr(metrics, "registry", None)
    pushes = PushTracker(ads, registry)
    ads.observer = pushes
    if registry is not None:
        ConfigEvents(store, registry)
    views = DebugViews(ads, store, pushes)
    views.configz_sections.update(configz_sections or {})
    return install(dict(routes or {}), views, DebugAccess(access, authenticators, root_namespace))
