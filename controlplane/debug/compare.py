"""`proxy-status <proxy>`: what meshd sent against what the proxy's Envoy holds.

istioctl's comparator (istioctl/pkg/writer/compare): the dynamic clusters, listeners and
routes of both config dumps, sorted by name, versions and timestamps stripped, printed
with jsonpb (3-space indent) and diffed as unified diffs with 7 lines of context. Equal
sections print `Clusters Match`, `Listeners Match`, `Routes Match (RDS last loaded at ...)`;
different ones print `... Don't Match` and the diff.
"""
from __future__ import annotations

import datetime as _dt
import difflib
from typing import TextIO

from envoy.admin.v3 import config_dump_shared_pb2 as shared

from .configdump import CLUSTERS, LISTENERS, ROUTES, ConfigDump, DumpError, unpack
from .gojson import jsonpb

INDENT = "   "
CONTEXT = 7


def dynamic_clusters(dump: ConfigDump) -> shared.ClustersConfigDump:
    src = dump.require(CLUSTERS)
    out = shared.ClustersConfigDump()
    items = []
    for c in src.dynamic_active_clusters:
        inner = unpack(c.cluster)
        items.append((inner.name if inner is not None else "", c))
    for _, c in sorted(items, key=lambda x: x[0]):
        dc = out.dynamic_active_clusters.add()
        dc.CopyFrom(c)
        dc.ClearField("version_info")
        dc.ClearField("last_updated")
    return out


def dynamic_listeners(dump: ConfigDump) -> shared.ListenersConfigDump:
    src = dump.require(LISTENERS)
    out = shared.ListenersConfigDump()
    for l in sorted((l for l in src.dynamic_listeners if l.HasField("active_state")), key=lambda l: l.name):
        dl = out.dynamic_listeners.add()
        dl.CopyFrom(l)
        dl.ClearField("draining_state")
        dl.ClearField("warming_state")
        dl.ClearField("error_state")
        dl.active_state.ClearField("version_info")
        dl.active_state.ClearField("last_updated")
        dl.ClearField("name")
    return out


def dynamic_routes(dump: ConfigDump) -> tuple[shared.RoutesConfigDump, float]:
    src = dump.require(ROUTES)
    out = shared.RoutesConfigDump()
    items = []
    last = 0.0
    for r in src.dynamic_route_configs:
        rc = unpack(r.route_config)
        if r.HasField("last_updated"):
            last = max(last, r.last_updated.ToNanoseconds() / 1e9)
        if rc is None:
            continue
        vhosts = sorted(rc.virtual_hosts, key=lambda v: v.name)
        sorted_rc = type(rc)()
        sorted_rc.CopyFrom(rc)
        del sorted_rc.virtual_hosts[:]
        sorted_rc.virtual_hosts.extend(vhosts)
        items.append((rc.name, sorted_rc, r.route_config.type_url))
    for _, rc, url in sorted(items, key=lambda x: x[0]):
        dr = out.dynamic_route_configs.add()
        dr.route_config.Pack(rc, type_url_prefix=url.rsplit("/", 1)[0] + "/" if "/" in url else "type.googleapis.com/")
    return out, last


def _text(fn, dump: ConfigDump) -> str:
    try:
        msg = fn(dump)
    except DumpError as e:
        return str(e)
    return jsonpb(msg, INDENT)


def _diff(a: str, b: str, from_file: str, to_file: str) -> str:
    lines = list(difflib.unified_diff(a.splitlines(True), b.splitlines(True), from_file, to_file, n=CONTEXT))
    # difflib omits the newline after a last line without one; add it as go-difflib does
    return "".join(l if l.endswith("\n") else l + "\n" for l in lines)


def compare(meshd: ConfigDump, envoy: ConfigDump, out: TextIO, source: str = "Meshd") -> bool:
    """Print istioctl's three verdicts; True when everything matches."""
    ok = True
    for title, fn in (("Clusters", dynamic_clusters), ("Listeners", dynamic_listeners)):
        text = _diff(_text(fn, meshd), _text(fn, envoy), f"{source} {title}", f"Envoy {title}")
        if text:
            ok = False
            out.write(f"{title} Don't Match\n{text}\n")
        else:
            out.write(f"{title} Match\n")
    try:
        mr, _ = dynamic_routes(meshd)
        m_text = jsonpb(mr, INDENT)
    except DumpError as e:
        m_text = str(e)
    last = 0.0
    try:
        er, last = dynamic_routes(envoy)
        e_text = jsonpb(er, INDENT)
    except DumpError as e:
        e_text = str(e)
    text = _diff(m_text, e_text, f"{source} Routes", "Envoy Routes")
    if text:
        ok = False
        out.write(f"Routes Don't Match\n{text}\n")
    elif last:
        when = _dt.datetime.fromtimestamp(last, _dt.UTC).strftime("%a, %d %b %Y %H:%M:%S UTC")
        out.write(f"Routes Match (RDS last loaded at {when})\n")
    else:
        out.write("Routes Match\n")
    return ok
