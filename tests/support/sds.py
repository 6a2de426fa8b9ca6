"""Shared by test_sds.py and test_auth.py (no tests here): an AdsServer with meshd's
SDS provider behind a real plaintext port and a real TLS port on 127.0.0.1, and a
one-shot ADS client."""
from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import structlog
from envoy.extensions.transport_sockets.tls.v3 import secret_pb2
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2

from ca import CertificateAuthority, TokenAuthority, load_or_create_root, load_or_create_token_key
from controlplane import names
from controlplane.generators.resources import ResourceSet
from controlplane.security.authn import JwtAuthenticator
from controlplane.security.sds import WorkloadSecrets
from controlplane.security.serving import ServingCertificate
from controlplane.server.grpc_server import build_secure_xds_server, build_xds_server
from controlplane.server.host import AdsOptions, AdsServer
from controlplane.server.metrics import Metrics
from controlplane.server.secure import SecureAdsServicer
from tests.support.ads import secrets_of

TD = "cluster.local"
NS = "istioinaction"
TIMEOUT = 10.0


class FakeClock:
    """A clock tests move by hand; shared by the CA and the providers."""

    def __init__(self) -> None:
        self.now = datetime.now(UTC).replace(microsecond=0)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, delta: timedelta) -> None:
        self.now += delta


@dataclass(frozen=True)
class Mesh:
    version: str = "v1"


class NoGenerator:
    """The shared generator serves nothing here: only the SDS provider answers."""

    def types(self):
        return ()

    def generate(self, mesh, proxy, type_url, key=None):
        return ResourceSet(type_url, [])


def node_id(pod: str, namespace: str = NS, proxy_type: str = "sidecar", ip: str = "10.0.0.1") -> str:
    return names.node_id(proxy_type, ip, pod, namespace)


class Plane:
    """meshd's ADS + SDS on a plaintext and a secure port. `async with Plane(tmp) as p`."""

    def __init__(self, tmp: Path, *, ttl: timedelta = timedelta(hours=24), logger=None):
        self.clock = FakeClock()
        self.ca_dir = tmp / "ca"
        self.root = load_or_create_root(self.ca_dir, TD)
        self.ca = CertificateAuthority(self.root, clock=self.clock)
        self.tokens = TokenAuthority(load_or_create_token_key(self.ca_dir), clock=self.clock)
        self.metrics = Metrics()
        log = logger or structlog.get_logger("test")
        self.secrets = WorkloadSecrets(self.ca, TD, ttl, clock=self.clock, metrics=self.metrics, logger=log)
        self.ads = AdsServer(NoGenerator(), self.metrics, log, secrets=self.secrets,
                             options=AdsOptions(trust_domain=TD))
        self.serving = ServingCertificate(self.ca, clock=self.clock, metrics=self.metrics, logger=log)
        self.secure_servicer = SecureAdsServicer(self.ads, [JwtAuthenticator(self.tokens, TD)], self.metrics, log)
        self._channels: list[grpc.aio.Channel] = []

    async def __aenter__(self) -> Plane:
        self.plain, self.plain_port = build_xds_server(self.ads, "127.0.0.1", 0)
        self.secure, self.secure_port = build_secure_xds_server(
            self.secure_servicer, self.serving.credentials(), "127.0.0.1", 0
        )
        await self.plain.start()
        await self.secure.start()
        self.ads.update(Mesh())
        return self

    async def __aexit__(self, *exc) -> None:
        for ch in self._channels:
            await ch.close()
        await self.plain.stop(None)
        await self.secure.stop(None)

    def token(self, namespace: str, service_account: str, **kw) -> str:
        return self.tokens.issue(namespace, service_account, **kw)

    def channel(self, secure: bool) -> grpc.aio.Channel:
        if secure:
            creds = grpc.ssl_channel_credentials(self.root.cert_pem)
            ch = grpc.aio.secure_channel(
                f"127.0.0.1:{self.secure_port}", creds,
                options=[("grpc.ssl_target_name_override", "istiod.istio-system.svc")],
            )
        else:
            ch = grpc.aio.insecure_channel(f"127.0.0.1:{self.plain_port}")
        self._channels.append(ch)
        return ch

    async def fetch_secrets(
        self,
        secret_names: list[str],
        *,
        secure: bool,
        token: str | None = None,
        pod: str = "catalog-0",
        namespace: str = NS,
        service_account: str | None = "catalog",
        proxy_type: str = "sidecar",
        ip: str = "10.0.0.1",
    ) -> dict[str, secret_pb2.Secret]:
        """One SDS request on a new stream; the Secrets of the first response by name.
        Raises grpc.aio.AioRpcError when the stream is refused."""
        req = discovery_pb2.DiscoveryRequest(type_url=names.SECRET, resource_names=secret_names)
        req.node.id = node_id(pod, namespace, proxy_type, ip)
        md = {"NAMESPACE": namespace, "LABELS": {"app": pod.rsplit("-", 1)[0]}}
        if service_account is not None:
            md["SERVICE_ACCOUNT"] = service_account
        req.node.metadata.update(md)
        metadata = [("authorization", f"Bearer {token}")] if token else None
        stub = ads_pb2_grpc.AggregatedDiscoveryServiceStub(self.channel(secure))
        done = asyncio.Event()

        async def requests():
            yield req
            await done.wait()  # keep the stream open until we have the answer

        call = stub.StreamAggregatedResources(requests(), metadata=metadata)
        try:
            resp = await asyncio.wait_for(call.read(), TIMEOUT)
            if resp is grpc.aio.EOF:
                raise AssertionError(f"stream ended without a response: {await call.code()}")
        finally:
            done.set()
            call.cancel()
        return secrets_of(resp)
