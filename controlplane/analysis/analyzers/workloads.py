"""The workloads analyzers match selectors against: Pods, and (meshd) WorkloadEntries and
the WorkloadEntries WorkloadGroups stand for.

A WorkloadEntry is a workload outside Kubernetes (a VM); its labels are spec.labels.
Sidecars, ServiceEntries and policies select it as they select a Pod, so a selector
matching only WorkloadEntries matches something.
"""
from __future__ import annotations

from collections.abc import Mapping

from .. import messages as msg
from ..context import POD, WORKLOAD_ENTRY, WORKLOAD_GROUP, Context
from ..resources import Resource
from ..util import selector_matches, selector_string


def workload_entry_as_workload(r: Resource) -> Resource:
    """The WorkloadEntry with its spec.labels as the labels selectors see."""
    raw = r.spec.get("labels")
    labels = {str(k): str(v) for k, v in raw.items()} if isinstance(raw, dict) else {}
    md = dict(r.metadata)
    md["labels"] = labels
    return Resource(r.api_version, r.kind, r.namespace, r.name, {**r.doc, "metadata": md}, r.location, r.lines)


def workload_group_as_workload(r: Resource) -> Resource:
    """The WorkloadEntries a WorkloadGroup's proxies will register (sources/autoregistration.py):
    the template's labels under the group's metadata.labels (a proxy's own labels, unknown
    here, come on top)."""
    def labels_at(v: object) -> dict[str, str]:
        raw = v.get("labels") if isinstance(v, dict) else None
        return {str(k): str(x) for k, x in raw.items()} if isinstance(raw, dict) else {}

    labels = {**labels_at(r.spec.get("template")), **labels_at(r.spec.get("metadata"))}
    doc = {"apiVersion": r.api_version, "kind": r.kind,
           "metadata": {"name": r.name, "namespace": r.namespace, "labels": labels}}
    return Resource(r.api_version, r.kind, r.namespace, r.name, doc, r.location, r.lines, assumed=True)


def workloads_of(ctx: Context) -> list[Resource]:
    """Pods, WorkloadEntries, and the ones each WorkloadGroup stands for (VMs that register
    when they connect)."""
    return (ctx.all(POD) + [workload_entry_as_workload(r) for r in ctx.all(WORKLOAD_ENTRY)]
            + [workload_group_as_workload(r) for r in ctx.all(WORKLOAD_GROUP)])


def report_unmatched(ctx: Context, workloads: list[Resource], r: Resource, labels: Mapping[str, str],
                     line: int) -> None:
    """IST0127 when no workload of the object's namespace carries the labels."""
    if labels and not any(w.namespace == r.namespace and selector_matches(labels, w.labels) for w in workloads):
        ctx.report(msg.new(msg.NO_MATCHING_WORKLOADS, r, selector_string(labels), line=line))


__all__ = ["report_unmatched", "workloads_of", "workload_entry_as_workload", "workload_group_as_workload"]
