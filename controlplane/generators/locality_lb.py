"""Locality load balancing: EDS priorities and locality weights relative to the proxy.

What istiod does with `trafficPolicy.loadBalancer.localityLbSetting` (behaviour of
pilot/pkg/networking/core/loadbalancer, reimplemented):

- Which setting applies: the DestinationRule's `localityLbSetting` when it has one
  (`enabled: false` turns locality load balancing off), else the mesh config's
  `localityLbSetting` (`mesh_default`), which is `{enabled: true}` unless set.
- `distribute`: the first entry whose `from` matches the proxy's locality (`*` wildcards)
  sets each matching locality's weight to its share of the `to` weight (split over the
  localities one `to` entry covers, in proportion to their endpoint counts, rounded up);
  localities no `to` entry names lose their endpoints. CDS gets
  `common_lb_config.locality_weighted_lb_config` so Envoy honours the weights.
- Otherwise failover, only when the policy has `outlierDetection` (without it Envoy
  never sees a host fail and would never leave priority 0):
  - `failoverPriority` (label names, or `label=value` to fix the value compared): each
    locality is split by how many leading labels an endpoint shares with the proxy
    (all: priority 0, none: the lowest);
  - then, unless only `failoverPriority` is given: the proxy's region/zone/subzone
    gets priority 0, same region and zone 1, same region 2, other regions 3; with a
    `failover` entry whose `from` is the proxy's region, regions other than its `to`
    drop to 4. Priorities are then renumbered 0..N without gaps.
  CDS gets `locality_weighted_lb_config` when `failover` or `failoverPriority` is set.

The topology labels of the proxy's and the endpoints' localities are added to their
labels before `failoverPriority` compares them (as istiod augments them).
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.endpoint.v3 import endpoint_components_pb2, endpoint_pb2

from ..config.types.trafficpolicy import LocalityDistribute, LocalityFailover, LocalityLbSetting, TrafficPolicy
from ..model.locality import Locality, with_topology_labels
from ..model.services import Endpoint

# meshConfig.localityLbSetting as istiod defaults it.
MESH_DEFAULT = LocalityLbSetting(enabled=True)


def setting(policy: TrafficPolicy, mesh_default: LocalityLbSetting = MESH_DEFAULT) -> LocalityLbSetting | None:
    """The locality setting in force for a cluster's effective traffic policy, or None."""
    lb = policy.load_balancer
    chosen = lb.locality_lb_setting if lb is not None and lb.locality_lb_setting is not None else mesh_default
    return chosen if chosen.enabled else None


def failover_enabled(policy: TrafficPolicy) -> bool:
    """Failover needs outlier detection (istiod: OutlierDetection != nil)."""
    return policy.outlier_detection is not None


def reads_proxy_locality(policy: TrafficPolicy, localized: bool = True, mesh_default: LocalityLbSetting = MESH_DEFAULT) -> bool:
    """Whether the assignment of a cluster with this policy depends on where the proxy
    is. `localized`: some endpoint has a locality (else plain failover puts every
    endpoint at priority 0 wherever the proxy is)."""
    s = setting(policy, mesh_default)
    if s is None:
        return False
    if s.distribute:
        return True
    return failover_enabled(policy) and (localized or bool(s.failover_priority))


def reads_proxy_labels(policy: TrafficPolicy, mesh_default: LocalityLbSetting = MESH_DEFAULT) -> bool:
    """Whether it also depends on the proxy's labels (`failoverPriority`)."""
    s = setting(policy, mesh_default)
    return s is not None and not s.distribute and failover_enabled(policy) and bool(s.failover_priority)


def apply_cluster(cluster: cluster_pb2.Cluster, policy: TrafficPolicy, mesh_default: LocalityLbSetting = MESH_DEFAULT) -> None:
    """CDS: ask Envoy for locality weighted load balancing where weights are sent."""
    s = setting(policy, mesh_default)
    if s is None:
        return
    if s.distribute or (failover_enabled(policy) and (s.failover or s.failover_priority)):
        cluster.common_lb_config.locality_weighted_lb_config.SetInParent()


# --- EDS ---------------------------------------------------------------------------------


def lb_priority(proxy: Locality, endpoint: Locality) -> int:
    if proxy.region != endpoint.region:
        return 3
    if proxy.zone != endpoint.zone:
        return 2
    return 0 if proxy.subzone == endpoint.subzone else 1


def locality_of(llb: endpoint_components_pb2.LocalityLbEndpoints) -> Locality:
    return Locality(llb.locality.region, llb.locality.zone, llb.locality.sub_zone)


def locality_match(locality: Locality, rule: str) -> bool:
    """Whether `locality` falls under `rule` (`region/zone/subzone`, `*` matches any)."""
    region, zone, subzone = Locality.parse(rule)
    return ((region == "*" or region == locality.region)
            and (zone in ("*", "") or zone == locality.zone)
            and (subzone in ("*", "") or subzone == locality.subzone))


def apply(
    cla: endpoint_pb2.ClusterLoadAssignment,
    groups: Sequence[Sequence[Endpoint]],
    policy: TrafficPolicy,
    proxy_locality: Locality,
    proxy_labels: Mapping[str, str],
    mesh_default: LocalityLbSetting = MESH_DEFAULT,
) -> None:
    """Set priorities / weights of `cla` (whose localities hold `groups`, in order) for
    a proxy at `proxy_locality`."""
    s = setting(policy, mesh_default)
    if s is None or not cla.endpoints:
        return
    if s.distribute:
        _apply_weights(cla, proxy_locality, s.distribute)
    elif failover_enabled(policy):
        failover = s.failover
        labels = s.failover_priority
        if labels:
            _apply_failover_priority(cla, groups, with_topology_labels(proxy_labels, proxy_locality), labels)
            if failover:
                _apply_failover(cla, proxy_locality, failover)
        else:
            _apply_failover(cla, proxy_locality, failover)


def _apply_weights(cla: endpoint_pb2.ClusterLoadAssignment, proxy: Locality,
                   distribute: tuple[LocalityDistribute, ...]) -> None:
    for rule in distribute:
        if not locality_match(proxy, rule.from_):
            continue
        unmatched = set(range(len(cla.endpoints)))
        for target, weight in rule.to.items():
            chosen: dict[int, int] = {}
            for i in sorted(unmatched):
                llb = cla.endpoints[i]
                if locality_match(locality_of(llb), target):
                    chosen[i] = llb.load_balancing_weight.value if llb.HasField("load_balancing_weight") else 1
            unmatched -= set(chosen)
            total = sum(chosen.values())
            for i, original in chosen.items():
                share = original * weight / total if total else 0
                if share > 0:
                    cla.endpoints[i].load_balancing_weight.value = math.ceil(share)
        for i in unmatched:  # localities the rule sends nothing to
            del cla.endpoints[i].lb_endpoints[:]
        return


def _renumber(priorities: list[int]) -> list[int]:
    """Priorities as 0..N without gaps, keeping their order."""
    rank = {p: i for i, p in enumerate(sorted(set(priorities)))}
    return [rank[p] for p in priorities]


def _apply_failover(cla: endpoint_pb2.ClusterLoadAssignment, proxy: Locality,
                    failover: tuple[LocalityFailover, ...]) -> None:
    raw = []
    for llb in cla.endpoints:
        loc = locality_of(llb)
        p = lb_priority(proxy, loc)
        if p == 3:
            for f in failover:
                if f.from_ == proxy.region:
                    if loc.region != f.to:
                        p = 4
                    break
        # Keep an earlier failoverPriority split: five locality levels per priority.
        raw.append(llb.priority * 5 + p)
    for llb, p in zip(cla.endpoints, _renumber(raw), strict=True):
        llb.priority = p


def _apply_failover_priority(cla: endpoint_pb2.ClusterLoadAssignment, groups: Sequence[Sequence[Endpoint]],
                             proxy_labels: Mapping[str, str], labels: tuple[str, ...]) -> None:
    names: list[str] = []
    fixed: dict[str, str] = {}
    for entry in labels:
        name, sep, value = entry.partition("=")
        names.append(name)
        if sep:
            fixed[name] = value
    lowest = len(names)
    split: list[tuple[int, endpoint_components_pb2.LocalityLbEndpoints]] = []
    for llb, eps in zip(cla.endpoints, groups, strict=True):
        by_priority: dict[int, list[int]] = {}
        for i, ep in enumerate(eps):
            ep_labels = with_topology_labels(ep.labels, ep.locality)
            priority = 0
            for j, name in enumerate(names):
                want = fixed[name] if name in fixed else proxy_labels.get(name, "")
                if want != ep_labels.get(name, ""):
                    priority = lowest - j
                    break
            by_priority.setdefault(priority, []).append(i)
        for priority in sorted(by_priority):
            part = endpoint_components_pb2.LocalityLbEndpoints()
            part.CopyFrom(llb)
            del part.lb_endpoints[:]
            weight = 0
            for i in by_priority[priority]:
                part.lb_endpoints.append(llb.lb_endpoints[i])
                weight += llb.lb_endpoints[i].load_balancing_weight.value
            part.load_balancing_weight.value = weight
            split.append((priority, part))
    del cla.endpoints[:]
    for (_, part), p in zip(split, _renumber([p for p, _ in split]), strict=True):
        part.priority = p
        cla.endpoints.append(part)
