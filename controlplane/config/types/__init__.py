"""Typed, frozen readings of the Istio kinds meshd serves, one small module per kind.

The parse gate validates a document (config/validation/) and the ConfigObject it becomes
carries, beside the document itself (`spec`, what debug views and the last good copies
show), its typed reading (`typed`), built here. The model and the generators read fields
of these objects, never the document. A new kind adds its module and a line to BUILDERS.

AuthorizationPolicy and RequestAuthentication are read by the model
(model/authorization.py, model/request_authentication.py): their typed forms carry
per-field problems that make a policy fail closed, which is the model's to report.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from ..kinds import (
    DESTINATION_RULE,
    ENVOY_FILTER,
    GATEWAY,
    PEER_AUTHENTICATION,
    SERVICE_ENTRY,
    SIDECAR,
    TELEMETRY,
    VIRTUAL_SERVICE,
    WORKLOAD_ENTRY,
    WORKLOAD_GROUP,
)
from .destinationrule import DestinationRule, destination_rule
from .envoyfilter import envoy_filter
from .gateway import Gateway, gateway
from .gateway_api import GATEWAY_API_BUILDERS
from .peerauthentication import PeerAuthentication, peer_authentication
from .serviceentry import ServiceEntry, service_entry
from .sidecar import Sidecar, sidecar
from .telemetry import telemetry
from .virtualservice import VirtualService, virtual_service
from .workloadentry import WorkloadEntry, WorkloadGroup, workload_entry, workload_group

BUILDERS: dict[tuple[str, str], Callable[[Mapping[str, Any]], Any]] = {
    (GATEWAY.group, GATEWAY.kind): gateway,
    (VIRTUAL_SERVICE.group, VIRTUAL_SERVICE.kind): virtual_service,
    (DESTINATION_RULE.group, DESTINATION_RULE.kind): destination_rule,
    (PEER_AUTHENTICATION.group, PEER_AUTHENTICATION.kind): peer_authentication,
    (SIDECAR.group, SIDECAR.kind): sidecar,
    (SERVICE_ENTRY.group, SERVICE_ENTRY.kind): service_entry,
    (WORKLOAD_ENTRY.group, WORKLOAD_ENTRY.kind): workload_entry,
    (WORKLOAD_GROUP.group, WORKLOAD_GROUP.kind): workload_group,
    (ENVOY_FILTER.group, ENVOY_FILTER.kind): envoy_filter,
    (TELEMETRY.group, TELEMETRY.kind): telemetry,
    **GATEWAY_API_BUILDERS,
}


def build(group: str, kind: str, spec: Mapping[str, Any]) -> Any:
    """The typed reading of a validated `spec` of (group, kind); None for kinds without one."""
    builder = BUILDERS.get((group, kind))
    return builder(spec if isinstance(spec, Mapping) else {}) if builder is not None else None


__all__ = ["BUILDERS", "DestinationRule", "Gateway", "PeerAuthentication", "ServiceEntry", "Sidecar", "VirtualService",
           "WorkloadEntry", "WorkloadGroup", "build"]
