"""The RouteConfiguration envelope shared by the gateway's routes (routes.py) and the
sidecar's (sidecar_routes.py): the settings every route configuration meshd sends has."""
from __future__ import annotations

from envoy.config.route.v3 import route_components_pb2 as rc
from envoy.config.route.v3 import route_pb2
from google.protobuf import wrappers_pb2

# istiod raises Envoy's 4 KiB direct response body limit to what its webhook accepts.
MAX_DIRECT_RESPONSE_BODY_BYTES = 1024 * 1024


def route_config(name: str, vhosts: list[rc.VirtualHost]) -> route_pb2.RouteConfiguration:
    return route_pb2.RouteConfiguration(
        name=name,
        virtual_hosts=vhosts,
        # Routes may name clusters the proxy does not have (yet): Envoy answers 503 for
        # them instead of rejecting the whole configuration.
        validate_clusters=wrappers_pb2.BoolValue(value=False),
        max_direct_response_body_size_bytes=wrappers_pb2.UInt32Value(value=MAX_DIRECT_RESPONSE_BODY_BYTES),
        ignore_port_in_host_matching=True,
    )
