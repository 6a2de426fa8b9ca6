"""Request authentication and authorization on a proxy's listeners.

What a workload's policies make of its filter chains, as istiod places them: every
HTTP connection manager of the inbound side (or of a gateway) starts with the JWT
filters (RequestAuthentication), then the authorization filters (CUSTOM, AUDIT, DENY,
ALLOW: builder order); every TCP chain starts with the network authorization filters.
The blackhole chain is left alone: nothing reaches an application through it.

The listener builders stay unaware of policy: they build chains, and `secure` adds
the filters afterwards, so a proxy no policy selects gets byte-identical listeners.
"""
from __future__ import annotations

from dataclasses import dataclass

from envoy.config.listener.v3 import listener_components_pb2 as lc
from envoy.config.listener.v3 import listener_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2

from ..model import security
from ..model.mesh import MeshSnapshot
from ..model.proxy import Proxy
from . import filters
from .convert import typed


@dataclass(frozen=True)
class ProxySecurity:
    """The filters a proxy's policies add: to HCMs (`http`) and to TCP chains (`network`)."""

    http: tuple[hcm_pb2.HttpFilter, ...] = ()
    network: tuple[lc.Filter, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.http or self.network)


NONE = ProxySecurity()


def for_proxy(mesh: MeshSnapshot, proxy: Proxy, *, is_gateway: bool) -> ProxySecurity:
    """The authentication and authorization filters of `proxy`'s workload."""
    if not mesh.authorization_policies and not mesh.request_authentications:
        return NONE
    from . import authn
    from .authz import builder as authz_builder

    wp = security.authz_policies_for(mesh, proxy)
    # istiod's order: CUSTOM (ext_authz) first, then the JWT filters, then AUDIT/DENY/ALLOW,
    # which read what the JWT filters verified.
    http = authz_builder.custom_http_filters(wp, mesh.mesh_config, services=mesh.services)
    if mesh.request_authentications:
        # RBAC reads the verified payload from jwt_authn's own metadata (as istiod's does):
        # the istio_authn emulation is not needed on the proxies meshd configures.
        http += authn.http_filters(security.jwt_rules_for(mesh, proxy), mesh.jwks_view(), istio_authn_metadata=False)
    http += authz_builder.rbac_http_filters(wp, mesh.mesh_config)
    network = authz_builder.network_filters(wp, mesh.mesh_config, is_gateway=is_gateway, services=mesh.services)
    return ProxySecurity(tuple(http), tuple(network))


def secure(listener: listener_pb2.Listener, sec: ProxySecurity, skip_chains: frozenset[str] = frozenset()) -> None:
    """Add `sec`'s filters to every chain of `listener` (in place) but `skip_chains`."""
    if not sec:
        return
    for chain in listener.filter_chains:
        if chain.name in skip_chains:
            continue
        _secure_chain(chain, sec)


def _secure_chain(chain: lc.FilterChain, sec: ProxySecurity) -> None:
    for i, f in enumerate(chain.filters):
        if f.name == filters.HTTP_CONNECTION_MANAGER:
            if not sec.http:
                return
            hcm = hcm_pb2.HttpConnectionManager()
            f.typed_config.Unpack(hcm)
            existing = list(hcm.http_filters)
            del hcm.http_filters[:]
            hcm.http_filters.extend(list(sec.http) + existing)
            chain.filters[i].typed_config.CopyFrom(typed(hcm))
            return
        if f.name == filters.TCP_PROXY:
            if not sec.network:
                return
            rest = list(chain.filters)
            del chain.filters[:]
            chain.filters.extend(rest[:i] + list(sec.network) + rest[i:])
            return
