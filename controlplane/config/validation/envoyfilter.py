"""EnvoyFilter semantics beyond the schema, after Istio's ValidateEnvoyFilter (with its
wording), plus what meshd checks earlier than istiod: every patch value converts to the
Envoy type of its applyTo (unknown fields and unknown `@type`s are errors, not dropped)."""
from __future__ import annotations

import re
from typing import Any

from ..types.envoyfilter import PatchValueError, to_message
from .errors import FieldError, child, index, invalid, map_key
from .istio_common import get

_LISTENER_CLASS = frozenset({"LISTENER", "FILTER_CHAIN", "NETWORK_FILTER", "HTTP_FILTER", "LISTENER_FILTER"})
_ROUTE_CLASS = frozenset({"ROUTE_CONFIGURATION", "VIRTUAL_HOST", "HTTP_ROUTE"})
_INSERTS = frozenset({"INSERT_BEFORE", "INSERT_AFTER", "INSERT_FIRST"})
_INSERTABLE = frozenset({"HTTP_FILTER", "NETWORK_FILTER", "HTTP_ROUTE", "LISTENER_FILTER"})
# What meshd cannot apply.
_UNSERVED: frozenset[str] = frozenset()


def validate_envoy_filter(spec: dict) -> list[FieldError]:
    errs: list[FieldError] = []
    selector = get(spec, "workloadSelector")
    if selector is not None and get(spec, "targetRefs"):
        errs.append(FieldError("spec", "only one of targetRefs or workloadSelector can be set"))
    for key, value in (get(selector, "labels", {}) or {}).items():
        if key == "" or "*" in key or "*" in str(value):
            errs.append(invalid(map_key("spec.workloadSelector.labels", key), value,
                                f"wildcard or empty key is not supported in selector: \"{key}={value}\""))
    for i, ref in enumerate(get(spec, "targetRefs", []) or []):
        if get(ref, "kind") != "Gateway" or get(ref, "group", "") not in ("", "gateway.networking.k8s.io"):
            errs.append(invalid(child(index("spec.targetRefs", i), "kind"), get(ref, "kind"),
                                "meshd supports targetRefs to a Gateway (gateway.networking.k8s.io) only"))
    for i, cp in enumerate(get(spec, "configPatches", []) or []):
        errs += _patch(index("spec.configPatches", i), cp or {})
    return errs


def _patch(path: str, cp: dict[str, Any]) -> list[FieldError]:
    apply_to = get(cp, "applyTo") or "INVALID"
    patch = get(cp, "patch")
    match = get(cp, "match") or {}
    if patch is None:
        return [FieldError(child(path, "patch"), "Envoy filter: missing patch")]
    if apply_to == "INVALID":
        return [FieldError(child(path, "applyTo"), "Envoy filter: missing applyTo")]
    if apply_to in _UNSERVED:
        return [invalid(child(path, "applyTo"), apply_to, "not supported by meshd (docs/envoyfilter.md)")]
    op = get(patch, "operation") or "INVALID"
    if op == "INVALID":
        return [FieldError(child(path, "patch.operation"), "Envoy filter: missing patch operation")]
    errs: list[FieldError] = []
    if apply_to == "BOOTSTRAP":
        errs += _bootstrap_patch(path, op, match)
    if apply_to in _OWN_RULES:
        errs += _OWN_RULES[apply_to](path, op, match)
    if op in _INSERTS and apply_to not in _INSERTABLE:
        errs.append(invalid(child(path, "patch.operation"), op,
                            f"Envoy filter: {op} is not valid for applyTo {apply_to}"))
    if apply_to in _LISTENER_CLASS and (get(match, "routeConfiguration") or get(match, "cluster")):
        errs.append(FieldError(child(path, "match"),
                               "Envoy filter: applyTo for listener class objects cannot have non listener match"))
    if apply_to in _ROUTE_CLASS and (get(match, "listener") or get(match, "cluster")):
        errs.append(FieldError(child(path, "match"), "Envoy filter: applyTo for http route class objects cannot "
                                                     "have non route configuration match"))
    if apply_to == "CLUSTER" and (get(match, "listener") or get(match, "routeConfiguration")):
        errs.append(FieldError(child(path, "match"),
                               "Envoy filter: applyTo for cluster class objects cannot have non cluster match"))
    route_config = get(match, "routeConfiguration") or {}
    if get(route_config, "portName") or get(route_config, "gateway"):
        errs.append(FieldError(child(path, "match.routeConfiguration"),
                               "portName and gateway are not supported by meshd: match by name or portNumber"))
    version = get(get(match, "proxy") or {}, "proxyVersion")
    if version:
        try:
            re.compile(version)
        except re.error as e:
            errs.append(invalid(child(path, "match.proxy.proxyVersion"), version,
                                f"Envoy filter: invalid regex for proxy version, [{e}]"))
    value = get(patch, "value")
    if op == "REMOVE":
        return errs
    if value is None:
        errs.append(FieldError(child(path, "patch.value"), "Envoy filter: missing patch value for non-remove operation"))
        return errs
    try:
        to_message(apply_to, value)
    except PatchValueError as e:
        errs.append(FieldError(child(path, "patch.value"), f"Envoy filter: {e}"))
    return errs


def _bootstrap_patch(path: str, op: str, match: dict[str, Any]) -> list[FieldError]:
    """istiod merges BOOTSTRAP patches and skips any other operation with only a metric
    (BootstrapGenerator.applyPatches): meshd refuses what it would not apply. A BOOTSTRAP
    patch has no object to match, so a listener, route or cluster match means nothing."""
    errs: list[FieldError] = []
    if op != "MERGE":
        errs.append(invalid(child(path, "patch.operation"), op, "Envoy filter: applyTo BOOTSTRAP supports MERGE only"))
    for key in ("listener", "routeConfiguration", "cluster"):
        if get(match, key):
            errs.append(FieldError(child(path, f"match.{key}"),
                                   "Envoy filter: applyTo BOOTSTRAP cannot have a listener, route configuration "
                                   "or cluster match (it matches by context and proxy only)"))
    return errs


def _extension_config_patch(path: str, op: str, match: dict[str, Any]) -> list[FieldError]:
    """istiod serves the EXTENSION_CONFIG patches whose operation is ADD over ECDS and
    skips any other (InsertedExtensionConfigurations): meshd refuses what it would not
    serve. The config has no object to match: a listener, route or cluster match means
    nothing (context is ignored too, as istiod does)."""
    errs: list[FieldError] = []
    if op != "ADD":
        errs.append(invalid(child(path, "patch.operation"), op,
                            "Envoy filter: applyTo EXTENSION_CONFIG supports ADD only"))
    named = [k for k in ("listener", "routeConfiguration", "cluster") if get(match, k)]
    if named:
        errs.append(FieldError(child(path, f"match.{named[0]}"), "Envoy filter: applyTo EXTENSION_CONFIG matches "
                                                                 "proxies only, not a listener, route or cluster"))
    return errs


def _listener_filter_patch(path: str, op: str, match: dict[str, Any]) -> list[FieldError]:
    """istiod does nothing for a LISTENER_FILTER MERGE, REPLACE or REMOVE that names no
    listener filter (`match.listener.listenerFilter`): meshd refuses it."""
    if op in ("MERGE", "REPLACE", "REMOVE") and not get(get(match, "listener") or {}, "listenerFilter"):
        return [FieldError(child(path, "match.listener.listenerFilter"),
                           f"Envoy filter: LISTENER_FILTER {op} needs the name of the listener filter to change")]
    return []


_OWN_RULES = {"EXTENSION_CONFIG": _extension_config_patch, "LISTENER_FILTER": _listener_filter_patch}
