"""The data behind meshd's /debug pages (istiod's names and roles).

| path | what |
|---|---|
| /debug/syncz | per connection and type: sent version/nonce, acked version/nonce, last NACK |
| /debug/config_dump?proxyID= | Envoy-style config dump of exactly what the proxy was sent |
| /debug/mtlsz?proxyID= | the effective PeerAuthentication mode of a sidecar's workload, per port |
| /debug/adsz | connections: id, address, connected since, subscribed types and names |
| /debug/registryz | services |
| /debug/endpointz | endpoints per service and port |
| /debug/configz | the config store: objects with their origin and validation status; rejections; objects of kinds meshd does not serve |
| /debug/push_status | the last pushes: time, trigger, duration, proxies and resources |

Each view reads live server state and returns plain JSON-able data; handlers.py serves
them. Nothing here can change the server.
"""
from __future__ import annotations

import socket
from typing import TYPE_CHECKING, Any

from ..names import GATEWAY_API_GROUP
from ..version import meshd_version
from .status import syncz_entry
from .times import rfc3339

if TYPE_CHECKING:
    from .configdump import ConfigDump

DEFAULT_INSTANCE = f"meshd-{socket.gethostname()}"


class DebugViews:
    def __init__(self, ads: Any, store: Any = None, pushes: Any = None, *, instance: str = DEFAULT_INSTANCE,
                 version: str | None = None):
        self.ads = ads
        self.store = store
        self.pushes = pushes
        self.instance = instance
        self._version = version
        # More /debug/configz entries (name -> a function giving them): the mesh config
        # and the JWT key sets, which come from sources other than the store.
        self.configz_sections: dict[str, Any] = {}

    @property
    def version(self) -> str:
        return self._version or meshd_version()

    # --- proxies ------------------------------------------------------------------
    def control_plane(self) -> dict:
        return {"id": self.instance, "version": self.version}

    def syncz(self) -> dict:
        conns = sorted(self.ads.connections(), key=lambda c: (c.proxy.id, c.connected_at))
        return {"controlPlane": self.control_plane(), "proxies": [syncz_entry(c) for c in conns]}

    def adsz(self) -> dict:
        out = []
        for c in sorted(self.ads.connections(), key=lambda c: (c.proxy.id, c.connected_at)):
            out.append({
                "connectionID": c.id,
                "proxy": c.proxy.id,
                "name": c.proxy.short,
                "type": c.proxy.type,
                "address": c.peer,
                "connectedAt": rfc3339(c.connected_at),
                "identity": c.identity.spiffe_uri if getattr(c, "identity", None) is not None else None,
                "labels": dict(c.proxy.labels),
                "watches": {
                    sub.short: {
                        "typeUrl": t,
                        "wildcard": sub.wildcard,
                        "resourceNames": sorted(sub.names),
                        "sentNames": list(sub.sent_names),
                    }
                    for t, sub in sorted(c.subscriptions.items())
                },
            })
        return {"controlPlane": self.control_plane(), "totalClients": len(out), "clients": out}

    def find_connection(self, proxy_id: str) -> Any:
        """A connection by node id, connection id, `pod.namespace` or a unique pod name
        (the newest connection when a proxy has reconnected)."""
        conns = sorted(self.ads.connections(), key=lambda c: c.connected_at, reverse=True)
        for match in (
            lambda c: c.proxy.id == proxy_id,
            lambda c: c.id == proxy_id,
            lambda c: c.proxy.short == proxy_id,
        ):
            for c in conns:
                if match(c):
                    return c
        by_pod = [c for c in conns if c.proxy.pod == proxy_id]
        if len({c.proxy.id for c in by_pod}) == 1:
            return by_pod[0]
        return None

    def config_dump(self, proxy_id: str) -> ConfigDump | None:
        conn = self.find_connection(proxy_id)
        if conn is None:
            return None
        from .configdump import Sent, from_sent  # Envoy's admin protos: on the first dump, not at start

        sent = [Sent(t, s.sent_version, s.sent_at, tuple(getattr(s, "sent_resources", ())))
                for t, s in conn.subscriptions.items() if s.sent_nonce]
        return from_sent(getattr(conn, "node", None), sent)

    def mtlsz(self, proxy_id: str) -> dict | None:
        """The effective PeerAuthentication of a connected sidecar's workload (mode,
        per-port modes, the policies that decided): the mTLS column of `meshd x authz
        check --listeners`. A gateway has none (`mode` null)."""
        conn = self.find_connection(proxy_id)
        if conn is None:
            return None
        proxy, mesh = conn.proxy, self.ads.mesh
        out = {"proxy": proxy.id, "type": proxy.type, "mode": None, "portModes": {}, "sources": []}
        if proxy.type == "sidecar" and mesh is not None:
            policy = mesh.mtls_policy(proxy.namespace, proxy.labels)
            out.update(mode=policy.mode, portModes={str(p): m for p, m in sorted(policy.port_modes.items())},
                       sources=list(policy.sources))
        return out

    # --- the model ----------------------------------------------------------------
    def registryz(self) -> list[dict]:
        mesh = self.ads.mesh
        if mesh is None:
            return []
        out = []
        for host in sorted(mesh.services):
            s = mesh.services[host]
            out.append({
                "hostname": s.hostname,
                "name": s.name,
                "namespace": s.namespace,
                "clusterIP": s.cluster_ip,
                "headless": s.headless,
                "ports": [{"name": p.name, "port": p.port, "targetPort": p.target_port, "protocol": p.protocol,
                           "appProtocol": p.app_protocol} for p in s.ports],
                "selector": dict(s.selector),
                "labels": dict(s.labels),
            })
        return out

    def endpointz(self) -> list[dict]:
        mesh = self.ads.mesh
        if mesh is None:
            return []
        out = []
        for (host, port) in sorted(mesh.endpoints):
            eps = mesh.endpoints[(host, port)]
            out.append({
                "service": host,
                "port": port,
                "endpoints": [{"address": e.address, "port": e.port, "ready": e.ready, "pod": e.pod,
                               "namespace": e.namespace, "serviceAccount": e.service_account,
                               "labels": dict(e.labels)} for e in eps],
            })
        return out

    def configz(self, content: bool = False) -> dict:
        """The store; with `content`, each object's labels, annotations and spec (what
        `meshd analyze --meshd` analyzes)."""
        if self.store is None:
            return {"version": "", "objects": [], "rejections": [], "unsupported": []}
        snap = self.store.snapshot()
        rejections = self.store.rejections()
        rejected_keys: dict = {}
        for r in rejections:
            if r.key is not None:
                rejected_keys.setdefault(r.key, r)
        restored = self.store.restored() if hasattr(self.store, "restored") else {}  # from $MESHD_HOME at start
        objects = []
        for key in sorted(snap.objects):
            o = snap.objects[key]
            rej = rejected_keys.get(key)
            objects.append({
                "kind": o.kind,
                "apiVersion": o.api_version,
                "namespace": o.namespace,
                "name": o.name,
                "origin": _origin(o.origin),
                "generation": o.generation,
                "status": "Accepted (last good version restored from meshd's state directory at start; the file is "
                          "invalid)" if key in restored else
                          "Accepted" if rej is None else "Accepted (last good version; a newer one was rejected)",
                "restored": key in restored,
                "rejection": None if rej is None else rej.message(),
            })
            if content:
                body = {"labels": dict(o.labels), "annotations": dict(o.annotations)}
                if o.extra.get("creationTimestamp"):  # `analyze --meshd`: which of two hosts is older
                    body["creationTimestamp"] = o.extra["creationTimestamp"]
                if o.group.endswith("istio.io") or o.group == GATEWAY_API_GROUP:  # custom kinds: the store keeps the spec
                    body["spec"] = o.spec
                else:
                    body["body"] = o.spec
                objects[-1]["content"] = body
        return {
            "version": snap.version,
            "objects": objects,
            "rejections": [{"origin": _origin(r.origin), "object": str(r.key) if r.key else None, "field": r.field,
                            "reason": r.reason, "message": r.message(),
                            "inForce": r.key in snap.objects if r.key else False} for r in rejections],
            "unsupported": [_unsupported(u) for u in self.store.unsupported()],
            **{name: section() for name, section in self.configz_sections.items()},
        }

    def push_status(self) -> dict:
        mesh = self.ads.mesh
        out = {"meshVersion": getattr(mesh, "version", None), "connections": len(self.ads.connections())}
        if self.pushes is not None:
            out.update(self.pushes.status())
        return out


def _unsupported(u: Any) -> dict:
    """One object of a kind meshd does not serve: it is in no snapshot and has no effect."""
    return {"kind": u.key.kind, "apiVersion": u.api_version, "namespace": u.key.namespace, "name": u.key.name,
            "object": str(u.key), "origin": _origin(u.origin), "reason": u.reason,
            "level": "Error" if u.security else "Warning", "message": u.message()}


def _origin(o: Any) -> dict:
    return {"source": o.source, "location": o.location, "index": o.index, "line": o.line, "display": str(o)}
