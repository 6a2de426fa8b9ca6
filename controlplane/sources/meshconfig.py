"""The mesh config source: Istio's MeshConfig from a file (`meshd serve --mesh-config FILE`)
or, in Kubernetes mode, from the ConfigMap `istio` (key `mesh`) in the root namespace
(the watch is in kube/source.py), handed to the model as a typed MeshConfig.

- A file holds the content of the `mesh` key (MeshConfig YAML), or a whole ConfigMap
  with `data.mesh`; it is watched, and a change applies live.
- Fields absent take meshd's defaults (`rootNamespace`: `--root-namespace`).
- Invalid mesh config is an error naming the file (or ConfigMap) and the field: at
  start-up meshd refuses to start (one line); later the last good config stays in force
  and the error is logged and shown in /debug/configz (`meshConfig.error`).
- Fields meshd does not act on (MeshConfig.unread, extension providers of kinds meshd
  does not serve, other keys of the ConfigMap) are reported once per distinct set (a log
  event) and always listed in /debug/configz (`meshConfig.unread`): never silently
  ignored.
- `rootNamespace` is fixed once meshd has built its first snapshot: what was computed
  for the old root namespace could otherwise outlive the change in cached output. A
  later change is reported (`meshConfig.pendingRestart`) and applies at the next start.
"""
from __future__ import annotations

import asyncio
import dataclasses
import os
from collections.abc import Callable, Mapping
from typing import Any

import structlog
import yaml

from ..model.meshconfig import DEFAULT, EXT_AUTHZ_KINDS, MeshConfig, MeshConfigError, parse_mesh_config

CONFIGMAP_NAME = "istio"
CONFIGMAP_KEY = "mesh"


class MeshConfigSourceError(ValueError):
    """Invalid mesh config, with where it came from: `<where>: <field>: <reason>`."""

    def __init__(self, where: str, field: str, reason: str):
        super().__init__(f"{where}: {field + ': ' if field else ''}{reason}")
        self.where, self.field, self.reason = where, field, reason


def parse_document(doc: Any, where: str, root_namespace: str) -> tuple[MeshConfig, tuple[str, ...]]:
    """A MeshConfig from a parsed YAML document (MeshConfig, or a ConfigMap with
    data.mesh), and the ConfigMap's other data keys (reported, not read)."""
    prefix = ""
    extra: tuple[str, ...] = ()
    if isinstance(doc, Mapping) and doc.get("kind") == "ConfigMap":
        data = doc.get("data") or {}
        if not isinstance(data, Mapping):
            raise MeshConfigSourceError(where, "data", "must be a mapping")
        extra = tuple(f"data.{k}" for k in sorted(data) if k != CONFIGMAP_KEY)
        text = data.get(CONFIGMAP_KEY)
        if text is None:
            raise MeshConfigSourceError(where, f"data.{CONFIGMAP_KEY}", "Required value: the mesh config (MeshConfig YAML)")
        if not isinstance(text, str):
            raise MeshConfigSourceError(where, f"data.{CONFIGMAP_KEY}", "must be a string of MeshConfig YAML")
        prefix = f"data.{CONFIGMAP_KEY}: "
        try:
            doc = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise MeshConfigSourceError(where, f"data.{CONFIGMAP_KEY}", f"not YAML: {_one_line(e)}") from None
    if doc is None:
        doc = {}
    if isinstance(doc, Mapping):
        doc = {"rootNamespace": root_namespace, **doc}  # meshd's --root-namespace unless the file says
    try:
        return parse_mesh_config(doc), extra
    except MeshConfigError as e:
        raise MeshConfigSourceError(where, prefix + e.field if e.field else prefix.rstrip(": "), e.reason) from None


def parse_text(text: str, where: str, root_namespace: str) -> tuple[MeshConfig, tuple[str, ...]]:
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise MeshConfigSourceError(where, "", f"not YAML: {_one_line(e)}") from None
    return parse_document(doc, where, root_namespace)


def _one_line(e: Exception) -> str:
    return " ".join(str(e).split())


def read_file(path: str, root_namespace: str) -> tuple[MeshConfig, tuple[str, ...]]:
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as e:
        raise MeshConfigSourceError(path, "", f"cannot be read: {e}") from None
    return parse_text(text, path, root_namespace)


def unread_fields(mc: MeshConfig) -> tuple[str, ...]:
    """What meshd does not act on: fields, and extension providers of kinds it does not serve."""
    providers = tuple(f"extensionProviders[{i}] {p.name} ({p.kind})"
                      for i, p in enumerate(mc.extension_providers) if p.kind not in EXT_AUTHZ_KINDS)
    return mc.unread + providers


class MeshConfigSource:
    """The mesh config in force, and where it came from. `on_change(config)` is called (on
    the loop) when what is in force changes."""

    def __init__(self, on_change: Callable[[MeshConfig], None] | None = None, *, root_namespace: str = DEFAULT.root_namespace,
                 trust_domain: str = DEFAULT.trust_domain, logger=None):
        self.on_change = on_change
        self.root_namespace = root_namespace  # meshd's --root-namespace: the default, and the ConfigMap's namespace
        self.trust_domain = trust_domain  # meshd's --trust-domain (the CA's)
        self._log = logger or structlog.get_logger("meshd.source.meshconfig")
        self.current: MeshConfig = dataclasses.replace(DEFAULT, root_namespace=root_namespace)
        self.origin = "defaults"  # "file <path>", "ConfigMap <ns>/istio", or "defaults"
        self.extra: tuple[str, ...] = ()
        self.error: str | None = None
        self.pending: tuple[str, ...] = ()
        self._pinned_root: str | None = None
        self._reported: set[tuple] = set()
        self._stat: tuple | None = None
        self._text: str | None = None

    # --- status -----------------------------------------------------------------------
    def pin_root_namespace(self) -> None:
        """From now on a change of rootNamespace waits for a restart (see the module doc)."""
        self._pinned_root = self.current.root_namespace

    def status(self) -> dict:
        """The /debug/configz entry."""
        mc = self.current
        return {
            "source": self.origin,
            "rootNamespace": mc.root_namespace,
            "trustDomain": mc.trust_domain,
            "trustDomainAliases": list(mc.trust_domain_aliases),
            "extensionProviders": [{"name": p.name, "kind": p.kind, "served": p.kind in EXT_AUTHZ_KINDS}
                                   for p in mc.extension_providers],
            # What proxies receive from it (docs/mesh-config.md), as an operator checks it.
            "accessLogFile": mc.access_log_file,
            "accessLogEncoding": mc.access_log_encoding,
            "enableAutoMtls": mc.enable_auto_mtls,
            "inboundTrafficPolicy": mc.inbound_traffic_policy,
            "protocolDetectionTimeout": f"{mc.protocol_detection_timeout.total_nanos / 1e9:g}s",
            "defaultHttpRetryPolicy": None if mc.default_http_retry_policy is None else {
                "attempts": mc.default_http_retry_policy.attempts, "retryOn": mc.default_http_retry_policy.retry_on},
            "unread": list(unread_fields(mc) + self.extra),
            "pendingRestart": list(self.pending),
            "error": self.error,
        }

    # --- applying -----------------------------------------------------------------------
    def apply(self, mc: MeshConfig, origin: str, extra: tuple[str, ...] = ()) -> None:
        pending: tuple[str, ...] = ()
        if self._pinned_root is not None and mc.root_namespace != self._pinned_root:
            pending = (f"rootNamespace {mc.root_namespace!r}: applies when meshd restarts "
                       f"(in force: {self._pinned_root!r})",)
            mc = dataclasses.replace(mc, root_namespace=self._pinned_root)
        changed = mc != self.current
        self.current, self.origin, self.extra, self.error = mc, origin, extra, None
        if pending != self.pending and pending:
            self._log.warning("mesh config needs a restart", source=origin, field="rootNamespace", detail=pending[0])
        self.pending = pending
        self._report(origin)
        if changed:
            self._log.info("mesh config applied", source=origin, root_namespace=mc.root_namespace,
                           extension_providers=[p.name for p in mc.extension_providers])
            if self.on_change is not None:
                self.on_change(mc)

    def rejected(self, err: MeshConfigSourceError) -> None:
        """Invalid mesh config at runtime: the last good one stays in force."""
        if self.error != str(err):
            self._log.warning("mesh config rejected", source=err.where, field=err.field or None, reason=err.reason,
                              message=str(err), in_force=self.origin)
        self.error = str(err)

    def _report(self, origin: str) -> None:
        unread = unread_fields(self.current) + self.extra
        mark = (origin, unread)
        if unread and mark not in self._reported:
            self._reported.add(mark)
            self._log.warning("mesh config fields not read", source=origin, fields=list(unread),
                              reason="meshd does not act on these mesh config fields; they have no effect")
        if self.current.trust_domain != self.trust_domain and ("trust", self.current.trust_domain) not in self._reported:
            self._reported.add(("trust", self.current.trust_domain))
            self._log.warning("mesh config trustDomain differs", source=origin, trust_domain=self.current.trust_domain,
                              ca_trust_domain=self.trust_domain,
                              reason="workload certificates carry meshd's --trust-domain; set both alike")

    # --- a file ---------------------------------------------------------------------------
    def load_file(self, path: str) -> MeshConfig:
        """Read `path` now; raises MeshConfigSourceError (start-up: meshd does not start)."""
        mc, extra = read_file(path, self.root_namespace)
        self._stat, self._text = _stat(path), None
        self.apply(mc, f"file {path}", extra)
        return mc

    def check_file(self, path: str) -> bool:
        """Apply `path` if it changed since last read; True when something was applied."""
        st = _stat(path)
        if st == self._stat:
            return False
        self._stat = st
        if st is None:
            self.rejected(MeshConfigSourceError(path, "", "the file is gone; the last good mesh config stays in force"))
            return False
        try:
            with open(path, encoding="utf-8") as f:
                text = f.read()
        except (OSError, UnicodeDecodeError) as e:
            self.rejected(MeshConfigSourceError(path, "", f"cannot be read: {e}"))
            return False
        if text == self._text and self.error is None:
            return False
        self._text = text
        try:
            mc, extra = parse_text(text, path, self.root_namespace)
        except MeshConfigSourceError as e:
            self.rejected(e)
            return False
        self.apply(mc, f"file {path}", extra)
        return True

    async def watch_file(self, path: str, stop: asyncio.Event, interval: float = 1.0) -> None:
        """Poll `path` (a ConfigMap volume swaps a symlink: stat follows it) until `stop`."""
        while not stop.is_set():
            try:
                await asyncio.wait_for(stop.wait(), interval)
            except TimeoutError:
                pass
            if not stop.is_set():
                self.check_file(path)

    # --- Kubernetes -------------------------------------------------------------------------
    def apply_configmap(self, obj: Mapping[str, Any] | None) -> None:
        """The ConfigMap `istio` of the root namespace as the API server has it (None: there
        is none, and the defaults apply, as with istiod)."""
        where = f"ConfigMap {self.root_namespace}/{CONFIGMAP_NAME}"
        if obj is None:
            self.apply(dataclasses.replace(DEFAULT, root_namespace=self.root_namespace), "defaults")
            return
        try:
            mc, extra = parse_document({**obj, "kind": "ConfigMap"}, where, self.root_namespace)
        except MeshConfigSourceError as e:
            self.rejected(e)
            return
        self.apply(mc, where, extra)


def _stat(path: str) -> tuple | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns)
