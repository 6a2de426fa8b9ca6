"""The rule tying an authenticated connection to the node it claims to be.

A proxy may only be served as the workload it proved to be: the namespace and service
account of its node (metadata `NAMESPACE` / `SERVICE_ACCOUNT`, which decide the config
it gets and the certificate `default` it is sent) must equal those of the identity its
token vouched for. istiod applies the same check when a stream starts
(pilot/pkg/xds/auth.go checkConnectionIdentity) and refuses the stream with
PERMISSION_DENIED; meshd does too, and the SDS provider checks it again before handing
out a key (defence in depth: a wiring mistake must not leak a key).

Unlike istiod, a node without SERVICE_ACCOUNT is refused rather than matched against
any service account of its namespace: its `default` certificate would otherwise be
issued for an identity the node never named.
"""
from __future__ import annotations

from ca import Identity

from ..model.proxy import Proxy

SERVICE_ACCOUNT_KEY = "SERVICE_ACCOUNT"


def claimed_service_account(proxy: Proxy) -> str:
    value = proxy.metadata.get(SERVICE_ACCOUNT_KEY) if proxy.metadata else None
    return str(value) if value else ""


def claimed_identity(proxy: Proxy, trust_domain: str) -> str:
    """The SPIFFE ID the node claims, for logs (it may be malformed: it is untrusted)."""
    return f"spiffe://{trust_domain}/ns/{proxy.namespace}/sa/{claimed_service_account(proxy) or '?'}"


def identity_mismatch(proxy: Proxy, identity: Identity) -> str | None:
    """Why `proxy` must not be served as `identity`, or None when it may."""
    sa = claimed_service_account(proxy)
    if not sa:
        return "node metadata has no SERVICE_ACCOUNT"
    if proxy.namespace != identity.namespace:
        return f"node namespace {proxy.namespace!r} is not the authenticated namespace {identity.namespace!r}"
    if sa != identity.service_account:
        return f"node service account {sa!r} is not the authenticated service account {identity.service_account!r}"
    return None
