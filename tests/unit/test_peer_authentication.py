"""PeerAuthentication: the effective mTLS mode of a workload, with Istio's precedence
(mesh < namespace < workload selector; oldest first among equals; UNSET inherits;
portLevelMtls only on selector policies; nothing at all is PERMISSIVE)."""
from __future__ import annotations

import dataclasses

import pytest

from controlplane.model.peer_authentication import effective_policy
from tests.support.configs import mesh_from_yaml, objects_from_yaml

NS = "istioinaction"
CATALOG = {"app": "catalog", "version": "v1"}


def pa(name: str, namespace: str, mode: str | None = None, selector: dict | None = None,
       ports: dict | None = None, created: str | None = None) -> str:
    lines = [
        "apiVersion: security.istio.io/v1",
        "kind: PeerAuthentication",
        "metadata:",
        f"  name: {name}",
        f"  namespace: {namespace}",
    ]
    if created:
        lines.append(f'  creationTimestamp: "{created}"')
    lines.append("spec:")
    if selector:
        lines.append("  selector:")
        lines.append("    matchLabels: {" + ", ".join(f"{k}: {v}" for k, v in selector.items()) + "}")
    if mode:
        lines.append(f"  mtls: {{mode: {mode}}}")
    if ports:
        lines.append("  portLevelMtls:")
        for port, m in ports.items():
            lines.append(f"    {port}: {{mode: {m}}}")
    if len(lines) == 6 or lines[-1] == "spec:":
        lines[-1] = "spec: {}"
    return "\n".join(lines) + "\n"


def policy(*docs: str, namespace: str = NS, labels: dict | None = None):
    text = "---\n".join(docs) if docs else "apiVersion: v1\nkind: Namespace\nmetadata: {name: x}\n"
    return mesh_from_yaml(text).mtls_policy(namespace, CATALOG if labels is None else labels)


def test_no_policy_is_permissive():
    p = policy()
    assert p.mode == "PERMISSIVE" and p.for_port(3000) == "PERMISSIVE" and p.sources == ()


def test_mesh_wide_policy_applies_everywhere():
    p = policy(pa("default", "istio-system", "STRICT"))
    assert p.mode == "STRICT"
    assert policy(pa("default", "istio-system", "STRICT"), namespace="default", labels={}).mode == "STRICT"


def test_namespace_overrides_mesh_and_selector_overrides_namespace():
    mesh_wide = pa("default", "istio-system", "STRICT")
    ns_wide = pa("default", NS, "PERMISSIVE")
    workload = pa("catalog", NS, "DISABLE", selector={"app": "catalog"})
    assert policy(mesh_wide, ns_wide).mode == "PERMISSIVE"
    assert policy(mesh_wide, ns_wide, workload).mode == "DISABLE"
    # the selector policy does not reach other workloads of the namespace
    assert policy(mesh_wide, ns_wide, workload, labels={"app": "webapp"}).mode == "PERMISSIVE"
    assert policy(mesh_wide, ns_wide, workload).sources == ("istio-system/default", f"{NS}/default", f"{NS}/catalog")


def test_oldest_policy_wins_among_equals():
    older = pa("zzz-old", NS, "STRICT", created="2024-01-01T00:00:00Z")
    newer = pa("aaa-new", NS, "DISABLE", created="2025-06-01T00:00:00Z")
    assert policy(older, newer).mode == "STRICT"
    assert policy(newer, older).mode == "STRICT"  # document order does not matter
    # same age: by name
    a = pa("a", NS, "DISABLE", created="2024-01-01T00:00:00Z")
    b = pa("b", NS, "STRICT", created="2024-01-01T00:00:00Z")
    assert policy(b, a).mode == "DISABLE"
    # the same holds for selector policies
    wl_old = pa("w2", NS, "DISABLE", selector={"app": "catalog"}, created="2023-01-01T00:00:00Z")
    wl_new = pa("w1", NS, "STRICT", selector={"version": "v1"}, created="2024-01-01T00:00:00Z")
    assert policy(wl_new, wl_old).mode == "DISABLE"


def test_unset_inherits_from_the_level_above():
    mesh_wide = pa("default", "istio-system", "STRICT")
    assert policy(mesh_wide, pa("default", NS, "UNSET")).mode == "STRICT"
    assert policy(mesh_wide, pa("default", NS)).mode == "STRICT"  # no mtls block at all
    assert policy(mesh_wide, pa("catalog", NS, "UNSET", selector={"app": "catalog"})).mode == "STRICT"
    assert policy(pa("catalog", NS, "UNSET", selector={"app": "catalog"})).mode == "PERMISSIVE"


def test_port_level_mtls_only_with_selector():
    wl = pa("catalog", NS, "STRICT", selector={"app": "catalog"}, ports={3001: "PERMISSIVE", 3002: "UNSET", 3003: "DISABLE"})
    p = policy(wl)
    assert p.for_port(3000) == "STRICT"
    assert p.for_port(3001) == "PERMISSIVE"
    assert p.for_port(3002) == "STRICT"  # UNSET inherits the workload's mode
    assert p.for_port(3003) == "DISABLE"
    # without a selector, portLevelMtls is rejected (as Istio's CRD validation does) ...
    with pytest.raises(AssertionError, match="portLevelMtls requires selector"):
        objects_from_yaml(pa("default", NS, "STRICT", ports={3001: "DISABLE"}))
    # ... and the model would ignore it anyway, should such an object get through
    [ns_wide] = objects_from_yaml(pa("default", NS, "STRICT"))
    ns_wide = dataclasses.replace(ns_wide, spec={**ns_wide.spec, "portLevelMtls": {3001: {"mode": "DISABLE"}}})
    p = effective_policy([ns_wide], NS, CATALOG, "istio-system")
    assert p.mode == "STRICT" and p.for_port(3001) == "STRICT" and dict(p.port_modes) == {}


def test_port_level_unset_under_permissive_workload_inherits_mesh():
    mesh_wide = pa("default", "istio-system", "STRICT")
    wl = pa("catalog", NS, "UNSET", selector={"app": "catalog"}, ports={3001: "UNSET", 3002: "PERMISSIVE"})
    p = policy(mesh_wide, wl)
    assert p.mode == "STRICT" and p.for_port(3001) == "STRICT" and p.for_port(3002) == "PERMISSIVE"


def test_policies_in_other_namespaces_are_ignored():
    other = pa("default", "default", "STRICT")
    other_selector = pa("catalog", "default", "DISABLE", selector={"app": "catalog"})
    assert policy(other, other_selector).mode == "PERMISSIVE"


def test_root_namespace_policy_with_selector_is_not_mesh_wide():
    rooted = pa("catalog", "istio-system", "STRICT", selector={"app": "catalog"})
    assert policy(rooted).mode == "PERMISSIVE"
    # ... but it selects workloads of the root namespace itself
    assert policy(rooted, namespace="istio-system").mode == "STRICT"


@pytest.mark.parametrize("mode", ["STRICT", "PERMISSIVE", "DISABLE"])
def test_each_mode_passes_through(mode):
    assert policy(pa("default", NS, mode)).mode == mode
