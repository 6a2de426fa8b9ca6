"""Where a workload or a proxy runs: region / zone / subzone.

istiod reads an endpoint's locality from its pod: the `istio-locality` label
(`region.zone.subzone`, dots because a label value cannot hold `/`) wins, else the
topology labels `topology.kubernetes.io/region`, `topology.kubernetes.io/zone` (or
their deprecated `failure-domain.beta.kubernetes.io/*` forms) and
`topology.istio.io/subzone`. (istiod finds the topology labels on the pod's Node;
meshd, which does not follow Nodes, reads them from the pod.)

A proxy's locality comes from the same labels of its workload (metadata LABELS) and,
when they carry none, from the Envoy node's `locality` (`meshd bootstrap --locality`).
"""
from __future__ import annotations

from typing import Mapping, NamedTuple

LOCALITY_LABEL = "istio-locality"
REGION_LABEL = "topology.kubernetes.io/region"
ZONE_LABEL = "topology.kubernetes.io/zone"
SUBZONE_LABEL = "topology.istio.io/subzone"
_OLD_REGION_LABEL = "failure-domain.beta.kubernetes.io/region"
_OLD_ZONE_LABEL = "failure-domain.beta.kubernetes.io/zone"


class Locality(NamedTuple):
    region: str = ""
    zone: str = ""
    subzone: str = ""

    def __str__(self) -> str:
        """`region/zone/subzone` without trailing empty parts (istioctl's form)."""
        parts = [self.region, self.zone, self.subzone]
        while parts and not parts[-1]:
            parts.pop()
        return "/".join(parts)

    def __bool__(self) -> bool:
        return bool(self.region or self.zone or self.subzone)

    @classmethod
    def parse(cls, text: str, sep: str = "/") -> "Locality":
        parts = (str(text or "").split(sep, 2) + ["", ""])[:3]
        return cls(*(p.strip() for p in parts))


NO_LOCALITY = Locality()


def from_labels(labels: Mapping[str, str]) -> Locality:
    """The locality the labels of a pod (or proxy) name; empty when they name none."""
    explicit = labels.get(LOCALITY_LABEL)
    if explicit:
        return Locality.parse(explicit, ".")
    return Locality(
        str(labels.get(REGION_LABEL) or labels.get(_OLD_REGION_LABEL) or ""),
        str(labels.get(ZONE_LABEL) or labels.get(_OLD_ZONE_LABEL) or ""),
        str(labels.get(SUBZONE_LABEL) or ""),
    )


def with_topology_labels(labels: Mapping[str, str], locality: Locality) -> dict[str, str]:
    """`labels` plus the topology labels of `locality` (as istiod augments endpoint and
    proxy labels, so that `failoverPriority` can name them)."""
    out = dict(labels)
    for key, value in ((REGION_LABEL, locality.region), (ZONE_LABEL, locality.zone), (SUBZONE_LABEL, locality.subzone)):
        if value:
            out[key] = value
    return out
