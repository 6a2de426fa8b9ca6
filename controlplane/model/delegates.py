"""Delegate VirtualServices: a root VirtualService's `http[].delegate` pulls in the `http`
rules of another VirtualService (one without `hosts`), merged with the root rule the way
istiod merges them (mergeVirtualServicesIfNeeded, read not copied):

- every match of a delegate rule must fit inside some match of the root rule (a narrower
  or equal uri, the same method/scheme/authority, no contradicting header, query, port,
  source or gateway condition); each fitting pair becomes one merged match, and a delegate
  rule that fits no root match is dropped;
- the delegate rule keeps its own actions and inherits from the root rule what it leaves
  unset (rewrite, directResponse, timeout, retries, fault, mirror(s), corsPolicy, headers);
- a delegate must be exported to the root's namespace; delegates never bind on their own
  and do not delegate further.
The merged root replaces the original in the mesh snapshot; delegates are left out.
Short host names in a delegate resolve in the delegate's namespace.
"""
from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Iterable

import structlog

from ..config.objects import ConfigObject
from ..config.types.common import StringMatch
from ..config.types.virtualservice import Destination, HTTPMatchRequest, HTTPRoute, VirtualService
from ..names import resolve_host

log = structlog.get_logger("meshd.model")

# What a delegate rule inherits from the root rule when it leaves it unset.
_INHERITED = ("rewrite", "direct_response", "timeout", "retries", "fault", "mirror", "mirror_percent",
              "mirror_percentage", "cors_policy", "headers")


def _exported_to(vs: ConfigObject, namespace: str) -> bool:
    export = vs.typed.export_to
    if not export or "*" in export:
        return True
    return namespace in export or ("." in export and vs.namespace == namespace)


def _string_conflict(root: StringMatch, leaf: StringMatch) -> bool:
    if root.regex:
        return bool(leaf.regex or leaf.prefix or leaf.exact)
    if leaf.regex:
        return bool(root.prefix or root.exact)
    if root.exact:
        return bool(leaf.prefix) or leaf.exact != root.exact
    if root.prefix:
        if leaf.prefix:
            return not leaf.prefix.startswith(root.prefix)
        if leaf.exact:
            return not leaf.exact.startswith(root.prefix)
    return True


_STRINGS = ("uri", "scheme", "method", "authority")
_STRING_MAPS = ("headers", "without_headers", "query_params")


def has_conflict(root: HTTPMatchRequest, leaf: HTTPMatchRequest) -> bool:
    for key in _STRINGS:
        r, lf = getattr(root, key), getattr(leaf, key)
        if r is not None and lf is not None and _string_conflict(r, lf):
            return True
    for key in _STRING_MAPS:
        r = getattr(root, key)
        for k, v in getattr(leaf, key).items():
            if k in r and _string_conflict(r[k], v):
                return True
    if bool(root.ignore_uri_case) != bool(leaf.ignore_uri_case):
        return True
    if root.port and leaf.port and root.port != leaf.port:
        return True
    if root.source_namespace and leaf.source_namespace != root.source_namespace:
        return True
    for k, v in leaf.source_labels.items():
        if k in root.source_labels and root.source_labels[k] != v:
            return True
    if root.gateways and leaf.gateways and not set(leaf.gateways) <= set(root.gateways):
        return True
    return False


def merge_match(root: HTTPMatchRequest, leaf: HTTPMatchRequest) -> HTTPMatchRequest:
    name = leaf.name
    if root.name:
        name = f"{root.name}-{leaf.name}" if leaf.name else root.name
    return dataclasses.replace(
        leaf,
        name=name,
        uri=leaf.uri if leaf.uri is not None else root.uri,
        scheme=leaf.scheme if leaf.scheme is not None else root.scheme,
        method=leaf.method if leaf.method is not None else root.method,
        authority=leaf.authority if leaf.authority is not None else root.authority,
        headers={**root.headers, **leaf.headers},
        without_headers={**root.without_headers, **leaf.without_headers},
        query_params={**root.query_params, **leaf.query_params},
        source_labels={**root.source_labels, **leaf.source_labels},
        port=leaf.port or root.port,
        source_namespace=leaf.source_namespace or root.source_namespace,
        gateways=leaf.gateways or root.gateways,
        ignore_uri_case=leaf.ignore_uri_case if leaf.ignore_uri_case is not None else root.ignore_uri_case,
    )


def merge_matches(root: tuple[HTTPMatchRequest, ...],
                  leaf: tuple[HTTPMatchRequest, ...]) -> tuple[HTTPMatchRequest, ...] | None:
    """The merged match list; None when a delegate match fits no root match."""
    if not root:
        return leaf
    if not leaf:
        return root
    out = []
    for sub in leaf:
        found = False
        for r in root:
            if has_conflict(r, sub):
                continue
            out.append(merge_match(r, sub))
            found = True
        if not found:
            return None
    return tuple(out) or None


def resolve_gateway_name(ref: str, namespace: str) -> str:
    """A `gateways` entry as "namespace/name" (Istio's resolveGatewayName)."""
    ref = ref.strip()
    if ref == "mesh":
        return ref
    if "/" in ref:
        ns, _, name = ref.partition("/")
        return f"{namespace if ns == '.' else ns}/{name}"
    if "." in ref:  # legacy "name.namespace.svc.cluster.local"
        name, ns = ref.split(".")[:2]
        return f"{ns}/{name}"
    return f"{namespace}/{ref}"


def _resolved(rule: HTTPRoute, namespace: str) -> HTTPRoute:
    """A delegate rule with its short host names and gateway references made absolute
    (they belong to the delegate's namespace, not the root's)."""

    def dest(d: Destination) -> Destination:
        return dataclasses.replace(d, host=resolve_host(d.host, namespace)) if d.host else d

    return dataclasses.replace(
        rule,
        route=tuple(dataclasses.replace(r, destination=dest(r.destination)) for r in rule.route),
        mirror=dest(rule.mirror) if rule.mirror is not None else None,
        mirrors=tuple(dataclasses.replace(m, destination=dest(m.destination)) for m in rule.mirrors),
        match=tuple(dataclasses.replace(m, gateways=tuple(resolve_gateway_name(g, namespace) for g in m.gateways))
                    if m.gateways else m for m in rule.match),
    )


def merge_route(root: HTTPRoute, delegate: HTTPRoute) -> HTTPRoute | None:
    matches = merge_matches(root.match, delegate.match)
    if matches is None:
        return None
    name = delegate.name
    if root.name:
        name = f"{root.name}-{delegate.name}" if delegate.name else root.name
    inherited = {key: getattr(root, key) for key in _INHERITED
                 if getattr(delegate, key) is None and getattr(root, key) is not None}
    if not delegate.mirrors and root.mirrors:
        inherited["mirrors"] = root.mirrors
    return dataclasses.replace(delegate, delegate=None, match=matches or delegate.match, name=name, **inherited)


def resolve_delegates(virtual_services: Iterable[ConfigObject]) -> tuple[ConfigObject, ...]:
    """The VirtualServices in force: roots with their delegates merged in, delegates
    (VirtualServices without hosts) left out."""
    vss = list(virtual_services)
    delegates = {(vs.namespace, vs.name): vs for vs in vss if not vs.typed.hosts}
    out = []
    for vs in vss:
        if (vs.namespace, vs.name) in delegates:
            continue
        spec: VirtualService = vs.typed
        if not any(rule.delegate is not None for rule in spec.http):
            out.append(vs)
            continue
        merged_rules: list[HTTPRoute] = []
        generations = [vs.generation]
        for rule in spec.http:
            ref = rule.delegate
            if ref is None:
                merged_rules.append(rule)
                continue
            key = (ref.namespace or vs.namespace, ref.name)
            target = delegates.get(key)
            if target is None or not _exported_to(target, vs.namespace):
                log.warning("delegate virtual service not found", virtual_service=f"{vs.namespace}/{vs.name}",
                            delegate=f"{key[0]}/{key[1]}",
                            reason="missing" if target is None else f"not exported to {vs.namespace}")
                continue  # istiod drops just this rule
            generations.append(target.generation)
            for sub in target.typed.http:
                if sub.delegate is not None:
                    continue  # one level of delegation only
                merged = merge_route(rule, _resolved(sub, target.namespace))
                if merged is not None:
                    merged_rules.append(merged)
        generation = hashlib.sha256("+".join(generations).encode()).hexdigest()[:16]
        out.append(vs.derived(dataclasses.replace(spec, http=tuple(merged_rules)), generation=generation))
    return tuple(out)
