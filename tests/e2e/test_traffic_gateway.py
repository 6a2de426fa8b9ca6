"""VirtualService and DestinationRule behaviour through a real Envoy gateway.

One meshd and one Envoy gateway (plaintext xDS, loopback backends) serve every test of
the module; each test exercises one rule of the `shop` VirtualService and checks what
the client and the backends saw:
header-match routing, an 80/20 split within +-5 % over 2000 requests, fault abort and
delay, retries on a backend failing the first attempt, a timeout giving 504, redirect
and rewrite, a mirror receiving a copy, a CORS preflight, direct responses and header
changes, consistent hashing keeping one header value on one backend, and outlier
detection ejecting a failing endpoint. At the end Envoy has rejected nothing. The whole
module runs twice: the gateway bootstrapped for state-of-the-world xDS, then for delta.
"""
from __future__ import annotations

import json
import time
import uuid
from collections import Counter

import pytest

from tests.support.harness import free_port, wait_for
from tests.support.loopback_gateway import loopback_gateway
from tests.support.manifests import destination_rule, documents, gateway
from tests.support.traffic import service_yaml

pytestmark = pytest.mark.e2e

NS = "shop"
HOST = "shop.example.com"

SHOP = f"""
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: shop, namespace: {NS}}}
spec:
  hosts: ["{HOST}"]
  gateways: [shop-gateway]
  http:
  - name: jason
    match: [{{headers: {{end-user: {{exact: jason}}}}, uri: {{prefix: /user}}}}]
    route: [{{destination: {{host: web, subset: v2}}}}]
  - name: split
    match: [{{uri: {{prefix: /split}}}}]
    route:
    - {{destination: {{host: web, subset: v1}}, weight: 80}}
    - {{destination: {{host: web, subset: v2}}, weight: 20}}
  - match: [{{uri: {{prefix: /abort}}}}]
    fault: {{abort: {{httpStatus: 418, percentage: {{value: 100}}}}}}
    route: [{{destination: {{host: web, subset: v1}}}}]
  - match: [{{uri: {{prefix: /delay}}}}]
    fault: {{delay: {{fixedDelay: 1s, percentage: {{value: 100}}}}}}
    route: [{{destination: {{host: web, subset: v1}}}}]
  - match: [{{uri: {{prefix: /fail-first}}}}]
    retries: {{attempts: 3, perTryTimeout: 2s, retryOn: 5xx}}
    route: [{{destination: {{host: web, subset: v1}}}}]
  - match: [{{uri: {{prefix: /no-retry/fail-first}}}}]
    retries: {{attempts: 0}}
    route: [{{destination: {{host: web, subset: v1}}}}]
  - match: [{{uri: {{prefix: /slow}}}}]
    timeout: 0.5s
    route: [{{destination: {{host: web, subset: v1}}}}]
  - match: [{{uri: {{exact: /old}}}}]
    redirect: {{uri: /new, authority: new.example.com}}
  - match: [{{uri: {{exact: /moved}}}}]
    redirect: {{uri: /elsewhere, redirectCode: 308, scheme: https}}
  - match: [{{uri: {{prefix: /api/v1/}}}}]
    rewrite: {{uri: /v2/, authority: rewritten.example.com}}
    route: [{{destination: {{host: web, subset: v1}}}}]
  - match: [{{uri: {{regex: "/items/[0-9]+"}}}}]
    rewrite: {{uriRegexRewrite: {{match: "/items/([0-9]+)", rewrite: "/catalog/item?id=\\\\1"}}}}
    route: [{{destination: {{host: web, subset: v1}}}}]
  - match: [{{uri: {{prefix: /mirror}}}}]
    route: [{{destination: {{host: web, subset: v1}}}}]
    mirror: {{host: mirror}}
    mirrorPercentage: {{value: 100}}
  - match: [{{uri: {{prefix: /cors}}}}]
    corsPolicy:
      allowOrigins: [{{exact: "https://ok.example.com"}}]
      allowMethods: [GET, POST]
      allowHeaders: [x-custom]
      maxAge: 24h
    route: [{{destination: {{host: web, subset: v1}}}}]
  - match: [{{uri: {{exact: /teapot}}}}]
    directResponse: {{status: 418, body: {{string: "short and stout"}}}}
  - match: [{{uri: {{prefix: /headers}}}}]
    headers:
      request: {{set: {{x-request-set: "yes"}}, remove: [x-remove-me]}}
      response: {{add: {{x-response-added: "yes"}}}}
    route:
    - destination: {{host: web, subset: v1}}
      headers: {{request: {{add: {{x-per-destination: v1}}}}}}
  - match: [{{uri: {{prefix: /sticky}}}}]
    route: [{{destination: {{host: sticky}}}}]
  - match: [{{uri: {{prefix: /od}}}}]
    retries: {{attempts: 0}}
    route: [{{destination: {{host: od}}}}]
  - route: [{{destination: {{host: web, subset: v1}}}}]
"""
ROUTING = documents(
    gateway("shop-gateway", NS, [f"{NS}/{HOST}"]),
    SHOP,
    destination_rule("web", NS, "web", subsets={"v1": {"version": "v1"}, "v2": {"version": "v2"}}),
    destination_rule("sticky", NS, "sticky",
                     traffic_policy={"loadBalancer": {"consistentHash": {"httpHeaderName": "x-user"}}}),
    destination_rule("od", NS, "od", traffic_policy={
        "loadBalancer": {"simple": "ROUND_ROBIN"},
        "outlierDetection": {"consecutive5xxErrors": 1, "interval": "1s", "baseEjectionTime": "60s",
                             "maxEjectionPercent": 100}}),
)


@pytest.fixture(scope="module", params=["sotw", "delta"])
def shop(tmp_path_factory, request):
    """The gateway over state-of-the-world xDS, then (every test again) over delta xDS."""
    port = free_port("127.0.0.31")
    names = {"127.0.0.31": "web-v1", "127.0.0.32": "web-v2", "127.0.0.33": "mirror", "127.0.0.34": "sticky-a",
             "127.0.0.35": "sticky-b", "127.0.0.36": "sticky-c", "127.0.0.37": "od-good", "127.0.0.38": "od-broken"}
    services = [
        service_yaml("web", NS, [("http", 80, port)], [("127.0.0.31", {"version": "v1"}), ("127.0.0.32", {"version": "v2"})]),
        service_yaml("mirror", NS, [("http", 80, port)], [("127.0.0.33", {})]),
        service_yaml("sticky", NS, [("http", 80, port)], [("127.0.0.34", {}), ("127.0.0.35", {}), ("127.0.0.36", {})]),
        service_yaml("od", NS, [("http", 80, port)], [("127.0.0.37", {}), ("127.0.0.38", {})]),
    ]
    with loopback_gateway(tmp_path_factory.mktemp(f"traffic-{request.param}"), names, port, services, ROUTING,
                          host=HOST, bootstrap_args=["--xds-transport", request.param]) as bed:
        yield bed


def test_header_match_routes_jason_to_v2(shop):
    client, *_ = shop
    assert client.json("/user", {"end-user": "jason"})["backend"] == "web-v2"
    assert client.json("/user", {"end-user": "bob"})["backend"] == "web-v1"
    assert client.json("/user")["backend"] == "web-v1"


def test_weights_80_20_within_five_percent_over_2000_requests(shop):
    client, *_ = shop
    counts = Counter(client.get("/split")[1].get("x-backend") for _ in range(2000))
    assert counts["web-v1"] + counts["web-v2"] == 2000, counts
    assert 0.75 <= counts["web-v1"] / 2000 <= 0.85, counts
    assert 0.15 <= counts["web-v2"] / 2000 <= 0.25, counts


def test_fault_abort_gives_the_configured_status(shop):
    client, backends, *_ = shop
    before = backends["web-v1"].count("/abort")
    statuses = Counter(client.get("/abort")[0] for _ in range(20))
    assert statuses == Counter({418: 20})
    assert backends["web-v1"].count("/abort") == before  # never reached the backend


def test_fault_delay_is_observed(shop):
    client, *_ = shop
    t0 = time.monotonic()
    status, hdrs, _ = client.get("/delay")
    elapsed = time.monotonic() - t0
    assert status == 200 and hdrs["x-backend"] == "web-v1"
    assert elapsed >= 0.95, elapsed
    t0 = time.monotonic()
    client.get("/")
    assert time.monotonic() - t0 < 0.9


def test_retries_on_a_backend_failing_the_first_attempt(shop):
    client, backends, *_ = shop
    test_id = str(uuid.uuid4())
    status, hdrs, body = client.get("/fail-first", {"x-test-id": test_id})
    assert status == 200, body
    seen = json.loads(body)
    assert seen["attempt"] == 2  # the first attempt got 503, Envoy retried
    assert seen["headers"]["x-envoy-attempt-count"] == "2"
    # the same backend behaviour without retries: the client sees the 503
    status, _, _ = client.get("/no-retry/fail-first", {"x-test-id": str(uuid.uuid4())})
    assert status == 503


def test_timeout_gives_504(shop):
    client, *_ = shop
    t0 = time.monotonic()
    status, _, body = client.get("/slow")
    assert status == 504, body
    assert time.monotonic() - t0 < 1.8


def test_redirect_and_rewrite(shop):
    client, backends, *_ = shop
    status, hdrs, _ = client.get("/old")
    assert status == 301 and hdrs["location"] == "http://new.example.com/new", hdrs
    status, hdrs, _ = client.get("/moved")
    assert status == 308 and hdrs["location"] == f"https://{HOST}/elsewhere", hdrs
    seen = client.json("/api/v1/items?page=2")
    assert seen["path"] == "/v2/items?page=2"
    assert seen["headers"]["host"] == "rewritten.example.com"
    seen = client.json("/items/42")
    assert seen["path"] == "/catalog/item?id=42"


def test_mirror_receives_a_copy(shop):
    client, backends, *_ = shop
    before = backends["mirror"].count("/mirror")
    status, hdrs, _ = client.get("/mirror/please")
    assert status == 200 and hdrs["x-backend"] == "web-v1"  # the client sees the primary only
    wait_for(lambda: backends["mirror"].count("/mirror") == before + 1, 5, what="mirrored copy")
    copy = [r for r in backends["mirror"].requests if r["path"] == "/mirror/please"][-1]
    assert copy["headers"]["host"] == f"{HOST}-shadow"


def test_cors_preflight_is_answered(shop):
    client, backends, *_ = shop
    before = backends["web-v1"].count("/cors")
    status, hdrs, _ = client.request("OPTIONS", "/cors", {
        "Origin": "https://ok.example.com", "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "x-custom"})
    assert status == 200, hdrs
    assert hdrs["access-control-allow-origin"] == "https://ok.example.com"
    assert "POST" in hdrs["access-control-allow-methods"]
    assert hdrs["access-control-allow-headers"] == "x-custom"
    assert hdrs["access-control-max-age"] == "86400"
    assert backends["web-v1"].count("/cors") == before  # Envoy answered it
    # an origin the policy does not allow gets no CORS grant
    status, hdrs, _ = client.request("OPTIONS", "/cors", {
        "Origin": "https://evil.example.com", "Access-Control-Request-Method": "POST"})
    assert "access-control-allow-origin" not in hdrs
    # a simple request from an allowed origin gets the header on the response
    status, hdrs, _ = client.get("/cors", {"Origin": "https://ok.example.com"})
    assert status == 200 and hdrs["access-control-allow-origin"] == "https://ok.example.com"


def test_direct_response_and_header_changes(shop):
    client, *_ = shop
    status, _, body = client.get("/teapot")
    assert (status, body) == (418, b"short and stout")
    status, hdrs, body = client.get("/headers", {"x-remove-me": "1", "x-request-set": "no"})
    seen = json.loads(body)
    assert seen["headers"]["x-request-set"] == "yes"
    assert seen["headers"]["x-per-destination"] == "v1"
    assert "x-remove-me" not in seen["headers"]
    assert hdrs["x-response-added"] == "yes"


def test_consistent_hash_keeps_one_header_value_on_one_backend(shop):
    client, *_ = shop
    chosen = {}
    for user in [f"user-{i}" for i in range(12)]:
        seen = {client.get("/sticky", {"x-user": user})[1]["x-backend"] for _ in range(8)}
        assert len(seen) == 1, (user, seen)
        chosen[user] = seen.pop()
    assert len(set(chosen.values())) >= 2, chosen  # the values spread over the endpoints


def test_outlier_detection_ejects_a_failing_endpoint(shop):
    client, backends, gw, _ = shop
    results = [client.get("/od")[1].get("x-backend") for _ in range(30)]
    assert "od-broken" in results[:4], results  # round robin reached it early
    first_broken = results.index("od-broken")
    # after its first 500 the endpoint is ejected: everything else goes to the healthy one
    assert set(results[first_broken + 1:]) == {"od-good"}, results
    stats = gw.stats("outlier_detection.ejections_enforced_total")
    assert any("od.shop.svc.cluster.local" in k and v >= 1 for k, v in stats.items()), stats
