"""DestinationRule semantics beyond the schema, after Istio's ValidateDestinationRule."""
from __future__ import annotations

import math
from typing import Any

from . import dns, durations
from .errors import FieldError, child, index, invalid
from .istio_common import (
    check_duration,
    check_export_to,
    check_labels,
    check_percent,
    check_port,
    check_subset_name,
    get,
)

_POLICY_FIELDS = ("outlierDetection", "connectionPool", "loadBalancer", "tls", "portLevelSettings", "tunnel",
                  "proxyProtocol", "retryBudget")
_PORT_POLICY_FIELDS = ("outlierDetection", "connectionPool", "loadBalancer", "tls")
_TOPOLOGY_LABELS = frozenset({"topology.kubernetes.io/region", "topology.kubernetes.io/zone",
                              "topology.istio.io/subzone"})
_MAGLEV_MAX_TABLE = 5000011


def validate_destination_rule(spec: dict, namespace: str | None) -> list[FieldError]:
    errs: list[FieldError] = []
    host = get(spec, "host", "")
    if not host:
        errs.append(FieldError("spec.host", "Required value"))
    else:
        err = dns.check_wildcard_domain(host)
        if err:
            errs.append(invalid("spec.host", host, err))
    _check_traffic_policy(get(spec, "trafficPolicy"), "spec.trafficPolicy", errs)

    names: set[str] = set()
    for i, subset in enumerate(get(spec, "subsets", [])):
        path = index("spec.subsets", i)
        name = get(subset, "name", "")
        if name in names:
            errs.append(invalid(child(path, "name"), name, f"duplicate subset names: {name}"))
        names.add(name)
        check_subset_name(name, child(path, "name"), errs)
        check_labels(get(subset, "labels"), child(path, "labels"), errs)
        _check_traffic_policy(get(subset, "trafficPolicy"), child(path, "trafficPolicy"), errs)

    check_export_to(namespace, get(spec, "exportTo"), "spec.exportTo", errs,
                    dr_with_selector=get(spec, "workloadSelector") is not None)
    return errs


def _check_traffic_policy(policy: Any, path: str, errs: list[FieldError]) -> None:
    if policy is None:
        return
    if not any(get(policy, f) is not None for f in _POLICY_FIELDS):
        errs.append(FieldError(path, "traffic policy must have at least one field"))
        return
    if get(policy, "tunnel") is not None and get(policy, "proxyProtocol") is not None:
        errs.append(FieldError(path, "tunnel and proxyProtocol must not be set together"))
        return
    _check_policy_parts(policy, path, errs)
    for i, port_policy in enumerate(get(policy, "portLevelSettings", [])):
        pp = index(child(path, "portLevelSettings"), i)
        port = get(port_policy, "port")
        if port is None:
            errs.append(FieldError(child(pp, "port"), "Required value: portTrafficPolicy must have valid port"))
        elif get(port, "number") is not None:
            check_port(port["number"], child(child(pp, "port"), "number"), errs)
        if not any(get(port_policy, f) is not None for f in _PORT_POLICY_FIELDS):
            errs.append(FieldError(pp, "port traffic policy must have at least one field"))
        else:
            _check_policy_parts(port_policy, pp, errs)
    _check_tunnel(get(policy, "tunnel"), child(path, "tunnel"), errs)


def _check_policy_parts(policy: dict, path: str, errs: list[FieldError]) -> None:
    outlier = get(policy, "outlierDetection")
    _check_outlier_detection(outlier, child(path, "outlierDetection"), errs)
    _check_connection_pool(get(policy, "connectionPool"), child(path, "connectionPool"), errs)
    _check_load_balancer(get(policy, "loadBalancer"), outlier, child(path, "loadBalancer"), errs)
    _check_client_tls(get(policy, "tls"), child(path, "tls"), errs)


def _check_outlier_detection(outlier: Any, path: str, errs: list[FieldError]) -> None:
    if outlier is None:
        return
    for field in ("baseEjectionTime", "interval"):
        if get(outlier, field) is not None:
            check_duration(outlier[field], child(path, field), errs)
    if not get(outlier, "splitExternalLocalOriginErrors", False) and get(outlier, "consecutiveLocalOriginFailures", 0) > 0:
        errs.append(FieldError(child(path, "consecutiveLocalOriginFailures"),
                               "outlier detection consecutive local origin failures is specified, but split "
                               "external local origin errors is set to false"))
    for field in ("maxEjectionPercent", "minHealthPercent"):
        check_percent(get(outlier, field), child(path, field), errs)


def _check_connection_pool(pool: Any, path: str, errs: list[FieldError]) -> None:
    if pool is None:
        return
    http, tcp = get(pool, "http"), get(pool, "tcp")
    if http is None and tcp is None:
        errs.append(FieldError(path, "connection pool must have at least one field"))
        return
    if http is not None:
        hp = child(path, "http")
        for field in ("http1MaxPendingRequests", "http2MaxRequests", "maxRequestsPerConnection", "maxRetries",
                      "maxConcurrentStreams"):
            value = get(http, field, 0)
            if value < 0:
                errs.append(invalid(child(hp, field), value, "must be non-negative"))
        if get(http, "idleTimeout") is not None:
            check_duration(http["idleTimeout"], child(hp, "idleTimeout"), errs)
        if get(http, "h2UpgradePolicy") == "UPGRADE" and get(http, "useClientProtocol", False):
            errs.append(FieldError(child(hp, "useClientProtocol"),
                                   "use client protocol must not be true when H2UpgradePolicy is UPGRADE"))
    if tcp is not None:
        tp = child(path, "tcp")
        if get(tcp, "maxConnections", 0) < 0:
            errs.append(invalid(child(tp, "maxConnections"), tcp["maxConnections"], "max connections must be non-negative"))
        for field in ("connectTimeout", "maxConnectionDuration"):
            if get(tcp, field) is not None:
                check_duration(tcp[field], child(tp, field), errs)
        idle = get(tcp, "idleTimeout")
        # idleTimeout: 0s disables the timeout, so it is exempt from the >= 1ms rule.
        if idle is not None and not (durations.is_valid(idle) and durations.parse_duration(idle) == 0):
            check_duration(idle, child(tp, "idleTimeout"), errs)
        keepalive = get(tcp, "tcpKeepalive")
        for field in ("time", "interval"):
            if get(keepalive, field) is not None:
                check_duration(keepalive[field], child(child(tp, "tcpKeepalive"), field), errs)


def _check_load_balancer(lb: Any, outlier: Any, path: str, errs: list[FieldError]) -> None:
    if lb is None:
        return
    ch = get(lb, "consistentHash")
    if ch is not None:
        cp = child(path, "consistentHash")
        if get(ch, "minimumRingSize", 0) != 0 and (get(ch, "ringHash") is not None or get(ch, "maglev") is not None):
            errs.append(FieldError(cp, "only one of MinimumRingSize or Maglev/Ringhash can be specified"))
        maglev = get(ch, "maglev")
        if maglev is not None:
            size = get(maglev, "tableSize", 0)
            sp = child(child(cp, "maglev"), "tableSize")
            if size == 0:
                errs.append(FieldError(sp, "Required value: tableSize must be set for maglev"))
            elif size >= _MAGLEV_MAX_TABLE:
                errs.append(invalid(sp, size, f"tableSize must be less than {_MAGLEV_MAX_TABLE} for maglev"))
            elif not _is_prime(size):
                errs.append(invalid(sp, size, "tableSize must be a prime number for maglev"))
    _check_locality_lb(get(lb, "localityLbSetting"), outlier, child(path, "localityLbSetting"), errs)
    warmup = get(lb, "warmup")
    if warmup is not None:
        wp = child(path, "warmup")
        if get(warmup, "duration") is not None:
            check_duration(warmup["duration"], child(wp, "duration"), errs)
        if get(warmup, "minimumPercent", 0) > 100:
            errs.append(invalid(child(wp, "minimumPercent"), warmup["minimumPercent"],
                                "minimumPercent value should be less than or equal to 100"))
        if get(warmup, "aggression") is not None and warmup["aggression"] < 1:
            errs.append(invalid(child(wp, "aggression"), warmup["aggression"],
                                "aggression should be greater than or equal to 1"))
    if get(lb, "warmupDurationSecs") is not None:
        check_duration(lb["warmupDurationSecs"], child(path, "warmupDurationSecs"), errs)


def _is_prime(x: float) -> bool:
    # Same shortcut as Envoy's (and so Istio's) isPrime: 1, 2 and 3 count as prime.
    x = int(x)
    if 0 < x < 4:
        return True
    if x % 2 == 0:
        return False
    return all(x % f for f in range(3, math.isqrt(x) + 1, 2))


def _check_locality_lb(lb: Any, outlier: Any, path: str, errs: list[FieldError]) -> None:
    if lb is None:
        return
    distribute, failover = get(lb, "distribute", []), get(lb, "failover", [])
    if distribute and failover:
        errs.append(FieldError(path, "can not simultaneously specify 'distribute' and 'failover'"))
        return
    if failover:
        for label in get(lb, "failoverPriority", []):
            if label in _TOPOLOGY_LABELS:
                errs.append(FieldError(child(path, "failoverPriority"),
                                       f"can not simultaneously set 'failover' and topology label '{label}' in "
                                       "'failover_priority'"))
                return
    sources = []
    for i, rule in enumerate(distribute):
        dp = index(child(path, "distribute"), i)
        sources.append(get(rule, "from", ""))
        to = get(rule, "to", {})
        if any(not 0 < w <= 100 for w in to.values()):
            errs.append(FieldError(child(dp, "to"), "locality weight must be in range [1, 100]"))
            return
        if sum(to.values()) != 100:
            errs.append(FieldError(child(dp, "to"), f"total locality weight {sum(to.values())} != 100"))
            return
        err = _localities_error(list(to))
        if err:
            errs.append(FieldError(child(dp, "to"), err))
    err = _localities_error(sources)
    if err:
        errs.append(FieldError(child(path, "distribute"), err))
    for i, rule in enumerate(failover):
        fp = index(child(path, "failover"), i)
        src, dst = get(rule, "from", ""), get(rule, "to", "")
        if src == dst:
            errs.append(FieldError(fp, "locality lb failover settings must specify different regions"))
        if "/" in src or "/" in dst:
            errs.append(FieldError(fp, "locality lb failover only specify region"))
        if "*" in src or "*" in dst:
            errs.append(FieldError(fp, "locality lb failover region should not contain '*' wildcard"))


def _localities_error(localities: list[str]) -> str | None:
    """Localities (region/zone/subzone, `*` only at the end) must not overlap one another."""
    seen: list[tuple[str, ...]] = []
    for loc in localities:
        stars = loc.count("*")
        if stars and (stars > 1 or not loc.endswith("*")):
            return f"locality {loc} wildcard '*' number can not exceed 1 and must be in the end"
        parts = tuple(loc.split("/", 2))
        if any(p == "" for p in parts):
            return f"locality {loc} must not contain empty region/zone/subzone info"
        key = parts[:-1] if parts[-1] == "*" else parts
        for other in seen:
            shorter = min(len(key), len(other))
            if key[:shorter] == other[:shorter]:
                return f"locality {loc} overlap with previous specified ones"
        seen.append(key)
    return None


def _check_client_tls(tls: Any, path: str, errs: list[FieldError]) -> None:
    """ClientTLSSettings, as Istio's agent.ValidateTLS."""
    if tls is None:
        return
    mode = get(tls, "mode", "DISABLE")
    credential = get(tls, "credentialName", "")
    if get(tls, "insecureSkipVerify", False):
        if mode == "SIMPLE" and (get(tls, "caCertificates") or credential or get(tls, "subjectAltNames") is not None):
            errs.append(FieldError(path, "cannot specify CaCertificates or CredentialName or SubjectAltNames when "
                                         "InsecureSkipVerify is set true"))
        if mode == "MUTUAL" and (get(tls, "caCertificates") or get(tls, "subjectAltNames") is not None):
            errs.append(FieldError(path, "cannot specify CaCertificates or SubjectAltNames when InsecureSkipVerify "
                                         "is set true"))
    if mode in ("SIMPLE", "MUTUAL") and credential:
        if any(get(tls, k) for k in ("clientCertificate", "caCertificates", "privateKey", "caCrl")):
            errs.append(FieldError(path, "cannot specify client certificates or CA certificate or CA CRL If "
                                         "credentialName is set"))
        return
    if mode == "MUTUAL":
        if not get(tls, "clientCertificate"):
            errs.append(FieldError(child(path, "clientCertificate"), "client certificate required for mutual tls"))
        if not get(tls, "privateKey"):
            errs.append(FieldError(child(path, "privateKey"), "private key required for mutual tls"))


def _check_tunnel(tunnel: Any, path: str, errs: list[FieldError]) -> None:
    if tunnel is None:
        return
    protocol = get(tunnel, "protocol", "")
    if protocol not in ("", "CONNECT", "POST"):
        errs.append(invalid(child(path, "protocol"), protocol, 'tunnel protocol must be "CONNECT" or "POST"'))
    target = get(tunnel, "targetHost", "")
    if dns.check_fqdn(target) and not dns.is_ip(target):
        errs.append(invalid(child(path, "targetHost"), target, "tunnel target host must be valid FQDN or IP address"))
    check_port(get(tunnel, "targetPort", 0), child(path, "targetPort"), errs)

