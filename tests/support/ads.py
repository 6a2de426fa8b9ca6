"""ADS clients for tests: a one-shot request to a running meshd, and streaming
state-of-the-world and delta clients that remember what they hold."""
from __future__ import annotations

import threading


def ads_fetch(port: int, node_id: str, node_metadata: dict, type_url: str, resource_names: list[str], *,
              root_pem: bytes | None = None, token: str | None = None,
              server_name: str = "istiod.istio-system.svc", timeout: float = 10.0):
    """One state-of-the-world request on a new ADS stream to 127.0.0.1:port and the first
    response (a DiscoveryResponse). TLS when `root_pem` is given (verifying meshd as
    `server_name`), with `authorization: Bearer <token>` when `token` is. Raises
    grpc.RpcError when meshd refuses the stream."""
    import grpc
    from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2

    req = discovery_pb2.DiscoveryRequest(type_url=type_url, resource_names=resource_names)
    req.node.id = node_id
    req.node.metadata.update(node_metadata)
    if root_pem is not None:
        channel = grpc.secure_channel(f"127.0.0.1:{port}", grpc.ssl_channel_credentials(root_pem),
                                      options=[("grpc.ssl_target_name_override", server_name)])
    else:
        channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    done = threading.Event()

    def requests():
        yield req
        done.wait(timeout)  # hold the stream open until the answer is in

    try:
        call = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel).StreamAggregatedResources(
            requests(), metadata=[("authorization", f"Bearer {token}")] if token else None, timeout=timeout)
        try:
            return next(call)
        finally:
            done.set()
            call.cancel()
    finally:
        channel.close()
