"""Sidecar semantics beyond the schema, after Istio's ValidateSidecar.

Istio's warnings (duplicated egress hosts, `*/*` beside other hosts, a selector without
labels) do not reject a Sidecar there and do not here either; everything Istio rejects is
rejected, with its wording. What Istio accepts but meshd does not serve (egress listeners
on a Unix socket, the catch-all or HTTP_PROXY with an address, ingress `tls` without a
mode to terminate) is rejected too, naming the field: served without it, the Sidecar would
not do what it says (docs/sidecar-scope.md)."""
from __future__ import annotations

from typing import Any

from . import dns
from .destinationrule import _check_connection_pool
from .errors import FieldError, child, index, invalid, map_key
from .gateway import UNIX_PREFIX, _check_tls_options, unix_address_error
from .istio_common import check_destination, check_port, get

_LOCAL_HOSTS = ("127.0.0.1", "0.0.0.0", "::1", "::")
# Istio's protocol.Parse (case-insensitive): anything else is unrecognized.
_PROTOCOLS = frozenset({"TCP", "UDP", "GRPC", "GRPC-WEB", "HTTP", "HTTP_PROXY", "HTTP2", "HTTPS", "TLS", "MONGO",
                        "REDIS", "MYSQL"})


def validate_sidecar(spec: dict, namespace: str | None) -> list[FieldError]:
    errs: list[FieldError] = []
    selector = get(spec, "workloadSelector")
    for key, value in (get(selector, "labels", {}) or {}).items():
        path = map_key("spec.workloadSelector.labels", key)
        if key == "":
            errs.append(invalid(path, key, f"empty key is not supported in selector: \"{key}={value}\""))
        if "*" in key or "*" in str(value):
            errs.append(invalid(path, value, f"wildcard is not supported in selector: \"{key}={value}\""))
    if errs:
        return errs
    if not any(get(spec, f) is not None and get(spec, f) != [] for f in
               ("egress", "ingress", "outboundTrafficPolicy", "inboundConnectionPool")):
        return [FieldError("spec", "sidecar: empty configuration provided")]

    ports: set[int] = set()
    for i, listener in enumerate(get(spec, "ingress", [])):
        _check_ingress(listener, index("spec.ingress", i), ports, errs)
    _check_connection_pool(get(spec, "inboundConnectionPool"), "spec.inboundConnectionPool", errs)

    ports = set()
    sockets: set[str] = set()
    egress = get(spec, "egress", [])
    catch_all = False
    for i, listener in enumerate(egress):
        path = index("spec.egress", i)
        port = get(listener, "port")
        if port is None:
            if catch_all:
                errs.append(FieldError(path, "sidecar: egress can have only one listener with empty port"))
                continue
            if i == len(egress) - 1:
                catch_all = True
            else:
                errs.append(FieldError(path, "sidecar: the egress listener with empty port should be the last listener in the list"))
        else:
            bind = get(listener, "bind", "")
            _check_egress_port(port, bind, get(listener, "captureMode", "DEFAULT"), path, errs)
            number = get(port, "number", 0)
            if number == 0:
                if bind in sockets:
                    errs.append(invalid(child(path, "bind"), bind, "sidecar: unix domain socket values for listeners must be unique"))
                sockets.add(bind)
            else:
                if number in ports:
                    errs.append(invalid(child(child(path, "port"), "number"), number, "sidecar: ports on IP bound listeners must be unique"))
                ports.add(number)
        hosts = get(listener, "hosts", [])
        if not hosts:
            errs.append(FieldError(child(path, "hosts"), "sidecar: egress listener must contain at least one host"))
        for j, host in enumerate(hosts):
            err = egress_host_error(host)
            if err:
                errs.append(invalid(index(child(path, "hosts"), j), host, err))

    _unserved(spec, errs)
    policy = get(spec, "outboundTrafficPolicy")
    proxy = get(policy, "egressProxy")
    if proxy is not None:
        path = "spec.outboundTrafficPolicy.egressProxy"
        if get(policy, "mode", "REGISTRY_ONLY") != "ALLOW_ANY":
            errs.append(FieldError(path, "sidecar: egress_proxy must be set only with ALLOW_ANY outbound_traffic_policy mode"))
        else:
            err = dns.check_fqdn(get(proxy, "host", ""))
            if err:
                errs.append(invalid(child(path, "host"), get(proxy, "host", ""), err))
            if get(proxy, "port") is None:
                errs.append(FieldError(child(path, "port"), "sidecar: egress_proxy port must be non-nil"))
            else:
                check_destination(proxy, path, errs)
    return errs


_NOT_SERVED = "meshd does not serve this field of a Sidecar yet (docs/sidecar-scope.md)"


def _unserved(spec: dict, errs: list[FieldError]) -> None:
    for i, listener in enumerate(get(spec, "egress", [])):
        path = index("spec.egress", i)
        if _served_address(listener):
            continue
        if get(listener, "bind"):
            errs.append(invalid(child(path, "bind"), listener["bind"], _NOT_SERVED))
        if get(listener, "captureMode") == "NONE":
            errs.append(invalid(child(path, "captureMode"), "NONE", _NOT_SERVED))
    for i, listener in enumerate(get(spec, "ingress", [])):
        mode = get(get(listener, "tls"), "mode", "PASSTHROUGH")
        if get(listener, "tls") is not None and mode not in ("SIMPLE", "MUTUAL", "OPTIONAL_MUTUAL", "ISTIO_MUTUAL",
                                                             "AUTO_PASSTHROUGH"):
            # A sidecar terminates TLS (Istio's docs: SIMPLE and MUTUAL); PASSTHROUGH would leave
            # the port with a TLS context and no certificate.
            errs.append(invalid(child(child(index("spec.ingress", i), "tls"), "mode"), mode,
                                f"a sidecar ingress listener terminates TLS (SIMPLE, MUTUAL or OPTIONAL_MUTUAL): {_NOT_SERVED}"))


def _served_address(listener: Any) -> bool:
    """An egress listener's `bind` and `captureMode: NONE` are served on an IP port of
    any protocol but HTTP_PROXY; not on a Unix domain socket or the catch-all."""
    port = get(listener, "port")
    return (port is not None and get(port, "number", 0) > 0
            and str(get(port, "protocol", "")).upper() != "HTTP_PROXY")


def egress_host_error(host: str) -> str | None:
    """An egress host: `namespace/dnsName`, the namespace `*`, `.`, `~` or a DNS label."""
    ns, slash, name = host.partition("/")
    if not slash:
        return "host must be of form namespace/dnsName"
    if not ns or not name:
        return "config namespace and dnsName in host entry cannot be empty"
    if ns not in ("*", ".", "~") and not dns.is_k8s_label(ns):
        return f"invalid namespace value \"{ns}\" in sidecar"
    if name != "*" and "." not in name:
        return "short names (non FQDN) are not allowed"
    return dns.check_wildcard_domain(name) or dns.check_partial_wildcard(name)


def _check_port_common(port: Any, path: str, errs: list[FieldError]) -> None:
    name = get(port, "name", "")
    if name and not dns.is_k8s_label(name):
        errs.append(invalid(child(path, "name"), name, f"invalid port name: {name}"))
    proto = get(port, "protocol", "")
    if str(proto).upper() not in _PROTOCOLS:
        errs.append(invalid(child(path, "protocol"), proto, f"unrecognized protocol \"{proto}\""))
    if get(port, "targetPort", 0) > 0:
        errs.append(FieldError(child(path, "targetPort"), "targetPort has no impact on Sidecars"))


def _check_bind_ip(bind: str, path: str, errs: list[FieldError]) -> None:
    if bind and not dns.is_ip(bind):
        errs.append(invalid(path, bind, f"{bind} is not a valid IP"))


def _check_egress_port(port: Any, bind: str, capture: str, path: str, errs: list[FieldError]) -> None:
    port_path = child(path, "port")
    _check_port_common(port, port_path, errs)
    if get(port, "number", 0) == 0:
        if not bind.startswith(UNIX_PREFIX):
            errs.append(FieldError(child(path, "bind"), "sidecar: ports with 0 value must have a unix domain socket bind address"))
        else:
            err = unix_address_error(bind[len(UNIX_PREFIX):])
            if err:
                errs.append(invalid(child(path, "bind"), bind, err))
        if capture not in ("DEFAULT", "NONE"):
            errs.append(invalid(child(path, "captureMode"), capture,
                                "sidecar: captureMode must be DEFAULT/NONE for unix domain socket listeners"))
        return
    check_port(get(port, "number", 0), child(port_path, "number"), errs)
    _check_bind_ip(bind, child(path, "bind"), errs)


def _check_ingress(listener: Any, path: str, ports: set[int], errs: list[FieldError]) -> None:
    port = get(listener, "port")
    if port is None:
        errs.append(FieldError(child(path, "port"), "sidecar: port is required for ingress listeners"))
        return
    _check_port_common(port, child(path, "port"), errs)
    number = get(port, "number", 0)
    check_port(number, child(child(path, "port"), "number"), errs)
    _check_bind_ip(get(listener, "bind", ""), child(path, "bind"), errs)
    if number in ports:
        errs.append(invalid(child(child(path, "port"), "number"), number, "sidecar: ports on IP bound listeners must be unique"))
    ports.add(number)
    endpoint = get(listener, "defaultEndpoint", "")
    if endpoint:
        _check_default_endpoint(endpoint, child(path, "defaultEndpoint"), errs)
    tls = get(listener, "tls")
    if tls is not None:
        tpath = child(path, "tls")
        for fld, what in (("subjectAltNames", "subjectAltNames is not supported in ingress tls"),
                          ("httpsRedirect", "httpsRedirect is not supported"),
                          ("credentialName", "credentialName is not currently supported"),
                          ("credentialNames", "credentialNames is not currently supported"),
                          ("tlsCertificates", "tls_certificates is not currently supported")):
            if get(tls, fld):
                errs.append(FieldError(child(tpath, fld), f"sidecar: {what}"))
        mode = get(tls, "mode", "PASSTHROUGH")
        if mode in ("ISTIO_MUTUAL", "AUTO_PASSTHROUGH"):
            errs.append(invalid(child(tpath, "mode"), mode, f"configuration is invalid: cannot set mode to {mode} in sidecar ingress tls"))
        if str(get(port, "protocol", "")).upper() not in ("HTTPS", "TLS"):
            errs.append(FieldError(tpath, "server cannot have TLS settings for non HTTPS/TLS ports"))
        _check_tls_options(tls, tpath, errs)
    _check_connection_pool(get(listener, "connectionPool"), child(path, "connectionPool"), errs)


def _check_default_endpoint(endpoint: str, path: str, errs: list[FieldError]) -> None:
    if endpoint.startswith(UNIX_PREFIX):
        err = unix_address_error(endpoint[len(UNIX_PREFIX):])
        if err:
            errs.append(invalid(path, endpoint, err))
        return
    host, colon, port = endpoint.rpartition(":")
    if not colon:
        errs.append(invalid(path, endpoint, f"address {endpoint}: missing port in address"))
        return
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if host and host not in _LOCAL_HOSTS:
        errs.append(invalid(path, endpoint, "sidecar: defaultEndpoint must be of form 127.0.0.1:<port>,0.0.0.0:<port>,"
                                            "[::1]:port,[::]:port,unix://filepath or unset"))
    if not port.isdigit():
        errs.append(invalid(path, endpoint, f"sidecar: defaultEndpoint port ({port}) is not a number"))
    else:
        check_port(int(port), path, errs)
