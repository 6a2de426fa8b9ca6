"""What a VirtualService `http` rule adds to its routes besides where they go: retries
(istiod's retry defaults and `retryOn` parsing), fault injection and CORS, as istiod
builds them.
"""
from __future__ import annotations

from envoy.config.route.v3 import route_components_pb2 as rc
from envoy.extensions.filters.common.fault.v3 import fault_pb2 as common_fault_pb2
from envoy.extensions.filters.http.cors.v3 import cors_pb2
from envoy.extensions.filters.http.fault.v3 import fault_pb2
from envoy.extensions.retry.host.previous_hosts.v3 import previous_hosts_pb2
from envoy.extensions.retry.priority.previous_priorities.v3 import previous_priorities_config_pb2
from google.protobuf import wrappers_pb2

from ..config.types.virtualservice import (
    CorsPolicy,
    HTTPFaultInjection,
    HTTPRetry,
)
from .convert import fractional_percent, integer_percent, proto_duration, string_matcher, typed

DEFAULT_RETRY_ON = "connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes"

# gRPC status names Istio accepts in `fault.abort.grpcStatus`.
GRPC_STATUS = {
    "OK": 0, "CANCELLED": 1, "UNKNOWN": 2, "INVALID_ARGUMENT": 3, "DEADLINE_EXCEEDED": 4,
    "NOT_FOUND": 5, "ALREADY_EXISTS": 6, "PERMISSION_DENIED": 7, "RESOURCE_EXHAUSTED": 8,
    "FAILED_PRECONDITION": 9, "ABORTED": 10, "OUT_OF_RANGE": 11, "UNIMPLEMENTED": 12,
    "INTERNAL": 13, "UNAVAILABLE": 14, "DATA_LOSS": 15, "UNAUTHENTICATED": 16,
}



def retry_policy(retries: HTTPRetry | None, consistent_hash: bool = False,
                 mesh_default: HTTPRetry | None = None) -> rc.RetryPolicy | None:
    """Istio's default retry policy, overridden by the VirtualService `retries`, or else by
    the mesh config's `defaultHttpRetryPolicy` (`mesh_default`; istiod reads it in place
    of a rule's missing `retries`, and for routes without a VirtualService); attempts 0
    (or `retries` without attempts) turns retries off."""
    if retries is None:
        retries = mesh_default
    out = rc.RetryPolicy(
        retry_on=DEFAULT_RETRY_ON,
        num_retries=wrappers_pb2.UInt32Value(value=2),
        host_selection_retry_max_attempts=5,
        retriable_status_codes=[503],
    )
    if not consistent_hash:
        # Retry on another host; not with consistent hashing, which must stick to its host.
        out.retry_host_predicate.append(_previous_hosts())
    if retries is None:
        return out
    attempts = retries.attempts
    if attempts <= 0:
        return None
    out.num_retries.value = attempts
    if retries.retry_on:
        on, codes = _parse_retry_on(retries.retry_on)
        if codes and "retriable-status-codes" not in on:
            on = f"{on},retriable-status-codes" if on else "retriable-status-codes"
        out.retry_on = on
        del out.retriable_status_codes[:]
        out.retriable_status_codes.extend(codes)
    if (d := proto_duration(retries.per_try_timeout)) is not None:
        out.per_try_timeout.CopyFrom(d)
    if retries.retry_ignore_previous_hosts is not None:
        del out.retry_host_predicate[:]
        if retries.retry_ignore_previous_hosts:
            out.retry_host_predicate.append(_previous_hosts())
    if retries.retry_remote_localities:
        out.retry_priority.name = "envoy.retry_priorities.previous_priorities"
        out.retry_priority.typed_config.CopyFrom(
            typed(previous_priorities_config_pb2.PreviousPrioritiesConfig(update_frequency=2))
        )
    if (d := proto_duration(retries.backoff)) is not None:
        out.retry_back_off.base_interval.CopyFrom(d)
    return out


def _previous_hosts() -> rc.RetryPolicy.RetryHostPredicate:
    return rc.RetryPolicy.RetryHostPredicate(
        name="envoy.retry_host_predicates.previous_hosts",
        typed_config=typed(previous_hosts_pb2.PreviousHostsPredicate()),
    )


def _parse_retry_on(text: str) -> tuple[str, list[int]]:
    """Numbers among `retryOn` are status codes to retry on (istiod's parseRetryOn)."""
    conditions, codes = [], []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        if part.isdigit() and 100 <= int(part) <= 599:
            codes.append(int(part))
        else:
            conditions.append(part)
    return ",".join(conditions), codes


def fault(f: HTTPFaultInjection | None) -> fault_pb2.HTTPFault | None:
    if f is None:
        return None
    out = fault_pb2.HTTPFault()
    delay = f.delay
    fixed = proto_duration(delay.fixed_delay) if delay is not None else None
    if delay is not None and fixed is not None:  # exponential delays are not supported by istiod either
        d = common_fault_pb2.FaultDelay(fixed_delay=fixed)
        if delay.percentage is not None:
            d.percentage.CopyFrom(fractional_percent(delay.percentage))
        else:
            d.percentage.CopyFrom(integer_percent(delay.percent))  # deprecated; absent means 0%
        out.delay.CopyFrom(d)
    abort = f.abort
    if abort is not None:
        a = fault_pb2.FaultAbort()
        if abort.percentage is not None:
            a.percentage.CopyFrom(fractional_percent(abort.percentage))
        if abort.http_status is not None:
            a.http_status = abort.http_status
            out.abort.CopyFrom(a)
        elif abort.grpc_status in GRPC_STATUS:
            a.grpc_status = GRPC_STATUS[abort.grpc_status]
            out.abort.CopyFrom(a)
    if not out.HasField("delay") and not out.HasField("abort"):
        return None
    return out


def cors(policy: CorsPolicy | None) -> cors_pb2.CorsPolicy | None:
    if policy is None:
        return None
    out = cors_pb2.CorsPolicy()
    out.forward_not_matching_preflights.value = policy.unmatched_preflights != "IGNORE"
    if policy.allow_origins:
        for o in policy.allow_origins:
            if (m := string_matcher(o)) is not None:
                out.allow_origin_string_match.append(m)
    else:
        for exact in policy.allow_origin:  # deprecated exact-match list
            out.allow_origin_string_match.add(exact=exact)
    out.filter_enabled.default_value.numerator = 100
    if policy.allow_credentials is not None:
        out.allow_credentials.value = policy.allow_credentials
    out.allow_headers = ",".join(policy.allow_headers)
    out.allow_methods = ",".join(policy.allow_methods)
    out.expose_headers = ",".join(policy.expose_headers)
    if policy.max_age is not None:
        out.max_age = str(policy.max_age.seconds)
    return out
