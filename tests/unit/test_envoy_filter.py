"""EnvoyFilter patches on generated output (generators/envoyfilter): every applyTo meshd
generates, Istio's ordering and proto merge, and patches Envoy would reject left out
with the EnvoyFilter's name."""
from __future__ import annotations

import yaml
from envoy.config.cluster.v3 import cluster_pb2
from envoy.extensions.filters.http.lua.v3 import lua_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2

from controlplane.config.types.envoyfilter import envoy_filter
from controlplane.generators import clusters, listeners, routes
from controlplane.generators.envoyfilter import Selected, apply, ordered
from tests.support import chapter9
from tests.support.chapter9 import CATALOG, GATEWAY_PROXY, NS, WEBAPP_PROXY

ROOT = "istio-system"


def ef(text: str, name: str = "ef", namespace: str = NS, created: str = "") -> Selected:
    return Selected(namespace, name, created, envoy_filter(yaml.safe_load(text)))


def patched(kind: str, proxy, *filters: Selected):
    mesh = chapter9.mesh()
    build = {"CLUSTER": clusters.build, "LISTENER": listeners.build, "ROUTE_CONFIGURATION": routes.build}[kind]
    out, problems = apply(kind, build(mesh, proxy), ordered(filters, proxy, ROOT), proxy)
    return dict(out), problems


def http_filters(listener) -> list[str]:
    for chain in listener.filter_chains:
        for f in chain.filters:
            if f.name == "envoy.filters.network.http_connection_manager":
                hcm = hcm_pb2.HttpConnectionManager()
                f.typed_config.Unpack(hcm)
                return [h.name for h in hcm.http_filters]
    return []


RETRY_BUDGET = """
configPatches:
- applyTo: CLUSTER
  match: {context: SIDECAR_OUTBOUND, cluster: {service: catalog.istioinaction.svc.cluster.local}}
  patch:
    operation: MERGE
    value:
      circuit_breakers:
        thresholds:
        - retry_budget: {budget_percent: {value: 20}, min_retry_concurrency: 3}
"""


def test_a_cluster_merge_adds_a_retry_budget_to_the_matched_cluster_only():
    out, problems = patched("CLUSTER", WEBAPP_PROXY, ef(RETRY_BUDGET))
    assert problems == []
    budget = out[CATALOG].circuit_breakers.thresholds[-1].retry_budget
    assert budget.budget_percent.value == 20 and budget.min_retry_concurrency.value == 3
    webapp = out["outbound|80||webapp.istioinaction.svc.cluster.local"]
    assert not any(t.HasField("retry_budget") for t in webapp.circuit_breakers.thresholds)


def test_a_filter_of_another_workload_or_namespace_does_not_apply():
    other = ef(RETRY_BUDGET.replace("configPatches", "workloadSelector: {labels: {app: catalog}}\nconfigPatches"))
    out, _ = patched("CLUSTER", WEBAPP_PROXY, other, ef(RETRY_BUDGET, namespace="default"))
    assert not any(t.HasField("retry_budget") for t in out[CATALOG].circuit_breakers.thresholds)


LUA = """
configPatches:
- applyTo: HTTP_FILTER
  match:
    context: SIDECAR_OUTBOUND
    listener:
      filterChain:
        filter:
          name: envoy.filters.network.http_connection_manager
          subFilter: {name: envoy.filters.http.router}
  patch:
    operation: INSERT_BEFORE
    value:
      name: envoy.filters.http.lua
      typed_config:
        "@type": type.googleapis.com/envoy.extensions.filters.http.lua.v3.Lua
        inlineCode: "function envoy_on_response(h) h:headers():add('x-lua', 'yes') end"
"""


def test_a_lua_filter_is_inserted_before_the_router_of_outbound_listeners_only():
    out, problems = patched("LISTENER", WEBAPP_PROXY, ef(LUA))
    assert problems == []
    outbound = [n for n, l in out.items() if n != "virtualInbound" and http_filters(l)]
    assert outbound
    for name in outbound:
        names = http_filters(out[name])
        assert names[-2:] == ["envoy.filters.http.lua", "envoy.filters.http.router"], name
    assert "envoy.filters.http.lua" not in http_filters(out["virtualInbound"])


def test_a_lua_filter_added_after_the_router_is_reported_and_left_out():
    bad = ef(LUA.replace("INSERT_BEFORE", "INSERT_AFTER"), name="after-router")
    out, problems = patched("LISTENER", WEBAPP_PROXY, bad)
    assert problems and problems[0].envoy_filter == f"{NS}/after-router"
    assert "terminal" in problems[0].reason
    assert all("envoy.filters.http.lua" not in http_filters(l) for l in out.values())


def test_an_unknown_type_is_reported_and_the_other_patches_still_apply():
    bad = ef(LUA.replace("lua.v3.Lua", "lua.v3.NoSuchThing"), name="typo")
    out, problems = patched("LISTENER", WEBAPP_PROXY, bad, ef(LUA, name="good"))
    assert [p.envoy_filter for p in problems] == [f"{NS}/typo"]
    assert "NoSuchThing" in problems[0].reason
    assert any("envoy.filters.http.lua" in http_filters(l) for l in out.values())


def test_remove_of_an_http_filter_and_replace_of_a_cluster():
    remove = ef("""
configPatches:
- applyTo: HTTP_FILTER
  match: {listener: {filterChain: {filter: {name: envoy.filters.network.http_connection_manager,
          subFilter: {name: envoy.filters.http.lua}}}}}
  patch: {operation: REMOVE}
""", name="remove", created="2026-01-02T00:00:00Z")
    out, problems = patched("LISTENER", WEBAPP_PROXY, ef(LUA, created="2026-01-01T00:00:00Z"), remove)
    assert problems == [] and all("envoy.filters.http.lua" not in http_filters(l) for l in out.values())
    replace = ef(f"""
configPatches:
- applyTo: CLUSTER
  match: {{cluster: {{name: "{CATALOG}"}}}}
  patch:
    operation: REPLACE
    value: {{name: "{CATALOG}", type: STATIC, connect_timeout: 7s, load_assignment: {{cluster_name: "{CATALOG}"}}}}
""")
    out, problems = patched("CLUSTER", WEBAPP_PROXY, replace)
    assert problems == []
    assert out[CATALOG].type == cluster_pb2.Cluster.STATIC and out[CATALOG].connect_timeout.seconds == 7


def test_priority_orders_patches_before_creation_time():
    def lua(code: str, priority: int, created: str, name: str) -> Selected:
        return ef(LUA.replace("configPatches", f"priority: {priority}\nconfigPatches").replace(
            "function envoy_on_response(h) h:headers():add('x-lua', 'yes') end", code).replace(
            "envoy.filters.http.lua\n", f"{name}\n"), name=name, created=created)
    first = lua("-- a", -1, "2026-02-01T00:00:00Z", "a")
    second = lua("-- b", 0, "2026-01-01T00:00:00Z", "b")
    out, _ = patched("LISTENER", WEBAPP_PROXY, second, first)
    some = next(l for n, l in out.items() if n != "virtualInbound" and http_filters(l))
    assert http_filters(some)[-3:] == ["a", "b", "envoy.filters.http.router"]


def test_a_typed_config_merge_keeps_what_the_patch_does_not_name():
    merge = ef("""
configPatches:
- applyTo: NETWORK_FILTER
  match: {context: GATEWAY, listener: {filterChain: {filter: {name: envoy.filters.network.http_connection_manager}}}}
  patch:
    operation: MERGE
    value:
      typed_config:
        "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
        server_name: meshd-test
""", namespace=ROOT)
    mesh = chapter9.mesh(chapter9.RICH) if hasattr(chapter9, "RICH") else chapter9.mesh()
    before = dict(listeners.build(mesh, GATEWAY_PROXY))
    out, problems = apply("LISTENER", before.items(), ordered([merge], GATEWAY_PROXY, ROOT), GATEWAY_PROXY)
    assert problems == []
    for _name, l in out:
        for chain in l.filter_chains:
            for f in chain.filters:
                if f.name == "envoy.filters.network.http_connection_manager":
                    hcm = hcm_pb2.HttpConnectionManager()
                    f.typed_config.Unpack(hcm)
                    assert hcm.server_name == "meshd-test"
                    assert [h.name for h in hcm.http_filters][-1] == "envoy.filters.http.router"


def test_route_merge_adds_retriable_status_codes():
    retry = ef("""
configPatches:
- applyTo: HTTP_ROUTE
  match: {context: SIDECAR_OUTBOUND, routeConfiguration: {portNumber: 80}}
  patch:
    operation: MERGE
    value: {route: {retry_policy: {retry_on: retriable-status-codes, retriable_status_codes: [408]}}}
""")
    out, problems = patched("ROUTE_CONFIGURATION", WEBAPP_PROXY, retry)
    assert problems == []
    routes_ = [r for vh in out["80"].virtual_hosts for r in vh.routes if r.HasField("route")]
    assert routes_ and all(408 in r.route.retry_policy.retriable_status_codes for r in routes_)


def test_a_bootstrap_patch_leaves_listeners_alone_and_is_not_reported_with_them():
    boot = ef("""
configPatches:
- applyTo: BOOTSTRAP
  patch: {operation: MERGE, value: {stats_flush_interval: 5s}}
""", name="boot")
    plain, _ = patched("LISTENER", WEBAPP_PROXY)
    got, problems = patched("LISTENER", WEBAPP_PROXY, boot)
    assert problems == [] and got == plain  # served as type Bootstrap (test_envoy_filter_bootstrap.py)


def test_lua_module_is_the_filter_type():
    assert lua_pb2.Lua.DESCRIPTOR.full_name == "envoy.extensions.filters.http.lua.v3.Lua"


LOCAL_RATE_LIMIT = """
configPatches:
- applyTo: HTTP_FILTER
  match:
    context: SIDECAR_OUTBOUND
    listener: {filterChain: {filter: {name: envoy.filters.network.http_connection_manager,
               subFilter: {name: envoy.filters.http.router}}}}
  patch:
    operation: INSERT_BEFORE
    value:
      name: envoy.filters.http.local_ratelimit
      typed_config:
        "@type": type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit
        stat_prefix: http_local_rate_limiter
        token_bucket: {max_tokens: 1, tokens_per_fill: 1, fill_interval: 60s}
        filter_enabled: {runtime_key: lrl_enabled, default_value: {numerator: 100, denominator: HUNDRED}}
        filter_enforced: {runtime_key: lrl_enforced, default_value: {numerator: 100, denominator: HUNDRED}}
"""
ROUTE_RETRY = """
configPatches:
- applyTo: HTTP_ROUTE
  match: {context: SIDECAR_OUTBOUND, routeConfiguration: {portNumber: 80}}
  patch:
    operation: MERGE
    value: {route: {retry_policy: {retry_on: retriable-status-codes, retriable_status_codes: [408]}}}
"""


def test_real_envoy_accepts_the_patched_config(tmp_path, monkeypatch):
    """`envoy --mode validate` of everything the webapp sidecar gets, patched by a Lua
    filter, a local rate limit, a route merge and a cluster retry budget, with an invalid
    patch among them left out."""
    from types import SimpleNamespace

    from tests.support import static_xds
    from tests.support.envoy import envoy_validate

    filters = [ef(LUA, name="lua"), ef(LOCAL_RATE_LIMIT, name="rl"), ef(ROUTE_RETRY, name="retry"),
               ef(RETRY_BUDGET, name="budget"), ef(LUA.replace("INSERT_BEFORE", "INSERT_AFTER"), name="bad")]
    seen: list = []

    def patched_builder(kind, module):
        def build(mesh, proxy):
            out, problems = apply(kind, module.build(mesh, proxy), ordered(filters, proxy, ROOT), proxy)
            seen.extend(problems)
            return out
        return SimpleNamespace(build=build)

    monkeypatch.setattr(static_xds, "listeners", patched_builder("LISTENER", listeners))
    monkeypatch.setattr(static_xds, "routes", patched_builder("ROUTE_CONFIGURATION", routes))
    monkeypatch.setattr(static_xds, "clusters", patched_builder("CLUSTER", clusters))
    config = static_xds.sidecar_config(chapter9.mesh(), WEBAPP_PROXY, tmp_path)
    assert {p.envoy_filter for p in seen} == {f"{NS}/bad"}
    text = str(config)
    assert "envoy.filters.http.lua" in text and "envoy.filters.http.local_ratelimit" in text
    assert "retry_budget" in text and "retriable_status_codes" in text
    envoy_validate(config, tmp_path / "bootstrap.json")
