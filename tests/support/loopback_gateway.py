"""One meshd and one real Envoy ingress gateway on the host, with HTTP backends on loopback
addresses: the set-up of the e2e tests of routing rules through a gateway.

    port = free_port("127.0.0.51")
    with loopback_gateway(tmp, {"127.0.0.51": "web-v1"}, port,
                          [service_yaml("web", NS, [("http", 80, port)], [("127.0.0.51", {})])],
                          ROUTING, host="shop.example.com") as bed:
        bed.client.get("/")

meshd's config directory gets the ingress gateway's Service (port 80 to the gateway's
listener), `services` and `routing`; the gateway is bootstrapped over plaintext xDS
(`bootstrap_args` adds flags, e.g. `--locality`). The bed is ready once the gateway
answers `/` with 200. On exit the gateway must have rejected no update.
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import NamedTuple

from tests.support.envoy import EnvoyHandle, envoy
from tests.support.harness import MeshdHandle, free_port, meshd, wait_for, write
from tests.support.manifests import documents, ingress_gateway_service
from tests.support.traffic import Backend, Client, backend

GATEWAY_LABELS = "istio=ingressgateway,app=istio-ingressgateway"


class GatewayBed(NamedTuple):
    """What a test reaches: the client (Host set), the backends by name, the gateway, meshd."""

    client: Client
    backends: dict[str, Backend]
    gw: EnvoyHandle
    cp: MeshdHandle


@contextlib.contextmanager
def loopback_gateway(tmp: Path, backends: Mapping[str, str], backend_port: int, services: Sequence[str],
                     routing: str, *, host: str, bootstrap_args: Sequence[str] = (),
                     ready_timeout: float = 20) -> Iterator[GatewayBed]:
    """`backends`: loopback address -> backend name, each serving on `backend_port`."""
    cfg = tmp / "config"
    cfg.mkdir()
    gw_port = free_port()
    write(cfg / "ingress.yaml", documents(ingress_gateway_service(gw_port)))
    write(cfg / "services.yaml", "\n---\n".join(services))
    write(cfg / "routing.yaml", routing)
    with contextlib.ExitStack() as stack:
        running = {name: stack.enter_context(backend(name, ip, backend_port)) for ip, name in backends.items()}
        cp = stack.enter_context(meshd(cfg, tmp))
        gw = stack.enter_context(envoy(tmp, [
            "--type", "router", "--namespace", "istio-system", "--pod", "istio-ingressgateway-0", "--ip", "127.0.0.1",
            "--labels", GATEWAY_LABELS, *bootstrap_args, "--xds-address", f"127.0.0.1:{cp.xds_port}"]))
        client = Client(gw_port, host)
        wait_for(lambda: client.get("/")[0] == 200, ready_timeout, what="first 200 through the gateway")
        yield GatewayBed(client, running, gw, cp)
        rejected = {k: v for k, v in gw.rejected_counters().items() if v}
        assert rejected == {}, rejected
