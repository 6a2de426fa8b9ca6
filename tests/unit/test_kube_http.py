"""meshd's HTTP client for the API server (kube/http.py): in a pod it reads the service
account's files itself, and a rotated token is sent from the next requests on."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from controlplane.kube.api import ApiError, KubeApi
from controlplane.kube.http import FileToken, KubeHttp, StaticToken, TransportError, in_cluster
from tests.support.harness import free_port
from tests.support.pki import make_ca


def service_account(tmp_path: Path, token: str = "first") -> Path:
    sa = tmp_path / "sa"
    sa.mkdir(exist_ok=True)
    (sa / "token").write_text(token + "\n")
    (sa / "ca.crt").write_bytes(make_ca().cert)
    return sa


def test_in_cluster_reads_the_service_account_and_the_service_address(tmp_path):
    sa = service_account(tmp_path)
    http = in_cluster(sa, {"KUBERNETES_SERVICE_HOST": "10.96.0.1", "KUBERNETES_SERVICE_PORT": "443"})
    assert http.host == "https://10.96.0.1:443"
    http = in_cluster(sa, {"KUBERNETES_SERVICE_HOST": "fd00::1", "KUBERNETES_SERVICE_PORT": "443"})
    assert http.host == "https://[fd00::1]:443"
    with pytest.raises(TransportError, match="KUBERNETES_SERVICE_HOST"):
        in_cluster(sa, {})
    with pytest.raises(TransportError, match="no service account token"):
        in_cluster(tmp_path / "elsewhere", {"KUBERNETES_SERVICE_HOST": "h", "KUBERNETES_SERVICE_PORT": "1"})


def test_a_rotated_token_file_is_read_again(tmp_path):
    sa = service_account(tmp_path)
    token = FileToken(sa / "token", recheck=0)
    assert token.header() == "Bearer first"
    (sa / "token").write_text("second\n")
    os.utime(sa / "token", (1, 1))  # the kubelet swaps the file: a new mtime, whatever the clock says
    assert token.header() == "Bearer second"


def test_a_list_by_path_and_an_unreachable_server_is_an_api_error(kubeapi):
    http = KubeHttp(kubeapi.url, token=StaticToken("s3cret"))
    try:
        resp = http.request("GET", "/api/v1/namespaces/shop/services", query={"limit": 5, "watch": False})
        assert resp.status == 200 and resp.json()["kind"] == "ServiceList"
        resp.release_conn()
        assert KubeApi(http).request("GET", "/api/v1/namespaces/shop/services")["kind"] == "ServiceList"
    finally:
        http.close()
    nobody = KubeHttp(f"http://127.0.0.1:{free_port('127.0.0.1')}")
    with pytest.raises(ApiError, match="no answer"):
        KubeApi(nobody).request("GET", "/api/v1/services", timeout=2)
