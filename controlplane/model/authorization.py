"""AuthorizationPolicy, typed, and which policies apply to a workload.

Selection follows istiod (pilot/pkg/model/authorization.go and policyattachment.go, read,
not copied):

- policies are looked up in the root namespace (mesh-wide) and the workload's namespace,
  each namespace's in creation order (then name, then namespace: Go's zero time, i.e. an
  object without `creationTimestamp`, sorts first);
- a workload that is not a Kubernetes Gateway (no `gateway.networking.k8s.io/gateway-name`
  label) is selected by `selector.matchLabels` (none: every workload of the namespace, or
  of the mesh for the root namespace); a policy with `targetRef(s)` never applies to it;
- a Kubernetes Gateway's workload is selected by a `targetRef(s)` of group
  `gateway.networking.k8s.io`, kind `Gateway` and its gateway's name, in its own namespace;
  a policy without targetRefs falls back to the selector (istiod's default
  ENABLE_SELECTOR_BASED_K8S_GATEWAY_POLICY);
- `targetRef` kind `Service` binds only waypoint proxies (ambient), which meshd does not run
  (`is_waypoint` keeps the rule for completeness); builder.problems() reports such policies.

A policy whose spec cannot be read is kept, with its `errors`: the builder turns it into a
filter that fails closed (never open), and problems() names the object and field.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from ..config.objects import ConfigObject
from ..names import GATEWAY_API_GROUP, GATEWAY_NAME_LABEL
from .services import labels_match

ALLOW, DENY, AUDIT, CUSTOM = "ALLOW", "DENY", "AUDIT", "CUSTOM"
ACTIONS = (ALLOW, DENY, AUDIT, CUSTOM)

DRY_RUN_ANNOTATION = "istio.io/dry-run"

# Go's strconv.ParseBool, which istiod uses for the dry-run annotation.
_TRUE = frozenset({"1", "t", "T", "TRUE", "true", "True"})
_FALSE = frozenset({"0", "f", "F", "FALSE", "false", "False"})

# spec.rules[].from[].source fields, in the order of Istio's Source message.
SOURCE_FIELDS = (
    "principals", "notPrincipals", "requestPrincipals", "notRequestPrincipals",
    "namespaces", "notNamespaces", "serviceAccounts", "notServiceAccounts",
    "ipBlocks", "notIpBlocks", "remoteIpBlocks", "notRemoteIpBlocks",
    "trustDomains", "notTrustDomains",
)
OPERATION_FIELDS = ("hosts", "notHosts", "ports", "notPorts", "methods", "notMethods", "paths", "notPaths")
SPEC_FIELDS = frozenset({"selector", "targetRef", "targetRefs", "rules", "action", "provider"})


@dataclass(frozen=True)
class Source:
    principals: tuple[str, ...] = ()
    not_principals: tuple[str, ...] = ()
    request_principals: tuple[str, ...] = ()
    not_request_principals: tuple[str, ...] = ()
    namespaces: tuple[str, ...] = ()
    not_namespaces: tuple[str, ...] = ()
    service_accounts: tuple[str, ...] = ()
    not_service_accounts: tuple[str, ...] = ()
    ip_blocks: tuple[str, ...] = ()
    not_ip_blocks: tuple[str, ...] = ()
    remote_ip_blocks: tuple[str, ...] = ()
    not_remote_ip_blocks: tuple[str, ...] = ()
    trust_domains: tuple[str, ...] = ()
    not_trust_domains: tuple[str, ...] = ()


@dataclass(frozen=True)
class Operation:
    hosts: tuple[str, ...] = ()
    not_hosts: tuple[str, ...] = ()
    ports: tuple[str, ...] = ()
    not_ports: tuple[str, ...] = ()
    methods: tuple[str, ...] = ()
    not_methods: tuple[str, ...] = ()
    paths: tuple[str, ...] = ()
    not_paths: tuple[str, ...] = ()


@dataclass(frozen=True)
class Condition:
    key: str
    values: tuple[str, ...] = ()
    not_values: tuple[str, ...] = ()


@dataclass(frozen=True)
class Rule:
    # `from` entries; a `from` without `source` is an empty Source (matches any source).
    sources: tuple[Source, ...] = ()
    operations: tuple[Operation, ...] = ()
    conditions: tuple[Condition, ...] = ()


@dataclass(frozen=True)
class TargetRef:
    group: str
    kind: str
    name: str
    namespace: str = ""


@dataclass(frozen=True)
class AuthzPolicy:
    namespace: str
    name: str
    action: str  # ALLOW | DENY | AUDIT | CUSTOM (as written when unknown: see errors)
    provider: str  # CUSTOM: spec.provider.name, else ""
    rules: tuple[Rule, ...]
    dry_run: bool
    selector: Mapping[str, str] | None = None  # None: no selector (namespace- or mesh-wide)
    target_refs: tuple[TargetRef, ...] = ()
    created: str = ""  # metadata.creationTimestamp
    generation: str = ""  # content hash of the object: changes exactly when it does
    # "field: reason" for each part of the spec that could not be read; a policy with
    # errors is built to fail closed (builder.py).
    errors: tuple[str, ...] = ()
    # "field: reason" for what is read but worth reporting (istiod accepts it too).
    warnings: tuple[str, ...] = ()

    @property
    def ident(self) -> str:
        """`name.namespace`, as istioctl and istiod's logs name a policy."""
        return f"{self.name}.{self.namespace}"

    def order_key(self) -> tuple[Any, ...]:
        # istiod's sortConfigByCreationTime: time, then name, then namespace; Go's zero
        # time (no timestamp) is the earliest.
        return (self.created != "", self.created, self.name, self.namespace)


class _Reader:
    """Reads a spec defensively, collecting "field: reason" instead of raising."""

    def __init__(self) -> None:
        self.errors: list[str] = []

    def error(self, where: str, reason: str) -> None:
        self.errors.append(f"{where}: {reason}")

    def strings(self, value: Any, where: str) -> tuple[str, ...]:
        if value is None:
            return ()
        if not isinstance(value, list):
            self.error(where, f"must be a list of strings, got {type(value).__name__}")
            return ()
        out = []
        for i, v in enumerate(value):
            if isinstance(v, bool) or not isinstance(v, (str, int)):
                self.error(f"{where}[{i}]", f"must be a string, got {type(v).__name__}")
                continue
            out.append(str(v))
        return tuple(out)

    def mapping(self, value: Any, where: str) -> Mapping[str, Any]:
        if value is None:
            return {}
        if not isinstance(value, Mapping):
            self.error(where, f"must be a mapping, got {type(value).__name__}")
            return {}
        return value

    def unknown(self, data: Mapping[str, Any], known: Iterable[str], where: str) -> None:
        allowed = set(known)
        for k in data:
            if k not in allowed:
                self.error(f"{where}.{k}" if where else str(k), "unknown field")


def _snake(name: str) -> str:
    return "".join("_" + c.lower() if c.isupper() else c for c in name)


def _source(r: _Reader, data: Any, where: str) -> Source:
    data = r.mapping(data, where)
    r.unknown(data, SOURCE_FIELDS, where)
    return Source(**{_snake(f): r.strings(data.get(f), f"{where}.{f}") for f in SOURCE_FIELDS})


def _operation(r: _Reader, data: Any, where: str) -> Operation:
    data = r.mapping(data, where)
    r.unknown(data, OPERATION_FIELDS, where)
    return Operation(**{_snake(f): r.strings(data.get(f), f"{where}.{f}") for f in OPERATION_FIELDS})


def _rule(r: _Reader, data: Any, where: str) -> Rule:
    data = r.mapping(data, where)
    r.unknown(data, ("from", "to", "when"), where)
    sources: list[Source] = []
    operations: list[Operation] = []
    conditions: list[Condition] = []
    for key in ("from", "to"):
        items = data.get(key)
        if items is None:
            continue
        if not isinstance(items, list):
            r.error(f"{where}.{key}", "must be a list")
            continue
        inner = "source" if key == "from" else "operation"
        for i, item in enumerate(items):
            item_where = f"{where}.{key}[{i}]"
            item = r.mapping(item, item_where)
            r.unknown(item, (inner,), item_where)
            if key == "from":
                sources.append(_source(r, item.get(inner), f"{item_where}.{inner}"))
            else:
                operations.append(_operation(r, item.get(inner), f"{item_where}.{inner}"))
    when = data.get("when")
    if when is not None and not isinstance(when, list):
        r.error(f"{where}.when", "must be a list")
        when = None
    for i, item in enumerate(when or []):
        item_where = f"{where}.when[{i}]"
        item = r.mapping(item, item_where)
        r.unknown(item, ("key", "values", "notValues"), item_where)
        name = item.get("key")
        if not isinstance(name, str) or not name:
            r.error(f"{item_where}.key", "Required value")
            continue
        conditions.append(Condition(name, r.strings(item.get("values"), f"{item_where}.values"),
                                    r.strings(item.get("notValues"), f"{item_where}.notValues")))
    return Rule(tuple(sources), tuple(operations), tuple(conditions))


def _target_ref(r: _Reader, data: Any, where: str) -> TargetRef | None:
    data = r.mapping(data, where)
    r.unknown(data, ("group", "kind", "name", "namespace"), where)
    kind, name = data.get("kind"), data.get("name")
    if not isinstance(kind, str) or not kind:
        r.error(f"{where}.kind", "Required value")
        return None
    if not isinstance(name, str) or not name:
        r.error(f"{where}.name", "Required value")
        return None
    return TargetRef(str(data.get("group") or ""), kind, name, str(data.get("namespace") or ""))


def parse_dry_run(value: str | None) -> tuple[bool, str | None]:
    """The `istio.io/dry-run` annotation as istiod reads it (strconv.ParseBool): an
    unreadable value counts as false, with the reason."""
    if value is None:
        return False, None
    if value in _TRUE:
        return True, None
    if value in _FALSE:
        return False, None
    return False, f"invalid boolean {value!r}; the policy is enforced (not dry-run)"


def authz_policy(obj: ConfigObject) -> AuthzPolicy:
    r = _Reader()
    spec = r.mapping(obj.spec, "spec")
    r.unknown(spec, SPEC_FIELDS, "spec")
    action = spec.get("action") or ALLOW
    if action not in ACTIONS:
        r.error("spec.action", f"unsupported action {action!r} (supported: {', '.join(ACTIONS)})")
        action = str(action)
    provider = ""
    if "provider" in spec:
        p = r.mapping(spec.get("provider"), "spec.provider")
        r.unknown(p, ("name",), "spec.provider")
        provider = str(p.get("name") or "")
    if action == CUSTOM and not provider:
        r.error("spec.provider.name", "Required value for action CUSTOM")
    warnings = []
    if action != CUSTOM and "provider" in spec:
        warnings.append(f"spec.provider: ignored: only action CUSTOM uses a provider, not {action}")
    selector = None
    if spec.get("selector") is not None:
        sel = r.mapping(spec.get("selector"), "spec.selector")
        r.unknown(sel, ("matchLabels",), "spec.selector")
        labels = r.mapping(sel.get("matchLabels"), "spec.selector.matchLabels")
        selector = {str(k): str(v) for k, v in labels.items()}
    refs: list[TargetRef] = []
    raw_refs = spec.get("targetRefs")
    if raw_refs is not None and not isinstance(raw_refs, list):
        r.error("spec.targetRefs", "must be a list")
        raw_refs = None
    for i, raw in enumerate(raw_refs or []):
        ref = _target_ref(r, raw, f"spec.targetRefs[{i}]")
        if ref is not None:
            refs.append(ref)
    if not refs and spec.get("targetRef") is not None:  # the legacy single form
        ref = _target_ref(r, spec.get("targetRef"), "spec.targetRef")
        if ref is not None:
            refs.append(ref)
    rules = []
    raw_rules = spec.get("rules")
    if raw_rules is not None and not isinstance(raw_rules, list):
        r.error("spec.rules", "must be a list")
        raw_rules = None
    for i, raw in enumerate(raw_rules or []):
        rules.append(_rule(r, raw, f"spec.rules[{i}]"))
    dry_run, dry_run_error = parse_dry_run(obj.annotations.get(DRY_RUN_ANNOTATION))
    if dry_run_error:
        warnings.append(f"metadata.annotations[{DRY_RUN_ANNOTATION}]: {dry_run_error}")
    return AuthzPolicy(
        namespace=obj.namespace, name=obj.name, action=action, provider=provider, rules=tuple(rules),
        dry_run=dry_run, selector=selector, target_refs=tuple(refs),
        created=str(obj.extra.get("creationTimestamp") or ""), generation=obj.generation,
        errors=tuple(r.errors), warnings=tuple(warnings),
    )


@dataclass(frozen=True)
class WorkloadPolicies:
    """The policies that apply to one workload, by action, each in istiod's order (root
    namespace first, then the workload's namespace; creation order within each).
    `invalid` holds selected policies with an unknown action: built to deny."""

    custom: tuple[AuthzPolicy, ...] = ()
    deny: tuple[AuthzPolicy, ...] = ()
    allow: tuple[AuthzPolicy, ...] = ()
    audit: tuple[AuthzPolicy, ...] = ()
    invalid: tuple[AuthzPolicy, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.custom or self.deny or self.allow or self.audit or self.invalid)

    def all(self) -> tuple[AuthzPolicy, ...]:
        return self.custom + self.deny + self.allow + self.audit + self.invalid

    def key(self) -> tuple[Any, ...]:
        """A hashable identity of the selection: (namespace, name, generation) per bucket."""
        return tuple(tuple((p.namespace, p.name, p.generation) for p in bucket)
                     for bucket in (self.custom, self.deny, self.allow, self.audit, self.invalid))


NONE = WorkloadPolicies()


def _canonical_group(group: str) -> str:
    return group or "core"


def _attaches(policy: AuthzPolicy, namespace: str, labels: Mapping[str, str], gateway_name: str | None,
              service_names: frozenset[str], is_waypoint: bool) -> bool:
    if gateway_name is None and not is_waypoint:
        if policy.target_refs:
            return False
        return policy.selector is None or labels_match(policy.selector, labels)
    if not policy.target_refs:
        # Gateways fall back to the selector; waypoints never use it.
        return not is_waypoint and (policy.selector is None or labels_match(policy.selector, labels))
    for ref in policy.target_refs:
        if is_waypoint and ref.kind == "Service" and _canonical_group(ref.group) == "core":
            if ref.name in service_names and policy.namespace == namespace:
                return True
        if policy.namespace != namespace or ref.namespace not in ("", namespace):
            continue
        if ref.kind == "Gateway" and ref.group == GATEWAY_API_GROUP and ref.name == gateway_name:
            return True
    return False


def policies_for(policies: Iterable[AuthzPolicy], namespace: str, labels: Mapping[str, str], root_namespace: str,
                 *, service_names: Iterable[str] = (), gateway_names: Iterable[str] = (),
                 is_waypoint: bool = False) -> WorkloadPolicies:
    """The policies that apply to a workload in `namespace` with `labels`.

    `gateway_names`: the Kubernetes Gateway this proxy implements (from the
    `gateway.networking.k8s.io/gateway-name` label, which is read from `labels` too);
    `service_names`: the Services of `namespace` that select the workload (used for
    targetRef kind Service, which istiod binds only on waypoints)."""
    names = tuple(gateway_names)
    gateway_name = names[0] if names else labels.get(GATEWAY_NAME_LABEL)
    services = frozenset(service_names)
    lookup = [root_namespace] if root_namespace else []
    if namespace not in lookup:
        lookup.append(namespace)
    by_ns: dict[str, list[AuthzPolicy]] = {ns: [] for ns in lookup}
    for p in policies:
        if p.namespace in by_ns:
            by_ns[p.namespace].append(p)
    buckets: dict[str, list[AuthzPolicy]] = {CUSTOM: [], DENY: [], ALLOW: [], AUDIT: [], "": []}
    for ns in lookup:
        for p in sorted(by_ns[ns], key=AuthzPolicy.order_key):
            if _attaches(p, namespace, labels, gateway_name, services, is_waypoint):
                buckets[p.action if p.action in ACTIONS else ""].append(p)
    return WorkloadPolicies(custom=tuple(buckets[CUSTOM]), deny=tuple(buckets[DENY]), allow=tuple(buckets[ALLOW]),
                            audit=tuple(buckets[AUDIT]), invalid=tuple(buckets[""]))
