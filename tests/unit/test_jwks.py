"""The JWKS source against a local HTTP server: key sets fetched, cached, refreshed, found
through OpenID discovery, failures reported, and while a key set cannot be had the
generators inline one that verifies no token."""
from __future__ import annotations

import asyncio
import contextlib
import json
import time

import pytest
from prometheus_client import CollectorRegistry
from structlog.testing import capture_logs

from controlplane.generators.authn import UNAVAILABLE_JWKS, local_jwks
from controlplane.model.request_authentication import JwtRule, KeySetNeed, KeySetRef
from controlplane.sources.jwks import JwksSource
from tests.support.jwt import Issuer, KeyServer


@pytest.fixture
def server():
    s = KeyServer()
    yield s
    s.close()


def need(*used_by: str, timeout: float = 1.0) -> KeySetNeed:
    return KeySetNeed(timeout, used_by or ("foo/jwt spec.jwtRules[0]",))


async def until(predicate, timeout: float = 5.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


def run(coro):
    return asyncio.run(coro)


@contextlib.asynccontextmanager
async def running(src: JwksSource):
    """`src` refreshing in the background for the block's duration."""
    stop = asyncio.Event()
    task = asyncio.create_task(src.run(stop))
    try:
        yield src
    finally:
        stop.set()
        await task


def test_fetched_cached_and_handed_to_the_model(server):
    issuer = Issuer("https://issuer.example")
    server.routes["/jwks"] = (200, issuer.jwks())
    ref = KeySetRef(server.url + "/jwks")

    async def main():
        views = []
        src = JwksSource(views.append, refresh_interval=3600)
        async with running(src):
            src.want({ref: need()})
            await until(lambda: views, what="a view")
            assert views[-1].get(ref) == issuer.jwks()
            src.want({ref: need()})  # the same need again: cached, not fetched again
            await asyncio.sleep(0.1)
            assert server.hits["/jwks"] == 1 and len(views) == 1
            rule = JwtRule("https://issuer.example", jwks_uri=ref.jwks_uri)
            assert local_jwks(rule, src.view()) == issuer.jwks()
            assert src.status()["keySets"][0]["state"] == "ok"

    run(main())


def test_refreshed_and_a_new_key_set_is_pushed(server):
    old, new = Issuer("https://i.example", kid="old"), Issuer("https://i.example", kid="new")
    server.routes["/jwks"] = (200, old.jwks())
    ref = KeySetRef(server.url + "/jwks")

    async def main():
        views = []
        src = JwksSource(views.append, refresh_interval=0.1)
        async with running(src):
            src.want({ref: need()})
            await until(lambda: views, what="the first key set")
            await until(lambda: server.hits["/jwks"] >= 3, what="refreshes")
            assert len(views) == 1  # the same key set again is no change: no push
            server.routes["/jwks"] = (200, new.jwks())
            await until(lambda: len(views) == 2, what="the rotated key set")
            assert json.loads(views[-1].get(ref))["keys"][0]["kid"] == "new"

    run(main())


def test_failure_is_reported_and_tokens_refused_until_fetched(server):
    server.routes["/jwks"] = (500, "backend down")
    ref = KeySetRef(server.url + "/jwks")
    rule = JwtRule("https://issuer.example", jwks_uri=ref.jwks_uri)
    registry = CollectorRegistry()

    async def main():
        views = []
        src = JwksSource(views.append, retry_interval=0.05, registry=registry)
        with capture_logs() as logs:
            await src.prime({ref: need("shop/jwt spec.jwtRules[0]")})
        failed = [e for e in logs if e["event"] == "jwks fetch failed"]
        assert failed and "HTTP 500" in failed[0]["error"] and failed[0]["used_by"] == ["shop/jwt spec.jwtRules[0]"]
        assert "refused" in failed[0]["effect"]
        row = src.status()["keySets"][0]
        assert row["state"] == "unavailable" and "HTTP 500: backend down" in row["lastError"]
        assert registry.get_sample_value("meshd_jwks_fetch_failures_total", {"uri": ref.jwks_uri}) >= 1
        assert registry.get_sample_value("meshd_jwks_key_set_available", {"uri": ref.jwks_uri}) == 0
        # Nothing fetched: the key set nobody can sign for is inlined.
        assert src.view().get(ref) is None and local_jwks(rule, src.view()) == UNAVAILABLE_JWKS
        # Retried (with backoff) until the server answers, then pushed.
        async with running(src):
            issuer = Issuer("https://issuer.example")
            server.routes["/jwks"] = (200, issuer.jwks())
            await until(lambda: views, what="the key set after recovery")
            assert local_jwks(rule, src.view()) == issuer.jwks()
            assert registry.get_sample_value("meshd_jwks_key_set_available", {"uri": ref.jwks_uri}) == 1

    run(main())


def test_a_failed_refresh_keeps_the_last_good_key_set_until_too_old(server):
    issuer = Issuer("https://issuer.example")
    server.routes["/jwks"] = (200, issuer.jwks())
    ref = KeySetRef(server.url + "/jwks")

    async def main():
        views = []
        src = JwksSource(views.append, refresh_interval=0.05, retry_interval=0.05, max_stale=0.5)
        async with running(src):
            src.want({ref: need()})
            await until(lambda: views, what="the key set")
            server.routes["/jwks"] = (503, "")
            await until(lambda: src.status()["keySets"][0]["state"] == "stale", what="a failed refresh")
            assert src.view().get(ref) == issuer.jwks() and len(views) == 1  # still trusted, reported
            await until(lambda: len(views) == 2, timeout=5, what="the key set dropped after max_stale")
            assert views[-1].get(ref) is None

    run(main())


def test_a_server_that_never_answers_times_out_without_blocking_the_loop(server):
    ref = KeySetRef(server.url + "/hang")

    async def main():
        src = JwksSource(retry_interval=60)
        ticks = 0

        async def ticker():
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0.01)

        t = asyncio.create_task(ticker())
        started = time.monotonic()
        await src.prime({ref: need(timeout=0.5)})
        elapsed = time.monotonic() - started
        t.cancel()
        row = src.status()["keySets"][0]
        assert row["state"] == "unavailable" and "no answer within 0.5s" in row["lastError"]
        assert elapsed < 5.0  # the deadline ended it (the server would hold it for 10 s)
        assert ticks >= 5  # the loop kept running while the fetch waited (blocked: 1 tick)
        src.close()

    run(main())


def test_openid_discovery_when_the_rule_names_no_key_set(server):
    issuer = Issuer(server.url + "/realm")
    server.routes["/realm/.well-known/openid-configuration"] = (200, json.dumps({"jwks_uri": server.url + "/certs"}))
    server.routes["/certs"] = (200, issuer.jwks())
    rule = JwtRule(issuer.iss)  # neither jwks nor jwksUri
    assert rule.key_set == KeySetRef("", issuer.iss)

    async def main():
        src = JwksSource()
        await src.prime({rule.key_set: need()})
        assert local_jwks(rule, src.view()) == issuer.jwks()
        assert src.status()["keySets"][0]["jwksUri"] == server.url + "/certs"
        src.close()

    run(main())


@pytest.mark.parametrize("body, reason", [
    ("<html>login</html>", "not JSON"),
    ('{"keys": []}', "non-empty"),
    ('{"keys": [{"kty": "RSA", "e": "AQAB"}]}', "lacks n"),
])
def test_an_answer_that_is_not_a_usable_jwks_is_a_failure(server, body, reason):
    server.routes["/jwks"] = (200, body)
    ref = KeySetRef(server.url + "/jwks")

    async def main():
        src = JwksSource()
        await src.prime({ref: need()})
        row = src.status()["keySets"][0]
        assert row["state"] == "unavailable" and "not a usable JWKS" in row["lastError"] and reason in row["lastError"]
        assert src.view().get(ref) is None  # never sent to Envoy (it would reject the listener)
        src.close()

    run(main())


def test_key_sets_no_longer_needed_are_dropped(server):
    a, b = Issuer("https://a.example"), Issuer("https://b.example")
    server.routes["/a"], server.routes["/b"] = (200, a.jwks()), (200, b.jwks())
    ra, rb = KeySetRef(server.url + "/a"), KeySetRef(server.url + "/b")

    async def main():
        views = []
        src = JwksSource(views.append)
        await src.prime({ra: need(), rb: need()})
        assert set(src.view().key_sets) == {ra, rb}
        src.want({rb: need()})
        assert set(views[-1].key_sets) == {rb} and [r["keySet"] for r in src.status()["keySets"]] == [rb.jwks_uri]
        src.close()

    run(main())


def test_only_http_and_https_are_fetched():
    ref = KeySetRef("file:///etc/passwd")

    async def main():
        src = JwksSource()
        await src.prime({ref: need()})
        assert "only http and https" in src.status()["keySets"][0]["lastError"]
        src.close()

    run(main())
