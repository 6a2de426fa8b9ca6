"""The Istio in Action ingress objects the gateway generator tests build on (namespace
istioinaction): the ingress gateway's Service as Istio's chart installs it (80, 443 and
31400 to the gateway Envoy's 8080, 8443 and 31400), webapp's and tcp-echo's Services, and
the coolstore Gateway for webapp.istioinaction.io. YAML text, as a config file holds it.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from tests.support.manifests import INGRESS, documents, gateway, service

NS = "istioinaction"
WEBAPP_HOST = "webapp.istioinaction.io"

INGRESS_SERVICE = documents(service("istio-ingressgateway", "istio-system",
                                    [("http2", 80, 8080), ("https", 443, 8443), ("tcp", 31400, 31400)],
                                    selector=INGRESS))
WEBAPP_SERVICE = documents(service("webapp", NS, [("http", 80, 8080)]))


def tcp_echo_service(port: int) -> str:
    """tcp-echo's Service: `port` (the echo listens on it too: no targetPort)."""
    return documents(service("tcp-echo", NS, [("tcp", port, None)]))


def coolstore_gateway(hosts: Sequence[str] = (WEBAPP_HOST,), **server: Any) -> str:
    """The coolstore Gateway, HTTP for `hosts` on port 80; `server`: gateway()'s keywords
    (its `tls`, `more_servers`...)."""
    return documents(gateway("coolstore-gateway", NS, hosts, **server))
