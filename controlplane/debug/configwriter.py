"""`proxy-config` tables and dumps, as istioctl's configdump.ConfigWriter prints them.

Each `print_*` method writes exactly what istioctl writes for the same config dump:
the same columns, the same sort order, the same Go tabwriter spacing (see tabwriter.py),
and for `-o json|yaml` the same encoders (see gojson.py). The golden tests in
tests/unit/test_proxy_config_golden.py hold this against istioctl's own test outputs.
"""
from __future__ import annotations

import datetime as _dt
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import TextIO

from cryptography import x509
from google.protobuf.message import Message

from .configdump import ConfigDump, DumpError, unpack
from .gojson import jsonpb, marshal_indent_messages, to_yaml
from .tabwriter import TabWriter

HTTP_CONNECTION_MANAGER = "envoy.filters.network.http_connection_manager"
TCP_PROXY = "envoy.filters.network.tcp_proxy"
BLACKHOLE = "BlackHoleCluster"
PASSTHROUGH = "PassthroughCluster"

_HEALTH = {0: "UNKNOWN", 1: "HEALTHY", 2: "UNHEALTHY", 3: "DRAINING", 4: "TIMEOUT", 5: "DEGRADED"}
_CLUSTER_TYPE = {0: "STATIC", 1: "STRICT_DNS", 2: "LOGICAL_DNS", 3: "EDS", 4: "ORIGINAL_DST"}


# --- filters (istioctl's *Filter.Verify) ------------------------------------------------

@dataclass
class ClusterFilter:
    fqdn: str = ""
    port: int = 0
    subset: str = ""
    direction: str = ""

    def verify(self, name: str) -> bool:
        if not (self.fqdn or self.port or self.subset or self.direction):
            return True
        if self.fqdn and self.fqdn not in name:
            return False
        if self.direction and self.direction not in name:
            return False
        if self.subset and self.subset not in name:
            return False
        if self.port and f"|{self.port}|" not in name:
            return False
        return True


@dataclass
class ListenerFilter:
    address: str = ""
    port: int = 0
    type: str = ""
    verbose: bool = True

    def verify(self, l: Message) -> bool:
        if not (self.address or self.port or self.type):
            return True
        if self.address:
            addresses = _additional_addresses(l) + [_listener_address(l)]
            if not any(a.lower() == self.address.lower() for a in addresses):
                return False
        if self.port and _listener_port(l) != self.port:
            return False
        if self.type and _listener_type(l).lower() != self.type.lower():
            return False
        return True


@dataclass
class RouteFilter:
    name: str = ""
    verbose: bool = True

    def verify(self, r: Message) -> bool:
        return not self.name or self.name == r.name


@dataclass
class EndpointFilter:
    address: str = ""
    port: int = 0
    cluster: str = ""
    status: str = ""

    def verify(self, ep: Message, cluster: str) -> bool:
        if not (self.address or self.port or self.cluster or self.status):
            return True
        if self.address and _endpoint_address(ep).lower() != self.address.lower():
            return False
        if self.port and ep.endpoint.address.socket_address.port_value != self.port:
            return False
        if self.cluster and cluster.lower() != self.cluster.lower():
            return False
        if self.status and _HEALTH.get(ep.health_status, str(ep.health_status)).lower() != self.status.lower():
            return False
        return True


# --- names (Istio's subset keys) -------------------------------------------------------

def parse_subset_key(name: str) -> tuple[str, str, str, int]:
    """model.ParseSubsetKey: `direction|port|subset|host` -> (direction, subset, host, port)."""
    parts = name.split("|")
    if len(parts) < 4:
        return "", "", "", 0
    try:
        port = int(parts[1])
    except ValueError:
        port = 0
    return parts[0], parts[2], parts[3], port


def _safe_subset_key(name: str) -> tuple[str, str, str, int]:
    if len(name.split("|")) > 3:
        return parse_subset_key(name)
    return "", "", name, 0


def _subset_sort_key(name: str):
    direction, subset, host, port = _safe_subset_key(name)
    return (host, subset, port, direction)


_CONFIG_PATH = re.compile(r"^/apis/networking\.istio\.io/[^/]+/namespaces/")


def render_config(path: str) -> str:
    if _CONFIG_PATH.match(path):
        pieces = path.split("/")
        if len(pieces) != 8:
            return ""
        return f"{pieces[7]}.{pieces[5]}"
    return "<unknown>"


def describe_management(metadata: Message | None) -> str:
    if metadata is None or "istio" not in metadata.filter_metadata:
        return ""
    fields = metadata.filter_metadata["istio"].fields
    if "config" not in fields:
        return ""
    return render_config(fields["config"].string_value)


# --- listeners ------------------------------------------------------------------------

def _listener_address(l: Message) -> str:
    a = l.address
    if a.HasField("socket_address"):
        return a.socket_address.address
    if a.HasField("pipe"):
        return a.pipe.path
    return ""


def _additional_addresses(l: Message) -> list[str]:
    return [x.address.socket_address.address for x in l.additional_addresses]


def _listener_port(l: Message) -> int:
    return l.address.socket_address.port_value


def _filter_chains(l: Message) -> list[Message]:
    chains = list(l.filter_chains)
    if l.HasField("default_filter_chain"):
        chains.append(l.default_filter_chain)
    return chains


def _listener_type(l: Message) -> str:
    n_http = n_tcp = 0
    for fc in _filter_chains(l):
        for f in fc.filters:
            if f.name == HTTP_CONNECTION_MANAGER:
                n_http += 1
            elif f.name == TCP_PROXY and BLACKHOLE.encode() not in f.typed_config.value:
                n_tcp += 1
    if n_http:
        return "HTTP" if not n_tcp else "HTTP+TCP"
    return "TCP" if n_tcp else "UNKNOWN"


_PLAINTEXT_HTTP = ["http/1.0", "http/1.1", "h2c"]
_ISTIO_HTTP_PLAIN = ["istio", "istio-http/1.0", "istio-http/1.1", "istio-h2"]
_HTTP_TLS = ["http/1.0", "http/1.1", "h2c", "istio-http/1.0", "istio-http/1.1", "istio-h2"]
_TCP_TLS = ["istio-peer-exchange", "istio"]
_PROTOCOL_NAMES = (
    ("App: HTTP TLS", _HTTP_TLS), ("App: Istio HTTP Plain", _ISTIO_HTTP_PLAIN), ("App: TCP TLS", _TCP_TLS),
    ("App: HTTP", _PLAINTEXT_HTTP),
)


def get_matches(m: Message | None) -> str:
    descrs: list[str] = []
    if m is None:
        return "ALL"
    if m.server_names:
        descrs.append("SNI: " + ",".join(m.server_names))
    if m.transport_protocol:
        descrs.append("Trans: " + m.transport_protocol)
    if m.application_protocols:
        alpn = list(m.application_protocols)
        for label, protos in _PROTOCOL_NAMES:
            if alpn == protos:
                descrs.append(label)
                break
        else:
            descrs.append("App: " + ",".join(alpn))
    port = f":{m.destination_port.value}" if m.HasField("destination_port") else ""
    if m.prefix_ranges:
        pf = [f"{p.address_prefix}/{p.prefix_len.value}" for p in m.prefix_ranges]
        descrs.append(f"Addr: {','.join(pf)}{port}")
    elif port:
        descrs.append(f"Addr: *{port}")
    return "; ".join(descrs) if descrs else "ALL"


def _describe_match(match: Message) -> str:
    conds = []
    if match.prefix:
        conds.append(match.prefix + "*")
    if match.path_separated_prefix:
        conds.append("PathPrefix:" + match.path_separated_prefix)
    if match.path:
        conds.append(match.path)
    if match.HasField("safe_regex"):
        conds.append("regex " + match.safe_regex.regex)
    return " ".join(conds)


def _describe_domains(vh: Message) -> str:
    if list(vh.domains) == ["*"]:
        return ""
    return "/".join(vh.domains)


def _describe_routes(vh: Message) -> str:
    return ", ".join(_describe_match(r.match) for r in vh.routes)


def _match_all_cluster(rc: Message) -> str:
    if len(rc.virtual_hosts) != 1:
        return ""
    vh = rc.virtual_hosts[0]
    if list(vh.domains) != ["*"] or len(vh.routes) != 1:
        return ""
    r = vh.routes[0]
    if r.match.prefix != "/" or r.WhichOneof("action") != "route":
        return ""
    if r.route.WhichOneof("cluster_specifier") != "cluster":
        return ""
    cl = r.route.cluster
    return cl if "Cluster" in cl else f"Cluster: {cl}"


def _describe_route_config(rc: Message) -> str:
    if cl := _match_all_cluster(rc):
        return cl
    vhosts = []
    for vh in rc.virtual_hosts:
        d = _describe_domains(vh)
        vhosts.append(_describe_routes(vh) if d == "" else f"{d} {_describe_routes(vh)}")
    return "Inline Route: " + "; ".join(vhosts)


def get_filter_type(filters) -> str:
    for f in filters:
        if f.name == HTTP_CONNECTION_MANAGER:
            hcm = _unpack_as(f.typed_config,
                             "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager")
            if hcm is None:
                return "HTTP"
            if hcm.HasField("route_config"):
                return _describe_route_config(hcm.route_config)
            if hcm.rds.route_config_name:
                return f"Route: {hcm.rds.route_config_name}"
            return "HTTP"
        if f.name == TCP_PROXY and BLACKHOLE.encode() not in f.typed_config.value:
            tcp = _unpack_as(f.typed_config, "envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy")
            cluster = tcp.cluster if tcp is not None else ""
            return cluster if "Cluster" in cluster else f"Cluster: {cluster}"
    return "Non-HTTP/Non-TCP"


def _unpack_as(a: Message, full_name: str) -> Message | None:
    from google.protobuf import any_pb2

    fixed = any_pb2.Any(type_url="type.googleapis.com/" + full_name, value=a.value)
    return unpack(fixed)


# --- endpoints ------------------------------------------------------------------------

def _endpoint_address(ep: Message) -> str:
    addr = ep.endpoint.address
    if addr.HasField("socket_address"):
        return f"{addr.socket_address.address}:{addr.socket_address.port_value}"
    if addr.HasField("pipe"):
        return addr.pipe.path
    if addr.HasField("envoy_internal_address"):
        ia = addr.envoy_internal_address
        if ia.WhichOneof("address_name_specifier") == "server_listener_name":
            return f"envoy://{ia.server_listener_name}/{ia.endpoint_id}"
    return "unknown"


def _locality(l: Message | None) -> str:
    if l is None:
        return ""
    resp = l.region
    if not l.zone:
        return resp
    resp += "/" + l.zone
    if not l.sub_zone:
        return resp
    return resp + "/" + l.sub_zone


# --- secrets --------------------------------------------------------------------------

@dataclass
class SecretItem:
    name: str
    state: str
    type: str = ""
    valid: bool = False
    serial: str = ""
    not_after: str = ""
    not_before: str = ""
    trust_domain: str = ""


def _cert_meta(pem: bytes, item: SecretItem, now: _dt.datetime) -> None:
    try:
        cert = x509.load_pem_x509_certificate(pem)
    except ValueError:
        item.valid = False
        return
    try:
        is_ca = cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        is_ca = False
    nb, na = cert.not_valid_before_utc, cert.not_valid_after_utc
    item.type = "CA" if is_ca else "Cert Chain"
    n = cert.serial_number  # Go: fmt.Sprintf("%x", SerialNumber.Bytes()), leading zero byte kept
    item.serial = n.to_bytes((n.bit_length() + 7) // 8, "big").hex()
    item.not_after = na.strftime("%Y-%m-%dT%H:%M:%SZ")
    item.not_before = nb.strftime("%Y-%m-%dT%H:%M:%SZ")
    item.valid = nb < now < na


def _spiffe_trust_domain(pem: bytes) -> str:
    try:
        cert = x509.load_pem_x509_certificate(pem)
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (ValueError, x509.ExtensionNotFound):
        return ""
    for uri in san.get_values_for_type(x509.UniformResourceIdentifier):
        if uri.startswith("spiffe://"):
            return uri[len("spiffe://"):].split("/", 1)[0]
    return ""


def envoy_secrets(dump: ConfigDump, now: _dt.datetime | None = None) -> tuple[list[SecretItem], bool]:
    """Secret rows (warming first, then active) and whether any is trust-domain aware (SPIFFE)."""
    now = now or _dt.datetime.now(_dt.UTC)
    sd = dump.secrets()
    items: list[SecretItem] = []
    spiffe = False

    def parse(ds: Message, state: str) -> list[SecretItem]:
        nonlocal spiffe
        secret = _unpack_as(ds.secret, "envoy.extensions.transport_sockets.tls.v3.Secret")
        base = SecretItem(ds.name, state)
        if secret is None:
            return [base]
        chain = secret.tls_certificate.certificate_chain.inline_bytes
        ca = secret.validation_context.trusted_ca.inline_bytes
        if chain:
            _cert_meta(chain, base, now)
            base.trust_domain = _spiffe_trust_domain(chain)
            return [base]
        if ca:
            _cert_meta(ca, base, now)
            return [base]
        cv = secret.validation_context.custom_validator_config
        if cv.HasField("typed_config"):
            spiffe_cfg = _unpack_as(cv.typed_config,
                                    "envoy.extensions.transport_sockets.tls.v3.SPIFFECertValidatorConfig")
            if spiffe_cfg is not None and spiffe_cfg.trust_domains:
                spiffe = True
                out = []
                for td in spiffe_cfg.trust_domains:
                    item = SecretItem(ds.name, state, trust_domain=td.name)
                    _cert_meta(td.trust_bundle.inline_bytes, item, now)
                    out.append(item)
                return out
        return [base]

    for ws in sd.dynamic_warming_secrets:
        items += parse(ws, "WARMING")
    for s in sd.dynamic_active_secrets:
        rows = parse(s, "ACTIVE")
        if s.version_info == "uninitialized":
            for r in rows:
                r.state = "UNINITIALIZED"
        items += rows
    return items, spiffe


# --- the writer -----------------------------------------------------------------------

class ConfigWriter:
    def __init__(self, dump: ConfigDump, out: TextIO, include_config_type: bool = False):
        self.dump = dump
        self.out = out
        self.include_config_type = include_config_type  # `proxy-config all`: NAME column with type/

    def _tw(self, padding: int = 5, tabwidth: int = 8) -> TabWriter:
        return TabWriter(self.out, 0, tabwidth, padding)

    # clusters
    def _sorted_clusters(self) -> list[Message]:
        clusters = self.dump.clusters()
        if not clusters:
            raise DumpError("no clusters found")
        return sorted(clusters, key=lambda c: _subset_sort_key(c.name))

    def print_cluster_summary(self, f: ClusterFilter) -> None:
        clusters = self._sorted_clusters()
        w = self._tw()
        head = "SERVICE FQDN\tPORT\tSUBSET\tDIRECTION\tTYPE\tDESTINATION RULE"
        w.write(("NAME\t" + head if self.include_config_type else head) + "\n")
        for c in clusters:
            if not f.verify(c.name):
                continue
            name = f"cluster/{c.name}"
            ctype = _CLUSTER_TYPE.get(c.type, str(c.type))
            dr = describe_management(c.metadata if c.HasField("metadata") else None)
            if len(c.name.split("|")) > 3:
                direction, subset, host, port = parse_subset_key(c.name)
                cells = [host, str(port), subset or "-", direction, ctype, dr]
            else:
                cells = [name if self.include_config_type else c.name, "-", "-", "-", ctype, dr]
            if self.include_config_type:
                cells.insert(0, name)
            w.write("\t".join(cells) + "\n")
        w.flush()

    def print_cluster_dump(self, f: ClusterFilter, fmt: str) -> None:
        self._print_messages([c for c in self._sorted_clusters() if f.verify(c.name)], fmt)

    # listeners
    def _listeners(self) -> list[Message]:
        listeners = self.dump.listeners()
        if not listeners:
            raise DumpError("no listeners found")
        return listeners

    def print_listener_summary(self, f: ListenerFilter) -> None:
        listeners = [l for l in self._listeners() if f.verify(l)]
        listeners.sort(key=lambda l: (_listener_port(l), _listener_address(l), _listener_type(l)))
        w = self._tw(padding=1)
        head = "ADDRESSES\tPORT"
        if self.include_config_type:
            head = "NAME\t" + head
        head += "\tMATCH\tDESTINATION" if f.verbose else "\tTYPE"
        w.write(head + "\n")
        for l in listeners:
            addresses = ",".join([_listener_address(l)] + _additional_addresses(l))
            port = str(_listener_port(l))
            prefix = [f"listener/{l.name}"] if self.include_config_type else []
            if f.verbose:
                matches: list[tuple[str, str]] = [(get_matches(fc.filter_chain_match if fc.HasField("filter_chain_match") else None),
                            get_filter_type(fc.filters)) for fc in _filter_chains(l)]
                matches.sort(key=lambda m: m[1], reverse=True)  # by destination, descending; ties keep their order
                for match, dest in matches:
                    w.write("\t".join(prefix + [addresses, port, match, dest]) + "\n")
            else:
                w.write("\t".join(prefix + [addresses, port, _listener_type(l)]) + "\n")
        w.flush()

    def print_listener_dump(self, f: ListenerFilter, fmt: str) -> None:
        self._print_messages([l for l in self._listeners() if f.verify(l)], fmt)

    # routes
    def _sorted_routes(self) -> list[Message]:
        routes = self.dump.routes()
        if not routes:
            raise DumpError("no routes found")
        return _go_insertion_sort(routes, _route_less)

    def print_route_summary(self, f: RouteFilter) -> None:
        routes = self._sorted_routes()
        w = self._tw()
        if f.verbose:
            head = "NAME\tVHOST NAME\tDOMAINS\tMATCH\tVIRTUAL SERVICE"
        else:
            head = "NAME\tVIRTUAL HOSTS"
        w.write(head + "\n")
        for rc in routes:
            if not f.verify(rc):
                continue
            name = f"route/{rc.name}" if self.include_config_type else rc.name
            if not f.verbose:
                w.write(f"{name}\t{len(rc.virtual_hosts)}\n")
                continue
            for vh in rc.virtual_hosts:
                domains = describe_route_domains(list(vh.domains))
                for r in vh.routes:
                    if not _is_passthrough(r):
                        vs = describe_management(r.metadata if r.HasField("metadata") else None)
                        w.write("\t".join([name, vh.name, domains, _describe_match(r.match), vs]) + "\n")
                if not vh.routes:
                    w.write("\t".join([name, vh.name, domains, "/*", "404"]) + "\n")
        w.flush()

    def print_route_dump(self, f: RouteFilter, fmt: str) -> None:
        self._print_messages([r for r in self._sorted_routes() if f.verify(r)], fmt)

    # endpoints
    def _sorted_endpoints(self, f: EndpointFilter) -> list[Message]:
        out = []
        for cla in self.dump.endpoints():
            count = 0
            for llb in cla.endpoints:
                kept = [ep for ep in llb.lb_endpoints if f.verify(ep, cla.cluster_name)]
                del llb.lb_endpoints[:]
                llb.lb_endpoints.extend(kept)
                count += len(kept)
            if count:
                out.append(cla)
        return sorted(out, key=lambda c: _subset_sort_key(c.cluster_name))

    def print_endpoints_summary(self, f: EndpointFilter) -> None:
        w = self._tw()
        w.write("NAME\tSTATUS\tLOCALITY\tCLUSTER\n")
        for cla in self._sorted_endpoints(f):
            for llb in cla.endpoints:
                for ep in llb.lb_endpoints:
                    addr = _endpoint_address(ep)
                    if self.include_config_type:
                        addr = f"endpoint/{addr}"
                    loc = _locality(llb.locality if llb.HasField("locality") else None)
                    w.write(f"{addr}\t{_HEALTH.get(ep.health_status, str(ep.health_status))}\t{loc}\t{cla.cluster_name}\n")
        w.flush()

    def print_endpoints(self, f: EndpointFilter, fmt: str) -> None:
        self._print_messages(self._sorted_endpoints(f), fmt)

    # secrets
    def print_secret_summary(self) -> None:
        sd = self.dump.secrets()
        if not sd.dynamic_active_secrets and not sd.dynamic_warming_secrets:
            self.out.write("No active or warming secrets found.\n")
            return
        items, spiffe = envoy_secrets(self.dump)
        if not items:
            self.out.write("No secret items to show.\n")
            return
        w = TabWriter(self.out, 0, 5, 5)
        cols = ["RESOURCE NAME", "TYPE", "STATUS", "VALID CERT", "SERIAL NUMBER", "NOT AFTER", "NOT BEFORE"]
        if spiffe:
            cols.append("TRUST DOMAIN")
        w.write("\t".join(cols) + "\n")
        for s in items:
            name = f"secret/{s.name}" if self.include_config_type else s.name
            cells = [name, s.type, s.state, "true" if s.valid else "false", s.serial, s.not_after, s.not_before]
            if spiffe:
                cells.append(s.trust_domain)
            w.write("\t".join(cells) + "\n")
        w.flush()

    def print_secret_dump(self, fmt: str) -> None:
        self._print_jsonpb(self.dump.secrets(), fmt)

    # bootstrap
    def print_bootstrap_summary(self) -> None:
        boot = self.dump.bootstrap()
        md = boot.bootstrap.node.metadata.fields
        istio_version = md["ISTIO_VERSION"].string_value if "ISTIO_VERSION" in md else ""
        sha = md["ISTIO_PROXY_SHA"].string_value if "ISTIO_PROXY_SHA" in md else ""
        if ":" in sha:
            sha = sha.split(":")[1]
        envoy_version = _user_agent_version(boot)
        w = TabWriter(self.out, 0, 8, 1)
        if istio_version:
            w.write(f"Istio Version:\t{istio_version}\n")
        if sha:
            w.write(f"Istio Proxy Version:\t{sha}\n")
        if envoy_version:
            w.write(f"Envoy Version:\t{envoy_version}\n")
        w.flush()

    def print_bootstrap_dump(self, fmt: str) -> None:
        self._print_jsonpb(self.dump.bootstrap(), fmt)

    # all
    def print_full_summary(self, cf: ClusterFilter, lf: ListenerFilter, rf: RouteFilter, ef: EndpointFilter,
                           with_headers: bool = False) -> None:
        sections: list[tuple[str, Callable[[], None]]] = [
            ("BOOTSTRAP", self.print_bootstrap_summary),
            ("CLUSTER", lambda: self.print_cluster_summary(cf)),
            ("LISTENER", lambda: self.print_listener_summary(lf)),
            ("ROUTE", lambda: self.print_route_summary(rf)),
            ("SECRET", self.print_secret_summary),
            ("ENDPOINTS", lambda: self.print_endpoints_summary(ef)),
        ]
        for i, (title, fn) in enumerate(sections):
            if i:
                self.out.write("\n")
            if with_headers:
                self.out.write(f"------ {title} INFO ------\n\n")
            fn()

    # output helpers
    def _print_messages(self, messages: list[Message], fmt: str) -> None:
        text = marshal_indent_messages(messages)
        if fmt == "yaml":
            text = to_yaml(text)
        self.out.write(text + "\n")

    def _print_jsonpb(self, msg: Message, fmt: str) -> None:
        text = jsonpb(msg, "    ")
        if fmt == "yaml":
            text = to_yaml(text)
        self.out.write(text + "\n")


def _user_agent_version(boot: Message) -> str:
    bv = boot.bootstrap.node.user_agent_build_version
    v = bv.version
    md = bv.metadata.fields
    s = f"{v.major_number}.{v.minor_number}.{v.patch}"
    if "build.label" in md:
        s += "-" + md["build.label"].string_value
    if "revision.status" in md:
        s += "/" + md["revision.status"].string_value
    if "build.type" in md:
        s += "/" + md["build.type"].string_value
    if "ssl.version" in md:
        s += "/" + md["ssl.version"].string_value
    return s


def describe_route_domains(domains: list[str]) -> str:
    if not domains:
        return ""
    if len(domains) == 1:
        return domains[0]
    without_port = []
    for d in domains:
        if ":" not in d:
            without_port.append(d)
        elif d.count(":") > 2 and d.endswith("]"):
            without_port.append(d)
    without_port = _unexpand_domains(without_port)
    if len(without_port) > 2:
        return f"{', '.join(without_port[:2])} + {len(without_port) - 2} more..."
    return ", ".join(without_port)


def _unexpand_domains(domains: list[str]) -> list[str]:
    unique = set(domains)
    delete = set()
    for h in domains:
        full = h[: -len(".svc.cluster.local")] if h.endswith(".svc.cluster.local") else h
        if full in unique and full != h:
            delete.add(h)
        partial = h[: -len(".svc")] if h.endswith(".svc") else h
        if partial in unique and partial != h:
            delete.add(h)
    return [h for h in domains if h not in delete]


def _is_passthrough(r: Message) -> bool:
    return (r.WhichOneof("action") == "route" and r.route.WhichOneof("cluster_specifier") == "cluster"
            and r.route.cluster == PASSTHROUGH)


def _route_less(a: Message, b: Message) -> bool:
    """istioctl's comparator: numeric names in order, anything else 'not less'."""
    try:
        return int(a.name) < int(b.name)
    except ValueError:
        return False


def _go_insertion_sort(items: list, less) -> list:
    """Go's sort.Slice for the small inputs istioctl sees (insertion sort, so a comparator
    that is not a total order gives the same result as in Go)."""
    out = list(items)
    for i in range(1, len(out)):
        j = i
        while j > 0 and less(out[j], out[j - 1]):
            out[j], out[j - 1] = out[j - 1], out[j]
            j -= 1
    return out
