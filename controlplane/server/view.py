"""What a connection is served, for both protocol state machines (sotw.py, delta.py).

The narrow interface between the protocol and the served data (compare
go-control-plane's pkg/cache/v3/cache.go): for one connection and type, the full set of
resources the proxy should have (`resolve`), and a cheap key that changes whenever that
set may change (`key`), so a push can pass over a proxy whose output is unchanged
without generating anything.

Two sources:
- the Generator, shared between proxies (cached by what the output depends on);
- the SecretProvider, for the SDS names it owns (`default`, `ROOTCA`): answered per
  stream with the stream's authenticated identity, never from a shared cache, and never
  keyed (a rotation changes them with no config change; they are re-checked on every
  push that includes SDS).
"""
from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import structlog

from .. import names
from ..generators.resources import Resource, ResourceSet, version_of
from ..security.sds import SecretProvider
from .connection import Connection
from .subscription import Subscription

log = structlog.get_logger("meshd.ads")


class ResourceView:
    def __init__(self, generator: Any, secrets: SecretProvider | None,
                 on_withheld: Callable[[Connection, str, str], None] | None = None):
        self.generator = generator
        self.secrets = secrets
        self._on_withheld = on_withheld
        self._types: tuple[str, ...] | None = None

    def types(self) -> tuple[str, ...]:
        # Asked on every request and push: made once (a generator's types never change).
        served = self._types
        if served is None:
            served = tuple(self.generator.types())
            if self.secrets is not None and names.SECRET not in served:
                served += (names.SECRET,)
            self._types = served
        return served

    def _provider_owned(self, sub: Subscription) -> bool:
        return sub.type_url == names.SECRET and self.secrets is not None

    def generated_secrets(self, sub: Subscription) -> bool:
        """The SDS subscription names secrets the generator serves (gateway credentials,
        `kubernetes://...`): those follow config (a Secret change), not the CA."""
        return (sub.type_url == names.SECRET and self.secrets is not None
                and any(n not in self.secrets.names for n in sub.names))

    def key(self, conn: Connection, sub: Subscription, mesh: Any) -> Any:
        """Equal keys mean the same resolved set; None means "cannot tell: resolve".
        Memoized per subscription and snapshot: a push computes it when queueing and
        again when sending."""
        if self._provider_owned(sub) or mesh is None:
            return None
        memo = sub.key_memo
        if memo is not None and memo[0] is mesh:
            return memo[1]
        key_of = getattr(self.generator, "key", None)
        if key_of is None:
            return None
        key = key_of(mesh, conn.proxy, sub.type_url)
        sub.key_memo = (mesh, key)
        return key

    def endpoint_change(self, previous: Any, mesh: Any) -> Any:
        """The generator's account of an endpoint-only change from `previous` to `mesh`
        (generators/express.py EndpointChange: `hosts`, `addresses`, `touches(names)`), or
        None: every proxy's keys decide."""
        if previous is None or mesh is previous:  # before the generator is asked (it may not be made yet)
            return None
        of = getattr(self.generator, "endpoint_change", None)
        return None if of is None else of(previous, mesh)

    def rule_change(self, previous: Any, mesh: Any) -> Any:
        """The generator's account of a DestinationRule-only change (generators/express.py
        RuleChange: `hosts`, `reaches(proxy)`), or None: every proxy's keys decide."""
        if previous is None or mesh is previous:
            return None
        of = getattr(self.generator, "rule_change", None)
        return None if of is None else of(previous, mesh)

    async def resolve(self, conn: Connection, sub: Subscription, mesh: Any) -> ResourceSet:
        """Every resource of the type this proxy should have (for SDS: the named ones)."""
        if self._provider_owned(sub):
            return await self._secrets(conn, sub, mesh)
        # The key a push just compared (memoized): the generator need not compute it again.
        rs = self.generator.generate(mesh, conn.proxy, sub.type_url, key=self.key(conn, sub, mesh))
        if not isinstance(rs, ResourceSet):  # a generator returning a plain mapping
            rs = ResourceSet(sub.type_url, list(rs.values()))
        if sub.type_url == names.EXTENSION_CONFIG and (missing := unprovided(sub, rs)):
            # istiod sends nothing for them, silently; Envoy keeps the listener that names
            # one warming until its initial fetch timeout, then fails the filter chain.
            log.warning("ecds names no EnvoyFilter provides", proxy=conn.proxy.id, conn=conn.id, names=missing)
        return rs

    async def _secrets(self, conn: Connection, sub: Subscription, mesh: Any) -> ResourceSet:
        assert self.secrets is not None
        wanted = sorted(sub.names)  # SDS is always named: never enumerate secrets
        own = [n for n in wanted if n in self.secrets.names]
        others = [n for n in wanted if n not in self.secrets.names]
        out = []
        if others and names.SECRET in self.generator.types():
            out += self.generator.generate(mesh, conn.proxy, names.SECRET).subset(others)
        answer = await self.secrets.secrets(conn.proxy, conn.identity, own)
        if self._on_withheld is not None:
            for name, reason in answer.withheld.items():
                self._on_withheld(conn, name, reason)
        out += answer.resources
        return ResourceSet(names.SECRET, sorted(out, key=lambda r: r.name))


def unprovided(sub: Subscription, rs: ResourceSet) -> list[str]:
    """The names `sub` asks for that `rs` does not have."""
    return [] if sub.wildcard else sorted(n for n in sub.names if n not in rs.names)


def missing_extension_configs(connections: Iterable[Connection]) -> list[dict[str, Any]]:
    """/debug/configz `extensionConfigsMissing`: per proxy, the ECDS names it asked for
    and was not sent (no EnvoyFilter selecting it provides them)."""
    rows = []
    for conn in connections:
        sub = conn.subscriptions.get(names.EXTENSION_CONFIG)
        if sub is not None and sub.sent_set is not None and (missing := unprovided(sub, sub.sent_set)):
            rows.append({"proxy": conn.proxy.id, "names": missing})
    return sorted(rows, key=lambda r: r["proxy"])


def wanted_resources(sub: Subscription, rs: ResourceSet) -> tuple[str, list[Resource] | None]:
    """The SotW version of the resources of `rs` the subscription asks for, and those
    resources; None when that is the whole set (then its shared blobs can be sent)."""
    if sub.wildcard:
        return rs.version, None
    memo = sub.covers_memo  # Envoy's EDS names equal the set's: checked once per pair of sets
    if memo is not None and memo[0] is rs.names and memo[1] is sub.names:
        covered = memo[2]
    else:
        covered = rs.names <= sub.names
        sub.covers_memo = (rs.names, sub.names, covered)
    if covered:
        return rs.version, None
    subset = rs.subset(sorted(sub.names))
    return version_of(subset), subset
