"""Gateway semantics beyond the schema, after Istio's ValidateGateway / validateServer."""
from __future__ import annotations

from typing import Any

from . import dns
from .errors import FieldError, child, index, invalid
from .istio_common import check_port, get

UNIX_PREFIX = "unix://"

# Istio's protocol.Parse (case-insensitive); anything else is "unsupported".
_PROTOCOLS = {p.lower(): p for p in (
    "TCP", "UDP", "GRPC", "GRPC-Web", "HTTP", "HTTP_PROXY", "HTTP2", "HTTPS", "TLS", "Mongo", "Redis", "MySQL",
)}
_HTTP = frozenset({"HTTP", "HTTP2", "HTTP_PROXY", "GRPC", "GRPC-Web"})
_TLS = frozenset({"HTTPS", "TLS"})


def validate_gateway(spec: dict, name: str | None) -> list[FieldError]:
    errs: list[FieldError] = []
    # Gateway names end up in listener and route names: Istio wants a DNS label (no dots).
    if isinstance(name, str) and name and not dns.is_istio_label(name):
        errs.append(invalid("metadata.name", name, f"invalid gateway name: \"{name}\""))
    servers: list = get(spec, "servers", [])
    if not servers:
        errs.append(FieldError("spec.servers", "gateway must have at least one server"))
    port_names: set[str] = set()
    for i, server in enumerate(servers):
        path = index("spec.servers", i)
        _validate_server(server, path, errs)
        port = get(server, "port")
        if port is not None:
            port_name = get(port, "name", "")
            if port_name in port_names:
                errs.append(invalid(child(child(path, "port"), "name"), port_name,
                                    f"port names in servers must be unique: duplicate name {port_name}"))
            port_names.add(port_name)
    return errs


def _validate_server(server: dict, path: str, errs: list[FieldError]) -> None:
    hosts = get(server, "hosts", [])
    if not hosts:
        errs.append(FieldError(child(path, "hosts"), "server config must contain at least one host"))
    for i, host in enumerate(hosts):
        err = namespace_slash_host_error(host)
        if err:
            errs.append(invalid(index(child(path, "hosts"), i), host, err))

    bind = get(server, "bind", "")
    port = get(server, "port")
    before = len(errs)
    _check_server_port(port, bind, child(path, "port"), errs)
    port_ok = len(errs) == before
    _check_bind(port, bind, path, errs)
    tls = get(server, "tls")
    _check_tls_options(tls, child(path, "tls"), errs)

    if port_ok:
        protocol = _PROTOCOLS.get(get(port, "protocol", "").lower())
        if protocol in _TLS and tls is None:
            errs.append(FieldError(child(path, "tls"), "server must have TLS settings for HTTPS/TLS protocols"))
        elif protocol not in _TLS and tls is not None:
            if protocol in _HTTP:
                # Only httpsRedirect makes sense on a plain-text HTTP server.
                passthrough = get(tls, "mode", "PASSTHROUGH") in ("PASSTHROUGH", "AUTO_PASSTHROUGH")
                certs = any(get(tls, k) for k in ("caCertificates", "privateKey", "serverCertificate"))
                if not passthrough or certs:
                    errs.append(FieldError(child(path, "tls"), "server cannot have TLS settings for plain text HTTP ports"))
            else:
                errs.append(FieldError(child(path, "tls"), "server cannot have TLS settings for non HTTPS/TLS ports"))


def _check_server_port(port: Any, bind: str, path: str, errs: list[FieldError]) -> None:
    if port is None:
        errs.append(FieldError(path, "Required value: port is required"))
        return
    protocol = get(port, "protocol", "")
    if protocol.lower() not in _PROTOCOLS:
        errs.append(invalid(child(path, "protocol"), protocol,
                            f"invalid protocol \"{protocol}\", supported protocols are HTTP, HTTP2, GRPC, GRPC-WEB, "
                            "MONGO, REDIS, MYSQL, TCP"))
    number = get(port, "number", 0)
    if number > 0 or not bind.startswith(UNIX_PREFIX):
        check_port(number, child(path, "number"), errs)
    if get(port, "targetPort", 0) > 0:
        errs.append(FieldError(child(path, "targetPort"), "targetPort has no impact on Gateways"))
    if not get(port, "name"):
        errs.append(FieldError(child(path, "name"), "Required value: port name must be set"))


def _check_bind(port: Any, bind: str, server_path: str, errs: list[FieldError]) -> None:
    path = child(server_path, "bind")
    if bind.startswith(UNIX_PREFIX):
        err = unix_address_error(bind[len(UNIX_PREFIX):])
        if err:
            errs.append(invalid(path, bind, err))
        if get(port, "number", 0) != 0:
            errs.append(FieldError(child(child(server_path, "port"), "number"),
                                   "port number must be 0 for unix domain socket"))
    elif bind and not dns.is_ip(bind):
        errs.append(invalid(path, bind, f"{bind} is not a valid IP"))


def unix_address_error(addr: str) -> str | None:
    if not addr:
        return "unix address must not be empty"
    if addr.startswith("@"):  # abstract socket
        return None
    if not addr.startswith("/") or addr.endswith("/"):
        return f"{addr} is not an absolute path to a file"
    return None


def namespace_slash_host_error(host: str) -> str | None:
    """A Gateway server host: `host`, or `ns/host` where ns is `*`, `.` or a namespace."""
    ns, slash, dns_name = host.partition("/")
    if not slash:
        return _gateway_host_part_error(host)
    if not ns or not dns_name:
        return "config namespace and dnsName in host entry cannot be empty"
    if ns not in ("*", ".") and not dns.is_istio_label(ns):
        return f"invalid namespace value \"{ns}\" in gateway"
    return _gateway_host_part_error(dns_name)


def _gateway_host_part_error(host: str) -> str | None:
    if host != "*" and "." not in host:
        return "short names (non FQDN) are not allowed"
    err = dns.check_wildcard_domain(host)
    if err and not dns.is_ip(host):  # a Gateway may name an IP address
        return err
    return dns.check_partial_wildcard(host)


def _check_tls_options(tls: Any, path: str, errs: list[FieldError]) -> None:
    """ServerTLSSettings: which certificate sources each mode needs or forbids."""
    if tls is None:
        return
    mode = get(tls, "mode", "PASSTHROUGH")
    server_cert, key, ca = (get(tls, k, "") for k in ("serverCertificate", "privateKey", "caCertificates"))
    credential, credentials, tls_certs = get(tls, "credentialName", ""), get(tls, "credentialNames", []), \
        get(tls, "tlsCertificates", [])

    if mode == "ISTIO_MUTUAL":
        for value, text in ((server_cert, "server certificate"), (key, "private key"), (ca, "CA bundle"),
                            (tls_certs, "tlsCertificates"), (credential, "credentialName"),
                            (credentials, "credentialNames")):
            if value:
                errs.append(FieldError(path, f"ISTIO_MUTUAL TLS cannot have associated {text}"))
        return

    sources = sum(bool(x) for x in (server_cert and key, credential, credentials, tls_certs))
    if sources > 1:
        errs.append(FieldError(path, "only one of credential_name, credential_names, server_certificate/private_key, "
                                     "tls_certificates should be specified"))
    mutual = mode in ("MUTUAL", "OPTIONAL_MUTUAL")
    if mode in ("SIMPLE", "MUTUAL", "OPTIONAL_MUTUAL") and not (credential or credentials):
        # Without a credential (Secret) the certificates must be given as files.
        prefix = "MUTUAL TLS" if mutual else "SIMPLE TLS"
        if mutual and not ca:
            errs.append(FieldError(child(path, "caCertificates"), f"{prefix} requires a client CA bundle"))
        certs = tls_certs or [{"serverCertificate": server_cert, "privateKey": key}]
        for cert in certs:
            if not get(cert, "serverCertificate"):
                errs.append(FieldError(child(path, "serverCertificate" if not tls_certs else "tlsCertificates"),
                                       f"{prefix} requires a server certificate"))
            if not get(cert, "privateKey"):
                errs.append(FieldError(child(path, "privateKey" if not tls_certs else "tlsCertificates"),
                                       f"{prefix} requires a private key"))
    if get(tls, "caCrl"):
        if credential:
            errs.append(FieldError(child(path, "caCrl"),
                                   "CRL is not supported with credentialName. CRL has to be specified in the credential"))
        if mode == "SIMPLE":
            errs.append(FieldError(child(path, "caCrl"), "CRL is not supported with SIMPLE TLS"))
