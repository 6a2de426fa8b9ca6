"""Which authentication and authorization policies apply to a proxy's workload.

The selection rules live with each kind (authorization.py, request_authentication.py);
this module gives them what they need to know about a proxy: its namespace and labels,
the Services of its namespace that select it (for `targetRef(s)` of kind Service) and
the Kubernetes Gateway it implements (kind Gateway, by Istio's gateway-name label).
"""
from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING, Any

from ..names import GATEWAY_NAME_LABEL
from .indexes import Lifetime, Value
from .proxy import Proxy
from .services import labels_match

if TYPE_CHECKING:
    from .authorization import AuthzPolicy, WorkloadPolicies
    from .mesh import MeshSnapshot
    from .request_authentication import JwtRule


_TYPED_POLICIES = Value["tuple[AuthzPolicy, ...]"]("the AuthorizationPolicies, typed", Lifetime.CONFIG)


def typed_policies(mesh: MeshSnapshot) -> tuple[AuthzPolicy, ...]:
    """The snapshot's AuthorizationPolicies as typed policies, read once per snapshot
    (every workload's selection reads them all)."""
    got = mesh.indexes.get(_TYPED_POLICIES)
    if got is None:
        from .authorization import authz_policy

        got = mesh.indexes.value(_TYPED_POLICIES, lambda: tuple(authz_policy(o) for o in mesh.authorization_policies))
    return got


def service_names(mesh: MeshSnapshot, proxy: Proxy) -> tuple[str, ...]:
    """The Services of the proxy's namespace whose selector selects its workload."""
    return tuple(sorted(
        svc.name for svc in mesh.services.values()
        if svc.namespace == proxy.namespace and svc.selector and labels_match(svc.selector, proxy.labels)
    ))


def gateway_names(proxy: Proxy) -> tuple[str, ...]:
    name = proxy.labels.get(GATEWAY_NAME_LABEL)
    return (name,) if name else ()


def authz_policies_for(mesh: MeshSnapshot, proxy: Proxy) -> WorkloadPolicies:
    from .authorization import policies_for

    return policies_for(typed_policies(mesh), proxy.namespace, proxy.labels, mesh.mesh_config.root_namespace,
                        service_names=service_names(mesh, proxy), gateway_names=gateway_names(proxy))


def jwt_rules_for(mesh: MeshSnapshot, proxy: Proxy) -> tuple[JwtRule, ...]:
    from .request_authentication import jwt_rules_for as select

    return select(mesh.request_authentications, proxy.namespace, proxy.labels, mesh.mesh_config.root_namespace)


def security_key(mesh: MeshSnapshot, proxy: Proxy) -> tuple[Any, ...]:
    """A hashable digest of everything the proxy's authn/authz filters are built from."""
    if not mesh.authorization_policies and not mesh.request_authentications:
        return ()
    wp = authz_policies_for(mesh, proxy)
    rules = jwt_rules_for(mesh, proxy) if mesh.request_authentications else ()
    h = hashlib.blake2b(digest_size=12)
    h.update(repr(mesh.mesh_config).encode())
    h.update(repr(rules).encode())
    h.update(repr(mesh.jwks_digest(rules)).encode())
    return (wp.key(), h.hexdigest())
