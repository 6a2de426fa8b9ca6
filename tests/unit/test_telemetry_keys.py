"""What a Telemetry change re-keys: listeners read a Telemetry's selection, access logging
and tracing, never its `metrics` (meshd's metrics service reads those), so a metrics-only
edit leaves every proxy's xDS keys, and so its pushes, alone, while the metrics service
sees the new overrides at once."""
from __future__ import annotations

from controlplane import names
from controlplane.generators import Generator
from controlplane.telemetry.istio_metrics import metrics_settings
from tests.support import chapter9
from tests.support.chapter9 import CATALOG_PROXY, GATEWAY_PROXY, NS, WEBAPP_PROXY

PROXIES = (WEBAPP_PROXY, CATALOG_PROXY, GATEWAY_PROXY)
TYPES = (names.LISTENER, names.ROUTE, names.CLUSTER, names.ENDPOINT, names.SECRET, names.BOOTSTRAP)


def telemetry(namespace: str, body: str) -> str:
    return f"apiVersion: telemetry.istio.io/v1\nkind: Telemetry\nmetadata: {{name: t, namespace: {namespace}}}\nspec:\n{body}"


LOGS = "  accessLogging: [{providers: [{name: envoy}]}]\n"
METRICS_ON = "  metrics: [{providers: [{name: prometheus}], overrides: [{match: {metric: REQUEST_COUNT}, disabled: false}]}]\n"
METRICS_OFF = "  metrics: [{providers: [{name: prometheus}], overrides: [{match: {metric: ALL_METRICS}, disabled: true}]}]\n"


def keys(gen: Generator, mesh) -> dict:
    return {(p.id, names.SHORT[t]): gen.key(mesh, p, t) for p in PROXIES for t in TYPES}


def test_a_metrics_only_change_rekeys_no_proxy():
    gen = Generator()
    for ns in ("istio-system", NS):  # mesh-wide and namespace Telemetry
        before = chapter9.mesh(telemetry(ns, LOGS + METRICS_ON))
        after = chapter9.mesh(telemetry(ns, LOGS + METRICS_OFF))
        assert keys(gen, before) == keys(gen, after), ns
        # ... while the metrics service reads the new overrides
        assert metrics_settings(before)(WEBAPP_PROXY) != metrics_settings(after)(WEBAPP_PROXY)
        assert not metrics_settings(after)(WEBAPP_PROXY).served or metrics_settings(after)(WEBAPP_PROXY).all_disabled


def test_an_access_logging_or_tracing_change_rekeys_the_listeners_of_the_proxies_it_applies_to():
    gen = Generator()
    before = chapter9.mesh(telemetry(NS, LOGS + METRICS_ON))
    for changed in ("  accessLogging: [{disabled: true}]\n" + METRICS_ON,
                    LOGS + METRICS_ON + "  tracing: [{randomSamplingPercentage: 10}]\n"):
        after = chapter9.mesh(telemetry(NS, changed))
        for p in (WEBAPP_PROXY, CATALOG_PROXY):  # the namespace's sidecars
            assert gen.key(before, p, names.LISTENER) != gen.key(after, p, names.LISTENER), changed
            assert gen.key(before, p, names.CLUSTER) == gen.key(after, p, names.CLUSTER)
        assert gen.key(before, GATEWAY_PROXY, names.LISTENER) == gen.key(after, GATEWAY_PROXY, names.LISTENER)
