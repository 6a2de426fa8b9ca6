"""Leader work: meshd's webhook configurations trust meshd, as istiod's webhook
controllers keep them (pkg/webhooks: webhookpatch.go, validation/controller).

The manifests (deploy/kubernetes/07-webhooks.yaml) register the webhooks with an empty
`caBundle`: the API server cannot call them until meshd patches in its root. The leader
watches each configuration by name (a re-applied manifest with an empty caBundle is
fixed again at once) and, whenever the configuration or the CA's trust bundle changes:

- sets `clientConfig.caBundle` of every webhook to the trust bundle (base64 PEM: the
  root, and during a root rotation both roots, so the API server trusts the webhook
  certificate before and after the switch);
- for the validating configurations, `failurePolicy`: `Ignore` until a dry-run create of
  an invalid Gateway in meshd's namespace is denied by the webhook (proof that the API
  server reaches meshd and trusts it), then `Fail` (istiod's readyForFailClose). Until
  then Istio objects are admitted unchecked rather than refused because the webhook is
  not reachable yet: `kubectl apply` never hangs on a meshd that is starting. The
  mutating configuration keeps the manifest's `Fail`: a pod that should have a sidecar
  must not start without it.

Each patch is a JSONPatch that first tests the resourceVersion read, so a concurrent
write (another replica, an operator) makes it fail and it is read again. RBAC: get,
list and watch (by name), patch, on these names only; create Gateways in meshd's
namespace (dry run only: nothing is stored).
"""
from __future__ import annotations

import asyncio
import base64
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import structlog

from ..config import kinds
from ..kube.api import ApiError, KubeApi, path
from ..kube.reflector import Reflector, ReflectorOptions
from ..kube.resources import KubeResource

log = structlog.get_logger("meshd.webhooks")

GROUP = "admissionregistration.k8s.io"
VERSION = "v1"
JSON_PATCH = "application/json-patch+json"
INJECTOR = "istio-sidecar-injector"
DEFAULT_VALIDATOR = "istiod-default-validator"
PROBE_NAME = "invalid-gateway"  # istiod's name for the object of its dry run


def validator_name(namespace: str) -> str:
    """istiod's chart: istio-validator-<istio namespace> (default revision)."""
    return f"istio-validator-{namespace}"


@dataclass(frozen=True)
class WebhookKind:
    kind: str
    plural: str
    fail_close: bool  # failurePolicy follows readiness (validating), or is left as installed (mutating)


MUTATING = WebhookKind("MutatingWebhookConfiguration", "mutatingwebhookconfigurations", False)
VALIDATING = WebhookKind("ValidatingWebhookConfiguration", "validatingwebhookconfigurations", True)


@dataclass(frozen=True)
class Target:
    kind: WebhookKind
    name: str

    @property
    def path(self) -> str:
        return path(GROUP, VERSION, self.kind.plural, name=self.name)

    def resource(self) -> KubeResource:
        return KubeResource(kinds.Kind(GROUP, self.kind.kind, (VERSION,), namespaced=False), self.kind.plural,
                            scoped=False)

    def __str__(self) -> str:
        return f"{self.kind.kind} {self.name}"


def default_targets(namespace: str) -> tuple[Target, ...]:
    return (Target(MUTATING, INJECTOR), Target(VALIDATING, validator_name(namespace)),
            Target(VALIDATING, DEFAULT_VALIDATOR))


def bundle_b64(pem: bytes) -> str:
    return base64.b64encode(pem).decode()


def patch_ops(obj: dict[str, Any], ca_bundle: str, fail_close: bool | None) -> list[dict[str, Any]]:
    """The JSONPatch that makes `obj`'s webhooks trust `ca_bundle` (base64) and, when
    `fail_close` is not None, use failurePolicy Fail (True) or Ignore (False); [] when
    nothing differs. Starts with a test of the resourceVersion read."""
    ops: list[dict[str, Any]] = []
    for i, hook in enumerate(obj.get("webhooks") or []):
        if not isinstance(hook, dict):
            continue
        client = hook.get("clientConfig")
        if not isinstance(client, dict):
            ops.append({"op": "add", "path": f"/webhooks/{i}/clientConfig", "value": {"caBundle": ca_bundle}})
        elif client.get("caBundle") != ca_bundle:
            ops.append({"op": "add", "path": f"/webhooks/{i}/clientConfig/caBundle", "value": ca_bundle})
        if fail_close is not None:
            policy = "Fail" if fail_close else "Ignore"
            if hook.get("failurePolicy") != policy:
                ops.append({"op": "add", "path": f"/webhooks/{i}/failurePolicy", "value": policy})
    if not ops:
        return []
    rv = str((obj.get("metadata") or {}).get("resourceVersion") or "")
    return [{"op": "test", "path": "/metadata/resourceVersion", "value": rv}, *ops]


def trusts(obj: dict[str, Any], ca_bundle: str) -> bool:
    hooks = [h for h in obj.get("webhooks") or [] if isinstance(h, dict)]
    return bool(hooks) and all((h.get("clientConfig") or {}).get("caBundle") == ca_bundle for h in hooks)


class WebhookPatcher:
    def __init__(self, api: KubeApi, bundle: Callable[[], bytes], namespace: str, *,
                 targets: tuple[Target, ...] | None = None, retry_after: float = 1.0, resync: float = 300.0,
                 watch: bool = True):
        self.api = api
        self._bundle = bundle
        self.namespace = namespace
        self.targets = targets if targets is not None else default_targets(namespace)
        self.retry_after = retry_after
        self.resync = resync
        self.watch = watch
        self.ready = False  # the dry run of an invalid object was denied: validation may fail closed
        self.patches = 0
        self._wake: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._missing: set[Target] = set()

    def changed(self) -> None:
        """The trust bundle (or a configuration) changed: reconcile now (on the loop)."""
        if self._wake is not None:
            self._wake.set()

    def _changed_threadsafe(self, _op: object = None) -> None:
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self.changed)

    async def run(self) -> None:
        """Leader task: until cancelled."""
        self._wake, self._loop = asyncio.Event(), asyncio.get_running_loop()
        self.ready = False  # newly elected: prove it again before failing closed
        stop = threading.Event()
        reflectors = self._start_watches(stop) if self.watch else []
        try:
            while True:
                self._wake.clear()
                retry = await self.reconcile()
                try:
                    await asyncio.wait_for(self._wake.wait(), self.retry_after if retry else self.resync)
                except TimeoutError:
                    pass
        finally:
            stop.set()
            for r in reflectors:
                r.interrupt()
            self._wake = None

    def _start_watches(self, stop: threading.Event) -> list[Reflector]:
        out = []
        for t in self.targets:
            r = Reflector(t.resource(), None, self.api.api_client, self._changed_threadsafe, stop, log,
                          field_selector=f"metadata.name={t.name}", raw=True,
                          options=ReflectorOptions(backoff_max=60.0))
            threading.Thread(target=r.run, name=f"meshd-webhook-watch-{t.name}", daemon=True).start()
            out.append(r)
        return out

    async def reconcile(self) -> bool:
        """One pass over the configurations; True when it must be tried again soon (a
        failed request, or validation not proven ready yet)."""
        pem = self._bundle()
        if not pem:
            return True
        ca_bundle = bundle_b64(pem)
        retry = False
        for t in self.targets:
            try:
                retry |= await self._reconcile_one(t, ca_bundle)
            except ApiError as e:
                retry = True
                level = log.info if e.conflict or e.status == 422 else log.warning
                level("webhook configuration not patched", configuration=str(t), status=e.status, reason=e.reason,
                      error=e.message[:300])
        return retry

    async def _reconcile_one(self, t: Target, ca_bundle: str) -> bool:
        try:
            obj = await self.api.call("GET", t.path)
        except ApiError as e:
            if not e.not_found:
                raise
            if t not in self._missing:
                self._missing.add(t)
                log.info("webhook configuration not installed", configuration=str(t),
                         hint="kubectl apply -f deploy/kubernetes/07-webhooks.yaml")
            return False
        self._missing.discard(t)
        fail_close: bool | None = None
        waiting = False
        if t.kind.fail_close:
            if not self.ready and trusts(obj, ca_bundle):
                self.ready = await self.probe()
            fail_close, waiting = self.ready, not self.ready
        ops = patch_ops(obj, ca_bundle, fail_close)
        if ops:
            await self.api.call("PATCH", t.path, ops, content_type=JSON_PATCH)
            self.patches += 1
            changed = sorted({op["path"].rsplit("/", 1)[1] for op in ops[1:]})
            log.info("webhook configuration patched", configuration=str(t), fields=changed,
                     failure_policy=None if fail_close is None else ("Fail" if fail_close else "Ignore"))
        return waiting

    async def probe(self) -> bool:
        """Whether the API server, through the webhook, denies a dry-run create of an
        invalid Gateway (no servers) in meshd's namespace."""
        body = {"apiVersion": "", "kind": "Gateway",
                "metadata": {"name": PROBE_NAME, "namespace": self.namespace, "labels": {"istio.io/rev": "default"}},
                "spec": {}}
        for version in kinds.GATEWAY.versions:
            body["apiVersion"] = f"{kinds.GATEWAY.group}/{version}"
            try:
                await self.api.call("POST", path(kinds.GATEWAY.group, version, "gateways", self.namespace), body,
                                    query={"dryRun": "All"})
            except ApiError as e:
                if "denied the request" in e.message:
                    log.info("validation webhook ready: an invalid Gateway was denied; failing closed from now on")
                    return True
                if e.not_found:
                    continue  # this version (or the CRD) is not served
                log.info("validation webhook not ready yet", status=e.status, error=e.message[:300])
                return False
            log.info("validation webhook not ready yet", reason="the dry run of an invalid Gateway was admitted")
            return False
        log.warning("validation webhook readiness not checked: Gateways are not served; failing closed")
        return True
