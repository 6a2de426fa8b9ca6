"""Gateway API certificates over SDS (model/gateway_api/certificates.py): a Gateway's
certificateRef to a Secret of another namespace, allowed by a ReferenceGrant, reaches
that Gateway's proxy as `kubernetes-gateway://<ns>/<name>` (istiod's name), and no proxy
is ever sent a Secret that no rule allows it."""
from __future__ import annotations

import dataclasses

from envoy.extensions.transport_sockets.tls.v3 import secret_pb2, tls_pb2

from controlplane import names
from controlplane.generators import Generator, listeners, secrets
from controlplane.model.proxy import parse_node
from tests.support.configs import mesh_from_yaml
from tests.support.gateway_api import ISTIO_CLASS as CLASS
from tests.support.gateway_api import SHOP_CERT_GRANT as GRANT
from tests.support.pki import make_ca, make_cert, tls_secret_yaml

CA = make_ca()
SHOP_CERT = make_cert(CA, ["shop.example.com"])
OTHER_CERT = make_cert(CA, ["other.example.com"])
REF = "kubernetes-gateway://certs/shop-cert"

GATEWAY = """
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: gw, namespace: infra}
spec:
  gatewayClassName: istio
  listeners:
  - name: https
    port: 443
    protocol: HTTPS
    hostname: shop.example.com
    tls: {certificateRefs: [{name: shop-cert, namespace: certs}]}
"""
SECRETS = "\n---\n".join([tls_secret_yaml("shop-cert", "certs", SHOP_CERT),
                          tls_secret_yaml("other-cert", "certs", OTHER_CERT)])

# the Gateway's proxy (labelled as Istio's deployment controller labels it), authenticated
GW_PROXY = parse_node("router~10.1.0.5~gw-istio-1.infra~infra.svc.cluster.local",
                      {"LABELS": {"gateway.networking.k8s.io/gateway-name": "gw"}, "NAMESPACE": "infra"})


def build(*docs: str):
    return mesh_from_yaml("\n---\n".join((CLASS, SECRETS) + docs))


def served(mesh, proxy=GW_PROXY) -> dict[str, secret_pb2.Secret]:
    return dict(secrets.build(mesh, proxy))


def problems(mesh) -> list[str | None]:
    """Why each server of the proxy's Gateways cannot be set up on it (None: it can)."""
    return [mesh.credential_problem(GW_PROXY.namespace, s) for gp in mesh.merged_gateway(GW_PROXY).ports
            for s in gp.servers]


def istio_gateway(namespace: str, credential: str, mode: str = "SIMPLE") -> str:
    """A hand-written Istio Gateway selecting GW_PROXY and naming `credential`."""
    return f"""
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: hand-written, namespace: {namespace}}}
spec:
  selector: {{gateway.networking.k8s.io/gateway-name: gw}}
  servers:
  - port: {{number: 8443, name: https, protocol: HTTPS}}
    hosts: ["*/other.example.com"]
    tls: {{mode: {mode}, credentialName: "{credential}"}}
"""


def test_a_certificate_of_another_namespace_granted_by_a_reference_grant_is_served_to_the_gateway():
    mesh = build(GATEWAY, GRANT)
    got = served(mesh)
    assert list(got) == [REF]
    assert got[REF].tls_certificate.certificate_chain.inline_bytes == SHOP_CERT.cert
    # the gateway's listener asks for it by that name
    lst = next(lst for _, lst in listeners.build(mesh, GW_PROXY))
    chain = lst.filter_chains[0]
    ctx = tls_pb2.DownstreamTlsContext()
    chain.transport_socket.typed_config.Unpack(ctx)
    assert [c.name for c in ctx.common_tls_context.tls_certificate_sds_secret_configs] == [REF]


def test_without_the_reference_grant_nothing_of_the_other_namespace_is_served():
    mesh = build(GATEWAY)
    assert served(mesh) == {}
    assert not list(listeners.build(mesh, GW_PROXY))


def test_a_grant_for_another_secret_or_another_namespace_does_not_serve_it():
    for grant in (GRANT.replace("name: shop-cert}", "name: other-cert}"),
                  GRANT.replace("namespace: infra}]", "namespace: elsewhere}]"),
                  GRANT.replace("kind: Gateway,", "kind: HTTPRoute,")):
        assert served(build(GATEWAY, grant)) == {}, grant


def test_a_proxy_that_is_not_the_gateways_is_refused():
    mesh = build(GATEWAY, GRANT)
    # another gateway of the same namespace, not selected by the Gateway
    other = dataclasses.replace(GW_PROXY, labels={"gateway.networking.k8s.io/gateway-name": "other"})
    assert served(mesh, other) == {}
    # a proxy of the Secret's own namespace is sent its namespace's Secrets, by their own names only
    in_certs = dataclasses.replace(GW_PROXY, namespace="certs")
    assert REF not in served(mesh, in_certs)
    # a sidecar with the Gateway's labels, or a gateway on the plaintext port
    assert REF not in served(mesh, dataclasses.replace(GW_PROXY, type="sidecar"))
    assert served(mesh, dataclasses.replace(GW_PROXY, workload_cert=False)) == {}


def test_a_gateway_of_another_namespace_selecting_the_proxy_vouches_for_nothing():
    # An Istio Gateway in `certs` selecting the infra gateway names a certs Secret: the
    # proxy (in infra) may not read it, as istiod's VerifiedCertificateReferences.
    mesh = build(istio_gateway("certs", "kubernetes-gateway://certs/other-cert"), GRANT)
    assert served(mesh) == {}
    assert "not of the proxy's namespace" in problems(mesh)[0]
    assert not list(listeners.build(mesh, GW_PROXY))  # its filter chain is left out


def test_a_hand_written_reference_is_held_to_the_same_rules():
    # istiod reads kubernetes-gateway:// in any Gateway: granted or same-namespace only
    refused = build(istio_gateway("infra", "kubernetes-gateway://certs/other-cert"), GRANT)
    assert served(refused) == {}
    assert "no ReferenceGrant in namespace 'certs'" in problems(refused)[0]
    allowed = build(istio_gateway("infra", "kubernetes-gateway://certs/shop-cert", mode="MUTUAL"), GRANT,
                    tls_secret_yaml("shop-cert-cacert", "certs", OTHER_CERT))
    assert sorted(served(allowed)) == [REF, REF + "-cacert"]
    assert problems(allowed) == [None]


def test_the_generator_follows_the_grant_and_the_secret():
    """Through the Generator's cached parts: taking the grant away takes the certificate
    away on the next snapshot; a rotated Secret of the other namespace is sent anew."""
    gen = Generator()
    with_grant = build(GATEWAY, GRANT)
    assert REF in gen.generate(with_grant, GW_PROXY, names.SECRET).names
    assert REF not in gen.generate(build(GATEWAY), GW_PROXY, names.SECRET).names
    assert not gen.generate(build(GATEWAY), GW_PROXY, names.LISTENER).names
    rotated = make_cert(CA, ["shop.example.com"])
    mesh = mesh_from_yaml("\n---\n".join((CLASS, tls_secret_yaml("shop-cert", "certs", rotated), GATEWAY, GRANT)))
    got = gen.generate(mesh, GW_PROXY, names.SECRET)
    secret = secret_pb2.Secret()
    got[REF].any.Unpack(secret)
    assert secret.tls_certificate.certificate_chain.inline_bytes == rotated.cert
