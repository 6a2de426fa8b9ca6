"""EnvoyFilters through the real path: the parse gate (Istio's corpus), the Generator's
EnvoyFilter stage (keys and caching), Istio's networking test data."""
from __future__ import annotations

import yaml
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2
from prometheus_client import CollectorRegistry

from controlplane import names
from controlplane.config import kinds
from controlplane.config.validation import validate
from controlplane.generators import Generator
from controlplane.generators.envoyfilter.apply import ENVOY_WOULD_REJECT
from controlplane.generators.left_out_patches import METRIC, LeftOutPatches
from controlplane.model.proxy import parse_node
from tests.support import chapter9
from tests.support.chapter9 import NS, WEBAPP_PROXY
from tests.support.paths import shared
from tests.support.registry_corpus import CASES, load

VALIDATION = ("corpus", "istio", "pkg", "config", "validation", "testdata", "crds")


def _docs(name: str) -> list[dict]:
    return [d for d in yaml.safe_load_all(shared(*VALIDATION, name).read_text()) if d]


def test_istio_valid_envoy_filters_pass_the_parse_gate():
    for doc in _docs("envoyfilter-valid.yaml"):
        assert validate(doc, kinds.ENVOY_FILTER) == [], doc["metadata"]["name"]


def test_istio_invalid_envoy_filters_are_rejected_naming_the_field():
    for doc in _docs("envoyfilter-invalid.yaml"):
        errs = validate({k: v for k, v in doc.items() if k != "_err"}, kinds.ENVOY_FILTER)
        assert errs, doc["metadata"]["name"]


def http_filters(rs) -> dict[str, list[str]]:
    from envoy.config.listener.v3 import listener_pb2

    out = {}
    for name in rs:
        lst = listener_pb2.Listener()
        rs[name].any.Unpack(lst)
        for chain in lst.filter_chains:
            for f in chain.filters:
                if f.name == "envoy.filters.network.http_connection_manager":
                    hcm = hcm_pb2.HttpConnectionManager()
                    f.typed_config.Unpack(hcm)
                    out.setdefault(name, []).extend(h.name for h in hcm.http_filters)
    return out


def test_istio_lua_envoy_filter_applies_to_the_selected_workload_only():
    case = next(c for c in CASES if c.name == "envoyfilter-without-service")
    _, mesh = load([("configs.yaml", case.path.read_bytes()), ("supplement", case.supplement.encode())],
                   case.root_namespace)
    gen = Generator()
    selected = parse_node(case.node_id, case.metadata)
    other = parse_node(case.node_id, {**case.metadata, "LABELS": {"app": "other"}})
    got = http_filters(gen.generate(mesh, selected, names.LISTENER))
    assert "envoy.lua" in got["0.0.0.0_8081"]
    assert got["0.0.0.0_8081"][-1] == "envoy.filters.http.router"
    assert all("envoy.lua" not in v for v in http_filters(gen.generate(mesh, other, names.LISTENER)).values())


LUA = f"""
apiVersion: networking.istio.io/v1alpha3
kind: EnvoyFilter
metadata: {{name: lua, namespace: {NS}}}
spec:
  workloadSelector: {{labels: {{app: webapp}}}}
  configPatches:
  - applyTo: HTTP_FILTER
    match:
      context: SIDECAR_OUTBOUND
      listener: {{filterChain: {{filter: {{name: envoy.filters.network.http_connection_manager,
                  subFilter: {{name: envoy.filters.http.router}}}}}}}}
    patch:
      operation: INSERT_BEFORE
      value:
        name: envoy.filters.http.lua
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.http.lua.v3.Lua
          inlineCode: "function envoy_on_response(h) h:headers():add('x-lua', 'yes') end"
"""


def test_an_envoy_filter_changes_the_keys_of_the_proxies_it_selects_only():
    gen = Generator()
    before, after = chapter9.mesh(), chapter9.mesh(LUA)
    for t in (names.LISTENER, names.ROUTE, names.CLUSTER, names.ENDPOINT):
        assert gen.key(before, chapter9.CATALOG_PROXY, t) == gen.key(after, chapter9.CATALOG_PROXY, t)
    assert gen.key(before, WEBAPP_PROXY, names.LISTENER) != gen.key(after, WEBAPP_PROXY, names.LISTENER)
    assert gen.key(before, WEBAPP_PROXY, names.ENDPOINT) == gen.key(after, WEBAPP_PROXY, names.ENDPOINT)
    patched = gen.generate(after, WEBAPP_PROXY, names.LISTENER)
    assert any("envoy.filters.http.lua" in v for v in http_filters(patched).values())
    builds = gen.builds
    assert gen.generate(after, WEBAPP_PROXY, names.LISTENER) is patched  # cached by the whole key
    assert gen.builds == builds


BAD = LUA.replace("name: lua,", "name: bad,").replace("INSERT_BEFORE", "INSERT_AFTER")  # a filter after the router


def _left_out(registry, reason: str = ENVOY_WOULD_REJECT) -> float | None:
    return registry.get_sample_value(METRIC, {"namespace": NS, "name": "bad", "reason": reason})


def test_a_patch_left_out_is_listed_for_configz_and_counted_while_its_output_is_served():
    gen = Generator()
    registry = CollectorRegistry()
    registry.register(LeftOutPatches(gen.envoy_filter_problems))
    mesh = chapter9.mesh(BAD)
    assert _left_out(registry) is None
    rs = gen.generate(mesh, WEBAPP_PROXY, names.LISTENER)
    assert all("envoy.filters.http.lua" not in v for v in http_filters(rs).values())
    listed = gen.envoy_filter_problems()
    assert [(p["envoyFilter"], p["patch"], p["applyTo"], p["code"]) for p in listed] == [
        (f"{NS}/bad", 0, "HTTP_FILTER", ENVOY_WOULD_REJECT)]
    assert "terminal" in listed[0]["reason"]
    assert _left_out(registry) == 1
    gen.generate(mesh, chapter9.SLEEP_PROXY, names.LISTENER)  # another output leaving the same patch out
    assert _left_out(registry) == 1  # patches, not outputs
    for i in range(3):  # fixed, and new snapshots: the output left without the patch ages out, its problem too
        fixed = chapter9.mesh(LUA, chapter9.pa(f"p{i}", NS, "PERMISSIVE", selector={"app": f"none{i}"}))
        gen.generate(fixed, WEBAPP_PROXY, names.LISTENER)
    assert gen.envoy_filter_problems() == []
    assert _left_out(registry) is None


def test_a_running_meshd_reports_a_left_out_patch_in_configz_metrics_and_log(tmp_path):
    import json

    from tests.support.ads import ads_fetch
    from tests.support.harness import http_get, meshd, wait_for

    config = tmp_path / "config"
    config.mkdir()
    (config / "mesh.yaml").write_text(chapter9.LAYOUT)
    (config / "bad.yaml").write_text(BAD)
    with meshd(config, tmp_path) as m:
        resp = ads_fetch(m.xds_port, WEBAPP_PROXY.id, dict(WEBAPP_PROXY.metadata), names.LISTENER, [])
        assert resp.resources  # the rest of the config is sent

        def section():
            return json.loads(http_get("127.0.0.1", m.monitoring_port, "/debug/configz")[1]).get("envoyFilterProblems")

        wait_for(lambda: section(), 10, what="envoyFilterProblems in /debug/configz")
        assert [(r["envoyFilter"], r["code"]) for r in section()] == [(f"{NS}/bad", ENVOY_WOULD_REJECT)]
        assert f'{METRIC}{{name="bad",namespace="{NS}",reason="{ENVOY_WOULD_REJECT}"}} 1.0' in m.metrics()
        assert "envoyfilter patch left out" in m.log()
