"""RequestAuthentication's filters in a real (upstream) Envoy, without a control plane.

A static bootstrap carries what generators/authn.py builds (jwt_authn + the Lua
istio_authn) and an RBAC filter after it, on two listeners: one whose RBAC reads the
jwt_authn payload (as istiod's current AuthorizationPolicy goldens do), one whose RBAC
reads the `istio_authn` metadata (as older istiod and istioctl's dumps do). Routes answer
directly and echo, in response headers, the metadata RBAC saw.

What Envoy must do: no token passes authentication (RBAC then decides: 403), a forged,
or expired token is refused (401; a wrong audience: 403 from jwt_authn), a valid token (RS256 or ES256) reaches
RBAC with its principal and claims, a token of an issuer whose key set meshd could not
fetch is refused (401), and outputClaimToHeaders adds its header.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from envoy.config.bootstrap.v3 import bootstrap_pb2
from envoy.config.core.v3 import address_pb2, base_pb2
from envoy.config.listener.v3 import listener_components_pb2, listener_pb2
from envoy.config.rbac.v3 import rbac_pb2
from envoy.config.route.v3 import route_components_pb2, route_pb2
from envoy.extensions.filters.http.rbac.v3 import rbac_pb2 as rbac_filter_pb2
from envoy.extensions.filters.http.router.v3 import router_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2
from envoy.type.matcher.v3 import metadata_pb2, string_pb2, value_pb2

from controlplane.generators.authn import http_filters
from controlplane.generators.convert import typed
from controlplane.model.request_authentication import ClaimToHeader, JwksView, JwtRule, KeySetRef
from tests.support.envoy import envoy_binary
from tests.support.harness import Process, free_port, wait_for
from tests.support.jwt import Issuer, forged

pytestmark = pytest.mark.e2e

JWT = "envoy.filters.http.jwt_authn"
ISTIO_AUTHN = "istio_authn"
RSA_ISS = "https://rsa.example"
EC_ISS = "https://ec.example"
DOWN_ISS = "https://down.example"  # its jwksUri could not be fetched


# --- RBAC as the lead's builder would produce it (by hand here) ------------------------

def _md(filter_name: str, path: list[str], value: value_pb2.ValueMatcher) -> rbac_pb2.Principal:
    return rbac_pb2.Principal(metadata=metadata_pb2.MetadataMatcher(
        filter=filter_name, path=[metadata_pb2.MetadataMatcher.PathSegment(key=k) for k in path], value=value))


def _exact(s: str) -> value_pb2.ValueMatcher:
    return value_pb2.ValueMatcher(string_match=string_pb2.StringMatcher(exact=s))


def _list_has(s: str) -> value_pb2.ValueMatcher:
    return value_pb2.ValueMatcher(list_match=value_pb2.ListMatcher(one_of=_exact(s)))


def _claim(s: str) -> value_pb2.ValueMatcher:
    # istiod's claim matcher: the claim as a list containing s, or as the string s.
    return value_pb2.ValueMatcher(or_match=value_pb2.OrMatcher(value_matchers=[_list_has(s), _exact(s)]))


def _all(*ids: rbac_pb2.Principal) -> rbac_pb2.Principal:
    return rbac_pb2.Principal(and_ids=rbac_pb2.Principal.Set(ids=list(ids)))


def rbac_payload_form(iss: str, sub: str) -> rbac_pb2.Principal:
    """requestPrincipals ["<iss>/<sub>"] + when request.auth.claims[group] = admins."""
    return _all(
        _all(_md(JWT, ["payload", "iss"], _exact(iss)), _md(JWT, ["payload", "sub"], _exact(sub))),
        _md(JWT, ["payload", "group"], _claim("admins")),
    )


def rbac_istio_authn_form(iss: str, sub: str) -> rbac_pb2.Principal:
    """The same, plus request.auth.claims[nested1][nested2] = deep, on istio_authn."""
    return _all(
        _md(ISTIO_AUTHN, ["request.auth.principal"], _exact(f"{iss}/{sub}")),
        _md(ISTIO_AUTHN, ["request.auth.claims", "group"], _list_has("admins")),
        _md(ISTIO_AUTHN, ["request.auth.claims", "nested1", "nested2"], _list_has("deep")),
    )


def rbac_filter(principals: list[rbac_pb2.Principal]) -> hcm_pb2.HttpFilter:
    policy = rbac_pb2.Policy(permissions=[rbac_pb2.Permission(any=True)], principals=principals)
    rules = rbac_pb2.RBAC(action=rbac_pb2.RBAC.ALLOW, policies={"ns[foo]-policy[jwt]-rule[0]": policy})
    return hcm_pb2.HttpFilter(name="envoy.filters.http.rbac", typed_config=typed(rbac_filter_pb2.RBAC(rules=rules)))


# --- the bootstrap ----------------------------------------------------------------------

ECHO = {
    "x-principal": "%DYNAMIC_METADATA(istio_authn:request.auth.principal)%",
    "x-audience": "%DYNAMIC_METADATA(istio_authn:request.auth.audiences)%",
    "x-presenter": "%DYNAMIC_METADATA(istio_authn:request.auth.presenter)%",
    "x-claims": "%DYNAMIC_METADATA(istio_authn:request.auth.claims)%",
    "x-raw-claims": "%DYNAMIC_METADATA(istio_authn:request.auth.raw_claims)%",
    "x-payload-sub": "%DYNAMIC_METADATA(envoy.filters.http.jwt_authn:payload:sub)%",
    "x-group": "%REQ(x-jwt-group)%",
}


def listener(name: str, port: int, filters: list[hcm_pb2.HttpFilter]) -> listener_pb2.Listener:
    route = route_components_pb2.Route(
        match=route_components_pb2.RouteMatch(prefix="/"),
        direct_response=route_components_pb2.DirectResponseAction(status=200, body=base_pb2.DataSource(inline_string="ok")),
        response_headers_to_add=[base_pb2.HeaderValueOption(header=base_pb2.HeaderValue(key=k, value=v))
                                 for k, v in ECHO.items()],
    )
    hcm = hcm_pb2.HttpConnectionManager(
        stat_prefix=name,
        route_config=route_pb2.RouteConfiguration(name=name, virtual_hosts=[
            route_components_pb2.VirtualHost(name=name, domains=["*"], routes=[route])]),
        http_filters=[*filters, hcm_pb2.HttpFilter(name="envoy.filters.http.router", typed_config=typed(router_pb2.Router()))],
    )
    return listener_pb2.Listener(
        name=name,
        address=address_pb2.Address(socket_address=address_pb2.SocketAddress(address="127.0.0.1", port_value=port)),
        filter_chains=[listener_components_pb2.FilterChain(filters=[
            listener_components_pb2.Filter(name="envoy.filters.network.http_connection_manager", typed_config=typed(hcm))])],
    )


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    tmp: Path = tmp_path_factory.mktemp("jwt")
    rsa, ec, down = Issuer(RSA_ISS, "RS256"), Issuer(EC_ISS, "ES256"), Issuer(DOWN_ISS, "RS256")
    rules = (
        # The RSA issuer's key set was fetched by meshd (the view), the EC one is inline.
        JwtRule(RSA_ISS, audiences=("api",), jwks_uri="https://rsa.example/jwks",
                output_claim_to_headers=(ClaimToHeader("x-jwt-group", "group"),)),
        JwtRule(EC_ISS, jwks=ec.jwks()),
        JwtRule(DOWN_ISS, jwks_uri="https://down.example/jwks"),  # not in the view: never fetched
    )
    view = JwksView({KeySetRef("https://rsa.example/jwks"): rsa.jwks()})
    authn = http_filters(rules, view)
    assert [f.name for f in authn] == [JWT, ISTIO_AUTHN]
    ports = {"payload": free_port("127.0.0.1"), "istio_authn": free_port("127.0.0.1")}
    admin = free_port("127.0.0.1")
    boot = bootstrap_pb2.Bootstrap(
        node=base_pb2.Node(id="jwt-test", cluster="jwt-test"),
        admin=bootstrap_pb2.Admin(address=address_pb2.Address(
            socket_address=address_pb2.SocketAddress(address="127.0.0.1", port_value=admin))),
        static_resources=bootstrap_pb2.Bootstrap.StaticResources(listeners=[
            listener("payload", ports["payload"], [*authn, rbac_filter([
                rbac_payload_form(RSA_ISS, "alice"), rbac_payload_form(EC_ISS, "bob"), rbac_payload_form(DOWN_ISS, "carol")])]),
            listener("istio_authn", ports["istio_authn"], [*authn, rbac_filter([
                rbac_istio_authn_form(RSA_ISS, "alice"), rbac_istio_authn_form(EC_ISS, "bob")])]),
        ]),
    )
    path = tmp / "envoy.pb"
    path.write_bytes(boot.SerializeToString())
    proc = Process("envoy", [envoy_binary(), "-c", str(path), "--use-dynamic-base-id", "--concurrency", "1",
                             "-l", "warning"], tmp / "envoy.log")
    try:
        def up() -> bool:
            try:
                return _get(ports["payload"], "")[0] > 0
            except OSError:
                return not proc.alive()
        wait_for(up, 20, what=lambda: f"envoy listening (log: {proc.log()[-2000:]})")
        assert proc.alive(), proc.log()
        yield {"ports": ports, "rsa": rsa, "ec": ec, "down": down, "envoy": proc}
    finally:
        proc.stop()


def _get(port: int, token: str | None, header: str = "authorization") -> tuple[int, dict[str, str], str]:
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", "/api", headers={header: f"Bearer {token}"} if token else {})
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read().decode()
    finally:
        conn.close()


def test_no_token_passes_authentication_and_rbac_decides(world):
    for port in world["ports"].values():
        status, _, body = _get(port, None)
        assert (status, body) == (403, "RBAC: access denied")


def test_valid_rs256_token_reaches_rbac_with_principal_and_claims(world):
    rsa = world["rsa"]
    token = rsa.token("alice", aud="api", group="admins", azp="web", nested1={"nested2": "deep"}, scope="read write")
    status, headers, body = _get(world["ports"]["payload"], token)
    assert (status, body) == (200, "ok")
    assert headers["x-payload-sub"] == "alice"
    assert headers["x-group"] == "admins"  # outputClaimToHeaders
    status, headers, _ = _get(world["ports"]["istio_authn"], token)
    assert status == 200
    assert headers["x-principal"] == f"{RSA_ISS}/alice"
    assert headers["x-audience"] == "api"
    assert headers["x-presenter"] == "web"
    claims = json.loads(headers["x-claims"])
    assert claims["group"] == ["admins"] and claims["nested1"] == {"nested2": ["deep"]}
    assert claims["scope"] == ["read", "write"] and claims["iss"] == [RSA_ISS]
    assert "iat" not in claims  # numbers are not claims Istio's filter keeps
    raw = json.loads(headers["x-raw-claims"])
    assert raw["sub"] == "alice" and raw["nested1"] == {"nested2": "deep"} and isinstance(raw["exp"], int)


def test_valid_es256_token_and_claims_decide_rbac(world):
    ec = world["ec"]
    assert _get(world["ports"]["payload"], ec.token("bob", group=["staff", "admins"]))[0] == 200
    assert _get(world["ports"]["istio_authn"], ec.token("bob", group=["staff", "admins"], nested1={"nested2": ["x", "deep"]}))[0] == 200
    # Valid, but not what the policies ask for: authorization says no, not authentication.
    for port in world["ports"].values():
        status, _, body = _get(port, ec.token("bob", group="staff", nested1={"nested2": "deep"}))
        assert (status, body) == (403, "RBAC: access denied")
    assert _get(world["ports"]["istio_authn"], ec.token("bob", group="admins"))[0] == 403  # no nested claim


def test_invalid_tokens_get_401(world):
    rsa, ec = world["rsa"], world["ec"]
    good = rsa.token("alice", aud="api", group="admins")
    cases = {
        "forged": forged(good, sub="mallory"),
        "expired": rsa.token("alice", aud="api", group="admins", expires_in=-600),
        "unknown issuer": Issuer("https://nobody.example").token("alice"),
        "signed by another key": Issuer(EC_ISS, "ES256").token("bob", group="admins"),
        "not a JWT": "abc.def",
    }
    for what, token in cases.items():
        for port in world["ports"].values():
            status, _, body = _get(port, token)
            assert status == 401, f"{what}: {status} {body}"
    assert "Jwt is expired" in _get(world["ports"]["payload"], cases["expired"])[2]
    # A token for another audience: Envoy's jwt_authn answers 403 (as behind istiod), and
    # says why: it is authentication refusing, not RBAC.
    wrong_audience = rsa.token("alice", aud="other", group="admins")
    for port in world["ports"].values():
        assert _get(port, wrong_audience)[::2] == (403, "Audiences in Jwt are not allowed")
    assert _get(world["ports"]["payload"], ec.token("bob", group="admins"))[0] == 200  # the good ones still pass


def test_issuer_whose_key_set_could_not_be_fetched_refuses_every_token(world):
    token = world["down"].token("carol", group="admins")  # signed right, but meshd has no key set
    status, _, body = _get(world["ports"]["payload"], token)
    assert status == 401, body
    assert _get(world["ports"]["payload"], None)[0] == 403  # no token: unchanged


def test_envoy_accepted_the_filters(world):
    log = world["envoy"].log()
    assert "error" not in log.lower(), log[-3000:]
