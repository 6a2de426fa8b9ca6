"""421 Misdirected Request on a Gateway API gateway's HTTPS port (generators/misdirected.py):
the route configuration of each SNI filter chain answers 421 for the hosts another
listener of the port serves, keeps its own, and answers 404 where no listener matches.
Requests are resolved the way Envoy resolves them: filter chain by SNI, virtual host by
the most specific domain, then the routes in order."""
from __future__ import annotations

from envoy.config.route.v3 import route_components_pb2 as rc
from envoy.config.route.v3 import route_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2

from controlplane.generators import listeners, routes
from controlplane.model.proxy import parse_node
from tests.support.configs import mesh_from_yaml
from tests.support.gateway_api import ISTIO_CLASS, MISDIRECTED_REQUESTS
from tests.support.pki import make_ca, make_cert, tls_secret_yaml

CERT = tls_secret_yaml("tls-checks", "infra", make_cert(make_ca(), ["*.example.org", "*.wildcard.org"]))
PROXY = parse_node("router~10.1.0.5~gw-1.infra~infra.svc.cluster.local",
                   {"LABELS": {"gateway.networking.k8s.io/gateway-name": "gw"}, "NAMESPACE": "infra"})
PATH = "/detect-misdirected-requests"


def services() -> str:
    return "\n---\n".join(f"""
apiVersion: v1
kind: Service
metadata: {{name: backend-{v}, namespace: infra}}
spec: {{selector: {{app: backend-{v}}}, ports: [{{port: 8080, name: http}}], clusterIP: 10.0.0.{20 + i}}}
""" for i, v in enumerate(("v1", "v2", "v3")))


def listener(name: str, hostname: str | None) -> str:
    host = f"\n    hostname: \"{hostname}\"" if hostname else ""
    return f"""  - name: {name}
    port: 443
    protocol: HTTPS{host}
    tls: {{certificateRefs: [{{name: tls-checks}}]}}"""


def gateway(*listeners_: tuple[str, str | None]) -> str:
    body = "\n".join(listener(n, h) for n, h in listeners_)
    return f"""
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: gw, namespace: infra}}
spec:
  gatewayClassName: istio
  listeners:
{body}
"""


def route(name: str, section: str, backend: str, hostnames: str = "[]") -> str:
    return f"""
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: {name}, namespace: infra}}
spec:
  parentRefs: [{{name: gw, sectionName: {section}}}]
  hostnames: {hostnames}
  rules:
  - matches: [{{path: {{type: PathPrefix, value: {PATH}}}}}]
    backendRefs: [{{name: backend-{backend}, port: 8080}}]
"""


# The conformance suite's Gateway `same-namespace-with-https-listener` and the routes of
# HTTPRouteHTTPSListenerDetectMisdirectedRequests.
CONFORMANCE = (
    gateway(("https", None), ("https-with-hostname", "second-example.org"),
            ("https-with-wildcard-hostname", "*.wildcard.org"),
            ("https-with-hostname-matching-wildcard", "fourth-example.wildcard.org")),
    route("test-1", "https", "v1", "[example.org]"), route("test-2", "https-with-hostname", "v2"),
    route("test-3", "https-with-wildcard-hostname", "v3"), route("test-4", "https-with-hostname-matching-wildcard", "v1"),
)


def build(*docs: str):
    return mesh_from_yaml("\n---\n".join((ISTIO_CLASS, services(), CERT) + docs))


def _domain_rank(domain: str, host: str) -> tuple[int, int] | None:
    """How well `domain` matches `host` in Envoy's order (exact, suffix wildcard, prefix
    wildcard, `*`; longer wildcards first); None when it does not match."""
    if domain == host:
        return (4, len(domain))
    if domain == "*":
        return (1, 0)
    if domain.startswith("*") and host.endswith(domain[1:]) and len(host) > len(domain) - 1:
        return (3, len(domain))
    if domain.endswith("*") and host.startswith(domain[:-1]) and len(host) > len(domain) - 1:
        return (2, len(domain))
    return None


def virtual_host(cfg: route_pb2.RouteConfiguration, host: str) -> rc.VirtualHost | None:
    ranked = [(r, vh) for vh in cfg.virtual_hosts for d in vh.domains if (r := _domain_rank(d, host)) is not None]
    return max(ranked, key=lambda x: x[0])[1] if ranked else None


def answer(mesh, sni: str, host: str, path: str = PATH) -> str | int:
    """What the gateway does with an HTTPS request: the backend it routes to, or a status."""
    lst = dict(listeners.build(mesh, PROXY))["0.0.0.0_443"]
    ranked = []
    for chain in lst.filter_chains:
        names_ = list(chain.filter_chain_match.server_names)
        rank = max((r for n in names_ if (r := _domain_rank(n, sni)) is not None), default=None) if names_ else (0, 0)
        if rank is not None:
            ranked.append((rank, chain))
    chain = max(ranked, key=lambda x: x[0])[1]
    hcm = hcm_pb2.HttpConnectionManager()
    chain.filters[-1].typed_config.Unpack(hcm)
    cfg = next(c for c in routes.build(mesh, PROXY) if c[0] == hcm.rds.route_config_name)[1]
    vh = virtual_host(cfg, host)
    r = next((r for r in vh.routes if path.startswith(r.match.prefix or r.match.path_separated_prefix)), None) if vh else None
    if r is None:
        return 404
    if r.HasField("direct_response"):
        return r.direct_response.status
    return r.route.cluster.split("|")[3].split(".")[0].removeprefix("backend-")


def test_the_conformance_table_of_sni_and_host():
    mesh = build(*CONFORMANCE)
    got = [(sni, host, answer(mesh, sni, host)) for sni, host, _ in MISDIRECTED_REQUESTS]
    assert got == list(MISDIRECTED_REQUESTS)


def test_the_misdirected_virtual_host_names_only_what_no_broader_one_covers():
    mesh = build(*CONFORMANCE)
    rds = dict(routes.build(mesh, PROXY))
    misdirected = {name: list(vh.domains) for name, cfg in rds.items() for vh in cfg.virtual_hosts
                   if vh.name == "misdirected:443"}
    base = "https.443.default.gw~istio-autogenerated-k8s-gateway~"
    assert misdirected == {
        # the catch-all listener: fourth-example.wildcard.org is answered by *.wildcard.org already
        base + "https.infra": ["*.wildcard.org", "second-example.org"],
        # a listener with a hostname: the catch-all sibling covers every other host
        base + "https-with-hostname.infra": ["*"],
        # *.wildcard.org's own virtual host lies between `*` and the more specific sibling
        base + "https-with-wildcard-hostname.infra": ["*", "fourth-example.wildcard.org"],
        base + "https-with-hostname-matching-wildcard.infra": ["*"],
    }
    assert [r.direct_response.status for r in rds[base + "https.infra"].virtual_hosts[-1].routes] == [421]


def test_a_listener_without_routes_answers_404_for_its_own_host_and_421_for_the_others():
    mesh = build(gateway(("any", None), ("shop", "shop.example.org")), route("r", "any", "v1", "[example.org]"))
    assert answer(mesh, "shop.example.org", "shop.example.org") == 404
    assert answer(mesh, "shop.example.org", "example.org") == 421
    assert answer(mesh, "example.org", "shop.example.org") == 421
    assert answer(mesh, "example.org", "example.org") == "v1"
    assert answer(mesh, "example.org", "nobody.example.org") == 404


def test_listeners_with_distinct_hostnames_only_answer_404_for_hosts_none_serves():
    mesh = build(gateway(("a", "a.example.org"), ("b", "b.example.org")),
                 route("ra", "a", "v1"), route("rb", "b", "v2"))
    assert answer(mesh, "a.example.org", "b.example.org") == 421
    assert answer(mesh, "b.example.org", "a.example.org") == 421
    assert answer(mesh, "a.example.org", "c.example.org") == 404
    assert (answer(mesh, "a.example.org", "a.example.org"), answer(mesh, "b.example.org", "b.example.org")) == ("v1", "v2")


def test_a_lone_https_listener_and_istio_gateways_get_no_misdirected_virtual_host():
    istio_gateways = """
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: istio-gw, namespace: infra}
spec:
  selector: {gateway.networking.k8s.io/gateway-name: gw}
  servers:
  - port: {number: 443, name: https-a, protocol: HTTPS}
    hosts: ["a.example.org"]
    tls: {mode: SIMPLE, credentialName: tls-checks}
  - port: {number: 443, name: https-b, protocol: HTTPS}
    hosts: ["b.example.org"]
    tls: {mode: SIMPLE, credentialName: tls-checks}
"""
    for mesh in (build(gateway(("only", "only.example.org")), route("r", "only", "v1")), build(istio_gateways)):
        rds = dict(routes.build(mesh, PROXY))
        assert rds and not [vh.name for cfg in rds.values() for vh in cfg.virtual_hosts if vh.name.startswith("misdirected")]
