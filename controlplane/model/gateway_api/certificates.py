"""Which Gateway API certificates a gateway proxy may be sent over SDS (istiod's
VerifiedCertificateReferences in mergeGateways and filterAuthorizedResources in
pilot/pkg/xds/sds.go, read not copied).

A Gateway's `certificateRefs` become `kubernetes-gateway://<namespace>/<name>` in the
derived Istio Gateway (conversion.py). Such a name carries its own namespace, so naming
it must not be enough to read it: a proxy is sent the Secret only when

- a server of a Gateway that selects the proxy names it, and that Gateway is in the
  proxy's namespace (a Gateway of another namespace selecting the proxy vouches for
  nothing), and
- the Secret is in the proxy's namespace, or a ReferenceGrant in the Secret's namespace
  lets Gateways (gateway.networking.k8s.io) of the proxy's namespace refer to it.

Everything else is refused, whatever the proxy subscribes to. The check is made again
here rather than trusted from the conversion, as istiod does at SDS time.
"""
from __future__ import annotations

from collections.abc import Iterable

from ...config.objects import ConfigObject
from ...names import GATEWAY_API_GROUP
from ..credentials import CredentialRef, credential_ref
from .references import Grants

# Server TLS modes that validate client certificates against `<credential>-cacert`.
_CLIENT_CA_MODES = ("MUTUAL", "OPTIONAL_MUTUAL")


def refusal(ref: CredentialRef, gateway_namespace: str, proxy_namespace: str, grants: Grants) -> str:
    """Why a proxy of `proxy_namespace` may not read `ref`, named by a Gateway of
    `gateway_namespace` that selects it; "" when it may."""
    if gateway_namespace != proxy_namespace:
        return (f"{ref.resource} is named by a Gateway of namespace {gateway_namespace!r}, not of the proxy's "
                f"namespace {proxy_namespace!r}")
    if grants.allows(GATEWAY_API_GROUP, "Gateway", proxy_namespace, "", "Secret", ref.namespace, ref.name):
        return ""
    return (f"{ref.resource}: no ReferenceGrant in namespace {ref.namespace!r} lets Gateways of namespace "
            f"{proxy_namespace!r} use Secret {ref.name!r}")


def authorized(gateways: Iterable[ConfigObject], proxy_namespace: str,
               grants: Grants) -> tuple[tuple[CredentialRef, bool], ...]:
    """The `kubernetes-gateway://` references a proxy of `proxy_namespace` selected by
    `gateways` (Istio Gateways, derived or not) may read, each with whether its
    `-cacert` is wanted too (a server validating client certificates)."""
    out: dict[str, tuple[CredentialRef, bool]] = {}
    for gw in gateways:
        for server in gw.typed.servers:
            tls = server.tls
            if tls is None:
                continue
            for name in tls.credentials:
                ref = credential_ref(name, proxy_namespace)
                if ref is None or not ref.gateway_api or refusal(ref, gw.namespace, proxy_namespace, grants):
                    continue
                ca = tls.mode in _CLIENT_CA_MODES and name == tls.credentials[0]
                out[ref.resource] = (ref, ca or out.get(ref.resource, (ref, False))[1])
    return tuple(out[k] for k in sorted(out))
