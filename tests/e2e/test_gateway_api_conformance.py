"""The Gateway API conformance suite (standard channel, gateway side) through real Envoy
gateways, data-driven from the suite's own manifests (../shared/corpus/gateway-api/
conformance/) and the expectations ../shared/corpus/INDEX.md lists per test.

One meshd reads a directory holding the suite's base manifests (GatewayClass `istio` for
`{GATEWAY_CLASS_NAME}`; each Deployment, of the base or of a test manifest, becomes one
Pod on a loopback address, answered by an in-process echo-basic stand-in in the mode its
env asks for: HTTP(S), TCP or gRPC, tests/support/echo_basic.py) and one test manifest
at a time (`case.yaml`, replaced between cases as `kubectl apply`/`delete` would). Every
Gateway a case talks to gets its own Envoy, bootstrapped as that Gateway's proxy by the
label gateway.networking.k8s.io/gateway-name on meshd's secure xDS port and kept for the
session, with the Service istiod's deployment controller would create (`<gateway>-istio`,
listener ports on free local ports). A case first checks status as the suite does
("std": the routes Accepted and ResolvedRefs on their Gateway, read from meshd's
/debug/configz), then sends the suite's requests (R: HTTP/1.1, over TLS with an SNI;
T: echo-basic's TCP protocol, over TLS with an SNI; G: gRPC; W: a websocket; C: HTTP/2
by curl) until all expectations hold (the suite's MaxTimeToConsistency), then three times
more, as the suite's "3 consecutive" rule. Where the suite edits its objects between
checks, a case's `then` steps apply the edited manifest and check what must hold then.

docs/gateway-api-conformance.md lists every standard conformance test and where it stands.
"""
from __future__ import annotations

import base64
import contextlib
import http.client
import json
import os
import re
import socket
import ssl
import subprocess
import time
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from controlplane.names import GATEWAY_NAME_LABEL
from tests.support.echo_basic import (
    GRPC_SERVICE,
    TCP_WELCOME,
    WS_BINARY,
    WS_CLOSE,
    WS_TEXT,
    EchoPod,
    echo_pod,
    grpc_echo_pod,
    read_ws_frame,
    tcp_echo_pod,
    websocket_accept,
    ws_frame,
)
from tests.support.envoy import StaticEnvoy, envoy
from tests.support.gateway_api import MISDIRECTED_REQUESTS
from tests.support.harness import free_port, http_get, meshd, wait_for, write
from tests.support.paths import shared
from tests.support.pki import Pem, make_ca, make_cert, tls_secret_yaml

pytestmark = pytest.mark.e2e

CONFORMANCE = ("corpus", "gateway-api", "conformance")
INFRA, APP, WEB = "gateway-conformance-infra", "gateway-conformance-app-backend", "gateway-conformance-web-backend"
# The suite sends 500 for a weight split, where its 0.05 bound is 2.4 standard deviations:
# about one run in 60 fails by chance. 2,000 keep the bound and make it 4.9 deviations.
WEIGHT_SAMPLES = 2000
ECHO_PORT = 3000  # echo-basic's container port, the base Services' targetPort
TLS_PORT = 8443  # echo-basic's TLS port (TLS_SERVER_CERT)
# short backend name (as INDEX.md writes them) -> (namespace, pod name prefix)
BACKENDS = {"v1": (INFRA, "infra-backend-v1"), "v2": (INFRA, "infra-backend-v2"), "v3": (INFRA, "infra-backend-v3"),
            "web": (WEB, "web-backend"), "app-v1": (APP, "app-backend-v1"), "app-v2": (APP, "app-backend-v2"),
            "any": (INFRA, ""), "tcp": (INFRA, "tcp-backend-0"), "tls": (INFRA, "tls-backend-0"),
            "tls-2": (INFRA, "tls-backend-2-0"), "grpc-v1": (INFRA, "grpc-infra-backend-v1-0"),
            "grpc-v2": (INFRA, "grpc-infra-backend-v2-0"), "grpc-v3": (INFRA, "grpc-infra-backend-v3-0")}


def manifest(name: str) -> str:
    return shared(*CONFORMANCE, name).read_text().replace("{GATEWAY_CLASS_NAME}", "istio")


@dataclass(frozen=True)
class PodRun:
    """An echo-basic pod to run: which mode its Deployment's env asks for (HTTP, TCP_ECHO_SERVER
    or GRPC_ECHO_SERVER) and the Secret of its TLS port (8443), if any."""
    namespace: str
    pod: str
    ip: str
    mode: str  # "http" | "tcp" | "grpc"
    tls_secret: str = ""


def as_pod(doc: dict, ip: str) -> tuple[dict, PodRun]:
    """A Deployment as meshd's directory would hold it: one Pod `<deployment>-0` with the
    template's labels on a loopback podIP, and how to answer for it."""
    meta, template = doc["metadata"], doc["spec"]["template"]
    container = template["spec"]["containers"][0]
    env = {e["name"]: e.get("value") for e in container.get("env") or ()}
    mode = "tcp" if env.get("TCP_ECHO_SERVER") else "grpc" if env.get("GRPC_ECHO_SERVER") else "http"
    secret = next((v["secret"]["secretName"] for v in template["spec"].get("volumes") or () if "secret" in v), "")
    pod = f"{meta['name']}-0"
    run = PodRun(meta["namespace"], pod, ip, mode, secret if env.get("TLS_SERVER_CERT") else "")
    return ({"apiVersion": "v1", "kind": "Pod",
             "metadata": {"name": pod, "namespace": meta["namespace"], "labels": template["metadata"]["labels"]},
             "spec": {"containers": [{"name": "echo", "image": "echo-basic"}]}, "status": {"podIP": ip}}, run)


def base_documents() -> tuple[list[dict], list[PodRun]]:
    """The base manifests as meshd's directory would hold them (Deployments as Pods, as_pod)
    and the echo pods to run."""
    docs, runs = [], []
    for doc in yaml.safe_load_all(manifest("base/manifests.yaml")):
        if not doc:
            continue
        if doc["kind"] == "Deployment":
            pod, run = as_pod(doc, f"127.0.2.{len(runs) + 10}")
            docs.append(pod)
            runs.append(run)
        elif doc["kind"] in ("Namespace", "Gateway", "Service"):
            docs.append(doc)
    return docs, runs


# --- what a case sends and expects -------------------------------------------------------


@dataclass(frozen=True)
class R:
    """One request and what must come back (INDEX.md's notation: `to` is the backend short
    name, status 200 unless stated; `up_*` is what the backend must have seen)."""
    path: str
    to: str | None = "v1"
    host: str | None = None
    method: str = "GET"
    headers: tuple[tuple[str, str], ...] = ()
    status: int = 200
    gateway: str | None = None  # the case's gateway unless stated
    port: int | None = None  # the listener port (the gateway's first unless stated)
    up_path: str | None = None
    up_host: str | None = None
    up_headers: tuple[tuple[str, str], ...] = ()
    up_absent: tuple[str, ...] = ()
    location: dict[str, str | None] | None = None  # scheme/host/port/path of Location that must match
    resp_headers: tuple[tuple[str, str], ...] = ()
    resp_absent: tuple[str, ...] = ()
    sni: str | None = None  # TLS to the listener with this SNI (the client trusts the suite's certificates)
    statuses: tuple[int, ...] = ()  # other statuses that pass too
    # response headers that must hold one of the values (compared as comma-separated lists,
    # ignoring spaces and order, as the suite compares CORS headers)
    resp_any: tuple[tuple[str, tuple[str, ...]], ...] = ()


def preflight(path: str, origin: str, method: str, headers: str = "", statuses: tuple[int, ...] = (),
              allow: tuple[tuple[str, tuple[str, ...]], ...] = (), absent: tuple[str, ...] = ()) -> R:
    """A CORS preflight the gateway answers itself (200 or 204, or one of `statuses`)."""
    sent = (("Origin", origin), ("Access-Control-Request-Method", method),
            *((("Access-Control-Request-Headers", headers),) if headers else ()))
    return R(path, None, method="OPTIONS", headers=sent, statuses=(204, *statuses), resp_any=allow, resp_absent=absent)


def miss(to=None, **kw) -> R:
    """No route: 404."""
    return R(to=None, status=404, **kw)


def refused(**kw) -> R:
    """The connection (or TLS handshake) fails: no HTTP answer at all."""
    return R(to=None, status=0, **kw)


@dataclass(frozen=True)
class T:
    """One TCP connection to a listener (TLS with `sni`; the client trusts the suite's
    certificates) speaking echo-basic's TCP protocol (`TEST`): `to` the backend that must
    answer (None: the connection must fail), and what it must report of the connection."""
    port: int
    to: str | None = "tcp"
    sni: str | None = None
    gateway: str | None = None
    backend_tls: bool = False  # the backend itself saw TLS (passthrough)
    backend_sni: str = ""  # ... with this SNI


@dataclass(frozen=True)
class Case:
    test: str  # the suite's ShortName
    file: str
    gateway: str = "same-namespace"
    std: tuple[str, ...] = ()  # routes Accepted + ResolvedRefs on `gateway` before requests
    requests: tuple[R | T | G | W | C, ...] = ()
    route_status: tuple[tuple[str, str, str, str], ...] = ()  # (route ns/name, condition, status, reason)
    listener_routes: tuple[tuple[str, str, int], ...] = ()  # (gateway, listener, attachedRoutes)
    # (kind:ns/name or ns/name of an HTTPRoute, condition, status, reason); Gateways in infra:
    # (Gateway:<name> or Gateway:<name>/<listener>, condition, status, reason)
    conditions: tuple[tuple[str, str, str, str], ...] = ()
    unattached: tuple[str, ...] = ()  # Gateways with no route attached (every listener 0)
    newer: tuple[str, ...] = ()  # objects the suite creates after the others (a later creationTimestamp)
    extra: tuple[str, ...] = ()  # objects the suite's Go code creates (YAML)
    # a step after the case: how the suite edits the case's objects (in place), what must hold then
    edit: Callable[[list[dict]], None] | None = None
    then: tuple[Case, ...] = ()
    listener_names: tuple[tuple[str, tuple[str, ...]], ...] = ()  # (gateway, its listeners in status, exactly)
    addressed: tuple[str, ...] = ()  # Gateways whose status must hold an address
    own_address: tuple[str, ...] = ()  # Gateways whose status addresses are exactly their Service's
    xfail: str = ""  # why meshd does not pass it yet (strict: a pass is reported)


@dataclass(frozen=True)
class G:
    """One gRPC call (h2c) of GrpcEcho's `method` through the gateway's first listener:
    `to` the backend that must answer, None: the call must fail UNIMPLEMENTED (no route)."""
    method: str = "Echo"
    to: str | None = "grpc-v1"
    authority: str | None = None
    metadata: tuple[tuple[str, str], ...] = ()
    gateway: str | None = None


@dataclass(frozen=True)
class W:
    """A websocket dialled at `path` through the gateway's first listener: a text and a
    binary message must come back unchanged."""
    path: str = "/ws"
    gateway: str | None = None


@dataclass(frozen=True)
class C:
    """An HTTP/2 request (curl) with :authority `host` to the gateway's first listener,
    over TLS with SNI `sni`, or in clear text (prior knowledge, h2c) when `sni` is "":
    `to` answers, else the status is `status`."""
    path: str
    sni: str
    host: str
    to: str | None = "v1"
    status: int = 200
    gateway: str | None = None


def H(**kw: str) -> tuple[tuple[str, str], ...]:
    return tuple((k.replace("_", "-"), v) for k, v in kw.items())


# GatewayHTTPListenerIsolation: Host -> the one listener (and path) that serves it
ISOLATION = {"bar.com": "empty-hostname", "bar.example.com": "wildcard-example-com",
             "bar.foo.example.com": "wildcard-foo-example-com", "abc.foo.example.com": "abc-foo-example-com"}
HEADER_EDITS_UP = H(X_Header_Add="header-val-1", X_Header_Add_Append="append-val-1,header-val-2",
                    X_Header_Set="set-overwrites-values")
HEADER_EDITS_SENT = H(X_Header_Remove="remove-val", X_Header_Add_Append="append-val-1")

def modify_listeners(docs: list[dict]) -> None:
    """GatewayModifyListeners: the suite adds listener `http` to one Gateway and removes
    `https` from the other."""
    for doc in docs:
        if doc["kind"] != "Gateway":
            continue
        listeners = doc["spec"]["listeners"]
        if doc["metadata"]["name"] == "gateway-add-listener":
            listeners.append({"name": "http", "port": 80, "protocol": "HTTP", "hostname": "data.test.com",
                              "allowedRoutes": {"namespaces": {"from": "All"}}})
        elif doc["metadata"]["name"] == "gateway-remove-listener":
            listeners[:] = [ln for ln in listeners if ln["name"] != "https"]


def fill_endpoint_slices(docs: list[dict]) -> None:
    """HTTPRouteServiceTypes: the suite fills the manual EndpointSlices with the addresses
    of infra-backend-v1's pods (its IPv6 slices stay empty: the pods here have none)."""
    ip = next(run.ip for run in base_documents()[1] if run.pod == "infra-backend-v1-0")
    for doc in docs:
        if doc["kind"] == "EndpointSlice":
            doc["endpoints"] = [{"addresses": [ip], "conditions": {"ready": True}}] if doc["addressType"] == "IPv4" else []


UNUSABLE_ADDRESS = "10.255.255.254"  # no Service has it


def without_addresses(*values: str) -> Callable[[list[dict]], None]:
    """GatewayStaticAddresses: the suite removes addresses from the Gateway step by step."""
    def edit(docs: list[dict]) -> None:
        for doc in docs:
            if doc["kind"] == "Gateway":
                doc["spec"]["addresses"] = [a for a in doc["spec"]["addresses"]
                                            if a.get("value") not in values and a.get("type") not in values]
    return edit


def delete_reference_grants(docs: list[dict]) -> None:
    docs[:] = [d for d in docs if d["kind"] != "ReferenceGrant"]


# TCPRouteMultipleRoutesAttachment: the route the suite creates a second after the others
NEWER_TCP_ROUTE = f"""
apiVersion: gateway.networking.k8s.io/v1alpha2
kind: TCPRoute
metadata: {{name: tcproute-attach-newer, namespace: {INFRA}}}
spec:
  parentRefs: [{{name: tcp-multi-route-attach-gateway, sectionName: tcp}}]
  rules: [{{backendRefs: [{{name: tcp-attach-backend-2, port: 3000}}]}}]
"""

CASES: tuple[Case, ...] = (
    Case("HTTPRouteSimpleSameNamespace", "httproute-simple-same-namespace.yaml", std=("gateway-conformance-infra-test",),
         requests=(R("/"),)),
    Case("HTTPRouteExactPathMatching", "httproute-exact-path-matching.yaml", std=("exact-matching",),
         requests=(R("/one"), R("/two", "v2"), miss(path="/"), miss(path="/one/example"), miss(path="/two/"),
                   miss(path="/Two"))),
    Case("HTTPRouteHeaderMatching", "httproute-header-matching.yaml", std=("header-matching",), requests=(
        R("/", headers=H(Version="one")), R("/", "v2", headers=H(Version="two")),
        R("/", headers=H(Version="two", Color="orange")), R("/", "v2", headers=H(Version="two", Color="blue")),
        miss(path="/", headers=H(Color="orange")), miss(path="/", headers=H(Some_Other_Header="one")),
        R("/", headers=H(Color="blue")), R("/", headers=H(Color="green")), R("/", "v2", headers=H(Color="red")),
        R("/", "v2", headers=H(Color="yellow")), miss(path="/", headers=H(Color="purple")))),
    Case("HTTPRouteMatching", "httproute-matching.yaml", std=("matching",), requests=(
        R("/"), R("/example"), R("/", headers=H(Version="one")), R("/v2", "v2"), R("/v2/example", "v2"),
        R("/", "v2", headers=H(Version="two")), R("/v2/", "v2"), R("/v2example"), R("/foo/v2/example"))),
    Case("HTTPRouteMatchingAcrossRoutes", "httproute-matching-across-routes.yaml",
         std=("matching-part1", "matching-part2"), requests=(
             R("/", host="example.com"), R("/example", host="example.com"), R("/example", host="example.net"),
             R("/example", host="example.com", headers=H(Version="one")), R("/v2", "v2", host="example.com"),
             R("/v2", host="example.net"), R("/v2/example", "v2", host="example.com"),
             R("/", "v2", host="example.com", headers=H(Version="two")))),
    Case("HTTPRoutePathMatchOrder", "httproute-path-match-order.yaml", std=("path-matching-order",), requests=(
        R("/match/exact/one", "v3"), R("/match/exact", "v2"), R("/match"), R("/match/prefix/one/any", "v2"),
        R("/match/prefix/any"), R("/match/any", "v3"))),
    Case("HTTPRouteQueryParamMatching", "httproute-query-param-matching.yaml", std=("query-param-matching",), requests=(
        R("/?animal=whale"), R("/?animal=dolphin", "v2"), R("/?animal=dolphin&color=blue", "v3"),
        R("/?ANIMAL=Whale", "v3"), R("/?animal=whale&otherparam=irrelevant"), R("/?animal=dolphin&color=yellow", "v2"),
        miss(path="/?color=blue"), miss(path="/?animal=dog"), miss(path="/?animal=whaledolphin"), miss(path="/"),
        R("/path1?animal=whale"), R("/?animal=whale", "v2", headers=H(version="one")),
        R("/path2?animal=whale", "v3", headers=H(version="two")), R("/path3?animal=shark"),
        R("/path4?animal=kraken", headers=H(version="three")), miss(path="/?animal=shark"),
        miss(path="/path4?animal=kraken"), R("/path5?animal=hydra"),
        R("/?animal=hydra", "v3", headers=H(version="four")))),
    Case("HTTPRouteMethodMatching", "httproute-method-matching.yaml", std=("method-matching",), requests=(
        R("/", method="POST"), R("/", "v2"), miss(path="/", method="HEAD"), R("/path1"),
        R("/", "v2", method="PUT", headers=H(version="one")), R("/path2", "v3", method="POST", headers=H(version="two")),
        R("/path3", method="PATCH"), R("/path4", method="DELETE", headers=H(version="three")),
        miss(path="/", method="PUT"), miss(path="/path4", method="DELETE"), R("/path5", method="PATCH"),
        R("/", "v2", method="PATCH", headers=H(version="four")))),
    Case("HTTPRouteCrossNamespace", "httproute-cross-namespace.yaml", gateway="backend-namespaces",
         std=("gateway-conformance-web-backend/cross-namespace",), requests=(R("/", "web"),)),
    Case("HTTPRouteMultipleGateways", "httproute-multiple-gateways.yaml",
         std=("multiple-gateways-shared-route", "same-namespace-dedicated-route"), requests=(
             R("/shared"), R("/", "v2"), R("/shared", gateway="all-namespaces"),
             R("/", "v3", gateway="all-namespaces"))),
    Case("HTTPRouteNoBackendRefs", "httproute-omitted-backendrefs.yaml", std=("omitted-backendrefs",), requests=(
        R("/forward"), R("/omitted-no-forward", None, status=500), R("/empty-no-forward", None, status=500))),
    Case("HTTPRouteListenerHostnameMatching", "httproute-listener-hostname-matching.yaml",
         gateway="httproute-listener-hostname-matching", std=("backend-v1", "backend-v2", "backend-v3"), requests=(
             R("/", host="bar.com"), R("/", "v2", host="foo.bar.com"), R("/", "v3", host="baz.bar.com"),
             R("/", "v3", host="boo.bar.com"), R("/", "v3", host="multiple.prefixes.bar.com"),
             R("/", "v3", host="multiple.prefixes.foo.com"), miss(path="/", host="foo.com"),
             miss(path="/", host="no.matching.host"))),
    Case("HTTPRouteListenerPortMatching", "httproute-listener-port-matching.yaml",
         gateway="httproute-listener-port-matching", std=("backend-v1", "backend-v2", "backend-v3"), requests=(
             R("/", host="foo.com", port=80), R("/", "v2", host="foo.com:8080", port=8080),
             R("/", "v2", host="bar.com:8080", port=8080), R("/", "v3", host="foo.com:8090", port=8090),
             miss(path="/", host="bar.com:8090", port=8090))),
    Case("HTTPRouteHostnameIntersection", "httproute-hostname-intersection.yaml",
         gateway="httproute-hostname-intersection",
         std=("specific-host-matches-listener-specific-host", "specific-host-matches-listener-wildcard-host",
              "wildcard-host-matches-listener-specific-host", "wildcard-host-matches-listener-wildcard-host"),
         route_status=(("gateway-conformance-infra/no-intersecting-hosts", "Accepted", "False",
                        "NoMatchingListenerHostname"),),
         listener_routes=(("httproute-hostname-intersection", "listener-1", 2),
                          ("httproute-hostname-intersection", "listener-2", 1),
                          ("httproute-hostname-intersection", "listener-3", 1)),
         requests=(
             R("/s1", host="very.specific.com"), R("/s1", host="very.specific.com:1234"),
             *(miss(path="/s1", host=h) for h in ("non.matching.com", "foo.nonmatchingwildcard.io", "foo.wildcard.io")),
             miss(path="/non-matching-prefix", host="very.specific.com"),
             *(R("/s2", "v2", host=h) for h in ("foo.wildcard.io", "bar.wildcard.io", "foo.bar.wildcard.io")),
             *(miss(path="/s2", host=h) for h in ("non.matching.com", "wildcard.io", "very.specific.com")),
             miss(path="/non-matching-prefix", host="foo.wildcard.io"),
             R("/s3", "v3", host="very.specific.com"),
             *(miss(path="/s3", host=h) for h in ("non.matching.com", "foo.specific.com", "foo.wildcard.io")),
             *(R("/s4", host=h) for h in ("foo.anotherwildcard.io", "bar.anotherwildcard.io",
                                          "foo.bar.anotherwildcard.io")),
             *(miss(path="/s4", host=h) for h in ("anotherwildcard.io", "foo.wildcard.io", "very.specific.com")),
             miss(path="/non-matching-prefix", host="foo.anotherwildcard.io"),
             miss(path="/s5", host="specific.but.wrong.com"), miss(path="/s5", host="wildcard.io"),
             *(R("/", "v2", host=h, gateway="httproute-hostname-intersection-all")
               for h in ("first.com", "sub.first.com", "second.com", "sub.second.com")),
             *(miss(path="/", host=h, gateway="httproute-hostname-intersection-all")
               for h in ("third.com", "sub.third.com")))),
    Case("HTTPRouteRedirectHostAndStatus", "httproute-redirect-host-and-status.yaml", std=("redirect-host-and-status",),
         requests=(R("/hostname-redirect", None, status=302, location={"host": "example.org",
                                                                         "path": "/hostname-redirect"}),
                   R("/host-and-status", None, status=301, location={"host": "example.org"}))),
    Case("HTTPRouteRedirectPath", "httproute-redirect-path.yaml", std=("redirect-path",), requests=(
        R("/original-prefix/lemon", None, status=302, location={"path": "/replacement-prefix/lemon"}),
        R("/full/path/original", None, status=302, location={"path": "/full-path-replacement"}),
        R("/path-and-host", None, status=302, location={"host": "example.org", "path": "/replacement-prefix"}),
        R("/path-and-status", None, status=301, location={"path": "/replacement-prefix"}),
        R("/full-path-and-host", None, status=302, location={"host": "example.org", "path": "/replacement-full"}),
        R("/full-path-and-status", None, status=301, location={"path": "/replacement-full"}))),
    Case("HTTPRouteRedirectPort", "httproute-redirect-port.yaml", std=("redirect-port",), requests=(
        R("/port", None, status=302, location={"port": "8083"}),
        R("/port-and-host", None, status=302, location={"host": "example.org", "port": "8083"}),
        R("/port-and-status", None, status=301, location={"port": "8083"}),
        R("/port-and-host-and-status", None, status=302, location={"host": "example.org", "port": "8083"}))),
    Case("HTTPRouteRedirectScheme", "httproute-redirect-scheme.yaml", std=("redirect-scheme",), requests=(
        R("/scheme", None, status=302, location={"scheme": "https", "port": None}),
        R("/scheme-and-host", None, status=302, location={"scheme": "https", "host": "example.org"}),
        R("/scheme-and-status", None, status=301, location={"scheme": "https"}),
        R("/scheme-and-host-and-status", None, status=302, location={"scheme": "https", "host": "example.org"}))),
    Case("HTTPRoute303Redirect", "httproute-303-redirect.yaml", std=("303-redirect",),
         requests=(R("/see-other", None, method="POST", status=303, location={"path": "/see-other"}),)),
    Case("HTTPRoute307Redirect", "httproute-307-redirect.yaml", std=("307-redirect",),
         requests=(R("/temporary", None, status=307, location={"path": "/temporary"}),)),
    Case("HTTPRoute308Redirect", "httproute-308-redirect.yaml", std=("308-redirect",),
         requests=(R("/permanent", None, status=308, location={"path": "/permanent"}),)),
    Case("HTTPRouteRewritePath", "httproute-rewrite-path.yaml", std=("rewrite-path",), requests=(
        R("/prefix/one/two", up_path="/one/two"), R("/strip-prefix/three", up_path="/three"),
        R("/strip-prefix", up_path="/"), R("/full/one/two", up_path="/one"),
        R("/full/rewrite-path-and-modify-headers/test", up_path="/test",
          headers=(*HEADER_EDITS_SENT, ("X-Header-Set", "set-val")), up_headers=HEADER_EDITS_UP,
          up_absent=("X-Header-Remove",)),
        R("/prefix/rewrite-path-and-modify-headers/one", up_path="/prefix/one", headers=HEADER_EDITS_SENT,
          up_headers=HEADER_EDITS_UP, up_absent=("X-Header-Remove",)))),
    Case("HTTPRouteRewriteHost", "httproute-rewrite-host.yaml", std=("rewrite-host",), requests=(
        R("/one", host="rewrite.example", up_host="one.example.org"),
        R("/two", "v2", host="rewrite.example", up_host="example.org"),
        R("/rewrite-host-and-modify-headers", "v2", host="rewrite.example", up_host="test.example.org",
          headers=HEADER_EDITS_SENT, up_headers=HEADER_EDITS_UP, up_absent=("X-Header-Remove",)))),
    *(Case(name, file, std=("request-header-modifier",), requests=(
        R("/set", headers=H(Some_Other_Header="val"), up_headers=H(X_Header_Set="set-overwrites-values")),
        R("/set", headers=H(Some_Other_Header="val", X_Header_Set="some-other-value"),
          up_headers=H(X_Header_Set="set-overwrites-values")),
        R("/add", headers=H(Some_Other_Header="val"), up_headers=H(X_Header_Add="add-appends-values")),
        R("/add", headers=H(Some_Other_Header="val", X_Header_Add="some-other-value"),
          up_headers=H(X_Header_Add="some-other-value,add-appends-values")),
        R("/remove", headers=H(X_Header_Remove="val"), up_absent=("X-Header-Remove",)),
        R("/multiple", headers=H(X_Header_Set_2="set-val-2", X_Header_Add_2="add-val-2",
                                 X_Header_Remove_2="remove-val-2", Another_Header="another-header-val"),
          up_headers=H(X_Header_Set_1="header-set-1", X_Header_Set_2="header-set-2", X_Header_Add_1="header-add-1",
                       X_Header_Add_2="add-val-2,header-add-2", X_Header_Add_3="header-add-3",
                       Another_Header="another-header-val"),
          up_absent=("X-Header-Remove-1", "X-Header-Remove-2")),
        R("/case-insensitivity", headers=(("x-header-set", "original-val-set"), ("x-header-add", "original-val-add"),
                                          ("x-header-remove", "original-val-remove"),
                                          ("Another-Header", "another-header-val")),
          up_headers=H(X_Header_Set="header-set", X_Header_Add="original-val-add,header-add"),
          up_absent=("X-Header-Remove",))))
      for name, file in (("HTTPRouteRequestHeaderModifier", "httproute-request-header-modifier.yaml"),
                         ("HTTPRouteBackendRequestHeaderModifier", "httproute-request-header-modifier-backend.yaml"))),
    Case("HTTPRouteResponseHeaderModifier", "httproute-response-header-modifier.yaml",
         std=("response-header-modifier",), requests=(
             R("/set", headers=H(X_Echo_Set_Header="Some-Other-Header:val,X-Header-Set:some-other-value"),
               resp_headers=H(X_Header_Set="set-overwrites-values")),
             R("/add", headers=H(X_Echo_Set_Header="Some-Other-Header:val"),
               resp_headers=H(X_Header_Add="add-appends-values")),
             R("/add", headers=H(X_Echo_Set_Header="Some-Other-Header:val,X-Header-Add:some-other-value"),
               resp_headers=H(X_Header_Add="some-other-value,add-appends-values")),
             R("/remove", headers=H(X_Echo_Set_Header="X-Header-Remove:val"), resp_absent=("X-Header-Remove",)),
             R("/multiple", headers=H(X_Echo_Set_Header="X-Header-Set-2:set-val-2,X-Header-Add-2:add-val-2,"
                                                        "X-Header-Remove-2:remove-val-2,"
                                                        "Another-Header:another-header-val,X-Header-Remove-1:val"),
               resp_headers=H(X_Header_Set_1="header-set-1", X_Header_Set_2="header-set-2",
                              X_Header_Add_1="header-add-1", X_Header_Add_2="add-val-2,header-add-2",
                              X_Header_Add_3="header-add-3", Another_Header="another-header-val"),
               resp_absent=("X-Header-Remove-1", "X-Header-Remove-2")))),
    Case("HTTPRouteTimeoutRequest", "httproute-timeout-request.yaml", std=("request-timeout",), requests=(
        R("/request-timeout"), R("/request-timeout?delay=1s", None, status=504),
        R("/disable-request-timeout?delay=1s"))),
    Case("HTTPRouteTimeoutBackendRequest", "httproute-timeout-backend-request.yaml", std=("backend-request-timeout",),
         requests=(R("/backend-timeout"), R("/backend-timeout?delay=1s", None, status=504),
                   R("/disable-backend-timeout?delay=1s"))),
    Case("HTTPRouteReferenceGrant", "httproute-reference-grant.yaml", std=("reference-grant",),
         requests=(R("/", "web"),)),
    Case("HTTPRoutePartiallyInvalidViaInvalidReferenceGrant",
         "httproute-partially-invalid-via-invalid-reference-grant.yaml",
         route_status=(("gateway-conformance-infra/invalid-reference-grant", "Accepted", "True", "Accepted"),
                       ("gateway-conformance-infra/invalid-reference-grant", "ResolvedRefs", "False",
                        "RefNotPermitted")),
         requests=(R("/v2", None, status=500), R("/", "app-v1"))),
    Case("HTTPRouteInvalidCrossNamespaceBackendRef", "httproute-invalid-cross-namespace-backend-ref.yaml",
         route_status=(("gateway-conformance-infra/invalid-cross-namespace-backend-ref", "ResolvedRefs", "False",
                        "RefNotPermitted"),),
         requests=(R("/", None, status=500),)),
    Case("HTTPRouteInvalidNonExistentBackendRef", "httproute-invalid-nonexistent-backendref.yaml",
         route_status=(("gateway-conformance-infra/invalid-nonexistent-backend-ref", "ResolvedRefs", "False",
                        "BackendNotFound"),),
         requests=(R("/", None, status=500),)),
    Case("HTTPRouteInvalidBackendRefUnknownKind", "httproute-invalid-backendref-unknown-kind.yaml",
         route_status=(("gateway-conformance-infra/invalid-backend-ref-unknown-kind", "ResolvedRefs", "False",
                        "InvalidKind"),),
         requests=(R("/v2", None, status=500),)),
    Case("HTTPRouteInvalidReferenceGrant", "httproute-invalid-reference-grant.yaml",
         route_status=(("gateway-conformance-infra/reference-grant", "ResolvedRefs", "False", "RefNotPermitted"),),
         requests=(R("/", None, status=500),)),
    Case("HTTPRouteNamedRule", "httproute-named-rule.yaml", std=("http-named-rules",),
         requests=(R("/named", "any"), R("/unnamed", "any"))),
    Case("HTTPRouteWeight", "httproute-weight.yaml", std=("weighted-backends",), requests=(R("/", None),)),
    Case("HTTPRouteCORS", "httproute-cors.yaml", std=("cors-multiple-origins-methods-headers", "cors-wildcard-methods"),
         conditions=tuple((f"{INFRA}/{r}", "ResolvedRefs", "True", "ResolvedRefs")
                          for r in ("cors-wildcard-origin", "cors-wildcard-methods-headers")),
         requests=(
             *(preflight("/cors-1", origin, "GET", "x-header-1, x-header-2", allow=(
                 ("Access-Control-Allow-Origin", (origin,)), ("Access-Control-Allow-Methods", ("GET, OPTIONS",)),
                 ("Access-Control-Allow-Headers", ("x-header-1, x-header-2",)),
                 ("Access-Control-Expose-Headers", ("x-header-3, x-header-4",)), ("Access-Control-Max-Age", ("3600",)),
                 ("Access-Control-Allow-Credentials", ("true",))))
               for origin in ("https://www.foo.com", "https://www.bar.com", "https://xpto.www.bar.com")),
             preflight("/cors-1", "https://foobar.com", "GET", "x-header-1, x-header-2", statuses=(403,),
                       absent=("Access-Control-Allow-Origin",)),
             *(R("/cors-1", headers=H(Origin=o), resp_any=(("Access-Control-Allow-Origin", (o,)),))
               for o in ("https://www.foo.com", "https://www.bar.com")),
             R("/cors-1", headers=H(Origin="https://foobar.com"), resp_absent=("Access-Control-Allow-Origin",)),
             preflight("/cors-2", "https://www.foo.com", "POST", allow=(
                 ("Access-Control-Allow-Origin", ("https://www.foo.com",)),
                 ("Access-Control-Allow-Methods", ("POST", "*"))), absent=("Access-Control-Allow-Credentials",)),
             *(preflight("/cors-wildcard-origin", o, "PUT", allow=(
                 ("Access-Control-Allow-Origin", (o, "*")), ("Access-Control-Allow-Methods", ("PUT",))),
                 absent=("Access-Control-Allow-Credentials",))
               for o in ("https://foobar.com", "https://foobar.com:12345")),
             R("/cors-wildcard-origin", method="PUT", headers=H(Origin="https://foobar.com"),
               resp_any=(("Access-Control-Allow-Origin", ("https://foobar.com", "*")),),
               resp_absent=("Access-Control-Allow-Credentials",)),
             R("/cors-wildcard-origin", method="PUT", headers=H(Origin="https://foobar.com:12345"),
               resp_any=(("Access-Control-Allow-Origin", ("https://foobar.com:12345", "*")),)),
             preflight("/cors-wildcard-methods-headers", "https://other.foo.com", "PUT", "x-header-1,x-header-2", allow=(
                 ("Access-Control-Allow-Origin", ("https://other.foo.com",)), ("Access-Control-Allow-Methods", ("PUT",)),
                 ("Access-Control-Allow-Headers", ("x-header-1, x-header-2",)),
                 ("Access-Control-Allow-Credentials", ("true",)))),
             R("/cors-wildcard-methods-headers", headers=H(Origin="https://other.foo.com"),
               resp_any=(("Access-Control-Allow-Origin", ("https://other.foo.com",)),
                         ("Access-Control-Allow-Credentials", ("true",)))),
             preflight("/cors-wildcard-methods-headers-unauth", "https://other.foo.com", "PUT", "x-header-1,x-header-2",
                       allow=(("Access-Control-Allow-Origin", ("https://other.foo.com", "*")),
                              ("Access-Control-Allow-Methods", ("PUT", "*")),
                              ("Access-Control-Allow-Headers", ("x-header-1, x-header-2", "*"))),
                       absent=("Access-Control-Allow-Credentials",)),
             R("/cors-wildcard-methods-headers-unauth", headers=H(Origin="https://other.foo.com"),
               resp_any=(("Access-Control-Allow-Origin", ("https://other.foo.com", "*")),),
               resp_absent=("Access-Control-Allow-Credentials",)))),
    Case("HTTPRouteRequestHeaderModifierBackendWeights", "httproute-request-header-modifier-backend-weights.yaml",
         std=("request-header-modifier-backend-weights",), requests=(R("/", None),)),
    Case("HTTPRouteRequestMirror", "httproute-request-mirror.yaml", requests=(
        R("/mirror"), R("/mirror-and-modify-headers", headers=(*HEADER_EDITS_SENT,), up_headers=HEADER_EDITS_UP,
                        up_absent=("X-Header-Remove",)))),
    Case("HTTPRouteBackendProtocolWebSocket", "httproute-backend-protocol-websocket.yaml",
         conditions=((f"{INFRA}/backend-protocol-ws", "Accepted", "True", "Accepted"),), requests=(W(),)),
    Case("HTTPRouteHTTPSListenerDetectMisdirectedRequests", "httproute-https-listener-detect-misdirected-requests.yaml",
         gateway="same-namespace-with-https-listener",
         std=tuple(f"https-listener-detect-misdirected-requests-test-{i}" for i in (1, 2, 3, 4)),
         requests=tuple(C("/detect-misdirected-requests", sni, host, to if isinstance(to, str) else None,
                          200 if isinstance(to, str) else to) for sni, host, to in MISDIRECTED_REQUESTS)),
    Case("HTTPRouteBackendProtocolH2C", "httproute-backend-protocol-h2c.yaml",
         conditions=((f"{INFRA}/backend-protocol-h2c", "Accepted", "True", "Accepted"),),
         requests=(C("/", "", "gateway.example"),)),
    Case("GatewayOptionalAddressValue", "gateway-optional-address-value.yaml", addressed=("gateway-without-address-value",),
         conditions=tuple(("Gateway:gateway-without-address-value", c, "True", c) for c in ("Accepted", "Programmed"))),
    Case("GatewayStaticAddresses", "gateway-static-addresses.yaml",
         conditions=(("Gateway:gateway-static-addresses", "Accepted", "False", "UnsupportedAddress"),),
         then=(Case("GatewayStaticAddresses", "gateway-static-addresses.yaml", edit=without_addresses("test/fake-invalid-type"),
                    conditions=(("Gateway:gateway-static-addresses", "Accepted", "True", "Accepted"),
                                ("Gateway:gateway-static-addresses", "Programmed", "False", "AddressNotUsable"))),
               Case("GatewayStaticAddresses", "gateway-static-addresses.yaml",
                    edit=without_addresses("test/fake-invalid-type", UNUSABLE_ADDRESS),
                    own_address=("gateway-static-addresses",), listener_routes=(("gateway-static-addresses", "http", 0),),
                    conditions=(("Gateway:gateway-static-addresses", "Accepted", "True", "Accepted"),
                                ("Gateway:gateway-static-addresses", "Programmed", "True", "Programmed"),
                                ("Gateway:gateway-static-addresses/http", "Accepted", "True", "Accepted"),
                                ("Gateway:gateway-static-addresses/http", "ResolvedRefs", "True", "ResolvedRefs"))))),
    # observedGeneration is the Kubernetes writer's (test_kube_gateway_api.py): here, that a
    # Gateway with a name of the longest length gets its conditions
    Case("GatewayNameMaximumLength", "gateway-name-maximum-length.yaml", conditions=tuple(
        (f"Gateway:gateway-name-maximum-length-{'a' * 225}", c, "True", c) for c in ("Accepted", "Programmed"))),
    Case("HTTPRouteServiceTypes", "httproute-service-types.yaml", std=("service-types",), edit=fill_endpoint_slices,
         requests=(R("/manual-endpointslices"), R("/headless"), R("/headless-manual-endpointslices"))),
    Case("HTTPRouteRequestMultipleMirrors", "httproute-request-multiple-mirrors.yaml",
         conditions=((f"{INFRA}/request-multiple-mirrors", "Accepted", "True", "Accepted"),), requests=(
             R("/multi-mirror"), R("/multi-mirror-and-modify-request-headers", headers=HEADER_EDITS_SENT,
                                   up_headers=HEADER_EDITS_UP, up_absent=("X-Header-Remove",)))),
    Case("HTTPRouteRequestPercentageMirror", "httproute-request-percentage-mirror.yaml",
         std=("request-percentage-mirror",), requests=(
             R("/percent-mirror"), R("/percent-mirror-fraction"),
             R("/percent-mirror-and-modify-headers", headers=HEADER_EDITS_SENT, up_headers=HEADER_EDITS_UP,
               up_absent=("X-Header-Remove",)))),
    Case("HTTPRouteRedirectPortAndScheme", "httproute-redirect-port-and-scheme.yaml", std=(
        "http-route-for-listener-on-port-80", "http-route-for-listener-on-port-8080", "http-route-for-listener-on-port-443"),
         requests=tuple(
             R(path, None, status=302, gateway=gw, host=host, sni=sni,
               location={"scheme": scheme, "host": "example.org", "port": port})
             for gw, host, sni, redirects in (
                 ("same-namespace", "example.org", None, (
                     ("/scheme-nil-and-port-nil", "http", None), ("/scheme-nil-and-port-80", "http", None),
                     ("/scheme-nil-and-port-8080", "http", "8080"), ("/scheme-https-and-port-nil", "https", None),
                     ("/scheme-https-and-port-443", "https", None), ("/scheme-https-and-port-8443", "https", "8443"))),
                 ("same-namespace-with-http-listener-on-8080", "example.org:8080", None, (
                     ("/scheme-nil-and-port-nil", "http", "8080"), ("/scheme-nil-and-port-80", "http", None),
                     ("/scheme-https-and-port-nil", "https", None))),
                 ("same-namespace-with-https-listener", "example.org", "example.org", (
                     ("/scheme-nil-and-port-nil", "https", None), ("/scheme-nil-and-port-443", "https", None),
                     ("/scheme-nil-and-port-8443", "https", "8443"), ("/scheme-http-and-port-nil", "http", None),
                     ("/scheme-http-and-port-80", "http", None), ("/scheme-http-and-port-8080", "http", "8080"))))
             for path, scheme, port in redirects)),
    Case("HTTPRouteHTTPSListener", "httproute-https-listener.yaml", gateway="same-namespace-with-https-listener",
         std=("httproute-https-test", "httproute-https-test-no-hostname"), requests=(
             R("/", host="example.org", sni="example.org"), miss(path="/", host="unknown-example.org",
                                                                 sni="unknown-example.org"),
             R("/", "v2", host="second-example.org", sni="second-example.org"))),
    # status only (the suite sends no request)
    Case("HTTPRouteDisallowedKind", "httproute-disallowed-kind.yaml", unattached=("tlsroutes-only",),
         conditions=(("gateway-conformance-infra/disallowed-kind", "Accepted", "False", "NotAllowedByListeners"),
                     ("gateway-conformance-infra/disallowed-kind", "ResolvedRefs", "True", "ResolvedRefs"))),
    Case("HTTPRouteInvalidCrossNamespaceParentRef", "httproute-invalid-cross-namespace-parent-ref.yaml",
         unattached=("same-namespace",),
         conditions=((f"{WEB}/invalid-cross-namespace-parent-ref", "Accepted", "False", "NotAllowedByListeners"),
                     (f"{WEB}/invalid-cross-namespace-parent-ref", "ResolvedRefs", "True", "ResolvedRefs"))),
    Case("HTTPRouteInvalidParentRefNotMatchingListenerPort", "httproute-invalid-parentref-not-matching-listener-port.yaml",
         unattached=("same-namespace",),
         conditions=((f"{INFRA}/httproute-listener-not-matching-route-port", "Accepted", "False", "NoMatchingParent"),
                     (f"{INFRA}/httproute-listener-not-matching-route-port", "ResolvedRefs", "True", ""))),
    Case("HTTPRouteInvalidParentRefNotMatchingSectionName",
         "httproute-invalid-parentref-not-matching-section-name.yaml", unattached=("same-namespace",),
         conditions=((f"{INFRA}/httproute-listener-not-matching-section-name", "Accepted", "False",
                      "NoMatchingParent"),)),
    Case("HTTPRouteInvalidParentRefSectionNameNotMatchingPort",
         "httproute-invalid-parentref-section-name-not-matching-port.yaml",
         unattached=("gateway-with-one-not-matching-port-and-section-name-route",),
         conditions=((f"{INFRA}/httproute-listener-section-name-not-matching-port", "Accepted", "False",
                      "NoMatchingParent"),)),
    Case("GatewayWithAttachedRoutes", "gateway-with-attached-routes.yaml",
         listener_routes=(("gateway-with-one-attached-route", "http", 1), ("gateway-with-two-attached-routes", "http", 2),
                          ("unresolved-gateway-with-one-attached-unresolved-route", "tls", 1)),
         conditions=(("Gateway:gateway-with-one-attached-route/http", "Accepted", "True", ""),
                     ("Gateway:gateway-with-one-attached-route/http", "ResolvedRefs", "True", ""),
                     (f"{INFRA}/http-route-not-accepted", "Accepted", "False", "NoMatchingListenerHostname"),
                     ("Gateway:unresolved-gateway-with-one-attached-unresolved-route/tls", "Programmed", "False", ""),
                     ("Gateway:unresolved-gateway-with-one-attached-unresolved-route/tls", "ResolvedRefs", "False", ""),
                     (f"{INFRA}/http-route-4", "ResolvedRefs", "False", ""))),
    Case("GatewayWithAttachedRoutesWithPort8080", "gateway-with-attached-routes-with-port-8080.yaml",
         listener_routes=(("gateway-with-two-listeners-and-one-attached-route", "http-unattached", 0),
                          ("gateway-with-two-listeners-and-one-attached-route", "http", 1)),
         conditions=tuple((f"Gateway:gateway-with-two-listeners-and-one-attached-route/{listener}", cond, "True", "")
                          for listener in ("http", "http-unattached") for cond in ("Accepted", "ResolvedRefs"))),
    Case("GatewayListenerUnsupportedProtocol", "gateway-invalid-listeners-unsupported-protocol.yaml",
         listener_routes=(("gateway-only-unsupported-protocols", "invalid", 0),
                          ("gateway-supported-and-unsupported-protocols", "http", 0),
                          ("gateway-supported-and-unsupported-protocols", "invalid", 0)),
         conditions=(("Gateway:gateway-only-unsupported-protocols", "Accepted", "False", "ListenersNotValid"),
                     ("Gateway:gateway-only-unsupported-protocols/invalid", "Accepted", "False", "UnsupportedProtocol"),
                     ("Gateway:gateway-supported-and-unsupported-protocols", "Accepted", "True", "ListenersNotValid"),
                     ("Gateway:gateway-supported-and-unsupported-protocols/http", "Accepted", "True", "Accepted"),
                     ("Gateway:gateway-supported-and-unsupported-protocols/invalid", "Accepted", "False",
                      "UnsupportedProtocol"))),
    Case("GatewayInvalidRouteKind", "gateway-invalid-route-kind.yaml",
         listener_routes=(("gateway-only-invalid-route-kind", "http", 0),
                          ("gateway-supported-and-invalid-route-kind", "http", 0)),
         conditions=(("Gateway:gateway-only-invalid-route-kind/http", "ResolvedRefs", "False", "InvalidRouteKinds"),
                     ("Gateway:gateway-supported-and-invalid-route-kind/http", "ResolvedRefs", "False",
                      "InvalidRouteKinds"))),
    Case("GatewayInvalidTLSConfiguration", "gateway-invalid-tls-configuration.yaml",
         conditions=tuple((f"Gateway:gateway-certificate-{g}/https", "ResolvedRefs", "False", "InvalidCertificateRef")
                          for g in ("nonexistent-secret", "unsupported-group", "unsupported-kind",
                                    "malformed-secret"))),
    Case("GatewaySecretInvalidReferenceGrant", "gateway-secret-invalid-reference-grant.yaml",
         listener_routes=(("gateway-secret-invalid-reference-grant", "https", 0),),
         conditions=(("Gateway:gateway-secret-invalid-reference-grant/https", "ResolvedRefs", "False",
                      "RefNotPermitted"),)),
    Case("GatewaySecretMissingReferenceGrant", "gateway-secret-missing-reference-grant.yaml",
         listener_routes=(("gateway-secret-missing-reference-grant", "https", 0),),
         conditions=(("Gateway:gateway-secret-missing-reference-grant/https", "ResolvedRefs", "False",
                      "RefNotPermitted"),)),
    # The suite checks status only; the TLS handshake (no route: 404) shows the gateway's
    # Envoy was sent the Secret of the other namespace over SDS, and once the grant is
    # deleted (meshd's own step) the listener and its certificate are gone.
    *(Case(test, f"gateway-secret-reference-grant-{suffix}.yaml", gateway=f"gateway-secret-reference-grant-{suffix}",
           listener_routes=((f"gateway-secret-reference-grant-{suffix}", "https", 0),),
           requests=(miss(path="/", sni="gateway.example"),),
           conditions=((f"Gateway:gateway-secret-reference-grant-{suffix}/https", "Programmed", "True", "Programmed"),
                       (f"Gateway:gateway-secret-reference-grant-{suffix}/https", "ResolvedRefs", "True", "")),
           then=(Case(test, f"gateway-secret-reference-grant-{suffix}.yaml", edit=delete_reference_grants,
                      gateway=f"gateway-secret-reference-grant-{suffix}", requests=(refused(path="/", sni="gateway.example"),),
                      conditions=((f"Gateway:gateway-secret-reference-grant-{suffix}/https", "ResolvedRefs", "False",
                                   "RefNotPermitted"),)),))
      for test, suffix in (("GatewaySecretReferenceGrantAllInNamespace", "all-in-namespace"),
                           ("GatewaySecretReferenceGrantSpecific", "specific"))),
    Case("TCPRouteInvalidBackendRefNonexistent", "tcproute-invalid-backendref-nonexistent.yaml", conditions=(
        (f"TCPRoute:{INFRA}/tcp-route-invalid-backend-ref-nonexistent", "ResolvedRefs", "False", "BackendNotFound"),)),
    Case("TCPRouteInvalidCrossNamespaceBackendRef", "tcproute-invalid-cross-namespace-backend-ref.yaml", conditions=(
        (f"TCPRoute:{INFRA}/tcp-invalid-cross-namespace-backend-ref", "Accepted", "True", "Accepted"),
        (f"TCPRoute:{INFRA}/tcp-invalid-cross-namespace-backend-ref", "ResolvedRefs", "False", "RefNotPermitted"))),
    Case("TCPRouteInvalidNonTCPListener", "tcproute-invalid-non-tcp-listener.yaml",
         unattached=("tcp-mixed-protocol-gateway",),
         conditions=((f"TCPRoute:{INFRA}/tcp-route", "Accepted", "False", "NotAllowedByListeners"),)),
    Case("TLSRouteInvalidBackendRefNonexistent", "tlsroute-invalid-backendref-nonexistent.yaml",
         gateway="gateway-tlsroute-invalid-backend-ref-nonexistent", requests=(T(443, None, sni="example.com"),),
         conditions=(
        (f"TLSRoute:{INFRA}/invalid-backend-ref-nonexistent", "Accepted", "True", "Accepted"),
        (f"TLSRoute:{INFRA}/invalid-backend-ref-nonexistent", "ResolvedRefs", "False", "BackendNotFound"))),
    Case("TLSRouteInvalidBackendRefUnknownKind", "tlsroute-invalid-backendref-unknown-kind.yaml",
         gateway="gateway-tlsroute-invalid-backend-ref-unknown-kind", requests=(T(443, None, sni="example.com"),),
         conditions=(
        (f"TLSRoute:{INFRA}/invalid-backend-ref-unknown-kind", "Accepted", "True", "Accepted"),
        (f"TLSRoute:{INFRA}/invalid-backend-ref-unknown-kind", "ResolvedRefs", "False", "InvalidKind"))),
    Case("TLSRouteInvalidNoMatchingListenerHostname", "tlsroute-invalid-no-matching-listener-hostname.yaml",
         unattached=("gateway-tls-exact-hostname", "gateway-tls-wildcard-hostname"),
         conditions=tuple((f"TLSRoute:{INFRA}/tlsroute-hostname-mismatch-{i}", "Accepted", "False",
                           "NoMatchingListenerHostname") for i in (1, 2))),
    Case("TLSRouteInvalidNoMatchingListener", "tlsroute-invalid-no-matching-listener.yaml", conditions=(
        (f"TLSRoute:{INFRA}/tlsroute-not-allowed-protocol-http", "Accepted", "False", "NotAllowedByListeners"),
        (f"TLSRoute:{INFRA}/tlsroute-not-allowed-protocol-https", "Accepted", "False", "NotAllowedByListeners"),
        (f"TLSRoute:{INFRA}/tlsroute-no-matching-section-name", "Accepted", "False", "NoMatchingParent"))),
    Case("TLSRouteListenerPassthroughSupportedKinds", "tlsroute-listener-passthrough-supported-kinds.yaml",
         listener_routes=(("gateway-tlsroute-passthrough-supported-kind", "tls-passthrough", 0),),
         conditions=(("Gateway:gateway-tlsroute-passthrough-supported-kind/tls-passthrough", "ResolvedRefs", "False",
                      "InvalidRouteKinds"),)),
    Case("TLSRouteListenerTerminateSupportedKinds", "tlsroute-listener-terminate-supported-kinds.yaml",
         listener_routes=(("gateway-tlsroute-terminate-supported", "tls-terminate", 0),),
         conditions=(("Gateway:gateway-tlsroute-terminate-supported/tls-terminate", "Accepted", "True", "Accepted"),)),
    Case("TLSRouteInvalidReferenceGrant", "tlsroute-invalid-reference-grant.yaml", conditions=(
        (f"TLSRoute:{INFRA}/gateway-conformance-infra-test", "Accepted", "True", "Accepted"),
        (f"TLSRoute:{INFRA}/gateway-conformance-infra-test", "ResolvedRefs", "False", "RefNotPermitted"))),
    Case("TLSRouteSimpleSameNamespace", "tlsroute-simple-same-namespace.yaml", gateway="gateway-tlsroute",
         conditions=((f"TLSRoute:{INFRA}/gateway-conformance-infra-test", "Accepted", "True", "Accepted"),),
         requests=(T(443, sni="abc.example.com", backend_tls=True, backend_sni="abc.example.com"),)),
    Case("TLSRouteTerminateSimpleSameNamespace", "tlsroute-terminate-simple-same-namespace.yaml",
         gateway="gateway-tlsroute-terminate",
         conditions=((f"TLSRoute:{INFRA}/tlsroute-terminated-test", "Accepted", "True", "Accepted"),),
         requests=(T(8443, sni="tls.example.com"),)),
    Case("TLSRouteMixedTerminationSameNamespace", "tlsroute-mixed-termination-same-namespace.yaml",
         gateway="gateway-tlsroute-mixed-termination",
         listener_routes=(("gateway-tlsroute-mixed-termination", "tls-terminate", 1),
                          ("gateway-tlsroute-mixed-termination", "tls-passthrough", 1)),
         conditions=tuple((f"TLSRoute:{INFRA}/gateway-conformance-mixed-{r}route", "Accepted", "True", "Accepted")
                          for r in ("passthrough", "terminate")),
         requests=(T(8883, sni="tls.example.com"),
                   T(8883, sni="abc.example.com", backend_tls=True, backend_sni="abc.example.com"))),
    Case("TLSRouteHostnameIntersection", "tlsroute-hostname-intersection.yaml", gateway="gw-tlsroute-exact-hostname-x-1",
         conditions=tuple((f"TLSRoute:{INFRA}/{r}", c, "True", c) for c in ("Accepted", "ResolvedRefs") for r in (
             "tlsroute-more-specific-wc-hostname-x-1", "tlsroute-exact-hostname-x-2",
             "tlsroute-less-specific-wc-hostname-x-2", "tlsroute-exact-hostname-x-3",
             "tlsroute-more-specific-wc-hostname-x-3", "tlsroute-exact-hostname-x-4",
             "tlsroute-less-specific-wc-hostname-x-4")),
         requests=tuple(
             r for gw, others, nomatch in (("gw-tlsroute-exact-hostname-x-1", False, "non.matching.com"),
                                           ("gw-tlsroute-more-specific-wc-hostname-x-2", True, "non.matching.com"),
                                           ("gw-tlsroute-less-specific-wc-hostname-x-3", True, "non.matching.com"),
                                           ("gw-tlsroute-empty-hostname-x-4", True, "non.matching.org"))
             for r in (R("/", "tls", host="abc.example.com", sni="abc.example.com", gateway=gw, port=443),
                       *((R("/", "tls-2", host="other.example.com", sni="other.example.com", gateway=gw, port=443),)
                         if others else ()),
                       refused(path="/", host=nomatch, sni=nomatch, gateway=gw, port=443)))),
    Case("TCPRouteParentRefPortAndSectionName", "tcproute-parentref-port-and-section-name.yaml",
         gateway="tcp-multi-listener-gateway",
         conditions=tuple((f"TCPRoute:{INFRA}/tcp-route-by-{r}", "Accepted", "True", "Accepted")
                          for r in ("port", "section", "section-and-port")),
         requests=(T(9300, "tcp-echo-one"), T(9301, "tcp-echo-two"), T(9302, "tcp-echo-three"))),
    Case("TCPRouteParentRefAttachAll", "tcproute-parentref-attach-all.yaml", gateway="tcp-attach-all-gateway",
         conditions=((f"TCPRoute:{INFRA}/tcp-route-attach-all", "Accepted", "True", "Accepted"),),
         requests=tuple(T(port, "tcp-echo-attach-all") for port in (9310, 9311, 9312, 9313))),
    Case("TCPRouteReferenceGrant", "tcproute-reference-grant.yaml", gateway="tcp-reference-grant-gateway",
         conditions=((f"TCPRoute:{INFRA}/tcp-reference-grant", "Accepted", "True", "Accepted"),
                     (f"TCPRoute:{INFRA}/tcp-reference-grant", "ResolvedRefs", "True", "ResolvedRefs")),
         requests=(T(9320, "web/tcp-reference-grant-backend"),),
         then=(Case("TCPRouteReferenceGrant", "tcproute-reference-grant.yaml", gateway="tcp-reference-grant-gateway",
                    edit=delete_reference_grants, requests=(T(9320, None),), conditions=(
                        (f"TCPRoute:{INFRA}/tcp-reference-grant", "ResolvedRefs", "False", "RefNotPermitted"),)),)),
    Case("GatewayModifyListeners", "gateway-modify-listeners.yaml",
         listener_routes=(("gateway-add-listener", "https", 1), ("gateway-remove-listener", "https", 1),
                          ("gateway-remove-listener", "http", 1)),
         then=(Case("GatewayModifyListeners", "gateway-modify-listeners.yaml", edit=modify_listeners,
                    listener_names=(("gateway-add-listener", ("https", "http")), ("gateway-remove-listener", ("http",))),
                    listener_routes=(("gateway-add-listener", "https", 1), ("gateway-add-listener", "http", 1),
                                     ("gateway-remove-listener", "http", 1)),
                    conditions=tuple((f"Gateway:{gw}/{ln}", c, "True", c) for gw, ln in (
                        ("gateway-add-listener", "https"), ("gateway-add-listener", "http"),
                        ("gateway-remove-listener", "http")) for c in ("Accepted", "ResolvedRefs"))),)),
    Case("TCPRouteWeightedRouting", "tcproute-weighted-routing.yaml", gateway="tcp-weighted-gateway",
         conditions=((f"TCPRoute:{INFRA}/tcp-weighted-route", "Accepted", "True", "Accepted"),),
         requests=(T(9300, "tcp-backend-v"),)),
    Case("TCPRouteMultipleRoutesAttachment", "tcproute-multiple-routes-attachment.yaml",
         gateway="tcp-multi-route-attach-gateway", newer=("tcproute-attach-newer",), extra=(NEWER_TCP_ROUTE,),
         listener_routes=(("tcp-multi-route-attach-gateway", "tcp", 2),),
         conditions=tuple((f"TCPRoute:{INFRA}/tcproute-attach-{r}", "Accepted", "True", "Accepted")
                          for r in ("older", "newer")),
         requests=(T(9310, "tcp-attach-backend-1"),)),
    Case("GRPCExactMethodMatching", "grpcroute-exact-method-matching.yaml",
         conditions=((f"GRPCRoute:{INFRA}/exact-matching", "Accepted", "True", "Accepted"),),
         requests=(G("Echo"), G("EchoTwo", "grpc-v2"), G("EchoThree", None))),
    Case("GRPCRouteHeaderMatching", "grpcroute-header-matching.yaml",
         conditions=((f"GRPCRoute:{INFRA}/grpc-header-matching", "Accepted", "True", "Accepted"),),
         requests=tuple(G(metadata=tuple((k.lower(), v) for k, v in md), to=to) for md, to in (
             (H(Version="one"), "grpc-v1"), (H(Version="two"), "grpc-v2"), (H(Version="two", Color="orange"), "grpc-v1"),
             (H(Version="two", Color="blue"), "grpc-v2"), (H(Color="orange"), None), (H(Some_Other_Header="one"), None),
             (H(Color="blue"), "grpc-v1"), (H(Color="green"), "grpc-v1"), (H(Color="red"), "grpc-v2"),
             (H(Color="yellow"), "grpc-v2"), (H(Color="purple"), None)))),
    Case("GRPCRouteListenerHostnameMatching", "grpcroute-listener-hostname-matching.yaml",
         gateway="grpcroute-listener-hostname-matching",
         conditions=tuple((f"GRPCRoute:{INFRA}/backend-v{i}", "Accepted", "True", "Accepted") for i in (1, 2, 3)),
         requests=(G(authority="bar.com"), G(authority="foo.bar.com", to="grpc-v2"),
                   *(G(authority=h, to="grpc-v3") for h in ("baz.bar.com", "boo.bar.com", "multiple.prefixes.bar.com",
                                                           "multiple.prefixes.foo.com")),
                   G(authority="foo.com", to=None), G(authority="no.matching.host", to=None))),
    Case("GRPCRouteNamedRule", "grpcroute-named-rule.yaml",
         conditions=((f"GRPCRoute:{INFRA}/grpc-named-rules", "Accepted", "True", "Accepted"),),
         requests=(G("Echo"), G("EchoTwo", "grpc-v2"))),
    Case("GRPCRouteRequestHeaderModifier", "grpcroute-request-header-modifier.yaml",
         conditions=((f"GRPCRoute:{INFRA}/grpc-request-header-modifier", "Accepted", "True", "Accepted"),),
         requests=(G(authority=GRPC_SERVICE, metadata=(("some-other-header", "val"),)),
                   G(authority=GRPC_SERVICE, metadata=(("x-header-set", "this-value-should-be-overwritten"),)),
                   G(authority=GRPC_SERVICE, metadata=(("x-header-add", "this-value-should-be-appended"),)),
                   G(authority=GRPC_SERVICE, metadata=(("x-header-remove", "val"),)),
                   G("EchoTwo", "grpc-v2", authority=GRPC_SERVICE,
                     metadata=(("x-header-set-2", "set-val-2"), ("x-header-add-2", "add-val-2"),
                               ("x-header-remove-2", "remove-val-2"), ("some-other-header", "val"))))),
    Case("GRPCRouteWeight", "grpcroute-weight.yaml",
         conditions=((f"GRPCRoute:{INFRA}/weighted-backends", "Accepted", "True", "Accepted"),),
         requests=(G("Echo", "grpc-infra-backend-v"),)),
    Case("GatewayInvalidParametersRef", "gateway-invalid-parameters-ref.yaml",
         conditions=(("Gateway:gateway-invalid-parameters-ref", "Accepted", "False", "InvalidParameters"),)),
    *(Case(test, file, gateway=gw, std=tuple(f"attaches-to-{listener}{suffix}" for listener in ISOLATION.values()), requests=tuple(
        R(f"/{path}", host=host) if path == listener else miss(path=f"/{path}", host=host)
        for host, listener in ISOLATION.items() for path in ISOLATION.values()))
      for test, file, gw, suffix in (
          ("GatewayHTTPListenerIsolation", "gateway-http-listener-isolation.yaml", "http-listener-isolation", ""),
          ("GatewayHTTPListenerIsolation[hostname-intersection]",
           "gateway-http-listener-isolation-with-hostname-intersection.yaml",
           "http-listener-isolation-with-hostname-intersection", "-with-hostname-intersection"))),
)


# --- the bed: meshd, echo pods, one Envoy per Gateway --------------------------------------


@dataclass
class Bed:
    tmp: Path
    cfg: Path
    cp: object
    stack: contextlib.ExitStack
    pods: dict[tuple[str, str], EchoPod]
    certs: dict[str, Pem]  # the suite's Secrets by name (one name, one certificate)
    ports: dict[tuple[str, int], int] = field(default_factory=dict)  # (gateway, listener port) -> local port
    ips: dict[tuple[str, str], str] = field(default_factory=dict)  # the pods of the cases' own Deployments
    vips: dict[str, str] = field(default_factory=dict)  # Gateway -> its Service's cluster IP
    proxies: dict[str, object] = field(default_factory=dict)
    tls: ssl.SSLContext = field(default_factory=ssl.create_default_context)  # trusts the suite's certificates
    tls_any: ssl.SSLContext = field(default_factory=lambda: ssl._create_unverified_context())

    def configz(self) -> list[dict]:
        return json.loads(http_get("127.0.0.1", self.cp.monitoring_port, "/debug/configz")[1])["gatewayAPI"]

    def status(self, kind: str, ns: str, name: str) -> dict:
        for entry in self.configz():
            if (entry["kind"], entry["namespace"], entry["name"]) == (kind, ns, name):
                return entry["status"]
        return {}

    def apply(self, case: Case) -> None:
        """The case's manifest (plus a Service for each of its Gateways, its Deployments as
        Pods answered by echo pods) as case.yaml; an Envoy for every Gateway it talks to."""
        docs = [d for d in yaml.safe_load_all(manifest(f"tests/{case.file}")) if d]
        docs += [yaml.safe_load(extra) for extra in case.extra]
        for doc in docs:  # the suite's address pools: this Gateway's own Service address, and an unused one
            for addr in doc["spec"].get("addresses") or () if doc["kind"] == "Gateway" else ():
                if addr.get("value") == "PLACEHOLDER_USABLE_ADDRS":
                    addr["value"] = self.vip(doc["metadata"]["name"])
                elif addr.get("value") == "PLACEHOLDER_UNUSABLE_ADDRS":
                    addr["value"] = UNUSABLE_ADDRESS
        if case.edit is not None:
            case.edit(docs)
        for i, doc in enumerate(docs):
            if doc["kind"] == "Deployment":
                key = (doc["metadata"]["namespace"], f"{doc['metadata']['name']}-0")
                ip = self.ips.setdefault(key, f"127.0.3.{len(self.ips) + 10}")
                docs[i], run = as_pod(doc, ip)
                self.run(run)
        for doc in docs:  # TCPRouteMultipleRoutesAttachment creates the newer route a second later
            if doc["metadata"]["name"] in case.newer:
                doc["metadata"]["creationTimestamp"] = "2030-01-01T00:00:00Z"
        services = [self._gateway_service(d["metadata"]["name"], d) for d in docs if d["kind"] == "Gateway"]
        write(self.cfg / "case.yaml", "\n---\n".join([yaml.safe_dump_all(docs), *services]))
        for gw in {r.gateway or case.gateway for r in case.requests}:
            self._proxy(gw)

    def run(self, run: PodRun) -> None:
        """The echo pod `run` stands for, started once for the session."""
        key = (run.namespace, run.pod)
        if key in self.pods:
            return
        tls = self.cert_files(run.tls_secret) if run.tls_secret else None
        if run.mode == "tcp":
            self.pods[key] = self.stack.enter_context(tcp_echo_pod(run.namespace, run.pod, run.ip, ECHO_PORT,
                                                                   TLS_PORT if tls else None, *(tls or ("", ""))))
        elif run.mode == "grpc":
            self.pods[key] = self.stack.enter_context(grpc_echo_pod(run.namespace, run.pod, run.ip, ECHO_PORT))
        else:
            self.pods[key] = self.stack.enter_context(echo_pod(run.namespace, run.pod, run.ip, ECHO_PORT,
                                                               tls_port=TLS_PORT if tls else None,
                                                               cert=tls))

    def cert_files(self, secret: str) -> tuple[str, str]:
        pem = self.certs[secret]
        cert, key = self.tmp / f"{secret}.crt", self.tmp / f"{secret}.key"
        cert.write_bytes(pem.cert)
        key.write_bytes(pem.key)
        return str(cert), str(key)

    def _gateway_service(self, name: str, doc: dict) -> str:
        ns = doc["metadata"].get("namespace", INFRA)
        ports = sorted({listener["port"] for listener in doc["spec"]["listeners"]})
        for p in ports:
            self.ports.setdefault((name, p), free_port())
        return yaml.safe_dump({"apiVersion": "v1", "kind": "Service",
                               "metadata": {"name": f"{name}-istio", "namespace": ns},
                               "spec": {"selector": {GATEWAY_NAME_LABEL: name}, "clusterIP": self.vip(name),
                                        "ports": [{"name": f"p{p}", "port": p, "targetPort": self.ports[(name, p)]}
                                                  for p in ports]}})

    def vip(self, gateway: str) -> str:
        """The cluster IP of the Gateway's Service (`<gateway>-istio`)."""
        return self.vips.setdefault(gateway, f"10.96.{len(self.vips) // 250}.{len(self.vips) % 250 + 1}")

    def _proxy(self, gateway: str) -> None:
        if gateway not in self.proxies:
            self.proxies[gateway] = self.stack.enter_context(envoy(self.tmp, [
                "--type", "router", "--namespace", INFRA, "--pod", f"{gateway}-istio-0", "--ip", "127.0.0.1",
                "--service-account", f"{gateway}-istio", "--labels", f"{GATEWAY_NAME_LABEL}={gateway}",
                # the secure port: only an authenticated gateway is sent its certificates
                "--xds-address", f"127.0.0.1:{self.cp.secure_port}", "--ca-dir", str(self.cp.ca_dir)]))


@pytest.fixture(scope="module")
def bed(tmp_path_factory) -> Iterator[Bed]:
    tmp = tmp_path_factory.mktemp("gateway-api-conformance")
    cfg = tmp / "config"
    cfg.mkdir()
    docs, runs = base_documents()
    # the Secrets the suite creates after the base manifests, from one CA the clients trust.
    # The suite's SANs, plus the names its clients reach through `*` and `*.org`: Go
    # matches a wildcard over one label of a TLD, OpenSSL (this client) does not.
    ca = make_ca("gateway-api conformance")
    certs = {name: make_cert(ca, sans) for name, sans in (
        ("certificate", ["*", "gateway.example"]),
        ("tls-validity-checks-certificate", ["*", "*.org", "*.wildcard.org", "example.org", "second-example.org",
                                             "unknown-example.org"]),
        ("tls-checks-certificate", ["abc.example.com", "other.example.com"]),
        ("tls-passthrough-checks-certificate", ["abc.example.com"]),
        ("tls-terminate-checks-certificate", ["tls.example.com"]))}
    secrets = [tls_secret_yaml(name, WEB if name == "certificate" else INFRA, pem) for name, pem in certs.items()]
    secrets.append(tls_secret_yaml("tls-passthrough-checks-certificate", APP, certs["tls-passthrough-checks-certificate"]))
    with contextlib.ExitStack() as stack:
        b = Bed(tmp, cfg, None, stack, {}, certs)
        b.tls = ssl.create_default_context(cadata=ca.cert.decode())
        (tmp / "suite-ca.pem").write_bytes(ca.cert)
        for run in runs:
            b.run(run)
        services = [b._gateway_service(d["metadata"]["name"], d) for d in docs if d["kind"] == "Gateway"]
        write(cfg / "base.yaml", "\n---\n".join([yaml.safe_dump_all(docs), *services, *secrets]))
        write(cfg / "case.yaml", "")
        b.cp = stack.enter_context(meshd(cfg, tmp))
        yield b
        for gw, proxy in b.proxies.items():
            rejected = {k: v for k, v in proxy.rejected_counters().items() if v}
            assert rejected == {}, (gw, rejected)


# --- sending and checking ---------------------------------------------------------------


def send(bed: Bed, case: Case, r: R) -> tuple[int, dict[str, str], bytes]:
    gw = r.gateway or case.gateway
    port = r.port or min(p for (g, p) in bed.ports if g == gw)
    conn = http.client.HTTPConnection("127.0.0.1", bed.ports[(gw, port)], timeout=5)
    if r.sni is not None:
        conn.sock = tcp_connect(bed, gw, port, r.sni, verify=r.status != 0)
    try:
        headers = dict(r.headers)
        conn.putrequest(r.method, r.path, skip_host=True, skip_accept_encoding=True)
        conn.putheader("Host", r.host or "gateway.example")
        for k, v in headers.items():
            conn.putheader(k, v)
        conn.endheaders()
        resp = conn.getresponse()
        body = resp.read()
        merged: dict[str, str] = {}
        for k, v in resp.getheaders():
            merged[k.lower()] = f"{merged[k.lower()]},{v}" if k.lower() in merged else v
        return resp.status, merged, body
    finally:
        conn.close()


def backend(to: str) -> tuple[str, str]:
    """(namespace, pod name prefix) of a backend: a BACKENDS short name, `web/<prefix>`, or
    the prefix of a pod of the infra namespace."""
    if to in BACKENDS:
        return BACKENDS[to]
    ns, _, prefix = to.rpartition("/")
    return {"web": WEB, "": INFRA}[ns], prefix


def tcp_connect(bed: Bed, gateway: str, port: int, sni: str | None, verify: bool = True) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", bed.ports[(gateway, port)]), timeout=5)
    if sni is not None:
        # a connection that must be refused is not verified: only a refusal may fail it
        sock = (bed.tls if verify else bed.tls_any).wrap_socket(sock, server_hostname=sni)
    return sock


def tcp_problems(bed: Bed, case: Case, t: T) -> list[str]:
    gw = t.gateway or case.gateway
    where = f"{gw}:{t.port} {'SNI ' + t.sni if t.sni is not None else 'TCP'}"
    try:
        sock = tcp_connect(bed, gw, t.port, t.sni, verify=t.to is not None)
        with sock, sock.makefile("rb") as reader:
            if reader.readline() != TCP_WELCOME:
                raise OSError("no echo-basic greeting")
            sock.sendall(b"TEST\n")
            seen = json.loads(reader.readline())
    except (OSError, ValueError) as e:
        return [] if t.to is None else [f"{where}: {e!r}"]
    if t.to is None:
        return [f"{where}: answered by {seen['namespace']}/{seen['pod']}, want the connection refused"]
    ns, prefix = backend(t.to)
    got = (seen["namespace"], seen["pod"].startswith(prefix), seen["isTLS"], (seen.get("tls") or {}).get("serverName", ""))
    want = (ns, True, t.backend_tls, t.backend_sni)
    return [] if got == want else [f"{where}: reached {seen}, want {ns}/{prefix}* isTLS {t.backend_tls} "
                                   f"SNI {t.backend_sni!r}"]


def grpc_call(bed: Bed, case: Case, g: G) -> dict:
    """The call's answer (the backend's JSON), or {"error": <status code name>}."""
    import grpc
    gw = g.gateway or case.gateway
    port = min(p for (name, p) in bed.ports if name == gw)
    options = [("grpc.default_authority", g.authority)] if g.authority else []
    with grpc.insecure_channel(f"127.0.0.1:{bed.ports[(gw, port)]}", options=options) as channel:
        try:
            return json.loads(channel.unary_unary(f"/{GRPC_SERVICE}/{g.method}")(b"", metadata=list(g.metadata),
                                                                                 timeout=5))
        except grpc.RpcError as e:
            return {"error": e.code().name}


def grpc_problems(bed: Bed, case: Case, g: G) -> list[str]:
    got = grpc_call(bed, case, g)
    where = f"{g.method} {g.authority or ''} {dict(g.metadata)}"
    if g.to is None:
        return [] if got.get("error") == "UNIMPLEMENTED" else [f"{where}: {got}, want UNIMPLEMENTED"]
    ns, prefix = backend(g.to)
    if "error" in got or got["namespace"] != ns or not got["pod"].startswith(prefix):
        return [f"{where}: {got.get('error') or got['namespace'] + '/' + got['pod']}, want {ns}/{prefix}*"]
    return []


def ws_problems(bed: Bed, case: Case, w: W) -> list[str]:
    gw = w.gateway or case.gateway
    port = min(p for (g, p) in bed.ports if g == gw)
    key = base64.b64encode(os.urandom(16)).decode()
    try:
        with socket.create_connection(("127.0.0.1", bed.ports[(gw, port)]), timeout=5) as sock, \
                sock.makefile("rb") as reader:
            sock.sendall(f"GET {w.path} HTTP/1.1\r\nHost: gateway.example\r\nUpgrade: websocket\r\n"
                         f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
                         f"Origin: ws://gateway/{case.test}\r\n\r\n".encode())
            head = [reader.readline()]
            while head[-1] not in (b"\r\n", b""):
                head.append(reader.readline())
            fields = dict(line.decode().rstrip("\r\n").split(": ", 1) for line in head[1:-1] if b": " in line)
            accept = {k.lower(): v for k, v in fields.items()}.get("sec-websocket-accept")
            if not head[0].startswith(b"HTTP/1.1 101") or accept != websocket_accept(key):
                return [f"websocket {w.path}: {head[0]!r}, Sec-WebSocket-Accept {accept!r}"]
            got = []
            for opcode, payload in ((WS_TEXT, b"Websocket Support!"), (WS_BINARY, bytes(range(1, 8)))):
                sock.sendall(ws_frame(opcode, payload, mask=os.urandom(4)))
                got.append(read_ws_frame(reader))
            sock.sendall(ws_frame(WS_CLOSE, b"", mask=os.urandom(4)))
    except OSError as e:
        return [f"websocket {w.path}: {e!r}"]
    want = [(WS_TEXT, b"Websocket Support!"), (WS_BINARY, bytes(range(1, 8)))]
    return [] if got == want else [f"websocket {w.path}: echoed {got}, want {want}"]


def h2_problems(bed: Bed, case: Case, c: C) -> list[str]:
    gw = c.gateway or case.gateway
    port = bed.ports[(gw, min(p for (g, p) in bed.ports if g == gw))]
    how = ["--http2", "--cacert", str(bed.tmp / "suite-ca.pem"), "--connect-to", f"{c.sni}:443:127.0.0.1:{port}",
           f"https://{c.sni}{c.path}"] if c.sni else ["--http2-prior-knowledge", f"http://127.0.0.1:{port}{c.path}"]
    run = subprocess.run(["curl", "-s", "--max-time", "5", "-H", f"Host: {c.host}", "-o", "-",
                          "-w", "\n%{http_version} %{http_code}", *how], capture_output=True, text=True, timeout=10)
    where = f"HTTP/2 SNI {c.sni} Host {c.host}" if c.sni else f"h2c Host {c.host}"
    body, _, last = run.stdout.rpartition("\n")
    version, _, code = last.partition(" ")
    if version != "2" or code != str(c.status):
        return [f"{where}: HTTP/{version} {code} (curl {run.returncode}), want HTTP/2 {c.status}"]
    if c.to is not None:
        ns, prefix = backend(c.to)
        seen = json.loads(body)
        if seen["namespace"] != ns or not seen["pod"].startswith(prefix):
            return [f"{where}: reached {seen['namespace']}/{seen['pod']}, want {ns}/{prefix}*"]
    return []


def problems(bed: Bed, case: Case, r: R | T | G | W | C) -> list[str]:
    if isinstance(r, C):
        return h2_problems(bed, case, r)
    if isinstance(r, W):
        return ws_problems(bed, case, r)
    if isinstance(r, T):
        return tcp_problems(bed, case, r)
    if isinstance(r, G):
        return grpc_problems(bed, case, r)
    try:
        status, headers, body = send(bed, case, r)
    except OSError as e:
        return [] if r.status == 0 else [f"{r.path}: {e}"]
    where = f"{r.method} {r.host or ''}{r.path} {dict(r.headers)}"
    if status != r.status and status not in r.statuses:
        return [f"{where}: status {status}, want {r.status}: {body[:200]!r}"]
    out = []
    if r.to is not None and r.method != "HEAD":
        seen = json.loads(body)
        ns, prefix = BACKENDS[r.to]
        if seen["namespace"] != ns or not seen["pod"].startswith(prefix):
            out.append(f"{where}: reached {seen['namespace']}/{seen['pod']}, want {ns}/{prefix}*")
        if seen["path"] != (r.up_path or r.path) and not (r.up_path and seen["path"].split("?")[0] == r.up_path):
            out.append(f"{where}: upstream path {seen['path']}, want {r.up_path or r.path}")
        if r.up_host is not None and seen["host"] != r.up_host:
            out.append(f"{where}: upstream host {seen['host']}, want {r.up_host}")
        up = {k.lower(): ",".join(v) for k, v in seen["headers"].items()}
        for k, v in r.up_headers:
            if up.get(k.lower()) != v:
                out.append(f"{where}: upstream {k}={up.get(k.lower())!r}, want {v!r}")
        out += [f"{where}: upstream still has {k}" for k in r.up_absent if k.lower() in up]
    for k, v in r.resp_headers:
        if headers.get(k.lower()) != v:
            out.append(f"{where}: response {k}={headers.get(k.lower())!r}, want {v!r}")
    out += [f"{where}: response still has {k}" for k in r.resp_absent if k.lower() in headers]
    for k, values in r.resp_any:
        got_value = headers.get(k.lower())
        if got_value is None or _tokens(got_value) not in [_tokens(v) for v in values]:
            out.append(f"{where}: response {k}={got_value!r}, want one of {values!r}")
    if r.location is not None:
        loc = urllib.parse.urlsplit(headers.get("location", ""))
        got = {"scheme": loc.scheme, "host": loc.hostname, "port": str(loc.port) if loc.port else None,
               "path": loc.path}
        if r.location.get("port", "") is None and got["port"] == {"http": "80", "https": "443"}.get(str(got["scheme"])):
            got["port"] = None  # no port expected: absent or the scheme's default
        out += [f"{where}: Location {headers.get('location')!r}: {k} {got[k]!r}, want {v!r}"
                for k, v in r.location.items() if got[k] != v]
    return out


def _tokens(value: str) -> frozenset[str]:
    return frozenset(t.strip().lower() for t in value.split(",") if t.strip())


def status_problems(bed: Bed, case: Case) -> list[str]:
    out = []
    wanted = [(route if "/" in route else f"{INFRA}/{route}", cond, status, reason)
              for route in case.std for cond, status, reason in (("Accepted", "True", "Accepted"),
                                                                   ("ResolvedRefs", "True", "ResolvedRefs"))]
    for route, cond, status, reason in [*wanted, *case.route_status, *case.conditions]:
        kind, _, ref = route.rpartition(":")
        kind = kind or "HTTPRoute"
        if kind == "Gateway":
            gw, _, listener = ref.partition("/")
            st = bed.status("Gateway", INFRA, gw)
            holders = [entry for entry in st.get("listeners", []) if entry["name"] == listener] if listener else [st]
        else:
            ns, name = ref.split("/")
            holders = bed.status(kind, ns, name).get("parents", [])
        conds = [c for h in holders for c in h.get("conditions", []) if c["type"] == cond]
        if not any(c["status"] == status and (not reason or c["reason"] == reason) for c in conds):
            out.append(f"{kind} {ref}: {cond} {[(c['status'], c['reason']) for c in conds]}, "
                       f"want {status}/{reason or '*'}")
    for gw in case.unattached:
        got = [entry.get("attachedRoutes") for entry in bed.status("Gateway", INFRA, gw).get("listeners", [])]
        if any(got):
            out.append(f"Gateway {gw}: attachedRoutes {got}, want none")
    for gw in case.own_address:
        got_addresses = bed.status("Gateway", INFRA, gw).get("addresses")
        if got_addresses != [{"type": "IPAddress", "value": bed.vip(gw)}]:
            out.append(f"Gateway {gw}: addresses {got_addresses}, want its Service's {bed.vip(gw)} alone")
    for gw in case.addressed:
        if not [a for a in bed.status("Gateway", INFRA, gw).get("addresses") or () if a.get("type") and a.get("value")]:
            out.append(f"Gateway {gw}: no status address")
    for gw, names in case.listener_names:
        got_names = tuple(entry["name"] for entry in bed.status("Gateway", INFRA, gw).get("listeners", []))
        if got_names != names:
            out.append(f"Gateway {gw}: listeners {got_names}, want {names}")
    for gw, listener, n in case.listener_routes:
        listeners = bed.status("Gateway", INFRA, gw).get("listeners", [])
        got = [entry.get("attachedRoutes") for entry in listeners if entry["name"] == listener]
        if got != [n]:
            out.append(f"Gateway {gw} listener {listener}: attachedRoutes {got}, want {n}")
    return out


@pytest.mark.parametrize("case", [pytest.param(c, id=c.test, marks=[pytest.mark.xfail(reason=c.xfail, strict=True)]
                                               if c.xfail else []) for c in CASES])
def test_conformance(bed: Bed, case: Case):
    for step in (case, *case.then):  # the case, then the suite's edits of its objects
        holds(bed, step)


def tcp_shares(bed: Bed, case: Case, port: int, n: int) -> dict[str, float]:
    """The share of `n` connections to the case's gateway each backend (pod less `-0`) answered."""
    from collections import Counter
    counts: Counter = Counter()
    for _ in range(n):
        with tcp_connect(bed, case.gateway, port, None) as sock, sock.makefile("rb") as reader:
            assert reader.readline() == TCP_WELCOME
            sock.sendall(b"TEST\n")
            counts[re.sub(r"-\d+$", "", json.loads(reader.readline())["pod"])] += 1
    return {k: v / n for k, v in counts.items()}


def holds(bed: Bed, case: Case) -> None:
    """Apply the case; its status holds, then every request's expectation, 3 times in a row."""
    if case.test == "HTTPRouteBackendProtocolH2C":
        h2c_backend(bed)
    bed.apply(case)
    wait_for(lambda: not status_problems(bed, case), 20, what=lambda: "; ".join(status_problems(bed, case)))

    def failing() -> list[str]:
        return [p for r in case.requests for p in problems(bed, case, r)]

    wait_for(lambda: not failing(), 30, interval=0.3, what=lambda: "\n".join(failing()))
    for _ in range(3):  # the suite's "3 consecutive" rule
        assert failing() == []
    if case.test == "HTTPRouteWeight":
        weights(bed, case)
    if case.test == "HTTPRouteRequestMirror":
        mirrored(bed, case)
    if case.test == "HTTPRouteRequestMultipleMirrors":
        mirrored(bed, case, ("/multi-mirror", "/multi-mirror-and-modify-request-headers"),
                 ("infra-backend-v2", "infra-backend-v3"))
    if case.test == "HTTPRouteRequestPercentageMirror":
        mirrored_share(bed, case)
    if case.test == "HTTPRouteRequestHeaderModifierBackendWeights":
        backend_headers(bed, case)
    if case.test == "GRPCRouteWeight":  # v1 70 %, v2 30 %, v3 none, within 5 points
        from collections import Counter
        counts = Counter(re.sub(r"-\d+$", "", grpc_call(bed, case, G(metadata=(("x-jitter", str(i)),)))["pod"])
                         for i in range(WEIGHT_SAMPLES))
        assert counts["grpc-infra-backend-v3"] == 0 \
            and abs(counts["grpc-infra-backend-v1"] / WEIGHT_SAMPLES - 0.7) <= 0.05 \
            and abs(counts["grpc-infra-backend-v2"] / WEIGHT_SAMPLES - 0.3) <= 0.05, counts
    if case.test == "TCPRouteWeightedRouting":  # v1 70 %, v2 30 %, v3 none, within 5 points
        shares = tcp_shares(bed, case, 9300, WEIGHT_SAMPLES)
        assert shares.get("tcp-backend-v3", 0) == 0 and abs(shares.get("tcp-backend-v1", 0) - 0.7) <= 0.05 and \
            abs(shares.get("tcp-backend-v2", 0) - 0.3) <= 0.05, shares
    if case.test == "TCPRouteMultipleRoutesAttachment":  # the older route wins: 100 connections, all to it
        assert tcp_shares(bed, case, 9310, 100) == {"tcp-attach-backend-1": 1.0}


def h2c_backend(bed: Bed) -> None:
    """infra-backend-v1's h2c port (3001, the Service's appProtocol kubernetes.io/h2c port):
    an Envoy that speaks HTTP/2 only and answers as echo-basic would name the pod (an
    HTTP/1 request, or a gateway that does not speak h2c to it, fails)."""
    if ("h2c", "infra-backend-v1-0") in bed.pods:
        return
    ip = next(run.ip for run in base_documents()[1] if run.pod == "infra-backend-v1-0")
    seen = json.dumps({"path": "/", "namespace": INFRA, "pod": "infra-backend-v1-0", "proto": "HTTP/2.0"})
    hcm = {"@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3."
                    "HttpConnectionManager",
           "stat_prefix": "h2c", "codec_type": "HTTP2",
           "route_config": {"virtual_hosts": [{"name": "all", "domains": ["*"], "routes": [
               {"match": {"prefix": "/"}, "direct_response": {"status": 200, "body": {"inline_string": seen}}}]}]},
           "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {
               "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}]}
    backend = StaticEnvoy(admin_port=free_port())
    backend.listeners.append({"name": "h2c", "address": {"socket_address": {"address": ip, "port_value": 3001}},
                              "filter_chains": [{"filters": [{"name": "envoy.filters.network.http_connection_manager",
                                                              "typed_config": hcm}]}]})
    bed.stack.enter_context(backend.run(bed.tmp))
    bed.pods[("h2c", "infra-backend-v1-0")] = EchoPod(INFRA, "infra-backend-v1-0")  # started: once per session


def weights(bed: Bed, case: Case) -> None:
    """v1 70 %, v2 30 %, v3 none, each within 5 points (the suite's bounds) of WEIGHT_SAMPLES."""
    from collections import Counter
    counts: Counter = Counter()
    for _ in range(WEIGHT_SAMPLES):
        status, _, body = send(bed, case, R("/"))
        assert status == 200
        counts[re.sub(r"-\d+$", "", json.loads(body)["pod"])] += 1
    assert counts["infra-backend-v3"] == 0, counts
    assert abs(counts["infra-backend-v1"] / WEIGHT_SAMPLES - 0.7) <= 0.05, counts
    assert abs(counts["infra-backend-v2"] / WEIGHT_SAMPLES - 0.3) <= 0.05, counts


def mirrored(bed: Bed, case: Case, paths: tuple[str, ...] = ("/mirror", "/mirror-and-modify-headers"),
             to: tuple[str, ...] = ("infra-backend-v2",)) -> None:
    """Each request, tagged with a unique id as the suite does, also reaches each mirror."""
    for path in paths:
        tag = f"gateway-api-conformance-request-id={free_port()}-{path.strip('/')}"
        assert send(bed, case, R(f"{path}?{tag}"))[0] == 200
        for pod in to:
            mirror = bed.pods[(INFRA, f"{pod}-0")]
            wait_for(lambda tag=tag, mirror=mirror: mirror.saw(tag) == 1, 10, what=f"{path} mirrored to {pod}")


def mirrored_share(bed: Bed, case: Case) -> None:
    """500 requests per path (10 at a time): the share mirrored to infra-backend-v2 lies
    within 3 standard deviations of the configured one (the suite's bound)."""
    from concurrent.futures import ThreadPoolExecutor
    v2 = bed.pods[(INFRA, "infra-backend-v2-0")]
    for path, p in (("/percent-mirror", 0.2), ("/percent-mirror-fraction", 0.5), ("/percent-mirror-and-modify-headers", 0.35)):
        tag = f"share-{free_port()}-{path.strip('/')}"
        with ThreadPoolExecutor(10) as pool:
            statuses = list(pool.map(lambda i, tag=tag, path=path: send(bed, case, R(f"{path}?{tag}-{i}"))[0], range(500)))
        assert statuses == [200] * 500
        # the mirrored copies may land a little after the answers: count once no more arrive
        wait_for(lambda tag=tag: settled(lambda: v2.saw(tag)), 10, what=f"{path}: mirrored copies still arriving")
        spread = 3 * (500 * p * (1 - p)) ** 0.5
        assert abs(v2.saw(tag) - 500 * p) <= spread, (path, v2.saw(tag), 500 * p, spread)


def settled(count: Callable[[], int]) -> bool:
    """Whether `count` stays the same over half a second."""
    before = count()
    time.sleep(0.5)
    return count() == before


def backend_headers(bed: Bed, case: Case) -> None:
    """100 requests: each reaches the backend whose own filter set its one `Backend` header."""
    for _ in range(100):
        seen = json.loads(send(bed, case, R("/"))[2])
        values = seen["headers"].get("Backend", [])
        assert len(values) == 1 and seen["pod"].startswith(values[0]), seen
