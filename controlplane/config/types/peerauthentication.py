"""PeerAuthentication, typed: the workloads it selects and the mTLS modes it sets. Which
policy decides for a workload is the model's business (model/peer_authentication.py)."""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .common import integer, labels, mapping, text

UNSET = "UNSET"


@dataclass(frozen=True, slots=True)
class PeerAuthentication:
    selector: Mapping[str, str] = field(default_factory=dict)  # `selector.matchLabels`; empty: namespace- or mesh-wide
    mode: str = UNSET  # `mtls.mode`
    port_level_mtls: Mapping[int, str] = field(default_factory=dict)  # workload port -> mode (UNSET inherits)


def peer_authentication(spec: Mapping[str, Any]) -> PeerAuthentication:
    ports: dict[int, str] = {}
    for port, setting in mapping(spec.get("portLevelMtls")).items():
        number = integer(port)
        if number is not None:
            ports[number] = text(mapping(setting).get("mode")) or UNSET
    return PeerAuthentication(
        selector=labels(mapping(spec.get("selector")).get("matchLabels")),
        mode=text(mapping(spec.get("mtls")).get("mode")) or UNSET,
        port_level_mtls=ports,
    )
