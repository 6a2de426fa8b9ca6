"""meshd's reader for plain kubeconfigs (controlplane/kube/kubeconfig.py): the same
connection settings as the library's loader, without importing the library's `config`
module at start-up; anything it does not read goes to the library."""
from __future__ import annotations

import base64
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from controlplane.kube.client import plain_tls
from controlplane.kube.kubeconfig import KubeconfigError, read_plain
from tests.support.pki import make_ca

CA, CERT, KEY = b"-----CA-----\n", b"-----CERT-----\n", b"-----KEY-----\n"


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def write(tmp_path: Path, user: dict, cluster: dict | None = None, **top) -> Path:
    doc = {"apiVersion": "v1", "kind": "Config",
           "clusters": [{"name": "c", "cluster": cluster or {"server": "https://10.0.0.1:6443/",
                                                             "certificate-authority-data": b64(CA)}}],
           "users": [{"name": "u", "user": user}],
           "contexts": [{"name": "ctx", "context": {"cluster": "c", "user": "u", "namespace": "default"}}],
           "current-context": "ctx", **top}
    path = tmp_path / "kubeconfig"
    path.write_text(yaml.safe_dump(doc))
    return path


def read(path) -> bytes | None:
    return Path(path).read_bytes() if path else None


def settings(cfg) -> dict:
    """What the library connects with: host, TLS files' contents, auth header."""
    return {"host": cfg.host, "verify": cfg.verify_ssl, "ca": read(cfg.ssl_ca_cert), "cert": read(cfg.cert_file),
            "key": read(cfg.key_file), "auth": dict(cfg.api_key)}


def our_settings(plain) -> dict:
    """The same of what meshd's client is made with (kube/client.py plain_client)."""
    tls = plain_tls(plain)
    if tls.insecure:
        ca = None  # not verified
    else:
        ca = tls.ca_data.encode() if tls.ca_data is not None else read(tls.ca_file)
    return {"host": plain.server, "verify": not tls.insecure, "ca": ca, "cert": read(tls.cert_file),
            "key": read(tls.key_file), "auth": {"BearerToken": f"Bearer {plain.token}"} if plain.token else {}}


@pytest.mark.parametrize("user", [
    {"client-certificate-data": b64(CERT), "client-key-data": b64(KEY)},
    {"token": "s3cret"},
    {"client-certificate-data": b64(CERT), "client-key-data": b64(KEY), "token": "s3cret"},
], ids=["client-cert", "token", "both"])
def test_a_plain_kubeconfig_connects_as_the_librarys_loader_would(tmp_path, user):
    from kubernetes import client, config

    path = write(tmp_path, user)
    theirs = client.Configuration()
    plain = read_plain(path)
    assert plain is not None
    config.load_kube_config(config_file=str(path), client_configuration=theirs)
    assert our_settings(plain) == settings(theirs)
    assert plain.server == "https://10.0.0.1:6443"


def test_relative_files_are_read_beside_the_kubeconfig_and_insecure_skips_the_ca(tmp_path):
    (tmp_path / "pki").mkdir()
    (tmp_path / "pki" / "admin.crt").write_bytes(CERT)
    (tmp_path / "pki" / "admin.key").write_bytes(KEY)
    path = write(tmp_path, {"client-certificate": "pki/admin.crt", "client-key": "pki/admin.key"},
                 cluster={"server": "https://k:6443", "insecure-skip-tls-verify": True})
    plain = read_plain(path)
    assert plain is not None
    assert our_settings(plain) == {"host": "https://k:6443", "verify": False, "ca": None, "cert": CERT, "key": KEY,
                                   "auth": {}}


@pytest.mark.parametrize("user,cluster,top", [
    ({"exec": {"apiVersion": "client.authentication.k8s.io/v1", "command": "aws"}}, None, {}),
    ({"auth-provider": {"name": "oidc"}}, None, {}),
    ({"tokenFile": "/var/run/token"}, None, {}),
    ({"username": "a", "password": "b"}, None, {}),
    ({"token": "t"}, {"server": "https://k", "proxy-url": "http://proxy:3128"}, {}),
    ({"token": "t"}, {"server": "https://k", "tls-server-name": "kubernetes"}, {}),
    ({"client-certificate-data": b64(CERT)}, None, {}),
    ({"token": "t"}, None, {"preferences": {"colors": True}}),
], ids=["exec", "auth-provider", "tokenFile", "basic", "proxy-url", "tls-server-name", "half-a-key-pair",
        "preferences"])
def test_anything_else_is_left_to_the_librarys_loader(tmp_path, user, cluster, top):
    assert read_plain(write(tmp_path, user, cluster, **top)) is None


def test_a_missing_context_or_cluster_is_an_error_naming_it(tmp_path):
    path = write(tmp_path, {"token": "t"})
    with pytest.raises(KubeconfigError, match=r"kubeconfig .*: context 'prod' is not in 'contexts'"):
        read_plain(path, context="prod")
    path = write(tmp_path, {"token": "t"}, cluster={"certificate-authority-data": b64(CA)})
    with pytest.raises(KubeconfigError, match=r"cluster 'c': field 'server' is missing"):
        read_plain(path)
    path = write(tmp_path, {"client-certificate-data": "not base64!", "client-key-data": b64(KEY)})
    with pytest.raises(KubeconfigError, match=r"user 'u': field 'client-certificate-data' is not base64"):
        read_plain(path)


def test_the_kube_client_for_a_plain_kubeconfig_does_not_import_the_kubernetes_library(tmp_path):
    """The start-up cost meshd's own reader and HTTP client exist for: the `kubernetes`
    package (its client with pydantic, its config module with oauthlib and requests)
    stays out of a `meshd serve --kubeconfig` process; an exec user still gets the library."""
    plain = write(tmp_path / "", {"token": "t"}, cluster={"server": "https://10.0.0.1:6443/",
                                                          "certificate-authority-data": b64(make_ca().cert)})
    code = ("import sys; from controlplane.kube.client import kube_api_client; "
            "api = kube_api_client(sys.argv[1]); "
            "print(api.host, sorted(m for m in ('kubernetes.client', 'kubernetes.config', 'kubernetes.stream', "
            "'pydantic', 'requests_oauthlib', 'websocket') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code, str(plain)], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["https://10.0.0.1:6443", "[]"]
    exec_dir = tmp_path / "exec"
    exec_dir.mkdir()
    execed = write(exec_dir, {"exec": {"apiVersion": "client.authentication.k8s.io/v1", "command": "true"}})
    out = subprocess.run([sys.executable, "-c", code, str(execed)], capture_output=True, text=True, check=True)
    assert out.stdout.split()[0] == "https://10.0.0.1:6443"
    assert "'kubernetes.config'" in out.stdout


def test_a_ca_that_is_not_a_certificate_is_an_error_naming_the_kubeconfig(tmp_path):
    from controlplane.kube.client import kube_api_client

    path = write(tmp_path, {"token": "t"})  # certificate-authority-data: not a PEM certificate
    with pytest.raises(KubeconfigError, match=rf"kubeconfig {path}: cannot use its TLS settings"):
        kube_api_client(str(path))


def test_meshd_serve_stops_with_one_line_naming_the_missing_context(tmp_path):
    path = write(tmp_path, {"token": "t"}, **{"current-context": "gone"})
    out = subprocess.run([sys.executable, "-m", "controlplane", "serve", "--kubeconfig", str(path)],
                         capture_output=True, text=True, timeout=120, env={**os.environ, "MESHD_HOME": str(tmp_path)})
    assert out.returncode == 2
    assert f"meshd: kubeconfig {path}: context 'gone' is not in 'contexts'" in out.stderr.splitlines(), out.stderr
    assert "Traceback" not in out.stderr
