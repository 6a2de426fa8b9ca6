"""Where a workload or a proxy runs: region / zone / subzone.

An endpoint's locality, as istiod finds it, with one convenience added:
1. the pod's `istio-locality` label (`region.zone.subzone`, dots because a label value
   cannot hold `/`);
2. else topology labels on the pod itself (`topology.kubernetes.io/region`,
   `topology.kubernetes.io/zone` or their deprecated `failure-domain.beta.kubernetes.io/*`
   forms, and `topology.istio.io/subzone`): istiod does not read these from pods, meshd
   does so that a directory of YAML without Nodes can still place its workloads;
3. else the same topology labels of the pod's Node (`spec.nodeName`), as istiod.

A proxy whose pod the mesh knows (by pod name and namespace, else by IP) gets its pod's
locality; otherwise the topology labels of its workload (metadata LABELS) and, when they
carry none, the Envoy node's `locality` (`meshd bootstrap --locality`).
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import NamedTuple

from ..names import OLD_REGION_LABEL, OLD_ZONE_LABEL, REGION_LABEL, SUBZONE_LABEL, ZONE_LABEL

LOCALITY_LABEL = "istio-locality"


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
    def parse(cls, text: str, sep: str = "/") -> Locality:
        parts = (str(text or "").split(sep, 2) + ["", ""])[:3]
        return cls(*(p.strip() for p in parts))


NO_LOCALITY = Locality()


def from_labels(labels: Mapping[str, str]) -> Locality:
    """The locality the labels of a pod (or proxy) name; empty when they name none."""
    explicit = labels.get(LOCALITY_LABEL)
    if explicit:
        return Locality.parse(explicit, ".")
    return topology_locality(labels)


def topology_locality(labels: Mapping[str, str]) -> Locality:
    """The locality the topology labels name (a Node's, or a pod's); empty when none."""
    return Locality(
        str(labels.get(REGION_LABEL) or labels.get(OLD_REGION_LABEL) or ""),
        str(labels.get(ZONE_LABEL) or labels.get(OLD_ZONE_LABEL) or ""),
        str(labels.get(SUBZONE_LABEL) or ""),
    )


def workload_locality(pod_labels: Mapping[str, str], node_labels: Mapping[str, str] | None) -> Locality:
    """An endpoint's locality: the pod's `istio-locality`, else the pod's own topology
    labels, else those of its Node (`node_labels`, None when the Node is not known)."""
    return from_labels(pod_labels) or (topology_locality(node_labels) if node_labels else NO_LOCALITY)


def with_topology_labels(labels: Mapping[str, str], locality: Locality) -> dict[str, str]:
    """`labels` plus the topology labels of `locality` (as istiod augments endpoint and
    proxy labels, so that `failoverPriority` can name them)."""
    out = dict(labels)
    for key, value in ((REGION_LABEL, locality.region), (ZONE_LABEL, locality.zone), (SUBZONE_LABEL, locality.subzone)):
        if value:
            out[key] = value
    return out
