"""EnvoyFilter applyTo EXTENSION_CONFIG (served over ECDS) and LISTENER_FILTER: the parse
gate, the patches as istiod applies them, and the Generator's ECDS output and keys."""
from __future__ import annotations

import dataclasses

import yaml
from envoy.config.core.v3 import extension_pb2
from envoy.extensions.filters.http.lua.v3 import lua_pb2

from controlplane import names
from controlplane.config import kinds
from controlplane.config.types.envoyfilter import envoy_filter
from controlplane.config.validation import validate
from controlplane.generators import Generator, builders, listeners
from controlplane.generators.envoyfilter import Selected, apply, extension_config, ordered
from controlplane.generators.envoyfilter.apply import ENVOY_WOULD_REJECT, INVALID_VALUE
from controlplane.server.view import missing_extension_configs
from tests.support import chapter9
from tests.support.ads import run
from tests.support.ads_server import Harness
from tests.support.chapter9 import GATEWAY_PROXY, NS, WEBAPP_PROXY
from tests.support.paths import shared

ROOT = "istio-system"
TLS_INSPECTOR = "envoy.filters.listener.tls_inspector"
HTTP_INSPECTOR = "envoy.filters.listener.http_inspector"
ORIGINAL_DST = "envoy.filters.listener.original_dst"
LUA = "type.googleapis.com/envoy.extensions.filters.http.lua.v3.Lua"


def doc(spec: str, name: str = "ef", namespace: str = NS) -> dict:
    return {"apiVersion": "networking.istio.io/v1alpha3", "kind": "EnvoyFilter",
            "metadata": {"name": name, "namespace": namespace}, "spec": yaml.safe_load(spec)}


def ef(spec: str, name: str = "ef", namespace: str = NS) -> Selected:
    return Selected(namespace, name, "", envoy_filter(yaml.safe_load(spec)))


def errors(spec: str) -> list[str]:
    return [str(e) for e in validate(doc(spec), kinds.ENVOY_FILTER)]


def lua_config(name: str, header: str) -> str:
    code = f'function envoy_on_response(h) h:headers():add("x-ecds", "{header}") end'
    return f"""
- applyTo: EXTENSION_CONFIG
  patch:
    operation: ADD
    value:
      name: {name}
      typed_config: {{"@type": "{LUA}", default_source_code: {{inline_string: '{code}'}}}}
"""


# --- the parse gate ------------------------------------------------------------------

def test_the_gate_accepts_extension_configs_and_listener_filter_patches():
    assert errors("configPatches:" + lua_config("lua-a", "one")) == []
    assert errors("""
configPatches:
- applyTo: LISTENER_FILTER
  match: {context: SIDECAR_OUTBOUND, listener: {portNumber: 80, listenerFilter: envoy.filters.listener.http_inspector}}
  patch: {operation: REMOVE}
- applyTo: LISTENER_FILTER
  match: {context: SIDECAR_INBOUND}
  patch:
    operation: INSERT_FIRST
    value: {name: envoy.filters.listener.proxy_protocol,
            typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.listener.proxy_protocol.v3.ProxyProtocol}}
""") == []


def test_istios_ecds_fixture_passes_the_gate():
    fixture = yaml.safe_load(shared("corpus", "istio", "pilot", "pkg", "xds", "testdata", "ecds.yaml").read_text())
    fixture["metadata"]["namespace"] = NS
    assert validate(fixture, kinds.ENVOY_FILTER) == []


def test_the_gate_refuses_what_istiod_would_not_apply_naming_the_field():
    merge = errors("""
configPatches:
- applyTo: EXTENSION_CONFIG
  match: {listener: {portNumber: 80}}
  patch: {operation: MERGE, value: {name: x}}
""")
    assert any("configPatches[0].patch.operation" in e and "supports ADD only" in e for e in merge), merge
    assert any("configPatches[0].match.listener" in e for e in merge), merge
    remove = errors("""
configPatches:
- applyTo: LISTENER_FILTER
  match: {listener: {portNumber: 80}}
  patch: {operation: REMOVE}
""")
    assert any("configPatches[0].match.listener.listenerFilter" in e for e in remove), remove
    unknown = errors("""
configPatches:
- applyTo: EXTENSION_CONFIG
  patch: {operation: ADD, value: {name: x, typed_config: {"@type": type.googleapis.com/no.such.Type}}}
""")
    assert any("configPatches[0].patch.value" in e for e in unknown), unknown


# --- LISTENER_FILTER as istiod applies it ----------------------------------------------

def listener_filters(*filters: Selected, proxy=WEBAPP_PROXY):
    out, problems = apply("LISTENER", listeners.build(chapter9.mesh(), proxy), ordered(filters, proxy, ROOT), proxy)
    return {name: [f.name for f in lst.listener_filters] for name, lst in out}, problems


def test_remove_of_a_listener_filter_on_the_matched_port_only():
    out, problems = listener_filters(ef("""
configPatches:
- applyTo: LISTENER_FILTER
  match: {context: SIDECAR_OUTBOUND, listener: {portNumber: 80, listenerFilter: envoy.filters.listener.http_inspector}}
  patch: {operation: REMOVE}
"""))
    assert problems == []
    assert out["0.0.0.0_80"] == [TLS_INSPECTOR]
    assert out["0.0.0.0_81"] == [TLS_INSPECTOR, HTTP_INSPECTOR]
    assert out["virtualInbound"] == [ORIGINAL_DST, TLS_INSPECTOR, HTTP_INSPECTOR]


def test_inserts_and_replace_by_listener_filter_name_in_the_inbound_context():
    proxy_protocol = ('{name: envoy.filters.listener.proxy_protocol, typed_config: '
                      '{"@type": type.googleapis.com/envoy.extensions.filters.listener.proxy_protocol.v3.ProxyProtocol}}')
    out, problems = listener_filters(ef(f"""
configPatches:
- applyTo: LISTENER_FILTER
  match: {{context: SIDECAR_INBOUND, listener: {{listenerFilter: {TLS_INSPECTOR}}}}}
  patch: {{operation: INSERT_BEFORE, value: {proxy_protocol}}}
- applyTo: LISTENER_FILTER
  match: {{context: SIDECAR_INBOUND, listener: {{portNumber: 9080, listenerFilter: {HTTP_INSPECTOR}}}}}
  patch:
    operation: REPLACE
    value: {{name: my.http_inspector,
             typed_config: {{"@type": type.googleapis.com/envoy.extensions.filters.listener.http_inspector.v3.HttpInspector}}}}
"""))
    assert problems == []
    # portNumber is not checked on the virtual listeners (istiod's listenerMatch)
    assert out["virtualInbound"] == [ORIGINAL_DST, "envoy.filters.listener.proxy_protocol", TLS_INSPECTOR,
                                     "my.http_inspector"]
    assert out["0.0.0.0_80"] == [TLS_INSPECTOR, HTTP_INSPECTOR]  # outbound: another context


def test_add_insert_first_and_a_filter_envoy_would_reject_left_out():
    out, problems = listener_filters(ef("""
configPatches:
- applyTo: LISTENER_FILTER
  match: {listener: {name: 0.0.0.0_81}}
  patch:
    operation: INSERT_FIRST
    value: {name: first, typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.listener.original_dst.v3.OriginalDst}}
- applyTo: LISTENER_FILTER
  match: {listener: {name: 0.0.0.0_81}}
  patch: {operation: ADD, value: {name: no-config}}
""", name="lf"))
    assert out["0.0.0.0_81"] == ["first", TLS_INSPECTOR, HTTP_INSPECTOR]
    assert [(p.envoy_filter, p.patch, p.code) for p in problems] == [(f"{NS}/lf", 1, ENVOY_WOULD_REJECT)]
    assert "no-config" in problems[0].reason and "typed_config" in problems[0].reason


def test_insert_before_and_after_without_a_filter_name_insert_first_and_last():
    original_dst = '{"@type": type.googleapis.com/envoy.extensions.filters.listener.original_dst.v3.OriginalDst}'
    out, problems = listener_filters(ef(f"""
configPatches:
- applyTo: LISTENER_FILTER
  match: {{listener: {{portNumber: 80}}}}
  patch: {{operation: INSERT_AFTER, value: {{name: after, typed_config: {original_dst}}}}}
- applyTo: LISTENER_FILTER
  match: {{listener: {{portNumber: 80}}}}
  patch: {{operation: INSERT_BEFORE, value: {{name: before, typed_config: {original_dst}}}}}
"""))
    assert problems == []
    assert out["0.0.0.0_80"] == ["before", TLS_INSPECTOR, HTTP_INSPECTOR, "after"]


def test_merge_changes_the_named_listener_filter_only():
    out, problems = apply("LISTENER", listeners.build(chapter9.mesh(), WEBAPP_PROXY), [ef(f"""
configPatches:
- applyTo: LISTENER_FILTER
  match: {{listener: {{portNumber: 80, listenerFilter: {TLS_INSPECTOR}}}}}
  patch:
    operation: MERGE
    value:
      typed_config:
        "@type": type.googleapis.com/envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector
        enable_ja3_fingerprinting: true
""")], WEBAPP_PROXY)
    from envoy.extensions.filters.listener.tls_inspector.v3 import tls_inspector_pb2

    assert problems == []
    by_name = dict(out)
    merged = tls_inspector_pb2.TlsInspector()
    by_name["0.0.0.0_80"].listener_filters[0].typed_config.Unpack(merged)
    assert merged.enable_ja3_fingerprinting.value is True
    other = tls_inspector_pb2.TlsInspector()
    by_name["0.0.0.0_81"].listener_filters[0].typed_config.Unpack(other)
    assert not other.HasField("enable_ja3_fingerprinting")


# --- EXTENSION_CONFIG ------------------------------------------------------------------

def test_extension_configs_in_order_with_the_proxy_match_and_problems_named():
    lua = ef("configPatches:" + lua_config("lua-a", "one") + """
- applyTo: EXTENSION_CONFIG
  match: {context: GATEWAY, proxy: {metadata: {ROLE: edge}}}
  patch: {operation: ADD, value: {name: edge-only, typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.http.lua.v3.Lua}}}
- applyTo: EXTENSION_CONFIG
  match: {context: SIDECAR_INBOUND}
  patch: {operation: ADD, value: {name: lua-a, typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.http.lua.v3.Lua}}}
- applyTo: EXTENSION_CONFIG
  patch: {operation: ADD, value: {typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.http.lua.v3.Lua}}}
""", name="lua")
    items, problems = extension_config.build([lua], WEBAPP_PROXY)
    assert [n for n, _ in items] == ["lua-a"]  # no ROLE=edge metadata: edge-only is not for it
    code = lua_pb2.Lua()
    items[0][1].typed_config.Unpack(code)
    assert '"one"' in code.default_source_code.inline_string
    assert [(p.patch, p.code) for p in problems] == [(2, ENVOY_WOULD_REJECT), (3, ENVOY_WOULD_REJECT)]
    assert "would appear twice" in problems[0].reason and "needs a name" in problems[1].reason
    # match.context does not apply (istiod): a GATEWAY-context patch is served to a sidecar with the metadata
    edge = dataclasses.replace(WEBAPP_PROXY, metadata={**WEBAPP_PROXY.metadata, "ROLE": "edge"})
    assert [n for n, _ in extension_config.build([lua], edge)[0]] == ["lua-a", "edge-only"]


def test_a_config_of_a_type_the_filter_naming_it_does_not_take_is_left_out():
    referring = ef(f"""
configPatches:
- applyTo: HTTP_FILTER
  match: {{context: SIDECAR_OUTBOUND}}
  patch:
    operation: INSERT_FIRST
    value: {{name: lua-a, config_discovery: {{config_source: {{ads: {{}}}}, type_urls: ["{LUA}"]}}}}
""", name="filter")
    rbac = ef("""
configPatches:
- applyTo: EXTENSION_CONFIG
  patch: {operation: ADD, value: {name: lua-a, typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC}}}
""", name="config")
    items, problems = extension_config.build([referring, rbac], WEBAPP_PROXY)
    assert items == [] and [(p.envoy_filter, p.code) for p in problems] == [(f"{NS}/config", ENVOY_WOULD_REJECT)]
    assert "RBAC" in problems[0].reason and "type_urls" in problems[0].reason
    # the filter's context is SIDECAR_OUTBOUND: a gateway is not sent it, so its config is fine there
    assert [n for n, _ in extension_config.build([referring, rbac], GATEWAY_PROXY)[0]] == ["lua-a"]
    assert [n for n, _ in extension_config.build([referring, ef("configPatches:" + lua_config("lua-a", "x"))],
                                                 WEBAPP_PROXY)[0]] == ["lua-a"]


def test_an_invalid_typed_config_is_left_out_as_an_invalid_value():
    bad = ef("""
configPatches:
- applyTo: EXTENSION_CONFIG
  patch: {operation: ADD, value: {name: x, typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.http.lua.v3.Lua, nope: 1}}}
""", name="bad")
    items, problems = extension_config.build([bad], GATEWAY_PROXY)
    assert items == [] and [(p.envoy_filter, p.code) for p in problems] == [(f"{NS}/bad", INVALID_VALUE)]


def ecds_filter(header: str, name: str = "ecds-lua", selector: str = "{labels: {app: webapp}}") -> str:
    return yaml.safe_dump(doc(f"workloadSelector: {selector}\nconfigPatches:" + lua_config("lua-a", header),
                              name=name))


def test_the_generator_serves_ecds_keyed_by_the_extension_config_filters_only():
    gen = Generator()
    assert names.EXTENSION_CONFIG in gen.types()
    before, after = chapter9.mesh(), chapter9.mesh(ecds_filter("one"))
    changed = chapter9.mesh(ecds_filter("two"))
    assert gen.generate(before, WEBAPP_PROXY, names.EXTENSION_CONFIG).names == frozenset()
    rs = gen.generate(after, WEBAPP_PROXY, names.EXTENSION_CONFIG)
    assert list(rs) == ["lua-a"]
    config = extension_pb2.TypedExtensionConfig()
    rs["lua-a"].any.Unpack(config)
    assert config.typed_config.type_url == LUA
    # an EXTENSION_CONFIG-only change pushes ECDS to the selected proxy, nothing else to anyone
    assert gen.key(after, WEBAPP_PROXY, names.EXTENSION_CONFIG) != gen.key(changed, WEBAPP_PROXY, names.EXTENSION_CONFIG)
    for t in (names.LISTENER, names.ROUTE, names.CLUSTER):
        assert gen.key(before, WEBAPP_PROXY, t) == gen.key(after, WEBAPP_PROXY, t) == gen.key(changed, WEBAPP_PROXY, t)
    for t in gen.types():
        assert gen.key(after, chapter9.CATALOG_PROXY, t) == gen.key(changed, chapter9.CATALOG_PROXY, t), t
    assert gen.generate(after, WEBAPP_PROXY, names.EXTENSION_CONFIG) is rs  # cached by key
    # the plain builder gives the same
    assert [n for n, _ in builders()[names.EXTENSION_CONFIG](after, WEBAPP_PROXY)] == ["lua-a"]


def test_an_extension_config_left_out_is_listed_with_the_other_problems():
    gen = Generator()
    mesh = chapter9.mesh(ecds_filter("one", name="first"), ecds_filter("two", name="second"))
    rs = gen.generate(mesh, WEBAPP_PROXY, names.EXTENSION_CONFIG)
    assert list(rs) == ["lua-a"]
    assert [(p["envoyFilter"], p["applyTo"], p["code"]) for p in gen.envoy_filter_problems()] == [
        (f"{NS}/second", "EXTENSION_CONFIG", ENVOY_WOULD_REJECT)]


def test_istios_ecds_fixture_is_served_to_every_proxy_it_selects():
    fixture = yaml.safe_load(shared("corpus", "istio", "pilot", "pkg", "xds", "testdata", "ecds.yaml").read_text())
    fixture["metadata"]["namespace"] = ROOT
    mesh = chapter9.mesh(yaml.safe_dump(fixture))
    gen = Generator()
    wasm = ef("""
configPatches:
- applyTo: HTTP_FILTER
  patch:
    operation: INSERT_FIRST
    value: {name: extension-config, config_discovery: {config_source: {ads: {}},
            type_urls: [type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm]}}
""", namespace=ROOT)
    # a filter taking Wasm configs: the TypedStruct carries a Wasm config, so it is served
    assert [n for n, _ in extension_config.build(
        [Selected(ROOT, "test", "", envoy_filter(fixture["spec"])), wasm], WEBAPP_PROXY)[0]] == ["extension-config"]
    for proxy in (WEBAPP_PROXY, GATEWAY_PROXY):  # its context SIDECAR_INBOUND does not apply (istiod)
        rs = gen.generate(mesh, proxy, names.EXTENSION_CONFIG)
        assert list(rs) == ["extension-config"]
        config = extension_pb2.TypedExtensionConfig()
        rs["extension-config"].any.Unpack(config)
        assert config.typed_config.type_url == "type.googleapis.com/udpa.type.v1.TypedStruct"


# --- over ADS: SotW and delta ---------------------------------------------------------------

SIDECAR = (f"sidecar~10.1.0.10~webapp-1.{NS}~{NS}.svc.cluster.local",
           {"NAMESPACE": NS, "LABELS": {"app": "webapp"}, "SERVICE_ACCOUNT": "webapp"})


def lua_code(resource) -> str:
    config, code = extension_pb2.TypedExtensionConfig(), lua_pb2.Lua()
    resource.Unpack(config)
    config.typed_config.Unpack(code)
    return code.default_source_code.inline_string


def test_ecds_over_sotw_serves_the_names_asked_for_pushes_a_change_and_reports_a_missing_name():
    async def main():
        async with Harness(Generator()) as s:
            s.ads.update(chapter9.mesh(ecds_filter("one")))
            c = s.sotw(*SIDECAR)
            c.send(names.EXTENSION_CONFIG, ["lua-a", "no-such-config"])
            first = await c.recv()
            assert first.type_url == names.EXTENSION_CONFIG and len(first.resources) == 1
            assert '"one"' in lua_code(first.resources[0])
            assert missing_extension_configs(s.ads.connections()) == [{"proxy": SIDECAR[0], "names": ["no-such-config"]}]
            c.ack(first, ["lua-a", "no-such-config"])
            assert s.ads.update(chapter9.mesh(ecds_filter("two"))) == 1
            pushed = await c.recv()
            assert pushed.type_url == names.EXTENSION_CONFIG and '"two"' in lua_code(pushed.resources[0])
            assert pushed.version_info != first.version_info

    run(main())


def test_ecds_over_delta_sends_the_config_and_removes_a_name_no_envoy_filter_provides():
    async def main():
        async with Harness(Generator()) as s:
            s.ads.update(chapter9.mesh(ecds_filter("one")))
            d = s.delta(*SIDECAR)
            d.send(names.EXTENSION_CONFIG, subscribe=["lua-a", "no-such-config"])
            first = await d.recv()
            assert [r.name for r in first.resources] == ["lua-a"] and list(first.removed_resources) == ["no-such-config"]
            d.ack(first)
            s.ads.update(chapter9.mesh(ecds_filter("two")))
            pushed = await d.recv()
            assert [r.name for r in pushed.resources] == ["lua-a"] and '"two"' in lua_code(pushed.resources[0].resource)
            d.ack(pushed)
            s.ads.update(chapter9.mesh())  # the EnvoyFilter deleted: the config goes
            gone = await d.recv()
            assert not gone.resources and list(gone.removed_resources) == ["lua-a"]

    run(main())


def test_proxy_config_ecds_lists_what_the_proxy_was_sent(tmp_path):
    import contextlib
    import io

    from controlplane import cli
    from controlplane.debug.configdump import Sent, from_sent

    rs = Generator().generate(chapter9.mesh(ecds_filter("one")), WEBAPP_PROXY, names.EXTENSION_CONFIG)
    dump = tmp_path / "dump.json"
    dump.write_text(from_sent(None, [Sent(names.EXTENSION_CONFIG, rs.version, 1.0, tuple(rs[n] for n in rs))]).to_json())
    empty = tmp_path / "empty.json"
    empty.write_text(from_sent(None, []).to_json())

    def run(*argv: str) -> str:
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            assert cli.main(["proxy-config", *argv]) == 0
        return out.getvalue()

    assert run("ecds", "--file", str(dump)).splitlines() == [
        "ECDS NAME     TYPE", "lua-a         envoy.extensions.filters.http.lua.v3.Lua"]
    assert '"name": "lua-a"' in run("ecds", "--file", str(dump), "-o", "json")
    assert run("ecds", "--file", str(empty)).splitlines() == ["ECDS NAME     TYPE"]
