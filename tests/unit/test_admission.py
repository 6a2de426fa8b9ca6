"""The admission webhooks' protocol and server (controlplane/admission): AdmissionReview
v1/v1beta1 in and out, `/validate` through the parse gate, and the HTTPS server with a
certificate from meshd's CA, as the API server calls it (TLS verified against the root,
by the names the API server dials)."""
from __future__ import annotations

import base64
import http.client
import json
import socket
import ssl
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509

from ca import CertificateAuthority, load_or_create_root
from controlplane.admission import review as rv
from controlplane.admission import validate
from controlplane.admission.certificate import WebhookCertificate, webhook_dns_names
from controlplane.admission.server import WebhookServer, route

NS = "shop"


def vs(regex: str = "/api/.*", **metadata) -> dict:
    return {"apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
            "metadata": {"name": "reviews", **metadata},
            "spec": {"hosts": ["reviews"], "http": [{"match": [{"uri": {"regex": regex}}],
                                                     "route": [{"destination": {"host": "reviews"}}]}]}}


def review_body(obj: dict | None, operation: str = "CREATE", api_version: str = "admission.k8s.io/v1",
                kind: tuple[str, str, str] = ("networking.istio.io", "v1", "VirtualService"), namespace: str = NS,
                uid: str = "0df28fbd-5f5f-11e8-bc74-36e6bb280816") -> bytes:
    group, version, k = kind
    return json.dumps({"apiVersion": api_version, "kind": "AdmissionReview", "request": {
        "uid": uid, "kind": {"group": group, "version": version, "kind": k},
        "resource": {"group": group, "version": version, "resource": k.lower() + "s"},
        "namespace": namespace, "name": (obj or {}).get("metadata", {}).get("name", ""), "operation": operation,
        "userInfo": {"username": "admin"}, "object": obj, "oldObject": None, "dryRun": False}}).encode()


def decide(body: bytes) -> dict:
    req = rv.parse(body)
    assert isinstance(req, rv.AdmissionRequest), req
    return rv.respond(req.api_version, req.uid, validate.review(req))


# --- AdmissionReview ---------------------------------------------------------------------


@pytest.mark.parametrize("api_version", ["admission.k8s.io/v1", "admission.k8s.io/v1beta1"])
def test_a_review_is_answered_in_its_own_version_with_its_uid(api_version):
    out = decide(review_body(vs(), api_version=api_version, uid="u-1"))
    assert out == {"apiVersion": api_version, "kind": "AdmissionReview", "response": {"uid": "u-1", "allowed": True}}


def test_a_patch_is_base64_json_patch_and_warnings_are_listed():
    patch = [{"op": "add", "path": "/metadata/labels", "value": {"a": "b"}}]
    out = rv.respond("admission.k8s.io/v1", "u", rv.Verdict(True, patch=patch, warnings=("w1",)))["response"]
    assert out["patchType"] == "JSONPatch" and json.loads(base64.b64decode(out["patch"])) == patch
    assert out["warnings"] == ["w1"]


@pytest.mark.parametrize(("body", "reason"), [
    (b"{not json", "the body is not JSON"),
    (b"[1, 2]", "the body is a JSON list, not an AdmissionReview object"),
    (json.dumps({"apiVersion": "v1", "kind": "Pod"}).encode(), "expected kind AdmissionReview"),
    (json.dumps({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview"}).encode(), "request: Required value"),
    (json.dumps({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
                 "request": {"uid": "x", "operation": "EXPLODE"}}).encode(), "request.operation: Unsupported value"),
    (json.dumps({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
                 "request": {"uid": "x", "operation": "CREATE", "object": "text"}}).encode(), "request.object: must be"),
])
def test_a_body_that_is_no_review_is_denied_naming_why(body, reason):
    bad = rv.parse(body)
    assert isinstance(bad, rv.BadReview) and reason in bad.reason
    out = rv.respond_bad(bad)["response"]
    assert out["allowed"] is False and out["status"]["code"] == 400 and reason in out["status"]["message"]


# --- /validate ---------------------------------------------------------------------------


def test_a_regex_that_does_not_compile_is_denied_naming_object_field_and_reason():
    out = decide(review_body(vs(regex="(["), namespace=NS))["response"]
    assert out["allowed"] is False
    message = out["status"]["message"]
    # the namespace came from the request (kubectl apply -n shop sends none in the object)
    assert message.startswith("configuration is invalid: VirtualService shop/reviews: "
                              "spec.http[0].match[0].uri.regex: Invalid value: \"([\""), message


def test_the_same_object_passes_with_a_valid_regex_and_any_delete_passes():
    assert decide(review_body(vs(regex="/api/v[0-9]+/.*")))["response"]["allowed"] is True
    assert decide(review_body(vs(regex="(["), operation="DELETE"))["response"]["allowed"] is True


def test_an_update_is_checked_like_a_create():
    assert decide(review_body(vs(regex="(["), operation="UPDATE"))["response"]["allowed"] is False


def test_schema_errors_are_the_gates_too():
    bad = vs()
    bad["spec"]["http"][0]["route"][0]["destination"]["port"] = {"number": "eighty"}
    message = decide(review_body(bad))["response"]["status"]["message"]
    assert "spec.http[0].route[0].destination.port.number" in message


def test_a_mesh_kind_meshd_does_not_serve_is_admitted_with_a_warning():
    obj = {"apiVersion": "extensions.istio.io/v1alpha1", "kind": "WasmPlugin", "metadata": {"name": "w"},
           "spec": {"url": "oci://x"}}
    out = decide(review_body(obj, kind=("extensions.istio.io", "v1alpha1", "WasmPlugin")))["response"]
    assert out["allowed"] is True and out["warnings"] and "WasmPlugin" in out["warnings"][0]


# --- the HTTPS server --------------------------------------------------------------------


@pytest.fixture
def authority(tmp_path: Path) -> CertificateAuthority:
    return CertificateAuthority(load_or_create_root(tmp_path / "ca"))


@pytest.fixture
def server(authority):
    names = webhook_dns_names("meshd-system", "127.0.0.1")
    cert = WebhookCertificate(authority, names)
    handlers = {"validate": validate.review, "inject": lambda req: rv.Verdict(True, message=f"inject {req.name}")}
    s = WebhookServer("127.0.0.1", 0, cert, handlers).start()
    try:
        yield s
    finally:
        s.stop()


def call(port: int, root_pem: bytes, method: str, path: str, body: bytes | None = None,
         server_hostname: str = "istiod.istio-system.svc") -> tuple[int, bytes]:
    """As the API server calls a webhook: TLS verified against the caBundle, by the name dialed."""
    ctx = ssl.create_default_context(cadata=root_pem.decode())
    raw = socket.create_connection(("127.0.0.1", port), timeout=10)
    conn = http.client.HTTPSConnection("127.0.0.1", port, context=ctx, timeout=10)
    conn.sock = ctx.wrap_socket(raw, server_hostname=server_hostname)
    conn.request(method, path, body=body, headers={"Content-Type": "application/json"})
    resp = conn.getresponse()
    data = resp.read()
    conn.close()
    return resp.status, data


def test_the_server_answers_reviews_over_tls_verified_by_meshds_root(server, authority):
    root = authority.root_cert_pem
    status, data = call(server.port, root, "POST", "/validate", review_body(vs(regex="([")))
    assert status == 200
    assert json.loads(data)["response"]["allowed"] is False
    for name in ("istiod.istio-system.svc", "meshd.meshd-system.svc", "istiod.meshd-system.svc", "127.0.0.1"):
        assert call(server.port, root, "POST", "/validate", review_body(vs()), server_hostname=name)[0] == 200


def test_the_server_certificate_is_not_trusted_by_another_root(server, tmp_path):
    other = CertificateAuthority(load_or_create_root(tmp_path / "other")).root_cert_pem
    with pytest.raises(ssl.SSLCertVerificationError):
        call(server.port, other, "POST", "/validate", review_body(vs()))


def test_bad_input_is_a_denied_review_never_a_500(server, authority):
    status, data = call(server.port, authority.root_cert_pem, "POST", "/validate", b"\x00garbage")
    assert status == 200
    out = json.loads(data)
    assert out["kind"] == "AdmissionReview" and out["response"]["allowed"] is False
    assert "the body is not JSON" in out["response"]["status"]["message"]


def test_paths_and_methods(server, authority):
    root = authority.root_cert_pem
    status, data = call(server.port, root, "POST", "/inject/cluster/Kubernetes/net/network1",
                        review_body({"metadata": {"name": "p"}}, kind=("", "v1", "Pod")))
    assert status == 200 and json.loads(data)["response"]["status"]["message"] == "inject p"
    assert call(server.port, root, "GET", "/validate")[0] == 405
    assert call(server.port, root, "POST", "/elsewhere", b"{}")[0] == 404
    assert call(server.port, root, "GET", "/ready") == (200, b"ok\n")
    assert route("/inject") == route("/inject/") == "inject" and route("/injector") is None


def test_without_a_certificate_a_caller_is_refused_and_the_server_goes_on(authority):
    """The first certificate is issued after ready (meshd's warm-up calls prepare()) or by
    the first caller. A CA that cannot issue refuses that caller's connection; the server
    keeps accepting and serves once the CA can issue again."""
    class Flaky:
        failing = True

        def issue_server_cert(self, names, ttl):
            if self.failing:
                raise RuntimeError("CA away")
            return authority.issue_server_cert(names, ttl)

    ca = Flaky()
    s = WebhookServer("127.0.0.1", 0, WebhookCertificate(ca, ["istiod.istio-system.svc"]),
                      {"validate": validate.review}).start()
    try:
        with pytest.raises(OSError):
            call(s.port, authority.root_cert_pem, "POST", "/validate", review_body(vs()))
        with pytest.raises(RuntimeError, match="CA away"):
            s.prepare()
        ca.failing = False
        s.prepare()
        assert call(s.port, authority.root_cert_pem, "POST", "/validate", review_body(vs()))[0] == 200
    finally:
        s.stop()


def test_a_handler_that_fails_is_a_denial_naming_the_object(authority):
    def broken(_req):
        raise RuntimeError("boom")

    s = WebhookServer("127.0.0.1", 0, WebhookCertificate(authority, ["istiod.istio-system.svc"]),
                      {"validate": broken}).start()
    try:
        status, data = call(s.port, authority.root_cert_pem, "POST", "/validate", review_body(vs()))
    finally:
        s.stop()
    out = json.loads(data)["response"]
    assert status == 200 and out["allowed"] is False
    assert out["status"]["message"] == "meshd failed to review VirtualService shop/reviews: boom"


# --- the certificate ---------------------------------------------------------------------


def test_the_certificate_names_the_services_and_a_specific_listen_address(authority):
    cert = WebhookCertificate(authority, webhook_dns_names("mesh", "10.1.2.3"))
    cert.context()
    leaf = x509.load_pem_x509_certificate(cert.chain_pem)
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["istiod.istio-system.svc", "istiod.mesh.svc", "meshd.mesh.svc"]
    assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == ["10.1.2.3"]
    assert webhook_dns_names("mesh", "0.0.0.0") == ("istiod.istio-system.svc", "istiod.mesh.svc", "meshd.mesh.svc")


def test_the_certificate_is_renewed_past_half_its_life_and_on_a_new_signer(authority):
    now = [datetime.now(UTC)]

    class Issuer:
        generation = "a"

        def issue_server_cert(self, names, ttl):
            return authority.issue_server_cert(names, ttl)

        def serving_generation(self):
            return self.generation

    issuer = Issuer()
    cert = WebhookCertificate(issuer, ["istiod.istio-system.svc"], timedelta(hours=2), clock=lambda: now[0])
    first = cert.context()
    assert cert.context() is first and cert.issued == 1
    now[0] += timedelta(minutes=61)
    assert cert.context() is not first and cert.issued == 2
    issuer.generation = "b"  # the CA's serving signer changed (a root rotation)
    cert.context()
    assert cert.issued == 3


# --- the port ----------------------------------------------------------------------------


def test_the_webhook_port_is_checked_with_the_others_in_kubernetes_mode_only(tmp_path):
    from controlplane.app import ServeOptions, serve_ports
    from controlplane.ports import StartupError, check_free

    kube = ServeOptions(config_dir=None, ca_dir=tmp_path, kubeconfig="kubeconfig", webhook_port=15017)
    assert ("--webhook-port", 15017) in [(p.flag, p.port) for p in serve_ports(kube)]
    files = ServeOptions(config_dir=tmp_path, ca_dir=tmp_path, webhook_port=15017)  # no API server to call it
    assert "--webhook-port" not in [p.flag for p in serve_ports(files)]
    off = ServeOptions(config_dir=None, ca_dir=tmp_path, kubeconfig="kubeconfig", webhook_port=0)
    assert "--webhook-port" not in [p.flag for p in serve_ports(off)]
    with socket.socket() as busy:
        busy.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        taken = ServeOptions(config_dir=None, ca_dir=tmp_path, kubeconfig="kubeconfig", webhook_port=port,
                             xds_port=0, monitoring_port=0, secure_xds_port=0)
        with pytest.raises(StartupError, match=rf"^port {port} \(--webhook-port\) is already in use$"):
            check_free("127.0.0.1", serve_ports(taken))


def test_the_cli_defaults_to_istiods_port():
    from controlplane.cli import parser

    args = parser().parse_args(["serve", "--in-cluster"])
    assert args.webhook_port == 15017
