"""RBAC as the API server applies it, for checking meshd's manifests against what meshd
does: the requests of a request log (what the stand-in API server received, or what a
recording client sent the real one: tests/support/kube_log.py; each needs a verb on a
resource, in a namespace or cluster-wide, sometimes on one named object) against the
rules of the ClusterRoles/Roles bound to meshd's ServiceAccount in deploy/kubernetes/.

    problems = rbac_mismatch(api, load_manifests(DEPLOY))   # [] when exact

Exact means both ways: every request is allowed (nothing meshd does would be Forbidden in
a real cluster), and every verb a rule grants was used (no privilege meshd does not need).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import yaml

from tests.support.kube_log import RequestLog


def load_manifests(directory: Path) -> list[dict]:
    docs = []
    for f in sorted(Path(directory).glob("*.yaml")):
        docs += [d for d in yaml.safe_load_all(f.read_text()) if d]
    return docs


@dataclass(frozen=True)
class Grant:
    namespace: str | None  # None: cluster-wide (a ClusterRole bound by a ClusterRoleBinding)
    group: str
    resource: str  # plural, or plural/subresource
    verb: str
    names: frozenset[str]  # empty: any object

    def allows(self, use: Use) -> bool:
        return (self.group == use.group and self.resource == use.resource and self.verb == use.verb
                and (self.namespace is None or self.namespace == use.namespace)
                and (not self.names or (use.name is not None and use.name in self.names)))


@dataclass(frozen=True)
class Use:
    namespace: str | None
    group: str
    resource: str
    verb: str
    name: str | None


def grants_for(docs: list[dict], sa_namespace: str, sa_name: str) -> list[Grant]:
    """The rules of every role bound to the ServiceAccount."""
    roles = {(d["kind"], d["metadata"].get("namespace"), d["metadata"]["name"]): d
             for d in docs if d.get("kind") in ("ClusterRole", "Role")}
    out = []
    for b in docs:
        if b.get("kind") not in ("ClusterRoleBinding", "RoleBinding"):
            continue
        if not any(s.get("kind") == "ServiceAccount" and s.get("name") == sa_name and s.get("namespace") == sa_namespace
                   for s in b.get("subjects") or []):
            continue
        ref = b["roleRef"]
        scope = None if b["kind"] == "ClusterRoleBinding" else b["metadata"]["namespace"]
        role = roles.get((ref["kind"], None if ref["kind"] == "ClusterRole" else scope, ref["name"]))
        assert role is not None, f"{b['kind']} {b['metadata']['name']} refers to a missing {ref['kind']} {ref['name']}"
        for rule in role.get("rules") or []:
            for group in rule.get("apiGroups") or []:
                for resource in rule.get("resources") or []:
                    for verb in rule.get("verbs") or []:
                        out.append(Grant(scope, group, resource, verb, frozenset(rule.get("resourceNames") or ())))
    return out


def uses(api: RequestLog) -> set[Use]:
    out = set()
    for r in list(api.requests):
        res = r.resource()
        if res is None or not r.verb:
            continue  # discovery: allowed to every authenticated user (system:discovery)
        group, plural, sub, name = res
        if r.verb in ("list", "watch", "create"):
            # Collections have no object name, unless a list/watch selects one by
            # fieldSelector metadata.name: the API server authorizes that against resourceNames.
            selected = r.query.get("fieldSelector", "")
            name = selected[len("metadata.name="):] if r.verb != "create" and selected.startswith("metadata.name=") \
                and "," not in selected else None
        out.add(Use(r.namespace, group, f"{plural}/{sub}" if sub else plural, r.verb, name))
    return out


def rbac_mismatch(api: RequestLog, docs: list[dict], sa_namespace: str = "istio-system",
                  sa_name: str = "meshd") -> list[str]:
    grants = grants_for(docs, sa_namespace, sa_name)
    used = uses(api)
    problems = []
    for u in sorted(used, key=str):
        if not any(g.allows(u) for g in grants):
            problems.append(f"forbidden: {u.verb} {u.group or 'core'}/{u.resource}"
                            f"{' ' + u.name if u.name else ''} in {u.namespace or 'the cluster'}")
    for g in grants:
        if not any(g.allows(u) for u in used):
            problems.append(f"never used: {g.verb} {g.group or 'core'}/{g.resource}"
                            f"{' ' + ','.join(sorted(g.names)) if g.names else ''} in {g.namespace or 'the cluster'}")
    return problems
