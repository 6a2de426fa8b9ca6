"""One meshd replica's part in a cluster, wired in one place for `meshd serve`:

    member = ClusterMember(api_client, ClusterOptions(namespace="istio-system"), trust_domain)
    source = KubernetesSource(api_client, store, observer=member.status)   # verdicts -> status
    authenticators = member.authenticators(jwt)                            # + TokenReview
    task = asyncio.create_task(member.run(stop))   # leader election; leader work on the leader
    ...
    stop.set(); await task                          # the leader releases the Lease on the way out

Every replica serves xDS, authenticates proxies (TokenReview) and keeps the picture of
every Istio object's verdict; only the elected leader writes to the cluster (status and
events, and whatever else is registered with `add_leader_task`). Without leader election
(`leader_elect=False`, a single replica) this replica does the leader work itself.

The CA (ca_secrets.py) lives in Secrets: `prepare_ca` makes the CA directory
mirror the cluster's CA before it is opened; `attach_ca` then follows the Secrets (every
replica) and publishes the trust bundle as ConfigMap istio-ca-root-cert in every
namespace (leader work, rootcert.py).
"""
from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Coroutine
from datetime import timedelta
from pathlib import Path
from typing import Any, Protocol

import structlog

from ..config.store import ConfigStore
from ..security.authn import Authenticator
from .api import KubeApi
from .ca_secrets import KubeCAStore, SignersInForce
from .leader import LeaderElectionConfig, LeaderElector, default_identity
from .options import ClusterOptions, pod_namespace
from .rootcert import RootCertPublisher
from .status import StatusWriter
from .tokenreview import MeshdTokens, TokenReviewAuthenticator

__all__ = ["ClusterMember", "ClusterOptions"]

log = structlog.get_logger("meshd.cluster")


class RunningCA(SignersInForce, Protocol):
    """What the member reads of the running CA (security/authority.py MeshCA, handed in by
    app.py): its signers (to follow the CA Secrets), the trust bundle and its changes (to
    publish the ConfigMaps)."""

    @property
    def trust_bundle_pem(self) -> bytes: ...

    def on_bundle_change(self, fn: Callable[[], None]) -> None: ...


class ClusterMember:
    def __init__(self, api_client: Any, options: ClusterOptions, trust_domain: str):
        self.options = options
        self.trust_domain = trust_domain
        self.kube = KubeApi(api_client)
        self.identity = options.identity or default_identity()
        self.namespace = options.namespace or pod_namespace()
        self.status = StatusWriter(self.kube, instance=self.identity)
        self.elector: LeaderElector | None = None
        if options.leader_elect:
            self.elector = LeaderElector(self.kube, LeaderElectionConfig(
                namespace=self.namespace, identity=self.identity, name=options.lease_name,
                lease_duration=options.lease_duration, renew_deadline=options.renew_deadline,
                retry_period=options.retry_period))
        self._leader_tasks: dict[str, Callable[[], Coroutine[Any, Any, None]]] = {"status": self.status.run}
        self._replica_tasks: list[Callable[[asyncio.Event], Coroutine[Any, Any, None]]] = []
        self.ca_store: KubeCAStore | None = None
        self.root_certs: RootCertPublisher | None = None

    @property
    def is_leader(self) -> bool:
        return self.elector.is_leader if self.elector is not None else True

    def add_leader_task(self, name: str, task: Callable[[], Coroutine[Any, Any, None]]) -> None:
        """Work that must happen once per cluster: started on the leader only."""
        self._leader_tasks[name] = task
        if self.elector is not None:
            self.elector.add_task(name, task)

    def authenticators(self, jwt: Authenticator | None) -> list[Any]:
        """TokenReview for the cluster's ServiceAccount tokens, after meshd's own JWTs
        (which only ever judge tokens meshd issued)."""
        out: list[Any] = [MeshdTokens(jwt)] if jwt is not None else []
        out.append(TokenReviewAuthenticator(self.kube, self.trust_domain))
        return out

    # --- the CA in the cluster ----------------------------------------------------------
    def prepare_ca(self, ca_dir: Path, keep_old_for: timedelta, *, offered: Path | None = None,
                   stop: threading.Event | None = None) -> str:
        """Blocking, before the CA directory is opened: make it hold the cluster's CA
        (Secret cacerts, else istio-ca-secret, created once if absent; `offered`, the
        operator's CA, becomes cacerts when the cluster has none). "" when `stop` came first."""
        self.ca_store = KubeCAStore(self.kube, self.namespace, ca_dir, self.trust_domain, offered=offered,
                                    keep_old_for=keep_old_for, poll_interval=self.options.ca_secrets_poll_interval)
        return self.ca_store.prepare(stop=stop)

    def attach_ca(self, ca: RunningCA, store: ConfigStore) -> None:
        """With the CA open (security/authority.py MeshCA) and the config store: follow the
        CA Secrets on every replica; publish the trust bundle from the leader."""
        publisher = RootCertPublisher(self.kube, lambda: ca.trust_bundle_pem, lambda: _namespaces(store))
        self.root_certs = publisher
        ca.on_bundle_change(publisher.changed)
        store.subscribe(lambda _snap, changed: publisher.changed()
                        if any(k.kind == "Namespace" for k in changed) else None)
        self.add_leader_task("root-cert", publisher.run)
        ca_store = self.ca_store
        if ca_store is not None:
            self._replica_tasks.append(lambda stop: ca_store.run(stop, ca))

    async def run(self, stop: asyncio.Event) -> None:
        """Until `stop`: the election (leader work on the leader), or, without election,
        the leader work right here; and every replica's own work. Set `stop` and await
        this to release the Lease."""
        replica = [asyncio.create_task(t(stop), name="meshd-cluster-replica") for t in self._replica_tasks]
        try:
            if self.elector is not None:
                for name, task in self._leader_tasks.items():
                    self.elector.add_task(name, task)
                await self.elector.run(stop)
                return
            log.info("leader election disabled: this replica does the leader work")
            tasks = [asyncio.create_task(t(), name=f"leader-{n}") for n, t in self._leader_tasks.items()]
            try:
                await stop.wait()
            finally:
                for t in tasks:
                    t.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
        finally:
            for t in replica:
                t.cancel()
            await asyncio.gather(*replica, return_exceptions=True)

    def close(self) -> None:
        self.kube.close()


def _namespaces(store: ConfigStore) -> list[str]:
    """The namespaces meshd serves: the store's Namespaces, less those being deleted."""
    out = []
    for ns in store.snapshot().of_kind("Namespace"):
        status = ns.spec.get("status") if isinstance(ns.spec, dict) else None
        if isinstance(status, dict) and status.get("phase") == "Terminating":
            continue
        out.append(ns.name)
    return out
