"""Istio's protocol names (moved to model/protocol.py: the model merges Gateway servers by
protocol too); re-exported here for the generators."""
from ..model.protocol import *  # noqa: F401,F403
from ..model.protocol import (  # noqa: F401
    GRPC, GRPC_WEB, HTTP, HTTP2, HTTP_PROXY, HTTPS, MONGO, MYSQL, REDIS, TCP, TLS, UDP, UNSUPPORTED,
    is_http, is_http2, is_tcp_family, of_service_port, parse,
)
