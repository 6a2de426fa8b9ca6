"""ServiceAccount tokens checked with the TokenReview API of the real API server (tokens it
signs itself, the TokenRequest API, as `kubectl create token` and projected volumes get
them), and the routing between meshd's own tokens and the cluster's. Answers a real
server never gives (a user, an account without its groups, an invalid name, another
audience) and failures at a chosen moment come from the stand-in, which says so."""
from __future__ import annotations

import asyncio
import base64
import json
import time

import pytest
from kubernetes import client

from ca import Identity, TokenAuthority, generate_private_key
from controlplane.kube.api import KubeApi
from controlplane.kube.tokenreview import MeshdTokens, TokenReviewAuthenticator, unverified_issuer
from controlplane.security.authn import AuthenticationError, JwtAuthenticator, authenticate_stream
from tests.support.harness import wait_for

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


KUBEAPI_BOOKMARKS = None  # the stand-in API server's default interval (the kubeapi fixture)


@pytest.fixture
def stand_in_api(kubeapi):
    """meshd's JSON layer on the stand-in."""
    k = KubeApi(kubeapi.api_client())
    yield k
    k.close()
    k.api_client.close()


@pytest.fixture
def real_api(kube):
    """meshd's JSON layer on the real server, through the test's recording client."""
    k = KubeApi(kube.api_client())
    yield k
    k.close()


def run(coro):
    return asyncio.run(coro)


def test_a_reviewed_service_account_token_is_that_identity(kube, real_api):
    ns = kube.ns("istioinaction")
    token = kube.token(ns, "webapp")
    authn = TokenReviewAuthenticator(real_api, TD)
    assert run(authn.authenticate(md(token), "peer")) == Identity(TD, ns, "webapp")
    # what meshd asked: a TokenReview for audience istio-ca, and nothing else
    reviews = kube.writes("tokenreviews", "POST")
    assert len(reviews) == 1 and reviews[0].path == "/apis/authentication.k8s.io/v1/tokenreviews"
    assert kube.verbs() == {("authentication.k8s.io", "tokenreviews", "create")}


def test_an_unknown_token_is_rejected_by_the_api_server(kube, real_api):
    kube.ns("istioinaction")
    with pytest.raises(AuthenticationError, match="rejected by the API server") as err:
        run(TokenReviewAuthenticator(real_api, TD).authenticate(md(K8S_TOKEN), "peer"))
    assert K8S_TOKEN not in str(err.value)  # a credential never reaches a log or a status


def test_a_token_for_another_audience_is_rejected(kube, real_api):
    ns = kube.ns("istioinaction")
    token = kube.token(ns, "webapp", audiences=("https://kubernetes.default.svc.cluster.local",))
    with pytest.raises(AuthenticationError, match="rejected by the API server") as err:
        run(TokenReviewAuthenticator(real_api, TD).authenticate(md(token), "peer"))
    assert token not in str(err.value)


@pytest.mark.parametrize("setup, why", [
    (lambda api: api.add_token(K8S_TOKEN, WEBAPP, audiences=["https://kubernetes.default.svc"]), "audiences"),
    (lambda api: api.add_token(K8S_TOKEN, "alice"), "not a service account"),  # a user, not a workload
    (lambda api: api.add_token(K8S_TOKEN, "system:serviceaccount:istioinaction:webapp",
                               groups=["system:authenticated"]), "not a service account"),
    (lambda api: api.add_token(K8S_TOKEN, "system:serviceaccount:istio inaction:web/app"), "invalid identity"),
])
def test_rejected_reviews(kubeapi, stand_in_api, setup, why):
    """The stand-in: reviews a real server does not give for its own tokens (authenticated
    but not for istio-ca, a user's token, an account without its groups, a name that is
    no identity), so meshd must refuse them itself."""
    setup(kubeapi)
    with pytest.raises(AuthenticationError, match=why) as err:
        run(TokenReviewAuthenticator(stand_in_api, TD).authenticate(md(K8S_TOKEN), "peer"))
    assert K8S_TOKEN not in str(err.value)  # a credential never reaches a log or a status


def test_an_api_server_that_does_not_confirm_the_audience_is_not_trusted():
    api_client = client.ApiClient()  # never asked: the reviews are given
    authn = TokenReviewAuthenticator(KubeApi(api_client), TD)
    ok = {"authenticated": True, "user": {"username": WEBAPP, "groups": ["system:serviceaccounts"]}}
    assert authn.identity_from_review({"status": {**ok, "audiences": ["istio-ca"]}}).service_account == "webapp"
    for audiences in (None, [], ["api"]):
        with pytest.raises(AuthenticationError, match="did not confirm audience 'istio-ca'"):
            authn.identity_from_review({"status": {**ok, "audiences": audiences}})
    api_client.close()


def test_api_server_trouble_refuses_the_stream_with_the_reason(kubeapi, stand_in_api):
    """The stand-in: a 403 and an outage at chosen moments."""
    kubeapi.add_token(K8S_TOKEN, WEBAPP)
    authn = TokenReviewAuthenticator(stand_in_api, TD)
    kubeapi.fail_next(1, 403)  # e.g. meshd's ClusterRole lacks tokenreviews/create
    with pytest.raises(AuthenticationError, match="TokenReview failed: HTTP 403"):
        run(authn.authenticate(md(K8S_TOKEN), "peer"))
    with kubeapi.outage():
        with pytest.raises(AuthenticationError, match="TokenReview failed: HTTP 503"):
            run(authn.authenticate(md(K8S_TOKEN), "peer"))
    assert run(authn.authenticate(md(K8S_TOKEN), "peer")).service_account == "webapp"  # back


def test_accepted_reviews_are_cached_until_ttl_or_token_expiry(kube, real_api):
    ns = kube.ns("istioinaction")
    token = kube.token(ns, "webapp", seconds=600)  # the shortest a server grants
    now = [time.time()]
    authn = TokenReviewAuthenticator(real_api, TD, cache_ttl=3600, clock=lambda: now[0])
    for _ in range(3):
        run(authn.authenticate(md(token), "peer"))
    assert kube.token_reviews() == 1  # a reconnect storm costs one review
    now[0] += 601  # the token's own exp comes before the cache TTL
    run(authn.authenticate(md(token), "peer"))
    assert kube.token_reviews() == 2
    # rejections are not cached: a revoked token (its ServiceAccount deleted) is asked about every time...
    assert kube.delete("v1", "ServiceAccount", "webapp", ns)
    # the server caches its own verdicts for seconds: wait until it refuses the token
    wait_for(lambda: not kube.review(token).get("authenticated"), 30, what="the server refusing the revoked token")
    now[0] += 100
    for _ in range(2):
        with pytest.raises(AuthenticationError):
            run(authn.authenticate(md(token), "peer"))
    assert kube.token_reviews() == 4


def test_each_token_goes_to_one_authenticator(kube, real_api):
    tokens = TokenAuthority(generate_private_key("ec-p256"))
    chain = [MeshdTokens(JwtAuthenticator(tokens, TD)), TokenReviewAuthenticator(real_api, TD)]
    ns = kube.ns("istioinaction")
    cluster_token = kube.token(ns, "webapp")
    # meshd's own token: verified by meshd, never sent to the API server
    mine = tokens.issue("istioinaction", "catalog")
    assert unverified_issuer(mine) == "meshd"
    assert run(authenticate_stream(chain, md(mine), "peer")) == Identity(TD, "istioinaction", "catalog")
    assert kube.token_reviews() == 0
    # a cluster token: reviewed by the API server, never judged by meshd's key
    assert run(authenticate_stream(chain, md(cluster_token), "peer")) == Identity(TD, ns, "webapp")
    assert kube.token_reviews() == 1
    # a forged "meshd" token (right issuer, wrong key) is refused by the JWT check, not reviewed
    forged = TokenAuthority(generate_private_key("ec-p256")).issue("istio-system", "istiod")
    with pytest.raises(AuthenticationError, match="jwt: .*(signature|unknown key)"):
        run(authenticate_stream(chain, md(forged), "peer"))
    assert kube.token_reviews() == 1
    # no token at all: nobody vouches
    with pytest.raises(AuthenticationError, match="no credential"):
        run(authenticate_stream(chain, md(None), "peer"))
