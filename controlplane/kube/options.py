"""`meshd serve` flags for running as a cluster member (kept free of the `kubernetes`
import, so that every other command starts fast)."""
from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta

DEFAULT_LEASE_NAME = "meshd-leader"
DEFAULT_NAMESPACE = "istio-system"
SA_NAMESPACE_FILE = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"


def pod_namespace(default: str = DEFAULT_NAMESPACE) -> str:
    """The namespace meshd runs in: $POD_NAMESPACE (downward API), the service account's
    namespace file in a pod, else `default`."""
    if os.environ.get("POD_NAMESPACE"):
        return os.environ["POD_NAMESPACE"]
    try:
        with open(SA_NAMESPACE_FILE) as f:
            return f.read().strip() or default
    except OSError:
        return default


@dataclass
class ClusterOptions:
    leader_elect: bool = True
    namespace: str | None = None  # where the Lease and the CA Secrets live; None: the pod's namespace
    lease_name: str = DEFAULT_LEASE_NAME
    lease_duration: float = 15.0
    renew_deadline: float = 10.0
    retry_period: float = 2.0
    identity: str = ""  # "": <pod name>_<random>
    ca_secrets_poll_interval: float = 10.0  # how often every replica re-reads cacerts / istio-ca-secret


def add_serve_flags(s: argparse.ArgumentParser, parse_duration: Callable[[str], timedelta]) -> None:
    """The flags, their durations read by the CLI's `parse_duration` (Go-style: 15s, 2m)."""
    g = s.add_argument_group("replicas (with --kubeconfig / --in-cluster)")
    g.add_argument("--leader-elect", action=argparse.BooleanOptionalAction, default=True,
                   help="elect one replica (coordination.k8s.io/v1 Lease) to write status, events and the "
                        "istio-ca-root-cert ConfigMaps; --no-leader-elect: this replica does it (a single replica)")
    g.add_argument("--leader-election-namespace",
                   help="meshd's namespace: where the Lease and the CA Secrets (istio-ca-secret, cacerts) live "
                        "(default: the pod's, $POD_NAMESPACE, else istio-system)")
    g.add_argument("--leader-election-id", default=DEFAULT_LEASE_NAME, help="name of the Lease (default %(default)s)")
    g.add_argument("--leader-lease-duration", type=parse_duration, default="15s",
                   help="how long followers wait after the leader's last renewal before taking over (default %(default)s)")
    g.add_argument("--leader-renew-deadline", type=parse_duration, default="10s",
                   help="a leader that could not renew for this long stops leading (default %(default)s)")
    g.add_argument("--leader-retry-period", type=parse_duration, default="2s",
                   help="between renewals, and between a follower's attempts (default %(default)s)")
    g.add_argument("--ca-secrets-poll-interval", type=parse_duration, default="10s",
                   help="how often each replica re-reads Secrets cacerts and istio-ca-secret, so that a plug-in "
                        "CA created or replaced in the cluster starts a root rotation (default %(default)s)")


def options_from_args(args: argparse.Namespace) -> ClusterOptions:
    """ClusterOptions from the flags; ValueError when the timings do not fit together."""
    opts = ClusterOptions(
        leader_elect=args.leader_elect,
        namespace=args.leader_election_namespace,
        lease_name=args.leader_election_id,
        lease_duration=args.leader_lease_duration.total_seconds(),
        renew_deadline=args.leader_renew_deadline.total_seconds(),
        retry_period=args.leader_retry_period.total_seconds(),
        ca_secrets_poll_interval=args.ca_secrets_poll_interval.total_seconds(),
    )
    if opts.leader_elect and not 0 < opts.retry_period < opts.renew_deadline < opts.lease_duration:
        raise ValueError("want --leader-retry-period < --leader-renew-deadline < --leader-lease-duration")
    return opts
