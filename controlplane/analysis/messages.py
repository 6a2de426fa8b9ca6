"""Istio's analysis messages: codes, levels and templates (pkg/config/analysis/msg/messages.yaml).

A message renders exactly as istioctl prints it:

    Error [IST0101] (VirtualService default/foo vs.yaml:12) Referenced host not found: "bar"

`level [code] (<kind> <namespace>/<name> <file>:<line>) <text>`; the origin part is left
out for messages without a resource.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .resources import Resource

LEVELS = {"Error": 0, "Warning": 1, "Info": 2}  # istioctl's sort order (worst first)


@dataclass(frozen=True)
class MessageType:
    name: str
    code: str
    level: str
    template: str


def _t(name: str, code: str, level: str, template: str) -> MessageType:
    return MessageType(name, code, level, template)


# The ones meshd's analyzers emit (wording verbatim from Istio).
INTERNAL_ERROR = _t("InternalError", "IST0001", "Error", "Internal error: %v")
DEPRECATED = _t("Deprecated", "IST0002", "Warning", "Deprecated: %s")
REFERENCED_RESOURCE_NOT_FOUND = _t("ReferencedResourceNotFound", "IST0101", "Error", "Referenced %s not found: %q")
SCHEMA_VALIDATION_ERROR = _t("SchemaValidationError", "IST0106", "Error", "Schema validation error: %v")
CONFLICTING_MESH_GATEWAY_HOSTS = _t(
    "ConflictingMeshGatewayVirtualServiceHosts", "IST0109", "Error",
    "The VirtualServices %s associated with mesh gateway define the same host %s which can lead to undefined "
    "behavior. This can be fixed by merging the conflicting VirtualServices into a single resource.")
CONFLICTING_SIDECAR_WORKLOAD_SELECTORS = _t(
    "ConflictingSidecarWorkloadSelectors", "IST0110", "Error",
    "The Sidecars %v in namespace %q select the same workload pod %q, which can lead to undefined behavior.")
MULTIPLE_SIDECARS_WITHOUT_SELECTORS = _t(
    "MultipleSidecarsWithoutWorkloadSelectors", "IST0111", "Error",
    "The Sidecars %v in namespace %q have no workload selector, which can lead to undefined behavior.")
CONFLICTING_TELEMETRY_WORKLOAD_SELECTORS = _t(
    "ConflictingTelemetryWorkloadSelectors", "IST0159", "Error",
    "The Telemetries %v in namespace %q select the same workload pod %q, which can lead to undefined behavior.")
MULTIPLE_TELEMETRIES_WITHOUT_SELECTORS = _t(
    "MultipleTelemetriesWithoutWorkloadSelectors", "IST0160", "Error",
    "The Telemetries %v in namespace %q have no workload selector, which can lead to undefined behavior.")
VS_DESTINATION_PORT_SELECTOR_REQUIRED = _t(
    "VirtualServiceDestinationPortSelectorRequired", "IST0112", "Error",
    "This VirtualService routes to a service %q that exposes multiple ports %v. Specifying a port in the "
    "destination is required to disambiguate.")
PORT_NAME_NOT_UNDER_CONVENTION = _t(
    "PortNameIsNotUnderNamingConvention", "IST0118", "Info",
    "Port name %s (port: %d, targetPort: %s) doesn't follow the naming convention of Istio port.")
NO_MATCHING_WORKLOADS = _t(
    "NoMatchingWorkloadsFound", "IST0127", "Warning",
    "No matching workloads for this resource with the following labels: %s")
NO_SERVER_CERT_VERIFICATION_DEST = _t(
    "NoServerCertificateVerificationDestinationLevel", "IST0128", "Warning",
    "DestinationRule %s in namespace %s has TLS mode set to %s but no caCertificates are set to validate server "
    "identity for host: %s")
NO_SERVER_CERT_VERIFICATION_PORT = _t(
    "NoServerCertificateVerificationPortLevel", "IST0129", "Warning",
    "DestinationRule %s in namespace %s has TLS mode set to %s but no caCertificates are set to validate server "
    "identity for host: %s at port %s")
VS_HOST_NOT_FOUND_IN_GATEWAY = _t(
    "VirtualServiceHostNotFoundInGateway", "IST0132", "Warning",
    "one or more host %v defined in VirtualService %s not found in Gateway %s.")
SERVICE_ENTRY_ADDRESSES_REQUIRED = _t(
    "ServiceEntryAddressesRequired", "IST0134", "Warning", "ServiceEntry addresses are required for this protocol.")
GATEWAY_DUPLICATE_CERTIFICATE = _t(
    "GatewayDuplicateCertificate", "IST0138", "Warning",
    "Duplicate certificate in multiple gateways %v may cause 404s if clients re-use HTTP2 connections.")
INGRESS_ROUTE_RULES_NOT_AFFECTED = _t(
    "IngressRouteRulesNotAffected", "IST0140", "Warning",
    "Subset in virtual service %s has no effect on ingress gateway %s requests")
CONFLICTING_GATEWAYS = _t(
    "ConflictingGateways", "IST0145", "Error",
    "Conflict with gateways %s (workload selector %s, port %s, hosts %v).")
EXTERNAL_NAME_INVALID_PORT_NAME = _t(
    "ExternalNameServiceTypeInvalidPortName", "IST0150", "Warning",
    "Port name for ExternalName service is invalid. Proxy may prevent tcp named ports and unmatched traffic for "
    "ports serving TCP protocol from being forwarded correctly")
GATEWAY_PORT_NOT_DEFINED_ON_SERVICE = _t(
    "GatewayPortNotDefinedOnService", "IST0162", "Warning",
    "The gateway is listening on a target port (port %d) that is not defined in the Service associated with its "
    "workload instances (Pod selector %s). If you need to access the gateway port through the gateway Service, it "
    "will not be available.")
INEFFECTIVE_POLICY = _t("IneffectivePolicy", "IST0167", "Warning", "The policy has no impact: %s.")
DESTINATION_RULE_SUBSET_NOT_SELECT_PODS = _t(
    "DestinationRuleSubsetNotSelectPods", "IST0173", "Error",
    "The Subset %s defined in the DestinationRule does not select any pods. Which may lead to 503 UH "
    "(NoHealthyUpstream).")
UNKNOWN_DESTINATION_RULE_HOST = _t(
    "UnknownDestinationRuleHost", "IST0174", "Warning",
    "The host %s defined in the DestinationRule does not match any services in the mesh.")
CONFLICTING_SERVICE_ENTRY_PROTOCOL = _t(
    "ConflictingServiceEntryProtocol", "IST0177", "Warning",
    "Multiple ServiceEntries (%s) define the same host %q and port %d with conflicting protocols (%s).")

# meshd's own authorization checks (analyzers/authorization.py): Istio has no message for them.
PRINCIPAL_NOT_FOUND = _t("AuthorizationPrincipalNotFound", "MSH0003", "Warning",
                         "Principal %q: %s %q not found in the mesh")
UNKNOWN_EXTENSION_PROVIDER = _t("UnknownExtensionProvider", "MSH0004", "Error",
                                "CUSTOM provider %q %s; the proxies deny the requests its rules match")

# meshd's own registry checks (analyzers/serviceentry.py, sidecar.py).
SERVICE_HOST_CONFLICT = _t("ServiceEntryHostNotServed", "MSH0005", "Warning",
                           "Host %q is not served from this ServiceEntry: %s %s defines it (%s)")
SIDECAR_EGRESS_HOST_NOT_FOUND = _t("SidecarEgressHostNotFound", "MSH0006", "Warning",
                                   "Egress host %q selects no Service, ServiceEntry or VirtualService visible to "
                                   "namespace %q")
# meshd's own Telemetry check (analyzers/telemetry.py): a setting meshd accepts but does not serve.
TELEMETRY_NOT_SERVED = _t("TelemetryNotServed", "MSH0007", "Warning", "%s")
# meshd's own Sidecar check (analyzers/sidecar.py): an ingress `tls` that does nothing.
SIDECAR_INGRESS_TLS_NOT_USED = _t("SidecarIngressTLSNotUsed", "MSH0008", "Warning", "%s")

# meshd's own (docs/unsupported.md): an object of a kind meshd does not serve has no
# effect; an error when it is a security kind (its access control is not enforced).
# Codes MSHxxxx so they can never be taken for one of Istio's ISTxxxx.
UNSUPPORTED_SECURITY_KIND = _t("UnsupportedSecurityKind", "MSH0001", "Error", "%s")
UNSUPPORTED_KIND = _t("UnsupportedKind", "MSH0002", "Warning", "%s")
# The Gateway API's status as meshd computes it (analyzers/gateway_api.py): a route or
# Gateway not accepted is not in force (an error); another condition not met, a warning.
GATEWAY_API_NOT_ACCEPTED = _t("GatewayAPINotAccepted", "MSH0020", "Error", "%s")
GATEWAY_API_CONDITION = _t("GatewayAPIConditionNotMet", "MSH0021", "Warning", "%s")

# EnvoyFilter (analyzers/envoyfilter.py).
ENVOY_FILTER_RELATIVE = _t(
    "EnvoyFilterUsesRelativeOperation", "IST0151", "Warning",
    "This EnvoyFilter does not have a priority and has a relative patch operation set which can cause the "
    "EnvoyFilter not to be applied. Using the INSERT_FIRST or ADD option or setting the priority may help in "
    "ensuring the EnvoyFilter is applied correctly.")
ENVOY_FILTER_RELATIVE_WITH_VERSION = _t(
    "EnvoyFilterUsesRelativeOperationWithProxyVersion", "IST0155", "Warning",
    "This EnvoyFilter does not have a priority and has a relative patch operation (NSTERT_BEFORE/AFTER, REPLACE, "
    "MERGE, DELETE) and proxyVersion set which can cause the EnvoyFilter not to be applied during an upgrade. Using "
    "the INSERT_FIRST or ADD option or setting the priority may help in ensuring the EnvoyFilter is applied correctly.")
ENVOY_FILTER_REPLACE = _t("EnvoyFilterUsesReplaceOperationIncorrectly", "IST0156", "Error",
                          "The REPLACE operation is only valid for HTTP_FILTER and NETWORK_FILTER.")
ENVOY_FILTER_ADD = _t("EnvoyFilterUsesAddOperationIncorrectly", "IST0157", "Error",
                      "The ADD operation will be ignored when applyTo is set to ROUTE_CONFIGURATION, or HTTP_ROUTE.")
ENVOY_FILTER_REMOVE = _t("EnvoyFilterUsesRemoveOperationIncorrectly", "IST0158", "Error",
                         "The REMOVE operation will be ignored when applyTo is set to ROUTE_CONFIGURATION, or "
                         "HTTP_ROUTE.")

ALL = [v for v in list(globals().values()) if isinstance(v, MessageType)]
BY_NAME = {t.name: t for t in ALL}
BY_CODE = {t.code: t for t in ALL}


def go_quote(s: str) -> str:
    """Go's %q for a string (strconv.Quote)."""
    out = ['"']
    for ch in s:
        if ch == '"':
            out.append('\\"')
        elif ch == "\\":
            out.append("\\\\")
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\t":
            out.append("\\t")
        elif ch == "\r":
            out.append("\\r")
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\x{ord(ch):02x}")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def go_value(v: Any) -> str:
    """Go's %v/%s for the argument types the templates use."""
    if isinstance(v, (list, tuple)):
        return "[" + " ".join(go_value(x) for x in v) + "]"
    if isinstance(v, bool):
        return "true" if v else "false"
    return str(v)


def render_template(template: str, args: Sequence[Any]) -> str:
    out, i, n = [], 0, 0
    while i < len(template):
        ch = template[i]
        if ch == "%" and i + 1 < len(template):
            verb = template[i + 1]
            if verb == "%":
                out.append("%")
            else:
                arg = args[n] if n < len(args) else "%!" + verb + "(MISSING)"
                n += 1
                out.append(go_quote(str(arg)) if verb == "q" else go_value(arg))
            i += 2
            continue
        out.append(ch)
        i += 1
    return "".join(out)


@dataclass
class Message:
    type: MessageType
    args: tuple
    resource: Resource | None = None
    line: int = 0  # the offending field's line when known

    @property
    def text(self) -> str:
        return render_template(self.type.template, self.args)

    @property
    def origin(self) -> str:
        if self.resource is None:
            return ""
        loc = self.resource.location
        ref = ""
        if loc is not None and loc.file:
            ref = f" {loc.file}:{self.line or loc.line}" if (self.line or loc.line) else f" {loc.file}"
        return f"{self.resource.friendly_name}{ref}"

    def __str__(self) -> str:
        origin = f" ({self.origin})" if self.resource is not None else ""
        return f"{self.type.level} [{self.type.code}]{origin} {self.text}"

    def as_dict(self) -> dict:
        out = {"code": self.type.code, "level": self.type.level, "message": self.text}
        if self.type.code.startswith("IST"):  # meshd's own MSH codes have no page on istio.io
            out["documentationUrl"] = f"https://istio.io/latest/docs/reference/config/analysis/{self.type.code.lower()}/"
        if self.resource is not None:
            out["origin"] = self.resource.friendly_name
            loc = self.resource.location
            if loc is not None and loc.file:
                out["reference"] = f"{loc.file}:{self.line or loc.line}"
        return out

    def sort_key(self) -> tuple:
        r = self.resource
        return (LEVELS.get(self.type.level, 9), self.type.code, r is not None,
                f"{r.kind}/{r.full_name}" if r is not None else "", str(self))


def new(t: MessageType, resource: Resource | None, *args: Any, line: int = 0) -> Message:
    return Message(t, tuple(args), resource, line)
