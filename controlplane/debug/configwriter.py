"""`proxy-config` tables and dumps, as istioctl's configdump.ConfigWriter prints them.

Each `print_*` method writes exactly what istioctl writes for the same config dump:
the same columns, the same sort order, the same Go tabwriter spacing (see tabwriter.py),
and for `-o json|yaml` the same encoders (see gojson.py). The golden tests in
tests/unit/test_proxy_config_golden.py hold this against istioctl's own test outputs.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import TextIO

from google.protobuf.message import Message

from .config_filters import (
    BLACKHOLE,
    HTTP_CONNECTION_MANAGER,
    TCP_PROXY,
    ClusterFilter,
    EndpointFilter,
    ListenerFilter,
    RouteFilter,
    additional_addresses,
    describe_management,
    endpoint_address,
    filter_chains,
    listener_address,
    listener_port,
    listener_type,
    parse_subset_key,
    subset_sort_key,
    unpack_as,
)
from .configdump import ConfigDump, DumpError
from .gojson import jsonpb, marshal_indent_messages
from .goyaml import to_yaml
from .secret_rows import envoy_secrets
from .tabwriter import TabWriter

PASSTHROUGH = "PassthroughCluster"

_HEALTH = {0: "UNKNOWN", 1: "HEALTHY", 2: "UNHEALTHY", 3: "DRAINING", 4: "TIMEOUT", 5: "DEGRADED"}
_CLUSTER_TYPE = {0: "STATIC", 1: "STRICT_DNS", 2: "LOGICAL_DNS", 3: "EDS", 4: "ORIGINAL_DST"}


# --- listeners ------------------------------------------------------------------------


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
            hcm = unpack_as(f.typed_config,
                             "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager")
            if hcm is None:
                return "HTTP"
            if hcm.HasField("route_config"):
                return _describe_route_config(hcm.route_config)
            if hcm.rds.route_config_name:
                return f"Route: {hcm.rds.route_config_name}"
            return "HTTP"
        if f.name == TCP_PROXY and BLACKHOLE.encode() not in f.typed_config.value:
            tcp = unpack_as(f.typed_config, "envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy")
            cluster = tcp.cluster if tcp is not None else ""
            return cluster if "Cluster" in cluster else f"Cluster: {cluster}"
    return "Non-HTTP/Non-TCP"


# --- endpoints ------------------------------------------------------------------------


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
        return sorted(clusters, key=lambda c: subset_sort_key(c.name))

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
        listeners.sort(key=lambda l: (listener_port(l), listener_address(l), listener_type(l)))
        w = self._tw(padding=1)
        head = "ADDRESSES\tPORT"
        if self.include_config_type:
            head = "NAME\t" + head
        head += "\tMATCH\tDESTINATION" if f.verbose else "\tTYPE"
        w.write(head + "\n")
        for l in listeners:
            addresses = ",".join([listener_address(l)] + additional_addresses(l))
            port = str(listener_port(l))
            prefix = [f"listener/{l.name}"] if self.include_config_type else []
            if f.verbose:
                matches: list[tuple[str, str]] = [(get_matches(fc.filter_chain_match if fc.HasField("filter_chain_match") else None),
                            get_filter_type(fc.filters)) for fc in filter_chains(l)]
                matches.sort(key=lambda m: m[1], reverse=True)  # by destination, descending; ties keep their order
                for match, dest in matches:
                    w.write("\t".join(prefix + [addresses, port, match, dest]) + "\n")
            else:
                w.write("\t".join(prefix + [addresses, port, listener_type(l)]) + "\n")
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
        return sorted(out, key=lambda c: subset_sort_key(c.cluster_name))

    def print_endpoints_summary(self, f: EndpointFilter) -> None:
        w = self._tw()
        w.write("NAME\tSTATUS\tLOCALITY\tCLUSTER\n")
        for cla in self._sorted_endpoints(f):
            for llb in cla.endpoints:
                for ep in llb.lb_endpoints:
                    addr = endpoint_address(ep)
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

    # extension configs (ECDS)
    def print_ecds_summary(self) -> None:
        w = TabWriter(self.out, 0, 8, 5)
        w.write("ECDS NAME\tTYPE\n")
        for c in self.dump.extension_configs():
            w.write(f"{c.name}\t{c.typed_config.type_url.removeprefix('type.googleapis.com/')}\n")
        w.flush()

    def print_ecds_dump(self, fmt: str) -> None:
        self._print_jsonpb(self.dump.ecds(), fmt)

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
