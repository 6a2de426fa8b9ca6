"""ServiceAccount tokens checked with the TokenReview API (the stand-in API server answers
as Kubernetes does), and the routing between meshd's own tokens and the cluster's."""
from __future__ import annotations

import asyncio
import base64
import json

import pytest
from kubernetes import client

from ca import Identity, TokenAuthority, generate_private_key
from controlplane.kube.api import KubeApi
from controlplane.security.authn import AuthenticationError, JwtAuthenticator, authenticate_stream
from controlplane.kube.tokenreview import MeshdTokens, TokenReviewAuthenticator, unverified_issuer
from tests.support.kubeapi import FakeApiServer

TD = "cluster.local"
WEBAPP = "system:serviceaccount:istioinaction:webapp"


def fake_jwt(claims: dict) -> str:
    """A JWT-shaped token (unsigned: only the API server knows whether it is valid)."""
    def seg(obj):
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()
    return f"{seg({'alg': 'RS256', 'kid': 'k8s'})}.{seg(claims)}.{base64.urlsafe_b64encode(b'sig' * 20).decode().rstrip('=')}"


K8S_TOKEN = fake_jwt({"iss": "https://kubernetes.default.svc.cluster.local", "sub": WEBAPP, "aud": ["istio-ca"]})


def md(token: str | None):
    return [("authorization", f"Bearer {token}")] if token is not None else []


KUBEAPI_BOOKMARKS = None  # the stand-in API server's default interval (conftest.kubeapi)


@pytest.fixture
def kube(kubeapi):
    api_client = client.ApiClient(kubeapi.configuration())
    k = KubeApi(api_client)
    yield k
    k.close()
    api_client.close()


def run(coro):
    return asyncio.run(coro)


def test_a_reviewed_service_account_token_is_that_identity(kubeapi, kube):
    kubeapi.add_token(K8S_TOKEN, WEBAPP)
    authn = TokenReviewAuthenticator(kube, TD)
    assert run(authn.authenticate(md(K8S_TOKEN), "peer")) == Identity(TD, "istioinaction", "webapp")
    # what meshd asked: a TokenReview for audience istio-ca, and nothing else
    reviews = kubeapi.writes("tokenreviews", "POST")
    assert len(reviews) == 1 and reviews[0].path == "/apis/authentication.k8s.io/v1/tokenreviews"
    assert kubeapi.verbs() == {("authentication.k8s.io", "tokenreviews", "create")}


@pytest.mark.parametrize("setup, why", [
    (lambda api: None, "rejected by the API server"),  # unknown / expired / revoked token
    (lambda api: api.add_token(K8S_TOKEN, WEBAPP, audiences=["https://kubernetes.default.svc"]), "audiences"),
    (lambda api: api.add_token(K8S_TOKEN, "alice"), "not a service account"),  # a user, not a workload
    (lambda api: api.add_token(K8S_TOKEN, "system:serviceaccount:istioinaction:webapp",
                               groups=["system:authenticated"]), "not a service account"),
    (lambda api: api.add_token(K8S_TOKEN, "system:serviceaccount:istio inaction:web/app"), "invalid identity"),
])
def test_rejected_reviews(kubeapi, kube, setup, why):
    setup(kubeapi)
    with pytest.raises(AuthenticationError, match=why) as err:
        run(TokenReviewAuthenticator(kube, TD).authenticate(md(K8S_TOKEN), "peer"))
    assert K8S_TOKEN not in str(err.value)  # a credential never reaches a log or a status


def test_an_api_server_that_does_not_confirm_the_audience_is_not_trusted(kube):
    authn = TokenReviewAuthenticator(kube, TD)
    ok = {"authenticated": True, "user": {"username": WEBAPP, "groups": ["system:serviceaccounts"]}}
    assert authn.identity_from_review({"status": {**ok, "audiences": ["istio-ca"]}}).service_account == "webapp"
    for audiences in (None, [], ["api"]):
        with pytest.raises(AuthenticationError, match="did not confirm audience 'istio-ca'"):
            authn.identity_from_review({"status": {**ok, "audiences": audiences}})


def test_api_server_trouble_refuses_the_stream_with_the_reason(kubeapi, kube):
    kubeapi.add_token(K8S_TOKEN, WEBAPP)
    authn = TokenReviewAuthenticator(kube, TD)
    kubeapi.fail_next(1, 403)  # e.g. meshd's ClusterRole lacks tokenreviews/create
    with pytest.raises(AuthenticationError, match="TokenReview failed: HTTP 403"):
        run(authn.authenticate(md(K8S_TOKEN), "peer"))
    with kubeapi.outage():
        with pytest.raises(AuthenticationError, match="TokenReview failed: HTTP 503"):
            run(authn.authenticate(md(K8S_TOKEN), "peer"))
    assert run(authn.authenticate(md(K8S_TOKEN), "peer")).service_account == "webapp"  # back


def test_accepted_reviews_are_cached_until_ttl_or_token_expiry(kubeapi, kube):
    now = [1_000_000.0]
    token = fake_jwt({"iss": "k8s", "sub": WEBAPP, "exp": 1_000_030})
    kubeapi.add_token(token, WEBAPP)
    authn = TokenReviewAuthenticator(kube, TD, cache_ttl=60, clock=lambda: now[0])
    for _ in range(3):
        run(authn.authenticate(md(token), "peer"))
    assert kubeapi.token_reviews() == 1  # a reconnect storm costs one review
    now[0] += 31  # the token's own exp comes before the cache TTL
    run(authn.authenticate(md(token), "peer"))
    assert kubeapi.token_reviews() == 2
    # rejections are not cached: a revoked token is asked about every time...
    kubeapi.revoke_token(token)
    now[0] += 100
    for _ in range(2):
        with pytest.raises(AuthenticationError):
            run(authn.authenticate(md(token), "peer"))
    assert kubeapi.token_reviews() == 4


def test_each_token_goes_to_one_authenticator(kubeapi, kube, tmp_path):
    tokens = TokenAuthority(generate_private_key("ec-p256"))
    chain = [MeshdTokens(JwtAuthenticator(tokens, TD)), TokenReviewAuthenticator(kube, TD)]
    kubeapi.add_token(K8S_TOKEN, WEBAPP)
    # meshd's own token: verified by meshd, never sent to the API server
    mine = tokens.issue("istioinaction", "catalog")
    assert unverified_issuer(mine) == "meshd"
    assert run(authenticate_stream(chain, md(mine), "peer")) == Identity(TD, "istioinaction", "catalog")
    assert kubeapi.token_reviews() == 0
    # a cluster token: reviewed by the API server, never judged by meshd's key
    assert run(authenticate_stream(chain, md(K8S_TOKEN), "peer")) == Identity(TD, "istioinaction", "webapp")
    assert kubeapi.token_reviews() == 1
    # a forged "meshd" token (right issuer, wrong key) is refused by the JWT check, not reviewed
    forged = TokenAuthority(generate_private_key("ec-p256")).issue("istio-system", "istiod")
    with pytest.raises(AuthenticationError, match="jwt: .*(signature|unknown key)"):
        run(authenticate_stream(chain, md(forged), "peer"))
    assert kubeapi.token_reviews() == 1
    # no token at all: nobody vouches
    with pytest.raises(AuthenticationError, match="no credential"):
        run(authenticate_stream(chain, md(None), "peer"))
