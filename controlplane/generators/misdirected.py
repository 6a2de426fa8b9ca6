"""421 Misdirected Request on a Gateway API gateway's HTTPS ports (GEP-3567).

An HTTP/2 client reuses a TLS connection for any host the server's certificate covers
(connection coalescing, RFC 9113 section 9.1.1), so a request can reach the SNI filter
chain of one listener while its :authority is another listener's. Each HTTPS server has
its own route configuration (routes.py), which on its own would answer such a request
with that listener's routes or 404. The Gateway API asks, for the listeners of one port:
421 when another listener matches the host more specifically than the chosen one (or
the chosen one does not match it and another does), 404 when no listener matches it.

So the route configuration of a Gateway API server gets one more virtual host,
`misdirected:<port>`, answering 421 for the hostnames of the other Gateway API HTTPS
servers on its listening port. Envoy picks the most specific domain across virtual
hosts, which is the spec's rule: the server's own virtual hosts keep their hosts, a
sibling's hostname takes the hosts it matches better. Where a broader sibling (`*`)
would also take hosts the server itself matches but has no route for, the server's
hostname gets a virtual host without routes, so those stay 404.

Servers of Istio Gateways are left as istiod builds them. istiod itself does not
answer 421 (istio/istio#60046 was closed over the cost: N listeners with distinct
hostnames on one port mean N route configurations of N-1 domains). Here a domain that
another 421 domain already covers is left out, so a port with a catch-all listener
costs one domain per route configuration; distinct hostnames without one still cost N-1
(bounded: a Gateway has at most 64 listeners).
"""
from __future__ import annotations

from collections.abc import Iterable

from envoy.config.route.v3 import route_components_pb2 as rc

from .. import names
from ..model.gateway_api.conversion import GATEWAY_SEMANTICS_ANNOTATION
from ..model.gateways import Server
from ..model.hosts import covers

MISDIRECTED = 421


def is_gateway_api(server: Server) -> bool:
    """A server derived from a Gateway API listener (the annotation istiod's conversion sets)."""
    return server.gateway.annotations.get(GATEWAY_SEMANTICS_ANNOTATION) == "gateway"


def misdirected_virtual_hosts(server: Server, siblings: Iterable[Server],
                              own: list[rc.VirtualHost]) -> list[rc.VirtualHost]:
    """The virtual hosts `server`'s route configuration adds to its own ones (`own`) so
    that hosts of the other Gateway API HTTPS `siblings` on its port are answered 421."""
    if not is_gateway_api(server):
        return []
    own_hosts = server.host_names()
    taken = {d for vh in own for d in vh.domains}
    candidates = {h for s in siblings if s is not server and is_gateway_api(s) and s.terminates_http
                  for h in s.host_names()} - set(own_hosts) - taken
    # Own domains a 421 domain must beat: the server's hostnames and its virtual hosts'.
    mine = taken | set(own_hosts)
    wildcards = [c for c in candidates if c.startswith("*")]  # only these cover other domains
    domains = sorted(d for d in candidates if not _redundant(d, wildcards, mine))
    if not domains:
        return []
    out = [rc.VirtualHost(
        name=f"misdirected:{server.number}", domains=domains,
        routes=[rc.Route(name="misdirected", match=rc.RouteMatch(prefix="/"),
                         direct_response=rc.DirectResponseAction(status=MISDIRECTED))])]
    # A broader sibling's domain would take the server's own hosts that no own virtual
    # host names: those answer 404 (no route), as the server's listener matches them.
    for host in own_hosts:
        if host not in taken and any(d != host and covers(d, host) for d in domains):
            out.append(rc.VirtualHost(name=names.virtual_host_name(host, server.number), domains=[host]))
    return out


def _redundant(domain: str, wildcards: list[str], mine: set[str]) -> bool:
    """True when a broader 421 domain answers for `domain` just as well: the most specific
    other wildcard candidate covering it, with no own domain between the two (that one would win)."""
    wider = [c for c in wildcards if c != domain and covers(c, domain)]
    if not wider:
        return False
    best = max(wider, key=len)  # covering domains are suffixes of one another: the longest is the narrowest
    return not any(o != domain and covers(o, domain) and covers(best, o) for o in mine)
