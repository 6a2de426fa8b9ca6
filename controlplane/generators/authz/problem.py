"""What problems() (builder.py) reports of an AuthorizationPolicy: its own module, so that
the report (security/policy_report.py) is made without importing the builder and Envoy's
protobuf modules before meshd is ready."""
from __future__ import annotations

from dataclasses import dataclass

ERROR, WARNING = "error", "warning"


@dataclass(frozen=True)
class Problem:
    namespace: str
    name: str
    field: str  # e.g. "spec.rules[0]", "spec.provider.name"
    reason: str  # what is wrong and what meshd (as istiod) does about it
    severity: str = ERROR

    def message(self) -> str:
        where = f"{self.field}: " if self.field else ""
        return f"AuthorizationPolicy {self.namespace}/{self.name}: {where}{self.reason}"
