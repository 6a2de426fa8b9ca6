"""EnvoyFilter with real Envoy sidecars on the test bed (issue 21): webapp and catalog with
sidecars, EnvoyFilters applied live to webapp's sidecar.

- a Lua filter inserted before the router adds a request header catalog's app sees and a
  response header webapp's client sees, and an EnvoyFilter of a higher priority REMOVEs it;
- two EnvoyFilters whose Lua filters each append to a request header run in the order of
  their priority (not of their names), and swapping the priorities swaps the order;
- a cluster REPLACE swaps catalog's mTLS EDS cluster for a plaintext STATIC one: the app
  stops seeing the client's certificate (x-forwarded-client-cert), and back on deletion;
- a local rate limit inserted before the router answers 429;
- a cluster MERGE puts a retry budget in webapp's Envoy's config dump;
- an invalid patch (a filter after the router) is left out while the rest is sent: the
  Lua header arrives, and no Envoy rejects an update (checked here and at teardown);
- a Lua filter before the router whose config Envoy fetches by name over ECDS
  (`config_discovery`, config_source ads; EnvoyFilter EXTENSION_CONFIG) adds a response
  header; editing the EXTENSION_CONFIG EnvoyFilter alone changes the header with an ECDS
  update and no LDS response (Envoy's listener stays as it was); the config is in Envoy's
  config dump and in meshd's `/debug/config_dump`; a name Envoy asks for before any
  EnvoyFilter provides it is listed in `/debug/configz` (`extensionConfigsMissing`) until
  one does; the ECDS change also over incremental xDS (a second bed, `--xds-transport delta`);
- a LISTENER_FILTER REMOVE takes tls_inspector off webapp's outbound listener for port
  80: gone from Envoy's config dump, traffic still flows.
"""
from __future__ import annotations

import json

import pytest

from controlplane import names
from tests.support.harness import http_get
from tests.support.manifests import documents, service
from tests.testbed.bed import wait_for
from tests.testbed.fixtures import require_testbed
from tests.testbed.mesh import CATALOG_PORT, CHAPTER9_PODS, NS, WEBAPP_PORT, pods_yaml, run_mesh

pytestmark = pytest.mark.e2e

PODS = {name: CHAPTER9_PODS[name] for name in ("webapp", "catalog")}
CATALOG = f"outbound|80||catalog.{NS}.svc.cluster.local"
HCM = "envoy.filters.network.http_connection_manager"


def layout(pods, vips) -> str:
    return documents(service("webapp", NS, [("http", 80, WEBAPP_PORT)], cluster_ip=vips["webapp"]),
                     service("catalog", NS, [("http", 80, CATALOG_PORT)], cluster_ip=vips["catalog"])) + pods_yaml(PODS, pods)


def before_router(name: str, filter_name: str, typed_config: str, position: str = "INSERT_BEFORE",
                  priority: int = 0) -> str:
    return f"""
apiVersion: networking.istio.io/v1alpha3
kind: EnvoyFilter
metadata: {{name: {name}, namespace: {NS}}}
spec:
  priority: {priority}
  workloadSelector: {{labels: {{app: webapp}}}}
  configPatches:
  - applyTo: HTTP_FILTER
    match:
      context: SIDECAR_OUTBOUND
      listener: {{filterChain: {{filter: {{name: {HCM}, subFilter: {{name: envoy.filters.http.router}}}}}}}}
    patch:
      operation: {position}
      value:
        name: {filter_name}
        typed_config:
{typed_config}
"""


LUA = before_router("lua", "envoy.filters.http.lua", """\
          "@type": type.googleapis.com/envoy.extensions.filters.http.lua.v3.Lua
          inlineCode: "function envoy_on_request(h) h:headers():add('x-meshd-lua', 'yes') end
            function envoy_on_response(h) h:headers():add('x-meshd-lua-response', 'yes') end"
""")


def ordered_lua(name: str, priority: int) -> str:
    """A Lua filter before the router appending `name` to the request header x-meshd-order."""
    return before_router(name, f"meshd.lua.{name}", f"""\
          "@type": type.googleapis.com/envoy.extensions.filters.http.lua.v3.Lua
          inlineCode: "function envoy_on_request(h) local v = h:headers():get('x-meshd-order')
            h:headers():replace('x-meshd-order', (v and v .. ',' or '') .. '{name}') end"
""", priority=priority)


def replace_catalog(ip: str) -> str:
    """catalog's outbound cluster REPLACEd by a STATIC one to the pod, plaintext (no TLS)."""
    return f"""
apiVersion: networking.istio.io/v1alpha3
kind: EnvoyFilter
metadata: {{name: replace-catalog, namespace: {NS}}}
spec:
  workloadSelector: {{labels: {{app: webapp}}}}
  configPatches:
  - applyTo: CLUSTER
    match: {{context: SIDECAR_OUTBOUND, cluster: {{service: catalog.{NS}.svc.cluster.local, portNumber: 80}}}}
    patch:
      operation: REPLACE
      value:
        name: "{CATALOG}"
        type: STATIC
        connect_timeout: 2s
        load_assignment:
          cluster_name: "{CATALOG}"
          endpoints:
          - lb_endpoints:
            - endpoint: {{address: {{socket_address: {{address: {ip}, port_value: {CATALOG_PORT}}}}}}}
"""


REMOVE_LUA = f"""
apiVersion: networking.istio.io/v1alpha3
kind: EnvoyFilter
metadata: {{name: remove-lua, namespace: {NS}}}
spec:
  priority: 10
  workloadSelector: {{labels: {{app: webapp}}}}
  configPatches:
  - applyTo: HTTP_FILTER
    match:
      context: SIDECAR_OUTBOUND
      listener: {{filterChain: {{filter: {{name: {HCM}, subFilter: {{name: envoy.filters.http.lua}}}}}}}}
    patch: {{operation: REMOVE}}
"""
RATE_LIMIT = before_router("ratelimit", "envoy.filters.http.local_ratelimit", """\
          "@type": type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit
          stat_prefix: meshd_local_rate_limit
          token_bucket: {max_tokens: 1, tokens_per_fill: 1, fill_interval: 60s}
          filter_enabled: {runtime_key: lrl_enabled, default_value: {numerator: 100, denominator: HUNDRED}}
          filter_enforced: {runtime_key: lrl_enforced, default_value: {numerator: 100, denominator: HUNDRED}}
""")
AFTER_ROUTER = before_router("after-router", "envoy.filters.http.lua", """\
          "@type": type.googleapis.com/envoy.extensions.filters.http.lua.v3.Lua
          inlineCode: "function envoy_on_request(h) end"
""", position="INSERT_AFTER")
RETRY_BUDGET = f"""
apiVersion: networking.istio.io/v1alpha3
kind: EnvoyFilter
metadata: {{name: retry-budget, namespace: {NS}}}
spec:
  workloadSelector: {{labels: {{app: webapp}}}}
  configPatches:
  - applyTo: CLUSTER
    match: {{context: SIDECAR_OUTBOUND, cluster: {{service: catalog.{NS}.svc.cluster.local}}}}
    patch:
      operation: MERGE
      value:
        circuit_breakers:
          thresholds:
          - retry_budget: {{budget_percent: {{value: 25}}, min_retry_concurrency: 4}}
"""


@pytest.fixture(scope="module")
def mesh(tmp_path_factory):
    require_testbed()
    work = tmp_path_factory.mktemp("envoy-filter")
    with run_mesh(work, PODS, layout, services=("webapp", "catalog")) as m:
        yield m


def lua_header(mesh, path: str) -> str | None:
    r = mesh.request("webapp", mesh.vip("catalog", 80, path))
    if r.status != "200":
        return None
    return json.loads(r.body)["headers"].get("x-meshd-lua")


def response_headers(mesh, path: str) -> dict[str, str]:
    """The response headers webapp's client (curl, through its sidecar) gets from catalog."""
    cp = mesh.pods["webapp"].curl(mesh.vip("catalog", 80, path), "-o", "/dev/null", "-D", "-", timeout=5)
    out = {}
    for line in cp.stdout.splitlines()[1:]:
        key, sep, value = line.partition(":")
        if sep:
            out[key.strip().lower()] = value.strip()
    return out


def app_saw(mesh, path: str) -> dict:
    """What catalog's app saw of webapp's request (the echo's JSON); {} when it did not answer."""
    r = mesh.request("webapp", mesh.vip("catalog", 80, path))
    return json.loads(r.body) if r.status == "200" else {}


def test_a_lua_filter_before_the_router_and_its_removal_by_a_higher_priority(mesh):
    mesh.expect("webapp", mesh.vip("catalog", 80, "/plain"), 0, "200")
    assert lua_header(mesh, "/plain") is None
    assert "x-meshd-lua-response" not in response_headers(mesh, "/plain")
    mesh.apply("lua", LUA)
    wait_for(lambda: lua_header(mesh, "/lua") == "yes", 20, interval=0.5, what="the Lua filter's request header")
    got = response_headers(mesh, "/lua")
    assert got.get("x-meshd-lua-response") == "yes" and got.get("x-echo-pod") == "catalog", got
    mesh.apply("remove-lua", REMOVE_LUA)
    wait_for(lambda: lua_header(mesh, "/removed") is None and mesh.request(
        "webapp", mesh.vip("catalog", 80, "/removed")).status == "200", 20, interval=0.5,
        what="the Lua filter removed by the priority-10 EnvoyFilter")
    mesh.apply("remove-lua", None)
    mesh.apply("lua", None)


def test_an_invalid_patch_is_left_out_and_the_rest_is_sent(mesh):
    mesh.apply("after-router", AFTER_ROUTER)
    mesh.apply("lua", LUA)
    wait_for(lambda: lua_header(mesh, "/mixed") == "yes", 20, interval=0.5, what="the valid Lua patch")
    assert mesh.rejected_updates() == {}
    mesh.apply("after-router", None)
    mesh.apply("lua", None)
    wait_for(lambda: lua_header(mesh, "/gone") is None, 20, interval=0.5, what="the Lua filter gone")


def test_a_cluster_merge_puts_a_retry_budget_in_envoys_config_dump(mesh):
    mesh.apply("retry-budget", RETRY_BUDGET)
    webapp = mesh.envoys["webapp"]

    def budget():
        for c in webapp.config_dump("dynamic_active_clusters")["configs"]:
            if c["cluster"]["name"] == CATALOG:
                for t in c["cluster"].get("circuit_breakers", {}).get("thresholds", []):
                    if "retry_budget" in t:
                        return t["retry_budget"]
        return None

    wait_for(budget, 20, interval=0.5, what="the retry budget in webapp's config dump")
    assert budget() == {"budget_percent": {"value": 25}, "min_retry_concurrency": 4}
    mesh.apply("retry-budget", None)
    wait_for(lambda: budget() is None, 20, interval=0.5, what="the retry budget gone")


def test_a_local_rate_limit_answers_429(mesh):
    mesh.apply("ratelimit", RATE_LIMIT)
    wait_for(lambda: mesh.request("webapp", mesh.vip("catalog", 80, "/limited")).status == "429", 20,
             interval=0.5, what="a 429 from the local rate limit")
    mesh.apply("ratelimit", None)
    mesh.expect("webapp", mesh.vip("catalog", 80, "/free"), 0, "200", timeout=20)


# catalog's sidecar answers 408 to a first attempt at /flaky (Envoy's x-envoy-attempt-count,
# which webapp's sidecar sends once its virtual hosts are merged with
# include_request_attempt_count); a retry reaches the app.
FLAKY_408 = f"""
apiVersion: networking.istio.io/v1alpha3
kind: EnvoyFilter
metadata: {{name: flaky, namespace: {NS}}}
spec:
  workloadSelector: {{labels: {{app: catalog}}}}
  configPatches:
  - applyTo: HTTP_FILTER
    match:
      context: SIDECAR_INBOUND
      listener: {{filterChain: {{filter: {{name: {HCM}, subFilter: {{name: envoy.filters.http.router}}}}}}}}
    patch:
      operation: INSERT_BEFORE
      value:
        name: envoy.filters.http.lua
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.http.lua.v3.Lua
          inlineCode: |
            function envoy_on_request(h)
              local path = h:headers():get(":path") or ""
              if string.sub(path, 1, 6) == "/flaky" and h:headers():get("x-envoy-attempt-count") == "1" then
                h:respond({{[":status"] = "408"}}, "first attempt refused")
              end
            end
"""
ATTEMPT_COUNT = f"""
apiVersion: networking.istio.io/v1alpha3
kind: EnvoyFilter
metadata: {{name: attempt-count, namespace: {NS}}}
spec:
  workloadSelector: {{labels: {{app: webapp}}}}
  configPatches:
  - applyTo: VIRTUAL_HOST
    match: {{context: SIDECAR_OUTBOUND, routeConfiguration: {{portNumber: 80}}}}
    patch: {{operation: MERGE, value: {{include_request_attempt_count: true}}}}
"""
RETRY_408 = f"""
apiVersion: networking.istio.io/v1alpha3
kind: EnvoyFilter
metadata: {{name: retry-408, namespace: {NS}}}
spec:
  workloadSelector: {{labels: {{app: webapp}}}}
  configPatches:
  - applyTo: HTTP_ROUTE
    match: {{context: SIDECAR_OUTBOUND, routeConfiguration: {{portNumber: 80}}}}
    patch:
      operation: MERGE
      value: {{route: {{retry_policy: {{retry_on: retriable-status-codes, retriable_status_codes: [408]}}}}}}
"""


def test_a_route_merge_of_retriable_status_codes_retries_408(mesh):
    mesh.apply("flaky", FLAKY_408)
    mesh.apply("attempt-count", ATTEMPT_COUNT)
    mesh.expect("webapp", mesh.vip("catalog", 80, "/flaky"), 0, "408", timeout=20)
    mesh.apply("retry-408", RETRY_408)
    mesh.expect("webapp", mesh.vip("catalog", 80, "/flaky"), 0, "200", timeout=20)
    for name in ("retry-408", "attempt-count", "flaky"):
        mesh.apply(name, None)


def test_two_envoy_filters_run_in_the_order_of_their_priority(mesh):
    def order(path: str) -> str | None:
        return app_saw(mesh, path).get("headers", {}).get("x-meshd-order")

    # names sort the other way round: the priority decides
    mesh.apply("a-second", ordered_lua("a-second", priority=10))
    mesh.apply("z-first", ordered_lua("z-first", priority=-5))
    wait_for(lambda: order("/ordered") == "z-first,a-second", 20, interval=0.5,
             what=lambda: f"z-first (priority -5) before a-second (10); got {order('/ordered')!r}")
    mesh.apply("a-second", ordered_lua("a-second", priority=-10))
    wait_for(lambda: order("/swapped") == "a-second,z-first", 20, interval=0.5,
             what=lambda: f"a-second (priority -10) before z-first (-5); got {order('/swapped')!r}")
    assert mesh.rejected_updates() == {}
    mesh.apply("a-second", None)
    mesh.apply("z-first", None)
    wait_for(lambda: order("/unordered") is None and app_saw(mesh, "/unordered"), 20, interval=0.5,
             what="both Lua filters gone")


def test_a_cluster_replace_is_what_envoy_uses(mesh):
    def client_cert(path: str) -> str:
        return app_saw(mesh, path).get("headers", {}).get("x-forwarded-client-cert", "")

    wait_for(lambda: f"/ns/{NS}/sa/webapp" in client_cert("/mtls"), 20, interval=0.5,
             what="catalog's app seeing webapp's certificate (mTLS through the EDS cluster)")
    webapp = mesh.envoys["webapp"]

    def catalog_cluster() -> dict:
        for c in webapp.config_dump("dynamic_active_clusters")["configs"]:
            if c["cluster"]["name"] == CATALOG:
                return c["cluster"]
        return {}

    mesh.apply("replace-catalog", replace_catalog(mesh.pods["catalog"].ip))
    wait_for(lambda: catalog_cluster().get("type") == "STATIC", 20, interval=0.5, what="the STATIC cluster in Envoy")
    assert "transport_socket" not in catalog_cluster() and "transport_socket_matches" not in catalog_cluster()
    wait_for(lambda: app_saw(mesh, "/replaced").get("path") == "/replaced" and client_cert("/replaced") == "", 20,
             interval=0.5, what="catalog answering a plaintext request (no client certificate) through the replacement")
    assert mesh.rejected_updates() == {}
    mesh.apply("replace-catalog", None)
    wait_for(lambda: f"/ns/{NS}/sa/webapp" in client_cert("/back"), 20, interval=0.5,
             what="mTLS through the EDS cluster again")


# --- EXTENSION_CONFIG over ECDS, LISTENER_FILTER ---------------------------------------------

LUA_TYPE = "type.googleapis.com/envoy.extensions.filters.http.lua.v3.Lua"
CONFIG_NAME = "meshd.ecds.lua"


def webapp_filter(name: str, patches: str) -> str:
    """An EnvoyFilter `name` selecting webapp with `patches` (YAML list items, indented 2)."""
    return (f"apiVersion: networking.istio.io/v1alpha3\nkind: EnvoyFilter\nmetadata: {{name: {name}, namespace: {NS}}}\n"
            f"spec:\n  workloadSelector: {{labels: {{app: webapp}}}}\n  configPatches:\n{patches}")


# The filter: before the router of webapp's outbound listeners, its config by name over ADS.
DISCOVERED_FILTER = webapp_filter("ecds-filter", f"""\
  - applyTo: HTTP_FILTER
    match:
      context: SIDECAR_OUTBOUND
      listener: {{filterChain: {{filter: {{name: {HCM}, subFilter: {{name: envoy.filters.http.router}}}}}}}}
    patch:
      operation: INSERT_BEFORE
      value:
        name: {CONFIG_NAME}
        config_discovery:
          config_source: {{ads: {{}}, initial_fetch_timeout: 5s}}
          type_urls: ["{LUA_TYPE}"]
""")


def extension_config(value: str) -> str:
    """The filter's config: a Lua script adding the response header x-meshd-ecds: `value`."""
    return webapp_filter("ecds-config", f"""\
  - applyTo: EXTENSION_CONFIG
    patch:
      operation: ADD
      value:
        name: {CONFIG_NAME}
        typed_config:
          "@type": {LUA_TYPE}
          default_source_code:
            inline_string: "function envoy_on_response(h) h:headers():add('x-meshd-ecds', '{value}') end"
""")


REMOVE_TLS_INSPECTOR = webapp_filter("no-tls-inspector", """\
  - applyTo: LISTENER_FILTER
    match:
      context: SIDECAR_OUTBOUND
      listener: {portNumber: 80, listenerFilter: envoy.filters.listener.tls_inspector}
    patch: {operation: REMOVE}
""")


def ecds_header(mesh, path: str) -> str | None:
    return response_headers(mesh, path).get("x-meshd-ecds")


def outbound_listener(mesh, name: str = "0.0.0.0_80") -> dict:
    """webapp's Envoy's dynamic listener `name`, as its config dump shows it (active state)."""
    for entry in mesh.envoys["webapp"].config_dump("dynamic_listeners")["configs"]:
        if entry["name"] == name:
            return entry.get("active_state", {})
    return {}


def ecds_in_envoy(mesh) -> dict:
    """The ECDS configs webapp's Envoy holds, by name (its config dump's EcdsConfigDump)."""
    out = {}
    for section in mesh.envoys["webapp"].config_dump()["configs"]:
        if section.get("@type", "").endswith("EcdsConfigDump"):
            for f in section.get("ecds_filters", []):
                out[f["ecds_filter"]["name"]] = f
    return out


def ecds_config_changed_without_a_listener_update(mesh) -> None:
    """The ECDS Lua filter and its config applied (header "one"), then the config alone
    changed (header "two"): an ECDS update, no LDS response, the listener as it was."""
    mesh.expect("webapp", mesh.vip("catalog", 80, "/plain"), 0, "200")
    assert ecds_header(mesh, "/plain") is None
    mesh.apply("ecds-config", extension_config("one"))
    mesh.apply("ecds-filter", DISCOVERED_FILTER)
    wait_for(lambda: ecds_header(mesh, "/one") == "one", 30, interval=0.5, what="the ECDS Lua filter's header")
    listener = outbound_listener(mesh)
    assert listener, "webapp's outbound listener for port 80"
    assert CONFIG_NAME in ecds_in_envoy(mesh)

    envoy = mesh.envoys["webapp"]
    lds_updates = envoy.stat("listener_manager.lds.update_success")
    reloads = envoy.stats(f"extension_config_discovery.http_filter.{CONFIG_NAME}.config_reload")
    mesh.apply("ecds-config", extension_config("two"))  # only the extension config changes
    wait_for(lambda: ecds_header(mesh, "/two") == "two", 30, interval=0.5, what="the changed ECDS config")
    # an ECDS update, no LDS response at all: the listener is the one Envoy had
    assert envoy.stat("listener_manager.lds.update_success") == lds_updates
    assert sum(envoy.stats(f"extension_config_discovery.http_filter.{CONFIG_NAME}.config_reload").values()) == \
        sum(reloads.values()) + 1, (reloads, envoy.stats("extension_config_discovery"))
    after = outbound_listener(mesh)
    assert (after["version_info"], after["last_updated"]) == (listener["version_info"], listener["last_updated"])
    assert mesh.rejected_updates() == {}


def remove_ecds(mesh, gone: str, after: str) -> None:
    """Delete the ECDS filter and its extension config: the header goes (asked at path
    `gone`) and webapp still reaches catalog (at `after`)."""
    mesh.apply("ecds-filter", None)
    mesh.apply("ecds-config", None)
    wait_for(lambda: ecds_header(mesh, gone) is None, 30, interval=0.5, what="the ECDS filter gone")
    mesh.expect("webapp", mesh.vip("catalog", 80, after), 0, "200")


def test_a_lua_filter_configured_over_ecds_and_changed_without_a_listener_change(mesh):
    ecds_config_changed_without_a_listener_update(mesh)

    # meshd's own record of what it sent shows the extension config too
    node = mesh.envoys["webapp"].bootstrap()["node"]["id"]
    status, body = http_get("127.0.0.1", mesh.cp.monitoring_port, f"/debug/config_dump?proxyID={node}")
    assert status == 200, body[:300]
    sent = [c for c in json.loads(body)["configs"] if c["@type"].endswith("EcdsConfigDump")]
    assert sent, [c["@type"] for c in json.loads(body)["configs"]]
    assert [(f["ecdsFilter"]["@type"], f["ecdsFilter"]["name"]) for f in sent[0]["ecdsFilters"]] == [
        (f"type.googleapis.com/{names.EXTENSION_CONFIG.rpartition('/')[2]}", CONFIG_NAME)]

    # a listener change beside it: the new listener takes the config Envoy holds (no warming stuck)
    mesh.apply("lua", LUA)
    wait_for(lambda: lua_header(mesh, "/both") == "yes", 30, interval=0.5, what="another Lua filter beside it")
    assert ecds_header(mesh, "/both") == "two"
    mesh.apply("lua", None)
    wait_for(lambda: lua_header(mesh, "/ecds-only") is None, 30, interval=0.5, what="the other Lua filter gone")
    assert ecds_header(mesh, "/ecds-only") == "two"

    remove_ecds(mesh, "/gone", "/after")


def test_an_ecds_name_no_envoy_filter_provides_is_reported_until_one_does(mesh):
    def missing() -> list[dict]:
        status, body = http_get("127.0.0.1", mesh.cp.monitoring_port, "/debug/configz")
        assert status == 200, body[:300]
        return json.loads(body)["extensionConfigsMissing"]

    node = mesh.envoys["webapp"].bootstrap()["node"]["id"]
    mesh.apply("ecds-filter", DISCOVERED_FILTER)  # the filter first: Envoy asks for a name nobody serves
    wait_for(lambda: missing() == [{"proxy": node, "names": [CONFIG_NAME]}], 30, interval=0.5,
             what=lambda: f"configz extensionConfigsMissing naming webapp's {CONFIG_NAME}: {missing()}")
    mesh.apply("ecds-config", extension_config("late"))
    wait_for(lambda: ecds_header(mesh, "/late") == "late", 30, interval=0.5, what="the config that came later")
    assert missing() == []
    assert mesh.rejected_updates() == {}
    remove_ecds(mesh, "/gone-again", "/after-late")


def test_a_listener_filter_removed_from_the_outbound_listener_with_traffic_still_flowing(mesh):
    def listener_filters() -> list[str]:
        return [f["name"] for f in outbound_listener(mesh).get("listener", {}).get("listener_filters", [])]

    assert "envoy.filters.listener.tls_inspector" in listener_filters()
    mesh.apply("no-tls-inspector", REMOVE_TLS_INSPECTOR)
    wait_for(lambda: listener_filters() == ["envoy.filters.listener.http_inspector"], 30, interval=0.5,
             what="tls_inspector gone from webapp's 0.0.0.0_80")
    mesh.expect("webapp", mesh.vip("catalog", 80, "/no-inspector"), 0, "200")
    assert mesh.rejected_updates() == {}
    mesh.apply("no-tls-inspector", None)
    wait_for(lambda: "envoy.filters.listener.tls_inspector" in listener_filters(), 30, interval=0.5,
             what="tls_inspector back")


@pytest.fixture(scope="module")
def delta_mesh(tmp_path_factory):
    require_testbed()
    with run_mesh(tmp_path_factory.mktemp("envoy-filter-delta"), PODS, layout, services=("webapp", "catalog"),
                  bootstrap_args=["--xds-transport", "delta"]) as m:
        yield m


def test_ecds_over_incremental_xds(delta_mesh):
    """The same over delta (api_type DELTA_GRPC): ECDS subscribed and updated by name."""
    assert "delta=True" in delta_mesh.cp.log()
    ecds_config_changed_without_a_listener_update(delta_mesh)
    remove_ecds(delta_mesh, "/gone", "/after")
