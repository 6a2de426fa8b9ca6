"""Name checks shared by the Istio and Kubernetes validators: DNS labels and subdomains,
hostnames with wildcards, IP addresses, label keys and values.

Each check returns an error message (str) or None, so callers can attach their own path.
The Istio variants follow istio/pkg/config/labels and pkg/config/validation/agent; the
Kubernetes ones follow apimachinery's validation package.
"""
from __future__ import annotations

import ipaddress
import re

# Istio's DNS label (labels.IsDNS1123Label) tolerates upper case; Kubernetes' does not.
_ISTIO_LABEL = re.compile(r"^[a-zA-Z0-9](?:[-a-zA-Z0-9]*[a-zA-Z0-9])?$")
_ISTIO_WILDCARD_LABEL = re.compile(r"^(?:\*|(?:\*|\*-)?[a-zA-Z0-9](?:[-a-zA-Z0-9]*[a-zA-Z0-9])?)$")
_K8S_LABEL = re.compile(r"^[a-z0-9](?:[-a-z0-9]*[a-z0-9])?$")
_K8S_1035_LABEL = re.compile(r"^[a-z](?:[-a-z0-9]*[a-z0-9])?$")
_K8S_SUBDOMAIN = re.compile(r"^[a-z0-9](?:[-a-z0-9]*[a-z0-9])?(?:\.[a-z0-9](?:[-a-z0-9]*[a-z0-9])?)*$")
_QUALIFIED_NAME = re.compile(r"^(?:[A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")
_LABEL_VALUE = re.compile(r"^(?:(?:[A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
_IANA_SVC_NAME = re.compile(r"^[a-z0-9](?:[a-z0-9-]*[a-z0-9])?$")


def is_istio_label(value: str) -> bool:
    return len(value) <= 63 and bool(_ISTIO_LABEL.match(value))


def is_k8s_label(value: str) -> bool:
    return len(value) <= 63 and bool(_K8S_LABEL.match(value))


def is_k8s_1035_label(value: str) -> bool:
    return len(value) <= 63 and bool(_K8S_1035_LABEL.match(value))


def is_k8s_subdomain(value: str) -> bool:
    return len(value) <= 253 and bool(_K8S_SUBDOMAIN.match(value))


def is_ip(value: str) -> bool:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return True


def check_ip_subnet(value: str) -> str | None:
    """An IP address or CIDR block (Istio's ValidateIPSubnet)."""
    if value.count("/") == 1:
        try:
            ipaddress.ip_network(value, strict=False)
        except ValueError:
            return f"{value} is not a valid CIDR block"
        return None
    return None if is_ip(value) else f"{value} is not a valid IP"


def _check_preconditions(name: str) -> str | None:
    if len(name) > 255:
        return f"domain name \"{name}\" too long (max 255)"
    if not name:
        return "empty domain name not allowed"
    return None


def _check_labels(domain: str) -> str | None:
    parts = domain.split(".")
    if parts[-1].isdigit():
        return f"domain name \"{domain}\" invalid (top level domain \"{parts[-1]}\" cannot be all-numeric)"
    for i, label in enumerate(parts):
        if i == len(parts) - 1 and label == "":
            return None  # a trailing dot (`istio.io.`) is allowed
        if not is_istio_label(label):
            return f"domain name \"{domain}\" invalid (label \"{label}\" invalid)"
    return None


def check_fqdn(name: str) -> str | None:
    return _check_preconditions(name) or _check_labels(name)


def check_wildcard_domain(name: str) -> str | None:
    """A hostname that may carry a wildcard in its first label: `*`, `*.foo.com`, `foo.com`."""
    err = _check_preconditions(name)
    if err:
        return err
    first, _, rest = name.partition(".")
    if not (len(first) <= 63 and _ISTIO_WILDCARD_LABEL.match(first)):
        return f"domain name \"{name}\" invalid (label \"{first}\" invalid)"
    return _check_labels(rest) if rest else None


def check_partial_wildcard(host: str) -> str | None:
    if "*" in host and len(host) != 1 and not host.startswith("*."):
        return f"partial wildcard \"{host}\" not allowed"
    return None


def check_label_map(labels: dict, max_value_length: int | None = 63) -> list[tuple[str, str]]:
    """Label keys and values; returns (key, message) pairs.

    Kubernetes caps values at 63 characters; Istio's own label check (subset and
    sourceLabels selectors) does not, so its callers pass max_value_length=None.
    """
    out = []
    for k, v in labels.items():
        err = check_label_key(str(k))
        if err:
            out.append((str(k), err))
        too_long = max_value_length is not None and isinstance(v, str) and len(v) > max_value_length
        if not isinstance(v, str) or not _LABEL_VALUE.match(v) or too_long:
            out.append((str(k), f"invalid label value: \"{v}\""))
    return out


def check_label_key(key: str) -> str | None:
    prefix, slash, name = key.rpartition("/")
    if slash and (not prefix or len(prefix) > 253 or not is_k8s_subdomain(prefix.lower())):
        return f"invalid label key \"{key}\": prefix must be a DNS subdomain"
    if not name or len(name) > 63 or not _QUALIFIED_NAME.match(name):
        return (f"invalid label key \"{key}\": name must be 63 characters or less, alphanumeric, "
                "'-', '_' or '.', starting and ending with an alphanumeric character")
    return None


def check_iana_svc_name(name: str) -> str | None:
    """A named port (Kubernetes IANA_SVC_NAME): <=15 chars, lower-case alnum and '-', a letter."""
    if len(name) > 15:
        return "must be no more than 15 characters"
    if not _IANA_SVC_NAME.match(name):
        return "must contain only lower-case alphanumeric characters or '-', and start and end with one"
    if "--" in name:
        return "must not contain consecutive hyphens"
    if not any(c.isalpha() for c in name):
        return "must contain at least one letter"
    return None
