"""AuthorizationPolicy analyzers.

`auth.AuthorizationPoliciesAnalyzer` is Istio's (pkg/config/analysis/analyzers/authz,
read not copied), with its codes and wording:
- IST0127 NoMatchingWorkloadsFound: a policy in the root namespace whose selector matches
  no in-mesh pod anywhere; a namespace-wide policy in a namespace without in-mesh pods; a
  policy whose selector matches no in-mesh pod of its namespace;
- IST0101 ReferencedResourceNotFound: each `from.source.namespaces` / `notNamespaces`
  entry (`*`, `prefix*`, `*suffix` or a name, compared without case) that matches no
  Namespace.
A pod is in the mesh as Istio decides it: an `istio-proxy` container with an image, else
the `sidecar.istio.io/inject` label, else that annotation, else its Namespace's
`istio-injection=enabled`; or ambient (`ambient.istio.io/redirection: enabled`).

Where meshd differs: when the input has no Namespace object at all (meshd's config
directories rarely have any), the namespaces are those its objects live in, plus
`default` and the root namespace, rather than none; the line of a `notNamespaces` entry
is that entry's (Istio points into `namespaces`).

Two checks are meshd's own (Istio has no message for them):
- `meshd.AuthorizationPrincipalAnalyzer` (MSH0003): a principal
  `<trust domain>/ns/<ns>/sa/<sa>` whose trust domain is not the mesh's, whose namespace
  does not exist, or whose service account is not among the ones known in its namespace
  (ServiceAccount objects and the workloads' serviceAccountName; only checked when the
  input describes that namespace's identities at all);
- `meshd.CustomProviderAnalyzer` (MSH0004): a CUSTOM policy whose provider is not an
  ext_authz provider (`envoyExtAuthzHttp`, `envoyExtAuthzGrpc`) of the mesh config's
  `extensionProviders`: the proxies deny the requests its rules match.
"""
from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from typing import Any

from ...model.meshconfig import EXT_AUTHZ_KINDS
from .. import messages as msg
from ..context import AUTHORIZATION_POLICY, DEPLOYMENT, NAMESPACE, POD, SERVICE_ACCOUNT, Context
from ..resources import Resource
from ..util import selector_matches, selector_string

ISTIO_PROXY = "istio-proxy"
INJECT = "sidecar.istio.io/inject"
INJECTION_LABEL = "istio-injection"
AMBIENT_REDIRECTION = "ambient.istio.io/redirection"
# Namespaces every Kubernetes cluster has: a principal naming one is never reported.
BUILTIN_NAMESPACES = frozenset({"default", "kube-system", "kube-public", "kube-node-lease"})
PRINCIPAL = re.compile(r"^(?P<td>[^/]+)/ns/(?P<ns>[^/]+)/sa/(?P<sa>[^/]+)$")


def _as_list(v: Any) -> list:
    return v if isinstance(v, list) else []


def _as_dict(v: Any) -> Mapping[str, Any]:
    return v if isinstance(v, dict) else {}


def _sources(r: Resource) -> Iterator[tuple[int, int, Mapping[str, Any]]]:
    """(rule index, from index, source) of every `rules[].from[].source`."""
    for i, rule in enumerate(_as_list(r.spec.get("rules"))):
        for j, frm in enumerate(_as_list(_as_dict(rule).get("from"))):
            yield i, j, _as_dict(_as_dict(frm).get("source"))


def _strings(v: Any) -> list[str]:
    return [str(x) for x in _as_list(v)]


# --- which pods are in the mesh (Istio's util.PodInMesh / PodInAmbientMode) ----------------

def _has_istio_proxy(pod: Resource) -> bool:
    spec = pod.spec
    for c in _as_list(spec.get("containers")) + _as_list(spec.get("initContainers")):
        c = _as_dict(c)
        if c.get("name") == ISTIO_PROXY:
            return bool(c.get("image"))  # the first istio-proxy decides, as in Istio
    return False


def pod_in_mesh(pod: Resource, namespaces: Mapping[str, Resource]) -> bool:
    """Istio's inMesh: a sidecar is there or will be injected."""
    if _has_istio_proxy(pod):
        return True
    for marks in (pod.labels, pod.annotations):
        if INJECT in marks:
            return marks[INJECT] == "true"
    ns = namespaces.get(pod.namespace)
    return ns is not None and ns.labels.get(INJECTION_LABEL) == "enabled"


def _in_mesh(pod: Resource, namespaces: Mapping[str, Resource]) -> bool:
    """A sidecar (pod_in_mesh) or ambient pod: either kind counts as a workload."""
    return pod_in_mesh(pod, namespaces) or pod.annotations.get(AMBIENT_REDIRECTION) == "enabled"


def mesh_pod_labels(ctx: Context) -> dict[str, list[dict[str, str]]]:
    """namespace -> labels of its in-mesh pods (a namespace with pods none of which is in
    the mesh maps to an empty list)."""
    namespaces = {n.name: n for n in ctx.all(NAMESPACE)}
    out: dict[str, list[dict[str, str]]] = {}
    for pod in ctx.for_each(POD):
        bucket = out.setdefault(pod.namespace, [])
        if _in_mesh(pod, namespaces):
            bucket.append(pod.labels)
    return out


def known_namespaces(ctx: Context) -> list[str]:
    """The Namespace objects; without any, the namespaces the input's objects live in."""
    declared = [n.name for n in ctx.all(NAMESPACE)]
    if declared:
        return declared
    implied = {r.namespace for r in ctx.all_resources() if r.namespace}
    return sorted(implied | {"default", ctx.mesh_config.root_namespace})


def namespace_match(ns: str, expr: str) -> bool:
    """Istio's namespaceMatch: `*`, `*suffix`, `prefix*`, else equal ignoring case."""
    if expr == "*":
        return True
    if expr.startswith("*"):
        return ns.endswith(expr[1:])
    if expr.endswith("*"):
        return ns.startswith(expr[:-1])
    return ns.lower() == expr.lower()


# --- Istio's analyzer ----------------------------------------------------------------------

class AuthorizationPoliciesAnalyzer:
    name = "auth.AuthorizationPoliciesAnalyzer"
    description = "Checks the validity of authorization policies"

    def analyze(self, ctx: Context) -> None:
        pods = mesh_pod_labels(ctx)
        namespaces = known_namespaces(ctx)
        root = ctx.mesh_config.root_namespace
        for r in ctx.for_each(AUTHORIZATION_POLICY):
            self._no_matching_workloads(ctx, r, pods, root)
            self._namespace_not_found(ctx, r, namespaces)

    @staticmethod
    def _no_matching_workloads(ctx: Context, r: Resource, pods: Mapping[str, list], root: str) -> None:
        has_selector = isinstance(r.spec.get("selector"), dict)
        labels = {str(k): str(v) for k, v in _as_dict(_as_dict(r.spec.get("selector")).get("matchLabels")).items()}
        if r.namespace == root:
            # Mesh-wide; with a selector, some in-mesh pod anywhere must match it.
            if has_selector and not any(selector_matches(labels, p) for ps in pods.values() for p in ps):
                ctx.report(msg.new(msg.NO_MATCHING_WORKLOADS, r, selector_string(labels)))
            return
        if not has_selector:
            if not pods.get(r.namespace):
                ctx.report(msg.new(msg.NO_MATCHING_WORKLOADS, r, ""))
            return
        if not any(selector_matches(labels, p) for p in pods.get(r.namespace, ())):
            ctx.report(msg.new(msg.NO_MATCHING_WORKLOADS, r, selector_string(labels)))

    @staticmethod
    def _namespace_not_found(ctx: Context, r: Resource, namespaces: list[str]) -> None:
        for i, j, source in _sources(r):
            for field in ("namespaces", "notNamespaces"):
                for k, expr in enumerate(_strings(source.get(field))):
                    if not any(namespace_match(ns, expr) for ns in namespaces):
                        line = r.line_of("spec", "rules", i, "from", j, "source", field, k)
                        ctx.report(msg.new(msg.REFERENCED_RESOURCE_NOT_FOUND, r, "namespace", expr, line=line))


# --- meshd's own ---------------------------------------------------------------------------

def _service_accounts(ctx: Context) -> dict[str, set[str]]:
    """namespace -> the service accounts the input shows there (objects and workloads')."""
    out: dict[str, set[str]] = {}
    for sa in ctx.for_each(SERVICE_ACCOUNT):
        out.setdefault(sa.namespace, set()).add(sa.name)
    for pod in ctx.for_each(POD):
        if pod.location is not None:  # not a stand-in for a Service's workload
            out.setdefault(pod.namespace, set()).add(str(pod.spec.get("serviceAccountName") or "default"))
    for dep in ctx.for_each(DEPLOYMENT):
        spec = _as_dict(_as_dict(dep.spec.get("template")).get("spec"))
        out.setdefault(dep.namespace, set()).add(str(spec.get("serviceAccountName") or "default"))
    for accounts in out.values():
        accounts.add("default")  # every namespace has one
    return out


class AuthorizationPrincipalAnalyzer:
    name = "meshd.AuthorizationPrincipalAnalyzer"
    description = "Checks that AuthorizationPolicy principals name the mesh's trust domain and existing identities"

    def analyze(self, ctx: Context) -> None:
        mc = ctx.mesh_config
        domains = {mc.trust_domain, *mc.trust_domain_aliases}
        namespaces = set(known_namespaces(ctx)) | BUILTIN_NAMESPACES | {mc.root_namespace}
        accounts = _service_accounts(ctx)
        for r in ctx.for_each(AUTHORIZATION_POLICY):
            for i, j, source in _sources(r):
                for field in ("principals", "notPrincipals"):
                    for k, principal in enumerate(_strings(source.get(field))):
                        problem = self._problem(principal, domains, namespaces, accounts)
                        if problem is not None:
                            line = r.line_of("spec", "rules", i, "from", j, "source", field, k)
                            ctx.report(msg.new(msg.PRINCIPAL_NOT_FOUND, r, principal, *problem, line=line))

    @staticmethod
    def _problem(principal: str, domains: set[str], namespaces: set[str],
                 accounts: Mapping[str, set[str]]) -> tuple[str, str] | None:
        m = PRINCIPAL.match(principal)
        if m is None or "*" in principal:
            return None  # a pattern, or not a SPIFFE identity: nothing to look up
        if m["td"] not in domains:
            return "trust domain", m["td"]
        if m["ns"] not in namespaces:
            return "namespace", m["ns"]
        known = accounts.get(m["ns"])
        if known is not None and m["sa"] not in known:
            return "service account", f"{m['ns']}/{m['sa']}"
        return None


class CustomProviderAnalyzer:
    name = "meshd.CustomProviderAnalyzer"
    description = "Checks that CUSTOM AuthorizationPolicies name an ext_authz provider of the mesh config"

    def analyze(self, ctx: Context) -> None:
        mc = ctx.mesh_config
        ext_authz = [p.name for p in mc.extension_providers if p.kind in EXT_AUTHZ_KINDS]
        for r in ctx.for_each(AUTHORIZATION_POLICY):
            if r.spec.get("action") != "CUSTOM":
                continue
            name = str(_as_dict(r.spec.get("provider")).get("name") or "")
            provider = mc.provider(name)
            if provider is not None and provider.kind in EXT_AUTHZ_KINDS:
                continue
            if provider is not None:
                why = f"is a {provider.kind} provider, not {' or '.join(EXT_AUTHZ_KINDS)}"
            elif ext_authz:
                why = "is not among the mesh config's ext_authz providers " + ", ".join(map(msg.go_quote, ext_authz))
            else:
                why = "is not defined: the mesh config has no ext_authz provider (analyze --mesh-config FILE)"
            ctx.report(msg.new(msg.UNKNOWN_EXTENSION_PROVIDER, r, name, why, line=r.line_of("spec", "provider", "name")))


__all__ = ["AuthorizationPoliciesAnalyzer", "AuthorizationPrincipalAnalyzer", "CustomProviderAnalyzer",
           "known_namespaces", "mesh_pod_labels", "namespace_match", "pod_in_mesh"]
