"""`proxy-status`: sync state per proxy and type, in istioctl's CSDS-based shapes.

meshd's `/debug/syncz` (see views.py) reports, per connection and type, what was sent,
what was acknowledged and the last NACK. The CLI turns that into the same
`DiscoveryResponse` of `envoy.service.status.v3.ClientConfig` resources istiod answers
`istioctl proxy-status` with, and prints it with istioctl's writer:

    NAME     CLUSTER     ISTIOD     VERSION     SUBSCRIBED TYPES          (default)
    NAME     CLUSTER     CDS  ...   ISTIOD      VERSION                   (--verbose)

`-o json|yaml` prints the DiscoveryResponse itself, as istioctl does.
"""
from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, TextIO

from envoy.service.discovery.v3 import discovery_pb2
from envoy.service.status.v3 import csds_pb2
from google.protobuf import any_pb2

from .. import names
from .gojson import jsonpb
from .tabwriter import TabWriter

CLIENT_CONFIG = "type.googleapis.com/envoy.service.status.v3.ClientConfig"
ECDS = "type.googleapis.com/envoy.config.core.v3.TypedExtensionConfig"

SHORT = {**names.SHORT, ECDS: "ECDS"}
_ORDER = ["CDS", "LDS", "EDS", "RDS", "ECDS", "SDS"]  # istioctl's SUBSCRIBED TYPES order

# Subscription.status -> CSDS ConfigStatus. A NACK of the latest response leaves the
# proxy on older config: istioctl calls that STALE.
_CONFIG_STATUS = {
    "SYNCED": csds_pb2.SYNCED, "NOT SENT": csds_pb2.NOT_SENT, "STALE": csds_pb2.STALE, "NACKED": csds_pb2.STALE,
}


def short_type(type_url: str) -> str:
    return SHORT.get(type_url) or type_url.rsplit(".", 1)[-1]


def proxy_name(node_id: str) -> str:
    """`sidecar~10.0.0.1~pod.ns~ns.svc.cluster.local` -> `pod.ns`, as istioctl shows proxies."""
    parts = node_id.split("~")
    return parts[2] if len(parts) == 4 and parts[2] else node_id


def control_plane_identifier(instance: str, version: str) -> str:
    return json.dumps({"Component": "meshd", "ID": instance,
                       "Info": {"version": version, "revision": "", "golang_version": "", "status": "", "tag": ""}},
                      separators=(",", ":"))


def discovery_response(syncz: dict) -> discovery_pb2.DiscoveryResponse:
    """/debug/syncz JSON -> istiod's proxy-status DiscoveryResponse (ClientConfig per connection)."""
    cp = syncz.get("controlPlane") or {}
    dr = discovery_pb2.DiscoveryResponse(version_info=str(cp.get("version", "")), type_url=CLIENT_CONFIG)
    dr.control_plane.identifier = control_plane_identifier(str(cp.get("id", "")), str(cp.get("version", "")))
    for p in syncz.get("proxies") or []:
        cc = csds_pb2.ClientConfig()
        cc.node.id = p.get("proxy", "")
        md = {"CLUSTER_ID": p.get("clusterID", "")}
        if p.get("istioVersion"):
            md["ISTIO_VERSION"] = p["istioVersion"]
        if p.get("namespace"):
            md["NAMESPACE"] = p["namespace"]
        cc.node.metadata.update(md)
        for t in p.get("types") or []:
            g = cc.generic_xds_configs.add(type_url=t.get("typeUrl", ""))
            g.config_status = _CONFIG_STATUS.get(t.get("status", ""), csds_pb2.UNKNOWN)
            if t.get("sentVersion"):
                g.version_info = t["sentVersion"]
            nack = t.get("nack")
            # A NACK of the latest response (the status may say NACKED or STALE).
            if nack and t.get("status") != "SYNCED" and (t.get("status") == "NACKED" or
                                                         nack.get("nonce") == t.get("sentNonce")):
                g.client_status = csds_pb2.CLIENT_NACKED
                g.error_state.details = nack.get("message", "")
                g.error_state.version_info = nack.get("version", "")
            elif t.get("status") == "SYNCED":
                g.client_status = csds_pb2.CLIENT_ACKED
        a = any_pb2.Any()
        a.Pack(cc)
        dr.resources.append(a)
    return dr


@dataclass
class _Row:
    proxy_id: str
    cluster: str
    istiod: str
    version: str
    statuses: dict[str, str]  # short type -> status text
    subscribed: list[str]
    nacks: list[tuple[str, str, str]]  # (short type, rejected version, message)


def _format_status(g: csds_pb2.ClientConfig.GenericXdsConfig) -> str:
    if g.config_status == csds_pb2.UNKNOWN:
        return ""
    if g.config_status == csds_pb2.NOT_SENT:
        return "NOT SENT"
    return csds_pb2.ConfigStatus.Name(g.config_status)


def _rows(responses: Iterable[discovery_pb2.DiscoveryResponse], namespace: str = "") -> list[_Row]:
    rows = []
    for dr in responses:
        try:
            cp = json.loads(dr.control_plane.identifier) if dr.control_plane.identifier else {}
        except ValueError:
            cp = {}
        for a in dr.resources:
            if a.type_url != CLIENT_CONFIG:
                continue
            cc = csds_pb2.ClientConfig()
            a.Unpack(cc)
            md = cc.node.metadata.fields
            ns = md["NAMESPACE"].string_value if "NAMESPACE" in md else ""
            if namespace and ns != namespace:
                continue
            statuses, subscribed, nacks = {}, [], []
            for g in cc.generic_xds_configs:
                st = short_type(g.type_url)
                statuses[st] = _format_status(g)
                subscribed.append(st)
                if g.client_status == csds_pb2.CLIENT_NACKED:
                    nacks.append((st, g.error_state.version_info, g.error_state.details))
            rows.append(_Row(
                proxy_id=cc.node.id,
                cluster=md["CLUSTER_ID"].string_value if "CLUSTER_ID" in md else "",
                istiod=str(cp.get("ID", "")),
                # The proxy's Istio version; a proxy that reports none shows the control plane's.
                version=(md["ISTIO_VERSION"].string_value if "ISTIO_VERSION" in md else "")
                or str((cp.get("Info") or {}).get("version", "")),
                statuses=statuses,
                subscribed=sorted(subscribed, key=lambda s: (_ORDER.index(s) if s in _ORDER else len(_ORDER), s)),
                nacks=nacks,
            ))
    rows.sort(key=lambda r: r.proxy_id)
    return rows


def print_status(responses: Iterable[discovery_pb2.DiscoveryResponse], out: TextIO, *, verbose: bool = False,
                 namespace: str = "", proxy: str = "") -> None:
    rows = _rows(responses, namespace)
    if proxy:
        rows = [r for r in rows if proxy in r.proxy_id]
    w = TabWriter(out, 0, 8, 5)
    if verbose:
        types = sorted({t for r in rows for t in r.statuses})
        w.write("\t".join(["NAME", "CLUSTER", *types, "ISTIOD", "VERSION"]) + "\n")
        for r in rows:
            w.write("\t".join([proxy_name(r.proxy_id), r.cluster, *(r.statuses.get(t, "") for t in types),
                               r.istiod, r.version]) + "\n")
    else:
        w.write("NAME\tCLUSTER\tISTIOD\tVERSION\tSUBSCRIBED TYPES\n")
        for r in rows:
            subs = f"{len(r.subscribed)} ({','.join(r.subscribed)})" if r.subscribed else "0"
            w.write("\t".join([proxy_name(r.proxy_id), r.cluster, r.istiod, r.version, subs]) + "\n")
    w.flush()
    nacked = [(r, n) for r in rows for n in r.nacks]
    if nacked:
        out.write("\n")
        for r, (st, version, message) in nacked:
            what = f" version {version}" if version else ""
            out.write(f"{proxy_name(r.proxy_id)} {st} STALE: Envoy rejected{what}: {message}\n")


def print_status_dump(dr: discovery_pb2.DiscoveryResponse, out: TextIO, fmt: str) -> None:
    text = jsonpb(dr, "    ")
    if fmt == "yaml":
        from .goyaml import to_yaml  # PyYAML only for this output (the server imports this module)

        text = to_yaml(text)
    out.write(text + "\n")


def syncz_entry(conn: Any, instance_types: Iterable[str] = ()) -> dict:
    """One connection's sync state as /debug/syncz reports it (see views.syncz)."""
    from .times import rfc3339

    p = conn.proxy
    types = []
    for type_url in sorted(conn.subscriptions, key=lambda t: (_ORDER.index(short_type(t))
                                                               if short_type(t) in _ORDER else 99, t)):
        sub = conn.subscriptions[type_url]
        nack = sub.nack
        types.append({
            "type": short_type(type_url),
            "typeUrl": type_url,
            "status": sub.status,
            "sentVersion": sub.sent_version,
            "sentNonce": sub.sent_nonce,
            "sentAt": rfc3339(sub.sent_at),
            "sentResources": len(sub.sent_names),
            "ackedVersion": sub.acked_version,
            "ackedNonce": sub.acked_nonce,
            "nack": None if nack is None else {
                "version": nack.version, "nonce": nack.nonce, "message": nack.message, "code": nack.code,
                "at": rfc3339(nack.at),
            },
        })
    return {
        "proxy": p.id,
        "name": p.short,
        "connectionID": conn.id,
        "address": conn.peer,
        "namespace": p.namespace,
        "clusterID": p.cluster_id,
        "istioVersion": str(p.metadata.get("ISTIO_VERSION") or ""),
        "connectedAt": rfc3339(conn.connected_at),
        "types": types,
    }


__all__ = ["discovery_response", "print_status", "print_status_dump", "syncz_entry", "proxy_name",
           "control_plane_identifier", "short_type"]
