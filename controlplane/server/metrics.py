"""Prometheus metrics, under istiod's names where istiod has one.

Each `Metrics` owns its own CollectorRegistry (no global registry), so tests and
several servers in one process do not collide.

istiod exposes its counters without the `_total` suffix (`pilot_xds_pushes{type="cds"}`)
and Istio's dashboards query them that way; prometheus-client always appends `_total`.
`render()` therefore prints the istiod-named counters under their bare names and leaves
meshd's own counters (`meshd_*_total`) in the usual form. It also drops the `_created`
series prometheus-client adds, which istiod does not have.
"""
from __future__ import annotations

import time
from collections.abc import Iterator, Mapping
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.metrics_core import Metric

from .. import names

# istiod's metric-type label values (pilot/pkg/model GetMetricType).
_TYPE_LABEL = {
    names.CLUSTER: "cds",
    names.ENDPOINT: "eds",
    names.LISTENER: "lds",
    names.ROUTE: "rds",
    names.EXTENSION_CONFIG: "ecds",
    names.SECRET: "sds",
    names.BOOTSTRAP: "bds",  # EnvoyFilter BOOTSTRAP patches, fetched by `meshd bootstrap` (as istiod's label)
}

# Counters that istiod exposes without `_total`.
_BARE_COUNTERS = (
    "pilot_xds_pushes",
    "pilot_total_xds_rejects",
    "pilot_xds_expired_nonce",
    "pilot_total_xds_internal_errors",
    "pilot_push_triggers",
    "pilot_k8s_cfg_events",
    "citadel_server_csr_count",
    "citadel_server_success_cert_issuance_count",
    "citadel_server_csr_sign_err_count",
    "citadel_server_authentication_failure_count",
    "citadel_server_csr_parsing_err_count",
)

# istiod's pilot_xds_push_time buckets.
_PUSH_TIME_BUCKETS = (0.01, 0.1, 1, 3, 5, 10, 20, 30)

# google.rpc.Code -> the Go name istiod uses in its `err` label (codes.Code.String()).
_GRPC_CODE_NAMES = (
    "OK", "Canceled", "Unknown", "InvalidArgument", "DeadlineExceeded", "NotFound",
    "AlreadyExists", "PermissionDenied", "ResourceExhausted", "FailedPrecondition",
    "Aborted", "OutOfRange", "Unimplemented", "Internal", "Unavailable", "DataLoss",
    "Unauthenticated",
)


def type_label(type_url: str) -> str:
    return _TYPE_LABEL.get(type_url) or type_url.rsplit("/", 1)[-1]


def code_name(code: int) -> str:
    return _GRPC_CODE_NAMES[code] if 0 <= code < len(_GRPC_CODE_NAMES) else f"Code({code})"


class Metrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry(auto_describe=True)
        self.xds_clients = Gauge("pilot_xds", "Number of endpoints connected to this pilot using XDS.", registry=r)
        self.pushes = Counter(
            "pilot_xds_pushes", "Pilot build and send errors for lds, rds, cds and eds.", ["type"], registry=r
        )
        self.rejects = Counter(
            "pilot_total_xds_rejects", "Total number of XDS responses from pilot rejected by proxy.", ["type"],
            registry=r,
        )
        # istiod keeps these per-type gauges "for backwards compatibility"; labelled by
        # node and error code, incremented per NACK. Series are dropped on disconnect.
        self.type_rejects = {
            t: Gauge(f"pilot_xds_{short}_reject", f"Pilot rejected {short.upper()}.", ["node", "err"], registry=r)
            for t, short in ((names.CLUSTER, "cds"), (names.ENDPOINT, "eds"), (names.LISTENER, "lds"),
                             (names.ROUTE, "rds"))
        }
        self.expired_nonce = Counter(
            "pilot_xds_expired_nonce", "Total number of XDS requests with an expired nonce.", ["type"], registry=r
        )
        self.internal_errors = Counter(
            "pilot_total_xds_internal_errors", "Total number of internal XDS errors in pilot.", registry=r
        )
        self.push_triggers = Counter(
            "pilot_push_triggers", "Total number of times a push was triggered, labeled by reason for the push.",
            ["type"], registry=r,
        )
        self.push_time = Histogram(
            "pilot_xds_push_time", "Total time in seconds Pilot takes to push lds, rds, cds and eds.", ["type"],
            buckets=_PUSH_TIME_BUCKETS, registry=r,
        )
        self.config_rejections = Counter(
            "meshd_config_rejections", "Configuration objects rejected as invalid, by kind.", ["kind"], registry=r
        )
        self.config_unsupported = Gauge(
            "meshd_config_unsupported", "Configuration objects held of kinds meshd does not serve (they have no "
            "effect; security.istio.io ones mean access control that is not enforced), by API group and kind.",
            ["group", "kind"], registry=r,
        )
        self.config_restored = Gauge(
            "meshd_config_restored", "Configuration objects in force from the last good copy in meshd's state "
            "directory because their file was invalid when meshd started, by kind (0 once the files are fixed).",
            ["kind"], registry=r,
        )
        # Identity: meshd issues keys itself (no CSRs), so its own names rather than
        # istiod's citadel_server_csr_count; the root expiry gauge keeps istiod's name.
        self.certs_issued = Counter(
            "meshd_certs_issued", "Certificates issued by meshd's CA, by kind (workload, server, csr).", ["kind"],
            registry=r,
        )
        self.auth_failures = Counter(
            "meshd_xds_auth_failures",
            "xDS streams refused on the secure port, by reason (unauthenticated, permission_denied).", ["reason"],
            registry=r,
        )
        self.root_cert_expiry = Gauge(
            "citadel_server_root_cert_expiry_timestamp", "The unix timestamp, in seconds, when the root CA expires.",
            registry=r,
        )
        # The CA (istiod's citadel_server_* names where istiod has them).
        self.cert_chain_expiry = Gauge(
            "citadel_server_cert_chain_expiry_timestamp",
            "The unix timestamp, in seconds, when the CA certificate chain (the signing intermediate) expires.",
            registry=r,
        )
        self.root_cert_expiry_seconds = Gauge(
            "citadel_server_root_cert_expiry_seconds", "Seconds until the root CA expires.", registry=r,
        )
        self.cert_chain_expiry_seconds = Gauge(
            "citadel_server_cert_chain_expiry_seconds",
            "Seconds until the CA certificate chain (the signing intermediate) expires.", registry=r,
        )
        self.csr_count = Counter("citadel_server_csr_count", "CreateCertificate requests received.", registry=r)
        self.csr_success = Counter(
            "citadel_server_success_cert_issuance_count", "CreateCertificate requests answered with a certificate.",
            registry=r,
        )
        self.csr_sign_errors = Counter(
            "citadel_server_csr_sign_err_count", "CreateCertificate requests refused or failed, by reason.",
            ["error"], registry=r,
        )
        self.csr_auth_failures = Counter(
            "citadel_server_authentication_failure_count", "CreateCertificate requests that failed authentication.",
            registry=r,
        )
        self.csr_parse_errors = Counter(
            "citadel_server_csr_parsing_err_count", "CreateCertificate requests with a malformed CSR.", registry=r,
        )
        self.cert_issue_failures = Counter(
            "meshd_cert_issue_failures", "Certificates the CA failed to issue, by kind.", ["kind"], registry=r,
        )
        self.cert_rotations = Counter(
            "meshd_cert_rotations", "Workload certificates renewed ahead of expiry and pushed, by reason "
            "(rotation, new signer).", ["reason"], registry=r,
        )
        self.trust_bundle_roots = Gauge(
            "meshd_trust_bundle_roots", "Roots in the trust bundle (2 during a root rotation).", registry=r,
        )
        self.ca_reload_failures = Counter(
            "meshd_ca_reload_failures", "Changes of the CA directory refused as unusable.", registry=r,
        )
        # The push engine (server/flow.py): how long a queued push waits until its
        # proxy was served, how long a response waits for a write slot, streams given up
        # on. (pilot_proxy_convergence_time is the debug push tracker's.)
        self.push_latency = Histogram(
            "meshd_xds_push_queue_seconds", "Time from a push being queued for a proxy until it was handled (sent or found current).",
            buckets=(0.01, 0.1, 0.5, 1, 3, 5, 10, 30), registry=r,
        )
        self.send_wait = Histogram(
            "meshd_xds_push_slot_wait_seconds", "Time a response waited for one of the limited write slots.",
            buckets=(0.001, 0.01, 0.1, 0.5, 1, 5), registry=r,
        )
        self.pushes_queued = Counter(
            "meshd_xds_push_targets", "Connections a config change was queued for (the others were unaffected).",
            registry=r,
        )
        self.streams_dropped = Counter(
            "meshd_xds_streams_dropped", "Streams the server ended because the proxy stopped reading.", ["reason"],
            registry=r,
        )
        self._reject_series: dict[str, set[tuple[str, str]]] = {}  # node -> {(type_url, err)}
        self._pushed_children: dict[str, tuple[Any, ...]] = {}

    # --- recording ---------------------------------------------------------------
    def set_connections(self, n: int) -> None:
        self.xds_clients.set(n)

    def pushed(self, type_url: str, seconds: float) -> None:
        # Called for every response (thousands per push): the labelled children are
        # looked up once per type, not per call (prometheus-client's labels() locks).
        children = self._pushed_children.get(type_url)
        if children is None:
            label = type_label(type_url)
            children = self._pushed_children[type_url] = (self.pushes.labels(label), self.push_time.labels(label))
        children[0].inc()
        children[1].observe(seconds)

    def push_queued(self, reason: str, connections: int) -> None:
        self.pushes_queued.inc(connections)

    def push_done(self, seconds: float) -> None:
        self.push_latency.observe(seconds)

    def push_waited(self, seconds: float) -> None:
        self.send_wait.observe(seconds)

    def stream_dropped(self, reason: str) -> None:
        self.streams_dropped.labels(reason).inc()

    def nacked(self, type_url: str, node: str, code: int) -> None:
        self.rejects.labels(type_label(type_url)).inc()
        gauge = self.type_rejects.get(type_url)
        if gauge is not None:
            err = code_name(code)
            gauge.labels(node, err).inc()
            self._reject_series.setdefault(node, set()).add((type_url, err))

    def forget_node(self, node: str) -> None:
        for type_url, err in self._reject_series.pop(node, ()):
            try:
                self.type_rejects[type_url].remove(node, err)
            except KeyError:
                pass

    def stale_nonce(self, type_url: str) -> None:
        self.expired_nonce.labels(type_label(type_url)).inc()

    def internal_error(self) -> None:
        self.internal_errors.inc()

    def push_triggered(self, reason: str) -> None:
        self.push_triggers.labels(reason).inc()

    def config_rejected(self, kind: str) -> None:
        self.config_rejections.labels(kind).inc()

    def set_config_unsupported(self, counts: Mapping[tuple[str, str], int]) -> None:
        """(group, kind) -> objects held (ConfigStore's on_unsupported); 0 when gone."""
        for (group, kind), n in counts.items():
            self.config_unsupported.labels(group, kind).set(n)

    def set_config_restored(self, counts: Mapping[str, int]) -> None:
        """kind -> objects restored from the state directory (config/lastgood.py); 0 when fixed."""
        for kind, n in counts.items():
            self.config_restored.labels(kind).set(n)

    def cert_issued(self, kind: str) -> None:
        self.certs_issued.labels(kind).inc()

    def auth_failed(self, reason: str) -> None:
        self.auth_failures.labels(reason).inc()

    def set_root_expiry(self, timestamp: float) -> None:
        self.root_cert_expiry.set(timestamp)
        self.root_cert_expiry_seconds.set_function(lambda: timestamp - time.time())

    def set_ca_expiry(self, root_timestamp: float, chain_timestamp: float) -> None:
        """The active signer: its root's and its chain's (intermediate's) expiry."""
        self.set_root_expiry(root_timestamp)
        self.cert_chain_expiry.set(chain_timestamp)
        self.cert_chain_expiry_seconds.set_function(lambda: chain_timestamp - time.time())

    def cert_issue_failed(self, kind: str) -> None:
        self.cert_issue_failures.labels(kind).inc()

    def cert_rotated(self, reason: str) -> None:
        self.cert_rotations.labels(reason).inc()

    def set_trust_bundle_roots(self, n: int) -> None:
        self.trust_bundle_roots.set(n)

    def ca_reload_failed(self) -> None:
        self.ca_reload_failures.inc()

    def csr_received(self) -> None:
        self.csr_count.inc()

    def csr_issued(self) -> None:
        self.csr_success.inc()
        self.certs_issued.labels("csr").inc()

    def csr_failed(self, error: str) -> None:
        self.csr_sign_errors.labels(error).inc()

    def csr_auth_failed(self) -> None:
        self.csr_auth_failures.inc()

    def csr_malformed(self) -> None:
        self.csr_parse_errors.inc()

    # --- exposition --------------------------------------------------------------
    content_type = CONTENT_TYPE_LATEST

    def render(self) -> bytes:
        """Prometheus text format, with istiod's counter names."""
        text = generate_latest(_WithoutCreated(self.registry)).decode()
        out = []
        for line in text.splitlines():
            for bare in _BARE_COUNTERS:
                total = bare + "_total"
                if line.startswith((f"# HELP {total} ", f"# TYPE {total} ")):
                    line = line[:7] + bare + line[7 + len(total):]
                    break
                if line.startswith((total + "{", total + " ")):
                    line = bare + line[len(total):]
                    break
            out.append(line)
        return ("\n".join(out) + "\n").encode()


class _WithoutCreated:
    """A registry view without prometheus-client's `*_created` samples."""

    def __init__(self, registry: CollectorRegistry):
        self._registry = registry

    def collect(self) -> Iterator[Metric]:
        for m in self._registry.collect():
            m.samples = [s for s in m.samples if not s.name.endswith("_created")]
            yield m
