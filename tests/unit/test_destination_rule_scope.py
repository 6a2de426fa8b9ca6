"""DestinationRule `workloadSelector` and `tls.credentialName` (issue 5):

- a rule with a workloadSelector applies only to the proxies of its namespace that it
  selects (sidecars and gateways), ahead of the namespace's selector-less rules, which
  merge into it; it is never exported; a proxy it does not select does not see it;
- the generator keys outbound clusters (and routes) on the selectors that select a
  proxy, so proxies no selector rule selects keep sharing one generation;
- a cluster whose `credentialName` would never be served to the proxy (plaintext xDS
  port, missing Secret) is left out and reported, never sent waiting for SDS;
- Secrets are a declared dependency: a Secret change rebuilds SDS (and what reads
  credentials), not every sidecar's clusters.
"""
from __future__ import annotations

import dataclasses

from envoy.extensions.transport_sockets.tls.v3 import tls_pb2
from structlog.testing import capture_logs

from controlplane import names
from controlplane.generators import Generator, builders, clusters, dependencies, destinations, routes, secrets
from controlplane.generators.inputs import KNOWN_KINDS, OTHER, SECRET
from controlplane.generators.resources import pack
from controlplane.model.proxy import parse_node
from tests.support.chapter9 import CATALOG_HOST, NS, dr, mesh
from tests.support.pki import make_ca, make_cert, tls_secret_yaml

CATALOG = f"outbound|80||{CATALOG_HOST}"
CATALOG_V1 = f"outbound|80|v1|{CATALOG_HOST}"
CATALOG_V2 = f"outbound|80|v2|{CATALOG_HOST}"


def sidecar(name: str, ip: str, labels: dict, namespace: str = NS):
    return parse_node(f"sidecar~{ip}~{name}.{namespace}~{namespace}.svc.cluster.local",
                      {"NAMESPACE": namespace, "LABELS": labels, "INTERCEPTION_MODE": "REDIRECT"})


CANARY = sidecar("canary-1", "10.1.0.30", {"app": "canary", "track": "canary"})
STABLE = sidecar("stable-1", "10.1.0.31", {"app": "stable"})
STABLE_2 = sidecar("stable-2", "10.1.0.32", {"app": "stable-2"})
OTHER_NS_CANARY = sidecar("canary-1", "10.1.0.33", {"app": "canary", "track": "canary"}, namespace="default")


def selector_dr(name: str, body: str, selector: str = "{track: canary}", host: str = "catalog",
                namespace: str = NS, created: str = "") -> str:
    meta = f"{{name: {name}, namespace: {namespace}" + (f", creationTimestamp: '{created}'" if created else "") + "}"
    return (f"apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {meta}\nspec:\n"
            f"  host: {host}\n  workloadSelector: {{matchLabels: {selector}}}\n{body}")


def cds(m, proxy) -> dict:
    return dict(clusters.build(m, proxy))


def lb(cluster) -> str:
    from envoy.config.cluster.v3 import cluster_pb2

    return cluster_pb2.Cluster.LbPolicy.Name(cluster.lb_policy)


# --- A: which rule a proxy sees ---------------------------------------------------------

PLAIN = dr("catalog-plain", "catalog", "  trafficPolicy: {loadBalancer: {simple: RANDOM}}\n"
           "  subsets: [{name: v1, labels: {version: v1}}]\n")
SELECTED = selector_dr("catalog-canary", "  subsets: [{name: v2, labels: {version: v2}}]\n")


def test_selector_rule_applies_only_to_the_proxies_it_selects_and_merges_the_plain_rule():
    m = mesh(PLAIN, SELECTED)
    canary, stable = cds(m, CANARY), cds(m, STABLE)
    # the selected proxy: its rule's subset first, then the plain rule's subset and
    # trafficPolicy merged in (the selector rule has none of its own)
    assert CATALOG_V2 in canary and CATALOG_V1 in canary
    assert lb(canary[CATALOG]) == "RANDOM"
    assert m.destination_rule(CATALOG_HOST, NS, CANARY.labels).name == "catalog-canary"
    # the others: the plain rule only
    assert CATALOG_V1 in stable and CATALOG_V2 not in stable
    assert m.destination_rule(CATALOG_HOST, NS, STABLE.labels).name == "catalog-plain"


def test_selector_rule_policy_wins_over_the_plain_rule():
    m = mesh(PLAIN, selector_dr("catalog-canary", "  trafficPolicy: {loadBalancer: {simple: LEAST_REQUEST}}\n"))
    assert lb(cds(m, CANARY)[CATALOG]) == "LEAST_REQUEST"
    assert lb(cds(m, STABLE)[CATALOG]) == "RANDOM"
    assert CATALOG_V1 in cds(m, CANARY)  # subsets still merged from the plain rule


def test_selector_rule_is_not_exported_and_does_not_hide_other_namespaces():
    # a selector rule in the service's namespace: never seen by a client of another one,
    # even with matching labels
    m = mesh(SELECTED)
    assert CATALOG_V2 not in cds(m, OTHER_NS_CANARY)
    assert CATALOG_V2 in cds(m, CANARY)
    # a client namespace with only a selector rule: a proxy it does not select falls
    # through to the service namespace's rule
    client_rule = selector_dr("catalog-client", "  subsets: [{name: v2, labels: {version: v2}}]\n",
                              host=CATALOG_HOST, namespace="default")
    server_rule = dr("catalog-server", "catalog", "  subsets: [{name: v1, labels: {version: v1}}]\n")
    m = mesh(client_rule, server_rule)
    plain_default = sidecar("sleep-1", "10.1.0.20", {"app": "sleep"}, namespace="default")
    assert CATALOG_V1 in cds(m, plain_default) and CATALOG_V2 not in cds(m, plain_default)
    got = cds(m, OTHER_NS_CANARY)
    assert CATALOG_V2 in got and CATALOG_V1 not in got  # its own namespace's rule wins


def test_two_selectors_do_not_merge_and_the_oldest_wins():
    older = selector_dr("a-older", "  subsets: [{name: v1, labels: {version: v1}}]\n", selector="{app: canary}",
                        created="2024-01-01T00:00:00Z")
    newer = selector_dr("b-newer", "  subsets: [{name: v2, labels: {version: v2}}]\n",
                        created="2024-06-01T00:00:00Z")
    m = mesh(older, newer)
    got = cds(m, CANARY)  # selected by both
    assert CATALOG_V1 in got and CATALOG_V2 not in got
    only_track = sidecar("x-1", "10.1.0.34", {"track": "canary"})
    got = cds(m, only_track)
    assert CATALOG_V2 in got and CATALOG_V1 not in got


def test_selector_rule_applies_to_a_gateway_it_selects():
    gw = parse_node("router~10.1.0.2~gw-1.istio-system~istio-system.svc.cluster.local",
                    {"NAMESPACE": "istio-system", "LABELS": {"istio": "ingressgateway"}})
    rule = selector_dr("catalog-gw", "  subsets: [{name: v2, labels: {version: v2}}]\n",
                       selector="{istio: ingressgateway}", host=CATALOG_HOST, namespace="istio-system")
    m = mesh(rule)
    assert CATALOG_V2 in cds(m, gw)
    other_gw = dataclasses.replace(gw, labels={"istio": "egressgateway"})
    assert CATALOG_V2 not in cds(m, other_gw)


def test_consistent_hash_of_a_selector_rule_reaches_only_the_selected_routes():
    vs = f"""apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: catalog, namespace: {NS}}}
spec:
  hosts: [catalog]
  http: [{{route: [{{destination: {{host: catalog, port: {{number: 80}}}}}}]}}]
"""
    rule = selector_dr("catalog-hash", "  trafficPolicy: {loadBalancer: {consistentHash: {httpHeaderName: x-user}}}\n")
    m = mesh(vs, rule)

    def hashed(proxy) -> bool:
        for _, cfg in routes.build(m, proxy):
            for vh in cfg.virtual_hosts:
                for r in vh.routes:
                    if r.route.hash_policy:
                        return True
        return False

    assert hashed(CANARY) and not hashed(STABLE)


# --- A: the push engine's cache ---------------------------------------------------------


def test_cluster_cache_keys_on_labels_only_when_a_selector_rule_selects_the_proxy():
    g = Generator()
    m = mesh(PLAIN, SELECTED)
    assert dependencies.dr_selectors(m, NS, STABLE.labels) == ()
    assert dependencies.dr_selectors(m, NS, CANARY.labels) == ((("track", "canary"),),)
    k_stable, k_stable2, k_canary = (g.key(m, p, names.CLUSTER) for p in (STABLE, STABLE_2, CANARY))
    assert k_stable == k_stable2  # different labels, no selector rule selects them: shared
    assert k_canary != k_stable
    for t in (names.CLUSTER, names.ENDPOINT, names.ROUTE):
        assert g.key(m, STABLE, t) == g.key(m, STABLE_2, t)
    builds = g.builds
    for p in (STABLE, STABLE_2, CANARY):
        rs = g.generate(m, p, names.CLUSTER)
        want = {n: pack(n, names.CLUSTER, msg).any.value for n, msg in builders()[names.CLUSTER](m, p)}
        assert {n: rs[n].any.value for n in rs} == want
    # outbound + inbound parts for the stable pair (inbound parts are per workload shape),
    # the canary's own outbound part
    outbound_builds = g.builds - builds
    assert outbound_builds <= 5
    # a second canary replica (other labels besides) shares the canary's generation
    canary_2 = sidecar("canary-2", "10.1.0.35", {"app": "canary-2", "track": "canary"})
    assert g.key(m, canary_2, names.CLUSTER)[0] == k_canary[0]


def test_without_selector_rules_labels_never_enter_the_key():
    g = Generator()
    m = mesh(PLAIN)
    assert g.key(m, STABLE, names.CLUSTER) == g.key(m, CANARY, names.CLUSTER)


# --- B: credentialName a proxy will never be served -------------------------------------

CA = make_ca()
CLIENT = make_cert(CA, ["gateway.istio-system"], client=True)
GW_LABELS = {"istio": "ingressgateway"}
GATEWAY = parse_node("router~10.1.0.2~gw-1.istio-system~istio-system.svc.cluster.local",
                     {"NAMESPACE": "istio-system", "LABELS": GW_LABELS})
PLAINTEXT_GATEWAY = dataclasses.replace(GATEWAY, workload_cert=False)
ORIGINATE = dr("catalog-origination", CATALOG_HOST,
               "  trafficPolicy:\n    tls: {mode: MUTUAL, credentialName: catalog-client}\n", namespace="istio-system")
CLIENT_SECRET = tls_secret_yaml("catalog-client", "istio-system", CLIENT, CA.cert)


def sds_names(cluster) -> list[str]:
    out = []
    if cluster.HasField("transport_socket"):
        ctx = tls_pb2.UpstreamTlsContext()
        cluster.transport_socket.typed_config.Unpack(ctx)
        common = ctx.common_tls_context
        out += [c.name for c in common.tls_certificate_sds_secret_configs]
        if common.HasField("combined_validation_context"):
            out.append(common.combined_validation_context.validation_context_sds_secret_config.name)
    return out


def test_authenticated_gateway_gets_the_credential_cluster_and_its_secrets():
    m = mesh(ORIGINATE, CLIENT_SECRET)
    got = cds(m, GATEWAY)
    assert sds_names(got[CATALOG]) == ["kubernetes://catalog-client", "kubernetes://catalog-client-cacert"]
    served = dict(secrets.build(m, GATEWAY))
    assert {"kubernetes://catalog-client", "kubernetes://catalog-client-cacert"} <= set(served)
    assert destinations.credential_problems(m, GATEWAY) == []


def test_plaintext_gateway_never_gets_a_cluster_waiting_for_a_credential_and_it_is_reported():
    m = mesh(ORIGINATE, CLIENT_SECRET)
    with capture_logs() as logs:
        got = cds(m, PLAINTEXT_GATEWAY)
    assert CATALOG not in got
    assert not any(n.startswith("kubernetes://") for c in got.values() for n in sds_names(c))
    assert f"outbound|81||{CATALOG_HOST}" not in got  # the rule covers every port
    assert secrets.build(m, PLAINTEXT_GATEWAY) == []
    # EDS agrees with CDS
    from controlplane.generators import endpoints

    assert CATALOG not in dict(endpoints.build(m, PLAINTEXT_GATEWAY))
    [(cluster, problem)] = [p for p in destinations.credential_problems(m, PLAINTEXT_GATEWAY) if p[0] == CATALOG]
    assert problem.rule == "istio-system/catalog-origination"
    assert problem.field == "spec.trafficPolicy.tls.credentialName"
    assert "plaintext xDS port" in problem.reason and "left out" in problem.reason
    events = [e for e in logs if e["event"] == "destination rule conflict"]
    assert events and events[0]["destination_rule"] == "istio-system/catalog-origination"
    assert events[0]["field"] == "spec.trafficPolicy.tls.credentialName"
    # the rest of the gateway's clusters are there
    assert f"outbound|80||webapp.{NS}.svc.cluster.local" in got


def test_missing_secret_leaves_the_cluster_out_with_the_field_that_names_it():
    sub = dr("catalog-sub", CATALOG_HOST,
             "  subsets:\n  - name: v1\n    labels: {version: v1}\n    trafficPolicy:\n"
             "      portLevelSettings:\n      - port: {number: 80}\n        tls: {mode: SIMPLE, credentialName: nope}\n",
             namespace="istio-system")
    m = mesh(sub)
    got = cds(m, GATEWAY)
    assert CATALOG_V1 not in got and CATALOG in got and f"outbound|81|v1|{CATALOG_HOST}" in got
    [(cluster, problem)] = destinations.credential_problems(m, GATEWAY)
    assert cluster == CATALOG_V1
    assert problem.field == "spec.subsets[0].trafficPolicy.portLevelSettings[0].tls.credentialName"
    assert "kubernetes://nope-cacert" in problem.reason


def test_sidecar_credential_needs_a_selector_rule_and_then_the_secret():
    # without a workloadSelector istiod drops the TLS settings on sidecars (plaintext)
    plain = dr("catalog-origination", "catalog", "  trafficPolicy:\n    tls: {mode: SIMPLE, credentialName: cat-ca}\n")
    m = mesh(plain)
    assert CATALOG in cds(m, CANARY) and destinations.credential_problems(m, CANARY) == []
    # with one, the selected sidecar needs the Secret in its namespace
    sel = selector_dr("catalog-origination", "  trafficPolicy:\n    tls: {mode: SIMPLE, credentialName: cat-ca}\n")
    m = mesh(sel)
    assert CATALOG not in cds(m, CANARY) and CATALOG in cds(m, STABLE)
    m = mesh(sel, tls_secret_yaml("cat-ca", NS, CLIENT, CA.cert))
    assert sds_names(cds(m, CANARY)[CATALOG]) == ["kubernetes://cat-ca-cacert"]


# --- B: Secrets as a dependency -------------------------------------------------------


def test_secret_is_a_known_kind_and_a_change_rebuilds_only_its_readers():
    assert SECRET in KNOWN_KINDS
    base = [PLAIN]
    m1 = mesh(*base, tls_secret_yaml("gw-cred", "istio-system", CLIENT, CA.cert))
    m2 = mesh(*base, tls_secret_yaml("gw-cred", "istio-system", make_cert(CA, ["x"]), CA.cert))
    assert dependencies.kind(m1, OTHER) == dependencies.kind(m2, OTHER)
    g = Generator()
    for m in (m1, m2):
        for p in (STABLE, CANARY, GATEWAY):
            for t in (names.CLUSTER, names.ENDPOINT, names.LISTENER, names.ROUTE, names.SECRET):
                g.generate(m, p, t)
    # sidecars: nothing reads the gateway's Secret, so every sidecar key is unchanged
    for p in (STABLE, CANARY):
        for t in (names.CLUSTER, names.ENDPOINT, names.LISTENER, names.ROUTE, names.SECRET):
            assert g.key(m1, p, t) == g.key(m2, p, t), t
    # the gateway: its SDS changes (and its listeners, which may serve credentials);
    # its clusters do not (no DestinationRule names a credential)
    assert g.key(m1, GATEWAY, names.SECRET) != g.key(m2, GATEWAY, names.SECRET)
    assert g.key(m1, GATEWAY, names.LISTENER) != g.key(m2, GATEWAY, names.LISTENER)
    assert g.key(m1, GATEWAY, names.CLUSTER) == g.key(m2, GATEWAY, names.CLUSTER)
    assert g.key(m1, GATEWAY, names.ROUTE) == g.key(m2, GATEWAY, names.ROUTE)
    # a Secret of another namespace leaves the gateway's listeners alone
    m3 = mesh(*base, tls_secret_yaml("gw-cred", "istio-system", CLIENT, CA.cert), tls_secret_yaml("y", NS, CLIENT))
    assert g.key(m1, GATEWAY, names.LISTENER) == g.key(m3, GATEWAY, names.LISTENER)
    # the served secrets equal the builder's
    rs = g.generate(m2, GATEWAY, names.SECRET)
    assert sorted(rs.names) == [n for n, _ in secrets.build(m2, GATEWAY)]


def test_router_sds_key_is_namespace_secrets_and_workload_cert():
    m1 = mesh(tls_secret_yaml("gw-cred", "istio-system", CLIENT, CA.cert))
    m2 = mesh(tls_secret_yaml("gw-cred", "istio-system", CLIENT, CA.cert), tls_secret_yaml("x", NS, CLIENT))
    g = Generator()
    # a Secret of another namespace leaves the gateway's SDS alone
    assert g.key(m1, GATEWAY, names.SECRET) == g.key(m2, GATEWAY, names.SECRET)
    assert g.key(m1, GATEWAY, names.SECRET) != g.key(m1, PLAINTEXT_GATEWAY, names.SECRET)
    assert list(g.generate(m1, PLAINTEXT_GATEWAY, names.SECRET).names) == []


def test_credential_rule_makes_clusters_depend_on_the_namespace_secrets():
    m1 = mesh(ORIGINATE)
    m2 = mesh(ORIGINATE, CLIENT_SECRET)
    g = Generator()
    assert CATALOG not in g.generate(m1, GATEWAY, names.CLUSTER).names
    assert CATALOG in g.generate(m2, GATEWAY, names.CLUSTER).names
    # sidecars of other namespaces are unaffected by the gateway namespace's Secret
    assert g.key(m1, STABLE, names.CLUSTER) == g.key(m2, STABLE, names.CLUSTER)


def test_the_report_names_the_rule_that_set_the_credential_among_merged_ones():
    # the selector rule has no trafficPolicy: the plain rule's (with the credential) is
    # merged into it; the report names the plain rule
    plain = dr("catalog-tls", "catalog", "  trafficPolicy:\n    tls: {mode: SIMPLE, credentialName: absent}\n")
    sel = selector_dr("catalog-canary", "  subsets: [{name: v2, labels: {version: v2}}]\n")
    m = mesh(plain, sel)
    problems = dict(destinations.credential_problems(m, CANARY))
    assert set(problems) == {CATALOG, CATALOG_V2, f"outbound|81||{CATALOG_HOST}", f"outbound|81|v2|{CATALOG_HOST}"}
    assert {p.rule for p in problems.values()} == {f"{NS}/catalog-tls"}
    assert {p.field for p in problems.values()} == {"spec.trafficPolicy.tls.credentialName"}
    # the unselected sidecar ignores the selector-less rule's credential (plaintext)
    assert destinations.credential_problems(m, STABLE) == []
