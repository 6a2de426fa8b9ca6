"""Istio's own translation goldens (pilot/pkg/config/kube/gateway/testdata/: Gateway API
inputs `<case>.yaml`, the Istio objects istiod derives `<case>.yaml.golden`) compared with
meshd's conversion (model/gateway_api/conversion.py), case by case.

Every case is compared. The cases where meshd's output differs are listed in
KNOWN_DIFFERENCES with the reason, and docs/gateway-api.md carries the same table; a case
that starts to match (or stops) fails here until the table says so.

Compared: the derived objects' kind, namespace, name and spec, after the normalisations
below (istiod's test domain `domain.suffix` is meshd's `cluster.local`; meshd writes the
proxies' `selector` into the derived Gateway where istiod keeps a service annotation; a
Passthrough server is `tls: {mode: PASSTHROUGH}` where istiod leaves `tls: {}`).
Annotations are not compared.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import pytest
import yaml

from controlplane.config.objects import ConfigObject, Origin
from controlplane.config.parse import parse_document
from controlplane.config.snapshot import ConfigSnapshot
from controlplane.model.credentials import Credential
from controlplane.model.gateway_api.conversion import convert
from controlplane.model.gateway_api.status import gateway_api_status
from controlplane.model.services import Service, ServicePort
from tests.support.paths import REPO, SHARED, shared

TESTDATA = SHARED / "corpus" / "istio" / "pilot" / "pkg" / "config" / "kube" / "gateway" / "testdata"
DOCS = REPO / "docs" / "gateway-api.md"
CASES = sorted(p.name[: -len(".yaml.golden")] for p in shared("corpus", "istio", "pilot", "pkg", "config", "kube",
                                                               "gateway", "testdata").glob("*.yaml.golden")
               if not p.name.endswith(".status.yaml.golden"))


@dataclass(frozen=True)
class _AnyPortService(Service):
    """istiod's test fixture has the Services its goldens route to; here every host of the
    cluster domain is a Service with every port."""

    def port(self, number: int) -> ServicePort | None:
        return ServicePort("", number, number)


class _Services(dict):
    def get(self, host: str, default: Any = None) -> Service | None:  # type: ignore[override]
        if not host.endswith(".svc.cluster.local"):
            return default
        name, namespace = host.split(".")[:2]
        return _AnyPortService(name, namespace, host, (), {"app": name}, {}, cluster_ip="10.0.0.1")

    def __contains__(self, host: object) -> bool:
        return isinstance(host, str) and host.endswith(".svc.cluster.local")

    def values(self):  # type: ignore[override]
        return []


class _Credentials(dict):
    def get(self, key: Any, default: Any = None) -> Credential:  # type: ignore[override]
        return Credential(key[0], key[1], b"cert", b"key")


def _objects(case: str) -> dict:
    objs = {}
    for i, doc in enumerate(yaml.safe_load_all((TESTDATA / f"{case}.yaml").read_text())):
        got = parse_document(doc, Origin("file", f"{case}.yaml", i))
        if isinstance(got, ConfigObject):
            objs[got.key] = got
    return objs


def _normal(value: Any) -> Any:
    text = yaml.safe_dump(value, sort_keys=True).replace("domain.suffix", "cluster.local")
    return yaml.safe_load(text)


def _normal_gateway(obj: dict) -> dict:
    spec = dict(obj["spec"])
    spec.pop("selector", None)
    for server in spec.get("servers") or []:
        tls = server.get("tls")
        if tls == {} and server["port"]["protocol"] == "TLS":
            server["tls"] = {"mode": "PASSTHROUGH"}
    return {**obj, "spec": spec}


def _key(o: dict) -> tuple[str, str, str]:
    return (o["kind"], o["namespace"], o["name"])


def meshd_output(case: str) -> dict:
    result = convert(ConfigSnapshot(_objects(case)), _Services(), _Credentials())
    out = {}
    for o in (*result.gateways, *result.virtual_services):
        doc = _normal({"kind": o.kind, "namespace": o.namespace, "name": o.name, "spec": dict(o.spec)})
        out[_key(doc)] = _normal_gateway(doc) if o.kind == "Gateway" else doc
    return out


def istiod_output(case: str) -> dict:
    out = {}
    for d in yaml.safe_load_all((TESTDATA / f"{case}.yaml.golden").read_text()):
        if not d:
            continue
        md = d.get("metadata") or {}
        doc = _normal({"kind": d["kind"], "namespace": md.get("namespace", ""), "name": md["name"], "spec": d.get("spec") or {}})
        out[_key(doc)] = _normal_gateway(doc) if d["kind"] == "Gateway" else doc
    return out


def differences(case: str) -> list[str]:
    ours, theirs = meshd_output(case), istiod_output(case)
    out = [f"missing {'/'.join(k)}" for k in sorted(theirs.keys() - ours.keys())]
    out += [f"extra {'/'.join(k)}" for k in sorted(ours.keys() - theirs.keys())]
    out += [f"differs {'/'.join(k)}" for k in sorted(ours.keys() & theirs.keys()) if ours[k] != theirs[k]]
    return out


# case -> why meshd's output differs from istiod's (docs/gateway-api.md has the same table)
_POLICY = "istiod derives DestinationRules from BackendTLSPolicy / XBackendTrafficPolicy, which meshd does not serve (reported as unsupported)"
_LISTENER_SET = "ListenerSet is not served (reported as unsupported): its listeners get no Istio Gateway"
_EAST_WEST = "east-west gateways (class istio-east-west: ISTIO_MUTUAL cross-network servers, ambient) are not served"
_FIXTURE = "the Services and Namespaces (with their labels) of istiod's test fixture are not in the input: routes to them, and namespace selectors over them, come out differently"
KNOWN_DIFFERENCES: dict[str, str] = {
    "backend-lb-policy": _POLICY,
    "backend-tls-policy": _POLICY,
    "backend-tls-policy-ignored": _POLICY,
    "backend-traffic-policy-ignored": _POLICY,
    "mix-backend-policy": _POLICY,
    "xbackend": "XBackend (experimental) and the DestinationRules istiod derives from it are not served",
    "east-west-ambient": _EAST_WEST,
    "eastwest": _EAST_WEST,
    "eastwest-labelport": _EAST_WEST,
    "eastwest-tlsoption": _EAST_WEST,
    "listenerset": _LISTENER_SET,
    "listenerset-cross-namespace": _LISTENER_SET,
    "listenerset-empty-listeners": _LISTENER_SET,
    "listenerset-hostname-conflict": _LISTENER_SET,
    "listenerset-https-missing-tls": _LISTENER_SET,
    "listenerset-invalid": _LISTENER_SET,
    "listenerset-overlapping-port": _LISTENER_SET,
    "listenerset-protocol-conflict": _LISTENER_SET,
    "listenerset-same-name-different-ns": _LISTENER_SET,
    "http": "InferencePool backends (inference extension) are not served (500); HTTPRoute `retry` is experimental "
            "channel, rejected by the standard CRD schema",
    "invalid": "object names with upper case letters are rejected by meshd's metadata validation (the API server "
               "rejects them too); istiod's test feeds them unvalidated",
    "isolation": "a listener with an exact hostname keeps only the route hostnames that intersect it (the spec); "
                 "istiod keeps the others too (the server's hosts filter them)",
    "mcs": "ServiceImport (multi-cluster services) backends are not served",
    "reference-policy-inferencepool": "InferencePool backends are not served",
    "reference-policy-service": "a backend not permitted by a ReferenceGrant is left out (its weight goes to the "
                                "others, ResolvedRefs RefNotPermitted); istiod keeps an empty destination answering 500",
    "reference-policy-tcp": "a TCPRoute without any backend that resolves gives no VirtualService; istiod routes "
                            "to an empty destination",
    "zero": "a TCPRoute whose backends all weigh 0 gives no VirtualService; istiod routes to a placeholder subset",
    "reference-policy-tls": "the Gateway asks for client certificate validation (spec.tls.frontend), which meshd "
                            "does not implement: its HTTPS listener is not served (fail closed, Accepted False)",
    "route-binding": _FIXTURE,
    "route-precedence": _FIXTURE,
    "serviceentry": "routes whose parentRef is a ServiceEntry host (kind ServiceEntry, networking.istio.io) are not "
                    "served; backends of kind Hostname are",
    "valid-invalid-parent-ref": "a mesh parentRef to a Service that does not exist gets no VirtualService in "
                                "istiod; meshd's fixture knows every cluster Service",
    "tls": "TLS options (gateway.istio.io/tls-terminate-mode MUTUAL, istio builtin certificates, cipher suites) "
           "and spec.tls.frontend client validation are not implemented: those listeners are not served "
           "(fail closed) and cipher options are not passed on",
    "tls-terminate": "a TLSRoute's VirtualService carries every route hostname the listener admits; istiod "
                     "splits hostnames per listener differently; on a Terminate listener the route is a `tcp` rule "
                     "(what a TLS-terminating server reads, in istiod's generator too), istiod writes `tls`",
}


@pytest.mark.parametrize("case", CASES)
def test_translation_matches_istiods_golden_or_the_difference_is_documented(case):
    diff = differences(case)
    if case in KNOWN_DIFFERENCES:
        assert diff, f"{case} now matches istiod's golden: remove it from KNOWN_DIFFERENCES and the docs table"
    else:
        assert diff == [], "\n".join(diff)


def test_the_docs_table_lists_every_known_difference():
    text = DOCS.read_text()
    missing = [c for c in KNOWN_DIFFERENCES if not re.search(rf"^\| `{re.escape(c)}` \|", text, re.M)]
    assert missing == []


# --- status (`<case>.status.yaml.golden`) ------------------------------------------------
# Compared: per GatewayClass and Gateway the conditions' (type, status, reason), per listener
# attachedRoutes and conditions, per route the parents meshd's controller reports and their
# conditions (messages and addresses are not compared).

_STATUS_KINDS = {"GatewayClass", "Gateway", "HTTPRoute", "GRPCRoute", "TCPRoute", "TLSRoute"}


def _conditions(items: Any) -> dict:
    return {c["type"]: (c["status"], c["reason"]) for c in items or []}


def _status_shape(kind: str, status: Any) -> Any:
    status = status or {}
    if kind == "GatewayClass":
        return _conditions(status.get("conditions"))
    if kind == "Gateway":
        return (_conditions(status.get("conditions")),
                {ln["name"]: (ln.get("attachedRoutes"), _conditions(ln.get("conditions"))) for ln in status.get("listeners") or []})
    return {(p["parentRef"].get("name"), p["parentRef"].get("sectionName"), p["parentRef"].get("port"),
             p["parentRef"].get("kind", "Gateway")): _conditions(p.get("conditions"))
            for p in status.get("parents") or [] if p.get("controllerName") == "istio.io/gateway-controller"}


def status_differences(case: str) -> list[str]:
    ours = {("Gateway" if k.kind == "KubernetesGateway" else k.kind, k.namespace, k.name): v for k, v in
            gateway_api_status(convert(ConfigSnapshot(_objects(case)), _Services(), _Credentials())).items()}
    out = []
    for d in yaml.safe_load_all((TESTDATA / f"{case}.status.yaml.golden").read_text()):
        if not d or d["kind"] not in _STATUS_KINDS:
            continue
        md = d["metadata"]
        key = (d["kind"], md.get("namespace", ""), md["name"])
        if _status_shape(d["kind"], d.get("status")) != _status_shape(d["kind"], ours.get(key)):
            out.append("/".join(key))
    return out


_ADDRESS = ("istiod's test fixture gives some Gateways' addresses no usable Service (Programmed False, "
            "AddressNotUsable) and lacks some backends (BackendNotFound) where meshd's fixture has every Service")
KNOWN_STATUS_DIFFERENCES: dict[str, str] = {
    **{c: KNOWN_DIFFERENCES[c] for c in (
        "east-west-ambient", "eastwest", "eastwest-labelport", "eastwest-tlsoption", "listenerset",
        "listenerset-empty-listeners", "listenerset-https-missing-tls", "listenerset-invalid",
        "listenerset-overlapping-port", "listenerset-same-name-different-ns", "invalid", "mcs", "route-binding",
        "route-precedence", "serviceentry", "xbackend", "reference-policy-inferencepool", "tls",
        "reference-policy-tls")},
    "eastwest-remote": KNOWN_DIFFERENCES["eastwest"],
    "waypoint": "waypoints (class istio-waypoint, ambient) are not served",
    "foreign-waypoint": "a parentRef to a ServiceEntry is reported NoMatchingParent by meshd; istiod says nothing",
    "valid-invalid-parent-ref": "a parentRef to a ServiceEntry is reported NoMatchingParent by meshd (not served); "
                                "istiod accepts it",
    "backend-tls-client-cert": "spec.tls.backend.clientCertificateRef is not read (meshd serves no BackendTLSPolicy "
                               "that would use it): no InvalidClientCertificateRef",
    "frontend-tls-invalid": "spec.tls.frontend is not implemented: the terminating listeners are Accepted False "
                            "(NoValidCACertificate) where istiod checks the CA references",
    "frontend-tls-refgrant": "spec.tls.frontend is not implemented: the terminating listeners are Accepted False "
                             "(NoValidCACertificate) where istiod checks the CA references",
    "gateway-invalid-parameters-ref": "a parametersRef to a ConfigMap that does not exist is found by the gateway "
                                      "deployment in Kubernetes mode (the conversion has no ConfigMaps): that "
                                      "Gateway is Accepted here; the ref of another kind is InvalidParameters",
    "http": KNOWN_DIFFERENCES["http"] + " (one route fewer attached, InvalidKind for InferencePool backends)",
    "http-grpc-same-host": _ADDRESS,
    "reference-grant-multiple-to": _ADDRESS,
    "isolation": _ADDRESS,
    "tls-terminate": _ADDRESS,
    "status": "a parentRef to a Gateway that does not exist is reported NoMatchingParent by meshd, istiod writes "
              "nothing for it; istiod keeps the conditions other writers put on its parent entry",
}


@pytest.mark.parametrize("case", CASES)
def test_status_matches_istiods_golden_or_the_difference_is_documented(case):
    diff = status_differences(case)
    if case in KNOWN_STATUS_DIFFERENCES:
        assert diff, f"{case}'s status now matches istiod's: remove it from KNOWN_STATUS_DIFFERENCES and the docs"
    else:
        assert diff == [], "\n".join(diff)


def test_the_docs_list_every_known_status_difference():
    text = DOCS.read_text()
    section = text[text.index("### Status goldens"):]
    missing = [c for c in KNOWN_STATUS_DIFFERENCES if not re.search(rf"^\| `{re.escape(c)}` \|", section, re.M)]
    assert missing == []
