"""The reasons telemetry_problems.py gives, and its problem type: their own module, so
that the report (telemetry/problem_report.py) is made without importing the generators
before meshd is ready."""
from __future__ import annotations

from dataclasses import dataclass

METRICS_NOT_APPLIED = "MetricsNotApplied"
TARGET_REFS_NOT_SERVED = "TargetRefsNotServed"
UNKNOWN_PROVIDER = "UnknownProvider"
PROVIDER_NOT_SERVED = "ProviderNotServed"
REQUEST_ID_SAMPLING_NOT_SERVED = "RequestIdSamplingNotServed"
REASONS = (METRICS_NOT_APPLIED, TARGET_REFS_NOT_SERVED, UNKNOWN_PROVIDER, PROVIDER_NOT_SERVED,
           REQUEST_ID_SAMPLING_NOT_SERVED)


@dataclass(frozen=True, slots=True)
class TelemetryProblem:
    namespace: str
    name: str
    field: str  # the spec path, e.g. `spec.tracing[0].providers[0]`
    reason: str  # one of REASONS
    detail: str  # what is not served and why, for people

    def message(self) -> str:
        return f"{self.field}: {self.detail}"
